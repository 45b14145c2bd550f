"""The emulator's firmware: wire codec, register map, sequences, controller line, pyusb/pyserial/pty plumbing.

Most tests drive :class:`EmulatedDevice` with small stand-ins for the optics and the sensor (``StubOptics``,
``StubSensor``): they are linear and noiseless, so every camera count is known exactly and the tests check
the firmware's bookkeeping (ids, lag, flags, FIFO, packing) bit for bit. Packets are built here with
``struct`` and ``zlib`` straight from docs/protocol.md, not with the codec under test. The last section
runs the real optics model when it is installed.
"""

from __future__ import annotations

import errno
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import serial
import usb.core
import usb.util
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import firmware_sim
from firmware_sim import wire
from firmware_sim.config import SimConfig
from firmware_sim.controller import ERROR_QUEUE_LENGTH
from firmware_sim.device import EmulatedDevice, Register, readout_us
from firmware_sim.errors import SimConfigError, SimDeviceNotFoundError
from firmware_sim.pty_server import PtyServer
from firmware_sim.registry import create_device, get_device, list_devices, release_device
from firmware_sim.usb_backend import get_backend
from tests.support import REPO_ROOT

BLANK = 0xFFFFFFFF
E = wire.ErrorCode


# -- stand-ins for the optics and the sensor -----------------------------------------------------------


def StubConfig(**overrides):
    """A real SimConfig at a tiny geometry (the firmware reads only its fields)."""
    values = dict(
        dmd_width=13,
        dmd_height=5,
        camera_width=8,
        camera_height=6,
        model="OPU-T",
        serial_number="SIM-TEST",
        firmware_version=(1, 2, 3),
    )
    values.update(overrides)
    return SimConfig(**values)


class StubOptics:
    """Linear optics: pixel p of mirror m gets weight M[m, p], a fixed function of absolute coordinates.

    Feature frames use the per-feature sums of M over the layout's runs, so a raw frame equal to the
    expansion of a feature frame gives exactly the same intensities, as the real optics promise.
    """

    def __init__(self, config) -> None:
        self.config = config
        self.n_mirrors = config.dmd_width * config.dmd_height
        self.roi = None
        self.layout = None
        self.calls: list[tuple[str, int]] = []

    def set_layout(self, n_features, runs):
        self.layout = (n_features, np.array(runs, dtype=np.int64))

    def clear_layout(self):
        self.layout = None

    def set_roi(self, x, y, w, h):
        self.roi = (x, y, w, h)

    def mirror_weights(self) -> np.ndarray:
        x, y, w, h = self.roi
        px = (np.arange(h)[:, None] + y) * self.config.camera_width + (np.arange(w)[None, :] + x)
        m = np.arange(self.n_mirrors)[:, None]
        return ((m * 7 + px.ravel()[None, :] * 3) % 5).astype(np.float32)

    def feature_weights(self) -> np.ndarray:
        n_features, runs = self.layout
        weights = self.mirror_weights()
        out = np.zeros((n_features, weights.shape[1]), dtype=np.float32)
        for f, first, n in runs:
            out[f] += weights[first : first + n].sum(axis=0)
        return out

    def intensity_features(self, bits, times_us):
        self.calls.append(("features", len(bits)))
        return bits.astype(np.float32) @ self.feature_weights()

    def intensity_raw(self, packed, times_us):
        self.calls.append(("raw", len(packed)))
        mirrors = np.unpackbits(packed, axis=1, count=self.n_mirrors).astype(np.float32)
        return mirrors @ self.mirror_weights()

    def intensity_blank(self, n):
        self.calls.append(("blank", n))
        x, y, w, h = self.roi
        return np.zeros((n, w * h), dtype=np.float32)

    @property
    def ground_truth(self):
        return "stub ground truth"


class StubSensor:
    """Counts = intensity (clipped to the ADC) when lit; a constant dark level of 3 otherwise. Records calls."""

    DARK_LEVEL = 3

    def __init__(self, config) -> None:
        self.calls: list[dict] = []

    def capture(self, intensity, *, roi, frame_indices, exposure_us, gain, laser_power_mw, light_on, bits):
        self.calls.append(
            dict(
                roi=roi,
                frame_indices=np.array(frame_indices),
                exposure_us=exposure_us,
                gain=gain,
                laser_power_mw=laser_power_mw,
                light_on=light_on,
                bits=bits,
            )
        )
        if not light_on:
            return np.full(intensity.shape, self.DARK_LEVEL, dtype=np.uint16)
        return np.clip(np.rint(intensity * gain), 0, (1 << bits) - 1).astype(np.uint16)


def make_device(**overrides) -> EmulatedDevice:
    config = StubConfig(**overrides)
    return EmulatedDevice(config, optics=StubOptics(config), sensor=StubSensor(config))


def lit_device(**overrides) -> EmulatedDevice:
    device = make_device(**overrides)
    assert device.serial_write(b"LASER:STATE ON\nSHUTTER:STATE OPEN\n")
    assert device.serial_read(100) == b"OK\nOK\n"
    return device


# -- packets built from the document with struct + zlib ------------------------------------------------


def packet(ptype: int, payload: bytes) -> bytes:
    head = b"OPU1" + struct.pack("<BBHI", ptype, 0, 0, len(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload + struct.pack("<I", zlib.crc32(payload))


def layout_packet(n_features: int, runs) -> bytes:
    return packet(1, struct.pack("<II", n_features, len(runs)) + b"".join(struct.pack("<III", *r) for r in runs))


def feature_packet(frame_id: int, bits) -> bytes:
    return packet(3, struct.pack("<II", frame_id, len(bits)) + np.packbits(np.array(bits, dtype=np.uint8)).tobytes())


def raw_packet(frame_id: int, mirrors) -> bytes:
    return packet(2, struct.pack("<II", frame_id, 0) + np.packbits(np.array(mirrors, dtype=np.uint8)).tobytes())


def read(device: EmulatedDevice, register: int) -> int | None:
    return device.usb_ctrl_read_register(register)


def write(device: EmulatedDevice, register: int, value: int) -> bool:
    return device.usb_ctrl_write_register(register, value)


def send(device: EmulatedDevice, data: bytes) -> None:
    assert device.usb_bulk_write(0x01, data) == len(data)


def drain_frames(device: EmulatedDevice) -> list[tuple[wire.CameraFrameHeader, np.ndarray]]:
    """Read the whole IN FIFO and decode it with a struct-based reading of section 1.3."""
    data = b""
    while chunk := device.usb_bulk_read(0x81, 4096):
        data += chunk
    frames, pos = [], 0
    while pos < len(data):
        assert data[pos : pos + 4] == b"OPU1"
        ptype, _, _, length, header_crc = struct.unpack_from("<BBHII", data, pos + 4)
        assert ptype == 0x10 and header_crc == zlib.crc32(data[pos : pos + 12])
        payload = data[pos + 16 : pos + 16 + length]
        assert struct.unpack_from("<I", data, pos + 16 + length)[0] == zlib.crc32(payload)
        fields = struct.unpack_from("<IIQIHHHHBBH", payload)
        header = wire.CameraFrameHeader(*fields[:10])
        assert fields[10] == 0
        pixels = wire.unpack_pixels(header.pixel_format, payload[32:], header.roi_w * header.roi_h)
        frames.append((header, pixels))
        pos += 16 + length + 4
    return frames


# A layout for the 13 x 5 stub DMD: 3 features over disjoint runs (one crosses a row end).
LAYOUT_RUNS = [(0, 0, 4), (1, 10, 6), (2, 30, 5), (0, 50, 3)]


def expand(bits, runs=LAYOUT_RUNS, n_mirrors=65) -> np.ndarray:
    mirrors = np.zeros(n_mirrors, dtype=np.uint8)
    for f, first, n in runs:
        mirrors[first : first + n] = bits[f]
    return mirrors


# ======================================================================================================
# wire.py: the firmware's codec
# ======================================================================================================


def test_crc_check_value():
    assert wire.crc32(b"123456789") == 0xCBF43926


def _stream_items(parser: wire.PacketStream, chunks) -> list:
    out = []
    for chunk in chunks:
        out.extend(parser.feed(chunk))
    return out


packets_strategy = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 0x10, 0x7F]), st.binary(max_size=40)), min_size=1, max_size=5
)
# Junk made of random bytes and pieces of the magic, so that fake and partial magics are common.
junk_strategy = st.lists(
    st.one_of(st.binary(max_size=12), st.sampled_from([b"O", b"OP", b"OPU", b"OPU1", b"OPU1\x02\x00\x00\x00"])),
    max_size=4,
).map(b"".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(packets=packets_strategy, junks=st.lists(junk_strategy, min_size=6, max_size=6), data=st.data())
def test_stream_parser_skips_junk_and_ignores_chunking(packets, junks, data):
    stream = b""
    junk_total = 0
    for i, (ptype, payload) in enumerate(packets):
        stream += junks[i] + packet(ptype, payload)
        junk_total += len(junks[i])
    # Junk at the very end could be the start of a packet: a last packet makes the receiver decide.
    stream += junks[5] + packet(1, b"end")
    junk_total += len(junks[5])
    packets = packets + [(1, b"end")]

    whole = wire.PacketStream()
    items = whole.feed(stream)
    assert [(e.packet_type, e.payload) for e in items] == packets
    assert whole.junk_bytes == junk_total
    assert whole.buffered == 0

    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)], strict=True)]
    chunked = wire.PacketStream()
    assert _stream_items(chunked, chunks) == items
    assert chunked.junk_bytes == junk_total

    bytewise = wire.PacketStream()
    assert _stream_items(bytewise, [stream[i : i + 1] for i in range(len(stream))]) == items


