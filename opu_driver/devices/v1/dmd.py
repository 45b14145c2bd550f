"""The DMD of a protocol-v1 device: registers and packets on the USB link (docs/protocol.md section 1)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ...encoding.layouts import Layout
from ...errors import DeviceError
from ...protocol import Register, SeqControl, encode_feature_frames, encode_layout, encode_raw_frames
from ..dmd import Dmd, DmdGeometry
from .link import UsbLink

__all__ = ["V1Dmd"]


class V1Dmd(Dmd):
    """Layout table, frame packets and sequence control over the shared :class:`UsbLink`."""

    def __init__(self, link: UsbLink) -> None:
        super().__init__()
        self._link = link

    def _do_connect(self) -> tuple[DmdGeometry, int]:
        read = self._link.read_register
        return DmdGeometry(read(Register.DMD_WIDTH), read(Register.DMD_HEIGHT)), read(Register.SEQ_CAPACITY)

    def _do_loaded_features(self) -> int:
        return self._link.read_register(Register.LAYOUT_FEATURES)

    def _do_load_layout(self, layout: Layout) -> None:
        self._link.send(encode_layout(layout.n_table_features, layout.runs))
        loaded = self._link.read_register(Register.LAYOUT_FEATURES)
        if loaded != layout.n_table_features:
            raise DeviceError(
                f"device did not accept the layout table (it reports {loaded} features)",
                self._link.read_last_error() or None,
            )

    def _do_clear_layout(self) -> None:
        self._link.write_register(Register.SEQ_CONTROL, SeqControl.CLEAR_LAYOUT)

    def _do_queue_feature_frames(self, first_id: int, n_features: int, packed_bits: npt.NDArray[np.uint8]) -> None:
        self._link.send(encode_feature_frames(first_id, n_features, packed_bits))

    def _do_queue_raw_frames(self, first_id: int, packed_mirrors: npt.NDArray[np.uint8]) -> None:
        self._link.send(encode_raw_frames(first_id, packed_mirrors))

    def _do_start(self) -> None:
        self._link.write_register(Register.SEQ_CONTROL, SeqControl.START)

    def _do_abort(self) -> None:
        self._link.write_register(Register.SEQ_CONTROL, SeqControl.ABORT)

    def _do_soft_trigger(self) -> None:
        self._link.write_register(Register.SOFT_TRIGGER, 1)

    def _do_last_error(self) -> int:
        return self._link.read_last_error()

    def _do_queued_frames(self) -> int:
        return self._link.read_register(Register.SEQ_QUEUED)

    def _do_frame_count(self) -> int:
        return self._link.read_register(Register.DMD_FRAME_COUNT)

    def _do_device_time_us(self) -> int:
        # 64 bits in two registers: reading the low word latches the high one.
        low = self._link.read_register(Register.DEVICE_TIME_LO)
        return (self._link.read_register(Register.DEVICE_TIME_HI) << 32) | low
