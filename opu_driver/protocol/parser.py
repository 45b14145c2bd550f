"""Incremental receiver of a packet stream (protocol section 1.4).

Bytes arrive in arbitrary chunks (a bulk transfer may hold several packets or part of one). The parser keeps
one buffer and repeats: find the magic (bytes before it are junk, counted), wait for the 16-byte header, drop
one byte and resynchronise when the header CRC or the length is wrong, wait for the payload and its CRC,
then decode. A corrupt or undecodable packet becomes a :class:`PacketFault` in the output, in stream order,
so the caller decides what a fault means (the driver raises a protocol error). Results never depend on how
the bytes were chunked.
"""

from __future__ import annotations

import logging
import struct
import zlib
from dataclasses import dataclass

from opu_driver.errors import CorruptPacketError, ProtocolError
from opu_driver.protocol.constants import HEADER_SIZE, MAGIC, MAX_PAYLOAD, TRAILER_SIZE, PacketType
from opu_driver.protocol.packets import Packet, decode_payload

__all__ = ["PacketFault", "PacketParser", "ParsedItem"]

logger = logging.getLogger(__name__)

# type u8, flags u8 (ignored), reserved u16 (ignored), length u32, header CRC u32, after the 4-byte magic
_HEADER_TAIL = struct.Struct("<BBHII")
_U32 = struct.Struct("<I")
_CRC_SPAN = 12  # header bytes covered by the header CRC
_MAGIC_PREFIXES = tuple(MAGIC[:k] for k in range(len(MAGIC) - 1, 0, -1))  # b"OPU", b"OP", b"O"
_KNOWN_TYPES = {int(t): t for t in PacketType}


@dataclass(frozen=True)
class PacketFault:
    """A packet whose envelope was found but whose content cannot be used.

    Attributes:
        kind: "crc" (payload CRC wrong), "length" (payload does not fit its type) or "type" (unknown type,
            or a type not accepted on this stream).
        packet_type: the type byte of the header (a PacketType when known).
        detail: what exactly was wrong, for logs and error messages.
    """

    kind: str
    packet_type: int
    detail: str

    def to_error(self) -> CorruptPacketError:
        """The CorruptPacketError that reports this fault (the driver raises it; the firmware latches a code)."""
        return CorruptPacketError(f"corrupt packet ({self.kind}) of type {int(self.packet_type):#04x}: {self.detail}")


ParsedItem = Packet | PacketFault


class PacketParser:
    """Turn a byte stream into packets and faults, incrementally.

    Args:
        max_payload: largest payload length accepted in a header; a longer one is taken for junk (resync). It
            also bounds the buffer: at most one packet (header + max_payload + CRC) is ever held.
        accept: packet types expected on this stream (e.g. only CAMERA_FRAME on the IN endpoint); others give
            a "type" fault. None accepts every known type.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD, accept: frozenset[PacketType] | None = None) -> None:
        if not 0 <= max_payload <= MAX_PAYLOAD:
            raise ValueError(f"max_payload must lie in 0..{MAX_PAYLOAD}, got {max_payload}")
        self.max_payload = max_payload
        self.accept = None if accept is None else frozenset(int(t) for t in accept)
        self._buf = bytearray()
        self._pos = 0  # read offset into _buf; bytes before it are consumed
        self.junk_bytes = 0
        self.faults = 0
        self.packets = 0

    @property
    def buffered(self) -> int:
        """Bytes held, waiting for the rest of a packet (or for the rest of a possible magic)."""
        return len(self._buf) - self._pos

    def clear(self) -> None:
        """Forget buffered bytes (after a device reset or a stream restart); counters are kept."""
        self._buf.clear()
        self._pos = 0

    def feed(self, data: bytes | bytearray | memoryview) -> list[ParsedItem]:
        """Add received bytes; return every packet and fault completed by them, in stream order."""
        if data:
            self._buf += data
        items: list[ParsedItem] = []
        self._parse(items)
        # Drop consumed bytes once per call; deleting from the front of a bytearray is cheap in CPython.
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        return items

    def _parse(self, items: list[ParsedItem]) -> None:
        buf = self._buf
        end = len(buf)
        pos = self._pos
        max_payload = self.max_payload
        accept = self.accept
        with memoryview(buf) as view:
            while True:
                start = buf.find(MAGIC, pos)
                if start < 0:
                    # Keep a tail that may be the beginning of a magic; everything before it is junk.
                    keep = 0
                    for prefix in _MAGIC_PREFIXES:
                        if buf.endswith(prefix) and end - len(prefix) >= pos:
                            keep = len(prefix)
                            break
                    self.junk_bytes += end - keep - pos
                    pos = end - keep
                    break
                if start > pos:
                    self.junk_bytes += start - pos
                    pos = start
                if end - pos < HEADER_SIZE:
                    break
                ptype, _flags, _reserved, length, header_crc = _HEADER_TAIL.unpack_from(buf, pos + 4)
                if length > max_payload or zlib.crc32(view[pos : pos + _CRC_SPAN]) != header_crc:
                    # Junk that happens to contain the magic: skip its first byte and look again.
                    self.junk_bytes += 1
                    pos += 1
                    continue
                payload_start = pos + HEADER_SIZE
                payload_end = payload_start + length
                if end < payload_end + TRAILER_SIZE:
                    break
                payload = view[payload_start:payload_end]
                (payload_crc,) = _U32.unpack_from(buf, payload_end)
                pos = payload_end + TRAILER_SIZE
                known = _KNOWN_TYPES.get(ptype, ptype)
                if zlib.crc32(payload) != payload_crc:
                    items.append(self._fault("crc", known, f"payload CRC mismatch over {length} bytes"))
                elif ptype not in _KNOWN_TYPES:
                    items.append(self._fault("type", known, "unknown packet type"))
                elif accept is not None and ptype not in accept:
                    items.append(self._fault("type", known, f"{known.name} is not expected on this stream"))
                else:
                    try:
                        items.append(decode_payload(known, payload))
                        self.packets += 1
                    except ProtocolError as exc:
                        items.append(self._fault("length", known, str(exc)))
                payload.release()
        self._pos = pos

    def _fault(self, kind: str, ptype: int, detail: str) -> PacketFault:
        self.faults += 1
        logger.debug("packet fault %s type %#04x: %s", kind, int(ptype), detail)
        return PacketFault(kind, ptype, detail)
