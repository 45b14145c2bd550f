"""Fuzzing of the three parsers of the stack: generators, mutations, property checks and the ``opu fuzz`` run.

The parsers are
- **driver**: the incremental packet parser (``opu_driver.protocol.PacketParser``, payload decoders, pixel
  decoding) and the serial reply codec (``LineReader``, ``parse_reply``, ``parse_error_entry``);
- **firmware**: the emulator's own receiver (``firmware_sim.wire.PacketStream``, ``decode_out_packet``), its
  serial command line (``ControllerLine``) and the emulated device fed through its OUT endpoint and serial line;
- **service**: the message format of the OPU service (``dfa_client.wire``: ``decode``, ``read_message``).

Everything here is deterministic given its inputs: the generators draw from a ``random.Random``, the mutations
take their positions as arguments, so the hypothesis tests (``tests/tools/test_fuzz_parsers.py``, which shrink) and the
long run of :func:`run_fuzz` (which does not) drive the same code. A check raises :class:`FuzzFailure` when a
property breaks (results that depend on chunking, a buffer above its bound, a valid packet lost where the
protocol promises resynchronisation, a device that no longer answers right); the exceptions a parser documents
are counted by the case, and anything else escapes and is an undocumented exception.
"""

from __future__ import annotations

import logging
import math
import random
import socket
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "PARSERS",
    "FuzzFailure",
    "FuzzReport",
    "DeviceHarness",
    "flip_bit",
    "insert_bytes",
    "delete_bytes",
    "truncate",
    "split_at",
    "set_packet_length",
    "set_message_lengths",
    "mutate",
    "random_bytes",
    "make_camera_packet",
    "make_out_packet",
    "make_junk",
    "make_packet_stream",
    "make_reply_stream",
    "make_command_stream",
    "make_service_message",
    "check_packet_stream",
    "check_resync",
    "check_reply_lines",
    "check_controller",
    "check_service_bytes",
    "run_case",
    "run_fuzz",
    "format_report",
]

_log = logging.getLogger(__name__)

PARSERS = ("driver", "firmware", "service")

#: Geometry of the emulated device of the end-to-end checks (small, so that one frame costs little).
DEVICE_GEOMETRY = dict(dmd_width=96, dmd_height=64, camera_width=64, camera_height=48, cell_mirrors=4)
#: Length fields that mutations set: above every limit, at the 32/64-bit ends, and moderate ones that a
#: receiver must wait for (kept small so that a stream can be completed by padding in bounded work).
MODERATE_LENGTH_MAX = 65536
_MAGIC = b"OPU1"
_HEAD = struct.Struct("<4sBBHI")
_U32 = struct.Struct("<I")


class FuzzFailure(AssertionError):
    """A parser property was violated: not one of the exceptions a parser documents, always a bug."""


# ------------------------------------------------------------------------------------------------ mutations
def flip_bit(data: bytes, bit: int) -> bytes:
    """``data`` with bit ``bit % (8 len)`` inverted (unchanged when empty)."""
    if not data:
        return data
    bit %= 8 * len(data)
    out = bytearray(data)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


def insert_bytes(data: bytes, pos: int, extra: bytes) -> bytes:
    """``extra`` inserted at ``pos % (len + 1)``."""
    pos %= len(data) + 1
    return data[:pos] + extra + data[pos:]


def delete_bytes(data: bytes, pos: int, n_bytes: int) -> bytes:
    """``n_bytes`` removed from ``pos % (len + 1)`` on."""
    pos %= len(data) + 1
    return data[:pos] + data[pos + max(n_bytes, 0) :]


def truncate(data: bytes, n_bytes: int) -> bytes:
    """The first ``n_bytes % (len + 1)`` bytes."""
    return data[: n_bytes % (len(data) + 1)]


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo len + 1, sorted): the chunks a transport may deliver."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False)] or [b""]


def set_packet_length(packet: bytes, length: int) -> bytes:
    """A device packet (``OPU1`` envelope) whose header announces ``length`` payload bytes, header CRC fixed.

    The header CRC is recomputed so that a receiver trusts the header and must decide from the length alone.
    """
    if len(packet) < 16 or packet[:4] != _MAGIC:
        return packet
    head = packet[:8] + _U32.pack(length & 0xFFFFFFFF)
    return head + _U32.pack(zlib.crc32(head) & 0xFFFFFFFF) + packet[16:]


def set_message_lengths(message: bytes, header_bytes: int | None = None, payload_bytes: int | None = None) -> bytes:
    """A service message whose prefix announces other header and/or payload lengths (body unchanged)."""
    if len(message) < 28:
        return message
    out = bytearray(message)
    if header_bytes is not None:
        out[16:20] = struct.pack("<I", header_bytes & 0xFFFFFFFF)
    if payload_bytes is not None:
        out[20:28] = struct.pack("<Q", payload_bytes & 0xFFFFFFFFFFFFFFFF)
    return bytes(out)


def random_bytes(rng: random.Random, n_bytes: int) -> bytes:
    return rng.getrandbits(8 * n_bytes).to_bytes(n_bytes, "little") if n_bytes else b""


def _huge_length(rng: random.Random, limit: int, bits: int) -> int:
    """A length field value: just above ``limit``, the largest ``bits``-bit value, random above the limit, or a
    moderate value that fits (a receiver then waits for a body that never comes)."""
    choice = rng.randrange(4)
    if choice == 0:
        return limit + 1
    if choice == 1:
        return (1 << bits) - 1
    if choice == 2:
        return rng.randrange(limit + 1, 1 << bits)
    return rng.randrange(0, min(limit, MODERATE_LENGTH_MAX) + 1)


