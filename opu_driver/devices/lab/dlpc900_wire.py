"""The DLPC900's USB HID messages and the fields of the commands the driver uses (pure functions, no I/O).

Sources: TI's DLPC900 programmer's guide (DLPU018, revisions I and J); section numbers below are the guide's.

Messages (section 1.2.1): a message is a 4-byte header (flag byte, sequence byte, u16 little-endian length), then
the payload: the u16 little-endian command and its data; the length counts the payload (command + data). A message
travels in 64-byte HID reports; only the first carries the header, the rest continue the payload, the last is padded
with zeros. The guide writes each report with a leading report id 0: that byte is the HID API's (hidapi, Windows
HID) and is not sent on the bus, so on the interrupt endpoints pyusb sees 64 bytes that start with the flag byte
(as pycrafter6500 writes them over pyusb). Flag byte: bit 7 read, bit 6 reply wanted, bit 5 error (in a reply),
bits 2:0 destination 0. A reply echoes the flag byte (plus the error bit) and the sequence byte; its length counts
only the data that follows. The controller's command buffer is 512 bytes, shared by both directions.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

__all__ = [
    "VENDOR_ID",
    "PRODUCT_ID",
    "EP_OUT",
    "EP_IN",
    "REPORT_SIZE",
    "COMMAND_BUFFER_SIZE",
    "MAX_BMP_CHUNK",
    "FLAG_READ",
    "FLAG_REPLY",
    "FLAG_ERROR",
    "Command",
    "DisplayMode",
    "SequenceAction",
    "ERROR_CODES",
    "DMD_TYPES",
    "Reply",
    "build_reports",
    "parse_reply_header",
    "lut_entry",
    "lut_configuration",
    "bmp_load_init",
    "bmp_load_chunk",
    "trigger_out",
    "MAX_LUT_ENTRIES",
    "MIN_EXPOSURE_US",
    "MAX_TIME_US",
]

VENDOR_ID = 0x0451
PRODUCT_ID = 0xC900
EP_OUT = 0x01
EP_IN = 0x81
REPORT_SIZE = 64
HEADER_SIZE = 4
COMMAND_BUFFER_SIZE = 512
#: 0x1A2B data bytes per command: 512 - 4 (header) - 2 (command) - 2 (count), as the on-the-fly example sends.
MAX_BMP_CHUNK = COMMAND_BUFFER_SIZE - HEADER_SIZE - 2 - 2

FLAG_READ = 0x80
FLAG_REPLY = 0x40
FLAG_ERROR = 0x20

#: Pattern Display LUT entries (Pattern Display LUT Configuration 0x1A31: 1..400 for every DMD but the DLP5500).
MAX_LUT_ENTRIES = 400
#: Shortest 1-bit exposure (DLP6500 datasheet and guide's minimum exposure table; TRIG_IN_1 default delay 0x1A35).
MIN_EXPOSURE_US = 105
#: Exposure and dark time are 24-bit fields (0x1A34 bytes 2..4 and 6..8).
MAX_TIME_US = (1 << 24) - 1


class Command:
    """USB command numbers (guide's command tables; section of each in docs/rig-dlpc900.md)."""

    READ_ERROR_CODE = 0x0100  # 2.1.6
    READ_ERROR_DESCRIPTION = 0x0101  # 2.1.7
    GET_FIRMWARE_TYPE = 0x0206  # 2.1.5
    HARDWARE_STATUS = 0x1A0A  # 2.1.1
    SYSTEM_STATUS = 0x1A0B  # 2.1.2
    MAIN_STATUS = 0x1A0C  # 2.1.3
    DISPLAY_MODE = 0x1A1B  # Display Mode Selection
    TRIGGER_OUT_1 = 0x1A1D  # Trigger Out 1 control
    PATTERN_START_STOP = 0x1A24  # Pattern Display Start/Stop
    BMP_LOAD_INIT = 0x1A2A  # Initialize Pattern BMP Load (primary controller)
    BMP_LOAD = 0x1A2B  # Pattern BMP Load (primary controller)
    LUT_CONFIGURATION = 0x1A31  # Pattern Display LUT Configuration
    LUT_DEFINITION = 0x1A34  # Pattern Display LUT Definition


class DisplayMode:
    """0x1A1B values."""

    VIDEO = 0
    PRE_STORED = 1
    VIDEO_PATTERN = 2
    ON_THE_FLY = 3


class SequenceAction:
    """0x1A24 values."""

    STOP = 0
    PAUSE = 1
    START = 2


#: Read Error Code (0x0100) values, section 2.1.6.
ERROR_CODES = {
    0: "no error",
    1: "batch file checksum error",
    2: "device failure",
    3: "invalid command number",
    4: "incompatible controller and DMD combination",
    5: "command not allowed in current mode",
    6: "invalid command parameter",
    7: "item referred by the parameter is not present",
    8: "out of resource (RAM or flash)",
    9: "invalid BMP compression type",
    10: "pattern bit number out of range",
    11: "pattern BMP not present in flash",
    12: "pattern dark time is out of range",
    13: "signal delay parameter is out of range",
    14: "pattern exposure time is out of range",
    15: "pattern number is out of range",
    16: "invalid pattern definition",
    17: "pattern image memory address is out of range",
    255: "internal error",
}

#: Get Firmware Type (0x0206) first byte -> (DMD, width, height, dual controller).
DMD_TYPES = {
    1: ("DLP6500", 1920, 1080, False),
    2: ("DLP9000", 2560, 1600, True),
}


@dataclass(frozen=True)
class Reply:
    """A reply's header: the echoed flags and sequence byte, and the count of data bytes that follow."""

    flags: int
    sequence: int
    length: int

    @property
    def error(self) -> bool:
        return bool(self.flags & FLAG_ERROR)


def build_reports(flags: int, sequence: int, command: int, data: bytes = b"") -> list[bytes]:
    """One message as its 64-byte reports: header and payload in the first, payload continued in the rest."""
    payload = struct.pack("<H", command) + bytes(data)
    if HEADER_SIZE + len(payload) > COMMAND_BUFFER_SIZE:
        raise ValueError(f"message of {HEADER_SIZE + len(payload)} bytes exceeds the {COMMAND_BUFFER_SIZE}-byte buffer")
    message = bytes((flags & 0xFF, sequence & 0xFF)) + struct.pack("<H", len(payload)) + payload
    padded = message + bytes(-len(message) % REPORT_SIZE)
    return [padded[i : i + REPORT_SIZE] for i in range(0, len(padded), REPORT_SIZE)]


def parse_reply_header(report: bytes) -> Reply:
    """The header of a reply's first report."""
    if len(report) < HEADER_SIZE:
        raise ValueError(f"reply report of {len(report)} bytes is shorter than the header")
    (length,) = struct.unpack_from("<H", report, 2)
    return Reply(report[0], report[1], length)


def _u24(value: int) -> bytes:
    return struct.pack("<I", value)[:3]


def lut_entry(
    index: int,
    exposure_us: int,
    dark_us: int,
    image_index: int,
    bit_position: int,
    *,
    clear_after_exposure: bool = True,
    bit_depth: int = 1,
    led_mask: int = 0b111,
    wait_for_trigger_in: bool = False,
    disable_trigger_out_2: bool = False,
) -> bytes:
    """The 12 data bytes of Pattern Display LUT Definition (0x1A34).

    Bytes 0..1 pattern index; 2..4 exposure (us); 5: bit 0 clear after exposure, bits 3:1 bit depth - 1, bits 6:4
    LEDs (red 1, green 2, blue 4), bit 7 wait for TRIG_IN_1; 6..8 dark time (us); 9: bit 0 disables TRIG_OUT_2 for
    this pattern; 10..11: bits 10:0 image index, bits 15:11 bit position in the image.
    """
    if not 0 <= index < 1 << 16:
        raise ValueError(f"pattern index {index} out of range")
    if not 0 <= exposure_us <= MAX_TIME_US or not 0 <= dark_us <= MAX_TIME_US:
        raise ValueError("exposure and dark time are 24-bit microsecond counts")
    if not 1 <= bit_depth <= 8 or not 0 <= led_mask <= 7:
        raise ValueError("bit depth 1..8, LED mask 0..7")
    if not 0 <= image_index < 1 << 11 or not 0 <= bit_position < 24:
        raise ValueError(f"image index {image_index} (11 bits) or bit position {bit_position} (0..23) out of range")
    options = int(clear_after_exposure) | (bit_depth - 1) << 1 | led_mask << 4 | int(wait_for_trigger_in) << 7
    return (
        struct.pack("<H", index)
        + _u24(exposure_us)
        + bytes((options,))
        + _u24(dark_us)
        + bytes((int(disable_trigger_out_2),))
        + struct.pack("<H", image_index | bit_position << 11)
    )


def lut_configuration(n_entries: int, n_patterns: int) -> bytes:
    """Pattern Display LUT Configuration (0x1A31): u16 entries (bits 10:0), u32 patterns to show (0 = forever;
    equal to the entries: show the sequence once)."""
    if not 1 <= n_entries <= MAX_LUT_ENTRIES or not 0 <= n_patterns < 1 << 32:
        raise ValueError(f"LUT entries 1..{MAX_LUT_ENTRIES}, got {n_entries}")
    return struct.pack("<HI", n_entries, n_patterns)


def bmp_load_init(image_index: int, size: int) -> bytes:
    """Initialize Pattern BMP Load (0x1A2A): u16 image index, u32 bytes to follow (header included)."""
    return struct.pack("<HI", image_index, size)


def bmp_load_chunk(chunk: bytes) -> bytes:
    """Pattern BMP Load (0x1A2B): u16 count (bits 9:0) then at most 504 bytes of the image."""
    if not 1 <= len(chunk) <= MAX_BMP_CHUNK:
        raise ValueError(f"a 0x1A2B chunk holds 1..{MAX_BMP_CHUNK} bytes, got {len(chunk)}")
    return struct.pack("<H", len(chunk)) + bytes(chunk)


def trigger_out(invert: bool, rising_delay_us: int, falling_delay_us: int) -> bytes:
    """Trigger Out 1 (0x1A1D): u8 invert (bit 0), i16 rising-edge delay, i16 falling-edge delay (-20..20000 us)."""
    for delay in (rising_delay_us, falling_delay_us):
        if not -20 <= delay <= 20000:
            raise ValueError(f"trigger delays are -20..20000 us, got {delay}")
    return struct.pack("<Bhh", int(invert), rising_delay_us, falling_delay_us)