def test_corrupt_payload_is_reported_and_the_next_packet_survives():
    bad = bytearray(packet(3, b"\x05\x00\x00\x00\x03\x00\x00\x00\xa0"))
    bad[20] ^= 0x40
    good = packet(3, b"\x06\x00\x00\x00\x03\x00\x00\x00\xe0")
    parser = wire.PacketStream()
    items = parser.feed(bytes(bad) + good)
    assert len(items) == 2
    assert isinstance(items[0], wire.StreamFault) and items[0].code == E.E_CRC and items[0].packet_type == 3
    assert items[1] == wire.Envelope(3, good[16:-4])
    assert parser.crc_errors == 1 and parser.packets == 1 and parser.junk_bytes == 0


def test_bad_header_crc_drops_one_byte_and_resyncs():
    good = packet(2, b"abc")
    fake = bytearray(good)
    fake[12] ^= 0xFF  # header CRC wrong
    parser = wire.PacketStream()
    items = parser.feed(bytes(fake[:10]) + good)  # a truncated fake header overlapping nothing
    assert items == [wire.Envelope(2, b"abc")]
    items = parser.feed(bytes(fake) + good)
    assert items == [wire.Envelope(2, b"abc")]
    assert parser.header_errors >= 1


def test_length_beyond_limit_is_a_header_error_even_with_a_good_crc():
    head = b"OPU1" + struct.pack("<BBHI", 2, 0, 0, wire.MAX_PAYLOAD + 1)
    fake = head + struct.pack("<I", zlib.crc32(head))
    parser = wire.PacketStream()
    assert parser.feed(fake + packet(1, b"")) == [wire.Envelope(1, b"")]
    assert parser.header_errors == 1
    assert parser.junk_bytes == len(fake)


def test_truncated_packet_waits_and_buffer_stays_bounded():
    parser = wire.PacketStream(max_payload=1000)
    pkt = packet(2, bytes(range(200)) * 5)
    for i in range(len(pkt) - 1):
        assert parser.feed(pkt[i : i + 1]) == []
    assert parser.buffered == len(pkt) - 1
    assert parser.feed(pkt[-1:]) == [wire.Envelope(2, pkt[16:-4])]
    # A stream of junk that never forms a packet never holds more than a partial magic.
    parser.feed(b"x" * 5_000_000 + b"OPU")
    assert parser.buffered == 3
    # A header announcing the largest payload holds at most one maximal packet.
    head = b"OPU1" + struct.pack("<BBHI", 2, 0, 0, 1000)
    parser = wire.PacketStream(max_payload=1000)
    parser.feed(head + struct.pack("<I", zlib.crc32(head)) + b"\x00" * 5000)
    assert parser.buffered <= 16 + 1000 + 4


def test_large_write_is_consumed_in_bounded_slices():
    payload = bytes(4000)
    many = packet(2, payload) * 50
    parser = wire.PacketStream(max_payload=4000)
    items = parser.feed(many)
    assert len(items) == 50 and parser.buffered == 0


@pytest.mark.parametrize("fmt,bits", [(1, 8), (2, 10), (3, 12), (4, 10), (5, 12)])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pixel_packing_round_trips(fmt, bits, data):
    n = data.draw(st.integers(1, 40))
    values = np.array(data.draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n)))
    packed = wire.pack_pixels(fmt, values)
    assert packed.dtype == np.uint8 and packed.shape == (wire.pixel_payload_size(fmt, n),)
    assert np.array_equal(wire.unpack_pixels(fmt, packed.tobytes(), n), values)
    # A batch of frames packs row by row, each row its own padded stream.
    batch = np.stack([values, values[::-1]])
    rows = wire.pack_pixels(fmt, batch)
    assert np.array_equal(rows[0], packed) and np.array_equal(rows[1], wire.pack_pixels(fmt, values[::-1]))


def test_packed_formats_follow_the_document_bit_by_bit():
    # MONO12P: p0 & 0xFF, (p0 >> 8) | ((p1 & 0x0F) << 4), p1 >> 4
    assert wire.pack_pixels(5, np.array([0xABC, 0x123])).tobytes() == bytes([0xBC, 0x3A, 0x12])
    # MONO10P, four pixels in five bytes, LSB first: stream bit s is bit s % 8 of byte s // 8.
    values = [0x3FF, 0x000, 0x3FF, 0x001]
    stream = sum(v << (10 * k) for k, v in enumerate(values))
    assert wire.pack_pixels(4, np.array(values)).tobytes() == stream.to_bytes(5, "little")
    # Odd counts end in zero padding bits.
    assert wire.pack_pixels(5, np.array([0xFFF])).tobytes() == b"\xff\x0f"
    assert wire.pack_pixels(2, np.array([0x3FF, 1])).tobytes() == b"\xff\x03\x01\x00"
    assert [wire.pixel_payload_size(f, 9) for f in range(1, 6)] == [9, 18, 18, 12, 14]


def test_pixel_values_out_of_range_are_refused():
    with pytest.raises(ValueError):
        wire.pack_pixels(4, np.array([1024]))
    with pytest.raises(ValueError):
        wire.pack_pixels(1, np.array([-1]))
    with pytest.raises(ValueError):
        wire.pixel_bits(6)


def test_out_packet_decoding_checks_lengths_and_types():
    env = lambda t, p: wire.Envelope(t, p)
    layout = wire.decode_out_packet(env(1, struct.pack("<II", 4, 1) + struct.pack("<III", 3, 7, 2)), 9)
    assert layout.n_features == 4 and layout.runs.tolist() == [[3, 7, 2]] and layout.runs.dtype == np.uint32
    assert wire.decode_out_packet(env(1, struct.pack("<II", 4, 2) + bytes(12)), 9).code == E.E_LENGTH
    assert wire.decode_out_packet(env(1, b"\x01"), 9).code == E.E_LENGTH
    raw = wire.decode_out_packet(env(2, struct.pack("<II", 77, 0) + bytes(9)), 9)
    assert raw.dmd_frame_id == 77 and bytes(raw.mirror_bits) == bytes(9)
    assert wire.decode_out_packet(env(2, struct.pack("<II", 77, 0) + bytes(8)), 9).code == E.E_LENGTH
    feat = wire.decode_out_packet(env(3, struct.pack("<II", 5, 11) + b"\xa0\x20"), 9)
    assert (feat.dmd_frame_id, feat.n_features, bytes(feat.feature_bits)) == (5, 11, b"\xa0\x20")
    assert wire.decode_out_packet(env(3, struct.pack("<II", 5, 11) + b"\xa0"), 9).code == E.E_LENGTH
    assert wire.decode_out_packet(env(0x10, bytes(40)), 9).code == E.E_TYPE
    assert wire.decode_out_packet(env(0x42, b""), 9).code == E.E_TYPE


