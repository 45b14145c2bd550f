"""A byte-level emulator of TI's DLPC900 DMD controller (DLP6500 evaluation board) in pattern on-the-fly mode, and a
pyusb backend that shows it as the USB HID device (VID 0x0451, PID 0xC900) a driver finds with
``usb.core.find(idVendor=0x0451, idProduct=0xC900, backend=Dlpc900Backend([emulator]))``.

What it does, from TI's DLPC900 programmer's guide (DLPU018):

- reassembles 64-byte reports into messages (section 1.2.1: only the first report carries the 4-byte header; a
  message fits the 512-byte command buffer) and answers those that want a reply with the flag byte (plus the error
  bit, bit 5) and the sequence byte echoed;
- keeps the state the commands build: display mode (0x1A1B), the Pattern Display LUT (0x1A34 entries, 0x1A31 entry
  count and patterns to show), images uploaded with 0x1A2A/0x1A2B, trigger-out delays (0x1A1D), start/stop (0x1A24);
- enforces the preconditions the guide states: LUT definitions and uploads only in a pattern mode with the sequence
  stopped; 0x1A31 after the definitions; images uploaded after the 0x1A31 that they serve, at most 504 data bytes per
  0x1A2B, in reverse order (the highest image index first, as the guide's on-the-fly example does); a start needs a
  configured LUT whose images are all present;
- decodes each uploaded image with its own header parser and ERLE decoder (:mod:`.dlpc900_erle`) back to 24 bit
  planes; checks the header's geometry against the DMD's;
- plays the LUT in order on a clock: pattern k starts after the exposures and dark times of the patterns before it;
  each shown pattern records one TRIG_OUT_1 event (rising and falling edge, with the 0x1A1D delays) and goes to the
  display hooks as ``(packed, lut_index, time_us)`` with ``packed = np.packbits(picture.ravel())``, the driver's raw
  frame layout; entries that wait for TRIG_IN_1 hold the sequence until :meth:`Dlpc900Emulator.trigger_in`;
- reports errors as the board does: the reply's error bit, then Read Error Code 0x0100 and Read Error Description
  0x0101 (codes of section 2.1.6).

Where the guide names no error code for a broken sequence (an upload out of reverse order, a 0x1A2B without a
0x1A2A, a message larger than the buffer), the emulator answers 6 (invalid command parameter) or 5 (command not
allowed in current mode); that choice is the emulator's. Fault hooks: :meth:`Dlpc900Emulator.inject` (a refused
command, a stalled OUT endpoint, a reply that never comes).
"""

from __future__ import annotations

import errno
import logging
import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import usb.backend
import usb.core

from .dlpc900_erle import HEADER_BYTES, ImageDecodeError, decode_erle, parse_header, split_planes

__all__ = [
    "Dlpc900Emulator",
    "Dlpc900Backend",
    "TriggerEvent",
    "LutEntry",
    "DisplayCallback",
]

logger = logging.getLogger(__name__)

VENDOR_ID, PRODUCT_ID = 0x0451, 0xC900
EP_OUT, EP_IN = 0x01, 0x81
REPORT = 64
BUFFER = 512
MAX_CHUNK = 504
MAX_ENTRIES = 400
MIN_EXPOSURE_US = 105
MAX_IMAGES = 256  # image index range of 0x1A34 bytes 10..11 ("0..255")
FLAG_READ, FLAG_REPLY, FLAG_ERROR = 0x80, 0x40, 0x20
MODE_VIDEO, MODE_PRESTORED, MODE_VIDEO_PATTERN, MODE_OTF = 0, 1, 2, 3

_DESCRIPTIONS = {
    0: "No error",
    3: "Invalid command number",
    5: "Command not allowed in current mode",
    6: "Invalid command parameter",
    7: "Item referred by the parameter is not present",
    9: "Invalid BMP compression type",
    10: "Pattern bit number out of range",
    12: "Pattern dark time is out of range",
    13: "Signal delay parameter is out of range",
    14: "Pattern exposure time is out of range",
    15: "Pattern number is out of range",
    16: "Invalid pattern definition",
    17: "Pattern image memory address is out of range",
}

