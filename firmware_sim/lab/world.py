"""The emulated optics of a lab-built OPU: pictures a DMD shows become exposures of a camera triggered by it.

A lab rig has no device that ties its parts together: the DMD's trigger-out pulse starts each camera exposure.
:class:`LabWorld` plays that wiring. An emulated DMD (the fake ALP library, the DLPC900 emulator, or the plain
:class:`EmulatedPatternDmd`) calls :meth:`LabWorld.display` for each picture it shows, at the picture's time on
the DMD's clock; the :class:`EmulatedCamera` takes one exposure per such pulse (when armed and triggered by that
line) through the same scattering medium and sensor model as the protocol-v1 emulator (:mod:`firmware_sim.optics`,
:mod:`firmware_sim.sensor`), so that results on a lab rig can be checked against the same ground truth.

The camera behaves as a GenICam camera does: 16-bit frame ids that start near the top of their range and wrap to
1 (0 is never used), device timestamps in nanoseconds, a bounded buffer pool (an exposure with no free buffer is
lost and counted), and faults drawn per exposure from a seeded generator: a trigger the camera misses (no
exposure, no id), a buffer lost in transport (an id skipped), a buffer delivered incomplete.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..config import SimConfig
from ..errors import SimError
from ..optics import OpticalPath
from ..sensor import Sensor

__all__ = ["LabWorld", "EmulatedCamera", "EmulatedPatternDmd", "CameraFaults", "FIRST_FRAME_ID"]

_log = logging.getLogger(__name__)

FIRST_FRAME_ID = 65_400
"""The first frame id of the emulated camera: the 16-bit counter wraps within the first 136 exposures."""
_ID_MODULUS = 1 << 16
_PLAY_GAP_US = 1_000  # virtual time between two plays of the DMD
_IMAGE_BATCH = 256  # exposures whose images are computed together


@dataclass(frozen=True)
class CameraFaults:
    """Per-exposure probabilities of the emulated camera's faults (all 0 by default)."""

    trigger_miss: float = 0.0
    transport_loss: float = 0.0
    incomplete: float = 0.0

    def __post_init__(self) -> None:
        for name in ("trigger_miss", "transport_loss", "incomplete"):
            value = getattr(self, name)
            if not 0.0 <= value <= 0.5:
                raise SimError(f"camera fault {name}={value!r} outside 0..0.5")


@dataclass
class _Exposure:
    packed: npt.NDArray[np.uint8]
    time_us: int
    frame_id: int
    fate: str  # "ok", "lost", "incomplete"
    light_on: bool
    power_mw: float
    image: npt.NDArray[np.uint16] | None = None


@dataclass
class CameraCounters:
    """What the emulated camera did: exposures made, lost for want of a buffer, and each fault drawn."""

    exposures: int = 0
    delivered: int = 0
    no_buffer: int = 0
    triggers_missed: int = 0
    transport_lost: int = 0
    incomplete: int = 0


