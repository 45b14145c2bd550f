"""The camera interface: geometry, region of interest, exposure, gain, pixel format, and frame reading.

The shared work is done here once: settings are checked against the sensor before anything is written, written
in an order every camera accepts (a frame time that always exceeds the exposure, a region that always fits),
re-read from the device when a write fails half-way, and the settings the driver wants are kept apart from what
was last read so that a device reset can be repaired. A backend implements the ``_do_*`` hooks.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, replace

from ..errors import ConfigurationError
from ..protocol import CameraFrame, PixelFormat
from .base import Device

__all__ = ["Camera", "CameraSettings", "CameraGeometry", "DamagedFrame", "Roi", "MIN_FRAME_GAP_US"]

_log = logging.getLogger(__name__)

MIN_FRAME_GAP_US = 50
"""A frame time must exceed the exposure by this much (readout and reset; docs/protocol.md 1.2)."""


@dataclass(frozen=True)
class Roi:
    """Camera region of interest in sensor pixels."""

    x: int
    y: int
    width: int
    height: int

    @property
    def n_pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class CameraGeometry:
    """The sensor's size, the pixel formats it can send, and the ranges of its exposure and gain.

    ``gain_unit`` says what the camera's gain means: ``"factor"`` (linear, 1 at unity: protocol v1 and the
    emulators), ``"dB"`` (a GenICam ``Gain`` feature in decibels) or ``"raw"`` (a camera's own scale, such as a
    GenICam ``GainRaw``). ``gain_range`` is in that unit. Settings are checked against the ranges, never converted;
    the exposure routine converts its linear factor to the unit, and leaves a raw gain alone.
    """

    width: int
    height: int
    pixel_formats: tuple[PixelFormat, ...]
    exposure_range_us: tuple[int, int] = (10, 1_000_000)
    gain_range: tuple[float, float] = (1.0, 16.0)
    gain_unit: str = "factor"


@dataclass(frozen=True)
class CameraSettings:
    """What the camera is set to; None leaves the device's current value."""

    exposure_us: int | None = None
    frame_time_us: int | None = None
    gain: float | None = None
    pixel_format: PixelFormat | None = None
    roi: Roi | None = None


@dataclass(frozen=True)
class DamagedFrame:
    """A camera frame that arrived damaged (a bad CRC, a packet cut short): its data is never decoded.

    ``read_frames`` hands it over in the frame's place, so that the reader knows a frame was lost there and can
    keep reading the rest of the sequence instead of giving it up.
    """

    detail: str