def mutate(
    rng: random.Random,
    data: bytes,
    relength: Callable[[random.Random, bytes], bytes] | None = None,
    n_mutations: int | None = None,
) -> bytes:
    """Apply 1..3 random mutations: bit flips, insertions, deletions, truncation, or a length field set by
    ``relength`` (huge or moderate, with the header's CRC fixed where it has one)."""
    for _ in range(n_mutations if n_mutations is not None else rng.randint(1, 3)):
        kind = rng.randrange(6 if relength is not None else 5)
        if kind == 0:
            data = flip_bit(data, rng.getrandbits(32))
        elif kind == 1:
            data = insert_bytes(data, rng.getrandbits(32), random_bytes(rng, rng.randint(1, 8)))
        elif kind == 2:
            data = delete_bytes(data, rng.getrandbits(32), rng.randint(1, 8))
        elif kind == 3:
            data = truncate(data, rng.getrandbits(32))
        elif kind == 4:
            for _ in range(rng.randint(2, 8)):
                data = flip_bit(data, rng.getrandbits(32))
        else:
            data = relength(rng, data)  # type: ignore[misc]
    return data


def _relength_packet(rng: random.Random, packet: bytes) -> bytes:
    from opu_driver.protocol import MAX_PAYLOAD

    return set_packet_length(packet, _huge_length(rng, MAX_PAYLOAD, 32))


def _relength_message(rng: random.Random, message: bytes) -> bytes:
    if rng.random() < 0.5:
        return set_message_lengths(message, header_bytes=_huge_length(rng, 64 * 1024, 32))
    return set_message_lengths(message, payload_bytes=_huge_length(rng, 256 * 1024 * 1024, 64))


# ------------------------------------------------------------------------------------------------ generators
def make_camera_packet(rng: random.Random) -> bytes:
    """A valid CAMERA_FRAME packet with a small ROI, any pixel format and random metadata."""
    from opu_driver.protocol import CameraFrame, FrameFlags, PixelFormat, encode_camera_frame, encode_pixels

    fmt = PixelFormat(rng.randint(1, 5))
    w, h = rng.randint(1, 6), rng.randint(1, 5)
    bits = 8 if fmt == PixelFormat.MONO8 else (10 if fmt in (PixelFormat.MONO10, PixelFormat.MONO10P) else 12)
    values = np.array([rng.randrange(1 << bits) for _ in range(w * h)], dtype=np.int64)
    frame = CameraFrame(
        rng.getrandbits(32),
        rng.getrandbits(32),
        rng.getrandbits(64),
        rng.getrandbits(32),
        rng.randrange(1 << 16),
        rng.randrange(1 << 16),
        w,
        h,
        fmt,
        FrameFlags(rng.randrange(4)),
        encode_pixels(fmt, values),
    )
    return encode_camera_frame(frame)


def make_out_packet(rng: random.Random, mirror_bytes: int = 768, n_mirrors: int = 96 * 64) -> bytes:
    """A valid host -> device packet: LAYOUT (disjoint runs inside the DMD), RAW_FRAME or FEATURE_FRAME."""
    from opu_driver.protocol import MAX_FRAME_ID, encode_feature_frame, encode_layout, encode_raw_frame

    kind = rng.randrange(3)
    if kind == 0:
        n_features = rng.randint(1, 40)
        runs, mirror = [], 0
        for _ in range(rng.randint(0, 12)):
            mirror += rng.randint(0, 50)
            length = rng.randint(1, 40)
            if mirror + length > n_mirrors:
                break
            runs.append((rng.randrange(n_features), mirror, length))
            mirror += length
        return encode_layout(n_features, np.array(runs, dtype=np.int64).reshape(-1, 3))
    frame_id = rng.randint(0, MAX_FRAME_ID)
    if kind == 1:
        bits = bytearray(random_bytes(rng, mirror_bytes))
        pad = 8 * mirror_bytes - n_mirrors
        bits[-1] &= (0xFF << pad) & 0xFF
        return encode_raw_frame(frame_id, bytes(bits))
    n_features = rng.randint(1, 40)
    feature = np.array([rng.randrange(2) for _ in range(n_features)], dtype=np.uint8)
    return encode_feature_frame(frame_id, n_features, np.packbits(feature).tobytes())


def make_junk(rng: random.Random, max_payload: int) -> bytes:
    """Bytes that hold no packet a receiver may take: random bytes, magics with wrong header CRCs, and
    headers with a right CRC whose length exceeds ``max_payload`` (both resynchronise by one byte)."""
    kind = rng.randrange(4)
    if kind == 0:
        return random_bytes(rng, rng.randint(1, 40))
    if kind == 1:
        return _MAGIC + random_bytes(rng, rng.randint(0, 20))
    if kind == 2:  # a header announcing more than the receiver accepts, its CRC right
        head = _HEAD.pack(_MAGIC, rng.randrange(256), 0, 0, rng.randint(max_payload + 1, 0xFFFFFFFF))
        return head + _U32.pack(zlib.crc32(head) & 0xFFFFFFFF) + random_bytes(rng, rng.randint(0, 8))
    return _MAGIC[: rng.randint(1, 3)] + random_bytes(rng, rng.randint(0, 3))


def _complete_corrupt_packet(rng: random.Random, packet: bytes) -> bytes:
    """The packet with a payload bit flipped: the header is right, the payload CRC wrong (reported, skipped)."""
    length = len(packet) - 20
    if length <= 0:
        return packet[:-1] + bytes([packet[-1] ^ 0x01])
    return flip_bit(packet, 8 * 16 + rng.randrange(8 * length))


def make_packet_stream(rng: random.Random, max_payload: int, camera: bool | None = None) -> bytes:
    """A byte stream of valid packets, mutated packets and junk, in random order."""
    pieces = []
    for _ in range(rng.randint(1, 8)):
        use_camera = rng.random() < 0.5 if camera is None else camera
        packet = make_camera_packet(rng) if use_camera else make_out_packet(rng)
        kind = rng.randrange(5)
        if kind == 0:
            pieces.append(packet)
        elif kind == 1:
            pieces.append(mutate(rng, packet, _relength_packet))
        elif kind == 2:
            pieces.append(make_junk(rng, max_payload))
        elif kind == 3:
            pieces.append(_complete_corrupt_packet(rng, packet))
        else:
            pieces.append(random_bytes(rng, rng.randint(0, 64)))
    return b"".join(pieces)


