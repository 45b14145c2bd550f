"""A GenICam camera (GigE Vision or USB3 Vision) through Aravis 0.8 and PyGObject, as a lab rig's triggered camera.

Aravis speaks the camera's transport (GVCP/GVSP on Ethernet, U3V on USB) and its GenICam feature tree; this
module maps :class:`~.parts.TriggeredCamera` onto the standard features (PixelFormat, OffsetX/OffsetY/Width/Height,
ExposureTime, Gain, TriggerSelector/TriggerMode/TriggerSource/TriggerActivation) through Aravis's camera calls,
which also know the older names (ExposureTimeAbs, GainRaw). Aravis 0.8 writes a feature without checking its
bounds, so every value is checked here against the bounds the camera declares before anything is written.

The stream holds a fixed number of buffers (``n_buffers``): each :meth:`AravisCamera.read` copies the pixels out
and pushes the buffer back at once, so the stream never runs out for want of a buffer the driver kept. When the
host reads too slowly the camera's frames find no buffer (Aravis counts an underrun) and are lost: their ids then
show as a gap (:func:`~.frame_ids.ids_skipped_between`).

PyGObject and Aravis's introspection data are imported only in :meth:`AravisCamera.open`, so the driver installs
and imports without them.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import (
    ConfigurationError,
    DeviceError,
    DeviceNotFoundError,
    InvalidInputError,
    LibraryLoadError,
    ProtocolError,
)
from ...protocol import PixelFormat
from ...protocol.pixels import decode_pixels, payload_size
from .parts import CameraBuffer, GrabSettings, StreamCounters, TriggeredCamera, TriggeredCameraInfo

__all__ = [
    "AravisCamera",
    "AravisStreamCounters",
    "GENICAM_PIXEL_FORMATS",
    "INSTALL_HINT",
    "UNKNOWN_FRAME_ID",
    "load_aravis",
]

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "the Aravis camera backend needs Aravis 0.8 with its GObject introspection data and PyGObject: "
    "apt-get install -y libaravis-0.8-0 gir1.2-aravis-0.8 libgirepository1.0-dev libcairo2-dev pkg-config, "
    "then pip install 'opu-driver[aravis]' (or pip install 'PyGObject<3.51')"
)

#: The driver's pixel formats by their GenICam (PFNC) names and codes.
GENICAM_PIXEL_FORMATS: dict[PixelFormat, tuple[str, int]] = {
    PixelFormat.MONO8: ("Mono8", 0x01080001),
    PixelFormat.MONO10: ("Mono10", 0x01100003),
    PixelFormat.MONO12: ("Mono12", 0x01100005),
    PixelFormat.MONO10P: ("Mono10p", 0x010A0046),
    PixelFormat.MONO12P: ("Mono12p", 0x010C0047),
}
#: The frame id of an incomplete buffer whose frame's leader packet was lost (Aravis takes the id from the leader).
UNKNOWN_FRAME_ID = -1

_BY_NAME = {name: fmt for fmt, (name, _) in GENICAM_PIXEL_FORMATS.items()}

# GigE Vision 1.x numbers frames with a 16-bit block id that skips 0 when it wraps; GigE Vision 2 in extended-id
# mode and USB3 Vision use a 64-bit block id, which never wraps in practice (and a U3V counter starts at 0).
_GEV_MODULUS = 1 << 16
_WIDE_MODULUS = 1 << 64


def load_aravis() -> tuple[Any, Any]:
    """Import Aravis 0.8 and GLib through PyGObject; LibraryLoadError with the install commands when missing."""
    try:
        import gi

        gi.require_version("Aravis", "0.8")
        from gi.repository import Aravis, GLib
    except (ImportError, ValueError) as exc:
        raise LibraryLoadError(f"{INSTALL_HINT} ({exc})") from exc
    return Aravis, GLib


@dataclass(frozen=True)
class AravisStreamCounters(StreamCounters):
    """The stream counters plus what Aravis counts besides (since the camera was opened).

    ``missing_frames`` is Aravis's count of id gaps (each gap counts once, whatever its length);
    ``missing_packets`` counts, per failed buffer, the packets after its last contiguous received one;
    ``underruns`` counts packets of new frames that found no free buffer.
    """

    underruns: int = 0
    aborted: int = 0
    size_mismatches: int = 0
    received_packets: int = 0
    resend_requests: int = 0


_INFO_NAMES = {
    "completed": "n_completed_buffers",
    "failures": "n_failures",
    "missing_frames": "n_missing_frames",
    "missing_packets": "n_missing_packets",
    "timeouts": "n_timeouts",
    "underruns": "n_underruns",
    "aborted": "n_aborted",
    "size_mismatches": "n_size_mismatch_errors",
    "received_packets": "n_received_packets",
    "resend_requests": "n_resend_requests",
}


@dataclass(frozen=True)
class _Snapshot:
    """The camera's raw settings before a configure, to write back when the camera refuses a new value."""

    pixel_format: str
    region: tuple[int, int, int, int]
    exposure_us: float
    gain: float
    trigger_mode: str | None
    trigger_source: str | None


