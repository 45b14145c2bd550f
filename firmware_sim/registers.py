"""The register file of the USB firmware (docs/protocol.md 1.2): the register map, reads, writes and their checks.

Every register is a 32-bit word read with READ_REG and written with WRITE_REG. A refused access changes
nothing: the read returns None and the write False (the backend turns both into a STALL), and the reason is
latched in LAST_ERROR, which reading clears. Packets the sequencer refuses latch their code here too.

The map is built from the device's parts: identity and geometry are constants, the camera settings are
checked here and then stored in the capture's :class:`~firmware_sim.capture.CameraSettings`, and the
sequence registers (SEQ_CONTROL, SOFT_TRIGGER, counters, device time) are the sequencer's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from enum import IntEnum

from . import wire
from .capture import Capture
from .config import SimConfig
from .controller import ControllerLine
from .dmd import LayoutTable
from .sequencer import Sequencer
from .wire import ErrorCode, PixelFormat

__all__ = [
    "Register",
    "StatusBit",
    "RegisterFile",
    "readout_us",
    "frame_fits",
    "PROTOCOL_VERSION",
    "MIN_EXPOSURE_US",
    "MAX_EXPOSURE_US",
    "MIN_GAIN_MILLI",
    "MAX_GAIN_MILLI",
    "FRAME_GAP_US",
    "SUPPORTED_FORMATS",
]

_log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MIN_EXPOSURE_US = 10
MAX_EXPOSURE_US = 1_000_000
MIN_GAIN_MILLI = 1000
MAX_GAIN_MILLI = 16000
FRAME_GAP_US = 50
SUPPORTED_FORMATS = tuple(PixelFormat)


def readout_us(roi_h: int) -> int:
    """Sensor readout time: 10 us plus 0.1 us per ROI row (119 us for 1088 rows, below the 400 us default)."""
    return 10 + (roi_h + 9) // 10


def frame_fits(n_pixels: int, pixel_format: int) -> bool:
    """A CAMERA_FRAME of n_pixels in this format fits the protocol's payload limit."""
    return wire.CAMERA_META_SIZE + wire.pixel_payload_size(pixel_format, n_pixels) <= wire.MAX_PAYLOAD


class Register(IntEnum):
    """Register addresses of section 1.2."""

    PROTOCOL_VERSION = 0x0000
    FIRMWARE_VERSION = 0x0001
    STATUS = 0x0002
    LAST_ERROR = 0x0003
    DEVICE_TIME_LO = 0x0004
    DEVICE_TIME_HI = 0x0005
    DMD_WIDTH = 0x0010
    DMD_HEIGHT = 0x0011
    SEQ_CAPACITY = 0x0012
    SEQ_QUEUED = 0x0013
    SEQ_CONTROL = 0x0014
    SOFT_TRIGGER = 0x0015
    DMD_FRAME_COUNT = 0x0016
    LAYOUT_FEATURES = 0x0017
    CAM_WIDTH = 0x0020
    CAM_HEIGHT = 0x0021
    ROI_X = 0x0022
    ROI_Y = 0x0023
    ROI_W = 0x0024
    ROI_H = 0x0025
    PIXEL_FORMAT = 0x0026
    PIXEL_FORMATS = 0x0027
    EXPOSURE_US = 0x0028
    FRAME_TIME_US = 0x0029
    GAIN_MILLI = 0x002A
    CAM_FRAME_COUNT = 0x002B
    CAM_DROPPED = 0x002C
    READOUT_US = 0x002D
    IN_FIFO_BYTES = 0x002E


class StatusBit(IntEnum):
    """Bits of the STATUS register."""

    SEQ_RUNNING = 0
    LASER_ON = 1
    SHUTTER_OPEN = 2
    INTERLOCK_OK = 3
    LAYOUT_LOADED = 4
    ERROR_PENDING = 5
    FIFO_OVERFLOWED = 6


def _register_name(address: int) -> str:
    """The register's name, or its address in hex when no register has it."""
    try:
        return Register(address).name
    except ValueError:
        return f"0x{address:04X}"


