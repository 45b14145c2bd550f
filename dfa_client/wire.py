"""The OPU service's message format (protocol version 1): framing, encoding, decoding, socket reads.

Shared by the client (``dfa_client.remote``) and the service (``opu_driver.service``); numpy and the standard
library only, no pickle, no eval. docs/service.md is the specification; in short, every message is

    prefix (28 bytes, little-endian): magic b"OPUW" | version u16 | type u8 | flags u8 (0) | request id u64
                                      | header length u32 | payload length u64
    header  (header length bytes):    a UTF-8 JSON object (may be empty: length 0)
    payload (payload length bytes):   a raw little-endian array whose dtype and shape the header gives

The magic and version come first and never move, so any version can read them and say "wrong version".
Lengths are checked against the reader's limits before anything is allocated for them.
"""

from __future__ import annotations

import enum
import json
import math
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ProtocolError, ProtocolVersionError

__all__ = [
    "drain",
    "MAGIC",
    "PROTOCOL_VERSION",
    "PREFIX",
    "PREFIX_BYTES",
    "MessageType",
    "Message",
    "WireLimits",
    "ProtocolError",
    "MessageTooLargeError",
    "PeerClosedError",
    "encode",
    "decode",
    "parse_prefix",
    "read_message",
    "send_message",
    "recv_exact",
    "MAX_DIMENSION",
]

MAGIC = b"OPUW"
PROTOCOL_VERSION = 1
PREFIX = struct.Struct("<4sHBBQIQ")
PREFIX_BYTES = PREFIX.size  # 28
ARRAY_DTYPES: dict[str, np.dtype[np.floating[Any]]] = {"<f4": np.dtype("<f4"), "<f8": np.dtype("<f8")}
"""Payload dtypes the format allows: little-endian float32 and float64."""
MAX_DIMS = 2
MAX_DIMENSION = 2**31
"""The largest length of one payload dimension: a header announcing more is refused (a zero-size shape such as
[0, 2**70] would otherwise pass the length check and make numpy fail when the array is allocated)."""

FloatArray = npt.NDArray[np.floating[Any]]
"""A payload array: float32 or float64 (little-endian on the wire)."""
ArraySpec = tuple[np.dtype[np.floating[Any]], tuple[int, ...]]
"""The (dtype, shape) of a payload, as its header announces it."""


class MessageType(enum.IntEnum):
    """The message types of protocol version 1 (see docs/service.md for their headers)."""

    HELLO = 1
    WELCOME = 2
    PROJECT = 3
    RESULT = 4
    ERROR = 5
    BYE = 6


class MessageTooLargeError(ProtocolError):
    """A length field above the reader's limit: refused before anything is allocated for it."""


class PeerClosedError(ConnectionError):
    """The peer closed the connection. ``partial`` says whether it did so in the middle of a message."""

    def __init__(self, message: str, partial: bool = False) -> None:
        super().__init__(message)
        self.partial = partial


@dataclass(frozen=True)
class WireLimits:
    """What a reader accepts; lengths above these are refused before allocation.

    Attributes:
        max_header_bytes: the JSON header's limit.
        max_payload_bytes: the array payload's limit.
    """

    max_header_bytes: int = 64 * 1024
    max_payload_bytes: int = 256 * 1024 * 1024


@dataclass
class Message:
    """One decoded message: its type, request id, JSON header and array (None when it has no payload)."""

    type: MessageType
    request_id: int
    header: dict[str, Any] = field(default_factory=dict)
    array: FloatArray | None = None
    version: int = PROTOCOL_VERSION


# ------------------------------------------------------------------------------------------------ encoding
def _encode_parts(
    msg_type: MessageType | int,
    request_id: int,
    header: dict[str, Any] | None,
    array: npt.ArrayLike | None,
    version: int,
) -> tuple[bytes, bytes | memoryview]:
    """(prefix + JSON header, payload bytes-like) of a message."""
    if not 0 <= int(request_id) < 1 << 64:
        raise ProtocolError(f"request id {request_id} does not fit 64 bits")
    fields = dict(header or {})
    payload: bytes | memoryview = b""
    if array is not None:
        given = np.asarray(array)
        if given.dtype.kind != "f" or given.dtype.itemsize not in (4, 8) or given.ndim > MAX_DIMS:
            raise ProtocolError(
                f"payload must be a float32/float64 array of at most 2 dimensions, got {given.dtype} {given.shape}"
            )
        wire_dtype = "<f4" if given.dtype.itemsize == 4 else "<f8"
        contiguous = np.ascontiguousarray(given, dtype=ARRAY_DTYPES[wire_dtype])
        fields["dtype"] = wire_dtype
        fields["shape"] = [int(n) for n in contiguous.shape]
        payload = contiguous.reshape(-1).view(np.uint8).data  # the array's bytes, not a copy
    text = json.dumps(fields, separators=(",", ":"), allow_nan=False).encode() if fields else b""
    prefix = PREFIX.pack(MAGIC, version, int(msg_type), 0, int(request_id), len(text), len(payload))
    return prefix + text, payload


