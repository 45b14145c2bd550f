"""TI DLPC900 DMD controller (DLP6500 evaluation boards) as a lab :class:`PatternDmd`, over USB HID with pyusb.

Pattern on-the-fly mode: the pictures are packed 24 to an image (one bit plane each), ERLE-compressed, uploaded
into the controller's memory, and shown once from the Pattern Display LUT, one LUT entry per picture, each framed
by a TRIG_OUT_1 pulse. Commands, fields and the order of the calls follow TI's DLPC900 programmer's guide (DLPU018;
see docs/rig-dlpc900.md for the section of each command).

The limit that matters is the upload: the board is a USB 1.1 full-speed HID device, one 64-byte report per 1 ms
frame on its interrupt endpoint, so at most 64 kB/s. A set of 24 random one-mirror pictures does not compress
(about 6.2 MB, ~97 s); 8x8-macropixel pictures take about 0.13 MB (~2 s). :meth:`Dlpc900Dmd.load` estimates the
upload time before it sends anything and raises :class:`~opu_driver.errors.ConfigurationError` with the numbers
when it exceeds ``max_upload_s`` (None turns the check off): a load that would block for minutes is a setting to
choose, not a surprise.

Linux: the kernel's usbhid driver binds the board; :meth:`Dlpc900Dmd.open` detaches it from interface 0 (libusb
``detach_kernel_driver``) and :meth:`Dlpc900Dmd.close` gives it back. Access without root needs a udev rule (see
docs/rig-dlpc900.md).
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import usb.core
import usb.util

from opu_driver.errors import (
    CommunicationError,
    CommunicationTimeoutError,
    ConfigurationError,
    ConnectionLostError,
    DeviceError,
    DeviceNotFoundError,
    DeviceRefusedError,
    InvalidInputError,
    LibraryLoadError,
    ProtocolError,
)

from . import dlpc900_wire as wire
from .erle import PLANES_PER_IMAGE, encode_image, pictures_to_images
from .parts import PatternDmd, PatternDmdInfo

__all__ = ["Dlpc900Dmd", "Dlpc900Prepared", "FULL_SPEED_HID_BYTES_PER_S", "upload_wire_bytes"]

logger = logging.getLogger(__name__)

#: Full-speed HID ceiling: one 64-byte interrupt report per 1 ms frame.
FULL_SPEED_HID_BYTES_PER_S = 64_000
_INTERFACE = 0
_MAIN_STATUS_RUNNING = 0x02
_HARDWARE_STATUS_INIT_OK = 0x01


@dataclass(frozen=True)
class Dlpc900Prepared:
    """A prepared sequence: one header+ERLE blob per 24-bit image (image i holds pictures 24i..24i+23).

    Attributes:
        images: the blobs that 0x1A2B uploads, in image order.
        n_pictures: pictures in the sequence.
        width, height: the DMD geometry they were made for.
        wire_bytes: bytes the upload puts on the bus (64-byte reports of every 0x1A2A and 0x1A2B message).
        host_time_s: how long ``prepare`` took (packing and compression).
    """

    images: tuple[bytes, ...]
    n_pictures: int
    width: int
    height: int
    wire_bytes: int
    host_time_s: float

    @property
    def upload_time_s(self) -> float:
        """The upload's lower bound at the full-speed HID ceiling (64 kB/s)."""
        return self.wire_bytes / FULL_SPEED_HID_BYTES_PER_S


def upload_wire_bytes(image_sizes: list[int]) -> int:
    """Bytes on the bus to upload images of these sizes: per image one 0x1A2A report, then one message per
    504-byte 0x1A2B chunk, each rounded up to 64-byte reports (header 4 + command 2 + count 2 + chunk)."""
    total = 0
    for size in image_sizes:
        total += wire.REPORT_SIZE  # 0x1A2A fits one report
        full, rest = divmod(size, wire.MAX_BMP_CHUNK)
        per_full = math.ceil((8 + wire.MAX_BMP_CHUNK) / wire.REPORT_SIZE) * wire.REPORT_SIZE
        total += full * per_full + (math.ceil((8 + rest) / wire.REPORT_SIZE) * wire.REPORT_SIZE if rest else 0)
    return total


