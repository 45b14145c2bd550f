"""The digital micromirror device: layout table, frame sequences, triggers."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..encoding.layouts import Layout
from ..errors import DeviceError, InvalidInputError
from ..protocol import (
    Register,
    SeqControl,
    Status,
    encode_feature_frames,
    encode_layout,
    encode_raw_frames,
)
from .base import Device
from .usb_link import UsbLink

__all__ = ["Dmd", "DmdGeometry"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DmdGeometry:
    """Mirror array size as the device reports it."""

    width: int
    height: int

    @property
    def n_mirrors(self) -> int:
        return self.width * self.height

    @property
    def frame_bytes(self) -> int:
        """Bytes of one packed raw mirror frame."""
        return (self.n_mirrors + 7) // 8


class Dmd(Device):
    """Queues DMD frames (raw or feature frames) and runs sequences."""

    def __init__(self, link: UsbLink) -> None:
        super().__init__()
        self._link = link
        self._geometry: DmdGeometry | None = None
        self._seq_capacity = 0
        self._layout: Layout | None = None

    def _do_open(self) -> None:
        self._geometry = DmdGeometry(
            self._link.read_register(Register.DMD_WIDTH), self._link.read_register(Register.DMD_HEIGHT)
        )
        self._seq_capacity = self._link.read_register(Register.SEQ_CAPACITY)
        if self._geometry.n_mirrors == 0 or self._seq_capacity == 0:
            raise DeviceError(f"device reports an unusable DMD: {self._geometry}, capacity {self._seq_capacity}")

    def _do_close(self) -> None:
        # Frames left queued (or a running sequence) must not reach the next session: ABORT is always accepted.
        self.abort()

    @property
    def geometry(self) -> DmdGeometry:
        self._require_open()
        assert self._geometry is not None
        return self._geometry

    @property
    def sequence_capacity(self) -> int:
        """Frames the device's sequence memory holds."""
        self._require_open()
        return self._seq_capacity

    @property
    def layout(self) -> Layout | None:
        """The layout table loaded by this driver, if any."""
        return self._layout

    def layout_is_loaded(self, layout: Layout) -> bool:
        """Whether this layout is the device's current table (a device reset or another host clears it)."""
        return self._layout is layout and self._link.read_register(Register.LAYOUT_FEATURES) == layout.n_table_features

    def load_layout(self, layout: Layout) -> None:
        """Upload the layout table once; feature frames are then expanded by the firmware."""
        self._require_open()
        geometry = self.geometry
        if (layout.dmd_width, layout.dmd_height) != (geometry.width, geometry.height):
            raise InvalidInputError(
                f"layout is for a {layout.dmd_width}x{layout.dmd_height} DMD, device has "
                f"{geometry.width}x{geometry.height}"
            )
        _log.info("loading %s layout: %d features, %d runs", layout.kind, layout.n_table_features, len(layout.runs))
        self._layout = None
        self._link.send(encode_layout(layout.n_table_features, layout.runs))
        loaded = self._link.read_register(Register.LAYOUT_FEATURES)
        if loaded != layout.n_table_features:
            raise DeviceError(
                f"device did not accept the layout table (it reports {loaded} features)",
                self._link.read_last_error() or None,
            )
        self._layout = layout

    def clear_layout(self) -> None:
        self._require_open()
        self._layout = None
        self._link.write_register(Register.SEQ_CONTROL, SeqControl.CLEAR_LAYOUT)

    def queue_feature_frames(self, first_id: int, packed_bits: npt.NDArray[np.uint8]) -> None:
        """Queue frames given as packed feature bits (n, ceil(n_features/8)), ids first_id, first_id+1, ..."""
        self._require_open()
        if self._layout is None:
            raise DeviceError("no layout table loaded: call load_layout first")
        self._link.send(encode_feature_frames(first_id, self._layout.n_table_features, packed_bits))

    def queue_raw_frames(self, first_id: int, packed_mirrors: npt.NDArray[np.uint8]) -> None:
        """Queue full mirror frames (n, frame_bytes), ids first_id, first_id+1, ..."""
        self._require_open()
        frame_bytes = self.geometry.frame_bytes
        if packed_mirrors.ndim != 2 or packed_mirrors.shape[1] != frame_bytes:
            raise InvalidInputError(f"raw frames must have shape (n, {frame_bytes}), got {packed_mirrors.shape}")
        self._link.send(encode_raw_frames(first_id, packed_mirrors))

    def start(self) -> None:
        """Display the queued frames (trigger mode INT: one per frame time)."""
        self._require_open()
        self._link.write_register(Register.SEQ_CONTROL, SeqControl.START)

    def abort(self) -> None:
        """Drop the queue and stop a running sequence."""
        self._link.write_register(Register.SEQ_CONTROL, SeqControl.ABORT)

    def soft_trigger(self) -> None:
        """Display the next queued frame (trigger mode SOFT)."""
        self._require_open()
        self._link.write_register(Register.SOFT_TRIGGER, 1)

    def last_error(self) -> int:
        """The device's latched error code (0 when none); reading clears it."""
        return self._link.read_last_error()

    @property
    def queued_frames(self) -> int:
        return self._link.read_register(Register.SEQ_QUEUED)

    @property
    def frame_count(self) -> int:
        """Frames displayed since the device's reset."""
        return self._link.read_register(Register.DMD_FRAME_COUNT)

    @property
    def device_time_us(self) -> int:
        """The device clock in microseconds (64 bits: reading the low word latches the high one)."""
        low = self._link.read_register(Register.DEVICE_TIME_LO)
        return (self._link.read_register(Register.DEVICE_TIME_HI) << 32) | low