def encode(
    msg_type: MessageType | int,
    request_id: int = 0,
    header: dict[str, Any] | None = None,
    array: npt.ArrayLike | None = None,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """One message as bytes. ``array`` (float32 or float64, at most 2-D) becomes the payload; its dtype and shape
    go into the header under the reserved keys "dtype" and "shape". ``version`` exists for tests of mismatches."""
    head, payload = _encode_parts(msg_type, request_id, header, array, version)
    return head + bytes(payload)


def send_message(
    sock: socket.socket,
    msg_type: MessageType | int,
    request_id: int = 0,
    header: dict[str, Any] | None = None,
    array: npt.ArrayLike | None = None,
    version: int = PROTOCOL_VERSION,
) -> None:
    """Write one message to a connected socket (its timeout bounds the write). Small messages go out in one
    write; a large payload is written straight from the array's memory, without a copy."""
    head, payload = _encode_parts(msg_type, request_id, header, array, version)
    if len(payload) <= 65536:
        sock.sendall(head + bytes(payload))
    else:
        sock.sendall(head)
        sock.sendall(payload)


# ------------------------------------------------------------------------------------------------ decoding
@dataclass(frozen=True)
class Prefix:
    """The fixed 28-byte part of a message, checked against the limits."""

    version: int
    type: MessageType
    request_id: int
    header_bytes: int
    payload_bytes: int


def parse_prefix(data: bytes, limits: WireLimits) -> Prefix:
    """Check and unpack a message's prefix.

    Raises:
        ProtocolError: bad magic, nonzero flags, unknown type.
        ProtocolVersionError: a version other than PROTOCOL_VERSION (checked right after the magic).
        MessageTooLargeError: a header or payload length above ``limits``.
    """
    if len(data) != PREFIX_BYTES:
        raise ProtocolError(f"a message prefix has {PREFIX_BYTES} bytes, got {len(data)}")
    magic, version, type_code, flags, request_id, header_bytes, payload_bytes = PREFIX.unpack(data)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not an OPU service message")
    if version != PROTOCOL_VERSION:
        raise ProtocolVersionError(f"the peer speaks protocol version {version}; this side speaks {PROTOCOL_VERSION}")
    try:
        msg_type = MessageType(type_code)
    except ValueError:
        raise ProtocolError(f"unknown message type {type_code}") from None
    if flags != 0:
        raise ProtocolError(f"flags must be 0 in protocol version {PROTOCOL_VERSION}, got {flags}")
    if header_bytes > limits.max_header_bytes:
        raise MessageTooLargeError(
            f"a JSON header of {header_bytes} bytes exceeds the limit of {limits.max_header_bytes}"
        )
    if payload_bytes > limits.max_payload_bytes:
        raise MessageTooLargeError(
            f"a payload of {payload_bytes} bytes exceeds the limit of {limits.max_payload_bytes}"
        )
    return Prefix(version, msg_type, request_id, header_bytes, payload_bytes)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid in a message header")


def parse_header(data: bytes) -> dict[str, Any]:
    """The JSON object of a header (empty bytes: an empty header)."""
    if not data:
        return {}
    try:
        value = json.loads(data.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"the message header is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"the message header must be a JSON object, got {type(value).__name__}")
    return value


def array_spec(header: dict[str, Any], payload_bytes: int) -> ArraySpec | None:
    """The (dtype, shape) a header announces, checked against the payload length; None for no payload."""
    has_spec = "dtype" in header or "shape" in header
    if not has_spec:
        if payload_bytes:
            raise ProtocolError(f"{payload_bytes} payload bytes without a dtype and shape in the header")
        return None
    name = header.get("dtype")
    # Only a string can name a dtype: a JSON list or object (unhashable) must be refused, not crash the lookup.
    dtype = ARRAY_DTYPES.get(name) if isinstance(name, str) else None
    if dtype is None:
        raise ProtocolError(f"payload dtype {header.get('dtype')!r}: the format allows {sorted(ARRAY_DTYPES)}")
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_DIMENSION for n in shape)
    ):
        raise ProtocolError(
            f"payload shape must be a list of at most {MAX_DIMS} integers within 0..{MAX_DIMENSION}, got {shape!r}"[
                :300
            ]
        )
    expected = math.prod(shape) * dtype.itemsize
    if expected != payload_bytes:
        raise ProtocolError(
            f"a {header['dtype']} array of shape {shape} has {expected} bytes; the payload has {payload_bytes}"
        )
    return dtype, tuple(shape)


