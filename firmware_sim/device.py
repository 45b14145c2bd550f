"""The emulated OPU: its firmware's parts put together behind the USB and serial entry points.

:class:`EmulatedDevice` is what a real device runs on its microcontroller. The backends call it with raw
bytes and register accesses (``usb_*`` methods for the pyusb backend, ``serial_*`` for the controller line)
and it answers as docs/protocol.md says: a refused register access returns ``None`` / ``False`` (the backend
turns it into a STALL) and latches the code in LAST_ERROR; a refused packet latches its code; nothing raises
across the wire.

A device HAS these parts, each in its own module:

- ``registers`` (:mod:`firmware_sim.registers`): the register map, READ_REG / WRITE_REG and their checks,
  the LAST_ERROR latch;
- ``sequencer`` (:mod:`firmware_sim.sequencer`): the OUT stream, sequence memory, the layout table, START,
  ABORT and triggers, the lag pipeline, device time;
- ``capture`` (:mod:`firmware_sim.capture`): the camera settings, exposures through the optics and the
  sensor, the IN FIFO and its dropped frames;
- ``controller`` (:mod:`firmware_sim.controller`): the serial line and the light path;
- ``faults`` (:mod:`firmware_sim.faults`): the fault plan, which outlives resets;
- ``optics`` and ``sensor``: the physics (:mod:`firmware_sim.optics`, :mod:`firmware_sim.sensor`).

This module adds what belongs to the device as a whole: the USB identity and endpoints, power, reset,
plugging, the controller line's output buffer, and the lock. The emulation is synchronous: in trigger mode
INT, START computes and queues every camera frame of the sequence before the control request returns.

One lock guards everything, so a pseudo-terminal thread and in-process callers may share a device. The
parts do not lock: reach them directly only from the thread that owns the device (tests, diagnostics).
"""

from __future__ import annotations

import itertools
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import wire
from .capture import Capture
from .config import SimConfig
from .controller import ControllerLine
from .dmd import DmdGeometry, LayoutTable
from .errors import SimConfigError
from .faults import FaultInjector, FaultPlan
from .optics import OpticalPath
from .registers import (
    FRAME_GAP_US,
    MAX_EXPOSURE_US,
    MAX_GAIN_MILLI,
    MIN_EXPOSURE_US,
    MIN_GAIN_MILLI,
    Register,
    RegisterFile,
    StatusBit,
    frame_fits,
    readout_us,
)
from .sensor import Sensor
from .sequencer import Sequencer
from .wire import PixelFormat

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


