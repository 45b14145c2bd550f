"""The driver's codec against the golden byte vectors of tests/golden (made from docs/protocol.md alone).

Every vector is decoded with the driver's parser and decoders, every field is compared with vectors.json,
and the driver's encoders must reproduce the exact bytes. The firmware's codec is checked against the same
files elsewhere, so a misreading of the document in either codec shows up here or there.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from opu_driver.errors import DeviceRefusedError, InvalidInputError
from opu_driver.protocol import (
    CRC32_CHECK_VALUE,
    CameraFrame,
    FeatureFramePacket,
    FrameFlags,
    LayoutPacket,
    LineReader,
    PacketFault,
    PacketParser,
    PacketType,
    PixelFormat,
    RawFramePacket,
    crc32,
    decode_payload,
    encode_camera_frame,
    encode_feature_frame,
    encode_feature_frames,
    encode_header,
    encode_layout,
    encode_pixels,
    encode_raw_frame,
    encode_raw_frames,
    format_command,
    parse_error_entry,
    parse_reply,
)
from tests.support import GOLDEN_DIR

GOLDEN = GOLDEN_DIR
VECTORS = json.loads((GOLDEN / "vectors.json").read_text())
PACKETS = {v["name"]: v for v in VECTORS["packets"]}
STREAMS = {v["name"]: v for v in VECTORS["streams"]}


def _bytes(name: str) -> bytes:
    return (GOLDEN / name).read_bytes()


def _parse_one(data: bytes) -> object:
    parser = PacketParser()
    items = parser.feed(data)
    assert (parser.junk_bytes, parser.faults, parser.buffered) == (0, 0, 0)
    assert len(items) == 1
    return items[0]


def test_files_match_their_generator():
    """The checked-in files are exactly what make_golden.py produces (nobody edited one by hand)."""
    spec = importlib.util.spec_from_file_location("make_golden", GOLDEN / "make_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    files, description = module.build()
    for name, data in files.items():
        assert _bytes(name) == data, name
    assert json.loads(json.dumps(description)) == VECTORS


def test_crc_check_value():
    check = VECTORS["crc_check"]
    data = _bytes(check["file"])
    assert data == check["input_ascii"].encode("ascii")
    assert crc32(data) == check["crc32"] == CRC32_CHECK_VALUE == 0xCBF43926


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_envelope(name):
    vector = PACKETS[name]
    data = _bytes(vector["file"])
    env = vector["envelope"]
    n = env["payload_length"]
    assert len(data) == 16 + n + 4
    assert data[:4] == b"OPU1" and data[4] == vector["packet_type"] and data[5] == env["flags"]
    assert int.from_bytes(data[8:12], "little") == n
    assert int.from_bytes(data[12:16], "little") == env["header_crc"] == crc32(data[:12])
    assert int.from_bytes(data[16 + n :], "little") == env["payload_crc"] == crc32(data[16 : 16 + n])
    assert encode_header(vector["packet_type"], n) == data[:16]


def test_layout():
    vector = PACKETS["layout_3runs"]
    data = _bytes(vector["file"])
    fields = vector["fields"]
    packet = _parse_one(data)
    assert isinstance(packet, LayoutPacket)
    assert packet.n_features == fields["n_features"]
    assert packet.runs.dtype == np.uint32 and packet.runs.shape == (fields["n_runs"], 3)
    assert packet.runs.tolist() == fields["runs"]
    assert encode_layout(packet.n_features, packet.runs) == data
    assert encode_layout(fields["n_features"], fields["runs"]) == data


def test_raw_frame():
    vector = PACKETS["raw_frame_13x5"]
    data = _bytes(vector["file"])
    fields = vector["fields"]
    packet = _parse_one(data)
    assert isinstance(packet, RawFramePacket)
    assert packet.dmd_frame_id == fields["dmd_frame_id"]
    assert packet.mirror_bits.hex() == fields["mirror_bits_hex"]
    n_mirrors = fields["dmd_width"] * fields["dmd_height"]
    assert len(packet.mirror_bits) == -(-n_mirrors // 8)
    # The document's bit order is numpy's packbits default: check it both ways.
    bits = np.unpackbits(np.frombuffer(packet.mirror_bits, np.uint8))
    assert np.flatnonzero(bits[:n_mirrors]).tolist() == fields["on_mirrors"]
    assert not bits[n_mirrors:].any()  # padding bits are 0
    frame = np.zeros((fields["dmd_height"], fields["dmd_width"]), np.uint8)
    frame.reshape(-1)[fields["on_mirrors"]] = 1
    packed = np.packbits(frame.reshape(-1))
    assert packed.tobytes() == packet.mirror_bits
    assert encode_raw_frame(packet.dmd_frame_id, packet.mirror_bits) == data
    assert encode_raw_frames(fields["dmd_frame_id"], packed[None, :]) == data


def test_feature_frame():
    vector = PACKETS["feature_frame_11"]
    data = _bytes(vector["file"])
    fields = vector["fields"]
    packet = _parse_one(data)
    assert isinstance(packet, FeatureFramePacket)
    assert (packet.dmd_frame_id, packet.n_features) == (fields["dmd_frame_id"], fields["n_features"])
    assert packet.feature_bits.hex() == fields["feature_bits_hex"]
    bits = np.unpackbits(np.frombuffer(packet.feature_bits, np.uint8))
    assert bits[: packet.n_features].tolist() == fields["feature_values"]
    assert encode_feature_frame(packet.dmd_frame_id, packet.n_features, packet.feature_bits) == data
    packed = np.packbits(np.array(fields["feature_values"], np.uint8))[None, :]
    assert encode_feature_frames(fields["dmd_frame_id"], fields["n_features"], packed) == data


CAMERA_VECTORS = sorted(n for n in PACKETS if n.startswith("camera_frame_"))


@pytest.mark.parametrize("name", CAMERA_VECTORS)
def test_camera_frame(name):
    vector = PACKETS[name]
    data = _bytes(vector["file"])
    fields = vector["fields"]
    frame = _parse_one(data)
    assert isinstance(frame, CameraFrame)
    for key in ("camera_frame_id", "dmd_frame_id", "timestamp_us", "exposure_us", "roi_x", "roi_y", "roi_w", "roi_h"):
        assert getattr(frame, key) == fields[key], key
    assert frame.pixel_format == PixelFormat(fields["pixel_format"])
    assert frame.pixel_format.name == fields["pixel_format_name"]
    assert int(frame.flags) == fields["flags"] and isinstance(frame.flags, FrameFlags)
    assert frame.saturated == fields["saturated"] and frame.dark == fields["dark"]
    assert frame.blank == (fields["dmd_frame_id"] == 0xFFFFFFFF)
    assert frame.pixels.hex() == fields["pixels_hex"]
    values = np.array(fields["pixel_values"]).reshape(fields["roi_h"], fields["roi_w"])
    array = frame.to_array()
    assert array.shape == values.shape and np.array_equal(array, values)
    assert array.dtype == (np.uint8 if fields["pixel_format"] == 1 else np.uint16)
    assert encode_pixels(fields["pixel_format"], values) == frame.pixels
    assert encode_camera_frame(frame) == data
    rebuilt = CameraFrame(
        fields["camera_frame_id"],
        fields["dmd_frame_id"],
        fields["timestamp_us"],
        fields["exposure_us"],
        fields["roi_x"],
        fields["roi_y"],
        fields["roi_w"],
        fields["roi_h"],
        PixelFormat(fields["pixel_format"]),
        FrameFlags(fields["flags"]),
        bytes.fromhex(fields["pixels_hex"]),
    )
    assert rebuilt == frame and encode_camera_frame(rebuilt) == data


def _check_packet(packet: object, expected: dict) -> None:
    fields = expected["fields"]
    ptype = expected["packet_type"]
    if ptype == PacketType.FEATURE_FRAME:
        assert isinstance(packet, FeatureFramePacket)
        assert (packet.dmd_frame_id, packet.n_features) == (fields["dmd_frame_id"], fields["n_features"])
        assert packet.feature_bits.hex() == fields["feature_bits_hex"]
    elif ptype == PacketType.RAW_FRAME:
        assert isinstance(packet, RawFramePacket)
        assert packet.dmd_frame_id == fields["dmd_frame_id"]
        assert packet.mirror_bits.hex() == fields["mirror_bits_hex"]
    elif ptype == PacketType.CAMERA_FRAME:
        assert isinstance(packet, CameraFrame)
        assert (packet.camera_frame_id, packet.dmd_frame_id, packet.timestamp_us, int(packet.flags)) == (
            fields["camera_frame_id"],
            fields["dmd_frame_id"],
            fields["timestamp_us"],
            fields["flags"],
        )
        assert packet.to_array().reshape(-1).tolist() == fields["pixel_values"]
    else:  # pragma: no cover - the vectors hold no other type in streams
        raise AssertionError(ptype)


def _chunkings(data: bytes):
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for size in (2, 3, 7, 16, 17, 20, 64):
        yield [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_stream(name):
    vector = STREAMS[name]
    data = _bytes(vector["file"])
    accepts = [None]
    if vector["direction"] == "IN":
        accepts.append(frozenset({PacketType.CAMERA_FRAME}))
    else:
        accepts.append(frozenset({PacketType.LAYOUT, PacketType.RAW_FRAME, PacketType.FEATURE_FRAME}))
    for accept in accepts:
        for chunks in _chunkings(data):
            parser = PacketParser(accept=accept)
            items = [item for chunk in chunks for item in parser.feed(chunk)]
            assert parser.junk_bytes == vector["junk_bytes"]
            assert parser.buffered == 0
            assert len(items) == len(vector["items"])
            for item, expected in zip(items, vector["items"], strict=True):
                if "fault" in expected:
                    assert isinstance(item, PacketFault)
                    assert item.kind == expected["fault"]["kind"]
                    assert item.packet_type == expected["fault"]["packet_type"]
                else:
                    _check_packet(item, expected["packet"])
            assert parser.faults == sum("fault" in e for e in vector["items"])
            assert parser.packets == sum("packet" in e for e in vector["items"])


def test_stream_out_is_rejected_on_the_in_endpoint():
    """OUT packets arriving where only camera frames may come are faults of kind "type", never data."""
    data = _bytes(STREAMS["stream_out_junk"]["file"])
    parser = PacketParser(accept=frozenset({PacketType.CAMERA_FRAME}))
    items = parser.feed(data)
    assert [(i.kind, i.packet_type) for i in items] == [
        ("type", PacketType.FEATURE_FRAME),
        ("type", PacketType.RAW_FRAME),
    ]


def test_every_packet_payload_decodes_directly():
    for vector in VECTORS["packets"]:
        data = _bytes(vector["file"])
        n = vector["envelope"]["payload_length"]
        packet = decode_payload(vector["packet_type"], data[16 : 16 + n])
        assert packet == _parse_one(data)


EXCHANGES = VECTORS["controller"]["exchanges"]


@pytest.mark.parametrize("index", range(len(EXCHANGES)))
def test_controller_line(index):
    exchange = EXCHANGES[index]
    command = exchange["command"].encode("ascii")
    if exchange["keyword"] is not None:
        assert format_command(exchange["keyword"], *exchange["args"]) == command
    elif len(command) > 257:
        with pytest.raises(InvalidInputError):  # the driver refuses to send what the device would refuse
            format_command(command[:-1].decode("ascii"))
    reader = LineReader()
    (line,) = reader.feed(exchange["reply"].encode("ascii"))
    expect = exchange["expect"]
    if "value" in expect:
        assert parse_reply(line) == expect["value"]
    elif "refused" in expect:
        with pytest.raises(DeviceRefusedError) as info:
            parse_reply(line)
        assert (info.value.code, info.value.message) == tuple(expect["refused"])
    else:
        assert parse_error_entry(line) == tuple(expect["error_entry"])