def decode(data: bytes, limits: WireLimits = WireLimits()) -> Message:
    """Decode one whole message from bytes (exactly one: trailing or missing bytes are an error)."""
    if len(data) < PREFIX_BYTES:
        raise ProtocolError(f"truncated message: {len(data)} bytes, less than the {PREFIX_BYTES}-byte prefix")
    prefix = parse_prefix(bytes(data[:PREFIX_BYTES]), limits)
    total = PREFIX_BYTES + prefix.header_bytes + prefix.payload_bytes
    if len(data) != total:
        raise ProtocolError(f"the prefix announces a {total}-byte message; got {len(data)} bytes")
    header = parse_header(bytes(data[PREFIX_BYTES : PREFIX_BYTES + prefix.header_bytes]))
    spec = array_spec(header, prefix.payload_bytes)
    array: FloatArray | None = None
    if spec is not None:
        dtype, shape = spec
        array = np.frombuffer(bytes(data[PREFIX_BYTES + prefix.header_bytes :]), dtype=dtype).reshape(shape)
    return Message(prefix.type, prefix.request_id, header, array, prefix.version)


# ------------------------------------------------------------------------------------------------ sockets
def recv_exact(sock: socket.socket, into: memoryview, deadline: float | None, started: bool = True) -> None:
    """Fill ``into`` from the socket, by ``deadline`` (time.monotonic()) or socket.timeout.

    Raises:
        TimeoutError (socket.timeout): the deadline passed.
        PeerClosedError: the peer closed first (``partial`` when some bytes of the message had arrived, that is
            ``started`` or part of ``into``).
    """
    got = 0
    while got < len(into):
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("timed out")
            sock.settimeout(remaining)
        n = sock.recv_into(into[got:])
        if n == 0:
            raise PeerClosedError("the peer closed the connection", partial=started or got > 0)
        got += n


HeaderCheck = Callable[[Prefix, dict[str, Any], ArraySpec | None], None]
"""Called by read_message with the prefix, the header and the payload's (dtype, shape) before the payload is
allocated or read; it raises to refuse the message (the payload is then left unread)."""


def read_message(
    sock: socket.socket,
    limits: WireLimits,
    first_byte_deadline: float | None,
    message_timeout_s: float | None = None,
    check_header: HeaderCheck | None = None,
    on_start: Callable[[], None] | None = None,
) -> Message:
    """Read one message from a socket, allocating only what the checked lengths allow.

    Args:
        first_byte_deadline: monotonic time by which the message must start (the idle limit), or None.
        message_timeout_s: once the first byte came, the rest must come within this (a half-sent message then
            silence is cut off); None: the first deadline bounds the whole message.
        check_header: see :data:`HeaderCheck` (the service refuses a request's shape from its header, so a
            payload it would refuse is never read, and reserves the request's memory there); the time it takes
            is added to the message's deadline.
        on_start: called once the message's first byte has come (the service tracks idle connections by it).
    """
    prefix_buffer = bytearray(PREFIX_BYTES)
    view = memoryview(prefix_buffer)
    recv_exact(sock, view[:1], first_byte_deadline, started=False)
    if on_start is not None:
        on_start()
    deadline = first_byte_deadline if message_timeout_s is None else time.monotonic() + message_timeout_s
    recv_exact(sock, view[1:], deadline)
    prefix = parse_prefix(bytes(prefix_buffer), limits)
    header_buffer = bytearray(prefix.header_bytes)
    recv_exact(sock, memoryview(header_buffer), deadline)
    header = parse_header(bytes(header_buffer))
    spec = array_spec(header, prefix.payload_bytes)
    if check_header is not None:
        began = time.monotonic()
        check_header(prefix, header, spec)
        if deadline is not None:  # time the reader spent in the check (waiting for room, say) is not the peer's
            deadline += time.monotonic() - began
    array: FloatArray | None = None
    if spec is not None:
        dtype, shape = spec
        array = np.empty(shape, dtype=dtype)
        recv_exact(sock, array.reshape(-1).view(np.uint8).data, deadline)  # straight into the array's memory
    return Message(prefix.type, prefix.request_id, header, array, prefix.version)


def drain(sock: socket.socket, nbytes: int, deadline: float) -> None:
    """Read and discard ``nbytes`` from the socket by ``deadline`` (time.monotonic()), through a 64 KiB buffer:
    the payload of a message refused from its header, so the stream stays in step without the payload ever
    being held. Raises as :func:`recv_exact` does."""
    buffer = memoryview(bytearray(min(nbytes, 65536)))
    left = nbytes
    while left > 0:
        step = min(left, len(buffer))
        recv_exact(sock, buffer[:step], deadline)
        left -= step
