"""The emulated OPU firmware: registers, sequence memory, triggers, lag, camera FIFO (docs/protocol.md 1.2-1.7).

:class:`EmulatedDevice` is the state machine a real device runs on its microcontroller. The backends call
it with raw bytes and register accesses (``usb_*`` methods for the pyusb backend, ``serial_*`` for the
controller line) and it answers as the protocol says: a refused register access returns ``None`` /
``False`` (the backend turns it into a STALL) and latches the code in LAST_ERROR; a refused packet latches
its code; nothing raises across the wire.

The emulation is synchronous. Device time is not the wall clock: it advances by FRAME_TIME_US per
displayed frame. In trigger mode INT (and EXT, which an emulator has no input for), START displays the
whole queue at once: the camera frames are computed in batches through the optics and the sensor, packed,
and appended to the IN FIFO before the control request returns. Frames that do not fit the FIFO are
dropped and counted, as on hardware whose host does not read fast enough.

In trigger mode SOFT, each write of SOFT_TRIGGER displays the next queued frame (START is not required for
that); START marks the sequence running (SEQ_RUNNING, settings locked) until its queue runs out or ABORT.

A layout table may change while frames that used the old one are still queued or in the lag pipeline:
those frames are first converted to raw mirror frames, so the camera sees what the DMD really showed.

One lock guards everything, so a pseudo-terminal thread and in-process callers may share a device.
"""
from __future__ import annotations

import itertools
import logging
import threading
from collections import deque
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np
import numpy.typing as npt

from .errors import SimConfigError

from . import wire
from .controller import ControllerLine
from .faults import SATURATE_FACTOR, FaultInjector, FaultPlan
from .wire import BLANK_FRAME_ID, ErrorCode, PixelFormat

if TYPE_CHECKING:
    from .config import SimConfig

__all__ = [
    "EmulatedDevice",
    "Register",
    "StatusBit",
    "UsbIdentity",
    "EP_DMD_OUT",
    "EP_CAMERA_IN",
    "readout_us",
]

_log = logging.getLogger(__name__)

SERIAL_OUT_LIMIT_BYTES = 1 << 20
EP_DMD_OUT = 0x01
EP_CAMERA_IN = 0x81
USB_VENDOR_ID = 0x1209
USB_PRODUCT_ID = 0x4F50
PROTOCOL_VERSION = 1
MIN_EXPOSURE_US = 10
MAX_EXPOSURE_US = 1_000_000
MIN_GAIN_MILLI = 1000
MAX_GAIN_MILLI = 16000
FRAME_GAP_US = 50
SUPPORTED_FORMATS = tuple(PixelFormat)
# Camera frames are computed this many float32 intensities at a time at most (bounds the working memory).
_BATCH_VALUES = 6 * 2**20
_MAX_BATCH_FRAMES = 512
_OPTICS_BLOCK_FRAMES = 512
# Feature frames converted to mirror bitmaps this many at a time (bounds memory at large DMDs).
_EXPAND_CHUNK_FRAMES = 32


def readout_us(roi_h: int) -> int:
    """Sensor readout time: 10 us plus 0.1 us per ROI row (119 us for 1088 rows, below the 400 us default)."""
    return 10 + (roi_h + 9) // 10


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
    SEQ_RUNNING = 0
    LASER_ON = 1
    SHUTTER_OPEN = 2
    INTERLOCK_OK = 3
    LAYOUT_LOADED = 4
    ERROR_PENDING = 5
    FIFO_OVERFLOWED = 6


_SEQ_START, _SEQ_ABORT, _SEQ_CLEAR_LAYOUT = 1, 2, 3
_BLANK, _RAW, _FEATURE = 0, 1, 2


@dataclass(frozen=True)
class UsbIdentity:
    """What the USB descriptors of section 1.1 say about this device."""

    vendor_id: int
    product_id: int
    bcd_device: int
    manufacturer: str
    product: str
    serial_number: str


class _Frame:
    """One DMD frame in sequence memory or in the display history.

    ``data[offset:]`` holds packed mirror bits (RAW) or packed feature bits (FEATURE); ``budget_bytes`` is
    what it counts against the raw-frame memory budget while queued.
    """

    __slots__ = ("kind", "frame_id", "data", "offset", "budget_bytes")

    def __init__(self, kind: int, frame_id: int, data: bytes = b"", offset: int = 0, budget_bytes: int = 0) -> None:
        self.kind = kind
        self.frame_id = frame_id
        self.data = data
        self.offset = offset
        self.budget_bytes = budget_bytes


def _blank() -> _Frame:
    return _Frame(_BLANK, BLANK_FRAME_ID)


def _bcd(value: int) -> int:
    return int(str(value % 100), 16)


_instance_numbers = itertools.count(1)
_instance_lock = threading.Lock()