class Camera(Device):
    """Configures the sensor and reads its frames."""

    def __init__(self) -> None:
        super().__init__()
        self._geometry: CameraGeometry | None = None
        self._settings = CameraSettings()
        self._wanted = self._settings

    def _do_open(self) -> None:
        self._geometry = self._do_connect()
        self._settings = self._do_read_settings()
        self._wanted = self._settings

    # -- state ----------------------------------------------------------------------------------------
    @property
    def geometry(self) -> CameraGeometry:
        self._require_open()
        assert self._geometry is not None
        return self._geometry

    @property
    def settings(self) -> CameraSettings:
        """The settings as last read from or written to the device (no traffic)."""
        self._require_open()
        return self._settings

    @property
    def wanted_settings(self) -> CameraSettings:
        """The settings of the last successful ``configure`` (or as found at open): what the device should hold.

        They differ from ``settings`` after a write failed half-way or the device reset; the Opu then writes them
        again before its next request.
        """
        self._require_open()
        return self._wanted

    def read_settings(self) -> CameraSettings:
        """The settings as the device holds them now (read from it; ``settings`` is not changed)."""
        return self._call(self._do_read_settings)

    def restore(self, actual: CameraSettings | None = None) -> None:
        """Write the wanted settings again, starting from ``actual`` (what the device holds; read when None)."""
        with self._lock:
            self._settings = self._do_read_settings() if actual is None else actual
            self.configure(self._wanted)

    @property
    def readout_us(self) -> int:
        """Time to read the current region out of the sensor."""
        return self._call(self._do_readout_us)

    def fifo_frames(self) -> int:
        """Camera frames of the current region and pixel format that the device's buffer holds."""
        return self._call(self._do_fifo_frames, self.settings)

    @property
    def frame_count(self) -> int:
        """Frames captured since the device's reset, as its 32-bit counter says (it wraps)."""
        return self._call(self._do_frame_count)

    @property
    def dropped_frames(self) -> int:
        """Frames the device dropped because its buffer was full."""
        return self._call(self._do_dropped_frames)

    # -- settings -------------------------------------------------------------------------------------
    def validate(self, settings: CameraSettings) -> CameraSettings:
        """Check settings against the sensor and return them merged with the current ones.

        Raises ConfigurationError before anything is written.
        """
        geometry = self.geometry
        merged = replace(self._settings, **{k: v for k, v in settings.__dict__.items() if v is not None})
        assert merged.roi is not None and merged.exposure_us is not None and merged.gain is not None
        assert merged.frame_time_us is not None
        if merged.pixel_format not in geometry.pixel_formats:
            raise ConfigurationError(
                f"pixel format {merged.pixel_format!r} not supported; the camera has "
                f"{[f.name for f in geometry.pixel_formats]}"
            )
        roi = merged.roi
        if (
            roi.width < 1
            or roi.height < 1
            or roi.x < 0
            or roi.y < 0
            or roi.x + roi.width > geometry.width
            or roi.y + roi.height > geometry.height
        ):
            raise ConfigurationError(f"{roi} does not fit the {geometry.width}x{geometry.height} sensor")
        low_us, high_us = geometry.exposure_range_us
        if not low_us <= merged.exposure_us <= high_us:
            raise ConfigurationError(f"exposure_us={merged.exposure_us} outside the camera's {low_us}..{high_us}")
        low, high = geometry.gain_range
        if not low <= merged.gain <= high:
            raise ConfigurationError(f"gain={merged.gain} outside the camera's {low:g}..{high:g}")
        exposure_us = merged.exposure_us
        if settings.frame_time_us is None:
            # Keep the frame time legal when only the exposure changes.
            needed = exposure_us + MIN_FRAME_GAP_US
            merged = replace(merged, frame_time_us=max(merged.frame_time_us, needed))
        assert merged.frame_time_us is not None
        if merged.frame_time_us < exposure_us + MIN_FRAME_GAP_US:
            raise ConfigurationError(
                f"frame_time_us={merged.frame_time_us} must be >= exposure_us + {MIN_FRAME_GAP_US}"
            )
        return merged

    def configure(self, settings: CameraSettings) -> CameraSettings:
        """Apply settings in an order the device accepts; returns what is now set."""
        with self._lock:
            self._require_open()
            new = self.validate(settings)
            try:
                self._write(self._settings, new)
            except BaseException:
                # Some writes may have landed: believe the device, not the plan.
                try:
                    self._settings = self._do_read_settings()
                except Exception as exc:
                    _log.warning("could not re-read camera settings after a refused write: %s", exc)
                raise
            self._settings = new
            self._wanted = new
            _log.debug("camera settings: %s", new)
            return new

    def _write(self, old: CameraSettings, new: CameraSettings) -> None:
        """Write what changed, in an order where every intermediate state is legal."""
        assert old.roi is not None and new.roi is not None
        assert old.frame_time_us is not None and new.frame_time_us is not None
        if new.pixel_format != old.pixel_format:
            assert new.pixel_format is not None
            self._do_write_pixel_format(new.pixel_format)
        if new.roi != old.roi:
            self._do_write_roi(old.roi, new.roi)
        if new.gain != old.gain:
            assert new.gain is not None
            self._do_write_gain(new.gain)
        # Frame time must always exceed exposure: raise it first, lower it last.
        if new.frame_time_us > old.frame_time_us:
            self._do_write_frame_time_us(new.frame_time_us)
        if new.exposure_us != old.exposure_us:
            assert new.exposure_us is not None
            self._do_write_exposure_us(new.exposure_us)
        if new.frame_time_us < old.frame_time_us:
            self._do_write_frame_time_us(new.frame_time_us)

    # -- frames ---------------------------------------------------------------------------------------
    def drain(self, timeout_s: float, max_reads: int) -> int:
        """Read and discard whatever the camera holds; returns the bytes discarded. Never raises."""
        with self._lock:
            return self._do_drain(timeout_s, max_reads)

    def read_frames(self, n_frames: int, timeout_s: float) -> Iterator[CameraFrame | DamagedFrame]:
        """Yield the next ``n_frames`` camera frames as they arrive, a :class:`DamagedFrame` in the place of one
        that arrived damaged; CommunicationTimeoutError when ``timeout_s`` passes first."""
        return self._call(self._do_read_frames, n_frames, timeout_s)

    # -- hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _do_connect(self) -> CameraGeometry:
        """Hook: read the sensor's geometry and pixel formats."""

    @abstractmethod
    def _do_read_settings(self) -> CameraSettings:
        """Hook: read every setting from the device (no field None)."""

    @abstractmethod
    def _do_write_pixel_format(self, pixel_format: PixelFormat) -> None:
        """Hook: write the pixel format."""

    @abstractmethod
    def _do_write_roi(self, old: Roi, new: Roi) -> None:
        """Hook: move the region from ``old`` to ``new`` through regions the sensor accepts."""

    @abstractmethod
    def _do_write_gain(self, gain: float) -> None:
        """Hook: write the gain."""

    @abstractmethod
    def _do_write_frame_time_us(self, frame_time_us: int) -> None:
        """Hook: write the frame time."""

    @abstractmethod
    def _do_write_exposure_us(self, exposure_us: int) -> None:
        """Hook: write the exposure."""

    @abstractmethod
    def _do_readout_us(self) -> int:
        """Hook: the readout time of the current region."""

    @abstractmethod
    def _do_fifo_frames(self, settings: CameraSettings) -> int:
        """Hook: frames of these settings that the device's buffer holds."""

    @abstractmethod
    def _do_frame_count(self) -> int:
        """Hook: frames captured since reset (32-bit, wrapping)."""

    @abstractmethod
    def _do_dropped_frames(self) -> int:
        """Hook: frames dropped for a full buffer."""

    @abstractmethod
    def _do_drain(self, timeout_s: float, max_reads: int) -> int:
        """Hook: discard what the camera holds and forget partial data; never raises."""

    @abstractmethod
    def _do_read_frames(self, n_frames: int, timeout_s: float) -> Iterator[CameraFrame | DamagedFrame]:
        """Hook: yield frames (or DamagedFrame for a damaged one) as they arrive; CommunicationTimeoutError at the
        deadline."""
