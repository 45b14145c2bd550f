"""The camera: geometry, region of interest, exposure, pixel format, and frame reading."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Iterator

from ..errors import ConfigurationError
from ..protocol import CameraFrame, PixelFormat, Register, payload_size
from .base import Device
from .usb_link import UsbLink

__all__ = ["Camera", "CameraSettings", "CameraGeometry", "Roi"]

_log = logging.getLogger(__name__)

_MIN_FRAME_GAP_US = 50  # frame time >= max(readout, exposure) + 50 us (docs/protocol.md 1.2)


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
    width: int
    height: int
    pixel_formats: tuple[PixelFormat, ...]


@dataclass(frozen=True)
class CameraSettings:
    """What the camera is set to; None leaves the device's current value."""

    exposure_us: int | None = None
    frame_time_us: int | None = None
    gain: float | None = None
    pixel_format: PixelFormat | None = None
    roi: Roi | None = None


class Camera(Device):
    """Configures the sensor and reads its frames through the shared USB link."""

    def __init__(self, link: UsbLink) -> None:
        super().__init__()
        self._link = link
        self._geometry: CameraGeometry | None = None
        self._settings = CameraSettings()
        self._wanted = self._settings

    def _do_open(self) -> None:
        mask = self._link.read_register(Register.PIXEL_FORMATS)
        formats = tuple(fmt for fmt in PixelFormat if mask & (1 << int(fmt)))
        self._geometry = CameraGeometry(
            self._link.read_register(Register.CAM_WIDTH), self._link.read_register(Register.CAM_HEIGHT), formats
        )
        self._settings = self._read_settings()
        self._wanted = self._settings

    def _read_settings(self) -> CameraSettings:
        read = self._link.read_register
        return CameraSettings(
            exposure_us=read(Register.EXPOSURE_US),
            frame_time_us=read(Register.FRAME_TIME_US),
            gain=read(Register.GAIN_MILLI) / 1000.0,
            pixel_format=PixelFormat(read(Register.PIXEL_FORMAT)),
            roi=Roi(read(Register.ROI_X), read(Register.ROI_Y), read(Register.ROI_W), read(Register.ROI_H)),
        )

    @property
    def geometry(self) -> CameraGeometry:
        self._require_open()
        assert self._geometry is not None
        return self._geometry

    @property
    def settings(self) -> CameraSettings:
        """The settings as last read from or written to the device."""
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

    def restore(self, actual: CameraSettings | None = None) -> None:
        """Write the wanted settings again, starting from ``actual`` (what the device holds; read when None)."""
        self._settings = self._read_settings() if actual is None else actual
        wanted = self._wanted
        self.configure(wanted)

    @property
    def readout_us(self) -> int:
        return self._link.read_register(Register.READOUT_US)

    @property
    def fifo_bytes(self) -> int:
        return self._link.read_register(Register.IN_FIFO_BYTES)

    @property
    def frame_count(self) -> int:
        return self._link.read_register(Register.CAM_FRAME_COUNT)

    @property
    def dropped_frames(self) -> int:
        return self._link.read_register(Register.CAM_DROPPED)

    def frame_packet_bytes(self, roi: Roi | None = None, pixel_format: PixelFormat | None = None) -> int:
        """Bytes one CAMERA_FRAME packet takes on the wire (envelope, metadata and pixels)."""
        roi = roi or self.settings.roi
        pixel_format = pixel_format or self.settings.pixel_format
        return 16 + 32 + payload_size(pixel_format, roi.n_pixels) + 4

    def validate(self, settings: CameraSettings) -> CameraSettings:
        """Check settings against the sensor and return them merged with the current ones.

        Raises ConfigurationError before anything is written.
        """
        geometry = self.geometry
        merged = replace(
            self._settings,
            **{k: v for k, v in settings.__dict__.items() if v is not None},
        )
        if merged.pixel_format not in geometry.pixel_formats:
            raise ConfigurationError(
                f"pixel format {merged.pixel_format!r} not supported; the camera has "
                f"{[f.name for f in geometry.pixel_formats]}"
            )
        roi = merged.roi
        if (
            roi.width < 1 or roi.height < 1 or roi.x < 0 or roi.y < 0
            or roi.x + roi.width > geometry.width or roi.y + roi.height > geometry.height
        ):
            raise ConfigurationError(f"{roi} does not fit the {geometry.width}x{geometry.height} sensor")
        if not 10 <= merged.exposure_us <= 1_000_000:
            raise ConfigurationError(f"exposure_us={merged.exposure_us} outside 10..1000000")
        if not 1.0 <= merged.gain <= 16.0:
            raise ConfigurationError(f"gain={merged.gain} outside 1..16")
        if settings.frame_time_us is None:
            # Keep the frame time legal when only the exposure changes.
            needed = merged.exposure_us + _MIN_FRAME_GAP_US
            merged = replace(merged, frame_time_us=max(merged.frame_time_us, needed))
        if merged.frame_time_us < merged.exposure_us + _MIN_FRAME_GAP_US:
            raise ConfigurationError(
                f"frame_time_us={merged.frame_time_us} must be >= exposure_us + {_MIN_FRAME_GAP_US}"
            )
        return merged

    def configure(self, settings: CameraSettings) -> CameraSettings:
        """Apply settings in an order the device accepts; returns what is now set."""
        self._require_open()
        new = self.validate(settings)
        try:
            self._write(self._settings, new)
        except BaseException:
            # Some writes may have landed: believe the device, not the plan.
            try:
                self._settings = self._read_settings()
            except Exception as exc:
                _log.warning("could not re-read camera settings after a refused write: %s", exc)
            raise
        self._settings = new
        self._wanted = new
        _log.debug("camera settings: %s", new)
        return new

    def _write(self, old: CameraSettings, new: CameraSettings) -> None:
        write = self._link.write_register
        if new.pixel_format != old.pixel_format:
            write(Register.PIXEL_FORMAT, int(new.pixel_format))
        if new.roi != old.roi:
            # Shrink first, then move, then grow: every intermediate ROI stays inside the sensor.
            write(Register.ROI_W, min(old.roi.width, new.roi.width))
            write(Register.ROI_H, min(old.roi.height, new.roi.height))
            write(Register.ROI_X, new.roi.x)
            write(Register.ROI_Y, new.roi.y)
            write(Register.ROI_W, new.roi.width)
            write(Register.ROI_H, new.roi.height)
        if new.gain != old.gain:
            write(Register.GAIN_MILLI, int(round(new.gain * 1000)))
        # Frame time must always exceed exposure: raise it first, lower it last.
        if new.frame_time_us > old.frame_time_us:
            write(Register.FRAME_TIME_US, new.frame_time_us)
        if new.exposure_us != old.exposure_us:
            write(Register.EXPOSURE_US, new.exposure_us)
        if new.frame_time_us < old.frame_time_us:
            write(Register.FRAME_TIME_US, new.frame_time_us)

    def drain(self, timeout_s: float, max_reads: int) -> int:
        """Read and discard whatever the camera endpoint holds; returns the bytes discarded. Never raises."""
        return self._link.drain(timeout_s, max_reads)

    def read_frames(self, n_frames: int, timeout_s: float) -> Iterator[CameraFrame]:
        """Yield the next ``n_frames`` camera frames; CommunicationTimeoutError after ``timeout_s``."""
        self._require_open()
        return self._link.receive_frames(n_frames, timeout_s)
