"""The golden byte vectors (tests/golden/, generated from docs/protocol.md by make_golden.py) read by the
FIRMWARE's own codec (firmware_sim.wire) and fed to the firmware itself.

The driver's codec is checked against the same files in tests/protocol/test_golden_driver.py; together they make sure
that neither codec shares a misreading of the document with the other.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from firmware_sim import wire
from firmware_sim.config import SimConfig
from firmware_sim.device import EmulatedDevice, Register
from tests.support import GOLDEN_DIR

GOLDEN = GOLDEN_DIR
VECTORS = GOLDEN / "vectors.json"

pytestmark = pytest.mark.skipif(
    not VECTORS.exists(),
    reason="tests/golden/vectors.json is missing: run `python tests/golden/make_golden.py` to generate the vectors",
)


def _description() -> dict:
    return json.loads(VECTORS.read_text()) if VECTORS.exists() else {"packets": [], "streams": [], "controller": {}}


DESCRIPTION = _description()
PACKETS = {p["name"]: p for p in DESCRIPTION["packets"]}
STREAMS = {s["name"]: s for s in DESCRIPTION["streams"]}


def _bytes(entry: dict) -> bytes:
    return (GOLDEN / entry["file"]).read_bytes()


def _bits_msb_first(data: bytes, n: int) -> list[int]:
    return np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n).tolist()


def _single_envelope(data: bytes) -> wire.Envelope:
    parser = wire.PacketStream()
    items = parser.feed(data)
    assert len(items) == 1 and isinstance(items[0], wire.Envelope), items
    assert parser.junk_bytes == 0 and parser.buffered == 0
    return items[0]


def _check_envelope(data: bytes, entry: dict, envelope: wire.Envelope) -> None:
    expected = entry["envelope"]
    assert envelope.packet_type == entry["packet_type"]
    assert envelope.flags == expected["flags"]
    assert len(envelope.payload) == expected["payload_length"]
    assert struct.unpack_from("<I", data, 12)[0] == expected["header_crc"] == wire.crc32(data[:12])
    assert wire.crc32(envelope.payload) == expected["payload_crc"]
    # The firmware's envelope encoder gives back the very same bytes.
    assert wire.encode_envelope(envelope.packet_type, envelope.payload) == data


def _check_out_fields(packet, packet_type: int, fields: dict) -> None:
    if packet_type == wire.PacketType.LAYOUT:
        assert isinstance(packet, wire.LayoutPacket)
        assert packet.n_features == fields["n_features"]
        assert len(packet.runs) == fields["n_runs"]
        assert packet.runs.tolist() == fields["runs"]
    elif packet_type == wire.PacketType.RAW_FRAME:
        assert isinstance(packet, wire.RawFramePacket)
        assert packet.dmd_frame_id == fields["dmd_frame_id"]
        assert bytes(packet.mirror_bits).hex() == fields["mirror_bits_hex"]
        n_mirrors = fields["dmd_width"] * fields["dmd_height"]
        bits = _bits_msb_first(bytes(packet.mirror_bits), 8 * len(packet.mirror_bits))
        assert [i for i in range(n_mirrors) if bits[i]] == fields["on_mirrors"]
        assert not any(bits[n_mirrors:])  # padding bits are 0
    elif packet_type == wire.PacketType.FEATURE_FRAME:
        assert isinstance(packet, wire.FeatureFramePacket)
        assert packet.dmd_frame_id == fields["dmd_frame_id"]
        assert packet.n_features == fields["n_features"]
        assert bytes(packet.feature_bits).hex() == fields["feature_bits_hex"]
        assert _bits_msb_first(bytes(packet.feature_bits), packet.n_features) == fields["feature_values"]
    else:  # pragma: no cover - the vectors hold no other OUT type
        raise AssertionError(f"unexpected OUT packet type {packet_type}")


def _mirror_bytes(fields: dict) -> int:
    return (fields.get("dmd_width", 1) * fields.get("dmd_height", 1) + 7) // 8


def _check_camera_fields(payload: bytes, fields: dict) -> None:
    header, pixels = wire.decode_camera_frame(payload)
    for name in (
        "camera_frame_id",
        "dmd_frame_id",
        "timestamp_us",
        "exposure_us",
        "roi_x",
        "roi_y",
        "roi_w",
        "roi_h",
        "pixel_format",
        "flags",
    ):
        assert getattr(header, name) == fields[name], name
    assert wire.PixelFormat(header.pixel_format).name == fields["pixel_format_name"]
    assert bool(header.flags & wire.FLAG_SATURATED) == fields["saturated"]
    assert bool(header.flags & wire.FLAG_DARK) == fields["dark"]
    assert pixels.hex() == fields["pixels_hex"]
    n_pixels = header.roi_w * header.roi_h
    assert wire.unpack_pixels(header.pixel_format, pixels, n_pixels).tolist() == fields["pixel_values"]
    assert wire.pack_pixels(header.pixel_format, np.array(fields["pixel_values"])).tobytes() == pixels


def test_the_vectors_are_all_there():
    names = set(PACKETS)
    assert {"layout_3runs", "raw_frame_13x5", "feature_frame_11"} <= names
    assert {f"camera_frame_{f.name.lower()}" for f in wire.PixelFormat} <= names
    assert {"stream_out_junk", "stream_in_junk", "corrupt_payload_crc"} <= set(STREAMS)
    assert DESCRIPTION["protocol_version"] == 1


def test_crc_check_value():
    check = DESCRIPTION["crc_check"]
    data = (GOLDEN / check["file"]).read_bytes()
    assert data == check["input_ascii"].encode("ascii")
    assert wire.crc32(data) == check["crc32"] == 0xCBF43926


@pytest.mark.parametrize("name", [n for n, p in PACKETS.items() if p["packet_type"] != wire.PacketType.CAMERA_FRAME])
def test_out_packets_decode_field_by_field(name):
    entry = PACKETS[name]
    data = _bytes(entry)
    envelope = _single_envelope(data)
    _check_envelope(data, entry, envelope)
    packet = wire.decode_out_packet(envelope, _mirror_bytes(entry["fields"]))
    _check_out_fields(packet, entry["packet_type"], entry["fields"])


@pytest.mark.parametrize("name", [n for n, p in PACKETS.items() if p["packet_type"] == wire.PacketType.CAMERA_FRAME])
def test_camera_frames_decode_and_encode_to_the_same_bytes(name):
    entry = PACKETS[name]
    fields = entry["fields"]
    data = _bytes(entry)
    envelope = _single_envelope(data)
    _check_envelope(data, entry, envelope)
    _check_camera_fields(envelope.payload, fields)

    header = wire.CameraFrameHeader(
        *(
            fields[k]
            for k in (
                "camera_frame_id",
                "dmd_frame_id",
                "timestamp_us",
                "exposure_us",
                "roi_x",
                "roi_y",
                "roi_w",
                "roi_h",
                "pixel_format",
                "flags",
            )
        )
    )
    pixels = wire.pack_pixels(header.pixel_format, np.array(fields["pixel_values"]))
    assert wire.encode_camera_frame(header, pixels.tobytes()) == data
    # The batch encoder the firmware uses for sequences writes the same bytes.
    batch = wire.encode_camera_frames(
        [header.camera_frame_id],
        [header.dmd_frame_id],
        [header.timestamp_us],
        [header.flags],
        exposure_us=header.exposure_us,
        roi=(header.roi_x, header.roi_y, header.roi_w, header.roi_h),
        pixel_format=header.pixel_format,
        pixels=pixels[None, :],
    )
    assert batch == data


def _chunkings(data: bytes):
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    yield [data[i : i + 7] for i in range(0, len(data), 7)]
    cut = len(data) // 2
    yield [data[:cut], b"", data[cut:]]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_parse_the_same_in_any_chunking(name):
    entry = STREAMS[name]
    data = _bytes(entry)
    for chunks in _chunkings(data):
        parser = wire.PacketStream()
        items = [item for chunk in chunks for item in parser.feed(chunk)]
        assert parser.junk_bytes == entry["junk_bytes"]
        assert parser.buffered == 0
        assert len(items) == len(entry["items"])
        for item, expected in zip(items, entry["items"], strict=True):
            if "fault" in expected:
                fault = expected["fault"]
                assert isinstance(item, wire.StreamFault)
                assert fault["kind"] == "crc" and item.code == wire.ErrorCode.E_CRC == fault["code"]
                assert wire.ErrorCode(item.code).name == fault["device_error"]
                assert item.packet_type == fault["packet_type"]
                continue
            spec = expected["packet"]
            assert isinstance(item, wire.Envelope) and item.packet_type == spec["packet_type"]
            if spec["packet_type"] == wire.PacketType.CAMERA_FRAME:
                _check_camera_fields(item.payload, spec["fields"])
            else:
                packet = wire.decode_out_packet(item, _mirror_bytes(spec["fields"]))
                _check_out_fields(packet, spec["packet_type"], spec["fields"])


# -- the same bytes fed to the firmware ----------------------------------------------------------------


class _NoOptics:
    """The firmware under test here only parses and queues: its optics are never asked for light."""

    def set_layout(self, n_features, runs):
        pass

    def clear_layout(self):
        pass

    def set_roi(self, x, y, w, h):
        pass


def _device() -> EmulatedDevice:
    return EmulatedDevice(
        SimConfig(dmd_width=13, dmd_height=5, camera_width=4, camera_height=4), optics=_NoOptics(), sensor=object()
    )


def _layout_for(n_features: int) -> bytes:
    payload = struct.pack("<II", n_features, 1) + struct.pack("<III", 0, 0, 1)
    return wire.encode_envelope(wire.PacketType.LAYOUT, payload)


def test_firmware_accepts_the_out_packet_vectors():
    device = _device()
    device.usb_bulk_write(0x01, _bytes(PACKETS["layout_3runs"]))
    assert device.usb_ctrl_read_register(Register.LAST_ERROR) == 0
    assert device.usb_ctrl_read_register(Register.LAYOUT_FEATURES) == PACKETS["layout_3runs"]["fields"]["n_features"]
    device.usb_bulk_write(0x01, _bytes(PACKETS["raw_frame_13x5"]))
    assert device.usb_ctrl_read_register(Register.LAST_ERROR) == 0
    device.usb_bulk_write(0x01, _layout_for(11) + _bytes(PACKETS["feature_frame_11"]))
    assert device.usb_ctrl_read_register(Register.LAST_ERROR) == 0
    assert device.usb_ctrl_read_register(Register.SEQ_QUEUED) == 2


def test_firmware_skips_the_junk_of_the_out_stream():
    device = _device()
    device.usb_bulk_write(0x01, _layout_for(5))
    data = _bytes(STREAMS["stream_out_junk"])
    for i in range(0, len(data), 5):
        device.usb_bulk_write(0x01, data[i : i + 5])
    assert device.usb_ctrl_read_register(Register.SEQ_QUEUED) == 2
    assert device.usb_ctrl_read_register(Register.LAST_ERROR) == 0
    assert device.debug_counters["junk_bytes"] == STREAMS["stream_out_junk"]["junk_bytes"]


def test_firmware_latches_e_crc_for_the_corrupt_packet_and_queues_the_next():
    device = _device()
    device.usb_bulk_write(0x01, _layout_for(9))
    device.usb_bulk_write(0x01, _bytes(STREAMS["corrupt_payload_crc"]))
    assert device.usb_ctrl_read_register(Register.SEQ_QUEUED) == 1
    assert device.usb_ctrl_read_register(Register.LAST_ERROR) == wire.ErrorCode.E_CRC
    assert device.debug_counters["crc_errors"] == 1


def test_controller_session_gives_the_exact_replies():
    config = SimConfig()  # the session is written against the default options
    device = EmulatedDevice(config, optics=_NoOptics(), sensor=object())
    exchanges = DESCRIPTION["controller"]["exchanges"]
    assert exchanges
    for exchange in exchanges:
        device.serial_write(exchange["command"].encode("ascii"))
        assert device.serial_read(1 << 16).decode("ascii") == exchange["reply"], exchange["command"]
