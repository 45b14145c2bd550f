"""The OPU service's message codec (dfa_client.wire): round trips, and refusal of bad, truncated or oversized
messages before anything is allocated for them."""

from __future__ import annotations

import json
import socket
import struct
import threading

import numpy as np
import pytest

from dfa_client import wire
from dfa_client.errors import ProtocolVersionError
from dfa_client.wire import (
    MAGIC,
    PREFIX,
    PREFIX_BYTES,
    MessageTooLargeError,
    MessageType,
    PeerClosedError,
    ProtocolError,
    WireLimits,
)


def raw(
    msg_type: int = MessageType.PROJECT,
    request_id: int = 1,
    header: bytes = b"",
    payload: bytes = b"",
    magic: bytes = MAGIC,
    version: int = wire.PROTOCOL_VERSION,
    flags: int = 0,
    header_len: int | None = None,
    payload_len: int | None = None,
) -> bytes:
    """A hand-made message, with lengths that may lie."""
    return (
        PREFIX.pack(
            magic,
            version,
            msg_type,
            flags,
            request_id,
            len(header) if header_len is None else header_len,
            len(payload) if payload_len is None else payload_len,
        )
        + header
        + payload
    )


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float64).reshape(3, 4) - 5.5,
        np.array([[np.finfo(np.float64).max, -np.finfo(np.float64).tiny, -0.0]]),
        np.linspace(-1, 1, 7, dtype=np.float32),
        np.zeros((0, 9), dtype=np.float32),
        np.asfortranarray(np.ones((4, 3))),
        np.arange(6, dtype=">f8").reshape(2, 3),  # big-endian input goes out little-endian
    ],
)
def test_array_round_trip_is_exact(array: np.ndarray) -> None:
    data = wire.encode(MessageType.PROJECT, 2**64 - 1, {"note": "é"}, array)
    message = wire.decode(data)
    assert message.type is MessageType.PROJECT and message.request_id == 2**64 - 1
    assert message.header["note"] == "é"
    assert message.array.shape == array.shape and message.array.dtype.itemsize == array.dtype.itemsize
    assert message.array.dtype.str[0] in "<|="
    np.testing.assert_array_equal(message.array, array)
    # The payload is raw little-endian: it sits at the end of the message, byte for byte.
    assert data.endswith(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())


def test_header_only_messages_and_prefix_layout() -> None:
    data = wire.encode(MessageType.HELLO, 0, {"protocol_version": 1, "token": None, "n_features": None})
    assert data[:4] == b"OPUW" and len(data) == PREFIX_BYTES + struct.unpack_from("<I", data, 16)[0]
    assert struct.unpack_from("<HBBQ", data, 4) == (1, 1, 0, 0)
    message = wire.decode(data)
    assert message.header == {"protocol_version": 1, "token": None, "n_features": None} and message.array is None
    bye = wire.decode(wire.encode(MessageType.BYE))
    assert bye.type is MessageType.BYE and bye.header == {} and len(wire.encode(MessageType.BYE)) == PREFIX_BYTES


def test_encode_refuses_what_the_format_cannot_carry() -> None:
    with pytest.raises(ProtocolError):
        wire.encode(MessageType.PROJECT, 1, None, np.ones((2, 2), dtype=np.int64))
    with pytest.raises(ProtocolError):
        wire.encode(MessageType.PROJECT, 1, None, np.ones((2, 2, 2)))
    with pytest.raises(ProtocolError):
        wire.encode(MessageType.PROJECT, -1)
    with pytest.raises(ValueError):  # NaN has no JSON spelling: never sent as a header value
        wire.encode(MessageType.ERROR, 1, {"x": float("nan")})


@pytest.mark.parametrize(
    "data, error",
    [
        (b"", ProtocolError),
        (b"OPUW\x01", ProtocolError),  # truncated prefix
        (raw(magic=b"HTTP"), ProtocolError),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", ProtocolError),
        (raw(msg_type=99), ProtocolError),
        (raw(flags=1), ProtocolError),
        (raw(version=2), ProtocolVersionError),
        (raw(header=b"{not json"), ProtocolError),
        (raw(header=b"[1, 2]"), ProtocolError),
        (raw(header=b'{"x": NaN}'), ProtocolError),
        (raw(header=b"\xff\xfe"), ProtocolError),
        (raw(header=b'{"dtype": "<f8", "shape": [2, 2]}', payload=bytes(31)), ProtocolError),  # one byte short
        (raw(header=b'{"dtype": "<i8", "shape": [1]}', payload=bytes(8)), ProtocolError),  # not a float dtype
        (raw(header=b'{"dtype": "|O", "shape": [1]}', payload=bytes(8)), ProtocolError),  # never objects
        (raw(header=b'{"dtype": "<f8", "shape": [1, 1, 1]}', payload=bytes(8)), ProtocolError),
        (raw(header=b'{"dtype": "<f8", "shape": [-1]}', payload=b""), ProtocolError),
        (raw(header=b'{"dtype": "<f8", "shape": [true]}', payload=bytes(8)), ProtocolError),
        # zero-size shapes with a huge dimension: 0 bytes, but numpy cannot make the array (refused, not ValueError)
        (raw(header=b'{"dtype": "<f8", "shape": [0, 1180591620717411303424]}'), ProtocolError),
        (raw(header=b'{"dtype": "<f4", "shape": [2147483649, 0]}'), ProtocolError),
        (raw(payload=bytes(8)), ProtocolError),  # a payload with no dtype and shape
        (raw(header=b"{}", header_len=10), ProtocolError),  # truncated header
        (wire.encode(MessageType.BYE) + b"x", ProtocolError),  # trailing bytes
    ],
)
def test_decode_refuses_bad_messages(data: bytes, error: type) -> None:
    with pytest.raises(error):
        wire.decode(data)


