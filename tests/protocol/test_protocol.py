"""Tests of opu_driver.protocol: pixel formats, packets, the stream parser and the controller-line codec.

All checks are exact (the codec is integer arithmetic on bytes), so there are no tolerances here.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from opu_driver.errors import DeviceRefusedError, InvalidInputError, ProtocolError
from opu_driver.protocol import (
    BLANK_FRAME_ID,
    MAX_FEATURES,
    REGISTER_ACCESS,
    CameraFrame,
    DeviceErrorCode,
    FeatureFramePacket,
    FrameFlags,
    LayoutPacket,
    LineReader,
    PacketFault,
    PacketParser,
    PacketType,
    PixelFormat,
    RawFramePacket,
    Register,
    SeqControl,
    Status,
    bits_per_pixel,
    bulk_write_timeout_s,
    crc32,
    decode_payload,
    decode_pixels,
    encode_camera_frame,
    encode_feature_frame,
    encode_feature_frames,
    encode_header,
    encode_layout,
    encode_packet,
    encode_pixels,
    encode_raw_frame,
    encode_raw_frames,
    format_command,
    format_value,
    output_dtype,
    parse_error_entry,
    parse_reply,
    payload_size,
)

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------------------ constants


def test_crc32_check_value_and_continuation():
    assert crc32(b"123456789") == 0xCBF43926
    assert crc32(b"456789", crc32(b"123")) == 0xCBF43926
    assert crc32(memoryview(b"x123456789")[1:]) == 0xCBF43926


def test_constants_follow_the_document():
    assert PacketType.CAMERA_FRAME == 0x10 and PacketType.LAYOUT == 1
    assert Register.EXPOSURE_US == 0x28 and Register.IN_FIFO_BYTES == 0x2E and Register.SOFT_TRIGGER == 0x15
    assert len(Register) == 29
    assert REGISTER_ACCESS[Register.SEQ_CONTROL] == "W" and REGISTER_ACCESS[Register.ROI_W] == "RW"
    assert REGISTER_ACCESS[Register.LAST_ERROR] == "R"
    assert Status.FIFO_OVERFLOWED == 64 and Status.INTERLOCK_OK == 8
    assert (SeqControl.START, SeqControl.ABORT, SeqControl.CLEAR_LAYOUT) == (1, 2, 3)
    assert FrameFlags.SATURATED == 1 and FrameFlags.DARK == 2
    assert bulk_write_timeout_s(10_000_000) == pytest.approx(2.0)


def test_device_error_descriptions():
    assert DeviceErrorCode.describe(7) == "E_SEQ_FULL: sequence memory full"
    assert DeviceErrorCode.describe(DeviceErrorCode.E_CRC).startswith("E_CRC: ")
    assert "unknown" in DeviceErrorCode.describe(99)
    assert all(code.meaning for code in DeviceErrorCode)
    assert len(DeviceErrorCode) == 14


# ------------------------------------------------------------------------------------------------ pixels


def _reference_pack(fmt: PixelFormat, values: np.ndarray) -> bytes:
    """Section 1.5 read literally, with numpy bit arrays: an independent reference for the packed formats."""
    bits = bits_per_pixel(fmt)
    stream = ((values.astype(np.int64)[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return np.packbits(stream, bitorder="little").tobytes()


@st.composite
def pixel_case(draw):
    fmt = draw(st.sampled_from(list(PixelFormat)))
    n = draw(st.integers(1, 70))
    top = (1 << bits_per_pixel(fmt)) - 1
    values = draw(st.lists(st.integers(0, top), min_size=n, max_size=n))
    return fmt, np.array(values, dtype=np.int64)


@SETTINGS
@given(pixel_case())
def test_pixels_round_trip(case):
    fmt, values = case
    data = encode_pixels(fmt, values)
    assert len(data) == payload_size(fmt, values.size)
    decoded = decode_pixels(fmt, data, values.size)
    assert decoded.dtype == output_dtype(fmt)
    assert np.array_equal(decoded, values)
    if fmt in (PixelFormat.MONO10P, PixelFormat.MONO12P):
        assert data == _reference_pack(fmt, values)
    out = np.full(values.size, 7, dtype=output_dtype(fmt))
    assert decode_pixels(fmt, memoryview(data), values.size, out=out) is out
    assert np.array_equal(out, values)


def test_payload_sizes():
    assert [payload_size(f, 9) for f in PixelFormat] == [9, 18, 18, 12, 14]
    assert [bits_per_pixel(f) for f in PixelFormat] == [8, 10, 12, 10, 12]
    with pytest.raises(InvalidInputError):
        payload_size(9, 3)


def test_mono12p_matches_the_documents_example():
    p0, p1 = 0xABC, 0x123
    assert encode_pixels(PixelFormat.MONO12P, [p0, p1]) == bytes([p0 & 0xFF, (p0 >> 8) | ((p1 & 0x0F) << 4), p1 >> 4])


def test_pixel_encoding_refuses_bad_values():
    with pytest.raises(InvalidInputError):
        encode_pixels(PixelFormat.MONO10, [1024])
    with pytest.raises(InvalidInputError):
        encode_pixels(PixelFormat.MONO8, [-1])
    with pytest.raises(InvalidInputError):
        encode_pixels(PixelFormat.MONO8, [1.5])
    with pytest.raises(InvalidInputError):
        encode_pixels(9, [1])


def test_pixel_decoding_refuses_bad_bytes():
    with pytest.raises(ProtocolError):
        decode_pixels(PixelFormat.MONO8, b"\x00" * 3, 4)  # wrong length
    with pytest.raises(ProtocolError):
        decode_pixels(PixelFormat.MONO10, struct.pack("<2H", 5, 0x400), 2)  # bit 10 set
    with pytest.raises(ProtocolError):
        decode_pixels(PixelFormat.MONO12P, bytes([0, 0x10]), 1)  # padding bit set after one 12-bit pixel
    with pytest.raises(ProtocolError):
        decode_pixels(PixelFormat.MONO10P, bytes([0, 0x04]), 1)  # padding bit 10 set
    with pytest.raises(ProtocolError):
        decode_pixels(7, b"", 0)
    with pytest.raises(InvalidInputError):
        decode_pixels(PixelFormat.MONO8, b"\x00" * 4, 4, out=np.zeros(4, np.uint16))  # wrong out dtype
    with pytest.raises(InvalidInputError):
        decode_pixels(PixelFormat.MONO8, b"\x00" * 4, 4, out=np.zeros((4, 2), np.uint8)[:, 0])  # strided


# ------------------------------------------------------------------------------------------------ packets

frame_ids = st.integers(0, BLANK_FRAME_ID - 1)


@st.composite
def layouts(draw):
    n_features = draw(st.integers(1, 40))
    n_runs = draw(st.integers(0, 12))
    lengths = draw(st.lists(st.integers(1, 50), min_size=n_runs, max_size=n_runs))
    gaps = draw(st.lists(st.integers(0, 20), min_size=n_runs, max_size=n_runs))
    features = draw(st.lists(st.integers(0, n_features - 1), min_size=n_runs, max_size=n_runs))
    runs, start = [], 0
    for length, gap, feature in zip(lengths, gaps, features, strict=True):
        start += gap
        runs.append((feature, start, length))
        start += length
    order = draw(st.permutations(range(n_runs)))  # runs need not be sorted on the wire
    return n_features, np.array([runs[i] for i in order], dtype=np.uint32).reshape(-1, 3)


@st.composite
def feature_frames(draw):
    n_features = draw(st.integers(1, 100))
    bits = np.array(draw(st.lists(st.integers(0, 1), min_size=n_features, max_size=n_features)), np.uint8)
    return FeatureFramePacket(draw(frame_ids), n_features, np.packbits(bits).tobytes())


@st.composite
def raw_frames(draw):
    return RawFramePacket(draw(frame_ids), draw(st.binary(min_size=1, max_size=300)))


@st.composite
def camera_frames(draw):
    fmt, values = draw(pixel_case())
    w = draw(st.sampled_from([d for d in range(1, values.size + 1) if values.size % d == 0]))
    return CameraFrame(
        camera_frame_id=draw(st.integers(0, 2**32 - 1)),
        dmd_frame_id=draw(st.integers(0, 2**32 - 1)),
        timestamp_us=draw(st.integers(0, 2**64 - 1)),
        exposure_us=draw(st.integers(10, 1_000_000)),
        roi_x=draw(st.integers(0, 2**16 - 1)),
        roi_y=draw(st.integers(0, 2**16 - 1)),
        roi_w=w,
        roi_h=values.size // w,
        pixel_format=fmt,
        flags=FrameFlags(draw(st.integers(0, 3))),
        pixels=encode_pixels(fmt, values),
    )


def encode_any(packet) -> bytes:
    if isinstance(packet, LayoutPacket):
        return encode_layout(packet.n_features, packet.runs)
    if isinstance(packet, RawFramePacket):
        return encode_raw_frame(packet.dmd_frame_id, packet.mirror_bits)
    if isinstance(packet, FeatureFramePacket):
        return encode_feature_frame(packet.dmd_frame_id, packet.n_features, packet.feature_bits)
    return encode_camera_frame(packet)


any_packet = st.one_of(
    layouts().map(lambda fr: LayoutPacket(fr[0], fr[1])), raw_frames(), feature_frames(), camera_frames()
)


@SETTINGS
@given(any_packet)
def test_packet_round_trip(packet):
    data = encode_any(packet)
    assert data[:4] == b"OPU1"
    n = int.from_bytes(data[8:12], "little")
    assert len(data) == 16 + n + 4
    assert int.from_bytes(data[12:16], "little") == zlib.crc32(data[:12])
    assert int.from_bytes(data[-4:], "little") == zlib.crc32(data[16:-4])
    parser = PacketParser()
    assert parser.feed(data) == [packet]
    assert decode_payload(data[4], data[16:-4]) == packet
    assert encode_any(decode_payload(data[4], memoryview(data)[16:-4])) == data


@SETTINGS
@given(camera_frames())
def test_camera_frame_to_array(frame):
    array = frame.to_array()
    assert array.shape == (frame.roi_h, frame.roi_w)
    assert np.array_equal(array.reshape(-1), decode_pixels(frame.pixel_format, frame.pixels, frame.n_pixels))
    out = np.empty((frame.roi_h, frame.roi_w), dtype=output_dtype(frame.pixel_format))
    assert frame.to_array(out=out) is out and np.array_equal(out, array)
    assert frame.saturated == bool(frame.flags & 1) and frame.dark == bool(frame.flags & 2)


@SETTINGS
@given(st.integers(1, 300), st.integers(0, 40), frame_ids, st.data())
def test_feature_frame_batch_equals_single_frames(n_features, n_frames, first_id, data):
    assume(first_id + n_frames - 1 < BLANK_FRAME_ID)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    packed = np.packbits(rng.integers(0, 2, (n_frames, n_features), dtype=np.uint8), axis=1)
    batch = encode_feature_frames(first_id, n_features, packed)
    singles = b"".join(encode_feature_frame(first_id + i, n_features, packed[i].tobytes()) for i in range(n_frames))
    assert batch == singles
    raw = encode_raw_frames(first_id, packed) if n_frames else b""
    assert raw == b"".join(encode_raw_frame(first_id + i, packed[i].tobytes()) for i in range(n_frames))


def test_feature_frame_batch_accepts_non_contiguous_input():
    packed = np.packbits(np.eye(16, dtype=np.uint8), axis=1)  # (16, 2)
    view = packed[::2]
    assert encode_feature_frames(5, 16, view) == encode_feature_frames(5, 16, np.ascontiguousarray(view))


def test_encoders_refuse_bad_input():
    with pytest.raises(InvalidInputError):
        encode_raw_frame(BLANK_FRAME_ID, b"\x00")  # the id that means "no frame"
    with pytest.raises(InvalidInputError):
        encode_raw_frame(1, b"")
    with pytest.raises(InvalidInputError):
        encode_feature_frame(1, 11, b"\x00")  # 11 features need 2 bytes
    with pytest.raises(InvalidInputError):
        encode_feature_frame(1, 11, b"\x00\x01")  # a padding bit set
    with pytest.raises(InvalidInputError):
        encode_feature_frame(1, 0, b"")
    with pytest.raises(InvalidInputError):
        encode_feature_frame(1, MAX_FEATURES + 1, bytes(MAX_FEATURES // 8 + 1))
    packed = np.zeros((3, 2), np.uint8)
    with pytest.raises(InvalidInputError):
        encode_feature_frames(BLANK_FRAME_ID - 2, 16, packed)  # the last id would be BLANK_FRAME_ID
    with pytest.raises(InvalidInputError):
        encode_feature_frames(0, 16, packed.astype(np.float32))
    with pytest.raises(InvalidInputError):
        encode_feature_frames(0, 17, packed)
    with pytest.raises(InvalidInputError):
        encode_feature_frames(0, 12, np.full((3, 2), 0x01, np.uint8))  # padding bits
    with pytest.raises(InvalidInputError):
        encode_layout(2, [(0, 0, 5), (1, 4, 2)])  # mirror 4 in two runs
    with pytest.raises(InvalidInputError):
        encode_layout(2, [(2, 0, 5)])  # feature 2 of 2
    with pytest.raises(InvalidInputError):
        encode_layout(2, [(0, 0, 0)])  # empty run
    with pytest.raises(InvalidInputError):
        encode_layout(0, [])
    with pytest.raises(InvalidInputError):
        encode_layout(2, [(0, 0)])
    with pytest.raises(InvalidInputError):
        encode_header(0x100, 0)


def test_layout_runs_may_touch_and_come_in_any_order():
    data = encode_layout(3, [(1, 10, 5), (0, 0, 10), (2, 15, 1)])
    packet = decode_payload(PacketType.LAYOUT, data[16:-4])
    assert packet.runs.tolist() == [[1, 10, 5], [0, 0, 10], [2, 15, 1]]


def test_decoders_refuse_misfits():
    layout = encode_layout(2, [(0, 0, 3)])[16:-4]
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.LAYOUT, layout[:-1])
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.FEATURE_FRAME, struct.pack("<II", 1, 11) + b"\x00")
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.FEATURE_FRAME, struct.pack("<II", 1, 11) + b"\x00\x01")  # padding bit
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.FEATURE_FRAME, struct.pack("<II", 1, 0))
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.RAW_FRAME, struct.pack("<II", 1, 0))
    frame = encode_camera_frame(CameraFrame(0, 0, 0, 400, 0, 0, 3, 1, PixelFormat.MONO12P, FrameFlags(0), bytes(5)))[
        16:-4
    ]
    assert isinstance(decode_payload(PacketType.CAMERA_FRAME, frame), CameraFrame)
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.CAMERA_FRAME, frame + b"\x00")
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.CAMERA_FRAME, frame[:28] + b"\x09" + frame[29:])  # pixel format 9
    with pytest.raises(ProtocolError):
        decode_payload(PacketType.CAMERA_FRAME, frame[:10])
    with pytest.raises(ProtocolError):
        decode_payload(0x42, b"")


# ------------------------------------------------------------------------------------------------ parser


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, last = [], 0
    for p in points + [len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


@SETTINGS
@given(st.lists(any_packet, min_size=1, max_size=5), st.lists(st.integers(0, 5000), max_size=12))
def test_any_chunking_gives_the_same_packets(packets, cuts):
    stream = b"".join(encode_any(p) for p in packets)
    parser = PacketParser()
    items = [item for piece in _split(stream, cuts) for item in parser.feed(piece)]
    assert items == packets
    assert (parser.junk_bytes, parser.faults, parser.packets, parser.buffered) == (0, 0, len(packets), 0)


fake_magic = st.binary(min_size=0, max_size=14).map(lambda tail: b"OPU1" + tail)
junk_bytes = st.lists(
    st.one_of(st.binary(max_size=40), fake_magic, st.sampled_from([b"O", b"OP", b"OPU"])), max_size=5
).map(b"".join)


@SETTINGS
@given(
    st.lists(st.tuples(junk_bytes, any_packet), min_size=1, max_size=4),
    junk_bytes,
    st.lists(st.integers(0, 3000), max_size=8),
)
def test_junk_is_skipped_counted_and_packets_recovered(pairs, trailing, cuts):
    stream = b"".join(junk + encode_any(p) for junk, p in pairs)
    expected_junk = sum(len(junk) for junk, _ in pairs)
    parser = PacketParser()
    items = [item for piece in _split(stream, cuts) for item in parser.feed(piece)]
    assert items == [p for _, p in pairs]
    assert parser.junk_bytes == expected_junk
    assert parser.faults == 0
    # Trailing junk is counted as soon as it cannot be the start of a packet any more.
    parser.feed(trailing)
    assert parser.junk_bytes + parser.buffered == expected_junk + len(trailing)
    assert parser.buffered <= 3 or trailing.find(b"OPU1") >= 0


@SETTINGS
@given(feature_frames(), camera_frames(), st.data())
def test_corrupt_payload_is_a_fault_and_the_next_packet_parses(first, second, data):
    good = encode_any(first)
    n = len(good) - 20
    index = data.draw(st.integers(16, 16 + n + 3))  # any payload or payload-CRC byte
    bit = data.draw(st.integers(0, 7))
    bad = bytearray(good)
    bad[index] ^= 1 << bit
    parser = PacketParser()
    items = parser.feed(bytes(bad) + encode_any(second))
    assert len(items) == 2
    assert isinstance(items[0], PacketFault) and items[0].kind == "crc"
    assert items[0].packet_type == PacketType.FEATURE_FRAME
    assert isinstance(items[0].to_error(), ProtocolError)
    assert items[1] == second
    assert (parser.faults, parser.packets, parser.junk_bytes) == (1, 1, 0)


@SETTINGS
@given(feature_frames(), raw_frames(), st.data())
def test_corrupt_header_loses_only_that_packet(first, second, data):
    good = encode_any(first)
    index = data.draw(st.integers(4, 15))  # type, flags, reserved, length or header CRC
    bad = bytearray(good)
    bad[index] ^= 1 << data.draw(st.integers(0, 7))
    parser = PacketParser()
    items = parser.feed(bytes(bad) + encode_any(second))
    assert items == [second]
    assert parser.junk_bytes == len(bad)


@SETTINGS
@given(camera_frames(), st.data())
def test_truncated_input_yields_nothing_until_completed(frame, data):
    encoded = encode_any(frame)
    cut = data.draw(st.integers(0, len(encoded) - 1))
    parser = PacketParser()
    assert parser.feed(encoded[:cut]) == []
    assert parser.buffered == cut and parser.junk_bytes == 0
    assert parser.feed(encoded[cut:]) == [frame]
    assert parser.buffered == 0


def test_unknown_type_and_unaccepted_type_and_misfit_are_faults():
    unknown = encode_packet(0x42, b"abc")
    misfit = encode_packet(PacketType.FEATURE_FRAME, struct.pack("<II", 1, 11) + b"\x00")  # 1 byte short
    camera = encode_camera_frame(CameraFrame(1, 2, 3, 4, 0, 0, 1, 1, PixelFormat.MONO8, FrameFlags(0), b"\x07"))
    layout = encode_layout(1, [(0, 0, 1)])
    parser = PacketParser(accept=frozenset({PacketType.CAMERA_FRAME}))
    items = parser.feed(unknown + misfit + layout + camera)
    assert [(i.kind, int(i.packet_type)) for i in items[:3]] == [("type", 0x42), ("type", 3), ("type", 1)]
    assert isinstance(items[3], CameraFrame)
    parser = PacketParser()
    items = parser.feed(misfit + layout)
    assert items[0].kind == "length" and isinstance(items[1], LayoutPacket)


def test_buffer_is_bounded():
    parser = PacketParser(max_payload=1000)
    rng = np.random.default_rng(1)
    junk = rng.integers(0, 256, 200_000, dtype=np.uint8).tobytes().replace(b"O", b"o")
    assert parser.feed(junk + b"OPU") == []
    assert parser.buffered == 3 and parser.junk_bytes == len(junk)
    # A header announcing more than max_payload is junk at once: nothing waits for its payload.
    first12 = b"OPU1" + struct.pack("<BBHI", 2, 0, 0, 1001)
    oversized = first12 + struct.pack("<I", zlib.crc32(first12))
    parser = PacketParser(max_payload=1000)
    parser.feed(oversized)
    assert parser.buffered <= 3
    # A packet within the limit is held until complete, and never more than one packet's bytes.
    packet = encode_packet(PacketType.RAW_FRAME, struct.pack("<II", 1, 0) + bytes(992))
    parser = PacketParser(max_payload=1000)
    assert parser.feed(packet[:-1]) == [] and parser.buffered == len(packet) - 1 <= 16 + 1000 + 4
    assert len(parser.feed(packet[-1:])) == 1 and parser.buffered == 0


def test_flags_and_reserved_header_bytes_are_ignored():
    """Receivers ignore the flags byte (section 1.3); the header CRC still covers it."""
    payload = struct.pack("<II", 3, 0) + b"\x80"
    first12 = b"OPU1" + struct.pack("<BBHI", 2, 0x5A, 0x1234, len(payload))
    data = first12 + struct.pack("<I", zlib.crc32(first12)) + payload + struct.pack("<I", zlib.crc32(payload))
    assert PacketParser().feed(data) == [RawFramePacket(3, b"\x80")]


def test_clear_forgets_a_partial_packet():
    packet = encode_raw_frame(1, b"\x01")
    parser = PacketParser()
    parser.feed(packet[:10])
    parser.clear()
    assert parser.buffered == 0
    assert parser.feed(packet) == [RawFramePacket(1, b"\x01")]


# ------------------------------------------------------------------------------------------------ scpi


def test_format_command():
    assert format_command("*IDN?") == b"*IDN?\n"
    assert format_command("LASER:POWER", 12.5) == b"LASER:POWER 12.5\n"
    assert format_command("LASER:POWER", 50.0) == b"LASER:POWER 50\n"
    assert format_command("LASER:STATE", "ON") == b"LASER:STATE ON\n"
    assert format_command("LASER:STATE", True) == b"LASER:STATE 1\n"
    assert format_command("X:Y", 1, 2.25, "A") == b"X:Y 1,2.25,A\n"
    assert format_value(np.float32(0.5)) == "0.5" and format_value(np.int64(-3)) == "-3"
    assert format_value(1e-9) == "1e-09" and format_value(-0.0) == "0"
    assert format_value(np.bool_(True)) == "1"


@pytest.mark.parametrize(
    "keyword,args",
    [
        ("LASER POWER", ()),
        ("LASER:POWER\n", ()),
        ("", ()),
        ("LAS:POW", (float("nan"),)),
        ("LAS:POW", (float("inf"),)),
        ("TRIG:MODE", ("A B",)),
        ("TRIG:MODE", ("A\nB",)),
        ("TRIG:MODE", ("é",)),
        ("TRIG:MODE", ("A,B",)),
        ("TRIG:MODE", (None,)),
        ("X", ("Y" * 300,)),
    ],
)
def test_format_command_refuses(keyword, args):
    with pytest.raises(InvalidInputError):
        format_command(keyword, *args)


line_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)


@SETTINGS
@given(st.lists(line_text, max_size=8), st.lists(st.integers(0, 600), max_size=10), st.booleans())
def test_line_reader_any_chunking(lines, cuts, crlf):
    end = "\r\n" if crlf else "\n"
    data = "".join(line + end for line in lines).encode("ascii")
    reader = LineReader()
    got = [line for piece in _split(data, cuts) for line in reader.feed(piece)]
    assert got == lines
    assert reader.partial == b""


def test_line_reader_bounds_a_runaway_line_and_recovers():
    reader = LineReader(max_line_bytes=10)
    assert reader.feed(b"ok\n" + b"x" * 8) == ["ok"]
    with pytest.raises(ProtocolError):
        reader.feed(b"x" * 5)  # 13 bytes and no end yet: refused now, not when it ends
    assert reader.partial == b""
    assert reader.feed(b"still the long line\nnext\n") == ["next"]
    with pytest.raises(ProtocolError):
        reader.feed(b"a\n" + b"y" * 11 + b"\nb\n")
    assert reader.feed(b"") == ["a", "b"]  # the lines around the overlong one are kept, in order
    assert reader.feed(b"x" * 10 + b"\r\n") == ["x" * 10]  # exactly at the limit; the \r does not count


def test_line_reader_marks_undecodable_bytes():
    (line,) = LineReader().feed(b"1\xff2\n")
    assert line == "1\ufffd2"
    with pytest.raises(ProtocolError):
        parse_reply(line)


def test_parse_reply():
    assert parse_reply("OK") == "OK"
    assert parse_reply("12.500") == "12.500"
    assert parse_reply("OPU Open Stack,OPU-1,SIM-00000003,1.0.0") == "OPU Open Stack,OPU-1,SIM-00000003,1.0.0"
    with pytest.raises(DeviceRefusedError) as info:
        parse_reply('ERR -222,"Data out of range"')
    assert (info.value.code, info.value.message) == (-222, "Data out of range")
    for bad in ("", "   ", "ERR", "ERR -222", 'ERR x,"y"', "a\x00b"):
        with pytest.raises(ProtocolError):
            parse_reply(bad)


def test_parse_error_entry():
    assert parse_error_entry('0,"No error"') == (0, "No error")
    assert parse_error_entry('-113,"Undefined header"') == (-113, "Undefined header")
    assert parse_error_entry('-200,"Execution error; laser, interlock ""tripped"""') == (
        -200,
        'Execution error; laser, interlock "tripped"',
    )
    for bad in ("OK", "0,No error", '"x",0', ""):
        with pytest.raises(ProtocolError):
            parse_error_entry(bad)
