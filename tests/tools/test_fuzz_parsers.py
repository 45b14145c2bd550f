"""Fuzzing of the three parsers: the driver's packet parser and reply codec, the firmware's
receiver, controller line and emulated device, and the service's message parser.

The generators, mutations and property checks live in ``opu_tools.fuzz`` (``opu fuzz`` runs them for 100,000
cases a parser without shrinking); here hypothesis drives them with shrinking, a few hundred examples each.
Every check raises ``FuzzFailure`` when a property breaks; any exception other than a parser's documented ones
escapes and fails the test. Properties: no undocumented exception; bounded work (bounded input, every call
returns; socket reads on a closed stream must end with PeerClosedError, never a timeout); bounded buffers;
length fields checked before allocation (tracemalloc); results independent of chunking; the driver and the
firmware codecs agree byte for byte (two implementations of docs/protocol.md, written apart); resynchronisation
by one byte after a bad header (section 1.4); the emulator answers right after garbage on both links.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import struct
import time
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dfa_client import wire
from dfa_client.errors import ProtocolError as WireProtocolError
from firmware_sim import wire as fw
from opu_driver.errors import ProtocolError
from opu_driver.protocol import MAX_PAYLOAD, PacketFault, PacketParser, RawFramePacket, encode_raw_frame
from opu_tools import fuzz
from tests.support import small_sim

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

rngs = st.randoms(use_true_random=False)
cut_lists = st.lists(st.integers(min_value=0, max_value=2000), max_size=8)
max_payloads = st.sampled_from([64, 4096, MAX_PAYLOAD])
SMALL_ALLOCATION_BYTES = 256 * 1024
"""A bound far below every length the tests announce (16 MiB and up) and far above what parsing a few hundred
bytes needs: a peak above it means something was allocated from a length field."""


def _packet(rng: random.Random, camera: bool) -> bytes:
    return fuzz.make_camera_packet(rng) if camera else fuzz.make_out_packet(rng)


# ------------------------------------------------------------------------------------------------ packets
@FAST
@given(data=st.binary(max_size=400), cuts=cut_lists, max_payload=max_payloads)
def test_random_bytes_never_break_either_packet_parser(data, cuts, max_payload) -> None:
    fuzz.check_packet_stream(data, cuts, max_payload)


@FAST
@given(
    rng=rngs,
    camera=st.booleans(),
    mutation=st.sampled_from(["flip", "insert", "delete", "truncate", "length"]),
    position=st.integers(min_value=0, max_value=2**32),
    extra=st.binary(min_size=1, max_size=8),
    length=st.sampled_from([MAX_PAYLOAD + 1, 2**32 - 1, 0, 1, 31, 4096]),
    cuts=cut_lists,
)
def test_mutated_packets_between_valid_ones(rng, camera, mutation, position, extra, length, cuts) -> None:
    packet = _packet(rng, camera)
    mutated = {
        "flip": lambda: fuzz.flip_bit(packet, position),
        "insert": lambda: fuzz.insert_bytes(packet, position, extra),
        "delete": lambda: fuzz.delete_bytes(packet, position, len(extra)),
        "truncate": lambda: fuzz.truncate(packet, position),
        "length": lambda: fuzz.set_packet_length(packet, length),
    }[mutation]()
    before, after = _packet(rng, camera), _packet(rng, not camera)
    items = fuzz.check_packet_stream(before + mutated + after, cuts, MAX_PAYLOAD)
    assert items, "the valid packet in front of the mutation was lost"
    assert not isinstance(items[0], PacketFault)


@FAST
@given(rng=rngs, cuts=cut_lists, max_payload=max_payloads)
def test_streams_of_packets_junk_and_mutations_arbitrarily_chunked(rng, cuts, max_payload) -> None:
    fuzz.check_packet_stream(fuzz.make_packet_stream(rng, max_payload), cuts, max_payload)


@FAST
@given(rng=rngs, n_packets=st.integers(min_value=1, max_value=5), cuts=cut_lists, max_payload=max_payloads)
def test_valid_packets_behind_junk_are_all_found(rng, n_packets, cuts, max_payload) -> None:
    """Section 1.4: a wrong header CRC or an over-long length drops one byte, so no real packet is lost."""
    segments = []
    for _ in range(n_packets):
        packet = _packet(rng, rng.random() < 0.5)
        if len(packet) - 20 <= max_payload:
            segments.append((fuzz.make_junk(rng, max_payload) if rng.random() < 0.8 else b"", packet))
    fuzz.check_resync(segments, cuts, max_payload)


def test_truncation_at_every_point_then_a_valid_packet() -> None:
    """A packet cut anywhere in its header costs only itself; cut after a whole header, the receiver trusts
    the length and waits: the next packet completes it (a payload CRC fault, documented) or is found after."""
    rng = random.Random(5)
    for camera in (True, False):
        packet, nxt = _packet(rng, camera), _packet(rng, camera)
        for n in range(len(packet)):
            items = fuzz.check_packet_stream(packet[:n] + nxt, [n, n + 7], MAX_PAYLOAD)
            kinds = [("crc" if isinstance(i, PacketFault) and i.kind == "crc" else "ok") for i in items]
            if n < 16:
                assert kinds == ["ok"], (camera, n, items)
            else:
                assert kinds in ([], ["crc"], ["crc", "ok"]), (camera, n, items)


def test_huge_length_fields_are_refused_without_allocating() -> None:
    """A header whose length exceeds the limit (CRC right) costs one byte; one within the 16 MiB limit makes the
    receiver wait, holding only the bytes received. Neither allocates from the length field."""
    nxt = fuzz.make_camera_packet(random.Random(1))
    for length, found in ((MAX_PAYLOAD + 1, True), (2**32 - 1, True), (MAX_PAYLOAD, False)):
        header = struct.pack("<4sBBHI", b"OPU1", 0x10, 0, 0, length)
        data = header + struct.pack("<I", zlib.crc32(header)) + b"tiny" + nxt
        for receiver in (PacketParser(), fw.PacketStream()):
            tracemalloc.start()
            try:
                items = receiver.feed(data)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert peak < SMALL_ALLOCATION_BYTES, (type(receiver).__name__, length, peak)
            assert len(items) == int(found), (type(receiver).__name__, length, items)
            assert receiver.buffered == (0 if found else len(data))


@FAST
@given(payload=st.binary(max_size=200), ptype=st.integers(min_value=0, max_value=255))
def test_payload_decoders_raise_only_protocol_error(payload, ptype) -> None:
    from opu_driver.protocol import CameraFrame, decode_payload

    try:
        item = decode_payload(ptype, payload)
    except ProtocolError:
        return
    if isinstance(item, CameraFrame):
        try:
            item.to_array()
        except ProtocolError:
            pass
    fault = fw.decode_out_packet(fw.Envelope(ptype, payload), 768)
    assert isinstance(fault, (fw.StreamFault, fw.LayoutPacket, fw.RawFramePacket, fw.FeatureFramePacket))


# ------------------------------------------------------------------------------------------------ serial line
@FAST
@given(rng=rngs, cuts=cut_lists, max_line_bytes=st.sampled_from([8, 64, 4096]))
def test_reply_lines_split_and_parse_whatever_the_chunking(rng, cuts, max_line_bytes) -> None:
    fuzz.check_reply_lines(fuzz.make_reply_stream(rng, max_line_bytes), cuts, max_line_bytes)


@FAST
@given(data=st.binary(max_size=300), cuts=cut_lists)
def test_random_reply_bytes(data, cuts) -> None:
    fuzz.check_reply_lines(data, cuts, 16)


@FAST
@given(rng=rngs, data=st.binary(max_size=300), use_random=st.booleans(), cuts=cut_lists)
def test_controller_answers_every_line_and_recovers(rng, data, use_random, cuts) -> None:
    fuzz.check_controller(data if use_random else fuzz.make_command_stream(rng), cuts)


# ------------------------------------------------------------------------------------------------ the emulator
@pytest.fixture(scope="module")
def device_harness() -> fuzz.DeviceHarness:
    return fuzz.DeviceHarness(seed=3, expose_every=1)


@FEW
@given(rng=rngs)
def test_emulator_answers_right_after_garbage_on_both_links(device_harness, rng) -> None:
    """Garbage on the OUT endpoint and the serial line, then a raw frame: it is queued and its camera frame
    equals the reference (noise off), or, when the garbage left a packet open, the frame is refused with
    E_CRC (or still awaited) and is accepted once the stream is completed."""
    garbage = fuzz.make_device_garbage(rng, device_harness.mirror_bytes)
    device_harness.check(garbage, fuzz.make_command_stream(rng), rng.randint(0, 2**32 - 2), expose=True)


def test_emulator_refuses_a_frame_that_completes_an_open_packet_then_recovers(device_harness) -> None:
    """The documented error path, forced: a whole header announcing 100 bytes, then the frame."""
    header = struct.pack("<4sBBHI", b"OPU1", 2, 0, 0, 100)
    open_packet = header + struct.pack("<I", zlib.crc32(header))
    stats = fuzz.CaseStats()
    device_harness.check([open_packet], b"", 42, stats, expose=True)
    assert stats.documented["firmware.E_CRC (request absorbed)"] == 1


def test_an_open_packet_of_exactly_12_bytes_takes_the_next_header_as_a_valid_payload(device_harness) -> None:
    """Found by the long run: the header CRC of the next packet is the CRC-32 of its first 12 bytes, so a
    packet left open announcing 12 bytes completes with a right payload CRC and is refused by its type
    (E_LENGTH here) instead of E_CRC; the frame is lost either way and is accepted once resent."""
    header = struct.pack("<4sBBHI", b"OPU1", 3, 0, 0, 12)
    stats = fuzz.CaseStats()
    device_harness.check([header + struct.pack("<I", zlib.crc32(header))], b"", 43, stats, expose=True)
    assert stats.documented["firmware.E_LENGTH (request absorbed)"] == 1


# ------------------------------------------------------------------------------------------------ the service
@FAST
@given(data=st.binary(max_size=300))
def test_random_bytes_as_service_messages(data) -> None:
    fuzz.check_service_bytes(data)


@FAST
@given(
    rng=rngs,
    mutation=st.sampled_from(["flip", "insert", "delete", "truncate", "header", "payload"]),
    position=st.integers(min_value=0, max_value=2**32),
    extra=st.binary(min_size=1, max_size=8),
    length=st.sampled_from([0, 1, 28, 64 * 1024 + 1, 2**32 - 1, 2**63, 2**64 - 1]),
)
def test_mutated_service_messages(rng, mutation, position, extra, length) -> None:
    message = fuzz.make_service_message(rng) + fuzz.make_service_message(rng)
    mutated = {
        "flip": lambda: fuzz.flip_bit(message, position),
        "insert": lambda: fuzz.insert_bytes(message, position, extra),
        "delete": lambda: fuzz.delete_bytes(message, position, len(extra)),
        "truncate": lambda: fuzz.truncate(message, position),
        "header": lambda: fuzz.set_message_lengths(message, header_bytes=length),
        "payload": lambda: fuzz.set_message_lengths(message, payload_bytes=length),
    }[mutation]()
    fuzz.check_service_bytes(mutated)


@FAST
@given(rng=rngs)
def test_service_message_streams(rng) -> None:
    fuzz.check_service_bytes(fuzz.make_service_stream(rng))


@pytest.mark.parametrize("header", [{"dtype": [1], "shape": [1]}, {"dtype": {}, "shape": []}, {"dtype": 4}])
def test_a_dtype_that_is_not_a_string_is_a_protocol_error(header) -> None:
    """Regression: a JSON list or object as dtype crashed the lookup with TypeError (unhashable), which the
    service then met as an unexpected error and closed the connection without the ERROR it documents."""
    text = json.dumps(header).encode()
    message = wire.PREFIX.pack(wire.MAGIC, 1, 3, 0, 9, len(text), 4) + text + bytes(4)
    with pytest.raises(WireProtocolError, match="dtype"):
        wire.decode(message)
    fuzz.check_service_bytes(message)


def test_huge_service_lengths_are_refused_before_reading_or_allocating() -> None:
    limits = wire.WireLimits()
    for header_bytes, payload_bytes in ((2**32 - 1, 0), (0, 2**63), (0, 2**64 - 1), (limits.max_header_bytes + 1, 0)):
        message = wire.PREFIX.pack(wire.MAGIC, 1, 3, 0, 1, header_bytes, payload_bytes) + b"tiny"
        left, right = socket.socketpair()
        try:
            left.sendall(message)
            tracemalloc.start()
            try:
                with pytest.raises(wire.MessageTooLargeError):
                    wire.read_message(right, limits, time.monotonic() + 5)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            right.setblocking(False)
            assert right.recv(16) == b"tiny", "bytes after the refused prefix were read"
        finally:
            left.close()
            right.close()
        assert peak < SMALL_ALLOCATION_BYTES, (header_bytes, payload_bytes, peak)
        with pytest.raises(wire.MessageTooLargeError):
            wire.decode(message)
    # A shape whose size disagrees with the payload length is refused before the array is allocated.
    text = json.dumps({"dtype": "<f8", "shape": [2**31, 2**31]}).encode()
    message = wire.PREFIX.pack(wire.MAGIC, 1, 3, 0, 1, len(text), 8) + text + bytes(8)
    with pytest.raises(WireProtocolError, match="shape"):
        wire.decode(message)


@pytest.fixture(scope="module")
def service():
    from opu_driver.service import OpuService

    # token="": no token, so that fuzzed HELLOs reach the option checks and the request loop
    svc = OpuService(
        small_sim("noise=0&seed=5"), token="", hello_timeout_s=2.0, message_timeout_s=1.0, idle_timeout_s=5.0
    ).start()
    yield svc
    svc.stop(timeout_s=5)


DOCUMENTED_KINDS = {
    "ProtocolError",
    "MessageTooLarge",
    "ProtocolVersionError",
    "InvalidInputError",
    "AuthenticationError",
    "TooManyClients",
    "RequestTooLarge",
    "ServiceBusy",
}


def _exchange(svc, data: bytes, timeout_s: float = 5.0) -> bytes:
    with socket.create_connection(svc.address, timeout=timeout_s) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the service may close first, having refused the start of the garbage
            pass
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return received
            if not chunk:
                return received
            received += chunk


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(rng=rngs, raw=st.binary(max_size=100), use_raw=st.booleans())
def test_service_answers_garbage_with_a_documented_error_and_keeps_serving(service, caplog, rng, raw, use_raw) -> None:
    """The server reads through dfa_client.wire: whatever a connection sends, it gets at most a WELCOME and
    ERRORs of documented kinds, then the connection is closed; the service never meets an unexpected error and
    still welcomes a valid client."""
    caplog.set_level(logging.ERROR, logger="opu_driver.service")
    reply = _exchange(service, raw if use_raw else fuzz.make_service_stream(rng))
    offset = 0
    while offset < len(reply):
        prefix = wire.parse_prefix(reply[offset : offset + wire.PREFIX_BYTES], wire.WireLimits())
        end = offset + wire.PREFIX_BYTES + prefix.header_bytes + prefix.payload_bytes
        message = wire.decode(reply[offset:end])
        assert message.type in (wire.MessageType.WELCOME, wire.MessageType.ERROR), message
        if message.type == wire.MessageType.ERROR:
            assert message.header["kind"] in DOCUMENTED_KINDS, message.header
        offset = end
    assert not [r for r in caplog.records if "unexpected" in r.getMessage()], caplog.text
    hello = {
        "protocol_version": 1,
        "token": None,
        "n_components": 10,
        "n_features": 16,
        "scheme": "four_frame",
        "n_bits": None,
        "max_batch": 4,
    }
    welcome = wire.decode(_exchange(service, wire.encode(wire.MessageType.HELLO, 1, hello))[:])
    assert welcome.type == wire.MessageType.WELCOME


def test_service_refuses_a_non_string_dtype_with_an_error(service, caplog) -> None:
    """Regression for the TypeError above, through the server: an ERROR ProtocolError, no unexpected error."""
    caplog.set_level(logging.ERROR, logger="opu_driver.service")
    text = json.dumps({"dtype": ["<f4"], "shape": [0]}).encode()  # a HELLO: no payload allowed
    reply = _exchange(service, wire.PREFIX.pack(wire.MAGIC, 1, 1, 0, 3, len(text), 0) + text)
    message = wire.decode(reply)
    assert message.type == wire.MessageType.ERROR and message.header["kind"] == "ProtocolError", message
    assert not caplog.records, caplog.text


# ------------------------------------------------------------------------------------------------ the checks
def test_the_checks_catch_a_broken_parser(monkeypatch) -> None:
    """The properties can fail: a receiver that loses a packet behind junk is caught, and so is a line reader
    without its bound (a runaway line grows its buffer)."""
    from opu_driver import protocol

    class LosesAPacket(PacketParser):
        def feed(self, data):
            items = super().feed(data)
            return [i for i in items if not isinstance(i, RawFramePacket) or i.dmd_frame_id != 5]

    monkeypatch.setattr(protocol, "PacketParser", LosesAPacket)
    junk = b"OPU1" + bytes(12)
    with pytest.raises(fuzz.FuzzFailure):
        fuzz.check_resync([(junk, encode_raw_frame(5, bytes(768)))], [], MAX_PAYLOAD)

    class Unbounded(protocol.LineReader):
        def __init__(self, max_line_bytes: int) -> None:
            super().__init__(10**9)

    monkeypatch.setattr(protocol, "LineReader", Unbounded)
    with pytest.raises(fuzz.FuzzFailure):
        fuzz.check_reply_lines(b"x" * 100, [], 16)


def test_the_long_run_is_reproducible_and_counts_by_type() -> None:
    first = fuzz.run_fuzz(["driver", "service"], cases=40, seed=11, progress=False)
    again = fuzz.run_fuzz(["driver", "service"], cases=40, seed=11, progress=False)
    assert [r.documented for r in first] == [r.documented for r in again]
    assert all(r.ok and r.cases == 40 for r in first)
    text = fuzz.format_report(first)
    assert "driver: 40 cases" in text and "service: 40 cases" in text


def test_cli_fuzz_exits_0_and_prints_a_summary(capsys) -> None:
    from opu_tools.cli import main

    assert main(["fuzz", "--cases", "12", "--parser", "firmware", "--seed", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "firmware: 12 cases (seed 2)" in out and "0 undocumented exceptions" in out


def test_cli_fuzz_exits_1_on_an_undocumented_exception(monkeypatch, capsys) -> None:
    from opu_tools import cli

    def broken(*args, **kwargs):
        raise KeyError("planted")

    monkeypatch.setattr(fuzz, "check_service_bytes", broken)
    assert cli.main(["fuzz", "--cases", "3", "--parser", "service", "--no-progress"]) == 1
    assert "UNDOCUMENTED KeyError: 3" in capsys.readouterr().out
