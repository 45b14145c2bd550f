"""The parts a lab buys, as the lab backends see them: a DMD that plays preloaded pictures, a camera triggered
on a line, a light source.

These interfaces are one level below the Opu's (:class:`~opu_driver.devices.Dmd`, ``Camera``, ``Controller``):
a lab DMD knows nothing of frame ids or layout tables, and a lab camera reports its own frame ids and clock. The
lab rig (:mod:`opu_driver.devices.lab.rig`) composes them behind the Opu's interfaces and ties camera buffers to
DMD pictures (:mod:`opu_driver.devices.lab.sync`). A backend (ALP, DLPC900, Aravis, a serial laser, the
emulated parts) implements one of these classes; each method says what it must guarantee.

Pictures travel as the driver's raw frames: one row of ``ceil(width * height / 8)`` bytes per picture, the
mirrors in row-major order from the top-left, eight per byte, the first mirror in the most significant bit
(``numpy.packbits`` of the flattened picture). A backend converts them to its device's format in
:meth:`PatternDmd.prepare`, which is host work only, so that it can be timed (``opu bench``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ...protocol import PixelFormat

__all__ = [
    "PatternDmd",
    "PatternDmdInfo",
    "TriggeredCamera",
    "TriggeredCameraInfo",
    "GrabSettings",
    "CameraBuffer",
    "StreamCounters",
    "LightSource",
    "LightSourceInfo",
]


# ----------------------------------------------------------------------------------------------------- the DMD
@dataclass(frozen=True)
class PatternDmdInfo:
    """What a pattern DMD says about itself when it opens.

    Attributes:
        model, serial_number: as the device or its library reports them.
        width, height: mirrors.
        max_pictures: the most pictures one loaded sequence may hold (device memory, or a LUT's entries).
        min_picture_time_us: the shortest time one binary picture may be shown (trigger period).
        counts_progress: whether :meth:`PatternDmd.progress` counts the pictures shown (else it returns None).
    """

    model: str
    serial_number: str
    width: int
    height: int
    max_pictures: int
    min_picture_time_us: int
    counts_progress: bool


class PatternDmd(ABC):
    """A DMD that shows a loaded sequence of binary pictures once, sending one trigger-out pulse per picture.

    The pulse drives the camera's frame trigger, so each picture shown makes one exposure. ``play`` shows every
    picture of the sequence in order, each for ``picture_time_us``; nothing is shown between plays.
    """

    @abstractmethod
    def open(self) -> PatternDmdInfo:
        """Connect to the device and read what it is. Raises DeviceNotFoundError, LibraryLoadError, DeviceError."""

    @abstractmethod
    def prepare(self, packed: npt.NDArray[np.uint8]) -> Any:
        """Convert pictures packed as the driver's raw frames, shape (n, ceil(width*height/8)), into what
        :meth:`load` sends (the device's own format); host work only, nothing is sent."""

    @abstractmethod
    def load(self, prepared: Any, n_pictures: int, picture_time_us: int) -> None:
        """Load a prepared sequence of ``n_pictures`` (replacing the previous one), each to be shown
        ``picture_time_us`` with one trigger-out pulse. Raises DeviceRefusedError for a sequence the device
        does not take (too many pictures, a time below its minimum), nothing half-loaded left to play."""

    @abstractmethod
    def play(self) -> None:
        """Start showing the loaded sequence once (returns at once; the device runs on its own clock)."""

    @abstractmethod
    def wait(self, timeout_s: float) -> None:
        """Block until the sequence has been shown. Raises CommunicationTimeoutError at ``timeout_s``."""

    @abstractmethod
    def progress(self) -> int | None:
        """Pictures of the current (or last) play shown so far, or None where the device cannot tell."""

    @abstractmethod
    def halt(self) -> None:
        """Stop showing at once and leave the mirrors parked; safe in any state, never raises for a stopped one."""

    @abstractmethod
    def close(self) -> None:
        """Halt and release the device; idempotent."""


# -------------------------------------------------------------------------------------------------- the camera
@dataclass(frozen=True)
class TriggeredCameraInfo:
    """What a triggered camera says about itself when it opens.

    Attributes:
        model, serial_number: as the device reports them.
        width, height: sensor pixels.
        pixel_formats: the formats the driver can use (GenICam Mono8, Mono10, Mono12, Mono10p, Mono12p).
        frame_id_modulus: where the camera's frame id wraps (65,536 for a 16-bit GigE Vision block id); a
            frame id ``i`` is followed by ``(i + 1) % frame_id_modulus``, skipping any id in ``skipped_ids``.
        skipped_ids: ids a wrapping counter never takes (GigE Vision skips 0 after it wraps).
        timestamp_tick_ns: nanoseconds per tick of the device clock the buffers carry.
        max_buffers: the most buffers the camera and host may hold at once (the stream's bound).
        exposure_range_us: the shortest and longest exposure the camera takes.
        gain_range, gain_unit: the camera's gain range, in its unit: "factor", "dB" or "raw" (see
            :class:`~opu_driver.devices.CameraGeometry`).
    """

    model: str
    serial_number: str
    width: int
    height: int
    pixel_formats: tuple[PixelFormat, ...]
    frame_id_modulus: int
    skipped_ids: tuple[int, ...] = ()
    timestamp_tick_ns: float = 1.0
    max_buffers: int = 1024
    exposure_range_us: tuple[int, int] = (10, 1_000_000)
    gain_range: tuple[float, float] = (1.0, 16.0)
    gain_unit: str = "factor"


@dataclass(frozen=True)
class GrabSettings:
    """What a triggered camera is set to: its region (sensor pixels), exposure, analogue gain and pixel format.

    ``trigger_line`` is the input line the DMD's trigger-out drives (``"Line1"``); None runs the camera on its
    own clock (for tests of the camera alone).
    """

    x: int
    y: int
    width: int
    height: int
    exposure_us: int
    gain: float
    pixel_format: PixelFormat
    trigger_line: str | None = "Line1"


@dataclass(frozen=True)
class CameraBuffer:
    """One buffer the camera delivered.

    Attributes:
        frame_id: the camera's own id (wraps at ``frame_id_modulus``): a gap shows frames lost in transport.
        device_time_ns: when the exposure started, on the camera's clock (nanoseconds).
        host_time_ns: when the host received it (``time.monotonic_ns``).
        complete: False when the buffer arrived damaged (packets missing, a size mismatch): its pixels are not
            to be used, but its id and time still count.
        pixels: the region's pixels, shape (height, width), uint8 or uint16, when ``complete``.
        detail: why it is not complete.
    """

    frame_id: int
    device_time_ns: int
    host_time_ns: int
    complete: bool
    pixels: npt.NDArray[Any] | None
    detail: str = ""


@dataclass(frozen=True)
class StreamCounters:
    """The stream's own counts since it was opened (what the camera library says, not the driver's inference)."""

    completed: int = 0
    failures: int = 0
    missing_frames: int = 0
    missing_packets: int = 0
    timeouts: int = 0


class TriggeredCamera(ABC):
    """A camera that takes one exposure per pulse on its trigger line and delivers numbered, timestamped buffers."""

    @abstractmethod
    def open(self) -> TriggeredCameraInfo:
        """Connect and read what the camera is. Raises DeviceNotFoundError, LibraryLoadError, DeviceError."""

    @abstractmethod
    def configure(self, settings: GrabSettings) -> GrabSettings:
        """Write the settings (acquisition stopped) and return what the camera now holds (values it rounded).
        Raises ConfigurationError for values the camera refuses; the previous settings stay."""

    @abstractmethod
    def read_settings(self) -> GrabSettings:
        """What the camera holds now (read from it)."""

    @abstractmethod
    def start(self) -> None:
        """Arm the acquisition: from now on every trigger makes a buffer (idempotent while armed)."""

    @abstractmethod
    def read(self, timeout_s: float) -> CameraBuffer | None:
        """The next buffer, or None when none came within ``timeout_s``."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the acquisition and discard buffers not yet read; safe in any state."""

    @abstractmethod
    def counters(self) -> StreamCounters:
        """The stream's counters."""

    @abstractmethod
    def close(self) -> None:
        """Stop and release the camera; idempotent."""


# ---------------------------------------------------------------------------------------------- the light source
@dataclass(frozen=True)
class LightSourceInfo:
    """What a light source says about itself: identity, and the power range (0 where it cannot be set)."""

    manufacturer: str
    model: str
    serial_number: str
    firmware_version: str
    max_power_mw: float


class LightSource(ABC):
    """A laser (with an optional shutter): on and off, power, interlock."""

    @abstractmethod
    def open(self) -> LightSourceInfo:
        """Connect and read what it is. Raises DeviceNotFoundError, DeviceError."""

    @abstractmethod
    def set_on(self, on: bool) -> None:
        """Switch the emission on or off. Raises InterlockError when the interlock forbids it."""

    @abstractmethod
    def is_on(self) -> bool:
        """Whether it emits now (read from the device)."""

    @abstractmethod
    def set_power_mw(self, power_mw: float) -> None:
        """Set the output power (0 ..= max_power_mw, checked by the caller)."""

    @abstractmethod
    def power_mw(self) -> float:
        """The output power now (as the device measures or reports it)."""

    def set_point_mw(self) -> float:
        """The power it was set to (what the Opu's ``laser_power_mw`` reports); by default the output power."""
        return self.power_mw()

    @abstractmethod
    def interlock_ok(self) -> bool:
        """Whether the interlock allows emission."""

    @abstractmethod
    def close(self) -> None:
        """Switch the emission off and release the line; idempotent."""
