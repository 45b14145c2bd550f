"""The camera of a protocol-v1 device: registers for its settings, CAMERA_FRAME packets on the IN endpoint."""

from __future__ import annotations

from collections.abc import Iterator

from ...protocol import CameraFrame, PixelFormat, Register, payload_size
from ..camera import Camera, CameraGeometry, CameraSettings, DamagedFrame, Roi
from .link import UsbLink

__all__ = ["V1Camera"]

_ENVELOPE_BYTES = 16 + 4  # packet header and payload CRC (docs/protocol.md 1.4)
_METADATA_BYTES = 32  # the CAMERA_FRAME metadata before the pixels (1.5)


class V1Camera(Camera):
    """Configures the sensor and reads its frames through the shared :class:`UsbLink`."""

    def __init__(self, link: UsbLink) -> None:
        super().__init__()
        self._link = link

    def _do_connect(self) -> CameraGeometry:
        mask = self._link.read_register(Register.PIXEL_FORMATS)
        formats = tuple(fmt for fmt in PixelFormat if mask & (1 << int(fmt)))
        return CameraGeometry(
            self._link.read_register(Register.CAM_WIDTH), self._link.read_register(Register.CAM_HEIGHT), formats
        )

    def _do_read_settings(self) -> CameraSettings:
        read = self._link.read_register
        return CameraSettings(
            exposure_us=read(Register.EXPOSURE_US),
            frame_time_us=read(Register.FRAME_TIME_US),
            gain=read(Register.GAIN_MILLI) / 1000.0,
            pixel_format=PixelFormat(read(Register.PIXEL_FORMAT)),
            roi=Roi(read(Register.ROI_X), read(Register.ROI_Y), read(Register.ROI_W), read(Register.ROI_H)),
        )

    def _do_write_pixel_format(self, pixel_format: PixelFormat) -> None:
        self._link.write_register(Register.PIXEL_FORMAT, int(pixel_format))

    def _do_write_roi(self, old: Roi, new: Roi) -> None:
        # Shrink first, then move, then grow: every intermediate ROI stays inside the sensor.
        write = self._link.write_register
        write(Register.ROI_W, min(old.width, new.width))
        write(Register.ROI_H, min(old.height, new.height))
        write(Register.ROI_X, new.x)
        write(Register.ROI_Y, new.y)
        write(Register.ROI_W, new.width)
        write(Register.ROI_H, new.height)

    def _do_write_gain(self, gain: float) -> None:
        self._link.write_register(Register.GAIN_MILLI, int(round(gain * 1000)))

    def _do_write_frame_time_us(self, frame_time_us: int) -> None:
        self._link.write_register(Register.FRAME_TIME_US, frame_time_us)

    def _do_write_exposure_us(self, exposure_us: int) -> None:
        self._link.write_register(Register.EXPOSURE_US, exposure_us)

    def _do_readout_us(self) -> int:
        return self._link.read_register(Register.READOUT_US)

    @property
    def fifo_bytes(self) -> int:
        """Size of the device's camera FIFO in bytes (IN_FIFO_BYTES)."""
        return self._call(self._link.read_register, Register.IN_FIFO_BYTES)

    def frame_packet_bytes(self, roi: Roi | None = None, pixel_format: PixelFormat | None = None) -> int:
        """Bytes one CAMERA_FRAME packet takes on the wire (envelope, metadata and pixels)."""
        roi = roi or self.settings.roi
        pixel_format = pixel_format or self.settings.pixel_format
        assert roi is not None and pixel_format is not None
        return _ENVELOPE_BYTES + _METADATA_BYTES + payload_size(pixel_format, roi.n_pixels)

    def _do_fifo_frames(self, settings: CameraSettings) -> int:
        return self.fifo_bytes // self.frame_packet_bytes(settings.roi, settings.pixel_format)

    def _do_frame_count(self) -> int:
        return self._link.read_register(Register.CAM_FRAME_COUNT)

    def _do_dropped_frames(self) -> int:
        return self._link.read_register(Register.CAM_DROPPED)

    def _do_drain(self, timeout_s: float, max_reads: int) -> int:
        return self._link.drain(timeout_s, max_reads)

    def _do_read_frames(self, n_frames: int, timeout_s: float) -> Iterator[CameraFrame | DamagedFrame]:
        return self._link.receive_frames(n_frames, timeout_s)