class Dlpc900Dmd(PatternDmd):
    """A DLPC900 board in pattern on-the-fly mode.

    Args:
        serial_number: the board's USB serial number; None accepts a single board.
        backend: a pyusb backend (``usb.backend.IBackend``); None lets pyusb pick libusb. The emulator
            (``firmware_sim.lab.dlpc900.Dlpc900Backend``) plugs in here.
        timeout_s: per USB transfer.
        dark_time_us: dark time after each exposure; the exposure is ``picture_time_us - dark_time_us``.
        trigger_out_invert, trigger_out_rising_delay_us, trigger_out_falling_delay_us: TRIG_OUT_1 (0x1A1D;
            delays -20..20000 us relative to the pattern's display).
        led_mask: LED enables in each LUT entry (red 1, green 2, blue 4); an external laser ignores them.
        max_upload_s: refuse (ConfigurationError) a load whose upload at 64 kB/s would take longer; None: no limit.
        geometry: (width, height) of the DMD; None reads the DMD type from the board (Get Firmware Type).
    """

    def __init__(
        self,
        serial_number: str | None = None,
        *,
        backend: object | None = None,
        timeout_s: float = 2.0,
        dark_time_us: int = 0,
        trigger_out_invert: bool = False,
        trigger_out_rising_delay_us: int = 0,
        trigger_out_falling_delay_us: int = 0,
        led_mask: int = 0b111,
        max_upload_s: float | None = 120.0,
        geometry: tuple[int, int] | None = None,
    ) -> None:
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise InvalidInputError(f"timeout_s must be > 0, got {timeout_s!r}")
        if not 0 <= dark_time_us <= wire.MAX_TIME_US:
            raise InvalidInputError(f"dark_time_us must be 0..{wire.MAX_TIME_US}, got {dark_time_us}")
        if max_upload_s is not None and not max_upload_s > 0:
            raise InvalidInputError(f"max_upload_s must be > 0 or None, got {max_upload_s!r}")
        if not 0 <= led_mask <= 7:
            raise InvalidInputError(f"led_mask must be 0..7, got {led_mask}")
        try:
            self._trigger_out = wire.trigger_out(
                trigger_out_invert, trigger_out_rising_delay_us, trigger_out_falling_delay_us
            )
        except ValueError as exc:
            raise InvalidInputError(str(exc)) from exc
        self._wanted_serial = serial_number
        self._backend = backend
        self._timeout_ms = max(1, math.ceil(timeout_s * 1000))
        self._dark_time_us = dark_time_us
        self._led_mask = led_mask
        self.max_upload_s = max_upload_s
        self._geometry = geometry
        self._dev: Any = None
        self._detached = False
        self._info: PatternDmdInfo | None = None
        self._sequence = 0
        self._lock = threading.RLock()
        self._loaded: tuple[int, int] | None = None  # (n_pictures, picture_time_us)
        self._play_started: float | None = None

    # -------------------------------------------------------------------------------------------- open / close
    def open(self) -> PatternDmdInfo:
        """Find the board, detach usbhid, claim interface 0, read its DMD type and put it in on-the-fly mode."""
        with self._lock:
            if self._info is not None:
                return self._info
            dev, serial = self._find()
            try:
                self._claim(dev)
                self._dev = dev
                model, width, height = self._identify()
                self._command(wire.Command.PATTERN_START_STOP, bytes((wire.SequenceAction.STOP,)))
                self._command(wire.Command.DISPLAY_MODE, bytes((wire.DisplayMode.ON_THE_FLY,)))
                self._command(wire.Command.PATTERN_START_STOP, bytes((wire.SequenceAction.STOP,)))
                self._command(wire.Command.TRIGGER_OUT_1, self._trigger_out)
            except BaseException:
                self._release()
                raise
            self._info = PatternDmdInfo(
                model=model,
                serial_number=serial or "",
                width=width,
                height=height,
                max_pictures=wire.MAX_LUT_ENTRIES,
                min_picture_time_us=wire.MIN_EXPOSURE_US + self._dark_time_us,
                counts_progress=False,
            )
            logger.info("opened DLPC900 %s (%s, %dx%d)", serial, model, width, height)
            return self._info

    def _find(self) -> tuple[Any, str | None]:
        try:
            found = list(
                usb.core.find(find_all=True, idVendor=wire.VENDOR_ID, idProduct=wire.PRODUCT_ID, backend=self._backend)
            )
        except usb.core.NoBackendError as exc:
            raise LibraryLoadError(
                "no USB backend: install libusb-1.0 (Debian/Ubuntu: apt install libusb-1.0-0)"
            ) from exc
        matches = []
        for dev in found:
            try:
                serial = usb.util.get_string(dev, dev.iSerialNumber) if dev.iSerialNumber else None
            except (usb.core.USBError, ValueError) as exc:
                if self._wanted_serial is None and len(found) == 1:
                    raise DeviceNotFoundError(
                        f"DLPC900 found but not readable ({exc}): install the udev rule of docs/rig-dlpc900.md"
                    ) from exc
                continue
            if self._wanted_serial is None or serial == self._wanted_serial:
                matches.append((dev, serial))
        if not matches:
            which = f" with serial number {self._wanted_serial}" if self._wanted_serial else ""
            raise DeviceNotFoundError(f"no DLPC900{which} on USB (0451:c900)")
        if len(matches) > 1:
            raise DeviceNotFoundError(
                f"{len(matches)} DLPC900 boards found ({', '.join(str(s) for _, s in matches)}): give a serial number"
            )
        return matches[0]

    def _claim(self, dev: Any) -> None:
        try:
            if dev.is_kernel_driver_active(_INTERFACE):
                dev.detach_kernel_driver(_INTERFACE)
                self._detached = True
                logger.info("detached the kernel HID driver from the DLPC900")
        except NotImplementedError:  # backends without kernel drivers (Windows, macOS)
            pass
        except usb.core.USBError as exc:
            raise DeviceNotFoundError(f"cannot detach the kernel HID driver from the DLPC900: {exc}") from exc
        try:
            dev.set_configuration()
            usb.util.claim_interface(dev, _INTERFACE)
        except usb.core.USBError as exc:
            if exc.errno == errno.EACCES:
                raise DeviceNotFoundError("access denied to the DLPC900: install the udev rule") from exc
            if exc.errno == errno.EBUSY:
                raise DeviceNotFoundError("the DLPC900 is busy (another program or driver holds it)") from exc
            raise DeviceNotFoundError(f"cannot open the DLPC900: {exc}") from exc

    def _identify(self) -> tuple[str, int, int]:
        status = self._read(wire.Command.HARDWARE_STATUS)
        if not status or not status[0] & _HARDWARE_STATUS_INIT_OK:
            raise DeviceError(f"the DLPC900 reports a failed initialisation (hardware status {status.hex()})")
        firmware = self._read(wire.Command.GET_FIRMWARE_TYPE)
        dmd_type = firmware[0] if firmware else 0
        known = wire.DMD_TYPES.get(dmd_type)
        if known is not None and known[3]:
            raise ConfigurationError(
                f"{known[0]} has two controllers (left and right halves via 0x1A2C/0x1A2D): not supported yet"
            )
        if self._geometry is not None:
            width, height = self._geometry
            return (known[0] if known else f"DMD type {dmd_type}"), width, height
        if known is None:
            raise ConfigurationError(f"unknown DMD type {dmd_type}: give the geometry")
        return known[0], known[1], known[2]

    def close(self) -> None:
        """Stop the sequence, release the interface and give the board back to the kernel HID driver."""
        with self._lock:
            if self._dev is None:
                return
            try:
                self.halt()
            except (CommunicationError, DeviceError) as exc:
                logger.warning("DLPC900 stop on close failed: %s", exc)
            self._release()

    def _release(self) -> None:
        dev, self._dev = self._dev, None
        self._info = None
        self._loaded = None
        if dev is None:
            return
        try:
            usb.util.release_interface(dev, _INTERFACE)
        except usb.core.USBError as exc:
            logger.debug("release_interface: %s", exc)
        if self._detached:
            try:
                dev.attach_kernel_driver(_INTERFACE)
            except (usb.core.USBError, NotImplementedError) as exc:
                logger.warning("could not give the DLPC900 back to the kernel HID driver: %s", exc)
            self._detached = False
        usb.util.dispose_resources(dev)

    def __enter__(self) -> Dlpc900Dmd:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- messages
    def _next_sequence(self) -> int:
        self._sequence = (self._sequence + 1) & 0xFF
        return self._sequence

    def _exchange(self, flags: int, command: int, data: bytes) -> bytes:
        dev = self._dev
        if dev is None:
            raise ConnectionLostError("the DLPC900 is not open")
        sequence = self._next_sequence()
        reports = wire.build_reports(flags | wire.FLAG_REPLY, sequence, command, data)
        try:
            for report in reports:
                written = dev.write(wire.EP_OUT, report, timeout=self._timeout_ms)
                if written != len(report):
                    raise CommunicationError(f"command {command:#06x}: {written} of {len(report)} bytes written")
            first = bytes(dev.read(wire.EP_IN, wire.REPORT_SIZE, timeout=self._timeout_ms))
            reply = wire.parse_reply_header(first)
            body = first[4:]
            reports_left = math.ceil(max(0, reply.length - len(body)) / wire.REPORT_SIZE)
            if reports_left > wire.COMMAND_BUFFER_SIZE // wire.REPORT_SIZE:
                raise ProtocolError(f"reply to {command:#06x} announces {reply.length} bytes")
            for _ in range(reports_left):
                body += bytes(dev.read(wire.EP_IN, wire.REPORT_SIZE, timeout=self._timeout_ms))
        except usb.core.USBTimeoutError as exc:
            raise CommunicationTimeoutError(f"DLPC900 command {command:#06x}: no reply") from exc
        except usb.core.USBError as exc:
            if exc.errno in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN):
                raise ConnectionLostError(f"DLPC900 command {command:#06x}: the board is gone") from exc
            raise CommunicationError(f"DLPC900 command {command:#06x}: USB error {exc}") from exc
        if reply.sequence != sequence:
            raise ProtocolError(f"reply to {command:#06x} has sequence byte {reply.sequence}, {sequence} was sent")
        if reply.error:
            code, description = self._read_error()
            raise DeviceRefusedError(f"DLPC900 refused command {command:#06x}: {description}", code)
        return body[: reply.length]

    def _command(self, command: int, data: bytes = b"") -> None:
        self._exchange(0, command, data)

    def _read(self, command: int) -> bytes:
        return self._exchange(wire.FLAG_READ, command, b"")

    def _read_error(self) -> tuple[int | None, str]:
        try:
            code_bytes = self._exchange(wire.FLAG_READ, wire.Command.READ_ERROR_CODE, b"")
            text = self._exchange(wire.FLAG_READ, wire.Command.READ_ERROR_DESCRIPTION, b"")
        except (CommunicationError, DeviceRefusedError) as exc:
            return None, f"(error code unreadable: {exc})"
        code = code_bytes[0] if code_bytes else None
        described = text.split(b"\x00", 1)[0].decode("ascii", "replace")
        known = wire.ERROR_CODES.get(code, "not defined") if code is not None else "unknown"
        return code, f"{known} ({described})" if described else known

    # -------------------------------------------------------------------------------------------- the sequence
    def _require_open(self) -> PatternDmdInfo:
        if self._info is None:
            raise DeviceError("the DLPC900 is not open")
        return self._info

    def prepare(self, packed: npt.NDArray[np.uint8]) -> Dlpc900Prepared:
        """Unpack raw frames, pack them 24 to an image and ERLE-compress each image (no USB traffic).

        Raises InvalidInputError for a wrong shape or dtype, DeviceRefusedError for more pictures than the LUT
        holds (400).
        """
        info = self._require_open()
        t0 = time.perf_counter()
        n_bytes = -(-info.width * info.height // 8)
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 2:
            raise InvalidInputError("pictures must be a 2-D uint8 array of raw frames")
        if packed.shape[1] != n_bytes:
            raise InvalidInputError(f"raw frames of {packed.shape[1]} bytes; this DMD takes {n_bytes}")
        n = packed.shape[0]
        self._check_count(n)
        pictures = np.unpackbits(packed, axis=1, count=info.width * info.height).astype(bool)
        pictures = pictures.reshape(n, info.height, info.width)
        blobs = tuple(encode_image(image) for image in pictures_to_images(pictures))
        elapsed = time.perf_counter() - t0
        prepared = Dlpc900Prepared(
            blobs, n, info.width, info.height, upload_wire_bytes([len(b) for b in blobs]), elapsed
        )
        logger.debug(
            "prepared %d pictures: %d images, %d bytes on the wire (%.1f s at 64 kB/s), %.3f s host time",
            n,
            len(blobs),
            prepared.wire_bytes,
            prepared.upload_time_s,
            elapsed,
        )
        return prepared

    @staticmethod
    def _check_count(n: int) -> None:
        if not 1 <= n <= wire.MAX_LUT_ENTRIES:
            raise DeviceRefusedError(
                f"{n} pictures: the DLPC900's pattern LUT holds 1..{wire.MAX_LUT_ENTRIES} (nothing was sent)"
            )

    def load(self, prepared: Any, n_pictures: int, picture_time_us: int) -> None:
        """Define the LUT (one entry per picture, shown once), then upload the images in reverse order.

        Raises:
            DeviceRefusedError: too many pictures, a picture time below the minimum, or the board refused a command
                (with its error code); after a refusal nothing is left to play.
            ConfigurationError: the upload would take longer than ``max_upload_s`` at 64 kB/s (nothing sent).
            InvalidInputError: ``prepared`` does not come from :meth:`prepare` for this DMD.
        """
        info = self._require_open()
        if not isinstance(prepared, Dlpc900Prepared) or (prepared.width, prepared.height) != (info.width, info.height):
            raise InvalidInputError("load takes what prepare returned for this DMD")
        self._check_count(n_pictures)
        if n_pictures != prepared.n_pictures:
            raise InvalidInputError(f"n_pictures {n_pictures} differs from the {prepared.n_pictures} prepared")
        exposure_us = int(picture_time_us) - self._dark_time_us
        if exposure_us < wire.MIN_EXPOSURE_US or exposure_us > wire.MAX_TIME_US:
            raise DeviceRefusedError(
                f"picture time {picture_time_us} us gives an exposure of {exposure_us} us "
                f"(dark time {self._dark_time_us} us); the DLPC900 takes {wire.MIN_EXPOSURE_US}..{wire.MAX_TIME_US}"
            )
        if self.max_upload_s is not None and prepared.upload_time_s > self.max_upload_s:
            raise ConfigurationError(
                f"uploading {n_pictures} pictures puts {prepared.wire_bytes} bytes on full-speed USB HID: at least "
                f"{prepared.upload_time_s:.1f} s at 64 kB/s, over max_upload_s={self.max_upload_s:g} s. Use "
                "macropixel pictures (they compress), fewer pictures, or raise max_upload_s"
            )
        with self._lock:
            self._loaded = None
            t0 = time.monotonic()
            self._command(wire.Command.PATTERN_START_STOP, bytes((wire.SequenceAction.STOP,)))
            try:
                for i in range(n_pictures):
                    entry = wire.lut_entry(
                        i,
                        exposure_us,
                        self._dark_time_us,
                        i // PLANES_PER_IMAGE,
                        i % PLANES_PER_IMAGE,
                        led_mask=self._led_mask,
                        disable_trigger_out_2=i != 0,  # TRIG_OUT_2 marks the sequence start
                    )
                    self._command(wire.Command.LUT_DEFINITION, entry)
                self._command(wire.Command.LUT_CONFIGURATION, wire.lut_configuration(n_pictures, n_pictures))
                for index in reversed(range(len(prepared.images))):
                    blob = prepared.images[index]
                    self._command(wire.Command.BMP_LOAD_INIT, wire.bmp_load_init(index, len(blob)))
                    for start in range(0, len(blob), wire.MAX_BMP_CHUNK):
                        chunk = blob[start : start + wire.MAX_BMP_CHUNK]
                        self._command(wire.Command.BMP_LOAD, wire.bmp_load_chunk(chunk))
            except BaseException:
                self._loaded = None
                raise
            self._loaded = (n_pictures, int(picture_time_us))
            self._play_started = None
            logger.info(
                "loaded %d pictures (%d images, %d bytes) in %.2f s",
                n_pictures,
                len(prepared.images),
                prepared.wire_bytes,
                time.monotonic() - t0,
            )

    def play(self) -> None:
        """Start the loaded sequence (0x1A24 start); it plays once, on the board's clock."""
        with self._lock:
            self._require_open()
            if self._loaded is None:
                raise DeviceError("nothing loaded to play")
            self._command(wire.Command.PATTERN_START_STOP, bytes((wire.SequenceAction.START,)))
            self._play_started = time.monotonic()

    def wait(self, timeout_s: float) -> None:
        """Sleep through the sequence's own duration, then poll Main Status until the sequencer stops."""
        if not (math.isfinite(timeout_s) and timeout_s > 0):
            raise InvalidInputError(f"timeout_s must be > 0, got {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        with self._lock:
            if self._loaded is None or self._play_started is None:
                raise DeviceError("no sequence playing")
            n, picture_time_us = self._loaded
            expected_end = self._play_started + n * picture_time_us * 1e-6
        time.sleep(max(0.0, min(expected_end, deadline) - time.monotonic()))
        poll_s = 0.002
        while True:
            with self._lock:
                status = self._read(wire.Command.MAIN_STATUS)
            if not status or not status[0] & _MAIN_STATUS_RUNNING:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise CommunicationTimeoutError(f"the DLPC900 sequence still runs after {timeout_s:g} s")
            time.sleep(min(poll_s, left))
            poll_s = min(poll_s * 2, 0.05)

    def progress(self) -> int | None:
        """The DLPC900 has no readout of the patterns shown."""
        return None

    def halt(self) -> None:
        """Stop the sequence (0x1A24 stop); harmless when stopped."""
        with self._lock:
            if self._dev is None:
                return
            self._command(wire.Command.PATTERN_START_STOP, bytes((wire.SequenceAction.STOP,)))
            self._play_started = None
