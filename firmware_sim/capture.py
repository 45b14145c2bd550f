"""The camera side of the firmware: exposures of displayed DMD frames become camera frames in the IN FIFO.

For every trigger the sequencer hands over the DMD frame that the exposure saw (lag included). The capture
computes the light through the optics and the counts through the sensor, in batches that bound the working
memory, packs them as CAMERA_FRAME packets (docs/protocol.md 1.5) and appends them to the IN FIFO, which the
host drains through the CAMERA IN endpoint. A frame that does not fit the FIFO is dropped and counted
(CAM_DROPPED, STATUS.FIFO_OVERFLOWED), as on hardware whose host does not read fast enough; it is never
computed.

The camera settings (ROI, pixel format, exposure, frame time, gain) live here as the registers last set them;
the register file validates every change before it lands.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from . import wire
from .config import SimConfig
from .controller import ControllerLine
from .dmd import DmdGeometry, Frame, FrameKind, LayoutTable
from .faults import FaultInjector
from .wire import PixelFormat

__all__ = ["CameraSettings", "Capture"]

_log = logging.getLogger(__name__)

# Camera frames are computed this many float32 intensities at a time at most (bounds the working memory).
_BATCH_VALUES = 6 * 2**20
_MAX_BATCH_FRAMES = 512
_OPTICS_BLOCK_FRAMES = 512


@dataclass
class CameraSettings:
    """The camera's current settings, as the registers of section 1.2 hold them."""

    roi: tuple[int, int, int, int]
    pixel_format: int
    exposure_us: int
    frame_time_us: int
    gain_milli: int

    @classmethod
    def power_on(cls, config: SimConfig) -> CameraSettings:
        """The settings after power-up: the whole sensor, 8-bit pixels, exposure, frame time and gain of the config."""
        return cls(
            roi=(0, 0, int(config.camera_width), int(config.camera_height)),
            pixel_format=int(PixelFormat.MONO8),
            exposure_us=int(config.exposure_us),
            frame_time_us=int(config.frame_time_us),
            gain_milli=int(round(config.gain * 1000)),
        )