class EmulatedCamera:
    """A GenICam-like camera on the world's trigger line: settings, an armed stream, numbered buffers.

    Its gain is a linear factor (1..16) or, with ``gain_db``, decibels (0..24 dB) as a GenICam ``Gain`` feature
    has it; the sensor is given the factor either way.
    """

    BITS = {"Mono8": 8, "Mono10": 10, "Mono12": 12}
    MAX_GAIN_DB = 24.0

    def __init__(
        self, world: LabWorld, *, max_buffers: int = 256, faults: CameraFaults | None = None, gain_db: bool = False
    ) -> None:
        config = world.config
        self.world = world
        self.width, self.height = config.camera_width, config.camera_height
        self.serial_number = config.serial_number or f"EMUCAM-{config.seed:04d}"
        self.max_buffers = int(max_buffers)
        self.faults = faults or CameraFaults()
        self.roi = (0, 0, self.width, self.height)
        self.exposure_us = config.exposure_us
        self.gain_db = bool(gain_db)
        self.gain = round(20.0 * math.log10(config.gain), 3) if gain_db else config.gain
        self.pixel_format = "Mono12"
        self.trigger_line: str | None = "Line1"
        self.counters = CameraCounters()
        self._armed = False
        self._queue: collections.deque[_Exposure] = collections.deque()
        self._next_id = FIRST_FRAME_ID
        self._exposure_index = 0  # keys the sensor's noise stream
        self._rng = np.random.default_rng([config.seed, 0x1AB])
        self._ready = threading.Condition()

    # -- settings --------------------------------------------------------------------------------------
    def configure(
        self, roi: tuple[int, int, int, int], exposure_us: int, gain: float, pixel_format: str, trigger_line: str | None
    ) -> None:
        """Write the settings (the stream must be stopped). Raises SimError for values the camera refuses."""
        if self._armed:
            raise SimError("camera settings are locked while the acquisition runs")
        x, y, w, h = (int(v) for v in roi)
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > self.width or y + h > self.height:
            raise SimError(f"region {roi} does not fit the {self.width}x{self.height} sensor")
        if pixel_format not in self.BITS:
            raise SimError(f"pixel format {pixel_format!r} not supported: {sorted(self.BITS)}")
        if not 10 <= int(exposure_us) <= 1_000_000:
            raise SimError(f"exposure {exposure_us} us outside 10..1000000")
        low, high = self.gain_range
        if not low <= float(gain) <= high:
            raise SimError(f"gain {gain} outside {low:g}..{high:g}")
        if trigger_line not in (None, "Line1", "Line0"):
            raise SimError(f"no trigger line {trigger_line!r}: Line1 is wired to the DMD, Line0 to nothing")
        self.roi, self.exposure_us, self.gain = (x, y, w, h), int(exposure_us), float(gain)
        self.pixel_format, self.trigger_line = pixel_format, trigger_line

    @property
    def gain_range(self) -> tuple[float, float]:
        """The gain the camera takes, in its unit (dB with ``gain_db``, else a factor)."""
        return (0.0, self.MAX_GAIN_DB) if self.gain_db else (1.0, 16.0)

    @property
    def gain_factor(self) -> float:
        """The linear gain the sensor applies."""
        return 10.0 ** (self.gain / 20.0) if self.gain_db else self.gain

    # -- the stream ------------------------------------------------------------------------------------
    def start(self) -> None:
        self._armed = True

    def stop(self) -> None:
        """Stop the acquisition and drop the buffers not yet read."""
        with self._ready:
            self._armed = False
            self._queue.clear()

    def pulse(self, packed: npt.NDArray[np.uint8], time_us: int, light_on: bool, power_mw: float) -> None:
        """The DMD's trigger-out for one picture: one exposure, if armed and wired to the DMD's line."""
        if not self._armed or self.trigger_line != "Line1":
            return
        faults = self.faults
        draw = self._rng.random(3)
        if draw[0] < faults.trigger_miss:
            self.counters.triggers_missed += 1
            return
        self.counters.exposures += 1
        frame_id = self._next_id
        self._next_id = self._next_id % (_ID_MODULUS - 1) + 1  # 65535 -> 1: GigE Vision never uses id 0
        with self._ready:
            if len(self._queue) >= self.max_buffers:
                self.counters.no_buffer += 1
                return
            fate = "lost" if draw[1] < faults.transport_loss else "incomplete" if draw[2] < faults.incomplete else "ok"
            self._queue.append(_Exposure(packed, int(time_us), frame_id, fate, light_on, power_mw))
            self._ready.notify_all()

    def read(self, timeout_s: float) -> dict[str, Any] | None:
        """The next buffer (frame_id, device_time_ns, complete, pixels), or None after ``timeout_s``."""
        deadline = time.monotonic() + max(0.0, timeout_s)
        while True:
            with self._ready:
                while not self._queue:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._ready.wait(left):
                        if not self._queue:
                            return None
                exposure = self._queue.popleft()
            if exposure.fate == "lost":
                self.counters.transport_lost += 1
                continue
            complete = exposure.fate == "ok"
            self.counters.delivered += 1
            if not complete:
                self.counters.incomplete += 1
            pixels = self._image(exposure) if complete else None
            exposure.image = None
            return {
                "frame_id": exposure.frame_id,
                "device_time_ns": exposure.time_us * 1000,
                "complete": complete,
                "pixels": pixels,
            }

    def _image(self, exposure: _Exposure) -> npt.NDArray[np.uint16]:
        """The exposure's image; computed with those waiting behind it under the same light, in one batch."""
        if exposure.image is None:
            with self._ready:
                batch = [exposure] + [
                    e
                    for e in itertools.islice(self._queue, _IMAGE_BATCH - 1)
                    if e.fate == "ok"
                    and e.image is None
                    and (e.light_on, e.power_mw) == (exposure.light_on, exposure.power_mw)
                ]
            x, y, w, h = self.roi
            optics = self.world.optics
            optics.set_roi(x, y, w, h)
            packed = np.stack([e.packed for e in batch])
            intensity = optics.intensity_raw(packed, np.array([e.time_us for e in batch]))
            first = self._exposure_index
            self._exposure_index += len(batch)
            counts = self.world.sensor.capture(
                intensity,
                roi=(x, y, w, h),
                frame_indices=np.arange(first, first + len(batch)),
                exposure_us=self.exposure_us,
                gain=self.gain_factor,
                laser_power_mw=exposure.power_mw,
                light_on=exposure.light_on,
                bits=self.BITS[self.pixel_format],
            )
            for e, image in zip(batch, counts, strict=True):
                e.image = image.reshape(h, w)
        assert exposure.image is not None
        return exposure.image


