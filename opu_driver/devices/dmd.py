"""The digital micromirror device interface: a queue of binary frames shown one per trigger.

The acquisition and the Opu use only this interface; a backend implements its ``_do_*`` hooks. The shared work
is done here once: open checks, the device lock, argument checks before anything is sent, and the record of
which layout table the device holds.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..encoding.layouts import Layout
from ..errors import DeviceError, InvalidInputError
from .base import Device

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
    """Queues DMD frames (raw mirror bitmaps, or feature frames expanded through a layout table) and runs them.

    Frames carry ids (``first_id``, ``first_id + 1``, ...) that the camera reports back, so a result can never be
    taken from another frame. ``supports_feature_frames`` says whether the device expands feature frames itself
    (protocol v1 does); a DMD that cannot gets raw frames expanded by the host.
    """

    supports_feature_frames: bool = True

    def __init__(self) -> None:
        super().__init__()
        self._geometry: DmdGeometry | None = None
        self._sequence_capacity = 0
        self._layout: Layout | None = None

    def _do_open(self) -> None:
        geometry, capacity = self._do_connect()
        if geometry.n_mirrors == 0 or capacity == 0:
            raise DeviceError(f"device reports an unusable DMD: {geometry}, capacity {capacity}")
        self._geometry, self._sequence_capacity = geometry, capacity

    def _do_close(self) -> None:
        # Frames left queued (or a running sequence) must not reach the next session.
        self._do_abort()

    # -- what the device is ---------------------------------------------------------------------------
    @property
    def geometry(self) -> DmdGeometry:
        self._require_open()
        assert self._geometry is not None
        return self._geometry

    @property
    def sequence_capacity(self) -> int:
        """Frames the device's sequence memory holds."""
        self._require_open()
        return self._sequence_capacity

    # -- the layout table -----------------------------------------------------------------------------
    @property
    def layout(self) -> Layout | None:
        """The layout table loaded by this driver, if any."""
        return self._layout

    def layout_is_loaded(self, layout: Layout) -> bool:
        """Whether this layout is the device's current table (a device reset or another host clears it)."""
        with self._lock:
            return self._layout is layout and self._do_loaded_features() == layout.n_table_features

    def load_layout(self, layout: Layout) -> None:
        """Upload the layout table; feature frames are then expanded by the device.

        Raises:
            InvalidInputError: the layout was made for a DMD of another size (nothing is sent).
            DeviceError: the device did not take the table.
        """
        with self._lock:
            geometry = self.geometry
            if (layout.dmd_width, layout.dmd_height) != (geometry.width, geometry.height):
                raise InvalidInputError(
                    f"layout is for a {layout.dmd_width}x{layout.dmd_height} DMD, device has "
                    f"{geometry.width}x{geometry.height}"
                )
            _log.info("loading %s layout: %d features, %d runs", layout.kind, layout.n_table_features, len(layout.runs))
            self._layout = None
            self._do_load_layout(layout)
            self._layout = layout

    def clear_layout(self) -> None:
        """Forget the layout table on the device."""
        with self._lock:
            self._require_open()
            self._layout = None
            self._do_clear_layout()

    # -- frames and sequences -------------------------------------------------------------------------
    def queue_feature_frames(self, first_id: int, packed_bits: npt.NDArray[np.uint8]) -> None:
        """Queue frames given as packed feature bits (n, ceil(n_features/8)), ids first_id, first_id+1, ..."""
        with self._lock:
            self._require_open()
            if self._layout is None:
                raise DeviceError("no layout table loaded: call load_layout first")
            self._do_queue_feature_frames(first_id, self._layout.n_table_features, packed_bits)

    def queue_raw_frames(self, first_id: int, packed_mirrors: npt.NDArray[np.uint8]) -> None:
        """Queue full mirror frames (n, frame_bytes), ids first_id, first_id+1, ..."""
        with self._lock:
            frame_bytes = self.geometry.frame_bytes
            if packed_mirrors.ndim != 2 or packed_mirrors.shape[1] != frame_bytes:
                raise InvalidInputError(f"raw frames must have shape (n, {frame_bytes}), got {packed_mirrors.shape}")
            self._do_queue_raw_frames(first_id, packed_mirrors)

    def start(self) -> None:
        """Display the queued frames (in the internal trigger mode: one per frame time)."""
        self._call(self._do_start)

    def abort(self) -> None:
        """Drop the queue and stop a running sequence; always accepted, so it is sent even when not open."""
        with self._lock:
            self._do_abort()

    def soft_trigger(self) -> None:
        """Display the next queued frame (software trigger mode)."""
        self._call(self._do_soft_trigger)

    def last_error(self) -> int:
        """The device's latched error code (0 when none); reading clears it."""
        with self._lock:
            return self._do_last_error()

    @property
    def queued_frames(self) -> int:
        """Frames waiting in the device's queue."""
        with self._lock:
            return self._do_queued_frames()

    @property
    def frame_count(self) -> int:
        """Frames displayed since the device's reset, as its 32-bit counter says (it wraps)."""
        with self._lock:
            return self._do_frame_count()

    @property
    def device_time_us(self) -> int:
        """The device clock in microseconds."""
        with self._lock:
            return self._do_device_time_us()

    # -- hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _do_connect(self) -> tuple[DmdGeometry, int]:
        """Hook: read the geometry and the sequence capacity (frames) from the device."""

    @abstractmethod
    def _do_loaded_features(self) -> int:
        """Hook: the width of the layout table the device holds (0 when none)."""

    @abstractmethod
    def _do_load_layout(self, layout: Layout) -> None:
        """Hook: upload the table; raise DeviceError when the device does not take it."""

    @abstractmethod
    def _do_clear_layout(self) -> None:
        """Hook: clear the device's layout table."""

    @abstractmethod
    def _do_queue_feature_frames(self, first_id: int, n_features: int, packed_bits: npt.NDArray[np.uint8]) -> None:
        """Hook: queue packed feature frames of ``n_features`` bits each."""

    @abstractmethod
    def _do_queue_raw_frames(self, first_id: int, packed_mirrors: npt.NDArray[np.uint8]) -> None:
        """Hook: queue packed mirror frames."""

    @abstractmethod
    def _do_start(self) -> None:
        """Hook: start the queued sequence."""

    @abstractmethod
    def _do_abort(self) -> None:
        """Hook: drop the queue, stop a sequence, and leave the frame path ready for the next one."""

    @abstractmethod
    def _do_soft_trigger(self) -> None:
        """Hook: one software trigger."""

    @abstractmethod
    def _do_last_error(self) -> int:
        """Hook: read (and clear) the latched error code."""

    @abstractmethod
    def _do_queued_frames(self) -> int:
        """Hook: frames in the queue."""

    @abstractmethod
    def _do_frame_count(self) -> int:
        """Hook: frames displayed since reset (32-bit, wrapping)."""

    @abstractmethod
    def _do_device_time_us(self) -> int:
        """Hook: the device clock in microseconds."""