class AravisCamera(TriggeredCamera):
    """A GenICam camera through Aravis: one exposure per rising edge on a trigger line, buffers numbered by the
    camera.

    Args:
        device_id: what Aravis opens: a device id as ``arv-tool-0.8`` lists it (``Vendor-Model-Serial``), a GigE
            camera's IP address, or None for the first camera found.
        n_buffers: buffers the stream holds (the bound on frames waiting to be read; 1..1024).
        packet_size: GigE Vision stream packet size in bytes (GevSCPSPacketSize, up to the path MTU less 28);
            None leaves the size Aravis negotiates when the stream opens.
        packet_resend: whether Aravis asks a GigE camera to send lost packets again (keep it on for real cameras;
            off, a frame missing packets is closed as soon as the next one starts).
        free_run_frame_rate_hz: the frame rate to set when a configuration has no trigger line; None leaves the
            camera's own.
        frame_retention_us: how long Aravis waits for a GigE frame's missing packets before it closes the
            buffer as a timeout; None keeps Aravis's default.
    """

    def __init__(
        self,
        device_id: str | None = None,
        *,
        n_buffers: int = 16,
        packet_size: int | None = None,
        packet_resend: bool = True,
        free_run_frame_rate_hz: float | None = None,
        frame_retention_us: int | None = None,
    ) -> None:
        if device_id is not None and not isinstance(device_id, str):
            raise InvalidInputError(f"device_id must be a string or None, got {type(device_id).__name__}")
        if isinstance(n_buffers, bool) or not isinstance(n_buffers, int) or not 1 <= n_buffers <= 1024:
            raise InvalidInputError(f"n_buffers must be an integer in 1..1024, got {n_buffers!r}")
        if packet_size is not None and (
            isinstance(packet_size, bool) or not isinstance(packet_size, int) or not 576 <= packet_size <= 16384
        ):
            raise InvalidInputError(f"packet_size must be an integer in 576..16384 bytes or None, got {packet_size!r}")
        if free_run_frame_rate_hz is not None and not (
            isinstance(free_run_frame_rate_hz, (int, float))
            and math.isfinite(free_run_frame_rate_hz)
            and free_run_frame_rate_hz > 0
        ):
            raise InvalidInputError(f"free_run_frame_rate_hz must be a positive number, got {free_run_frame_rate_hz!r}")
        if frame_retention_us is not None and (
            isinstance(frame_retention_us, bool) or not isinstance(frame_retention_us, int) or frame_retention_us < 1
        ):
            raise InvalidInputError(f"frame_retention_us must be a positive integer, got {frame_retention_us!r}")
        self.device_id = device_id
        self.n_buffers = n_buffers
        self.packet_size = packet_size
        self.packet_resend = packet_resend
        self.free_run_frame_rate_hz = None if free_run_frame_rate_hz is None else float(free_run_frame_rate_hz)
        self.frame_retention_us = frame_retention_us
        self._aravis: Any = None
        self._glib: Any = None
        self._camera: Any = None
        self._stream: Any = None
        self._info: TriggeredCameraInfo | None = None
        self._grab: tuple[PixelFormat, int, int, int] | None = None  # format, width, height, payload bytes
        # The stream's buffers (kept so that each pop returns the same wrapper) and the frame id each held when it
        # was last read: Aravis writes a buffer's id and time only from the frame's leader packet.
        self._buffers: list[Any] = []
        self._ids_held: dict[int, int] = {}
        self._earlier_counts: dict[str, int] = dict.fromkeys(_INFO_NAMES, 0)

    # ------------------------------------------------------------------------------------------------ open/close
    def open(self) -> TriggeredCameraInfo:
        """Connect and read what the camera is (idempotent while open)."""
        if self._info is not None:
            return self._info
        aravis, glib = load_aravis()
        self._aravis, self._glib = aravis, glib
        try:
            camera = aravis.Camera.new(self.device_id)
        except glib.Error as exc:
            raise DeviceNotFoundError(f"no GenICam camera at {self.device_id or 'any address'}: {exc.message}") from exc
        self._camera = camera
        try:
            if self.packet_size is not None:
                if not camera.is_gv_device():
                    raise ConfigurationError("packet_size applies to GigE Vision cameras only")
                camera.gv_set_packet_size(self.packet_size)
            self._info = self._read_info()
        except glib.Error as exc:
            self._camera = None
            raise DeviceError(f"the camera opened but did not answer its description: {exc.message}") from exc
        except BaseException:
            self._camera = None
            raise
        logger.info("opened %s %s (%s)", self._info.model, self._info.serial_number, self.device_id or "first found")
        return self._info

    def _read_info(self) -> TriggeredCameraInfo:
        camera = self._camera
        device = camera.get_device()
        sensor = camera.get_sensor_size()
        available = set(camera.dup_available_pixel_formats_as_strings() or ())
        formats = tuple(fmt for fmt, (name, _) in GENICAM_PIXEL_FORMATS.items() if name in available)
        # Aravis 0.8 gives every buffer's timestamp in nanoseconds: it scales a GigE camera's ticks by the camera's
        # GevTimestampTickFrequency itself (USB3 Vision timestamps are nanoseconds already).
        tick_ns = 1.0
        skipped: tuple[int, ...]
        if camera.is_gv_device():
            extended = device.get_feature("GevGVSPExtendedIDMode") is not None and (
                device.get_string_feature_value("GevGVSPExtendedIDMode") == "On"
            )
            # both GigE Vision counters skip 0 (it marks "no id")
            modulus, skipped = (_WIDE_MODULUS if extended else _GEV_MODULUS), (0,)
        else:
            modulus, skipped = _WIDE_MODULUS, ()
        exposure = camera.get_exposure_time_bounds()
        gain = camera.get_gain_bounds()
        return TriggeredCameraInfo(
            model=camera.get_model_name() or "",
            serial_number=camera.get_device_serial_number() or "",
            width=int(sensor.width),
            height=int(sensor.height),
            pixel_formats=formats,
            frame_id_modulus=modulus,
            skipped_ids=skipped,
            timestamp_tick_ns=tick_ns,
            max_buffers=self.n_buffers,
            exposure_range_us=(math.ceil(exposure.min), math.floor(exposure.max)),
            gain_range=(float(gain.min), float(gain.max)),
            gain_unit=_gain_unit(device),
        )

    def close(self) -> None:
        """Stop and release the camera (a GigE camera's control channel is given up); idempotent."""
        if self._camera is None:
            return
        self.stop()
        self._camera = None
        self._info = None
        logger.info("closed camera %s", self.device_id or "")

    def __enter__(self) -> AravisCamera:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _opened(self) -> Any:
        if self._camera is None or self._info is None:
            raise DeviceError("the camera is not open: call open() first")
        return self._camera

    # ---------------------------------------------------------------------------------------------- settings
    def read_settings(self) -> GrabSettings:
        """What the camera holds now, read from it.

        Raises:
            ConfigurationError: the camera holds a pixel format the driver does not use (configure it first).
        """
        camera = self._opened()
        try:
            snapshot = self._snapshot()
        except self._glib.Error as exc:
            raise DeviceError(f"reading the camera's settings failed: {exc.message}") from exc
        if snapshot.pixel_format not in _BY_NAME:
            raise ConfigurationError(
                f"the camera holds pixel format {snapshot.pixel_format}, which the driver does not use; "
                f"configure one of {', '.join(_BY_NAME)}"
            )
        x, y, width, height = snapshot.region
        del camera
        return GrabSettings(
            x=x,
            y=y,
            width=width,
            height=height,
            exposure_us=int(round(snapshot.exposure_us)),
            gain=float(snapshot.gain),
            pixel_format=_BY_NAME[snapshot.pixel_format],
            trigger_line=snapshot.trigger_source if snapshot.trigger_mode == "On" else None,
        )

    def _snapshot(self) -> _Snapshot:
        camera = self._camera
        device = camera.get_device()
        region = camera.get_region()
        has_trigger = device.get_feature("TriggerMode") is not None
        if has_trigger and device.get_feature("TriggerSelector") is not None:
            device.set_string_feature_value("TriggerSelector", "FrameStart")
        return _Snapshot(
            pixel_format=camera.get_pixel_format_as_string(),
            region=(int(region.x), int(region.y), int(region.width), int(region.height)),
            exposure_us=float(camera.get_exposure_time()),
            gain=float(camera.get_gain()),
            trigger_mode=device.get_string_feature_value("TriggerMode") if has_trigger else None,
            trigger_source=(
                device.get_string_feature_value("TriggerSource")
                if device.get_feature("TriggerSource") is not None
                else None
            ),
        )

    def configure(self, settings: GrabSettings) -> GrabSettings:
        """Write the settings with the acquisition stopped and return what the camera now holds.

        Values outside the camera's declared bounds are refused before anything is written; a value the camera
        refuses while writing (a trigger line it does not have) puts back every setting it held before.

        Raises:
            InvalidInputError: a value no camera takes (a non-positive size, a negative offset, a wrong type).
            ConfigurationError: a value this camera refuses; its previous settings stay.
        """
        camera = self._opened()
        _check_settings(settings)
        self._check_bounds(settings)
        self.stop()
        glib = self._glib
        try:
            before = self._snapshot()
        except glib.Error as exc:
            raise DeviceError(f"reading the camera's settings failed: {exc.message}") from exc
        try:
            self._write(settings, before)
        except glib.Error as exc:
            self._restore(before)
            raise ConfigurationError(f"the camera refused {settings}: {exc.message}") from exc
        held = self.read_settings()
        if held != settings:
            logger.info("the camera rounded the settings: asked %s, holds %s", settings, held)
        del camera
        return held

    def _check_bounds(self, settings: GrabSettings) -> None:
        info = self._info
        camera = self._camera
        assert info is not None  # _opened() checked it
        if settings.pixel_format not in info.pixel_formats:
            offered = ", ".join(GENICAM_PIXEL_FORMATS[f][0] for f in info.pixel_formats) or "none of the driver's"
            wanted = GENICAM_PIXEL_FORMATS[settings.pixel_format][0]
            raise ConfigurationError(f"the camera has no pixel format {wanted} (it offers {offered})")
        if settings.x + settings.width > info.width or settings.y + settings.height > info.height:
            raise ConfigurationError(
                f"region {settings.width}x{settings.height} at ({settings.x}, {settings.y}) does not fit the "
                f"{info.width}x{info.height} sensor"
            )
        try:
            exposure = camera.get_exposure_time_bounds()
            gain = camera.get_gain_bounds()
        except self._glib.Error as exc:
            raise DeviceError(f"reading the camera's exposure and gain bounds failed: {exc.message}") from exc
        if not exposure.min <= settings.exposure_us <= exposure.max:
            raise ConfigurationError(
                f"exposure {settings.exposure_us} us is outside the camera's {exposure.min:g}..{exposure.max:g} us"
            )
        if not gain.min <= settings.gain <= gain.max:
            raise ConfigurationError(f"gain {settings.gain} is outside the camera's {gain.min:g}..{gain.max:g}")
        if settings.trigger_line is None and self.free_run_frame_rate_hz is not None:
            rate = camera.get_frame_rate_bounds()
            if not rate.min <= self.free_run_frame_rate_hz <= rate.max:
                raise ConfigurationError(
                    f"free-run frame rate {self.free_run_frame_rate_hz:g} Hz is outside the camera's "
                    f"{rate.min:g}..{rate.max:g} Hz"
                )

    def _write(self, settings: GrabSettings, before: _Snapshot) -> None:
        camera = self._camera
        device = camera.get_device()
        camera.set_pixel_format_from_string(GENICAM_PIXEL_FORMATS[settings.pixel_format][0])
        _write_region(device, before.region, (settings.x, settings.y, settings.width, settings.height))
        if device.get_feature("ExposureAuto") is not None:
            device.set_string_feature_value("ExposureAuto", "Off")
        camera.set_exposure_time(float(settings.exposure_us))
        if device.get_feature("GainAuto") is not None:
            device.set_string_feature_value("GainAuto", "Off")
        camera.set_gain(float(settings.gain))
        if device.get_feature("AcquisitionMode") is not None:
            device.set_string_feature_value("AcquisitionMode", "Continuous")
        if device.get_feature("TriggerSelector") is not None:
            device.set_string_feature_value("TriggerSelector", "FrameStart")
        if settings.trigger_line is None:
            if device.get_feature("TriggerMode") is not None:
                device.set_string_feature_value("TriggerMode", "Off")
            if self.free_run_frame_rate_hz is not None:
                camera.set_frame_rate(self.free_run_frame_rate_hz)
            return
        if device.get_feature("TriggerMode") is None:
            raise ConfigurationError("the camera has no TriggerMode feature: it cannot be triggered on a line")
        device.set_string_feature_value("TriggerSource", settings.trigger_line)
        if device.get_feature("TriggerActivation") is not None and settings.trigger_line != "Software":
            device.set_string_feature_value("TriggerActivation", "RisingEdge")
        device.set_string_feature_value("TriggerMode", "On")

    def _restore(self, before: _Snapshot) -> None:
        camera = self._camera
        device = camera.get_device()
        try:
            camera.set_pixel_format_from_string(before.pixel_format)
            now = camera.get_region()
            _write_region(device, (int(now.x), int(now.y), int(now.width), int(now.height)), before.region)
            camera.set_exposure_time(before.exposure_us)
            camera.set_gain(before.gain)
            if before.trigger_source is not None:
                device.set_string_feature_value("TriggerSource", before.trigger_source)
            if before.trigger_mode is not None:
                device.set_string_feature_value("TriggerMode", before.trigger_mode)
        except self._glib.Error as exc:
            logger.error("the camera's previous settings could not all be written back: %s", exc.message)

    # ------------------------------------------------------------------------------------------- acquisition
    def start(self) -> None:
        """Open a stream with ``n_buffers`` buffers and start the acquisition (idempotent while armed)."""
        camera = self._opened()
        if self._stream is not None:
            return
        settings = self.read_settings()
        aravis, glib = self._aravis, self._glib
        try:
            payload = int(camera.get_payload())
            stream = camera.create_stream(None, None)
            if stream is None:
                raise DeviceError("Aravis could not open a stream from the camera")
            if isinstance(stream, aravis.GvStream):
                resend = aravis.GvStreamPacketResend.ALWAYS if self.packet_resend else aravis.GvStreamPacketResend.NEVER
                stream.set_property("packet-resend", resend)
                if self.frame_retention_us is not None:
                    stream.set_property("frame-retention", self.frame_retention_us)
            self._buffers = [aravis.Buffer.new_allocate(payload) for _ in range(self.n_buffers)]
            self._ids_held = {id(buffer): int(buffer.get_frame_id()) for buffer in self._buffers}
            for buffer in self._buffers:
                stream.push_buffer(buffer)
            self._stream = stream
            self._grab = (settings.pixel_format, settings.width, settings.height, payload)
            camera.start_acquisition()
        except glib.Error as exc:
            self._drop_stream()
            raise DeviceError(f"starting the acquisition failed: {exc.message}") from exc
        logger.debug("armed: %d buffers of %d bytes", self.n_buffers, payload)

    def software_trigger(self) -> None:
        """Fire the camera's software trigger (TriggerSoftware) once: for a configuration whose trigger line is
        ``"Software"`` (tests, and checking a rig without the DMD)."""
        camera = self._opened()
        try:
            camera.software_trigger()
        except self._glib.Error as exc:
            raise DeviceError(f"the software trigger failed: {exc.message}") from exc

    def read(self, timeout_s: float) -> CameraBuffer | None:
        """The next buffer, or None when none came within ``timeout_s``.

        The pixels are copied out and the buffer goes back to the stream before this returns. A buffer whose
        status is not SUCCESS, or whose format or size is not what was configured, comes back incomplete with
        the reason in ``detail`` and no pixels; when the frame's leader packet was lost its frame id is
        :data:`UNKNOWN_FRAME_ID` and its device time -1 (the buffer would otherwise show a frame it held before).
        """
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s >= 0:
            raise InvalidInputError(f"timeout_s must be a number >= 0, got {timeout_s!r}")
        if not math.isfinite(timeout_s):
            raise InvalidInputError("timeout_s must be finite")
        stream = self._stream
        if stream is None or self._grab is None:
            raise DeviceError("the acquisition is not started: call start() first")
        buffer = stream.timeout_pop_buffer(int(round(timeout_s * 1e6)))
        host_time_ns = time.monotonic_ns()
        if buffer is None:
            return None
        try:
            return self._to_camera_buffer(buffer, host_time_ns)
        finally:
            stream.push_buffer(buffer)

    def _to_camera_buffer(self, buffer: Any, host_time_ns: int) -> CameraBuffer:
        assert self._grab is not None
        pixel_format, width, height, _payload = self._grab
        status = buffer.get_status()
        frame_id = int(buffer.get_frame_id())
        device_time_ns = int(buffer.get_timestamp())
        held_before = self._ids_held.get(id(buffer))
        self._ids_held[id(buffer)] = frame_id
        if status != self._aravis.BufferStatus.SUCCESS:
            detail = f"status {status.value_nick}"
            if frame_id == held_before:
                # The frame's leader packet never came, so the buffer still carries the id and time of the frame
                # it held before (or none): this frame's own are unknown.
                return CameraBuffer(
                    UNKNOWN_FRAME_ID, -1, host_time_ns, False, None, f"{detail}, leader lost: id unknown"
                )
            return CameraBuffer(frame_id, device_time_ns, host_time_ns, False, None, detail)
        problem = ""
        name, code = GENICAM_PIXEL_FORMATS[pixel_format]
        if buffer.get_payload_type() != self._aravis.BufferPayloadType.IMAGE:
            problem = f"payload type {buffer.get_payload_type().value_nick}, not an image"
        elif int(buffer.get_image_pixel_format()) != code:
            problem = f"pixel format 0x{int(buffer.get_image_pixel_format()):08x}, configured {name}"
        elif (buffer.get_image_width(), buffer.get_image_height()) != (width, height):
            problem = f"image {buffer.get_image_width()}x{buffer.get_image_height()}, configured {width}x{height}"
        if problem:
            return CameraBuffer(frame_id, device_time_ns, host_time_ns, False, None, problem)
        data = buffer.get_image_data()
        n_pixels = width * height
        needed = payload_size(pixel_format, n_pixels)
        if len(data) < needed:
            return CameraBuffer(
                frame_id, device_time_ns, host_time_ns, False, None, f"{len(data)} bytes, {needed} needed"
            )
        try:
            pixels = decode_pixels(pixel_format, memoryview(data)[:needed], n_pixels).reshape(height, width)
        except ProtocolError as exc:
            return CameraBuffer(frame_id, device_time_ns, host_time_ns, False, None, str(exc))
        return CameraBuffer(frame_id, device_time_ns, host_time_ns, True, pixels)

    def stop(self) -> None:
        """Stop the acquisition and release the stream with its buffers (unread ones are discarded); safe in any
        state."""
        if self._camera is not None and self._stream is not None:
            try:
                self._camera.stop_acquisition()
            except self._glib.Error as exc:
                logger.warning("AcquisitionStop failed: %s", exc.message)
        self._drop_stream()

    def _drop_stream(self) -> None:
        stream, self._stream = self._stream, None
        self._grab = None
        self._buffers = []
        self._ids_held = {}
        if stream is None:
            return
        for field, value in self._stream_counts(stream).items():
            self._earlier_counts[field] += value
        # Dropping the last reference finalizes the stream: its thread stops and its buffers are freed.
        del stream

    def _stream_counts(self, stream: Any) -> dict[str, int]:
        return {field: int(stream.get_info_uint64_by_name(info)) for field, info in _INFO_NAMES.items()}

    def counters(self) -> AravisStreamCounters:
        """The stream's counters since the camera was opened (summed over its starts)."""
        counts = dict(self._earlier_counts)
        if self._stream is not None:
            for field, value in self._stream_counts(self._stream).items():
                counts[field] += value
        return AravisStreamCounters(**counts)

    def queued_buffers(self) -> tuple[int, int]:
        """Buffers waiting in the stream now: (empty ones ready for frames, filled ones not yet read); (0, 0)
        when stopped. With the buffers being filled they make up ``n_buffers``."""
        if self._stream is None:
            return (0, 0)
        n_input, n_output = self._stream.get_n_buffers()
        return int(n_input), int(n_output)


