"""The parts of a lab rig behind the Opu's interfaces: :class:`LabDmd`, :class:`LabCamera`, :class:`LabController`.

The Opu and its sequence runner speak of DMD frame ids, a camera whose frames name the DMD frame they saw, and
frame counters. A lab DMD has no ids and a lab camera knows nothing of the DMD, so the ids live on the host:
:class:`LabDmd` keeps the queued frames with their ids, loads them as one sequence and plays it; :class:`LabCamera`
reads that play's buffers, places each at its picture (:func:`~opu_driver.devices.lab.sync.match_play`) and hands
the runner camera frames that carry the picture's DMD id and its position among all the exposures triggered so
far. Pictures the matching cannot place are simply not handed over: the runner sees them missing and shows them
again, as it does for any frame lost on the way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

from ...encoding.layouts import Layout
from ...errors import CommunicationTimeoutError, ConfigurationError, DeviceError, DeviceRefusedError
from ...protocol import CameraFrame, FrameFlags, PixelFormat, encode_pixels
from ...protocol.pixels import bits_per_pixel
from ..camera import MIN_FRAME_GAP_US, Camera, CameraGeometry, CameraSettings, DamagedFrame, Roi
from ..controller import Controller, ControllerCounters, Identity, TriggerMode
from ..dmd import Dmd, DmdGeometry
from .parts import (
    CameraBuffer,
    GrabSettings,
    LightSource,
    PatternDmd,
    PatternDmdInfo,
    TriggeredCamera,
    TriggeredCameraInfo,
)
from .sync import match_play

__all__ = ["LabDmd", "LabCamera", "LabController", "Wiring", "MatchCounters"]

_log = logging.getLogger(__name__)

_MAX_EXTRA_BUFFERS = 16  # buffers read beyond a play's pictures before it is given up (a trigger from elsewhere)
_QUIET_MIN_S = 0.02  # after the DMD finished, how long the stream must stay silent before the rest counts as lost
_QUIET_PERIODS = 8


@dataclass
class MatchCounters:
    """What the frame matching of a lab rig met (``LabRig.match_counters``).

    ``plays`` sequences played; ``given_up`` plays whose buffers could not be placed with certainty (all their
    pictures shown again); ``transport_lost`` buffers the camera made that never reached the host (id gaps);
    ``triggers_missed`` pictures the camera took no exposure of (time gaps); ``incomplete`` buffers that arrived
    damaged; ``reasons`` the last reasons a play was given up.
    """

    plays: int = 0
    given_up: int = 0
    transport_lost: int = 0
    triggers_missed: int = 0
    incomplete: int = 0
    reasons: list[str] = field(default_factory=list)


@dataclass
class _Play:
    ids: npt.NDArray[np.int64]
    picture_time_us: int
    first_position: int
    read: bool = False


class Wiring:
    """What the DMD and the camera of a lab rig share: the trigger line between them.

    It holds the picture period (the camera's frame time is the DMD's picture time), the play in flight with its
    frame ids, the count of exposures triggered so far (the camera's frame counter), and whether light reaches
    the camera (for the DARK flag).
    """

    def __init__(self, picture_time_us: int, light_on: Callable[[], bool] | None = None) -> None:
        self.picture_time_us = int(picture_time_us)
        self.light_on = light_on or (lambda: True)
        self.play: _Play | None = None
        self.triggered = 0  # exposures triggered so far, over every play (the camera's frame counter)
        self.displayed = 0
        self.last_camera_id: int | None = None
        self.dmd: LabDmd | None = None
        self.counters = MatchCounters()


# ---------------------------------------------------------------------------------------------------- the DMD
class LabDmd(Dmd):
    """A lab DMD as the Opu sees it: raw frames queued on the host with their ids, played as one sequence."""

    supports_feature_frames = False

    def __init__(
        self,
        part: PatternDmd,
        wiring: Wiring,
        *,
        region: tuple[int, int, int, int] | None = None,
        play_timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        self.part = part
        self.region = region
        self.wiring = wiring
        self.play_timeout_s = float(play_timeout_s)
        self.info: PatternDmdInfo | None = None
        self._queue: list[tuple[int, npt.NDArray[np.uint8]]] = []
        self._queued = 0
        self.bytes_loaded = 0
        wiring.dmd = self

    def _do_connect(self) -> tuple[DmdGeometry, int]:
        self.info = info = self.part.open()
        if self.region is None:
            return DmdGeometry(info.width, info.height), info.max_pictures
        x, y, w, h = self.region
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > info.width or y + h > info.height:
            raise ConfigurationError(f"DMD region {self.region} does not fit the {info.width}x{info.height} DMD")
        return DmdGeometry(w, h), info.max_pictures

    def _full_pictures(self, pictures: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        """Pictures of the region placed on the whole mirror array (mirrors outside the region off)."""
        if self.region is None:
            return pictures
        assert self.info is not None
        x, y, w, h = self.region
        n = pictures.shape[0]
        bits = np.unpackbits(pictures, axis=1, count=w * h).reshape(n, h, w)
        full = np.zeros((n, self.info.height, self.info.width), dtype=np.uint8)
        full[:, y : y + h, x : x + w] = bits
        return np.packbits(full.reshape(n, -1), axis=1)

    def _do_close(self) -> None:
        try:
            self._do_abort()
        finally:
            self.part.close()

    # -- no layout tables: the host expands features into mirror pictures -------------------------------
    def _do_loaded_features(self) -> int:
        return 0

    def _do_load_layout(self, layout: Layout) -> None:
        raise DeviceError("a lab DMD holds no layout table: open with frame_mode='raw'")

    def _do_clear_layout(self) -> None:
        pass

    def _do_queue_feature_frames(self, first_id: int, n_features: int, packed_bits: npt.NDArray[np.uint8]) -> None:
        raise DeviceError("a lab DMD shows mirror pictures only: open with frame_mode='raw'")

    # -- the sequence ---------------------------------------------------------------------------------
    def _do_queue_raw_frames(self, first_id: int, packed_mirrors: npt.NDArray[np.uint8]) -> None:
        n = int(packed_mirrors.shape[0])
        if self._queued + n > self.sequence_capacity:
            raise DeviceRefusedError(
                f"{self._queued + n} pictures exceed the {self.sequence_capacity} one sequence of this DMD holds"
            )
        if n:
            self._queue.append((int(first_id), np.ascontiguousarray(packed_mirrors, dtype=np.uint8)))
            self._queued += n

    def _do_start(self) -> None:
        if not self._queue:
            return
        ids = np.concatenate([first + np.arange(len(frames), dtype=np.int64) for first, frames in self._queue])
        pictures = np.concatenate([frames for _, frames in self._queue])
        self._queue, self._queued = [], 0
        picture_time_us = self.wiring.picture_time_us
        prepared = self.part.prepare(self._full_pictures(pictures))
        self.part.load(prepared, len(ids), picture_time_us)
        self.bytes_loaded += pictures.nbytes
        wiring = self.wiring
        wiring.play = _Play(ids, picture_time_us, wiring.triggered)
        wiring.counters.plays += 1
        self.part.play()
        wiring.displayed += len(ids)
        wiring.triggered += len(ids)

    def wait_played(self) -> int | None:
        """Wait for the play in flight to end; the pictures the DMD says it showed (None: it cannot tell)."""
        play = self.wiring.play
        assert play is not None
        self.part.wait(self.play_timeout_s + len(play.ids) * play.picture_time_us * 1e-6)
        return self.part.progress()

    def _do_abort(self) -> None:
        self._queue, self._queued = [], 0
        self.part.halt()
        if self.wiring.play is not None:
            self.wiring.play.read = True

    def _do_soft_trigger(self) -> None:
        raise DeviceError("a lab DMD plays whole sequences on its own clock; it takes no software trigger")

    def _do_last_error(self) -> int:
        return 0  # every error of a lab DMD is raised where it happens

    def _do_queued_frames(self) -> int:
        return self._queued

    def _do_frame_count(self) -> int:
        return self.wiring.displayed & 0xFFFFFFFF

    def _do_device_time_us(self) -> int:
        return time.monotonic_ns() // 1000


# ------------------------------------------------------------------------------------------------- the camera
class LabCamera(Camera):
    """A lab camera as the Opu sees it: buffers placed at the DMD's pictures, handed over as camera frames."""

    def __init__(
        self,
        part: TriggeredCamera,
        wiring: Wiring,
        *,
        trigger_line: str = "Line1",
        region: tuple[int, int, int, int] | None = None,
        min_picture_time_us: Callable[[], int] | None = None,
    ) -> None:
        super().__init__()
        self.part = part
        self.region = region
        self._origin = (0, 0) if region is None else (region[0], region[1])
        self.wiring = wiring
        self.trigger_line = trigger_line
        self.info: TriggeredCameraInfo | None = None
        self._grab: GrabSettings | None = None
        self._min_picture_time_us = min_picture_time_us or (lambda: 0)
        self.bytes_received = 0

    def _do_connect(self) -> CameraGeometry:
        self.info = self.part.open()
        self._grab = self.part.read_settings()
        if self._grab.trigger_line != self.trigger_line:
            self._configure(trigger_line=self.trigger_line)
        self.part.start()
        info = self.info
        sensor = CameraGeometry(
            info.width, info.height, info.pixel_formats, info.exposure_range_us, info.gain_range, info.gain_unit
        )
        if self.region is None:
            return sensor
        x, y, w, h = self.region
        if w < 1 or h < 1 or x < 0 or y < 0 or x + w > info.width or y + h > info.height:
            raise ConfigurationError(f"camera region {self.region} does not fit the {info.width}x{info.height} sensor")
        if not (
            x <= self._grab.x
            and y <= self._grab.y
            and self._grab.x + self._grab.width <= x + w
            and self._grab.y + self._grab.height <= y + h
        ):
            self._configure(x=x, y=y, width=w, height=h)
        return replace(sensor, width=w, height=h)

    def _do_close(self) -> None:
        self.part.close()

    def _do_read_settings(self) -> CameraSettings:
        grab = self.part.read_settings()
        return CameraSettings(
            exposure_us=grab.exposure_us,
            frame_time_us=self.wiring.picture_time_us,
            gain=grab.gain,
            pixel_format=grab.pixel_format,
            roi=Roi(grab.x - self._origin[0], grab.y - self._origin[1], grab.width, grab.height),
        )

    def _configure(self, **changes: object) -> None:
        assert self._grab is not None
        wanted = GrabSettings(**{**self._grab.__dict__, **changes})
        self.part.stop()
        try:
            self._grab = self.part.configure(wanted)
        finally:
            self.part.start()

    def _do_write_pixel_format(self, pixel_format: PixelFormat) -> None:
        self._configure(pixel_format=pixel_format)

    def _do_write_roi(self, old: Roi, new: Roi) -> None:
        self._configure(x=new.x + self._origin[0], y=new.y + self._origin[1], width=new.width, height=new.height)

    def _do_write_gain(self, gain: float) -> None:
        self._configure(gain=gain)

    def _do_write_exposure_us(self, exposure_us: int) -> None:
        self._configure(exposure_us=exposure_us)

    def _do_write_frame_time_us(self, frame_time_us: int) -> None:
        # The frame time is the DMD's picture time: each picture triggers one exposure.
        minimum = self._min_picture_time_us()
        if frame_time_us < minimum:
            raise ConfigurationError(
                f"frame_time_us={frame_time_us} is below the DMD's shortest picture time {minimum} us"
            )
        self.wiring.picture_time_us = int(frame_time_us)

    def _do_readout_us(self) -> int:
        return MIN_FRAME_GAP_US

    def _do_fifo_frames(self, settings: CameraSettings) -> int:
        assert self.info is not None
        return self.info.max_buffers

    def _do_frame_count(self) -> int:
        return self.wiring.triggered & 0xFFFFFFFF

    def _do_dropped_frames(self) -> int:
        return 0  # a frame without a buffer is lost like any other: the matching sees its position empty

    def _do_drain(self, timeout_s: float, max_reads: int) -> int:
        self.part.stop()
        self.part.start()
        self.wiring.last_camera_id = None  # what was dropped may have taken ids
        if self.wiring.play is not None:
            self.wiring.play.read = True
        return 0

    # -- frames ---------------------------------------------------------------------------------------
    def _do_read_frames(self, n_frames: int, timeout_s: float) -> Iterator[CameraFrame | DamagedFrame]:
        play = self.wiring.play
        if play is None or play.read:
            time.sleep(max(0.0, timeout_s))
            raise CommunicationTimeoutError(f"no camera frame within {timeout_s:.3g} s")
        play.read = True
        return iter(self._frames_of(play))

    def _frames_of(self, play: _Play) -> list[CameraFrame | DamagedFrame]:
        """Read one play's buffers, place them, and turn the placed ones into camera frames."""
        assert self.info is not None and self.wiring.dmd is not None
        shown = self.wiring.dmd.wait_played()
        buffers = self._collect(len(play.ids), play.picture_time_us)
        info, counters = self.info, self.wiring.counters
        match = match_play(
            buffers,
            len(play.ids),
            play.picture_time_us * 1000 / info.timestamp_tick_ns,
            modulus=info.frame_id_modulus,
            skipped=info.skipped_ids,
            previous_id=self.wiring.last_camera_id,
            shown=shown,
        )
        self.wiring.last_camera_id = match.last_id
        counters.transport_lost += match.transport_lost
        counters.triggers_missed += match.triggers_missed
        if not match.sure:
            counters.given_up += 1
            counters.reasons = [*counters.reasons[-9:], match.given_up]
            _log.info(
                "could not place the %d buffers of a %d-picture play: %s; showing it again",
                len(buffers),
                len(play.ids),
                match.given_up,
            )
            if match.extra:
                self._do_drain(0.0, 0)
            return []
        frames: list[CameraFrame | DamagedFrame] = []
        for position, buffer in match.positions:
            if not buffer.complete or buffer.pixels is None:
                counters.incomplete += 1
                frames.append(DamagedFrame(f"camera frame {buffer.frame_id} arrived incomplete: {buffer.detail}"))
                continue
            frames.append(self._camera_frame(play, position, buffer))
        return frames

    def _collect(self, n_pictures: int, picture_time_us: int) -> list[CameraBuffer]:
        """The play's buffers: until every picture has one, or the stream stays quiet (bounded in count)."""
        quiet_s = max(_QUIET_MIN_S, _QUIET_PERIODS * picture_time_us * 1e-6)
        buffers: list[CameraBuffer] = []
        while len(buffers) < n_pictures + _MAX_EXTRA_BUFFERS:
            buffer = self.part.read(quiet_s if len(buffers) < n_pictures else 0.0)
            if buffer is None:
                break
            buffers.append(buffer)
        return buffers

    def _camera_frame(self, play: _Play, position: int, buffer: CameraBuffer) -> CameraFrame:
        settings = self.settings
        assert settings.roi is not None and settings.pixel_format is not None and settings.exposure_us is not None
        pixels = np.asarray(buffer.pixels)
        roi = settings.roi
        if pixels.shape != (roi.height, roi.width):
            raise DeviceError(
                f"camera frame {buffer.frame_id} has shape {pixels.shape}, expected {(roi.height, roi.width)}"
            )
        data = encode_pixels(settings.pixel_format, pixels)
        self.bytes_received += len(data)
        flags = FrameFlags(0)
        if int(pixels.max(initial=0)) >= (1 << bits_per_pixel(settings.pixel_format)) - 1:
            flags |= FrameFlags.SATURATED
        if not self.wiring.light_on():
            flags |= FrameFlags.DARK
        return CameraFrame(
            camera_frame_id=(play.first_position + position) & 0xFFFFFFFF,
            dmd_frame_id=int(play.ids[position]),
            timestamp_us=buffer.device_time_ns // 1000,
            exposure_us=settings.exposure_us,
            roi_x=roi.x,
            roi_y=roi.y,
            roi_w=roi.width,
            roi_h=roi.height,
            pixel_format=settings.pixel_format,
            flags=flags,
            pixels=data,
        )


# -------------------------------------------------------------------------------------------- the light source
class LabController(Controller):
    """A lab light source as the Opu's controller: laser on/off and power, no temperature readout, triggers always
    from the DMD.

    A lab rig has no shutter of its own, so the shutter is the laser's emission: the light reaches the DMD only
    while the laser is on AND the shutter is open, and closing the shutter switches the emission off (so a dark
    measurement that closes the shutter really measures the dark).
    """

    def __init__(self, part: LightSource, identity: Identity) -> None:
        super().__init__()
        self.part = part
        self._rig_identity = identity
        self._shutter_open = False
        self._laser_on = False
        self._max_power_mw = 0.0

    def _do_connect(self) -> Identity:
        info = self.part.open()
        self._max_power_mw = info.max_power_mw
        _log.info(
            "light source: %s %s %s (firmware %s)",
            info.manufacturer,
            info.model,
            info.serial_number,
            info.firmware_version,
        )
        return self._rig_identity

    def _do_release(self) -> None:
        self.part.close()

    def _do_counters(self) -> ControllerCounters:
        return ControllerCounters()

    def _do_reset(self) -> None:
        # nothing on a lab light path resets but the laser: it goes off, as a controller's reset leaves it
        self._laser_on = self._shutter_open = False
        self.part.set_on(False)

    def _do_set_laser(self, on: bool) -> None:
        self._laser_on = on
        self.part.set_on(on and self._shutter_open)

    def _do_laser_is_on(self) -> bool:
        # while the shutter is open the emission says it (a laser that restarted is off); behind a closed shutter
        # the emission is off by design and the laser counts as on when it was switched on
        return self.part.is_on() if self._shutter_open else self._laser_on

    def _do_laser_power_mw(self) -> float:
        return self.part.set_point_mw()

    def _do_laser_power_max_mw(self) -> float:
        return self._max_power_mw

    def _do_set_laser_power_mw(self, power_mw: float) -> None:
        self.part.set_power_mw(power_mw)

    def _do_set_shutter(self, open_: bool) -> None:
        self._shutter_open = open_
        self.part.set_on(open_ and self._laser_on)

    def _do_shutter_is_open(self) -> bool:
        return self._shutter_open

    def _do_temperature_c(self) -> float:
        return math.nan

    def _do_interlock_ok(self) -> bool:
        return self.part.interlock_ok()

    def _do_reset_interlock(self) -> None:
        raise DeviceError("this light source's interlock is reset at the laser itself (key switch, interlock loop)")

    def _do_trigger_mode(self) -> TriggerMode:
        return TriggerMode.INTERNAL

    def _do_set_trigger_mode(self, mode: TriggerMode) -> None:
        if mode is not TriggerMode.INTERNAL:
            raise ConfigurationError("a lab rig's DMD plays on its own clock and triggers the camera: INTERNAL only")

    def _do_errors(self) -> list[tuple[int, str]]:
        return []