#: ``callback(packed, lut_index, time_us)``: one shown pattern.
DisplayCallback = Callable[[npt.NDArray[np.uint8], int, int], None]


class _Refused(Exception):
    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class LutEntry:
    """One decoded 0x1A34 entry."""

    index: int
    exposure_us: int
    dark_us: int
    clear_after_exposure: bool
    bit_depth: int
    led_mask: int
    wait_for_trigger_in: bool
    trigger_out_2_disabled: bool
    image_index: int
    bit_position: int


@dataclass(frozen=True)
class TriggerEvent:
    """One TRIG_OUT_1 pulse (times in microseconds from the sequence start) and the pattern it framed."""

    lut_index: int
    shown: int  # count of patterns shown before this one in this play
    rise_us: int
    fall_us: int
    trigger_out_2: bool


@dataclass
class _Upload:
    index: int
    size: int
    data: bytearray


class Dlpc900Emulator:
    """One emulated DLPC900 with its DMD.

    Args:
        width, height: the DMD (1920 x 1080 for the DLP6500; smaller ones keep tests fast, the protocol is the same).
        serial_number: the USB serial number string.
        dmd_type: what Get Firmware Type reports (1 = DLP6500).
        clock: seconds, monotonic (tests may pass a fake one).
        max_events: bound of the recorded trigger events (oldest dropped first).
    """

    def __init__(
        self,
        width: int = 1920,
        height: int = 1080,
        *,
        serial_number: str = "EMU-DLPC900-1",
        dmd_type: int = 1,
        clock: Callable[[], float] = time.monotonic,
        max_events: int = 100_000,
    ) -> None:
        self.width, self.height = width, height
        self.serial_number = serial_number
        self.dmd_type = dmd_type
        self._clock = clock
        self._lock = threading.RLock()
        self.kernel_driver_attached = True  # Linux's usbhid binds the board at plug-in
        self.claimed = False
        self.mode = MODE_PRESTORED
        self.lut: dict[int, LutEntry] = {}
        self._lut_defined_since_config = True
        self.lut_entries = 0
        self.lut_patterns = 0
        self.images: dict[int, npt.NDArray[np.bool_]] = {}
        self._loaded_since_config: set[int] = set()
        self._next_upload: int | None = None
        self._upload: _Upload | None = None
        self.trigger_out_1 = (False, 0, 0)
        self.error_code = 0
        self._rx: bytearray | None = None
        self._rx_expected = 0
        self._reply: deque[bytes] = deque(maxlen=BUFFER // REPORT)
        self.events: deque[TriggerEvent] = deque(maxlen=max_events)
        self._hooks: list[DisplayCallback] = []
        self.running = False
        self._play: list[LutEntry] = []
        self._play_t0 = 0.0
        self._play_next = 0
        self._play_elapsed_us = 0
        self._triggers_in = 0
        self.bytes_out = 0
        self.reports_out = 0
        self.commands: deque[int] = deque(maxlen=100_000)
        self._inject: dict[str, int] = {}

    # ------------------------------------------------------------------------------------------ hooks and faults
    def on_display(self, callback: DisplayCallback) -> None:
        """Call ``callback(packed, lut_index, time_us)`` for every pattern shown from now on."""
        self._hooks.append(callback)

    def inject(self, fault: str, code: int = 6) -> None:
        """Make the next command fail: ``"refuse"`` (error bit, ``code`` latched), ``"stall"`` (EPIPE on the next
        OUT transfer), ``"no_reply"`` (the next reply never comes)."""
        if fault not in ("refuse", "stall", "no_reply"):
            raise ValueError(f"unknown fault {fault!r}")
        self._inject[fault] = code

    def trigger_in(self, pulses: int = 1) -> None:
        """Pulse TRIG_IN_1: releases entries that wait for it."""
        with self._lock:
            self._triggers_in += pulses

    def reset_counters(self) -> None:
        self.bytes_out = self.reports_out = 0
        self.commands.clear()

    # ------------------------------------------------------------------------------------------ USB side
    def usb_write(self, report: bytes) -> int:
        """One interrupt OUT transfer (a 64-byte report)."""
        with self._lock:
            if self._inject.pop("stall", None) is not None:
                raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
            if len(report) != REPORT:
                raise usb.core.USBError("Invalid parameter", -2, errno.EINVAL)
            self.bytes_out += len(report)
            self.reports_out += 1
            self.advance()
            if self._rx is None:
                (length,) = struct.unpack_from("<H", report, 2)
                self._rx = bytearray(report)
                self._rx_expected = 4 + length
            else:
                self._rx += report
            if len(self._rx) >= self._rx_expected:
                message = bytes(self._rx[: self._rx_expected])
                self._rx = None
                self._dispatch(message)
            return len(report)

    def usb_read(self) -> bytes | None:
        """One interrupt IN transfer: the next report of the pending reply, or None (nothing to send)."""
        with self._lock:
            self.advance()
            return self._reply.popleft() if self._reply else None

    def _dispatch(self, message: bytes) -> None:
        flags, sequence = message[0], message[1]
        (length,) = struct.unpack_from("<H", message, 2)
        want_reply = bool(flags & FLAG_REPLY)
        data_out = b""
        error = False
        if len(message) > BUFFER or length < 2:
            error, code = True, 6
            self._latch(code)
        else:
            (command,) = struct.unpack_from("<H", message, 4)
            self.commands.append(command)
            try:
                if "refuse" in self._inject:
                    code = self._inject.pop("refuse")
                    raise _Refused(code, "injected refusal")
                data_out = self._execute(command, bool(flags & FLAG_READ), message[6:])
                if command not in (0x0100, 0x0101):
                    self.error_code = 0
            except _Refused as exc:
                error = True
                logger.debug("command %#06x refused: %s (code %d)", command, exc.detail, exc.code)
                self._latch(exc.code)
        if self._inject.pop("no_reply", None) is not None:
            return
        if want_reply:
            reply_flags = (flags & (FLAG_READ | FLAG_REPLY)) | (FLAG_ERROR if error else 0)
            body = bytes((reply_flags, sequence)) + struct.pack("<H", len(data_out)) + data_out
            body += bytes(-len(body) % REPORT)
            self._reply.clear()  # the controller's one buffer: a new reply replaces an unread one
            self._reply.extend(body[i : i + REPORT] for i in range(0, len(body), REPORT))

    def _latch(self, code: int) -> None:
        self.error_code = code

    # ------------------------------------------------------------------------------------------ commands
    def _execute(self, command: int, read: bool, data: bytes) -> bytes:
        handler = self._READS.get(command) if read else self._WRITES.get(command)
        if handler is None:
            raise _Refused(3, f"command {command:#06x} ({'read' if read else 'write'}) unknown")
        return handler(self, data)

    def _need(self, data: bytes, n: int) -> None:
        if len(data) < n:
            raise _Refused(6, f"{len(data)} data bytes, {n} expected")

    def _stopped_in_pattern_mode(self, otf_only: bool = False) -> None:
        if self.running:
            raise _Refused(5, "stop the sequence first")
        allowed = (MODE_OTF,) if otf_only else (MODE_PRESTORED, MODE_OTF)
        if self.mode not in allowed:
            raise _Refused(5, f"not allowed in display mode {self.mode}")

    def _read_error_code(self, data: bytes) -> bytes:
        return bytes((self.error_code,))

    def _read_error_description(self, data: bytes) -> bytes:
        text = _DESCRIPTIONS.get(self.error_code, "Not defined").encode("ascii")
        return text + b"\x00"

    def _firmware_type(self, data: bytes) -> bytes:
        return bytes((self.dmd_type,)) + b"EMULATED DLPC900\x00"

    def _hardware_status(self, data: bytes) -> bytes:
        return b"\x01"  # internal initialization success

    def _system_status(self, data: bytes) -> bytes:
        return b"\x01"  # internal memory test passed

    def _main_status(self, data: bytes) -> bytes:
        return bytes((int(self.running) << 1,))  # bit 0 DMD parked (never), bit 1 sequencer running

    def _display_mode(self, data: bytes) -> bytes:
        self._need(data, 1)
        if data[0] not in (MODE_VIDEO, MODE_PRESTORED, MODE_VIDEO_PATTERN, MODE_OTF):
            raise _Refused(6, f"display mode {data[0]}")
        if self.running:
            raise _Refused(5, "stop the sequence before changing mode")
        if data[0] != self.mode:
            self.mode = data[0]
            self.lut_entries = 0
            self._loaded_since_config.clear()
        return b""

    def _trigger_out_1(self, data: bytes) -> bytes:
        self._need(data, 5)
        invert, rise, fall = struct.unpack_from("<Bhh", data)
        if self.running:
            raise _Refused(5, "stop the sequence first")
        if not (-20 <= rise <= 20000 and -20 <= fall <= 20000):
            raise _Refused(13, f"trigger out delays {rise}, {fall}")
        self.trigger_out_1 = (bool(invert & 1), rise, fall)
        return b""

    def _start_stop(self, data: bytes) -> bytes:
        self._need(data, 1)
        action = data[0]
        if action == 0:
            self.advance()
            self.running = False
            return b""
        if action == 1:
            self.advance()
            self.running = False
            return b""
        if action != 2:
            raise _Refused(6, f"start/stop value {action}")
        if self.mode not in (MODE_PRESTORED, MODE_OTF):
            raise _Refused(5, f"no pattern sequence in display mode {self.mode}")
        if self.lut_entries == 0 or self._lut_defined_since_config:
            raise _Refused(5, "the LUT is not configured (0x1A31 after the 0x1A34 definitions)")
        entries = [self.lut[i] for i in range(self.lut_entries)]
        needed = {e.image_index for e in entries}
        missing = sorted(needed - self._loaded_since_config)
        if missing or self._upload is not None:
            raise _Refused(7, f"images {missing} not loaded since the LUT configuration")
        count = self.lut_patterns
        if count == 0:
            raise _Refused(6, "the emulator plays finite sequences only (patterns to show = 0)")
        self._play = [entries[k % len(entries)] for k in range(count)]
        self._play_t0 = self._clock()
        self._play_next = 0
        self._play_elapsed_us = 0
        self._triggers_in = 0
        self.running = True
        return b""

    def _lut_definition(self, data: bytes) -> bytes:
        self._stopped_in_pattern_mode()
        self._need(data, 12)
        (index,) = struct.unpack_from("<H", data, 0)
        exposure = int.from_bytes(data[2:5], "little")
        options = data[5]
        dark = int.from_bytes(data[6:9], "little")
        (image_bits,) = struct.unpack_from("<H", data, 10)
        image_index, bit_position = image_bits & 0x7FF, image_bits >> 11
        depth = ((options >> 1) & 7) + 1
        if index >= MAX_ENTRIES:
            raise _Refused(15, f"pattern index {index}")
        if exposure < MIN_EXPOSURE_US:
            raise _Refused(14, f"exposure {exposure} us below {MIN_EXPOSURE_US}")
        if bit_position > 23:
            raise _Refused(10, f"bit position {bit_position}")
        if depth != 1:
            raise _Refused(16, "the emulator shows 1-bit patterns only")
        if image_index >= MAX_IMAGES:
            raise _Refused(17, f"image index {image_index}")
        self.lut[index] = LutEntry(
            index,
            exposure,
            dark,
            bool(options & 1),
            depth,
            (options >> 4) & 7,
            bool(options & 0x80),
            bool(data[9] & 1),
            image_index,
            bit_position,
        )
        self._lut_defined_since_config = True
        return b""

    def _lut_configuration(self, data: bytes) -> bytes:
        self._stopped_in_pattern_mode()
        self._need(data, 6)
        entries, patterns = struct.unpack_from("<HI", data)
        entries &= 0x7FF
        if not 1 <= entries <= MAX_ENTRIES:
            raise _Refused(6, f"{entries} LUT entries (1..{MAX_ENTRIES})")
        missing = [i for i in range(entries) if i not in self.lut]
        if missing:
            raise _Refused(16, f"LUT entries {missing[:5]}... not defined")
        self.lut_entries, self.lut_patterns = entries, patterns
        self._lut_defined_since_config = False
        self._loaded_since_config.clear()
        self._upload = None
        self._next_upload = max(self.lut[i].image_index for i in range(entries))
        return b""

    def _bmp_load_init(self, data: bytes) -> bytes:
        self._stopped_in_pattern_mode(otf_only=True)
        self._need(data, 6)
        index, size = struct.unpack_from("<HI", data)
        if self._next_upload is None or self.lut_entries == 0 or self._lut_defined_since_config:
            raise _Refused(5, "configure the LUT (0x1A31) before uploading its images")
        if self._upload is not None:
            raise _Refused(6, f"image {self._upload.index} still incomplete")
        if index != self._next_upload:
            raise _Refused(6, f"image {index} uploaded out of reverse order (image {self._next_upload} expected)")
        if size < HEADER_BYTES or size > HEADER_BYTES + 16 * self.width * self.height:
            raise _Refused(6, f"image size {size}")
        self._upload = _Upload(index, size, bytearray())
        return b""

    def _bmp_load(self, data: bytes) -> bytes:
        self._stopped_in_pattern_mode(otf_only=True)
        self._need(data, 2)
        (count,) = struct.unpack_from("<H", data)
        count &= 0x3FF
        if count > MAX_CHUNK or count != len(data) - 2:
            raise _Refused(6, f"chunk of {count} bytes ({len(data) - 2} sent; at most {MAX_CHUNK})")
        upload = self._upload
        if upload is None:
            raise _Refused(5, "0x1A2B without 0x1A2A")
        if len(upload.data) + count > upload.size:
            self._upload = None
            raise _Refused(6, "more bytes than 0x1A2A announced")
        upload.data += data[2:]
        if len(upload.data) == upload.size:
            self._upload = None
            self._store_image(upload)
        return b""

    def _store_image(self, upload: _Upload) -> None:
        blob = bytes(upload.data)
        try:
            header = parse_header(blob)
            if header.compression != 2:
                raise _Refused(9, f"compression {header.compression} (the emulator decodes ERLE only)")
            if (header.width, header.height) != (self.width, self.height):
                raise _Refused(6, f"image {header.width}x{header.height} on a {self.width}x{self.height} DMD")
            if header.data_size != len(blob) - HEADER_BYTES:
                raise _Refused(6, f"header says {header.data_size} data bytes, {len(blob) - HEADER_BYTES} came")
            image = decode_erle(blob[HEADER_BYTES:], header.width, header.height)
        except ImageDecodeError as exc:
            raise _Refused(9, f"image {upload.index}: {exc}") from exc
        self.images[upload.index] = split_planes(image)
        self._loaded_since_config.add(upload.index)
        self._next_upload = upload.index - 1

    _READS: dict[int, Callable[[Dlpc900Emulator, bytes], bytes]] = {
        0x0100: _read_error_code,
        0x0101: _read_error_description,
        0x0206: _firmware_type,
        0x1A0A: _hardware_status,
        0x1A0B: _system_status,
        0x1A0C: _main_status,
    }
    _WRITES: dict[int, Callable[[Dlpc900Emulator, bytes], bytes]] = {
        0x1A1B: _display_mode,
        0x1A1D: _trigger_out_1,
        0x1A24: _start_stop,
        0x1A2A: _bmp_load_init,
        0x1A2B: _bmp_load,
        0x1A31: _lut_configuration,
        0x1A34: _lut_definition,
    }

    # ------------------------------------------------------------------------------------------ the sequencer
    def advance(self) -> None:
        """Show every pattern whose start time has come (called at each transfer; tests may call it)."""
        with self._lock:
            if not self.running:
                return
            now_us = int((self._clock() - self._play_t0) * 1e6)
            _, rise_delay, fall_delay = self.trigger_out_1
            while self._play_next < len(self._play):
                entry = self._play[self._play_next]
                if entry.wait_for_trigger_in:
                    if self._triggers_in == 0:
                        return
                if self._play_elapsed_us > now_us:
                    return
                if entry.wait_for_trigger_in:
                    self._triggers_in -= 1
                start = self._play_elapsed_us
                self.events.append(
                    TriggerEvent(
                        entry.index,
                        self._play_next,
                        start + rise_delay,
                        start + entry.exposure_us + fall_delay,
                        not entry.trigger_out_2_disabled,
                    )
                )
                picture = self.images[entry.image_index][entry.bit_position]
                packed = np.packbits(picture.ravel())
                for hook in self._hooks:
                    hook(packed, entry.index, start)
                self._play_elapsed_us += entry.exposure_us + entry.dark_us
                self._play_next += 1
            if self._play_elapsed_us <= now_us:
                self.running = False

    def shown_pictures(self, lut_index: int) -> npt.NDArray[np.bool_]:
        """The picture a LUT entry shows, (height, width), from the decoded images."""
        entry = self.lut[lut_index]
        return self.images[entry.image_index][entry.bit_position].copy()


# ---------------------------------------------------------------------------------------------- pyusb backend
_LIBUSB_ERROR_TIMEOUT, _LIBUSB_ERROR_BUSY, _LIBUSB_ERROR_NOT_FOUND = -7, -6, -5


def _desc(**fields: Any) -> SimpleNamespace:
    return SimpleNamespace(extra_descriptors=[], **fields)


_CONFIG = _desc(
    bLength=9,
    bDescriptorType=2,
    wTotalLength=9 + 9 + 9 + 7 + 7,
    bNumInterfaces=1,
    bConfigurationValue=1,
    iConfiguration=0,
    bmAttributes=0xC0,
    bMaxPower=0,
)
_INTERFACE = _desc(
    bLength=9,
    bDescriptorType=4,
    bInterfaceNumber=0,
    bAlternateSetting=0,
    bNumEndpoints=2,
    bInterfaceClass=3,  # HID
    bInterfaceSubClass=0,
    bInterfaceProtocol=0,
    iInterface=0,
)
_ENDPOINTS = tuple(
    _desc(
        bLength=7,
        bDescriptorType=5,
        bEndpointAddress=address,
        bmAttributes=0x03,  # interrupt
        wMaxPacketSize=REPORT,
        bInterval=1,
        bRefresh=0,
        bSynchAddress=0,
    )
    for address in (EP_IN, EP_OUT)
)


class _Handle:
    def __init__(self, emulator: Dlpc900Emulator) -> None:
        self.emulator = emulator
        self.configuration = 1


class Dlpc900Backend(usb.backend.IBackend):
    """pyusb backend over emulated DLPC900 boards. As on Linux, usbhid holds each board's interface until the
    driver detaches it: claiming it before raises EBUSY."""

    def __init__(self, emulators: Iterable[Dlpc900Emulator]) -> None:
        super().__init__()
        self._emulators = list(emulators)

    def enumerate_devices(self) -> list[Dlpc900Emulator]:
        return list(self._emulators)

    def get_parent(self, dev: Dlpc900Emulator) -> None:
        return None

    def get_device_descriptor(self, dev: Dlpc900Emulator) -> SimpleNamespace:
        index = self._emulators.index(dev)
        return _desc(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0110,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=VENDOR_ID,
            idProduct=PRODUCT_ID,
            bcdDevice=0x0100,
            iManufacturer=1,
            iProduct=2,
            iSerialNumber=3,
            bNumConfigurations=1,
            address=index + 2,
            bus=1,
            port_number=index + 1,
            port_numbers=(index + 1,),
            speed=2,  # full speed
        )

    def get_configuration_descriptor(self, dev: Dlpc900Emulator, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(config)
        return _CONFIG

    def get_interface_descriptor(self, dev: Dlpc900Emulator, intf: int, alt: int, config: int) -> SimpleNamespace:
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError((intf, alt, config))
        return _INTERFACE

    def get_endpoint_descriptor(
        self, dev: Dlpc900Emulator, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        self.get_interface_descriptor(dev, intf, alt, config)
        return _ENDPOINTS[ep]

    def open_device(self, dev: Dlpc900Emulator) -> _Handle:
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        pass

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        dev_handle.configuration = config_value

    def get_configuration(self, dev_handle: _Handle) -> int:
        return int(dev_handle.configuration)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        emulator = dev_handle.emulator
        if intf != 0:
            raise usb.core.USBError("Entity not found", _LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)
        if emulator.kernel_driver_attached:
            raise usb.core.USBError("Resource busy", _LIBUSB_ERROR_BUSY, errno.EBUSY)
        emulator.claimed = True

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.emulator.claimed = False

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return dev_handle.emulator.kernel_driver_attached

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.emulator.kernel_driver_attached = False

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        if dev_handle.emulator.claimed:
            raise usb.core.USBError("Resource busy", _LIBUSB_ERROR_BUSY, errno.EBUSY)
        dev_handle.emulator.kernel_driver_attached = True

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        pass

    def intr_write(self, dev_handle: _Handle, ep: int, intf: int, data: array, timeout: int) -> int:
        if ep != EP_OUT or not dev_handle.emulator.claimed:
            raise usb.core.USBError("Invalid parameter", -2, errno.EINVAL)
        return dev_handle.emulator.usb_write(memoryview(data).cast("B").tobytes())

    def intr_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array, timeout: int) -> int:
        if ep != EP_IN or not dev_handle.emulator.claimed:
            raise usb.core.USBError("Invalid parameter", -2, errno.EINVAL)
        report = dev_handle.emulator.usb_read()
        if report is None:
            raise usb.core.USBTimeoutError("Operation timed out", _LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT)
        target = memoryview(buff).cast("B")
        n = min(len(target), len(report))
        target[:n] = report[:n]
        return n

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array,
        timeout: int,
    ) -> int:
        buffer = memoryview(data).cast("B")
        if bmRequestType == 0x80 and bRequest == 0x06 and wValue >> 8 == 3:  # GET_DESCRIPTOR string
            index = wValue & 0xFF
            if index == 0:
                reply = bytes((4, 3)) + struct.pack("<H", 0x0409)
            else:
                text = {1: "Texas Instruments", 2: "DLPC900", 3: dev_handle.emulator.serial_number}.get(index)
                if text is None:
                    raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
                encoded = text.encode("utf-16-le")
                reply = bytes((2 + len(encoded), 3)) + encoded
            n = min(len(reply), len(buffer))
            buffer[:n] = reply[:n]
            return n
        if bmRequestType == 0x00 and bRequest == 0x09:  # SET_CONFIGURATION
            dev_handle.configuration = wValue
            return 0
        raise usb.core.USBError("Pipe error", -9, errno.EPIPE)
