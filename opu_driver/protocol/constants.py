"""Numbers and names of wire protocol v1 (docs/protocol.md), in one place.

Everything here is a literal reading of the document: magic, sizes, USB identifiers, registers, status bits,
device error codes, frame flags and sequence commands. Other modules import these instead of repeating numbers.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "TRAILER_SIZE",
    "MAX_PAYLOAD",
    "MAX_FEATURES",
    "BLANK_FRAME_ID",
    "MAX_FRAME_ID",
    "USB_VENDOR_ID",
    "USB_PRODUCT_ID",
    "USB_INTERFACE",
    "USB_INTERFACE_CLASS",
    "USB_INTERFACE_SUBCLASS",
    "EP_DMD_OUT",
    "EP_CAMERA_IN",
    "REQ_READ_REG",
    "REQ_WRITE_REG",
    "BM_REQUEST_READ_REG",
    "BM_REQUEST_WRITE_REG",
    "REGISTER_SIZE",
    "PROTOCOL_VERSION",
    "CONTROL_TIMEOUT_S",
    "SERIAL_TIMEOUT_S",
    "SERIAL_MAX_COMMAND_BYTES",
    "bulk_write_timeout_s",
    "PacketType",
    "Register",
    "REGISTER_ACCESS",
    "Status",
    "DeviceErrorCode",
    "FrameFlags",
    "SeqControl",
]

#: Packet magic, ASCII "OPU1"; its last character is the protocol version.
MAGIC = b"OPU1"
#: Bytes of the packet header: magic, type, flags, reserved, payload length, header CRC.
HEADER_SIZE = 16
#: Bytes after the payload: its CRC-32.
TRAILER_SIZE = 4
#: Largest payload length a header may announce (16 MiB).
MAX_PAYLOAD = 16 * 2**20
#: Largest n_features of a LAYOUT table (and so of a FEATURE_FRAME).
MAX_FEATURES = 1_048_576
#: dmd_frame_id of a camera frame exposed while the DMD showed no frame.
BLANK_FRAME_ID = 0xFFFFFFFF
#: Largest id a host may give its own frames (BLANK_FRAME_ID is reserved for "none").
MAX_FRAME_ID = BLANK_FRAME_ID - 1

USB_VENDOR_ID = 0x1209
USB_PRODUCT_ID = 0x4F50
#: bInterfaceNumber of the one interface of configuration 1.
USB_INTERFACE = 0
USB_INTERFACE_CLASS = 0xFF
USB_INTERFACE_SUBCLASS = 0x4F
EP_DMD_OUT = 0x01
EP_CAMERA_IN = 0x81

REQ_READ_REG = 0x01
REQ_WRITE_REG = 0x02
#: bmRequestType of READ_REG: device-to-host, vendor, device.
BM_REQUEST_READ_REG = 0xC0
#: bmRequestType of WRITE_REG: host-to-device, vendor, device.
BM_REQUEST_WRITE_REG = 0x40
#: wLength of every register request: one u32.
REGISTER_SIZE = 4

PROTOCOL_VERSION = 1

#: Default host timeouts (section 3).
CONTROL_TIMEOUT_S = 1.0
SERIAL_TIMEOUT_S = 1.0
#: Longest controller command line the device accepts, newline excluded (longer is refused with -223).
SERIAL_MAX_COMMAND_BYTES = 256


def bulk_write_timeout_s(n_bytes: int) -> float:
    """Default timeout of a bulk write of ``n_bytes`` (section 3: 1 s plus 1 s per 10 MB)."""
    return 1.0 + n_bytes / 10e6


class PacketType(IntEnum):
    """Packet type byte of the header (section 1.3)."""

    LAYOUT = 0x01
    RAW_FRAME = 0x02
    FEATURE_FRAME = 0x03
    CAMERA_FRAME = 0x10


class Register(IntEnum):
    """Register addresses (section 1.2)."""

    PROTOCOL_VERSION = 0x0000
    FIRMWARE_VERSION = 0x0001
    STATUS = 0x0002
    LAST_ERROR = 0x0003
    DEVICE_TIME_LO = 0x0004
    DEVICE_TIME_HI = 0x0005
    DMD_WIDTH = 0x0010
    DMD_HEIGHT = 0x0011
    SEQ_CAPACITY = 0x0012
    SEQ_QUEUED = 0x0013
    SEQ_CONTROL = 0x0014
    SOFT_TRIGGER = 0x0015
    DMD_FRAME_COUNT = 0x0016
    LAYOUT_FEATURES = 0x0017
    CAM_WIDTH = 0x0020
    CAM_HEIGHT = 0x0021
    ROI_X = 0x0022
    ROI_Y = 0x0023
    ROI_W = 0x0024
    ROI_H = 0x0025
    PIXEL_FORMAT = 0x0026
    PIXEL_FORMATS = 0x0027
    EXPOSURE_US = 0x0028
    FRAME_TIME_US = 0x0029
    GAIN_MILLI = 0x002A
    CAM_FRAME_COUNT = 0x002B
    CAM_DROPPED = 0x002C
    READOUT_US = 0x002D
    IN_FIFO_BYTES = 0x002E


_W_ONLY = frozenset({Register.SEQ_CONTROL, Register.SOFT_TRIGGER})
_RW = frozenset(
    {
        Register.ROI_X,
        Register.ROI_Y,
        Register.ROI_W,
        Register.ROI_H,
        Register.PIXEL_FORMAT,
        Register.EXPOSURE_US,
        Register.FRAME_TIME_US,
        Register.GAIN_MILLI,
    }
)
#: Access of every register as the document writes it: "R", "W" or "RW".
REGISTER_ACCESS: dict[Register, str] = {
    reg: ("W" if reg in _W_ONLY else "RW" if reg in _RW else "R") for reg in Register
}


class Status(IntFlag):
    """Bits of the STATUS register (section 1.2)."""

    SEQ_RUNNING = 1 << 0
    LASER_ON = 1 << 1
    SHUTTER_OPEN = 1 << 2
    INTERLOCK_OK = 1 << 3
    LAYOUT_LOADED = 1 << 4
    ERROR_PENDING = 1 << 5
    FIFO_OVERFLOWED = 1 << 6


_ERROR_MEANINGS = {
    0: "no error",
    1: "a packet's payload CRC was wrong",
    2: "unknown packet type",
    3: "payload length does not fit the packet type",
    4: "feature frame without a layout table",
    5: "invalid layout table",
    6: "feature frame size differs from the layout table",
    7: "sequence memory full",
    8: "not allowed while a sequence runs",
    9: "unknown register address",
    10: "write to a read-only register",
    11: "register value out of range",
    12: "START with no frame queued",
    13: "SOFT_TRIGGER outside trigger mode SOFT, or with an empty queue",
}


class DeviceErrorCode(IntEnum):
    """Codes the device latches in LAST_ERROR (section 1.7)."""

    E_NONE = 0
    E_CRC = 1
    E_TYPE = 2
    E_LENGTH = 3
    E_NO_LAYOUT = 4
    E_LAYOUT = 5
    E_FEATURES = 6
    E_SEQ_FULL = 7
    E_BUSY = 8
    E_ADDRESS = 9
    E_READ_ONLY = 10
    E_VALUE = 11
    E_EMPTY = 12
    E_TRIGGER = 13

    @property
    def meaning(self) -> str:
        """The meaning of this code, as the document words it."""
        return _ERROR_MEANINGS[int(self)]

    @staticmethod
    def describe(code: int) -> str:
        """Say in words what a LAST_ERROR value means; unknown codes are named as such, never an exception.

        Example: ``DeviceErrorCode.describe(7) == "E_SEQ_FULL: sequence memory full"``.
        """
        try:
            member = DeviceErrorCode(int(code))
        except ValueError:
            return f"unknown device error code {int(code)}"
        return f"{member.name}: {member.meaning}"


class FrameFlags(IntFlag):
    """Frame flags byte of a CAMERA_FRAME (section 1.3)."""

    SATURATED = 1 << 0
    DARK = 1 << 1


class SeqControl(IntEnum):
    """Values written to SEQ_CONTROL (section 1.2)."""

    START = 1
    ABORT = 2
    CLEAR_LAYOUT = 3