@dataclass(frozen=True)
class UsbIdentity:
    """What the USB descriptors of section 1.1 say about this device."""

    vendor_id: int
    product_id: int
    bcd_device: int
    manufacturer: str
    product: str
    serial_number: str


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
        self._optics = OpticalPath(config) if optics is None else optics
        self._sensor = Sensor(config) if sensor is None else sensor
        self._lock = threading.RLock()
        self._serial_ready = threading.Condition(self._lock)
        major, minor, patch = (int(v) for v in config.firmware_version)  # SimConfig checked it is a triple
        version = (major, minor, patch)
        self.usb_identity = UsbIdentity(
            USB_VENDOR_ID,
            USB_PRODUCT_ID,
            (_bcd(major) << 8) | _bcd(minor),
            "OPU Open Stack",
            str(config.model),
            str(config.serial_number),
        )
        self.controller = ControllerLine(
            self,
            model=str(config.model),
            serial_number=str(config.serial_number),
            firmware_version=version,
            default_power_mw=float(config.laser_power_mw),
            max_power_mw=float(config.laser_power_max_mw),
        )
        # The fault plan lives outside the device model: a reset (even an injected one) keeps it.
        self.faults = FaultInjector(getattr(config, "faults", ""), int(config.seed))
        dmd = DmdGeometry(config.dmd_width, config.dmd_height)
        self._layout = LayoutTable(dmd)
        self.capture = Capture(
            config,
            optics=self._optics,
            sensor=self._sensor,
            controller=self.controller,
            faults=self.faults,
            dmd=dmd,
            layout=self._layout,
            name=self._name,
        )
        self.sequencer = Sequencer(
            config,
            dmd=dmd,
            layout=self._layout,
            capture=self.capture,
            controller=self.controller,
            faults=self.faults,
            optics=self._optics,
            reset_usb_side=lambda: self._reset_usb_side(keep_fifo=True),
            name=self._name,
        )
        self.registers = RegisterFile(
            config,
            firmware_word=(version[0] << 16) | (version[1] << 8) | version[2],
            sequencer=self.sequencer,
            capture=self.capture,
            layout=self._layout,
            controller=self.controller,
            name=self._name,
        )
        self._serial_out = bytearray()
        self._serial_dropped_bytes = 0
        self.connected = True
        self.plug_generation = 0
        self.reset()
        _log.info(
            "emulated OPU %s: serial %s, DMD %dx%d, camera %dx%d, lag %d",
            self._name,
            config.serial_number,
            dmd.width,
            dmd.height,
            config.camera_width,
            config.camera_height,
            config.lag_frames,
        )

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
        if not frame_fits(config.camera_width * config.camera_height, PixelFormat.MONO8):
            refuse(f"camera {config.camera_width}x{config.camera_height}: a full 8-bit frame must fit one packet")
        if config.lag_frames < 0:
            refuse(f"lag_frames={config.lag_frames} must be >= 0")

    # -- identity and parts ------------------------------------------------------------------------
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
            sequencer = self.sequencer.counters
            parser = self.sequencer.parser
            return {
                "type_errors": sequencer["type_errors"],
                "length_errors": sequencer["length_errors"],
                "refused_packets": sequencer["refused_packets"],
                "register_stalls": self.registers.stalls,
                "serial_dropped_bytes": self._serial_dropped_bytes,
                "frames_computed": self.capture.frames_computed,
                "junk_bytes": parser.junk_bytes,
                "header_errors": parser.header_errors,
                "crc_errors": parser.crc_errors,
                "packets": parser.packets,
                "buffered_out_bytes": parser.buffered,
                "in_fifo_bytes": self.capture.in_fifo_bytes,
            }

    # -- power, reset, faults ----------------------------------------------------------------------
    def reset(self) -> None:
        """Power-on state: default settings from the config, empty memories, counters and device time at 0."""
        with self._lock:
            self._reset_usb_side(keep_fifo=False)
            self.controller.power_on()

    def _reset_usb_side(self, keep_fifo: bool) -> None:
        """The USB microcontroller restarts: registers, sequence memory, layout and lag pipeline lost."""
        with self._lock:
            self.registers.reset()
            self.capture.reset(keep_fifo=keep_fifo)
            self.sequencer.reset()
            if not keep_fifo:
                self._serial_out = bytearray()

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
            self.capture.inject(data)

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
        return self.sequencer.device_time_us

    @property
    def sequence_running(self) -> bool:
        return self.sequencer.running

    def abort_sequence(self) -> None:
        with self._lock:
            self.sequencer.abort()

    # -- USB: bulk endpoints -----------------------------------------------------------------------
    def usb_bulk_write(self, endpoint: int, data: bytes | bytearray | memoryview) -> int:
        """Bytes on the DMD OUT endpoint: parsed as a packet stream; every byte is accepted."""
        if endpoint != EP_DMD_OUT:
            raise ValueError(f"endpoint 0x{endpoint:02X} is not the DMD OUT endpoint")
        with self._lock:
            for code in self.sequencer.receive(data):
                self.registers.latch_error(code)
            return len(data)

    def usb_bulk_read(self, endpoint: int, size: int) -> bytes:
        """Up to ``size`` bytes of the IN FIFO; b"" when it is empty."""
        if endpoint != EP_CAMERA_IN:
            raise ValueError(f"endpoint 0x{endpoint:02X} is not the CAMERA IN endpoint")
        with self._lock:
            return self.capture.read(size)

    @property
    def in_fifo_bytes(self) -> int:
        """Bytes waiting in the IN FIFO."""
        return self.capture.in_fifo_bytes

    # -- USB: registers ----------------------------------------------------------------------------
    def usb_ctrl_read_register(self, address: int, length: int = 4) -> int | None:
        """READ_REG: the value, or None for a STALL (the reason is latched in LAST_ERROR)."""
        with self._lock:
            return self.registers.read(address, length)

    def usb_ctrl_write_register(self, address: int, value: int, length: int = 4) -> bool:
        """WRITE_REG: True when accepted; False for a STALL (nothing changed, reason in LAST_ERROR)."""
        with self._lock:
            return self.registers.write(address, value, length)

    def expand_feature_bits(self, bits: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Packed mirror frames (n, ceil(W*H/8)) that the loaded layout makes of feature bits (n, F)."""
        with self._lock:
            return self._layout.expand(bits)

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
            self._serial_dropped_bytes += len(data) - room
            data = data[: max(room, 0)]
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
            return self._serial_ready.wait_for(
                lambda: bool(self._serial_out) or not self.connected, timeout_s
            ) and bool(self._serial_out)

    def __repr__(self) -> str:
        return f"<EmulatedDevice {self._name} serial={self.serial_number}>"