_REPLY_LINES = (
    "OK",
    "1",
    "0",
    "25.31",
    "OPEN",
    "CLOSED",
    'ERR -113,"Undefined header"',
    '0,"No error"',
    'ERR -222,"Data out of range"',
    '-350,"Queue overflow"',
    "OPU Open Stack,OPU-1,SIM-00000003,1.0.0",
    'ERR 5,"a ""quoted"" word"',
    "ERR",
    "ERR x",
    '1,"',
    "TRIPPED",
)


def make_reply_stream(rng: random.Random, max_line_bytes: int) -> bytes:
    """Reply lines of the controller, mutated, with overlong lines, CRs and non-ASCII bytes mixed in."""
    pieces = []
    for _ in range(rng.randint(1, 10)):
        kind = rng.randrange(5)
        line = rng.choice(_REPLY_LINES).encode()
        if kind == 0:
            pieces.append(line + rng.choice((b"\n", b"\r\n")))
        elif kind == 1:
            pieces.append(mutate(rng, line + b"\n"))
        elif kind == 2:
            overlong = b"A" * rng.randint(max_line_bytes - 2, max_line_bytes + 3)
            pieces.append(overlong + rng.choice((b"\n", b"\r\n", b"")))
        elif kind == 3:
            pieces.append(random_bytes(rng, rng.randint(0, 30)))
        else:
            pieces.append(b"\r" * rng.randint(0, 2) + b"\n")
    return b"".join(pieces)


_COMMANDS = (
    "*IDN?",
    "*RST",
    "SYSTEM:ERROR?",
    "SYST:VERS?",
    "LASER:STATE ON",
    "LAS:STAT OFF",
    "LASER:POWER 12.5",
    "LASE:POWE?",
    "LASER:POWER:MAX?",
    "SHUTTER:STATE OPEN",
    "SHUT:STAT CLOS",
    "TEMPERATURE?",
    "INTERLOCK?",
    "INTERLOCK:RESET",
    "TRIGGER:MODE SOFT",
    "TRIG:MODE INT",
    "TRIG:MODE?",
    ":LASER:POWER 1e1",
    "LASER:POWER nan",
    "LASER:POWER 1e999",
    "LASER::POWER",
    "LASER:STATE ON OFF",
    "*IDN",
    "TEMPERATURE 3",
)


def make_command_stream(rng: random.Random, max_line_bytes: int = 256) -> bytes:
    """Command lines for the controller: valid ones, mutated ones, overlong ones, random bytes."""
    pieces = []
    for _ in range(rng.randint(1, 10)):
        kind = rng.randrange(5)
        line = rng.choice(_COMMANDS).encode()
        if kind == 0:
            pieces.append(line + rng.choice((b"\n", b"\r\n")))
        elif kind == 1:
            pieces.append(mutate(rng, line + b"\n"))
        elif kind == 2:
            pieces.append(
                b"LASER:POWER "
                + b"9" * rng.randint(max_line_bytes - 14, max_line_bytes + 4)
                + rng.choice((b"\n", b"\r\n", b""))
            )
        elif kind == 3:
            pieces.append(random_bytes(rng, rng.randint(0, 30)))
        else:
            pieces.append(rng.choice((b"\n", b"\r\n", b" \n", b":\n", b"?\n")))
    return b"".join(pieces)