def test_lengths_above_the_limits_are_refused_from_the_prefix() -> None:
    limits = WireLimits(max_header_bytes=100, max_payload_bytes=1000)
    with pytest.raises(MessageTooLargeError):
        wire.parse_prefix(raw(header_len=101)[:PREFIX_BYTES], limits)
    with pytest.raises(MessageTooLargeError):
        wire.parse_prefix(raw(payload_len=2**64 - 1)[:PREFIX_BYTES], limits)
    ok = wire.parse_prefix(raw(header_len=100, payload_len=1000)[:PREFIX_BYTES], limits)
    assert (ok.header_bytes, ok.payload_bytes) == (100, 1000)


def _pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    return a, b


def test_socket_round_trip_with_a_large_payload() -> None:
    a, b = _pair()
    array = np.random.default_rng(0).standard_normal((300, 1000))  # 2.4 MB: written without a copy
    sender = threading.Thread(target=wire.send_message, args=(a, MessageType.PROJECT, 7, {"k": 1}, array))
    sender.start()
    message = wire.read_message(b, WireLimits(), None)
    sender.join(5)
    np.testing.assert_array_equal(message.array, array)
    assert message.request_id == 7 and message.header["k"] == 1
    a.close()
    b.close()


def test_socket_huge_length_field_is_refused_without_reading_or_allocating() -> None:
    a, b = _pair()
    # Claims a 16 EiB payload: refused from the 28-byte prefix alone (an allocation would fail loudly).
    a.sendall(raw(header=b'{"dtype": "<f8", "shape": [1]}', payload_len=2**64 - 8))
    with pytest.raises(MessageTooLargeError):
        wire.read_message(b, WireLimits(max_payload_bytes=1 << 20), None)
    a.close()
    b.close()


def test_socket_half_sent_message_times_out_and_closed_peer_is_reported() -> None:
    import time

    a, b = _pair()
    data = wire.encode(MessageType.PROJECT, 3, None, np.ones((2, 2)))
    a.sendall(data[: PREFIX_BYTES + 5])  # then silence
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        wire.read_message(b, WireLimits(), time.monotonic() + 5, message_timeout_s=0.2)
    assert time.monotonic() - started < 4  # cut off by message_timeout_s, not the 5 s idle deadline
    a.close()
    with pytest.raises(PeerClosedError) as info:
        wire.read_message(b, WireLimits(), time.monotonic() + 5)
    assert not info.value.partial  # a clean close between messages
    b.close()

    a, b = _pair()
    a.sendall(data[:10])
    a.close()
    with pytest.raises(PeerClosedError) as info:
        wire.read_message(b, WireLimits(), time.monotonic() + 5)
    assert info.value.partial
    b.close()


def test_header_json_is_plain_data() -> None:
    # No pickle, no eval: a header is JSON and comes back as plain dicts, lists, strings and numbers.
    payload = {"kind": "__import__('os').system('x')", "nested": {"a": [1, 2.5, None, True]}}
    message = wire.decode(wire.encode(MessageType.ERROR, 5, payload))
    assert message.header == payload
    assert json.loads(wire.encode(MessageType.ERROR, 5, payload)[PREFIX_BYTES:]) == payload


@pytest.mark.parametrize("shape", [[0, 2**70], [2**31 + 1, 0], [0, 2**63]])
def test_socket_huge_zero_size_shape_is_a_protocol_error(shape: list[int]) -> None:
    a, b = _pair()
    a.sendall(raw(header=json.dumps({"dtype": "<f8", "shape": shape}).encode()))
    with pytest.raises(ProtocolError, match="within 0"):
        wire.read_message(b, WireLimits(), None)
    a.close()
    b.close()
    # The largest allowed dimension still decodes (a zero-size array of it).
    message = wire.decode(raw(header=json.dumps({"dtype": "<f8", "shape": [0, wire.MAX_DIMENSION]}).encode()))
    assert message.array.shape == (0, wire.MAX_DIMENSION)


def test_a_header_check_refuses_before_the_payload_is_read() -> None:
    a, b = _pair()
    # Only the prefix and header of a 1 MB message are sent: the check runs on them and the read stops there.
    header = json.dumps({"dtype": "<f8", "shape": [1000, 125]}).encode()
    a.sendall(raw(header=header, payload_len=1000 * 125 * 8))
    seen = []

    def check(prefix, header, spec):
        seen.append((prefix.request_id, spec[1]))
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError, match="refused"):
        wire.read_message(b, WireLimits(), None, check_header=check)
    assert seen == [(1, (1000, 125))]
    a.close()
    b.close()


def test_protocol_error_is_part_of_the_error_tree() -> None:
    from dfa_client import errors

    assert wire.ProtocolError is errors.ProtocolError and issubclass(errors.ProtocolError, errors.DfaError)
    assert issubclass(wire.MessageTooLargeError, errors.ProtocolError)
    assert issubclass(errors.DeviceChangedError, errors.DfaError)


@pytest.mark.parametrize("url", ["ftp://host?token=SECRET", "tcp://[::1?token=SECRET", "nonsense token=SECRET"])
def test_connect_never_quotes_a_token(url):
    import dfa_client

    with pytest.raises(dfa_client.UnsupportedUrlError) as info:
        dfa_client.connect(url, 4)
    assert "SECRET" not in str(info.value)