def test_batch_camera_encoder_matches_the_single_frame_encoder():
    rng = np.random.default_rng(1)
    for fmt in range(1, 6):
        bits = wire.pixel_bits(fmt)
        values = rng.integers(0, 1 << bits, size=(3, 7))
        pixels = wire.pack_pixels(fmt, values)
        batch = wire.encode_camera_frames(
            [5, 6, 7],
            [9, BLANK, 11],
            [2**33, 2**33 + 500, 2**33 + 1000],
            [0, 1, 3],
            exposure_us=123,
            roi=(1, 2, 7, 1),
            pixel_format=fmt,
            pixels=pixels,
        )
        singles = b"".join(
            wire.encode_camera_frame(
                wire.CameraFrameHeader(5 + i, [9, BLANK, 11][i], 2**33 + 500 * i, 123, 1, 2, 7, 1, fmt, [0, 1, 3][i]),
                pixels[i].tobytes(),
            )
            for i in range(3)
        )
        assert batch == singles
        items = wire.PacketStream().feed(batch)
        header, raw = wire.decode_camera_frame(items[1].payload)
        assert header.dmd_frame_id == BLANK and header.timestamp_us == 2**33 + 500
        assert np.array_equal(wire.unpack_pixels(fmt, raw, 7), values[1])


# ======================================================================================================
# registers.py: the register file
# ======================================================================================================


def test_identity_and_geometry_registers():
    device = make_device()
    assert read(device, Register.PROTOCOL_VERSION) == 1
    assert read(device, Register.FIRMWARE_VERSION) == (1 << 16) | (2 << 8) | 3
    assert (read(device, Register.DMD_WIDTH), read(device, Register.DMD_HEIGHT)) == (13, 5)
    assert (read(device, Register.CAM_WIDTH), read(device, Register.CAM_HEIGHT)) == (8, 6)
    assert read(device, Register.SEQ_CAPACITY) == 4096
    assert read(device, Register.IN_FIFO_BYTES) == 64 * 2**20
    assert read(device, Register.PIXEL_FORMATS) == 0b111110
    assert [read(device, r) for r in (Register.ROI_X, Register.ROI_Y, Register.ROI_W, Register.ROI_H)] == [0, 0, 8, 6]
    assert read(device, Register.PIXEL_FORMAT) == 1
    assert (read(device, Register.EXPOSURE_US), read(device, Register.FRAME_TIME_US)) == (400, 500)
    assert read(device, Register.GAIN_MILLI) == 1000
    assert read(device, Register.READOUT_US) == readout_us(6) < 400
    assert read(device, Register.STATUS) == 1 << 3  # interlock OK, laser off, shutter closed, nothing else
    assert read(device, Register.LAST_ERROR) == 0
    assert device.usb_identity.bcd_device == 0x0102
    assert device.ground_truth == "stub ground truth"


@pytest.mark.parametrize(
    "register,value,code",
    [
        (0x7777, 1, E.E_ADDRESS),
        (Register.DMD_WIDTH, 3, E.E_READ_ONLY),
        (Register.STATUS, 0, E.E_READ_ONLY),
        (Register.EXPOSURE_US, 9, E.E_VALUE),
        (Register.EXPOSURE_US, 451, E.E_VALUE),  # frame time 500 allows at most 450
        (Register.FRAME_TIME_US, 449, E.E_VALUE),
        (Register.GAIN_MILLI, 999, E.E_VALUE),
        (Register.GAIN_MILLI, 16001, E.E_VALUE),
        (Register.ROI_W, 0, E.E_VALUE),
        (Register.ROI_W, 9, E.E_VALUE),
        (Register.ROI_X, 1, E.E_VALUE),  # x + w would pass the sensor's right edge
        (Register.ROI_H, 7, E.E_VALUE),
        (Register.PIXEL_FORMAT, 0, E.E_VALUE),
        (Register.PIXEL_FORMAT, 6, E.E_VALUE),
        (Register.SEQ_CONTROL, 4, E.E_VALUE),
        (Register.SEQ_CONTROL, 1, E.E_EMPTY),
        (Register.SOFT_TRIGGER, 1, E.E_TRIGGER),  # trigger mode INT
        (Register.SOFT_TRIGGER, 2, E.E_VALUE),
    ],
)
def test_refused_writes_stall_latch_the_code_and_change_nothing(register, value, code):
    device = make_device()
    before = {r: read(device, r) for r in Register if r not in (Register.STATUS, Register.LAST_ERROR)}
    assert write(device, register, value) is False
    assert read(device, Register.STATUS) & (1 << 5)  # ERROR_PENDING
    assert read(device, Register.LAST_ERROR) == code
    assert read(device, Register.LAST_ERROR) == 0  # reading clears it
    assert not read(device, Register.STATUS) & (1 << 5)
    assert {r: read(device, r) for r in before} == before


def test_unknown_read_and_bad_length_stall():
    device = make_device()
    assert read(device, 0x0006) is None
    assert read(device, Register.LAST_ERROR) == E.E_ADDRESS
    assert device.usb_ctrl_read_register(Register.DMD_WIDTH, length=2) is None
    assert read(device, Register.LAST_ERROR) == E.E_LENGTH
    assert device.usb_ctrl_write_register(Register.GAIN_MILLI, 2000, length=8) is False
    assert read(device, Register.LAST_ERROR) == E.E_LENGTH
    assert read(device, Register.GAIN_MILLI) == 1000


def test_frame_time_first_then_exposure_and_roi_moves_shrink_first():
    device = make_device()
    assert write(device, Register.FRAME_TIME_US, 2050)
    assert write(device, Register.EXPOSURE_US, 2000)
    assert not write(device, Register.FRAME_TIME_US, 2049)
    assert write(device, Register.ROI_W, 3) and write(device, Register.ROI_X, 5)
    assert not write(device, Register.ROI_W, 4)
    assert write(device, Register.ROI_H, 2) and write(device, Register.ROI_Y, 4)
    assert [read(device, r) for r in (Register.ROI_X, Register.ROI_Y, Register.ROI_W, Register.ROI_H)] == [5, 4, 3, 2]
    assert device.optics.roi == (5, 4, 3, 2)  # the optics (and their ground truth) follow at once
    assert write(device, Register.GAIN_MILLI, 16000)


def test_roi_rows_whose_readout_the_frame_time_cannot_hold_are_refused():
    # readout_us(6000) = 610: the full sensor needs a frame time of at least 660 us.
    with pytest.raises(SimConfigError):
        make_device(camera_height=6000, frame_time_us=500, exposure_us=100)
    device = make_device(camera_height=6000, frame_time_us=700, exposure_us=100)
    assert read(device, Register.READOUT_US) == 610
    assert write(device, Register.ROI_H, 1000) and read(device, Register.READOUT_US) == 110
    assert not write(device, Register.FRAME_TIME_US, 159)  # max(110, 100) + 50 = 160
    assert write(device, Register.FRAME_TIME_US, 160)
    assert not write(device, Register.ROI_H, 6000)
    assert read(device, Register.LAST_ERROR) == E.E_VALUE and read(device, Register.ROI_H) == 1000


def test_frames_larger_than_one_packet_are_refused():
    with pytest.raises(SimConfigError):
        make_device(camera_width=4096, camera_height=4096)  # 16 MiB of pixels + 32 bytes of metadata
    device = make_device(camera_width=4000, camera_height=3000)  # 12 MB at 8 bits, 24 MB at 10
    assert not write(device, Register.PIXEL_FORMAT, 2)
    assert read(device, Register.LAST_ERROR) == E.E_VALUE
    assert write(device, Register.ROI_H, 2000) and write(device, Register.PIXEL_FORMAT, 2)
    assert not write(device, Register.ROI_H, 3000)