class EmulatedPatternDmd:
    """A DMD that plays a loaded sequence of pictures on the world's clock, one trigger-out pulse per picture."""

    def __init__(self, world: LabWorld, *, max_pictures: int = 4096, min_picture_time_us: int = 100) -> None:
        config = world.config
        self.world = world
        self.width, self.height = config.dmd_width, config.dmd_height
        self.frame_bytes = -(-self.width * self.height // 8)
        self.max_pictures = int(max_pictures)
        self.min_picture_time_us = int(min_picture_time_us)
        self.serial_number = f"EMUDMD-{config.seed:04d}"
        self._pictures: npt.NDArray[np.uint8] | None = None
        self._picture_time_us = 0
        self.shown = 0

    def load(self, packed: npt.NDArray[np.uint8], picture_time_us: int) -> None:
        pictures = np.asarray(packed)
        if pictures.dtype != np.uint8 or pictures.ndim != 2 or pictures.shape[1] != self.frame_bytes:
            raise SimError(f"pictures must be uint8 of shape (n, {self.frame_bytes}), got {pictures.shape}")
        if not 1 <= pictures.shape[0] <= self.max_pictures:
            raise SimError(f"{pictures.shape[0]} pictures: the sequence memory holds 1..{self.max_pictures}")
        if picture_time_us < self.min_picture_time_us:
            raise SimError(f"picture time {picture_time_us} us below the minimum {self.min_picture_time_us} us")
        self._pictures = pictures.copy()
        self._picture_time_us = int(picture_time_us)

    def play(self) -> None:
        """Show every picture once (in virtual time: this returns when the play is over)."""
        if self._pictures is None:
            raise SimError("no sequence loaded")
        self.shown = 0
        for index, picture in enumerate(self._pictures):
            self.world.display(picture, index, self._picture_time_us)
            self.shown += 1

    def halt(self) -> None:
        self.world.end_play()


class LabWorld:
    """The optics and the trigger wiring of one emulated lab rig (the DMD's trigger-out -> the camera's Line1).

    Args:
        config: the optics and sensor options of the protocol-v1 emulator (``SimConfig``: sizes, seed, noise).
        light: returns (emitting, power in mW) of the light source now; the emulated laser's state.
    """

    def __init__(self, config: SimConfig, light: Callable[[], tuple[bool, float]] | None = None) -> None:
        self.config = config
        self.optics = OpticalPath(config)
        self.sensor = Sensor(config)
        self.light = light or (lambda: (True, config.laser_power_mw))
        self.cameras: list[EmulatedCamera] = []
        self.now_us = 0
        self._play_start_us: int | None = None
        self._play_dmd_start_us: int | None = None
        self.pictures_shown = 0

    @property
    def ground_truth(self) -> Any:
        """The optics' reference model (current ROI), for in-process tests."""
        return self.optics.ground_truth

    def camera_roi(self) -> tuple[int, int, int, int]:
        """The region (x, y, w, h) of the first camera on the sensor."""
        return self.cameras[0].roi

    def add_camera(self, camera: EmulatedCamera) -> None:
        self.cameras.append(camera)

    def display(
        self, packed: npt.NDArray[np.uint8], index: int, picture_time_us: int, time_us: int | None = None
    ) -> None:
        """One picture shown by the DMD (``index`` in its play, each shown ``picture_time_us``, at ``time_us`` on
        the DMD's own clock when it has one): its trigger-out pulse reaches every camera wired to the DMD. The
        cameras' clock runs on from play to play; within a play the pulses keep the DMD's spacing."""
        if index == 0 or self._play_start_us is None:
            self._play_start_us = self.now_us + _PLAY_GAP_US
            self._play_dmd_start_us = time_us
        if time_us is None or self._play_dmd_start_us is None:
            pulse_us = self._play_start_us + index * int(picture_time_us)
        else:
            pulse_us = self._play_start_us + int(time_us) - int(self._play_dmd_start_us)
        self.now_us = pulse_us + int(picture_time_us)
        self.pictures_shown += 1
        on, power_mw = self.light()
        picture = np.array(packed, dtype=np.uint8, copy=True)
        for camera in self.cameras:
            camera.pulse(picture, pulse_us, on, power_mw)

    def end_play(self) -> None:
        """The DMD stopped: the next picture starts a new play."""
        self._play_start_us = None
