"""The firmware's own codec of the wire protocol (docs/protocol.md, version 1).

This module is written from the document alone and shares no code with ``opu_driver.protocol``: the two
codecs are checked against the same golden byte vectors, so a misreading of the spec in one of them cannot
hide behind the same misreading in the other.

It holds what the firmware needs on the USB side:

- :class:`PacketStream`, the incremental receiver of section 1.4 (junk skipped and counted, header CRC,
  resynchronisation by one byte, payload CRC faults reported, independent of chunking, bounded buffer);
- :func:`decode_out_packet`, which turns a received envelope into a LAYOUT, RAW_FRAME or FEATURE_FRAME
  (or the error code the firmware latches for it);
- the CAMERA_FRAME encoder (one frame, or a batch of frames with the same ROI and format, vectorised);
- the five pixel formats of section 1.5, packed and unpacked with numpy.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import IntEnum

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAGIC",
    "HEADER_SIZE",
    "CRC_SIZE",
    "MAX_PAYLOAD",
    "MAX_PACKET",
    "BLANK_FRAME_ID",
    "CAMERA_META_SIZE",
    "MAX_LAYOUT_FEATURES",
    "PacketType",
    "PixelFormat",
    "ErrorCode",
    "Envelope",
    "StreamFault",
    "LayoutPacket",
    "RawFramePacket",
    "FeatureFramePacket",
    "CameraFrameHeader",
    "PacketStream",
    "crc32",
    "encode_envelope",
    "decode_out_packet",
    "decode_camera_frame",
    "encode_camera_frame",
    "encode_camera_frames",
    "pixel_bits",
    "pixel_payload_size",
    "pack_pixels",
    "unpack_pixels",
]

MAGIC = b"OPU1"
HEADER_SIZE = 16
CRC_SIZE = 4
MAX_PAYLOAD = 16 * 2**20
MAX_PACKET = HEADER_SIZE + MAX_PAYLOAD + CRC_SIZE
BLANK_FRAME_ID = 0xFFFFFFFF
CAMERA_META_SIZE = 32
MAX_LAYOUT_FEATURES = 1 << 20

_HEADER = struct.Struct("<4sBBHII")  # magic, type, flags, reserved, payload length, header CRC
_HEAD_FIELDS = struct.Struct("<BBHI")  # type, flags, reserved, length (bytes 4..11)
_U32 = struct.Struct("<I")
_FRAME_ID_PAIR = struct.Struct("<II")
_CAMERA_META = struct.Struct("<IIQIHHHHBBH")


class PacketType(IntEnum):
    """Packet types of section 1.3."""

    LAYOUT = 0x01
    RAW_FRAME = 0x02
    FEATURE_FRAME = 0x03
    CAMERA_FRAME = 0x10


class PixelFormat(IntEnum):
    """Pixel format codes of section 1.5."""

    MONO8 = 1
    MONO10 = 2
    MONO12 = 3
    MONO10P = 4
    MONO12P = 5


class ErrorCode(IntEnum):
    """Device error codes latched in LAST_ERROR (section 1.7)."""

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


_BITS = {
    PixelFormat.MONO8: 8,
    PixelFormat.MONO10: 10,
    PixelFormat.MONO12: 12,
    PixelFormat.MONO10P: 10,
    PixelFormat.MONO12P: 12,
}
# Packed formats are handled in groups of pixels that fill whole bytes: 4 x 10 bits = 5 bytes, 2 x 12 = 3.
_PACK_GROUP = {PixelFormat.MONO10P: (4, 5), PixelFormat.MONO12P: (2, 3)}


def crc32(data: bytes | bytearray | memoryview) -> int:
    """CRC-32/ISO-HDLC (zlib's), as every CRC of the protocol."""
    return zlib.crc32(data) & 0xFFFFFFFF


# -- envelopes and the stream receiver ------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A packet whose header and payload CRCs were both right; the payload is not yet decoded."""

    packet_type: int
    payload: bytes
    flags: int = 0


@dataclass(frozen=True)
class StreamFault:
    """A packet refused by the receiver, with the error code the firmware latches for it."""

    code: ErrorCode
    packet_type: int
    detail: str


def encode_envelope(packet_type: int, payload: bytes | bytearray | memoryview, flags: int = 0) -> bytes:
    """Wrap a payload in the 16-byte header and the 4-byte payload CRC of section 1.3."""
    length = len(payload)
    if length > MAX_PAYLOAD:
        raise ValueError(f"payload of {length} bytes exceeds the protocol limit of {MAX_PAYLOAD}")
    head = MAGIC + _HEAD_FIELDS.pack(packet_type, flags, 0, length)
    return b"".join((head, _U32.pack(crc32(head)), bytes(payload), _U32.pack(crc32(payload))))


class PacketStream:
    """Incremental receiver of a packet byte stream (section 1.4).

    ``feed`` takes bytes in any chunking and returns the envelopes completed so far, plus a
    :class:`StreamFault` (``E_CRC``) for every packet whose payload CRC is wrong. The result does not
    depend on the chunking. At most one maximal packet (header + ``max_payload`` + CRC) is ever buffered:
    a large write is consumed through the buffer in slices of that size.

    Counters: ``junk_bytes`` (bytes discarded outside packets, including the one byte dropped per bad
    header), ``header_errors``, ``crc_errors``, ``packets`` (good envelopes).
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must be in 0..{MAX_PAYLOAD}")
        self.max_payload = max_payload
        self._capacity = HEADER_SIZE + max_payload + CRC_SIZE
        self._buffer = bytearray()
        self.junk_bytes = 0
        self.header_errors = 0
        self.crc_errors = 0
        self.packets = 0

    @property
    def buffered(self) -> int:
        """Bytes held while waiting for the rest of a packet."""
        return len(self._buffer)

    def reset(self) -> None:
        """Forget any partial packet (device reset); the counters are kept."""
        self._buffer = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> list[Envelope | StreamFault]:
        """Consume ``data`` and return what it completed, in stream order."""
        out: list[Envelope | StreamFault] = []
        view = memoryview(data).cast("B")
        offset, total = 0, len(view)
        while offset < total:
            take = min(total - offset, self._capacity - len(self._buffer))
            self._buffer += view[offset : offset + take]
            offset += take
            used = self._parse(out)
            if used:
                del self._buffer[:used]
            elif take == 0:  # cannot happen: a full buffer always holds a packet or droppable bytes
                raise RuntimeError("packet receiver made no progress")
        return out

    def _parse(self, out: list[Envelope | StreamFault]) -> int:
        """Parse the buffer from its start; return the number of bytes consumed."""
        buf = self._buffer
        end = len(buf)
        pos = 0
        with memoryview(buf) as view:
            while True:
                start = buf.find(MAGIC, pos)
                if start < 0:
                    keep = _magic_prefix_length(buf, pos, end)
                    self.junk_bytes += end - keep - pos
                    return end - keep
                self.junk_bytes += start - pos
                pos = start
                if end - pos < HEADER_SIZE:
                    return pos
                ptype, flags, _reserved, length = _HEAD_FIELDS.unpack_from(buf, pos + 4)
                (header_crc,) = _U32.unpack_from(buf, pos + 12)
                if length > self.max_payload or crc32(view[pos : pos + 12]) != header_crc:
                    # Drop only the first magic byte: a real packet may start inside these 16 bytes.
                    self.header_errors += 1
                    self.junk_bytes += 1
                    pos += 1
                    continue
                packet_end = pos + HEADER_SIZE + length + CRC_SIZE
                if end < packet_end:
                    return pos
                payload = view[pos + HEADER_SIZE : pos + HEADER_SIZE + length]
                (payload_crc,) = _U32.unpack_from(buf, pos + HEADER_SIZE + length)
                if crc32(payload) != payload_crc:
                    self.crc_errors += 1
                    out.append(StreamFault(ErrorCode.E_CRC, ptype, f"payload CRC mismatch ({length} bytes)"))
                else:
                    self.packets += 1
                    out.append(Envelope(ptype, bytes(payload), flags))
                pos = packet_end


def _magic_prefix_length(buf: bytearray, pos: int, end: int) -> int:
    """Length of the longest tail of buf[pos:end] that could be the start of a magic (0..3)."""
    for keep in range(min(len(MAGIC) - 1, end - pos), 0, -1):
        if buf[end - keep : end] == MAGIC[:keep]:
            return keep
    return 0


# -- host -> device packets --------------------------------------------------------------------------


@dataclass(frozen=True)
class LayoutPacket:
    """LAYOUT: the feature -> mirror table. ``runs`` is (M, 3) uint32: feature, first_mirror, n_mirrors."""

    n_features: int
    runs: npt.NDArray[np.uint32]


@dataclass(frozen=True)
class RawFramePacket:
    """RAW_FRAME. ``payload`` is the whole payload; the packed mirror bits start at byte 8."""

    dmd_frame_id: int
    payload: bytes

    @property
    def mirror_bits(self) -> memoryview:
        return memoryview(self.payload)[8:]


@dataclass(frozen=True)
class FeatureFramePacket:
    """FEATURE_FRAME. ``payload`` is the whole payload; the packed feature bits start at byte 8."""

    dmd_frame_id: int
    n_features: int
    payload: bytes

    @property
    def feature_bits(self) -> memoryview:
        return memoryview(self.payload)[8:]


OutPacket = LayoutPacket | RawFramePacket | FeatureFramePacket


def decode_out_packet(envelope: Envelope, mirror_bytes: int) -> OutPacket | StreamFault:
    """Decode a host -> device envelope; a misfit gives the StreamFault (E_TYPE, E_LENGTH) to latch.

    ``mirror_bytes`` is ceil(W * H / 8) of this device's DMD: a RAW_FRAME of another size is E_LENGTH.
    The LAYOUT's content (ranges, overlaps) is checked by the device, not here.
    """
    ptype, payload = envelope.packet_type, envelope.payload
    size = len(payload)
    if ptype == PacketType.LAYOUT:
        if size < 8:
            return StreamFault(ErrorCode.E_LENGTH, ptype, f"LAYOUT payload of {size} bytes is shorter than 8")
        n_features, n_runs = _FRAME_ID_PAIR.unpack_from(payload, 0)
        if size != 8 + 12 * n_runs:
            return StreamFault(
                ErrorCode.E_LENGTH, ptype, f"LAYOUT with {n_runs} runs needs {8 + 12 * n_runs} bytes, got {size}"
            )
        runs = np.frombuffer(payload, dtype="<u4", count=3 * n_runs, offset=8).reshape(n_runs, 3)
        return LayoutPacket(n_features, runs.astype(np.uint32))
    if ptype == PacketType.RAW_FRAME:
        if size != 8 + mirror_bytes:
            return StreamFault(ErrorCode.E_LENGTH, ptype, f"RAW_FRAME needs {8 + mirror_bytes} bytes, got {size}")
        return RawFramePacket(_U32.unpack_from(payload, 0)[0], payload)
    if ptype == PacketType.FEATURE_FRAME:
        if size < 8:
            return StreamFault(ErrorCode.E_LENGTH, ptype, f"FEATURE_FRAME payload of {size} bytes is shorter than 8")
        frame_id, n_features = _FRAME_ID_PAIR.unpack_from(payload, 0)
        needed = 8 + (n_features + 7) // 8
        if size != needed:
            return StreamFault(
                ErrorCode.E_LENGTH, ptype, f"FEATURE_FRAME of {n_features} features needs {needed} bytes, got {size}"
            )
        return FeatureFramePacket(frame_id, n_features, payload)
    return StreamFault(ErrorCode.E_TYPE, ptype, f"packet type 0x{ptype:02X} is not accepted on the OUT endpoint")


# -- device -> host camera frames --------------------------------------------------------------------


@dataclass(frozen=True)
class CameraFrameHeader:
    """The 32 metadata bytes of a CAMERA_FRAME payload."""

    camera_frame_id: int
    dmd_frame_id: int
    timestamp_us: int
    exposure_us: int
    roi_x: int
    roi_y: int
    roi_w: int
    roi_h: int
    pixel_format: int
    flags: int


FLAG_SATURATED = 0x01
FLAG_DARK = 0x02


def decode_camera_frame(payload: bytes | bytearray | memoryview) -> tuple[CameraFrameHeader, bytes]:
    """Split a CAMERA_FRAME payload into its metadata and pixel bytes, checking the pixel size.

    Raises ValueError when the payload does not fit (too short, unknown format, wrong pixel size).
    """
    if len(payload) < CAMERA_META_SIZE:
        raise ValueError(f"CAMERA_FRAME payload of {len(payload)} bytes is shorter than {CAMERA_META_SIZE}")
    fields = _CAMERA_META.unpack_from(payload, 0)
    header = CameraFrameHeader(*fields[:10])
    pixels = bytes(payload[CAMERA_META_SIZE:])
    expected = pixel_payload_size(header.pixel_format, header.roi_w * header.roi_h)
    if len(pixels) != expected:
        raise ValueError(f"CAMERA_FRAME pixels: {len(pixels)} bytes, format and ROI need {expected}")
    return header, pixels


def encode_camera_frame(header: CameraFrameHeader, pixels: bytes | bytearray | memoryview) -> bytes:
    """Encode one CAMERA_FRAME packet (envelope included)."""
    meta = _CAMERA_META.pack(
        header.camera_frame_id,
        header.dmd_frame_id,
        header.timestamp_us,
        header.exposure_us,
        header.roi_x,
        header.roi_y,
        header.roi_w,
        header.roi_h,
        header.pixel_format,
        header.flags,
        0,
    )
    return encode_envelope(PacketType.CAMERA_FRAME, meta + bytes(pixels))


_META_DTYPE = np.dtype(
    [
        ("camera_frame_id", "<u4"),
        ("dmd_frame_id", "<u4"),
        ("timestamp_us", "<u8"),
        ("exposure_us", "<u4"),
        ("roi_x", "<u2"),
        ("roi_y", "<u2"),
        ("roi_w", "<u2"),
        ("roi_h", "<u2"),
        ("pixel_format", "u1"),
        ("flags", "u1"),
        ("reserved", "<u2"),
    ]
)


def encode_camera_frames(
    camera_frame_ids: npt.ArrayLike,
    dmd_frame_ids: npt.ArrayLike,
    timestamps_us: npt.ArrayLike,
    flags: npt.ArrayLike,
    *,
    exposure_us: int,
    roi: tuple[int, int, int, int],
    pixel_format: int,
    pixels: npt.NDArray[np.uint8],
) -> bytes:
    """Encode n CAMERA_FRAME packets that share ROI, exposure and format into one buffer.

    ``pixels`` is (n, P) uint8, each row the encoded pixels of one frame. Headers and metadata are built with
    numpy; only the per-frame payload CRC is a Python loop (zlib on a memoryview, no copy).
    """
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    n, pixel_size = pixels.shape
    payload_size = CAMERA_META_SIZE + pixel_size
    if payload_size > MAX_PAYLOAD:
        raise ValueError(f"camera frame payload of {payload_size} bytes exceeds {MAX_PAYLOAD}")
    packet_size = HEADER_SIZE + payload_size + CRC_SIZE
    out = np.empty((n, packet_size), dtype=np.uint8)
    head = MAGIC + _HEAD_FIELDS.pack(PacketType.CAMERA_FRAME, 0, 0, payload_size)
    out[:, :12] = np.frombuffer(head, dtype=np.uint8)
    out[:, 12:16] = np.frombuffer(_U32.pack(crc32(head)), dtype=np.uint8)
    meta = np.zeros(n, dtype=_META_DTYPE)
    meta["camera_frame_id"] = camera_frame_ids
    meta["dmd_frame_id"] = dmd_frame_ids
    meta["timestamp_us"] = timestamps_us
    meta["exposure_us"] = exposure_us
    meta["roi_x"], meta["roi_y"], meta["roi_w"], meta["roi_h"] = roi
    meta["pixel_format"] = pixel_format
    meta["flags"] = flags
    out[:, HEADER_SIZE : HEADER_SIZE + CAMERA_META_SIZE] = meta.view(np.uint8).reshape(n, CAMERA_META_SIZE)
    out[:, HEADER_SIZE + CAMERA_META_SIZE : HEADER_SIZE + payload_size] = pixels
    crcs = np.empty(n, dtype="<u4")
    for i in range(n):
        crcs[i] = zlib.crc32(out[i, HEADER_SIZE : HEADER_SIZE + payload_size].data)  # a row's bytes, not a copy
    out[:, HEADER_SIZE + payload_size :] = crcs.view(np.uint8).reshape(n, CRC_SIZE)
    return out.tobytes()


# -- pixel formats ---------------------------------------------------------------------------------


def pixel_bits(pixel_format: int) -> int:
    """Significant bits per pixel of a format (8, 10 or 12); ValueError for an unknown code."""
    try:
        return _BITS[PixelFormat(pixel_format)]
    except ValueError:
        raise ValueError(f"unknown pixel format {pixel_format}") from None


def pixel_payload_size(pixel_format: int, n_pixels: int) -> int:
    """Bytes that ``n_pixels`` pixels take in a format (section 1.5 table)."""
    pixel_bits(pixel_format)  # validates the code
    fmt = PixelFormat(pixel_format)
    if fmt == PixelFormat.MONO8:
        return n_pixels
    if fmt in (PixelFormat.MONO10, PixelFormat.MONO12):
        return 2 * n_pixels
    return (_BITS[fmt] * n_pixels + 7) // 8


def pack_pixels(pixel_format: int, values: npt.ArrayLike) -> npt.NDArray[np.uint8]:
    """Encode pixel values (..., n) into bytes (..., pixel_payload_size(fmt, n)), one row per frame.

    Raises ValueError for values that do not fit the format's bits.
    """
    bits = pixel_bits(pixel_format)
    fmt = PixelFormat(pixel_format)
    values = np.asarray(values)
    if values.ndim == 0:
        raise ValueError("pixel values must be an array of at least one dimension")
    if values.size and (values.min() < 0 or values.max() > (1 << bits) - 1):
        raise ValueError(f"pixel values outside 0..{(1 << bits) - 1} for {fmt.name}")
    lead, n = values.shape[:-1], values.shape[-1]
    if fmt == PixelFormat.MONO8:
        return values.astype(np.uint8)
    if fmt in (PixelFormat.MONO10, PixelFormat.MONO12):
        return values.astype("<u2").view(np.uint8).reshape(*lead, 2 * n)
    group, group_bytes = _PACK_GROUP[fmt]
    n_groups = -(-n // group)
    padded = np.zeros((*lead, n_groups * group), dtype=np.uint64)
    padded[..., :n] = values
    grouped = padded.reshape(*lead, n_groups, group)
    # Pixel k of a group occupies bits k*b .. k*b+b-1 of a little-endian word, LSB first.
    word = np.zeros((*lead, n_groups), dtype=np.uint64)
    for k in range(group):
        word |= grouped[..., k] << np.uint64(k * bits)
    as_bytes = word.astype("<u8").view(np.uint8).reshape(*lead, n_groups, 8)[..., :group_bytes]
    flat = as_bytes.reshape(*lead, n_groups * group_bytes)
    return np.ascontiguousarray(flat[..., : pixel_payload_size(fmt, n)])


def unpack_pixels(
    pixel_format: int, data: bytes | bytearray | memoryview | npt.NDArray[np.uint8], n_pixels: int
) -> npt.NDArray[np.uint16]:
    """Decode the bytes of ``n_pixels`` pixels into uint16 values (data may be (..., nbytes) uint8).

    High bits that MONO10/MONO12 require to be 0 are returned as they are, so a test can see them.
    """
    fmt = PixelFormat(pixel_format)
    raw = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.astype(np.uint8)
    size = pixel_payload_size(fmt, n_pixels)
    if raw.shape[-1] != size:
        raise ValueError(f"{fmt.name}: {raw.shape[-1]} bytes for {n_pixels} pixels, expected {size}")
    lead = raw.shape[:-1]
    if fmt == PixelFormat.MONO8:
        return raw.astype(np.uint16)
    if fmt in (PixelFormat.MONO10, PixelFormat.MONO12):
        return np.ascontiguousarray(raw).view("<u2").astype(np.uint16).reshape(*lead, n_pixels)
    bits = _BITS[fmt]
    group, group_bytes = _PACK_GROUP[fmt]
    n_groups = -(-n_pixels // group)
    padded = np.zeros((*lead, n_groups, 8), dtype=np.uint8)
    tail = np.zeros((*lead, n_groups * group_bytes), dtype=np.uint8)
    tail[..., :size] = raw
    padded[..., :group_bytes] = tail.reshape(*lead, n_groups, group_bytes)
    word = padded.view("<u8")[..., 0].astype(np.uint64)
    mask = np.uint64((1 << bits) - 1)
    out = np.empty((*lead, n_groups, group), dtype=np.uint16)
    for k in range(group):
        out[..., k] = (word >> np.uint64(k * bits)) & mask
    return out.reshape(*lead, n_groups * group)[..., :n_pixels]