def test_device_time_low_word_read_latches_the_high_word():
    device = lit_device()
    device.sequencer.device_time_us = (7 << 32) | 123  # white box: hours of device time without running them
    assert read(device, Register.DEVICE_TIME_HI) == 0  # not latched yet
    assert read(device, Register.DEVICE_TIME_LO) == 123
    device.sequencer.device_time_us = (8 << 32) | 5
    assert read(device, Register.DEVICE_TIME_HI) == 7


def test_bad_emulator_options_are_refused_by_the_firmware():
    for bad in (
        dict(camera_width=70000),
        dict(exposure_us=5),
        dict(frame_time_us=420),
        dict(gain=0.5),
        dict(lag_frames=-1),
    ):
        with pytest.raises(SimConfigError):
            make_device(**bad)


# ======================================================================================================
# sequencer.py and dmd.py: layouts and packets
# ======================================================================================================


def test_layout_is_loaded_and_reported():
    device = make_device()
    send(device, layout_packet(3, LAYOUT_RUNS))
    assert read(device, Register.LAST_ERROR) == 0
    assert read(device, Register.LAYOUT_FEATURES) == 3
    assert read(device, Register.STATUS) & (1 << 4)
    assert write(device, Register.SEQ_CONTROL, 3)  # CLEAR_LAYOUT
    assert read(device, Register.LAYOUT_FEATURES) == 0 and not read(device, Register.STATUS) & (1 << 4)


@pytest.mark.parametrize(
    "n_features,runs",
    [
        (0, []),  # no features
        (2**20 + 1, [(0, 0, 1)]),  # too many features
        (3, [(3, 0, 1)]),  # feature >= F
        (3, [(0, 0, 0)]),  # empty run
        (3, [(0, 60, 6)]),  # ends past the 65 mirrors
        (3, [(0, 0, 5), (1, 4, 2)]),  # overlap
        (3, [(1, 20, 5), (0, 10, 11)]),  # overlap, given out of order
        (3, [(0, 2**32 - 1, 2)]),  # first + n overflows 32 bits
    ],
)
def test_invalid_layouts_are_refused_and_the_previous_table_stays(n_features, runs):
    device = make_device()
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, layout_packet(n_features, runs))
    assert read(device, Register.LAST_ERROR) == E.E_LAYOUT
    assert read(device, Register.LAYOUT_FEATURES) == 3
    send(device, feature_packet(1, [1, 0, 1]))
    assert read(device, Register.SEQ_QUEUED) == 1 and read(device, Register.LAST_ERROR) == 0


def test_a_layout_without_runs_is_valid_and_shows_nothing():
    device = lit_device(lag_frames=1)
    send(device, layout_packet(2, []))
    assert read(device, Register.LAYOUT_FEATURES) == 2 and read(device, Register.LAST_ERROR) == 0
    send(device, feature_packet(1, [1, 1]))
    assert write(device, Register.SEQ_CONTROL, 1)
    send(device, layout_packet(3, LAYOUT_RUNS) + feature_packet(2, [1, 1, 1]))  # frame 1 is still in the pipe
    assert write(device, Register.SEQ_CONTROL, 1)
    frames = drain_frames(device)
    assert [h.dmd_frame_id for h, _ in frames] == [BLANK, 1] and not frames[1][1].any()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 70), st.integers(0, 12)), max_size=8))
def test_layout_validation_agrees_with_a_mirror_by_mirror_check(runs):
    owner = np.zeros(65, dtype=int)
    valid = True
    for f, first, n in runs:
        if f >= 4 or n < 1 or first + n > 65:
            valid = False
            continue
        owner[first : first + n] += 1
    valid = valid and owner.max(initial=0) <= 1
    device = make_device()
    send(device, layout_packet(4, runs))
    assert (read(device, Register.LAYOUT_FEATURES) == 4) == valid
    assert read(device, Register.LAST_ERROR) == (0 if valid else E.E_LAYOUT)


def test_packet_errors_are_latched():
    device = make_device()
    send(device, feature_packet(1, [1, 0, 1]))
    assert read(device, Register.LAST_ERROR) == E.E_NO_LAYOUT
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, feature_packet(1, [1, 0, 1, 1]))
    assert read(device, Register.LAST_ERROR) == E.E_FEATURES
    send(device, packet(2, struct.pack("<II", 1, 0) + bytes(3)))
    assert read(device, Register.LAST_ERROR) == E.E_LENGTH
    send(device, packet(0x10, bytes(40)))
    assert read(device, Register.LAST_ERROR) == E.E_TYPE
    corrupt = bytearray(feature_packet(1, [1, 0, 1]))
    corrupt[-5] ^= 1
    send(device, bytes(corrupt))
    assert read(device, Register.LAST_ERROR) == E.E_CRC
    send(device, b"garbage" + feature_packet(2, [0, 1, 1]))
    assert read(device, Register.SEQ_QUEUED) == 1
    counters = device.debug_counters
    assert counters["crc_errors"] == 1 and counters["junk_bytes"] == 7
    assert counters["type_errors"] == 1 and counters["length_errors"] == 1


def test_sequence_memory_is_bounded_by_frames_and_by_raw_bytes():
    device = make_device()
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, b"".join(feature_packet(i, [1, 0, 1]) for i in range(4096)))
    assert read(device, Register.SEQ_QUEUED) == 4096 and read(device, Register.LAST_ERROR) == 0
    send(device, feature_packet(9999, [1, 1, 1]))
    assert read(device, Register.SEQ_QUEUED) == 4096 and read(device, Register.LAST_ERROR) == E.E_SEQ_FULL
    assert write(device, Register.SEQ_CONTROL, 2)  # ABORT drops the queue
    assert read(device, Register.SEQ_QUEUED) == 0

    device = make_device(raw_queue_bytes=3 * 9)  # room for the mirror bits of three 13 x 5 frames
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, b"".join(raw_packet(i, np.ones(65)) for i in range(4)))
    assert read(device, Register.SEQ_QUEUED) == 3 and read(device, Register.LAST_ERROR) == E.E_SEQ_FULL
    send(device, feature_packet(7, [1, 0, 0]))  # feature frames do not count against the raw budget
    assert read(device, Register.SEQ_QUEUED) == 4


def test_sequence_capacity_is_an_option_the_register_reports():
    device = make_device(seq_capacity_frames=5)
    assert read(device, Register.SEQ_CAPACITY) == 5
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, b"".join(raw_packet(i, np.ones(65)) for i in range(3)))
    send(device, b"".join(feature_packet(10 + i, [0, 1, 0]) for i in range(3)))
    assert read(device, Register.SEQ_QUEUED) == 5 and read(device, Register.LAST_ERROR) == E.E_SEQ_FULL
    assert write(device, Register.SEQ_CONTROL, 1)
    assert read(device, Register.DMD_FRAME_COUNT) == 5


# ======================================================================================================
# sequencer.py and capture.py: sequences, lag, triggers, FIFO, flags
# ======================================================================================================


def expected_feature_counts(device: EmulatedDevice, bits) -> np.ndarray:
    optics = device.optics
    return np.clip(np.array(bits, dtype=np.float32) @ optics.feature_weights(), 0, 255).astype(np.uint16)


def test_int_sequence_gives_one_frame_per_dmd_frame_with_metadata():
    device = lit_device()
    send(device, layout_packet(3, LAYOUT_RUNS))
    frames_bits = [[1, 0, 0], [0, 1, 1], [1, 1, 1]]
    send(device, b"".join(feature_packet(40 + i, b) for i, b in enumerate(frames_bits)))
    assert write(device, Register.SEQ_CONTROL, 1)
    assert read(device, Register.SEQ_QUEUED) == 0 and not read(device, Register.STATUS) & 1
    frames = drain_frames(device)
    assert [h.dmd_frame_id for h, _ in frames] == [40, 41, 42]
    assert [h.camera_frame_id for h, _ in frames] == [0, 1, 2]
    assert [h.timestamp_us for h, _ in frames] == [0, 500, 1000]
    assert all(
        (h.exposure_us, h.roi_x, h.roi_y, h.roi_w, h.roi_h, h.pixel_format, h.flags) == (400, 0, 0, 8, 6, 1, 0)
        for h, _ in frames
    )
    for (_, pixels), bits in zip(frames, frames_bits, strict=True):
        assert np.array_equal(pixels, expected_feature_counts(device, bits))
    assert read(device, Register.DMD_FRAME_COUNT) == 3 and read(device, Register.CAM_FRAME_COUNT) == 3
    assert read(device, Register.DEVICE_TIME_LO) == 1500
    call = device.sensor.calls[0]
    assert call["light_on"] and call["exposure_us"] == 400 and call["gain"] == 1.0 and call["bits"] == 8
    assert call["laser_power_mw"] == 50.0 and call["frame_indices"].tolist() == [0, 1, 2]