class EmulatedDevice:
    """An emulated OPU: the USB firmware state machine plus the serial controller, over the optics model.

    Args:
        config: a ``firmware_sim.config.SimConfig``.
        name: unique in-process name (default ``sim-<n>``); the registry and ``opusim://`` URLs use it.
        optics, sensor: the optics and the camera (default: ``OpticalPath(config)`` and ``Sensor(config)``);
            tests may pass stand-ins with the same methods.

    Raises:
        SimConfigError: the options describe a device this firmware cannot be (e.g. an exposure the
            frame time does not allow, a sensor wider than the 16-bit ROI fields).
    """

    def __init__(self, config: SimConfig, *, name: str | None = None, optics: Any = None, sensor: Any = None) -> None:
        with _instance_lock:
            self.instance_number = next(_instance_numbers)
        self._name = name or f"sim-{self.instance_number}"
        self._config = config
        self._check_config(config)
        if optics is None:
            from .optics import OpticalPath

            optics = OpticalPath(config)
        if sensor is None:
            from .sensor import Sensor

            sensor = Sensor(config)
        self._optics = optics
        self._sensor = sensor
        self._lock = threading.RLock()
        self._serial_ready = threading.Condition(self._lock)
        self._dmd_width = int(config.dmd_width)
        self._dmd_height = int(config.dmd_height)
        self._n_mirrors = self._dmd_width * self._dmd_height
        self._mirror_bytes = (self._n_mirrors + 7) // 8
        pad_bits = 8 * self._mirror_bytes - self._n_mirrors
        self._last_byte_mask = (0xFF << pad_bits) & 0xFF
        self._cam_width = int(config.camera_width)
        self._cam_height = int(config.camera_height)
        self._lag = int(config.lag_frames)
        self._seq_capacity_frames = int(config.seq_capacity_frames)
        self._raw_queue_bytes = int(config.raw_queue_bytes)
        self._in_fifo_bytes = int(config.in_fifo_bytes)
        version = tuple(int(v) for v in config.firmware_version)
        self._firmware_word = (version[0] << 16) | (version[1] << 8) | version[2]
        self.usb_identity = UsbIdentity(
            USB_VENDOR_ID, USB_PRODUCT_ID, (_bcd(version[0]) << 8) | _bcd(version[1]),
            "OPU Open Stack", str(config.model), str(config.serial_number),
        )
        self.controller = ControllerLine(
            self, model=str(config.model), serial_number=str(config.serial_number), firmware_version=version,
            default_power_mw=float(config.laser_power_mw), max_power_mw=float(config.laser_power_max_mw),
        )
        self._parser = wire.PacketStream()
        self._counters = {"type_errors": 0, "length_errors": 0, "refused_packets": 0, "register_stalls": 0,
                          "serial_dropped_bytes": 0, "frames_computed": 0}
        self._readers = self._build_readers()
        self._writers = self._build_writers()
        self.connected = True
        self.plug_generation = 0
        # The fault plan lives outside the device model: a reset (even an injected one) keeps it.
        self.faults = FaultInjector(getattr(config, "faults", ""), int(config.seed))
        self._light_factor = 1.0  # > 1 only while an injected ``saturate`` sequence is captured
        # The medium's own clock (drift): it follows the frames shown, like device time, but a reset or a
        # replug restarts the device's counters, not the physics, so this one is never set back.
        self._medium_time_us = 0
        self.reset()
        _log.info("emulated OPU %s: serial %s, DMD %dx%d, camera %dx%d, lag %d", self._name,
                  config.serial_number, self._dmd_width, self._dmd_height, self._cam_width, self._cam_height,
                  self._lag)

    @staticmethod
    def _check_config(config: Any) -> None:
        def refuse(message: str) -> None:
            raise SimConfigError(f"emulator option refused by the firmware: {message}")

        if not (0 < config.camera_width <= 0xFFFF and 0 < config.camera_height <= 0xFFFF):
            refuse(f"camera {config.camera_width}x{config.camera_height} must fit 1..65535 (16-bit ROI fields)")
        mirror_bytes = (config.dmd_width * config.dmd_height + 7) // 8
        if config.dmd_width <= 0 or config.dmd_height <= 0 or 8 + mirror_bytes > wire.MAX_PAYLOAD:
            refuse(f"DMD {config.dmd_width}x{config.dmd_height}: a raw frame must fit one packet")
        if not MIN_EXPOSURE_US <= config.exposure_us <= MAX_EXPOSURE_US:
            refuse(f"exposure_us={config.exposure_us} outside {MIN_EXPOSURE_US}..{MAX_EXPOSURE_US}")
        needed = max(readout_us(config.camera_height), config.exposure_us) + FRAME_GAP_US
        if not needed <= config.frame_time_us <= 0xFFFFFFFF:
            refuse(f"frame_time_us={config.frame_time_us} must be >= {needed} (readout or exposure + {FRAME_GAP_US})")
        if not MIN_GAIN_MILLI <= round(config.gain * 1000) <= MAX_GAIN_MILLI:
            refuse(f"gain={config.gain} outside 1..16")
        if not _frame_fits(config.camera_width * config.camera_height, PixelFormat.MONO8):
            refuse(f"camera {config.camera_width}x{config.camera_height}: a full 8-bit frame must fit one packet")
        if config.lag_frames < 0:
            refuse(f"lag_frames={config.lag_frames} must be >= 0")

    # -- identity ----------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self._name

    @property
    def serial_number(self) -> str:
        return self.usb_identity.serial_number

    @property
    def config(self) -> SimConfig:
        return self._config

    @property
    def optics(self) -> Any:
        """The optics model the DMD frames are shown through (an ``OpticalPath`` or a test's stand-in)."""
        return self._optics

    @property
    def sensor(self) -> Any:
        """The camera sensor model that turns intensities into counts (a ``Sensor`` or a test's stand-in)."""
        return self._sensor

    @property
    def ground_truth(self) -> Any:
        """The optics' ground truth (transmission, dark pattern, ...), for in-process tests only."""
        return self._optics.ground_truth

    @property
    def usb_descriptors(self) -> UsbIdentity:
        return self.usb_identity

    @property
    def debug_counters(self) -> dict[str, int]:
        """Counts of what the firmware skipped or refused, for tests and diagnostics."""
        with self._lock:
            counters = dict(self._counters)
            counters.update(junk_bytes=self._parser.junk_bytes, header_errors=self._parser.header_errors,
                            crc_errors=self._parser.crc_errors, packets=self._parser.packets,
                            buffered_out_bytes=self._parser.buffered, in_fifo_bytes=len(self._fifo))
            return counters

    # -- power, reset, faults ----------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on state: default settings from the config, empty memories, counters and device time at 0."""
        with self._lock:
            self._reset_usb_side(keep_fifo=False)
            self.controller.power_on()

    def _reset_usb_side(self, keep_fifo: bool) -> None:
        """The USB microcontroller restarts: registers, sequence memory, layout and lag pipeline lost."""
        with self._lock:
            config = self._config
            self._roi = (0, 0, self._cam_width, self._cam_height)
            self._optics_roi: tuple[int, int, int, int] | None = None
            self._sync_optics_roi()
            self._pixel_format = int(PixelFormat.MONO8)
            self._exposure_us = int(config.exposure_us)
            self._frame_time_us = int(config.frame_time_us)
            self._gain_milli = int(round(config.gain * 1000))
            self._last_error = 0
            self._fifo_overflowed = False
            self._device_time_us = 0
            self._time_hi_latch = 0
            self._dmd_frame_count = 0
            self._cam_frame_count = 0
            self._cam_dropped = 0
            self._running = False
            self._queue: deque[_Frame] = deque()
            self._queued_raw_bytes = 0
            self._history: deque[_Frame] = deque(_blank() for _ in range(self._lag))
            self._layout_features = 0
            self._layout_runs: npt.NDArray[np.uint32] | None = None
            self._expansion: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]] | None = None
            self._optics.clear_layout()
            if not keep_fifo:
                self._fifo = bytearray()
                self._serial_out = bytearray()
            self._parser.reset()

    def unplug(self) -> None:
        """The cable is pulled: the device disappears from the bus and the serial line goes dead."""
        with self._lock:
            self.connected = False
            self._serial_ready.notify_all()
            _log.info("%s unplugged", self._name)

    def replug(self) -> None:
        """The cable is plugged back: the device powers up afresh; handles opened before stay dead."""
        with self._lock:
            self.reset()
            self.plug_generation += 1
            self.connected = True
            _log.info("%s plugged in again", self._name)

    def trip_interlock(self) -> None:
        """Open the laser interlock (tests): light off until its cause is cleared and INTERLOCK:RESET."""
        with self._lock:
            self.controller.trip_interlock()

    def clear_interlock_cause(self) -> None:
        with self._lock:
            self.controller.clear_interlock_cause()

    def set_faults(self, plan: FaultPlan | str) -> None:
        """Install a fault plan (or its text, "" for none) on this device; counts start afresh."""
        self.faults.set_plan(plan)
        _log.info("%s: fault plan %r", self._name, str(self.faults.plan))

    @property
    def fault_counts(self) -> dict[str, dict[str, int]]:
        """Events seen and faults injected, per fault kind (firmware_sim.faults)."""
        return self.faults.counts()

    def inject_in_bytes(self, data: bytes) -> None:
        """Put raw bytes on the camera stream (junk, corrupted packets) as a faulty link would."""
        with self._lock:
            self._fifo += data

    def inject_serial_output(self, data: bytes) -> None:
        """Put raw bytes on the controller line towards the host (garbage on the line)."""
        with self._lock:
            self._append_serial(bytes(data))

    @property
    def light_on(self) -> bool:
        """Light reaches the medium: laser on, shutter open, interlock OK (else frames are DARK)."""
        with self._lock:
            return self.controller.light_on

    # -- state the controller reads ----------------------------------------------------------------
    @property
    def device_time_us(self) -> int:
        return self._device_time_us

    @property
    def sequence_running(self) -> bool:
        return self._running

    def abort_sequence(self) -> None:
        with self._lock:
            self._queue.clear()
            self._queued_raw_bytes = 0
            self._running = False

    # -- USB: bulk endpoints -----------------------------------------------------------------------
    def usb_bulk_write(self, endpoint: int, data: bytes | bytearray | memoryview) -> int:
        """Bytes on the DMD OUT endpoint: parsed as a packet stream; every byte is accepted."""
        if endpoint != EP_DMD_OUT:
            raise ValueError(f"endpoint 0x{endpoint:02X} is not the DMD OUT endpoint")
        with self._lock:
            for item in self._parser.feed(data):
                if isinstance(item, wire.StreamFault):
                    self._refuse_packet(item.code, item.detail)
                else:
                    self._handle_envelope(item)
            return len(data)

    def usb_bulk_read(self, endpoint: int, size: int) -> bytes:
        """Up to ``size`` bytes of the IN FIFO; b"" when it is empty."""
        if endpoint != EP_CAMERA_IN:
            raise ValueError(f"endpoint 0x{endpoint:02X} is not the CAMERA IN endpoint")
        with self._lock:
            if not self._fifo:
                return b""
            size = min(size, len(self._fifo))
            data = bytes(self._fifo[:size])
            del self._fifo[:size]
            return data

    @property
    def in_fifo_bytes(self) -> int:
        """Bytes waiting in the IN FIFO."""
        return len(self._fifo)

    # -- USB: registers ----------------------------------------------------------------------------
    def usb_ctrl_read_register(self, address: int, length: int = 4) -> int | None:
        """READ_REG: the value, or None for a STALL (the reason is latched in LAST_ERROR)."""
        with self._lock:
            if length != 4:
                return self._stall(ErrorCode.E_LENGTH, f"READ_REG 0x{address:04X} with wLength {length}")
            reader = self._readers.get(address)
            if reader is None:
                return self._stall(ErrorCode.E_ADDRESS, f"read of unknown register 0x{address:04X}")
            return reader() & 0xFFFFFFFF

    def usb_ctrl_write_register(self, address: int, value: int, length: int = 4) -> bool:
        """WRITE_REG: True when accepted; False for a STALL (nothing changed, reason in LAST_ERROR)."""
        with self._lock:
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
        self._last_error = int(code)
        self._counters["register_stalls"] += 1
        _log.debug("%s: STALL %s (%s)", self._name, code.name, detail)
        return None

    def _build_readers(self) -> dict[int, Callable[[], int]]:
        r = Register
        return {
            r.PROTOCOL_VERSION: lambda: PROTOCOL_VERSION,
            r.FIRMWARE_VERSION: lambda: self._firmware_word,
            r.STATUS: self._read_status,
            r.LAST_ERROR: self._read_last_error,
            r.DEVICE_TIME_LO: self._read_time_lo,
            r.DEVICE_TIME_HI: lambda: self._time_hi_latch,
            r.DMD_WIDTH: lambda: self._dmd_width,
            r.DMD_HEIGHT: lambda: self._dmd_height,
            r.SEQ_CAPACITY: lambda: self._seq_capacity_frames,
            r.SEQ_QUEUED: lambda: len(self._queue),
            # Write-only strobes read as 0, as on most register maps.
            r.SEQ_CONTROL: lambda: 0,
            r.SOFT_TRIGGER: lambda: 0,
            r.DMD_FRAME_COUNT: lambda: self._dmd_frame_count,
            r.LAYOUT_FEATURES: lambda: self._layout_features,
            r.CAM_WIDTH: lambda: self._cam_width,
            r.CAM_HEIGHT: lambda: self._cam_height,
            r.ROI_X: lambda: self._roi[0],
            r.ROI_Y: lambda: self._roi[1],
            r.ROI_W: lambda: self._roi[2],
            r.ROI_H: lambda: self._roi[3],
            r.PIXEL_FORMAT: lambda: self._pixel_format,
            r.PIXEL_FORMATS: lambda: sum(1 << int(f) for f in SUPPORTED_FORMATS),
            r.EXPOSURE_US: lambda: self._exposure_us,
            r.FRAME_TIME_US: lambda: self._frame_time_us,
            r.GAIN_MILLI: lambda: self._gain_milli,
            r.CAM_FRAME_COUNT: lambda: self._cam_frame_count,
            r.CAM_DROPPED: lambda: self._cam_dropped,
            r.READOUT_US: lambda: readout_us(self._roi[3]),
            r.IN_FIFO_BYTES: lambda: self._in_fifo_bytes,
        }

    def _build_writers(self) -> dict[int, Callable[[int], ErrorCode]]:
        r = Register
        return {
            r.SEQ_CONTROL: self._write_seq_control,
            r.SOFT_TRIGGER: self._write_soft_trigger,
            r.ROI_X: lambda v: self._write_roi(0, v),
            r.ROI_Y: lambda v: self._write_roi(1, v),
            r.ROI_W: lambda v: self._write_roi(2, v),
            r.ROI_H: lambda v: self._write_roi(3, v),
            r.PIXEL_FORMAT: self._write_pixel_format,
            r.EXPOSURE_US: self._write_exposure,
            r.FRAME_TIME_US: self._write_frame_time,
            r.GAIN_MILLI: self._write_gain,
        }

    def _status_word(self) -> int:
        c = self.controller
        bits = {
            StatusBit.SEQ_RUNNING: self._running,
            StatusBit.LASER_ON: c.laser_on,
            StatusBit.SHUTTER_OPEN: c.shutter_open,
            StatusBit.INTERLOCK_OK: not c.interlock_tripped,
            StatusBit.LAYOUT_LOADED: self._layout_runs is not None,
            StatusBit.ERROR_PENDING: self._last_error != 0,
            StatusBit.FIFO_OVERFLOWED: self._fifo_overflowed,
        }
        return sum(1 << int(bit) for bit, on in bits.items() if on)

    def _read_status(self) -> int:
        word = self._status_word()
        self._fifo_overflowed = False
        return word

    def _read_last_error(self) -> int:
        code, self._last_error = self._last_error, 0
        return code

    def _read_time_lo(self) -> int:
        self._time_hi_latch = (self._device_time_us >> 32) & 0xFFFFFFFF
        return self._device_time_us & 0xFFFFFFFF

    def _write_roi(self, index: int, value: int) -> ErrorCode:
        if self._running:
            return ErrorCode.E_BUSY
        roi = list(self._roi)
        roi[index] = value
        x, y, w, h = roi
        if w < 1 or h < 1 or x + w > self._cam_width or y + h > self._cam_height:
            return ErrorCode.E_VALUE
        if readout_us(h) + FRAME_GAP_US > self._frame_time_us or not _frame_fits(w * h, self._pixel_format):
            return ErrorCode.E_VALUE
        self._roi = (x, y, w, h)
        self._sync_optics_roi()
        return ErrorCode.E_NONE

    def _sync_optics_roi(self) -> None:
        # Eager, so that the ground truth always describes the ROI the registers say (set_roi is cheap).
        if self._optics_roi != self._roi:
            self._optics.set_roi(*self._roi)
            self._optics_roi = self._roi

    def _write_pixel_format(self, value: int) -> ErrorCode:
        if self._running:
            return ErrorCode.E_BUSY
        if value not in [int(f) for f in SUPPORTED_FORMATS] or not _frame_fits(self._roi[2] * self._roi[3], value):
            return ErrorCode.E_VALUE
        self._pixel_format = value
        return ErrorCode.E_NONE

    def _write_exposure(self, value: int) -> ErrorCode:
        if self._running:
            return ErrorCode.E_BUSY
        if not MIN_EXPOSURE_US <= value <= MAX_EXPOSURE_US or value + FRAME_GAP_US > self._frame_time_us:
            return ErrorCode.E_VALUE
        self._exposure_us = value
        return ErrorCode.E_NONE

    def _write_frame_time(self, value: int) -> ErrorCode:
        if self._running:
            return ErrorCode.E_BUSY
        if value < max(readout_us(self._roi[3]), self._exposure_us) + FRAME_GAP_US:
            return ErrorCode.E_VALUE
        self._frame_time_us = value
        return ErrorCode.E_NONE

    def _write_gain(self, value: int) -> ErrorCode:
        if not MIN_GAIN_MILLI <= value <= MAX_GAIN_MILLI:
            return ErrorCode.E_VALUE
        self._gain_milli = value
        return ErrorCode.E_NONE

    def _write_seq_control(self, value: int) -> ErrorCode:
        if value == _SEQ_ABORT:
            self.abort_sequence()
            return ErrorCode.E_NONE
        if value == _SEQ_START:
            if self._running:
                return ErrorCode.E_BUSY
            if not self._queue:
                return ErrorCode.E_EMPTY
            if self.controller.trigger_mode == "SOFT":
                self._running = True
                return ErrorCode.E_NONE
            if not self.faults.active:
                self._run_queue()
                return ErrorCode.E_NONE
            # Every sequence-start fault is drawn at every start (own streams: one never moves another).
            reset, interlock, saturate = (self.faults.fire(kind) for kind in ("reset", "interlock", "saturate"))
            self._light_factor = SATURATE_FACTOR if saturate else 1.0
            try:
                if reset:
                    self._reset_mid_sequence()
                elif interlock:
                    self._interlock_mid_sequence()
                else:
                    self._run_queue()
            finally:
                self._light_factor = 1.0
            return ErrorCode.E_NONE
        if value == _SEQ_CLEAR_LAYOUT:
            if self._running:
                return ErrorCode.E_BUSY
            self._set_layout(0, None)
            return ErrorCode.E_NONE
        return ErrorCode.E_VALUE

    def _write_soft_trigger(self, value: int) -> ErrorCode:
        if value != 1:
            return ErrorCode.E_VALUE
        if self.controller.trigger_mode != "SOFT" or not self._queue:
            return ErrorCode.E_TRIGGER
        frame = self._queue.popleft()
        self._queued_raw_bytes -= frame.budget_bytes
        self._capture(self._display([frame]))
        if not self._queue:
            self._running = False
        return ErrorCode.E_NONE

    # -- packets -----------------------------------------------------------------------------------
    def _refuse_packet(self, code: ErrorCode, detail: str) -> None:
        self._last_error = int(code)
        self._counters["refused_packets"] += 1
        if code == ErrorCode.E_TYPE:
            self._counters["type_errors"] += 1
        elif code == ErrorCode.E_LENGTH:
            self._counters["length_errors"] += 1
        _log.debug("%s: packet refused, %s: %s", self._name, code.name, detail)

    def _handle_envelope(self, envelope: wire.Envelope) -> None:
        packet = wire.decode_out_packet(envelope, self._mirror_bytes)
        if isinstance(packet, wire.StreamFault):
            self._refuse_packet(packet.code, packet.detail)
        elif isinstance(packet, wire.RawFramePacket):
            if len(self._queue) >= self._seq_capacity_frames or self._queued_raw_bytes + self._mirror_bytes > self._raw_queue_bytes:
                self._refuse_packet(ErrorCode.E_SEQ_FULL, f"raw frame {packet.dmd_frame_id}")
                return
            self._queue.append(_Frame(_RAW, packet.dmd_frame_id, packet.payload, 8, self._mirror_bytes))
            self._queued_raw_bytes += self._mirror_bytes
        elif isinstance(packet, wire.FeatureFramePacket):
            if self._layout_runs is None:
                self._refuse_packet(ErrorCode.E_NO_LAYOUT, f"feature frame {packet.dmd_frame_id}")
            elif packet.n_features != self._layout_features:
                self._refuse_packet(ErrorCode.E_FEATURES,
                                    f"{packet.n_features} features, table has {self._layout_features}")
            elif len(self._queue) >= self._seq_capacity_frames:
                self._refuse_packet(ErrorCode.E_SEQ_FULL, f"feature frame {packet.dmd_frame_id}")
            else:
                self._queue.append(_Frame(_FEATURE, packet.dmd_frame_id, packet.payload, 8))
        else:
            self._handle_layout(packet)

    def _handle_layout(self, packet: wire.LayoutPacket) -> None:
        if self._running:
            self._refuse_packet(ErrorCode.E_BUSY, "LAYOUT while a sequence runs")
            return
        problem = self._layout_problem(packet.n_features, packet.runs)
        if problem:
            self._refuse_packet(ErrorCode.E_LAYOUT, problem)
            return
        runs = packet.runs[np.argsort(packet.runs[:, 1], kind="stable")] if len(packet.runs) else packet.runs
        self._set_layout(packet.n_features, runs)

    def _layout_problem(self, n_features: int, runs: npt.NDArray[np.uint32]) -> str:
        """Why a layout table is invalid, or "" when it is valid (vectorised: sort runs, compare ends)."""
        if not 1 <= n_features <= wire.MAX_LAYOUT_FEATURES:
            return f"n_features={n_features} outside 1..{wire.MAX_LAYOUT_FEATURES}"
        if len(runs) == 0:
            return ""
        feature = runs[:, 0].astype(np.int64)
        first = runs[:, 1].astype(np.int64)
        length = runs[:, 2].astype(np.int64)
        if feature.max() >= n_features:
            return f"a run names feature {int(feature.max())} of {n_features}"
        if length.min() < 1:
            return "a run has no mirrors"
        end = first + length
        if end.max() > self._n_mirrors:
            return f"a run ends at mirror {int(end.max())}, past the {self._n_mirrors} mirrors"
        order = np.argsort(first, kind="stable")
        if np.any(first[order][1:] < end[order][:-1]):
            return "two runs share mirrors"
        return ""

    def _set_layout(self, n_features: int, runs: npt.NDArray[np.uint32] | None) -> None:
        same = (
            runs is not None and self._layout_runs is not None and n_features == self._layout_features
            and np.array_equal(runs, self._layout_runs)
        )
        if same:
            return
        # Frames shown or queued under the old table keep the mirrors it gave them.
        self._materialize_feature_frames()
        self._layout_features = n_features
        self._layout_runs = None if runs is None else np.ascontiguousarray(runs, dtype=np.uint32)
        self._expansion = None
        if runs is None:
            self._optics.clear_layout()
        else:
            self._optics.set_layout(n_features, self._layout_runs)
        _log.debug("%s: layout %s", self._name,
                   "cleared" if runs is None else f"{n_features} features, {len(runs)} runs")

    def _materialize_feature_frames(self) -> None:
        frames = [f for f in itertools.chain(self._history, self._queue) if f.kind == _FEATURE]
        for start in range(0, len(frames), _EXPAND_CHUNK_FRAMES):
            chunk = frames[start:start + _EXPAND_CHUNK_FRAMES]
            packed = self.expand_feature_bits(self._feature_bits(chunk))
            for frame, row in zip(chunk, packed):
                frame.kind, frame.data, frame.offset = _RAW, row.tobytes(), 0

    def expand_feature_bits(self, bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Packed mirror frames (n, ceil(W*H/8)) that the loaded layout makes of feature bits (n, F)."""
        with self._lock:
            if self._layout_runs is None:
                raise ValueError("no layout table loaded")
            if self._expansion is None:
                runs = self._layout_runs.astype(np.int64)
                counts = runs[:, 2]
                starts = np.repeat(runs[:, 1] - np.concatenate(([0], np.cumsum(counts)[:-1])), counts)
                mirror_index = starts + np.arange(int(counts.sum()), dtype=np.int64)
                self._expansion = (mirror_index, np.repeat(runs[:, 0], counts))
            mirror_index, mirror_feature = self._expansion
            bits = np.asarray(bits, dtype=np.uint8)
            mirrors = np.zeros((bits.shape[0], self._n_mirrors), dtype=np.uint8)
            mirrors[:, mirror_index] = bits[:, mirror_feature]
            return np.packbits(mirrors, axis=1)

    # -- sequences ---------------------------------------------------------------------------------
    def _run_queue(self) -> None:
        frames = list(self._queue)
        self._queue.clear()
        self._queued_raw_bytes = 0
        self._capture(self._display(frames))

    def _reset_mid_sequence(self) -> None:
        """Injected fault: the first half of the queue is shown and sent, then the USB side resets."""
        frames = list(self._queue)
        shown = frames[:len(frames) // 2]
        if shown:
            self._capture(self._display(shown))
        _log.info("%s: injected reset after %d of %d frames", self._name, len(shown), len(frames))
        self._reset_usb_side(keep_fifo=True)

    def _interlock_mid_sequence(self) -> None:
        """Injected fault: the first half of the queue is lit, then the interlock trips and the rest is dark."""
        frames = list(self._queue)
        self._queue.clear()
        self._queued_raw_bytes = 0
        half = len(frames) // 2
        if half:
            self._capture(self._display(frames[:half]))
        _log.info("%s: injected interlock trip after %d of %d frames", self._name, half, len(frames))
        self.controller.trip_interlock()
        self._capture(self._display(frames[half:]))

    def _display(self, frames: list[_Frame]) -> list[_Frame]:
        """Show frames on the DMD in order; return what each exposure sees (the frame k triggers earlier)."""
        self._dmd_frame_count += len(frames)
        if self._lag == 0:
            return frames
        pipeline = list(self._history) + frames
        self._history = deque(pipeline[len(frames):])
        return pipeline[:len(frames)]

    def _capture(self, seen: list[_Frame]) -> None:
        """Expose, read out and queue one camera frame per trigger; advance device time."""
        n = len(seen)
        roi = self._roi
        n_px = roi[2] * roi[3]
        pixel_bytes = wire.pixel_payload_size(self._pixel_format, n_px)
        packet_bytes = wire.HEADER_SIZE + wire.CAMERA_META_SIZE + pixel_bytes + wire.CRC_SIZE
        # Nothing drains the FIFO while a synchronous sequence runs, so exactly the first n_fit frames fit.
        n_fit = min(n, max(0, self._in_fifo_bytes - len(self._fifo)) // packet_bytes)
        if n_fit:
            self._compute_frames(seen[:n_fit])
        dropped = n - n_fit
        if dropped:
            self._cam_dropped += dropped
            self._fifo_overflowed = True
            _log.info("%s: IN FIFO full, %d camera frames dropped", self._name, dropped)
        self._cam_frame_count += n
        self._device_time_us += n * self._frame_time_us
        self._medium_time_us += n * self._frame_time_us

    def _compute_frames(self, seen: list[_Frame]) -> None:
        roi = self._roi
        self._sync_optics_roi()
        light_on = self.controller.light_on
        bits = wire.pixel_bits(self._pixel_format)
        full_scale = (1 << bits) - 1
        n_px = roi[2] * roi[3]
        batch_max = max(1, min(_MAX_BATCH_FRAMES, _BATCH_VALUES // max(n_px, 1)))
        if batch_max >= _OPTICS_BLOCK_FRAMES:
            # The optics multiply in fixed blocks of up to 512 rows (zero-padded): whole blocks waste nothing.
            batch_max -= batch_max % _OPTICS_BLOCK_FRAMES
        start = 0
        for kind, group in _runs_of_kind(seen, light_on):
            for offset in range(0, len(group), batch_max):
                batch = group[offset:offset + batch_max]
                first = start + offset
                index = np.arange(first, first + len(batch), dtype=np.int64)
                times_us = (self._medium_time_us + index * self._frame_time_us).astype(np.float64)
                intensity = self._intensity(kind, batch, times_us)
                if self._light_factor != 1.0:
                    intensity = intensity * self._light_factor  # injected ``saturate``: the light jumped
                counts = self._sensor.capture(
                    intensity, roi=roi, frame_indices=self._cam_frame_count + index,
                    exposure_us=self._exposure_us, gain=self._gain_milli / 1000.0,
                    laser_power_mw=self.controller.power_mw, light_on=light_on, bits=bits,
                )
                flags = np.where(np.any(counts >= full_scale, axis=1), wire.FLAG_SATURATED, 0)
                if not light_on:
                    flags = flags | wire.FLAG_DARK
                packets = wire.encode_camera_frames(
                    (self._cam_frame_count + index) & 0xFFFFFFFF,
                    [f.frame_id for f in batch],
                    self._device_time_us + index * self._frame_time_us,
                    flags,
                    exposure_us=self._exposure_us, roi=roi, pixel_format=self._pixel_format,
                    pixels=wire.pack_pixels(self._pixel_format, counts),
                )
                if self.faults.active:
                    packets = self.faults.camera_packets(bytes(packets), len(packets) // len(batch))
                self._fifo += packets
                self._counters["frames_computed"] += len(batch)
            start += len(group)

    def _intensity(self, kind: int, batch: list[_Frame], times_us: npt.NDArray[np.float64]) -> np.ndarray:
        if kind == _FEATURE:
            return self._optics.intensity_features(self._feature_bits(batch), times_us)
        if kind == _RAW:
            packed = np.stack([np.frombuffer(f.data, dtype=np.uint8, count=self._mirror_bytes, offset=f.offset)
                               for f in batch])
            packed[:, -1] &= self._last_byte_mask  # padding bits are not mirrors
            return self._optics.intensity_raw(packed, times_us)
        return self._optics.intensity_blank(len(batch))

    def _feature_bits(self, frames: list[_Frame]) -> npt.NDArray[np.uint8]:
        n_bytes = (self._layout_features + 7) // 8
        packed = np.stack([np.frombuffer(f.data, dtype=np.uint8, count=n_bytes, offset=f.offset) for f in frames])
        return np.unpackbits(packed, axis=1, count=self._layout_features)

    # -- serial controller line --------------------------------------------------------------------
    def serial_write(self, data: bytes | bytearray | memoryview) -> int:
        """Bytes from the host to the controller; replies become readable at once. Dead line: discarded."""
        with self._lock:
            if not self.connected:
                return len(data)
            reply = self.controller.feed(data)
            if reply:
                if self.faults.active:
                    reply = self.faults.serial_garbage() + reply
                self._append_serial(reply)
            return len(data)

    def _append_serial(self, data: bytes) -> None:
        room = SERIAL_OUT_LIMIT_BYTES - len(self._serial_out)
        if len(data) > room:
            self._counters["serial_dropped_bytes"] += len(data) - room
            data = data[:max(room, 0)]
        self._serial_out += data
        self._serial_ready.notify_all()

    def serial_read(self, size: int) -> bytes:
        """Up to ``size`` reply bytes from the controller; b"" when none wait."""
        with self._lock:
            size = min(size, len(self._serial_out))
            data = bytes(self._serial_out[:size])
            del self._serial_out[:size]
            return data

    @property
    def serial_in_waiting(self) -> int:
        return len(self._serial_out)

    def serial_reset_input(self) -> None:
        """Discard reply bytes the host has not read."""
        with self._lock:
            self._serial_out.clear()

    def serial_wait(self, timeout_s: float | None) -> bool:
        """Block until reply bytes wait (True) or ``timeout_s`` passes (False); None waits forever."""
        with self._serial_ready:
            return self._serial_ready.wait_for(lambda: bool(self._serial_out) or not self.connected, timeout_s) \
                and bool(self._serial_out)

    def __repr__(self) -> str:
        return f"<EmulatedDevice {self._name} serial={self.serial_number}>"


def _runs_of_kind(frames: list[_Frame], light_on: bool) -> Iterable[tuple[int, list[_Frame]]]:
    """Split frames into consecutive runs of one kind; in the dark every frame is computed as blank."""
    if not light_on:
        yield _BLANK, frames
        return
    for kind, group in itertools.groupby(frames, key=lambda f: f.kind):
        yield kind, list(group)


def _frame_fits(n_pixels: int, pixel_format: int) -> bool:
    """A CAMERA_FRAME of n_pixels in this format fits the protocol's payload limit."""
    return wire.CAMERA_META_SIZE + wire.pixel_payload_size(pixel_format, n_pixels) <= wire.MAX_PAYLOAD


def _register_name(address: int) -> str:
    try:
        return Register(address).name
    except ValueError:
        return f"0x{address:04X}"