def _check_settings(settings: GrabSettings) -> None:
    """Refuse values no camera takes, before anything is sent."""
    if not isinstance(settings, GrabSettings):
        raise InvalidInputError(f"settings must be GrabSettings, got {type(settings).__name__}")
    for name in ("x", "y", "width", "height", "exposure_us"):
        value = getattr(settings, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise InvalidInputError(f"{name} must be an integer, got {value!r}")
    if settings.x < 0 or settings.y < 0:
        raise InvalidInputError(f"the region's offset must not be negative, got ({settings.x}, {settings.y})")
    if settings.width < 1 or settings.height < 1:
        raise InvalidInputError(f"the region must be at least 1x1, got {settings.width}x{settings.height}")
    if settings.exposure_us < 1:
        raise InvalidInputError(f"exposure_us must be positive, got {settings.exposure_us}")
    gain = settings.gain
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not math.isfinite(gain) or gain < 0:
        raise InvalidInputError(f"gain must be a finite number >= 0, got {gain!r}")
    if not isinstance(settings.pixel_format, PixelFormat):
        raise InvalidInputError(f"pixel_format must be a PixelFormat, got {settings.pixel_format!r}")
    line = settings.trigger_line
    if line is not None and (not isinstance(line, str) or not line.isidentifier()):
        raise InvalidInputError(f"trigger_line must be a line name such as 'Line1', or None; got {line!r}")


def _write_region(device: Any, old: tuple[int, int, int, int], new: tuple[int, int, int, int]) -> None:
    """Write a region so that every intermediate one fits the sensor: shrink, then move, then grow.

    A camera bounds OffsetX by SensorWidth - Width (and Width by SensorWidth - OffsetX), so moving a wide region
    right before it narrows, or widening it before it moves left, would be refused.
    """
    _, _, old_width, old_height = old
    x, y, width, height = new
    device.set_integer_feature_value("Width", min(old_width, width))
    device.set_integer_feature_value("Height", min(old_height, height))
    device.set_integer_feature_value("OffsetX", x)
    device.set_integer_feature_value("OffsetY", y)
    device.set_integer_feature_value("Width", width)
    device.set_integer_feature_value("Height", height)


def _gain_unit(device: Any) -> str:
    """ "dB" where the camera's gain is the standard float ``Gain`` feature in decibels; "raw" otherwise (an
    integer ``GainRaw``, or a unit the driver does not know): values in the camera's own scale."""
    feature = device.get_feature("Gain")
    get_unit = getattr(feature, "get_unit", None)
    if get_unit is None:
        return "raw"
    unit = (get_unit() or "").strip().lower()
    return "dB" if unit in ("db", "decibel", "decibels") else "raw"