def test_raw_frame_equal_to_the_expanded_feature_frame_gives_the_same_camera_frame():
    device = lit_device()
    send(device, layout_packet(3, LAYOUT_RUNS))
    bits = [1, 0, 1]
    send(device, feature_packet(1, bits) + raw_packet(2, expand(bits)))
    # A raw frame with junk in its padding bits: they are not mirrors.
    junk_padding = bytearray(raw_packet(3, expand(bits)))
    junk_padding[16 + 8 + 8] |= 0x7F
    junk_padding[-4:] = struct.pack("<I", zlib.crc32(bytes(junk_padding[16:-4])))
    send(device, bytes(junk_padding))
    assert write(device, Register.SEQ_CONTROL, 1)
    (_, a), (_, b), (_, c) = drain_frames(device)
    assert np.array_equal(a, b) and np.array_equal(a, c) and a.any()
    assert np.array_equal(device.expand_feature_bits(np.array([bits], dtype=np.uint8))[0], np.packbits(expand(bits)))


def test_lag_delays_frames_across_sequences_with_blanks_first():
    device = lit_device(lag_frames=2)
    send(device, layout_packet(3, LAYOUT_RUNS))
    bits = {10: [1, 0, 0], 11: [0, 1, 0], 12: [0, 0, 1], 13: [1, 1, 0], 14: [0, 1, 1]}
    send(device, b"".join(feature_packet(i, bits[i]) for i in (10, 11, 12)))
    assert write(device, Register.SEQ_CONTROL, 1)
    first = drain_frames(device)
    assert [h.dmd_frame_id for h, _ in first] == [BLANK, BLANK, 10]
    assert not first[0][1].any()  # blank DMD: no light through the medium
    assert np.array_equal(first[2][1], expected_feature_counts(device, bits[10]))
    send(device, b"".join(feature_packet(i, bits[i]) for i in (13, 14)))
    assert write(device, Register.SEQ_CONTROL, 1)
    second = drain_frames(device)
    assert [h.dmd_frame_id for h, _ in second] == [11, 12]
    assert [h.camera_frame_id for h, _ in second] == [3, 4]
    for h, pixels in second:
        assert np.array_equal(pixels, expected_feature_counts(device, bits[h.dmd_frame_id]))


def test_frames_in_the_lag_pipeline_keep_the_mirrors_of_the_layout_they_were_shown_with():
    device = lit_device(lag_frames=1)
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, feature_packet(5, [1, 1, 0]))
    assert write(device, Register.SEQ_CONTROL, 1)
    drain_frames(device)
    old_mirrors = expand([1, 1, 0])
    send(device, layout_packet(2, [(0, 40, 10), (1, 60, 5)]))  # a different table; frame 5 is still in the pipe
    send(device, feature_packet(6, [1, 1]))
    assert write(device, Register.SEQ_CONTROL, 1)
    ((header, pixels),) = drain_frames(device)
    assert header.dmd_frame_id == 5
    expected = old_mirrors.astype(np.float32) @ device.optics.mirror_weights()
    assert np.array_equal(pixels, np.clip(expected, 0, 255).astype(np.uint16))


def test_frames_queued_before_a_layout_change_keep_their_old_mirrors():
    device = lit_device()
    send(device, layout_packet(3, LAYOUT_RUNS) + feature_packet(1, [0, 1, 1]))
    send(device, layout_packet(1, [(0, 0, 65)]) + feature_packet(2, [1]))
    assert write(device, Register.SEQ_CONTROL, 1)
    (h1, p1), (h2, p2) = drain_frames(device)
    weights = device.optics.mirror_weights()
    assert np.array_equal(p1, np.clip(expand([0, 1, 1]).astype(np.float32) @ weights, 0, 255))
    assert np.array_equal(p2, np.clip(np.ones(65, dtype=np.float32) @ weights, 0, 255))


def test_soft_trigger_displays_one_frame_per_write():
    device = lit_device()
    device.serial_write(b"TRIGGER:MODE SOFT\n")
    assert device.serial_read(10) == b"OK\n"
    send(device, layout_packet(3, LAYOUT_RUNS))
    send(device, feature_packet(1, [1, 0, 0]) + feature_packet(2, [0, 1, 0]))
    assert write(device, Register.SEQ_CONTROL, 1)
    assert read(device, Register.STATUS) & 1 and read(device, Register.SEQ_QUEUED) == 2
    assert drain_frames(device) == []
    # While running: settings and layouts are refused, and so is a second START or a mode change.
    for register, value in (
        (Register.ROI_W, 4),
        (Register.EXPOSURE_US, 300),
        (Register.FRAME_TIME_US, 900),
        (Register.PIXEL_FORMAT, 2),
        (Register.SEQ_CONTROL, 1),
        (Register.SEQ_CONTROL, 3),
    ):
        assert not write(device, register, value)
        assert read(device, Register.LAST_ERROR) == E.E_BUSY
    send(device, layout_packet(1, [(0, 0, 1)]))
    assert read(device, Register.LAST_ERROR) == E.E_BUSY and read(device, Register.LAYOUT_FEATURES) == 3
    device.serial_write(b"TRIGGER:MODE INT\n")
    assert device.serial_read(100) == b'ERR -200,"Execution error"\n'
    assert write(device, Register.GAIN_MILLI, 2000)  # gain may change between frames

    assert write(device, Register.SOFT_TRIGGER, 1)
    ((h1, _),) = drain_frames(device)
    assert (h1.dmd_frame_id, h1.timestamp_us) == (1, 0)
    assert write(device, Register.SOFT_TRIGGER, 1)
    ((h2, p2),) = drain_frames(device)
    assert (h2.dmd_frame_id, h2.timestamp_us, h2.camera_frame_id) == (2, 500, 1)
    assert np.array_equal(p2, np.clip(expected_feature_counts(device, [0, 1, 0]).astype(float) * 2, 0, 255))
    assert not read(device, Register.STATUS) & 1  # the queue ran out: the sequence ended
    assert not write(device, Register.SOFT_TRIGGER, 1)
    assert read(device, Register.LAST_ERROR) == E.E_TRIGGER