class Capture:
    """Exposure, readout and the IN FIFO of camera frames.

    Args:
        config: the emulator options (sensor geometry, initial settings, ``in_fifo_bytes``).
        optics: the optics model (``OpticalPath`` or a stand-in): set_roi and intensity_* are used here.
        sensor: the sensor model (``Sensor`` or a stand-in): intensities to counts.
        controller: the controller line, whose light path (laser, shutter, interlock, power) lights the frames.
        faults: the device's fault injector (per-frame faults on the packets).
        dmd: the mirror geometry (raw frames' bytes).
        layout: the layout table (feature frames' bits).
        name: the device's name, for the log.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        optics: Any,
        sensor: Any,
        controller: ControllerLine,
        faults: FaultInjector,
        dmd: DmdGeometry,
        layout: LayoutTable,
        name: str,
    ) -> None:
        self._config = config
        self._optics = optics
        self._sensor = sensor
        self._controller = controller
        self._faults = faults
        self._dmd = dmd
        self._layout = layout
        self._name = name
        self.fifo_capacity_bytes = int(config.in_fifo_bytes)
        self.fifo = bytearray()
        self.frames_computed = 0  # a diagnostic: never reset
        # Not 1 only while an injected ``saturate`` or ``light`` sequence is captured; a reset does not touch it.
        self.light_factor = 1.0
        self.reset(keep_fifo=False)

    def reset(self, keep_fifo: bool) -> None:
        """Power-on settings and counters; ``keep_fifo``: frames already in the IN FIFO stay (a USB-side reset)."""
        self.settings = CameraSettings.power_on(self._config)
        self.frame_count = 0
        self.dropped = 0
        self.fifo_overflowed = False
        self._optics_roi: tuple[int, int, int, int] | None = None
        self.sync_optics_roi()
        if not keep_fifo:
            self.fifo = bytearray()

    def sync_optics_roi(self) -> None:
        """Give the optics the ROI of the settings now (not at the next exposure), so that the ground
        truth always describes the ROI the registers say; set_roi is cheap."""
        roi = self.settings.roi
        if self._optics_roi != roi:
            self._optics.set_roi(*roi)
            self._optics_roi = roi

    def take_overflow(self) -> bool:
        """Whether frames were dropped since the last call (reading STATUS clears FIFO_OVERFLOWED)."""
        overflowed, self.fifo_overflowed = self.fifo_overflowed, False
        return overflowed

    # -- the IN stream -----------------------------------------------------------------------------
    @property
    def in_fifo_bytes(self) -> int:
        """Bytes waiting in the IN FIFO."""
        return len(self.fifo)

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes of the IN FIFO; b"" when it is empty."""
        if not self.fifo:
            return b""
        size = min(size, len(self.fifo))
        data = bytes(self.fifo[:size])
        del self.fifo[:size]
        return data

    def inject(self, data: bytes) -> None:
        """Put raw bytes on the IN stream (junk, corrupted packets), as a faulty link would."""
        self.fifo += data

    # -- exposures ---------------------------------------------------------------------------------
    def expose(self, seen: list[Frame], device_time_us: int, medium_time_us: int) -> None:
        """One camera frame per trigger: ``seen[k]`` is what exposure k saw, at device time
        ``device_time_us + k * frame_time_us`` (the medium's clock: ``medium_time_us + ...``)."""
        n = len(seen)
        settings = self.settings
        roi = settings.roi
        n_px = roi[2] * roi[3]
        pixel_bytes = wire.pixel_payload_size(settings.pixel_format, n_px)
        packet_bytes = wire.HEADER_SIZE + wire.CAMERA_META_SIZE + pixel_bytes + wire.CRC_SIZE
        # Nothing drains the FIFO while a synchronous sequence runs, so exactly the first n_fit frames fit.
        n_fit = min(n, max(0, self.fifo_capacity_bytes - len(self.fifo)) // packet_bytes)
        if n_fit:
            self._compute_frames(seen[:n_fit], device_time_us, medium_time_us)
        dropped = n - n_fit
        if dropped:
            self.dropped += dropped
            self.fifo_overflowed = True
            _log.info("%s: IN FIFO full, %d camera frames dropped", self._name, dropped)
        self.frame_count += n

    def _compute_frames(self, seen: list[Frame], device_time_us: int, medium_time_us: int) -> None:
        settings = self.settings
        roi = settings.roi
        frame_time_us = settings.frame_time_us
        self.sync_optics_roi()
        light_on = self._controller.light_on
        bits = wire.pixel_bits(settings.pixel_format)
        full_scale = (1 << bits) - 1
        n_px = roi[2] * roi[3]
        batch_max = max(1, min(_MAX_BATCH_FRAMES, _BATCH_VALUES // max(n_px, 1)))
        if batch_max >= _OPTICS_BLOCK_FRAMES:
            # The optics multiply in fixed blocks of up to 512 rows (zero-padded): whole blocks waste nothing.
            batch_max -= batch_max % _OPTICS_BLOCK_FRAMES
        start = 0
        for kind, group in _runs_of_kind(seen, light_on):
            for offset in range(0, len(group), batch_max):
                batch = group[offset : offset + batch_max]
                first = start + offset
                index = np.arange(first, first + len(batch), dtype=np.int64)
                times_us = (medium_time_us + index * frame_time_us).astype(np.float64)
                intensity = self._intensity(kind, batch, times_us)
                if self.light_factor != 1.0:
                    intensity = intensity * self.light_factor  # injected ``saturate`` or ``light``: the light moved
                counts = self._sensor.capture(
                    intensity,
                    roi=roi,
                    frame_indices=self.frame_count + index,
                    exposure_us=settings.exposure_us,
                    gain=settings.gain_milli / 1000.0,
                    laser_power_mw=self._controller.power_mw,
                    light_on=light_on,
                    bits=bits,
                )
                flags = np.where(np.any(counts >= full_scale, axis=1), wire.FLAG_SATURATED, 0)
                if not light_on:
                    flags = flags | wire.FLAG_DARK
                packets = wire.encode_camera_frames(
                    (self.frame_count + index) & 0xFFFFFFFF,
                    [f.frame_id for f in batch],
                    device_time_us + index * frame_time_us,
                    flags,
                    exposure_us=settings.exposure_us,
                    roi=roi,
                    pixel_format=settings.pixel_format,
                    pixels=wire.pack_pixels(settings.pixel_format, counts),
                )
                if self._faults.active:
                    packets = self._faults.camera_packets(bytes(packets), len(packets) // len(batch))
                self.fifo += packets
                self.frames_computed += len(batch)
            start += len(group)

    def _intensity(
        self, kind: FrameKind, batch: list[Frame], times_us: npt.NDArray[np.float64]
    ) -> npt.NDArray[np.float32]:
        if kind == FrameKind.FEATURE:
            return self._optics.intensity_features(self._layout.feature_bits(batch), times_us)
        if kind == FrameKind.RAW:
            return self._optics.intensity_raw(self._dmd.packed_mirrors(batch), times_us)
        return self._optics.intensity_blank(len(batch))


def _runs_of_kind(frames: list[Frame], light_on: bool) -> Iterable[tuple[FrameKind, list[Frame]]]:
    """Split frames into consecutive runs of one kind; in the dark every frame is computed as blank."""
    if not light_on:
        yield FrameKind.BLANK, frames
        return
    for kind, group in itertools.groupby(frames, key=lambda f: f.kind):
        yield kind, list(group)