class RegisterFile:
    """READ_REG and WRITE_REG over the device's parts, and the LAST_ERROR latch.

    Args:
        config: the emulator options (geometry).
        firmware_word: FIRMWARE_VERSION as major << 16 | minor << 8 | patch.
        sequencer, capture, layout, controller: the parts whose state the registers show and set.
        name: the device's name, for the log.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        firmware_word: int,
        sequencer: Sequencer,
        capture: Capture,
        layout: LayoutTable,
        controller: ControllerLine,
        name: str,
    ) -> None:
        self._dmd_width = int(config.dmd_width)
        self._dmd_height = int(config.dmd_height)
        self._cam_width = int(config.camera_width)
        self._cam_height = int(config.camera_height)
        self._firmware_word = firmware_word
        self._sequencer = sequencer
        self._capture = capture
        self._layout = layout
        self._controller = controller
        self._name = name
        self.stalls = 0  # a diagnostic: never reset
        self._readers = self._build_readers()
        self._writers = self._build_writers()
        self.reset()

    def reset(self) -> None:
        """Power-on state: no error latched, no high time word latched."""
        self.last_error = 0
        self._time_hi_latch = 0

    def latch_error(self, code: ErrorCode) -> None:
        """Record why the last access or packet was refused (LAST_ERROR, STATUS.ERROR_PENDING)."""
        self.last_error = int(code)

    # -- READ_REG and WRITE_REG --------------------------------------------------------------------
    def read(self, address: int, length: int = 4) -> int | None:
        """READ_REG: the value, or None for a STALL (the reason is latched in LAST_ERROR)."""
        if length != 4:
            self._stall(ErrorCode.E_LENGTH, f"READ_REG 0x{address:04X} with wLength {length}")
            return None
        reader = self._readers.get(address)
        if reader is None:
            self._stall(ErrorCode.E_ADDRESS, f"read of unknown register 0x{address:04X}")
            return None
        return reader() & 0xFFFFFFFF

    def write(self, address: int, value: int, length: int = 4) -> bool:
        """WRITE_REG: True when accepted; False for a STALL (nothing changed, reason in LAST_ERROR)."""
        if length != 4:
            code, detail = ErrorCode.E_LENGTH, f"WRITE_REG 0x{address:04X} with wLength {length}"
        elif address not in self._writers:
            code = ErrorCode.E_READ_ONLY if address in self._readers else ErrorCode.E_ADDRESS
            detail = f"write to register 0x{address:04X}"
        else:
            code = self._writers[address](int(value) & 0xFFFFFFFF)
            detail = f"write of {value} to {_register_name(address)}"
        if code == ErrorCode.E_NONE:
            return True
        self._stall(code, detail)
        return False

    def _stall(self, code: ErrorCode, detail: str) -> None:
        self.latch_error(code)
        self.stalls += 1
        _log.debug("%s: STALL %s (%s)", self._name, code.name, detail)

    # -- the map -----------------------------------------------------------------------------------
    def _build_readers(self) -> dict[int, Callable[[], int]]:
        r = Register
        sequencer, capture = self._sequencer, self._capture
        return {
            r.PROTOCOL_VERSION: lambda: PROTOCOL_VERSION,
            r.FIRMWARE_VERSION: lambda: self._firmware_word,
            r.STATUS: self._read_status,
            r.LAST_ERROR: self._read_last_error,
            r.DEVICE_TIME_LO: self._read_time_lo,
            r.DEVICE_TIME_HI: lambda: self._time_hi_latch,
            r.DMD_WIDTH: lambda: self._dmd_width,
            r.DMD_HEIGHT: lambda: self._dmd_height,
            r.SEQ_CAPACITY: lambda: sequencer.capacity_frames,
            r.SEQ_QUEUED: lambda: sequencer.queued,
            # Write-only strobes read as 0, as on most register maps.
            r.SEQ_CONTROL: lambda: 0,
            r.SOFT_TRIGGER: lambda: 0,
            r.DMD_FRAME_COUNT: lambda: sequencer.frame_count,
            r.LAYOUT_FEATURES: lambda: self._layout.n_features,
            r.CAM_WIDTH: lambda: self._cam_width,
            r.CAM_HEIGHT: lambda: self._cam_height,
            r.ROI_X: lambda: capture.settings.roi[0],
            r.ROI_Y: lambda: capture.settings.roi[1],
            r.ROI_W: lambda: capture.settings.roi[2],
            r.ROI_H: lambda: capture.settings.roi[3],
            r.PIXEL_FORMAT: lambda: capture.settings.pixel_format,
            r.PIXEL_FORMATS: lambda: sum(1 << int(f) for f in SUPPORTED_FORMATS),
            r.EXPOSURE_US: lambda: capture.settings.exposure_us,
            r.FRAME_TIME_US: lambda: capture.settings.frame_time_us,
            r.GAIN_MILLI: lambda: capture.settings.gain_milli,
            r.CAM_FRAME_COUNT: lambda: capture.frame_count,
            r.CAM_DROPPED: lambda: capture.dropped,
            r.READOUT_US: lambda: readout_us(capture.settings.roi[3]),
            r.IN_FIFO_BYTES: lambda: capture.fifo_capacity_bytes,
        }

    def _build_writers(self) -> dict[int, Callable[[int], ErrorCode]]:
        r = Register
        return {
            r.SEQ_CONTROL: self._sequencer.control,
            r.SOFT_TRIGGER: self._sequencer.soft_trigger,
            r.ROI_X: lambda v: self._write_roi(0, v),
            r.ROI_Y: lambda v: self._write_roi(1, v),
            r.ROI_W: lambda v: self._write_roi(2, v),
            r.ROI_H: lambda v: self._write_roi(3, v),
            r.PIXEL_FORMAT: self._write_pixel_format,
            r.EXPOSURE_US: self._write_exposure,
            r.FRAME_TIME_US: self._write_frame_time,
            r.GAIN_MILLI: self._write_gain,
        }

    # -- reads with side effects -------------------------------------------------------------------
    def _status_word(self) -> int:
        c = self._controller
        bits = {
            StatusBit.SEQ_RUNNING: self._sequencer.running,
            StatusBit.LASER_ON: c.laser_on,
            StatusBit.SHUTTER_OPEN: c.shutter_open,
            StatusBit.INTERLOCK_OK: not c.interlock_tripped,
            StatusBit.LAYOUT_LOADED: self._layout.loaded,
            StatusBit.ERROR_PENDING: self.last_error != 0,
            StatusBit.FIFO_OVERFLOWED: self._capture.fifo_overflowed,
        }
        return sum(1 << int(bit) for bit, on in bits.items() if on)

    def _read_status(self) -> int:
        word = self._status_word()
        self._capture.take_overflow()  # reading STATUS clears FIFO_OVERFLOWED
        return word

    def _read_last_error(self) -> int:
        code, self.last_error = self.last_error, 0
        return code

    def _read_time_lo(self) -> int:
        # Reading the low word latches the high one, so that the two halves belong to the same instant.
        device_time_us = self._sequencer.device_time_us
        self._time_hi_latch = (device_time_us >> 32) & 0xFFFFFFFF
        return device_time_us & 0xFFFFFFFF

    # -- camera settings: checked here, stored in the capture's settings -----------------------------
    def _write_roi(self, index: int, value: int) -> ErrorCode:
        if self._sequencer.running:
            return ErrorCode.E_BUSY
        settings = self._capture.settings
        roi = list(settings.roi)
        roi[index] = value
        x, y, w, h = roi
        if w < 1 or h < 1 or x + w > self._cam_width or y + h > self._cam_height:
            return ErrorCode.E_VALUE
        if readout_us(h) + FRAME_GAP_US > settings.frame_time_us or not frame_fits(w * h, settings.pixel_format):
            return ErrorCode.E_VALUE
        settings.roi = (x, y, w, h)
        self._capture.sync_optics_roi()
        return ErrorCode.E_NONE

    def _write_pixel_format(self, value: int) -> ErrorCode:
        if self._sequencer.running:
            return ErrorCode.E_BUSY
        settings = self._capture.settings
        if value not in [int(f) for f in SUPPORTED_FORMATS] or not frame_fits(settings.roi[2] * settings.roi[3], value):
            return ErrorCode.E_VALUE
        settings.pixel_format = value
        return ErrorCode.E_NONE

    def _write_exposure(self, value: int) -> ErrorCode:
        if self._sequencer.running:
            return ErrorCode.E_BUSY
        settings = self._capture.settings
        if not MIN_EXPOSURE_US <= value <= MAX_EXPOSURE_US or value + FRAME_GAP_US > settings.frame_time_us:
            return ErrorCode.E_VALUE
        settings.exposure_us = value
        return ErrorCode.E_NONE

    def _write_frame_time(self, value: int) -> ErrorCode:
        if self._sequencer.running:
            return ErrorCode.E_BUSY
        settings = self._capture.settings
        if value < max(readout_us(settings.roi[3]), settings.exposure_us) + FRAME_GAP_US:
            return ErrorCode.E_VALUE
        settings.frame_time_us = value
        return ErrorCode.E_NONE

    def _write_gain(self, value: int) -> ErrorCode:
        if not MIN_GAIN_MILLI <= value <= MAX_GAIN_MILLI:
            return ErrorCode.E_VALUE
        self._capture.settings.gain_milli = value
        return ErrorCode.E_NONE