def test_ext_trigger_runs_like_int_on_the_emulator():
    device = lit_device()
    device.serial_write(b"TRIG:MODE EXT\n")
    assert device.serial_read(10) == b"OK\n"
    send(device, raw_packet(1, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    assert [h.dmd_frame_id for h, _ in drain_frames(device)] == [1]


def test_fifo_overflow_drops_frames_and_counts_them():
    packet_bytes = 16 + 32 + 48 + 4
    device = lit_device(in_fifo_bytes=3 * packet_bytes + 10)
    assert read(device, Register.IN_FIFO_BYTES) == 3 * packet_bytes + 10
    send(device, b"".join(raw_packet(i, np.ones(65)) for i in range(5)))
    assert write(device, Register.SEQ_CONTROL, 1)
    assert read(device, Register.CAM_DROPPED) == 2 and read(device, Register.CAM_FRAME_COUNT) == 5
    assert read(device, Register.STATUS) & (1 << 6)
    assert not read(device, Register.STATUS) & (1 << 6)  # reading STATUS clears FIFO_OVERFLOWED
    assert [h.camera_frame_id for h, _ in drain_frames(device)] == [0, 1, 2]
    send(device, raw_packet(7, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    assert [(h.camera_frame_id, h.dmd_frame_id) for h, _ in drain_frames(device)] == [(5, 7)]
    assert device.sensor.calls[-1]["frame_indices"].tolist() == [5]  # dropped frames were never computed


def test_dark_and_saturated_flags():
    device = make_device()  # laser off, shutter closed
    send(device, raw_packet(1, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    ((header, pixels),) = drain_frames(device)
    assert header.flags == 2 and np.all(pixels == StubSensor.DARK_LEVEL)
    assert device.optics.calls[-1] == ("blank", 1)  # no optics computed in the dark
    device.serial_write(b"LASER:STATE ON\nSHUTTER:STATE OPEN\n")
    assert write(device, Register.GAIN_MILLI, 16000)  # stub intensities x 16 exceed 255
    send(device, raw_packet(2, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    ((header, pixels),) = drain_frames(device)
    assert header.flags == 1 and pixels.max() == 255
    device.trip_interlock()
    assert not device.light_on
    send(device, raw_packet(3, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    ((header, _),) = drain_frames(device)
    assert header.flags & 2
    assert read(device, Register.STATUS) & 0b1110 == 0b0100  # laser off, shutter open, interlock tripped


@pytest.mark.parametrize("fmt", [1, 2, 3, 4, 5])
def test_every_pixel_format_carries_the_sensor_counts(fmt):
    device = lit_device()
    assert write(device, Register.PIXEL_FORMAT, fmt)
    assert write(device, Register.ROI_W, 5) and write(device, Register.ROI_H, 3) and write(device, Register.ROI_X, 2)
    assert write(device, Register.GAIN_MILLI, 12000)
    send(device, raw_packet(1, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    ((header, pixels),) = drain_frames(device)
    assert (header.pixel_format, header.roi_x, header.roi_w, header.roi_h) == (fmt, 2, 5, 3)
    full = (1 << wire.pixel_bits(fmt)) - 1
    expected = np.clip(np.rint(np.ones(65, dtype=np.float32) @ device.optics.mirror_weights() * 12), 0, full)
    assert np.array_equal(pixels, expected)
    assert device.sensor.calls[-1]["bits"] == wire.pixel_bits(fmt)
    assert header.flags == (1 if expected.max() == full else 0)


def test_reset_restores_power_on_state():
    device = lit_device(lag_frames=1)
    send(device, layout_packet(3, LAYOUT_RUNS) + feature_packet(1, [1, 1, 1]))
    assert write(device, Register.EXPOSURE_US, 300) and write(device, Register.SEQ_CONTROL, 1)
    device.reset()
    assert read(device, Register.CAM_FRAME_COUNT) == 0 and read(device, Register.LAYOUT_FEATURES) == 0
    assert read(device, Register.EXPOSURE_US) == 400 and device.in_fifo_bytes == 0
    assert read(device, Register.DEVICE_TIME_LO) == 0 and not device.light_on
    send(device, raw_packet(2, np.ones(65)))
    assert write(device, Register.SEQ_CONTROL, 1)
    assert [h.dmd_frame_id for h, _ in drain_frames(device)] == [BLANK]  # the lag pipeline was emptied too


# ======================================================================================================
# controller.py: the serial line
# ======================================================================================================


def ask(device: EmulatedDevice, line: bytes) -> bytes:
    device.serial_write(line)
    return device.serial_read(10_000)


def test_identity_version_and_short_forms():
    device = make_device()
    assert ask(device, b"*IDN?\n") == b"OPU Open Stack,OPU-T,SIM-TEST,1.2.3\n"
    assert ask(device, b"*idn?\r\n") == b"OPU Open Stack,OPU-T,SIM-TEST,1.2.3\n"
    assert ask(device, b"SYSTEM:VERSION?\n") == b"1\n"
    for command in (b"LASER:POWER 12.5", b"LAS:POW 12.5", b"LASE:POWE 12.5", b":laser:power 12.5"):
        assert ask(device, command + b"\n") == b"OK\n"
    assert ask(device, b"LAS:POW?\n") == b"12.500\n"
    assert ask(device, b"LASER:POWER:MAX?\n") == b"100.000\n"
    assert ask(device, b"LASERS:POWER?\n").startswith(b"ERR -113")
    assert ask(device, b"LA:POW?\n").startswith(b"ERR -113")
    assert ask(device, b"TEMP?\n") == b"25.00\n"
    assert ask(device, b"SHUT:STAT?\nINT?\nTRIG:MODE?\n") == b"CLOSED\nOK\nINT\n"


@pytest.mark.parametrize(
    "line,code",
    [
        (b"FROBNICATE 3", -113),
        (b"", -102),
        (b"LASER:STATE", -109),
        (b"LASER:STATE? 1", -108),
        (b"*RST now", -108),
        (b"LASER:STATE ON OFF", -108),
        (b"LASER:STATE MAYBE", -222),
        (b"LASER:POWER 100.5", -222),
        (b"LASER:POWER -1", -222),
        (b"LASER:POWER nan", -222),
        (b"LASER:POWER lots", -102),
        (b"SHUTTER:STATE AJAR", -222),
        (b"TRIGGER:MODE FAST", -222),
        (b"TEMPERATURE", -113),
        (b"LASER::STATE?", -102),
        (b"LASER:STATE\tON", -101),
        (b"*IDN?\xe9", -101),
        (b"X" * 257, -223),
    ],
)
def test_refused_lines_answer_err_and_queue_the_error(line, code):
    device = make_device()
    reply = ask(device, line + b"\n")
    message = {
        -101: "Invalid character",
        -102: "Syntax error",
        -108: "Parameter not allowed",
        -109: "Missing parameter",
        -113: "Undefined header",
        -222: "Data out of range",
        -223: "Too much data",
    }[code]
    assert reply == f'ERR {code},"{message}"\n'.encode()
    assert ask(device, b"SYSTEM:ERROR?\n") == f'{code},"{message}"\n'.encode()
    assert ask(device, b"SYST:ERR?\n") == b'0,"No error"\n'


def test_a_line_of_256_bytes_is_accepted_and_an_endless_line_is_bounded():
    device = make_device()
    assert ask(device, b"*IDN?" + b" " * 251 + b"\n").startswith(b"OPU Open Stack")
    device.serial_write(b"A" * 100_000)
    assert device.controller._partial == b""  # nothing of an overlong line is kept
    assert ask(device, b"B" * 100 + b"\n*IDN?\n").startswith(b'ERR -223,"Too much data"\nOPU Open Stack')


def test_error_queue_overflow_replaces_the_newest_entry():
    device = make_device()
    for i in range(ERROR_QUEUE_LENGTH + 3):
        ask(device, b"NOPE\n" if i % 2 else b"LASER:STATE\n")
    queue = device.controller.error_queue
    assert len(queue) == ERROR_QUEUE_LENGTH
    assert queue[0] == (-109, "Missing parameter") and queue[-1] == (-350, "Queue overflow")
    replies = [ask(device, b"SYSTEM:ERROR?\n") for _ in range(ERROR_QUEUE_LENGTH + 1)]
    assert replies[-2] == b'-350,"Queue overflow"\n' and replies[-1] == b'0,"No error"\n'


@settings(max_examples=100, deadline=None)
@given(st.lists(st.binary(max_size=300).filter(lambda b: b"\n" not in b), min_size=1, max_size=6), st.integers(1, 50))
def test_every_line_gets_exactly_one_reply_line(lines, chunk):
    device = make_device()
    stream = b"".join(line + b"\n" for line in lines)
    for i in range(0, len(stream), chunk):
        device.serial_write(stream[i : i + chunk])
    replies = device.serial_read(1 << 20)
    assert replies.count(b"\n") == len(lines) and replies.endswith(b"\n")


def test_interlock_forces_the_laser_off_until_cleared_and_reset():
    device = lit_device()
    assert device.light_on
    device.trip_interlock()
    assert ask(device, b"INTERLOCK?\nLASER:STATE?\n") == b"TRIPPED\n0\n"
    assert ask(device, b"LASER:STATE ON\n") == b'ERR -200,"Execution error"\n'
    assert ask(device, b"INTERLOCK:RESET\n") == b'ERR -200,"Execution error"\n'
    assert not read(device, Register.STATUS) & (1 << 3)
    device.clear_interlock_cause()
    assert ask(device, b"INTE:RES\n") == b"OK\n"
    assert ask(device, b"INTERLOCK?\nLASER:STATE?\n") == b"OK\n0\n"  # re-armed, but the laser stays off
    assert ask(device, b"LASER:STATE 1\n") == b"OK\n"
    assert device.light_on and read(device, Register.STATUS) & 0b1110 == 0b1110


def test_rst_restores_defaults_and_aborts_the_sequence():
    device = lit_device()
    send(device, raw_packet(1, np.ones(65)))
    ask(device, b"LASER:POWER 3\nTRIGGER:MODE SOFT\nBAD\n")
    assert ask(device, b"*RST\n") == b"OK\n"
    assert (
        ask(device, b"LASER:STATE?\nSHUTTER:STATE?\nLASER:POWER?\nTRIGGER:MODE?\nSYSTEM:ERROR?\n")
        == b'0\nCLOSED\n50.000\nINT\n0,"No error"\n'
    )
    assert read(device, Register.SEQ_QUEUED) == 0


def test_temperature_drifts_with_device_time_not_wall_clock():
    device = lit_device()
    assert ask(device, b"TEMPERATURE?\n") == b"25.00\n"
    time.sleep(0.01)
    assert ask(device, b"TEMPERATURE?\n") == b"25.00\n"
    device.sequencer.device_time_us = 3_600_000_000  # one hour of device time
    assert ask(device, b"TEMPERATURE?\n") == b"25.10\n"


def test_laser_power_reaches_the_sensor():
    device = lit_device()
    ask(device, b"LASER:POWER 20\n")
    send(device, raw_packet(1, np.ones(65)))
    write(device, Register.SEQ_CONTROL, 1)
    assert device.sensor.calls[-1]["laser_power_mw"] == 20.0


# ======================================================================================================
# usb_backend.py: pyusb on top of the firmware
# ======================================================================================================


def test_pyusb_finds_the_device_with_the_documented_descriptors():
    device = make_device()
    dev = usb.core.find(backend=get_backend([device]), idVendor=0x1209)
    assert dev is not None
    assert (dev.idVendor, dev.idProduct, dev.bcdUSB, dev.bcdDevice) == (0x1209, 0x4F50, 0x0200, 0x0102)
    assert dev.bNumConfigurations == 1
    assert (dev.bDeviceClass, dev.bDeviceSubClass, dev.bDeviceProtocol) == (0, 0, 0)
    assert dev.manufacturer == "OPU Open Stack" and dev.product == "OPU-T" and dev.serial_number == "SIM-TEST"
    assert usb.util.get_string(dev, dev.iSerialNumber) == "SIM-TEST"
    assert dev.langids == (0x0409,)
    dev.set_configuration()
    cfg = dev.get_active_configuration()
    assert cfg.bConfigurationValue == 1
    intf = cfg[(0, 0)]
    assert (intf.bInterfaceNumber, intf.bAlternateSetting) == (0, 0)
    assert (intf.bInterfaceClass, intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (0xFF, 0x4F, 1)
    eps = [(e.bEndpointAddress, usb.util.endpoint_type(e.bmAttributes), e.wMaxPacketSize) for e in intf]
    assert eps == [(0x01, usb.util.ENDPOINT_TYPE_BULK, 512), (0x81, usb.util.ENDPOINT_TYPE_BULK, 512)]
    raw = dev.ctrl_transfer(0x80, 6, 1 << 8, 0, 18)
    assert bytes(raw[:4]) == bytes([18, 1, 0x00, 0x02]) and bytes(raw[8:12]) == bytes([0x09, 0x12, 0x50, 0x4F])
    config = bytes(dev.ctrl_transfer(0x80, 6, 2 << 8, 0, 255))
    assert len(config) == 32 and config[2] == 32 and config[9 + 5 : 9 + 8] == bytes([0xFF, 0x4F, 0x01])
    usb.util.dispose_resources(dev)


def test_registers_packets_stalls_and_timeouts_through_pyusb():
    device = lit_device()
    dev = usb.core.find(backend=get_backend([device]), idVendor=0x1209, idProduct=0x4F50)
    dev.set_configuration()
    usb.util.claim_interface(dev, 0)

    def read_reg(address: int) -> int:
        data = dev.ctrl_transfer(0xC0, 0x01, address, 0, 4)
        assert len(data) == 4
        return int.from_bytes(bytes(data), "little")

    assert read_reg(Register.DMD_WIDTH) == 13
    assert dev.ctrl_transfer(0x40, 0x02, Register.EXPOSURE_US, 0, (300).to_bytes(4, "little")) == 4
    assert read_reg(Register.EXPOSURE_US) == 300
    with pytest.raises(usb.core.USBError) as info:
        dev.ctrl_transfer(0x40, 0x02, Register.EXPOSURE_US, 0, (5).to_bytes(4, "little"))
    assert info.value.errno == errno.EPIPE and not isinstance(info.value, usb.core.USBTimeoutError)
    assert read_reg(Register.LAST_ERROR) == E.E_VALUE and read_reg(Register.EXPOSURE_US) == 300
    with pytest.raises(usb.core.USBError) as info:
        dev.ctrl_transfer(0xC0, 0x01, Register.DMD_WIDTH, 0, 2)
    assert info.value.errno == errno.EPIPE and read_reg(Register.LAST_ERROR) == E.E_LENGTH
    with pytest.raises(usb.core.USBError):
        dev.ctrl_transfer(0xC0, 0x33, 0, 0, 4)  # unknown vendor request

    data = layout_packet(3, LAYOUT_RUNS) + b"".join(feature_packet(i, [1, i % 2, 1]) for i in range(4))
    assert dev.write(0x01, data, 1000) == len(data)
    dev.ctrl_transfer(0x40, 0x02, Register.SEQ_CONTROL, 0, (1).to_bytes(4, "little"))
    received = b""
    buffer = usb.util.create_buffer(100)  # small reads: packets span transfers
    while True:
        try:
            n = dev.read(0x81, buffer, 1000)
        except usb.core.USBTimeoutError:
            break
        assert 0 < n <= 100
        received += bytes(buffer[:n])
    items = wire.PacketStream().feed(received)
    assert [wire.decode_camera_frame(i.payload)[0].dmd_frame_id for i in items] == [0, 1, 2, 3]

    started = time.monotonic()
    with pytest.raises(usb.core.USBTimeoutError) as info:
        dev.read(0x81, 512, 5000)
    assert info.value.errno == errno.ETIMEDOUT
    assert time.monotonic() - started < 1.0  # nothing can arrive: the timeout is immediate
    usb.util.dispose_resources(dev)


def test_unplug_and_replug_through_pyusb():
    device = make_device()
    backend = get_backend([device])
    dev = usb.core.find(backend=backend, idVendor=0x1209)
    dev.set_configuration()
    device.unplug()
    for attempt in (
        lambda: dev.ctrl_transfer(0xC0, 1, 0, 0, 4),
        lambda: dev.write(0x01, b"x"),
        lambda: dev.read(0x81, 10, 10),
    ):
        with pytest.raises(usb.core.USBError) as info:
            attempt()
        assert info.value.errno == errno.ENODEV
    assert usb.core.find(backend=backend, idVendor=0x1209) is None
    device.replug()
    with pytest.raises(usb.core.USBError) as info:
        dev.ctrl_transfer(0xC0, 1, 0, 0, 4)  # a handle from before the unplug stays dead
    assert info.value.errno == errno.ENODEV
    usb.util.dispose_resources(dev)
    fresh = usb.core.find(backend=backend, idVendor=0x1209)
    assert int.from_bytes(bytes(fresh.ctrl_transfer(0xC0, 1, 0, 0, 4)), "little") == 1
    usb.util.dispose_resources(fresh)


def test_backend_over_the_registry_lists_every_live_device_with_distinct_addresses():
    a = create_device(StubConfig(serial_number="SIM-A"), optics=StubOptics(StubConfig()), sensor=StubSensor(None))
    b = create_device(StubConfig(serial_number="SIM-B"), optics=StubOptics(StubConfig()), sensor=StubSensor(None))
    try:
        devices = usb.core.find(find_all=True, backend=get_backend(), idVendor=0x1209)
        found = {d.serial_number: d.address for d in devices}
        assert {"SIM-A", "SIM-B"} <= set(found) and found["SIM-A"] != found["SIM-B"]
        release_device(a)
        found = [d.serial_number for d in usb.core.find(find_all=True, backend=get_backend(), idVendor=0x1209)]
        assert "SIM-A" not in found and "SIM-B" in found
    finally:
        release_device(a)
        release_device(b)


def test_many_small_transfers_stay_cheap():
    device = lit_device()
    dev = usb.core.find(backend=get_backend([device]), idVendor=0x1209)
    dev.set_configuration()
    started = time.perf_counter()
    for _ in range(2000):
        dev.ctrl_transfer(0xC0, 1, Register.STATUS, 0, 4)
    elapsed = time.perf_counter() - started
    usb.util.dispose_resources(dev)
    # Not a timing assertion on speed, a sanity bound against pathological per-call work (e.g. sleeping).
    assert elapsed < 5.0


# ======================================================================================================
# registry.py, protocol_opusim.py, pty_server.py
# ======================================================================================================


def stub_device(**overrides) -> EmulatedDevice:
    config = StubConfig(**overrides)
    return create_device(config, optics=StubOptics(config), sensor=StubSensor(config))


def test_registry_names_are_unique_and_released_devices_vanish():
    a, b = stub_device(), stub_device()
    try:
        assert a.name != b.name and re.fullmatch(r"sim-\d+", a.name)
        assert get_device(a.name) is a and a in list_devices()
        with pytest.raises(SimConfigError):
            create_device(StubConfig(), name=a.name, optics=StubOptics(StubConfig()), sensor=StubSensor(None))
    finally:
        release_device(a)
        release_device(b.name)
    with pytest.raises(SimDeviceNotFoundError):
        get_device(a.name)
    assert not a.connected
    release_device(a)  # releasing twice does nothing


def test_firmware_sim_exports():
    assert firmware_sim.create_device is create_device
    assert firmware_sim.EmulatedDevice is EmulatedDevice
    assert "firmware_sim" in serial.protocol_handler_packages


def test_pyserial_url_handler_talks_to_the_controller():
    device = stub_device()
    try:
        port = serial.serial_for_url(f"opusim://{device.name}", timeout=0.5)
        assert port.is_open
        port.write(b"*IDN?\n")
        assert port.in_waiting > 0
        assert port.readline() == b"OPU Open Stack,OPU-T,SIM-TEST,1.2.3\n"
        port.write(b"LASER:STATE ON\nSHUTTER:STATE OPEN\n")
        assert port.read(6) == b"OK\nOK\n" and device.light_on
        port.write(b"*IDN?\n")
        port.reset_input_buffer()
        assert port.in_waiting == 0
        port.timeout = 0.1
        started = time.monotonic()
        assert port.read(5) == b""  # nothing pending: the timeout passes and read returns short
        assert 0.08 <= time.monotonic() - started < 1.0
        port.timeout = 0
        assert port.read(5) == b""
        port.close()
        with pytest.raises(serial.SerialException):
            port.write(b"*IDN?\n")
    finally:
        release_device(device)


def test_pyserial_url_handler_errors():
    with pytest.raises(serial.SerialException):
        serial.serial_for_url("opusim://sim-does-not-exist", timeout=0.1)
    device = stub_device()
    port = serial.serial_for_url(f"opusim://{device.name}", timeout=0.1)
    release_device(device)
    with pytest.raises(serial.SerialException):
        port.read(1)
    with pytest.raises(serial.SerialException):
        port.write(b"*IDN?\n")


def test_pyserial_read_wakes_up_when_another_thread_writes():
    import threading

    device = stub_device()
    try:
        port = serial.serial_for_url(f"opusim://{device.name}", timeout=5)
        timer = threading.Timer(0.05, lambda: device.inject_serial_output(b"hello\n"))
        timer.start()
        started = time.monotonic()
        assert port.readline() == b"hello\n"
        assert time.monotonic() - started < 2.0
        timer.join()
    finally:
        release_device(device)


def test_pty_server_serves_the_controller_line_on_a_real_terminal():
    device = stub_device()
    try:
        with PtyServer(device) as server:
            assert server.path and os.path.exists(server.path)
            with serial.Serial(server.path, timeout=1) as port:
                port.write(b"*IDN?\n")
                assert port.readline() == b"OPU Open Stack,OPU-T,SIM-TEST,1.2.3\n"
                port.write(b"LAS:STAT ON\r\nLASER:STATE?\n")
                assert port.readline() == b"OK\n" and port.readline() == b"1\n"
                port.write(b"BOGUS\nSYST:ERR?\n")
                assert port.readline() == b'ERR -113,"Undefined header"\n'
                assert port.readline() == b'-113,"Undefined header"\n'
        assert server.path and not server._thread
        server.stop()  # idempotent
    finally:
        release_device(device)


def test_opu_sim_main_serves_until_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from firmware_sim.pty_server import main; sys.exit(main(sys.argv[1:]))",
            "--url-query",
            "seed=3&dmd=16x8&camera=8x8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
    )
    try:
        path_line = proc.stdout.readline()
        identity_line = proc.stdout.readline()
        match = re.fullmatch(r"pty: (\S+)\n", path_line)
        assert match, (path_line, proc.stderr.read() if proc.poll() is not None else "")
        assert identity_line == "identity: OPU Open Stack,OPU-1,SIM-00000003,1.0.0\n"
        with serial.Serial(match.group(1), timeout=2) as port:
            port.write(b"*IDN?\n")
            assert port.readline() == b"OPU Open Stack,OPU-1,SIM-00000003,1.0.0\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_opu_sim_main_refuses_bad_options(capsys):
    from firmware_sim.pty_server import main

    assert main(["--url-query", "warp=9"]) == 2
    assert "warp" in capsys.readouterr().err


# ======================================================================================================
# With the real optics and sensor (when firmware_sim.optics / sensor are installed)
# ======================================================================================================


def _real_device(query: str) -> EmulatedDevice:
    return EmulatedDevice(SimConfig.from_query(query))


def _run(device: EmulatedDevice, data: bytes) -> list:
    send(device, data)
    assert write(device, Register.SEQ_CONTROL, 1), read(device, Register.LAST_ERROR)
    return drain_frames(device)


def test_real_optics_raw_equals_expanded_feature_frame_and_is_reproducible():
    query = "seed=5&dmd=32x16&camera=16x12&cell=4&noise=0"
    device = _real_device(query)
    ask(device, b"LASER:STATE ON\nSHUTTER:STATE OPEN\n")
    runs = [(f, 64 * f, 64) for f in range(8)]  # features of 2 mirror rows each: whole 4 x 4 cells
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(6, 8)).astype(np.uint8)
    mirrors = np.zeros((6, 512), dtype=np.uint8)
    for f, first, n in runs:
        mirrors[:, first : first + n] = bits[:, f : f + 1]
    send(device, layout_packet(8, runs))
    feature_frames = _run(device, b"".join(feature_packet(i, b) for i, b in enumerate(bits)))
    raw_frames = _run(device, b"".join(raw_packet(100 + i, m) for i, m in enumerate(mirrors)))
    for (_, a), (_, b) in zip(feature_frames, raw_frames, strict=True):
        # Noise off: counts are round(signal); float32 sums in two orders may straddle a rounding edge by 1.
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    assert any(p.any() for _, p in feature_frames)
    again = _real_device(query)
    ask(again, b"LASER:STATE ON\nSHUTTER:STATE OPEN\n")
    send(again, layout_packet(8, runs))
    repeat = _run(again, b"".join(feature_packet(i, b) for i, b in enumerate(bits)))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(feature_frames, repeat, strict=True))


def test_real_sensor_dark_frames_and_lag():
    device = _real_device("seed=2&dmd=16x8&camera=8x8&cell=4&lag=1")
    frames = _run(device, b"".join(raw_packet(i, np.ones(128)) for i in range(3)))
    assert [h.dmd_frame_id for h, _ in frames] == [BLANK, 0, 1]
    assert all(h.flags & 2 for h, _ in frames)
    assert device.ground_truth is not None