def _json_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randint(-(2**70), 2**70)
    if kind == 1:
        return rng.uniform(-1e9, 1e9)
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randint(0, 8)))
    if kind == 3:
        return rng.choice((None, True, False))
    if kind == 4:
        return rng.randint(0, 10)
    if kind == 5:
        return [_json_value(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {
        rng.choice(("dtype", "shape", "kind", "n_features", "token", "x")): _json_value(rng, depth + 1)
        for _ in range(rng.randint(0, 3))
    }


def make_service_message(rng: random.Random) -> bytes:
    """A valid service message: any type and request id, a JSON header of the protocol's keys or random ones,
    and sometimes a small float32/float64 payload (its dtype and shape in the header)."""
    from dfa_client import wire

    header: dict[str, Any] = {}
    kind = rng.randrange(3)
    if kind == 0:
        header = {
            "protocol_version": 1,
            "token": None,
            "n_components": rng.randint(1, 100),
            "n_features": rng.choice((None, rng.randint(1, 50))),
            "scheme": "four_frame",
            "n_bits": None,
            "max_batch": rng.randint(1, 64),
        }
    elif kind == 1:
        header = {
            rng.choice(("dtype", "shape", "kind", "message", str(k))): _json_value(rng)
            for k in range(rng.randint(0, 4))
        }
        header.pop("dtype", None) if rng.random() < 0.5 else None
        header.pop("shape", None) if rng.random() < 0.5 else None
    array = None
    if rng.random() < 0.5:
        shape = tuple(rng.randint(0, 4) for _ in range(rng.randint(0, 2)))
        dtype = rng.choice((np.float32, np.float64))
        array = np.array([rng.uniform(-10, 10) for _ in range(math.prod(shape))], dtype=dtype).reshape(shape)
    return wire.encode(rng.randint(1, 6), rng.getrandbits(64), header, array)


def make_service_stream(rng: random.Random) -> bytes:
    """Several service messages back to back, some mutated, some replaced by random bytes."""
    pieces = []
    for _ in range(rng.randint(1, 4)):
        message = make_service_message(rng)
        kind = rng.randrange(4)
        if kind == 0:
            pieces.append(message)
        elif kind in (1, 2):
            pieces.append(mutate(rng, message, _relength_message))
        else:
            pieces.append(random_bytes(rng, rng.randint(0, 60)))
    return b"".join(pieces)


# ------------------------------------------------------------------------------------------------ checks
@dataclass
class CaseStats:
    """What one case observed: documented exceptions by type and the largest parser buffer."""

    documented: Counter = field(default_factory=Counter)
    max_buffer_bytes: int = 0

    def buffer(self, n_bytes: int) -> None:
        self.max_buffer_bytes = max(self.max_buffer_bytes, n_bytes)


def _item_key(item: Any) -> tuple:
    """A comparable summary of what a receiver produced: ("env"/"crc", packet type, payload bytes or None)."""
    from firmware_sim import wire as fw
    from opu_driver.protocol import PacketFault

    if isinstance(item, fw.StreamFault):
        return ("crc", int(item.packet_type))
    if isinstance(item, fw.Envelope):
        return ("env", int(item.packet_type))
    if isinstance(item, PacketFault):
        return ("crc", int(item.packet_type)) if item.kind == "crc" else ("env", int(item.packet_type))
    from opu_driver.protocol import CameraFrame, FeatureFramePacket, LayoutPacket, PacketType, RawFramePacket

    types = {
        CameraFrame: PacketType.CAMERA_FRAME,
        LayoutPacket: PacketType.LAYOUT,
        RawFramePacket: PacketType.RAW_FRAME,
        FeatureFramePacket: PacketType.FEATURE_FRAME,
    }
    return ("env", int(types[type(item)]))


def check_packet_stream(
    data: bytes,
    cuts: Sequence[int],
    max_payload: int,
    stats: CaseStats | None = None,
    mirror_bytes: int = 768,
    count_firmware: bool = False,
) -> list[Any]:
    """Feed one stream to the driver's PacketParser (whole and chunked) and the firmware's PacketStream
    (chunked), and check that: neither raises; the chunking changes nothing; both codecs see the same packets
    and faults and count the same junk; neither ever buffers a whole packet's worth (header + max_payload +
    CRC) or more after a feed; every decoded camera frame's pixels decode or give the documented ProtocolError;
    every envelope the firmware keeps decodes to a packet or a StreamFault. Returns the driver's items.
    """
    from firmware_sim import wire as fw
    from opu_driver.protocol import HEADER_SIZE, TRAILER_SIZE, PacketParser

    stats = stats if stats is not None else CaseStats()
    firmware_stats = stats if count_firmware else CaseStats()
    bound = HEADER_SIZE + max_payload + TRAILER_SIZE
    whole = PacketParser(max_payload)
    items = whole.feed(data)
    stats.buffer(whole.buffered)
    chunked = PacketParser(max_payload)
    firmware = fw.PacketStream(max_payload)
    chunk_items: list[Any] = []
    firmware_items: list[Any] = []
    for piece in split_at(data, cuts):
        chunk_items += chunked.feed(piece)
        firmware_items += firmware.feed(piece)
        stats.buffer(max(chunked.buffered, firmware.buffered))
        if chunked.buffered >= bound or firmware.buffered >= bound:
            raise FuzzFailure(
                f"buffer of {chunked.buffered} (driver) / {firmware.buffered} (firmware) bytes "
                f"reaches the bound of one packet ({bound})"
            )
    if chunk_items != items:
        raise FuzzFailure(f"the driver's result depends on the chunking: {items!r} vs {chunk_items!r}"[:500])
    if (whole.junk_bytes, whole.buffered) != (chunked.junk_bytes, chunked.buffered):
        raise FuzzFailure("junk count or buffered bytes depend on the chunking")
    driver_keys = [_item_key(i) for i in items]
    firmware_keys = [_item_key(i) for i in firmware_items]
    if driver_keys != firmware_keys:
        raise FuzzFailure(f"driver and firmware codecs disagree: {driver_keys} vs {firmware_keys}")
    if whole.junk_bytes != firmware.junk_bytes or whole.buffered != firmware.buffered:
        raise FuzzFailure(
            f"junk/buffered differ: driver {whole.junk_bytes}/{whole.buffered}, firmware "
            f"{firmware.junk_bytes}/{firmware.buffered}"
        )
    _check_driver_items(items, stats, count_faults=not count_firmware)
    _check_firmware_items(firmware_items, mirror_bytes, firmware_stats)
    return items


def _check_driver_items(items: Sequence[Any], stats: CaseStats, count_faults: bool) -> None:
    """Every camera frame the driver decoded gives its pixels or the documented ProtocolError; faults are
    counted when ``count_faults``."""
    from opu_driver.errors import ProtocolError
    from opu_driver.protocol import CameraFrame, PacketFault

    for item in items:
        if isinstance(item, PacketFault) and count_faults:
            stats.documented[f"opu_driver.PacketFault({item.kind})"] += 1
        if isinstance(item, CameraFrame):
            try:
                pixels = item.to_array()
            except ProtocolError:
                stats.documented["opu_driver.ProtocolError"] += 1
            else:
                if pixels.shape != (item.roi_h, item.roi_w):
                    raise FuzzFailure(f"to_array gave shape {pixels.shape} for a {item.roi_w}x{item.roi_h} ROI")


def _check_firmware_items(firmware_items: Sequence[Any], mirror_bytes: int, stats: CaseStats) -> None:
    """Every envelope the firmware kept decodes to a packet or a StreamFault; the faults are counted."""
    from firmware_sim import wire as fw

    for item in firmware_items:
        if isinstance(item, fw.Envelope):
            decoded = fw.decode_out_packet(item, mirror_bytes)
            if isinstance(decoded, fw.StreamFault):
                stats.documented[f"firmware.{decoded.code.name}"] += 1
        else:
            stats.documented[f"firmware.{item.code.name}"] += 1


def check_resync(
    segments: Sequence[tuple[bytes, bytes]], cuts: Sequence[int], max_payload: int, stats: CaseStats | None = None
) -> None:
    """Valid packets separated by junk (no packet in it, see :func:`make_junk`) are all found, in order, by
    both codecs: a bad header or an over-long length costs one byte, never a packet (section 1.4)."""
    from firmware_sim import wire as fw
    from opu_driver.protocol import PacketFault

    data = b"".join(junk + packet for junk, packet in segments)
    items = check_packet_stream(data, cuts, max_payload, stats)
    expected = [_item_key_of_packet(p) for _, p in segments]
    got = [_item_key(i) for i in items if not isinstance(i, PacketFault) or i.kind != "crc"]
    if got != expected:
        raise FuzzFailure(f"resynchronisation lost packets: expected {expected}, got {got}")
    stream = fw.PacketStream(max_payload)
    payloads = [e.payload for e in stream.feed(data) if isinstance(e, fw.Envelope)]
    if payloads != [p[16:-4] for _, p in segments]:
        raise FuzzFailure("the firmware's receiver did not return the embedded packets' payloads")


def _item_key_of_packet(packet: bytes) -> tuple:
    return ("env", packet[4])


def check_reply_lines(
    data: bytes, cuts: Sequence[int], max_line_bytes: int, stats: CaseStats | None = None
) -> list[str]:
    """Feed reply bytes to the driver's LineReader in chunks and parse every line.

    Checks: the lines equal those of splitting the whole input at newlines (a trailing CR dropped, lines longer
    than the limit refused with the documented ProtocolError and never returned), whatever the chunking; the
    partial line never exceeds the limit + 1 bytes; parse_reply / parse_error_entry raise only their documented
    errors (ProtocolError, DeviceRefusedError).
    """
    from opu_driver.errors import DeviceRefusedError, ProtocolError
    from opu_driver.protocol import LineReader, parse_error_entry, parse_reply

    stats = stats if stats is not None else CaseStats()
    reader = LineReader(max_line_bytes)
    lines: list[str] = []
    overflows = 0
    for piece in split_at(data, cuts):
        try:
            lines += reader.feed(piece)
        except ProtocolError:
            overflows += 1
            stats.documented["opu_driver.ProtocolError"] += 1
        stats.buffer(len(reader.partial))
        if len(reader.partial) > max_line_bytes + 1:
            raise FuzzFailure(f"LineReader holds {len(reader.partial)} bytes, limit {max_line_bytes} + 1")
    lines += reader.feed(b"")  # lines kept back by a call that met an overlong line
    raw = data.split(b"\n")[:-1]
    expected = []
    overlong = 0
    for line in raw:
        line = line[:-1] if line.endswith(b"\r") else line
        if len(line) > max_line_bytes:
            overlong += 1
        else:
            expected.append(line.decode("ascii", errors="replace"))
    if lines != expected:
        raise FuzzFailure(f"LineReader lines {lines!r} differ from the split input {expected!r}"[:500])
    tail = data.rsplit(b"\n", 1)[-1]
    if len(tail) > max_line_bytes + 1 or (len(tail) == max_line_bytes + 1 and not tail.endswith(b"\r")):
        overlong += 1  # an unterminated line already too long is refused before its newline comes
    if bool(overflows) != bool(overlong) or overflows > overlong:
        raise FuzzFailure(f"{overlong} overlong lines gave {overflows} ProtocolErrors")
    for text in lines:
        try:
            parse_reply(text)
        except DeviceRefusedError:
            stats.documented["opu_driver.DeviceRefusedError"] += 1
        except ProtocolError:
            stats.documented["opu_driver.ProtocolError"] += 1
        try:
            code, _message = parse_error_entry(text)
        except ProtocolError:
            stats.documented["opu_driver.ProtocolError"] += 1
        else:
            if not isinstance(code, int):
                raise FuzzFailure(f"parse_error_entry gave a code {code!r}")
    return lines


class _Host:
    """The firmware side a lone ControllerLine needs (device time, sequence state)."""

    device_time_us = 0
    sequence_running = False

    def abort_sequence(self) -> None:
        pass


def check_controller(data: bytes, cuts: Sequence[int], stats: CaseStats | None = None) -> None:
    """Feed command bytes to the firmware's ControllerLine in chunks: it never raises, answers every line
    with exactly one printable reply line (a value, OK, or ``ERR <code>,"<message>"`` with a code of the
    table), keeps at most 257 bytes of a partial line, and after the garbage, a newline then ``*IDN?`` gets
    its identity."""
    from firmware_sim.controller import MAX_LINE_BYTES, SERIAL_ERRORS, ControllerLine

    stats = stats if stats is not None else CaseStats()
    line = ControllerLine(
        _Host(),
        model="OPU-F",
        serial_number="SIM-FUZZ",
        firmware_version=(1, 0, 0),
        default_power_mw=50.0,
        max_power_mw=100.0,
    )
    replies = b""
    for piece in split_at(data, cuts):
        replies += line.feed(piece)
        stats.buffer(len(line._partial))
        if len(line._partial) > MAX_LINE_BYTES + 1:
            raise FuzzFailure(f"the controller holds {len(line._partial)} bytes of a line")
    _check_replies(replies, data.count(b"\n"), SERIAL_ERRORS, stats)
    tail = line.feed(b"\n*IDN?\n").split(b"\n")
    if len(tail) != 3 or tail[1] != line.identity.encode():
        raise FuzzFailure(f"after garbage, *IDN? got {tail!r}")


def _check_replies(replies: bytes, n_lines: int, codes: dict[int, str], stats: CaseStats) -> None:
    if replies.count(b"\n") != n_lines or (replies and not replies.endswith(b"\n")):
        raise FuzzFailure(f"{n_lines} lines got {replies.count(10)} replies")
    for reply in replies.split(b"\n")[:-1]:
        if not reply or any(b < 0x20 or b > 0x7E for b in reply):
            raise FuzzFailure(f"reply {reply!r} is empty or not printable")
        if reply.startswith(b"ERR"):
            code_text, _, message = reply[4:].partition(b",")
            code = int(code_text)
            if code not in codes or message != f'"{codes[code]}"'.encode():
                raise FuzzFailure(f"error reply {reply!r} is not of the table")
            stats.documented[f"serial.{code}"] += 1


# -- the emulated device, end to end -----------------------------------------------------------------------
class DeviceHarness:
    """An emulated device (noise off) and what a right answer to a raw frame looks like on it.

    :meth:`check` writes garbage to the OUT endpoint and the serial line, then a valid request, and checks the
    device answers it right (or with the documented error, then right after the stream is completed).
    """

    def __init__(self, seed: int = 3, expose_every: int = 25) -> None:
        from firmware_sim.config import SimConfig
        from firmware_sim.device import EmulatedDevice

        config = SimConfig(seed=seed, noise=False, serial_number="SIM-FUZZ", **DEVICE_GEOMETRY)  # type: ignore[arg-type]
        self.device = EmulatedDevice(config, name=f"fuzz-{id(self):x}")
        n_mirrors = config.dmd_width * config.dmd_height
        self.mirror_bytes = (n_mirrors + 7) // 8
        self.n_mirrors = n_mirrors
        rng = np.random.default_rng(seed)
        self.mirror_bits = np.packbits(rng.integers(0, 2, n_mirrors, dtype=np.uint8)).tobytes()
        reference = EmulatedDevice(config, name=f"fuzz-ref-{id(self):x}")
        self._light(reference)
        self.expected = self._expose(reference, 7)
        if self.expected is None or self.expected.dmd_frame_id != 7:
            raise RuntimeError("the reference device did not answer a raw frame")
        self.checks = 0
        self.expose_every = max(1, expose_every)

    @staticmethod
    def _light(device: Any) -> None:
        device.serial_write(b"*RST\nLASER:STATE ON\nSHUTTER:STATE OPEN\n")
        replies = device.serial_read(1 << 16)
        if replies != b"OK\nOK\nOK\n":
            raise FuzzFailure(f"the device refused the light commands: {replies!r}")

    def _expose(self, device: Any, frame_id: int) -> Any:
        """Queue one raw frame (nothing else queued), run it and return its camera frame."""
        from opu_driver.protocol import EP_CAMERA_IN, EP_DMD_OUT, PacketParser, PacketType, Register, encode_raw_frame

        device.usb_bulk_write(EP_DMD_OUT, encode_raw_frame(frame_id, self.mirror_bits))
        if device.usb_ctrl_read_register(Register.SEQ_QUEUED) != 1:
            raise FuzzFailure("the raw frame was not queued")
        if not device.usb_ctrl_write_register(Register.SEQ_CONTROL, 1):
            raise FuzzFailure(f"START refused (LAST_ERROR {device.usb_ctrl_read_register(Register.LAST_ERROR)})")
        parser = PacketParser(accept=frozenset({PacketType.CAMERA_FRAME}))
        items = parser.feed(device.usb_bulk_read(EP_CAMERA_IN, 1 << 24))
        if len(items) != 1 or parser.buffered:
            raise FuzzFailure(f"one frame gave {items!r}"[:300])
        return items[0]

    def check(
        self,
        usb_garbage: Sequence[bytes],
        serial_garbage: bytes,
        frame_id: int,
        stats: CaseStats | None = None,
        expose: bool | None = None,
    ) -> None:
        """Garbage on both links, then a raw frame request; ``expose``: also run it and compare its camera
        frame with the reference (one optics computation; default: every ``expose_every``-th check)."""
        from opu_driver.protocol import EP_DMD_OUT, Register, encode_raw_frame

        stats = stats if stats is not None else CaseStats()
        device = self.device
        self.checks += 1
        if device.debug_counters["buffered_out_bytes"]:
            raise FuzzFailure("the device starts a check with a partial packet")
        self._check_serial(serial_garbage, stats)
        oracle = self._write_usb_garbage(usb_garbage, stats)
        request = encode_raw_frame(frame_id, self.mirror_bits)
        device.usb_bulk_write(EP_DMD_OUT, request)
        self._check_request_queued(request, oracle.feed(request), frame_id, stats)
        device.usb_ctrl_write_register(Register.SEQ_CONTROL, 2)
        if not (expose if expose is not None else self.checks % self.expose_every == 1):
            return
        frame = self._expose(device, frame_id)
        if frame.dmd_frame_id != frame_id or frame.pixels != self.expected.pixels or frame.flags != self.expected.flags:
            raise FuzzFailure(f"after garbage the device answered frame {frame_id} wrongly: {frame!r}")
        if device.debug_counters["buffered_out_bytes"]:
            raise FuzzFailure("the device holds bytes after a complete request")

    def _check_serial(self, serial_garbage: bytes, stats: CaseStats) -> None:
        """Serial line: every line of the garbage answered; then a fresh line is answered right."""
        from firmware_sim.controller import SERIAL_ERRORS

        device = self.device
        device.serial_reset_input()
        device.serial_write(serial_garbage)
        replies = device.serial_read(1 << 21)
        _check_replies(replies, serial_garbage.count(b"\n"), SERIAL_ERRORS, stats)
        device.serial_write(b"\n*IDN?\n")
        tail = device.serial_read(1 << 16).split(b"\n")
        if len(tail) != 3 or tail[1] != device.controller.identity.encode():
            raise FuzzFailure(f"after serial garbage, *IDN? got {tail!r}")

    def _write_usb_garbage(self, usb_garbage: Sequence[bytes], stats: CaseStats) -> Any:
        """OUT endpoint: write the garbage, check the registers still answer, then abort what it queued and light
        the device again. Returns the driver's parser fed the same bytes: it says whether a frame can be found."""
        from opu_driver.protocol import EP_CAMERA_IN, EP_DMD_OUT, PacketParser, Register

        device = self.device
        oracle = PacketParser()
        for piece in usb_garbage:
            if device.usb_bulk_write(EP_DMD_OUT, piece) != len(piece):
                raise FuzzFailure("the OUT endpoint did not take every byte")
            oracle.feed(piece)
        stats.buffer(device.debug_counters["buffered_out_bytes"])
        if device.usb_ctrl_read_register(Register.PROTOCOL_VERSION) != 1:
            raise FuzzFailure("registers no longer answer after garbage on the OUT endpoint")
        garbage_error = device.usb_ctrl_read_register(Register.LAST_ERROR)  # reading clears it
        if garbage_error:
            from firmware_sim.wire import ErrorCode

            stats.documented[f"firmware.{ErrorCode(garbage_error).name}"] += 1
        device.usb_ctrl_write_register(Register.SEQ_CONTROL, 2)  # ABORT: drop frames the garbage queued
        self._light(device)
        device.usb_bulk_read(EP_CAMERA_IN, 1 << 24)
        return oracle

    def _check_request_queued(self, request: bytes, found: list[Any], frame_id: int, stats: CaseStats) -> None:
        """The raw frame ``request`` just written is queued, or (when ``found``, the oracle's view, is not that
        frame) absorbed by a packet the garbage left open: then the stream is completed and the frame queued."""
        from opu_driver.protocol import EP_DMD_OUT, RawFramePacket, Register

        device = self.device
        queued = device.usb_ctrl_read_register(Register.SEQ_QUEUED)
        error = device.usb_ctrl_read_register(Register.LAST_ERROR)
        if found == [RawFramePacket(frame_id, self.mirror_bits)]:
            if queued != 1 or error != 0:
                raise FuzzFailure(f"a raw frame after garbage was not queued (queued {queued}, error {error})")
            return
        # The frame completed a packet the garbage started: its payload CRC fails (E_CRC, documented), or
        # the device still waits for that packet's bytes. One more outcome is E_LENGTH or E_TYPE: a packet
        # left open announcing exactly 12 bytes takes the frame's header as payload and its header CRC as
        # the payload CRC, which is right (both are CRC-32 of the same 12 bytes). Complete the stream with
        # padding, as a host would after a refused frame, then send the frame again.
        from firmware_sim.wire import ErrorCode

        if queued != 0 or error not in (0, ErrorCode.E_CRC, ErrorCode.E_TYPE, ErrorCode.E_LENGTH):
            raise FuzzFailure(f"an absorbed frame gave queued {queued}, LAST_ERROR {error}")
        reason = f"{ErrorCode(error).name} (request absorbed)" if error else "request pending"
        stats.documented[f"firmware.{reason}"] += 1
        for _ in range(MODERATE_LENGTH_MAX // 4096 + 4):
            if not device.debug_counters["buffered_out_bytes"]:
                break
            device.usb_bulk_write(EP_DMD_OUT, bytes(4096))
        else:
            raise FuzzFailure("the OUT stream never completed after padding")
        device.usb_ctrl_read_register(Register.LAST_ERROR)
        device.usb_bulk_write(EP_DMD_OUT, request)
        if device.usb_ctrl_read_register(Register.SEQ_QUEUED) != 1:
            raise FuzzFailure("a raw frame sent after the padding was not queued")


def make_device_garbage(rng: random.Random, mirror_bytes: int) -> list[bytes]:
    """Chunks for the OUT endpoint: packets for this device, mutated or not, junk, moderate length fields."""
    pieces = []
    for _ in range(rng.randint(1, 5)):
        packet = make_out_packet(rng, mirror_bytes)
        kind = rng.randrange(4)
        if kind == 0:
            pieces.append(packet)
        elif kind == 1:
            pieces.append(mutate(rng, packet, _relength_moderate))
        elif kind == 2:
            pieces.append(make_junk(rng, 16 * 2**20))
        else:
            pieces.append(_complete_corrupt_packet(rng, packet))
    data = b"".join(pieces)
    return split_at(data, [rng.randrange(len(data) + 1) for _ in range(rng.randint(0, 4))])


def _relength_moderate(rng: random.Random, packet: bytes) -> bytes:
    length = rng.choice((16 * 2**20 + 1, 0xFFFFFFFF, rng.randrange(MODERATE_LENGTH_MAX + 1)))
    return set_packet_length(packet, length)


# -- the service's messages --------------------------------------------------------------------------------
def check_service_bytes(data: bytes, limits: Any = None, stats: CaseStats | None = None) -> None:
    """Decode ``data`` as one message with ``dfa_client.wire.decode`` and read it as a stream of messages from
    a socket with ``read_message``. Only the documented errors may come out (ProtocolError, including
    MessageTooLargeError, and ProtocolVersionError; PeerClosedError when the stream ends); a read never
    times out on a closed stream (no hang); a message read from the socket equals ``decode`` of its bytes."""
    from dfa_client import wire
    from dfa_client.errors import ProtocolError, ProtocolVersionError

    stats = stats if stats is not None else CaseStats()
    limits = limits if limits is not None else wire.WireLimits()
    try:
        wire.decode(data, limits)
    except (ProtocolError, ProtocolVersionError) as exc:
        stats.documented[f"dfa_client.{type(exc).__name__}"] += 1
    left, right = socket.socketpair()
    try:
        left.sendall(data)
        left.shutdown(socket.SHUT_WR)
        offset = 0
        for _ in range(len(data) // wire.PREFIX_BYTES + 2):
            try:
                message = wire.read_message(right, limits, time.monotonic() + 5.0)
            except (ProtocolError, ProtocolVersionError) as exc:
                stats.documented[f"dfa_client.{type(exc).__name__}"] += 1
                return
            except wire.PeerClosedError:
                if offset == len(data):
                    return
                stats.documented["dfa_client.PeerClosedError"] += 1
                return
            except TimeoutError:
                raise FuzzFailure("read_message waited for bytes of a closed stream") from None
            prefix = wire.parse_prefix(data[offset : offset + wire.PREFIX_BYTES], limits)
            end = offset + wire.PREFIX_BYTES + prefix.header_bytes + prefix.payload_bytes
            stats.buffer(end - offset)
            again = wire.decode(data[offset:end], limits)
            if (again.type, again.request_id, again.header) != (
                message.type,
                message.request_id,
                message.header,
            ) or not _same_array(again.array, message.array):
                raise FuzzFailure("read_message and decode disagree on a message")
            offset = end
        raise FuzzFailure("read_message returned more messages than the bytes hold")
    finally:
        left.close()
        right.close()


# ------------------------------------------------------------------------------------------------ the long run
def _same_array(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Whether two decoded message arrays agree: both absent, or both present and equal (NaN equal to NaN)."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.array_equal(a, b, equal_nan=True))


def _case_rng(seed: int, parser: str, index: int) -> random.Random:
    return random.Random(f"{seed}:{parser}:{index}")


def _cuts(rng: random.Random, n_bytes: int) -> list[int]:
    return [rng.randrange(n_bytes + 1) for _ in range(rng.randint(0, 6))]


def run_case(parser: str, seed: int, index: int, stats: CaseStats, device: DeviceHarness | None = None) -> None:
    """Run case ``index`` of ``parser`` under ``seed`` (the same case every time: a failure is reproduced by
    its index). Raises whatever the parser raised beyond its documented errors, or FuzzFailure."""
    rng = _case_rng(seed, parser, index)
    if parser == "driver":
        kind = index % 4
        if kind == 3:
            data = make_reply_stream(rng, 64) if rng.random() < 0.7 else random_bytes(rng, rng.randint(0, 200))
            check_reply_lines(data, _cuts(rng, len(data)), 64, stats)
            return
        if kind == 2 and rng.random() < 0.5:
            from opu_driver.errors import ProtocolError
            from opu_driver.protocol import decode_payload

            payload = mutate(rng, make_camera_packet(rng) if rng.random() < 0.5 else make_out_packet(rng))[16:]
            try:
                decode_payload(rng.choice((1, 2, 3, 16, rng.randrange(256))), payload)
            except ProtocolError:
                stats.documented["opu_driver.ProtocolError"] += 1
            return
        max_payload = rng.choice((16 * 2**20, 4096, 64))
        data = make_packet_stream(rng, max_payload, camera=True if kind == 0 else None)
        check_packet_stream(data, _cuts(rng, len(data)), max_payload, stats)
        if kind == 1:
            segments = [
                (make_junk(rng, max_payload) if rng.random() < 0.8 else b"", make_camera_packet(rng))
                for _ in range(rng.randint(1, 4))
            ]
            segments = [(j, p) for j, p in segments if len(p) - 20 <= max_payload]
            check_resync(segments, _cuts(rng, 200), max_payload, stats)
    elif parser == "firmware":
        kind = index % 4
        if kind == 0:
            max_payload = rng.choice((16 * 2**20, 4096, 64))
            data = make_packet_stream(rng, max_payload)
            check_packet_stream(data, _cuts(rng, len(data)), max_payload, stats, count_firmware=True)
        elif kind == 1:
            data = make_command_stream(rng) if rng.random() < 0.8 else random_bytes(rng, rng.randint(0, 300))
            check_controller(data, _cuts(rng, len(data)), stats)
        else:
            if device is None:
                raise ValueError("firmware cases need a DeviceHarness")
            serial = make_command_stream(rng) if kind == 2 else b""
            device.check(make_device_garbage(rng, device.mirror_bytes), serial, rng.randint(0, 2**32 - 2), stats)
    elif parser == "service":
        data = make_service_stream(rng) if rng.random() < 0.85 else random_bytes(rng, rng.randint(0, 100))
        check_service_bytes(data, None, stats)
    else:
        raise ValueError(f"unknown parser {parser!r}; choose one of {PARSERS}")


@dataclass
class FuzzReport:
    """The summary of a long run of one parser."""

    parser: str
    cases: int
    seed: int
    elapsed_s: float = 0.0
    documented: Counter = field(default_factory=Counter)
    undocumented: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    max_buffer_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.undocumented


def run_fuzz(
    parsers: Sequence[str] = PARSERS,
    cases: int = 100_000,
    seed: int = 0,
    progress: bool = True,
    max_failures_kept: int = 5,
) -> list[FuzzReport]:
    """Run ``cases`` cases of each parser; an undocumented exception is counted (with its case index, to
    reproduce it with :func:`run_case`) and the run goes on."""
    if cases < 0:
        raise ValueError(f"cases must be >= 0, got {cases}")
    reports = []
    for parser in parsers:
        if parser not in PARSERS:
            raise ValueError(f"unknown parser {parser!r}; choose one of {PARSERS}")
        report = FuzzReport(parser, cases, seed)
        device = DeviceHarness(seed) if parser == "firmware" else None
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=cases, desc=f"fuzz {parser}", unit="case", mininterval=0.5)
        started = time.perf_counter()
        for index in range(cases):
            stats = CaseStats()
            try:
                run_case(parser, seed, index, stats, device)
            except Exception as exc:  # the point of the run: count what escapes, keep going
                name = type(exc).__name__
                report.undocumented[name] += 1
                if len(report.failures) < max_failures_kept:
                    report.failures.append(f"case {index}: {name}: {str(exc)[:300]}")
                _log.debug("fuzz %s case %d: %r", parser, index, exc)
                if device is not None:
                    device = DeviceHarness(seed)  # a broken emulator would fail every later case
            report.documented.update(stats.documented)
            report.max_buffer_bytes = max(report.max_buffer_bytes, stats.max_buffer_bytes)
            if bar is not None:
                bar.update(1)
        report.elapsed_s = time.perf_counter() - started
        if bar is not None:
            bar.close()
        reports.append(report)
    return reports


def format_report(reports: Sequence[FuzzReport]) -> str:
    """A plain-text summary: per parser, cases, time, largest buffer, exceptions by type."""
    lines = []
    for r in reports:
        lines.append(
            f"{r.parser}: {r.cases} cases (seed {r.seed}) in {r.elapsed_s:.1f} s, "
            f"largest parser buffer {r.max_buffer_bytes} bytes, "
            f"{sum(r.undocumented.values())} undocumented exceptions"
        )
        if r.documented:
            top = ", ".join(f"{k} {v}" for k, v in sorted(r.documented.items(), key=lambda kv: -kv[1]))
            lines.append(f"  documented: {top}")
        for name, count in sorted(r.undocumented.items()):
            lines.append(f"  UNDOCUMENTED {name}: {count}")
        for failure in r.failures:
            lines.append(f"    {failure}")
    return "\n".join(lines)
