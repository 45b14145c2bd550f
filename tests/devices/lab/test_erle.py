"""The driver's ERLE encoder against the emulator's independent decoder, and against TI's documented examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.lab.dlpc900_erle import (
    ImageDecodeError,
    decode_erle,
    parse_header,
    split_planes,
)
from opu_driver.devices.lab.erle import (
    MAX_COUNT,
    encode_count,
    encode_image,
    erle_encode,
    image_header,
    pictures_to_images,
)


def _roundtrip(image: np.ndarray) -> bytes:
    data = erle_encode(image)
    back = decode_erle(data, image.shape[1], image.shape[0])
    np.testing.assert_array_equal(back, image)
    return data


# ---------------------------------------------------------------------------------------- TI's examples
def test_guide_enhanced_rle_example_decodes() -> None:
    """DLPU018 Table 'Enhanced RLE compression example', row by row; its repeat line is written with the count
    rule the hardware drivers use (0x82 0x01 = 2 + 1 * 128 = 130; the table's own '513' does not fit the rule)."""
    a, b, c = bytes.fromhex("040506"), bytes.fromhex("777777"), bytes.fromhex("070809")
    d, e = bytes.fromhex("0A0B0C"), bytes.fromhex("789ABC")
    row0 = a * 3 + b * 5 + a + c + d + e * 130
    width = len(row0) // 3
    data = (
        bytes.fromhex("03")
        + a
        + bytes.fromhex("05")
        + b
        + bytes.fromhex("0003")
        + a
        + c
        + d
        + bytes.fromhex("8201")
        + e
        + bytes.fromhex("0000")  # end of row
        + bytes.fromhex("01010203")  # one pixel 010203
        + bytes.fromhex("000109")  # copy 9 pixels from the row above
        + b"\x00\x01"
        + encode_count(width - 10)  # copy the rest
        + bytes.fromhex("000100")  # end of image
    )
    image = decode_erle(data, width, 2)
    assert image[0].tobytes() == row0
    assert image[1, 0].tobytes() == bytes.fromhex("010203")
    assert image[1, 1:].tobytes() == row0[3:]


def test_count_encoding_pins_the_two_byte_rule() -> None:
    assert encode_count(127) == b"\x7f"
    assert encode_count(128) == b"\x80\x01"
    assert encode_count(130) == b"\x82\x01"
    assert encode_count(1920) == bytes(((1920 & 0x7F) | 0x80, 1920 >> 7))
    assert encode_count(MAX_COUNT) == b"\xff\xff"
    with pytest.raises(ValueError):
        encode_count(MAX_COUNT + 1)


def test_header_layout_matches_guide_table() -> None:
    header = image_header(1920, 1080, 0x10F0)
    assert len(header) == 48
    assert header[:4] == bytes((0x53, 0x70, 0x6C, 0x64))
    assert header[4:12] == bytes.fromhex("80073804f0100000")
    assert header[12:20] == b"\xff" * 8
    assert header[20:24] == bytes(4)  # background BB GG RR 00: black
    assert header[24:27] == bytes((0, 2, 1))  # reserved 0, compression 2 = ERLE, reserved 1
    assert header[27:] == bytes(21)
    parsed = parse_header(header)
    assert (parsed.width, parsed.height, parsed.data_size, parsed.compression) == (1920, 1080, 0x10F0, 2)


# ---------------------------------------------------------------------------------------- plane mapping
def test_plane_mapping_every_plane_to_its_byte_and_bit() -> None:
    """Picture p of a group lands in pixel byte 2 - p // 8, bit p % 8, and comes back out as plane p: a shift
    error in planes 16..23 (such as bit p + 8 instead of p - 16) fails here."""
    for plane in range(24):
        pictures = np.zeros((24, 1, 1), dtype=bool)
        pictures[plane] = True
        image = pictures_to_images(pictures)[0]
        expected = np.zeros(3, dtype=np.uint8)
        expected[2 - plane // 8] = 1 << (plane % 8)
        np.testing.assert_array_equal(image[0, 0], expected)
        planes = split_planes(image)
        assert planes[:, 0, 0].nonzero()[0].tolist() == [plane]


def test_partial_last_image_pads_with_dark_planes() -> None:
    pictures = np.ones((30, 2, 3), dtype=bool)
    images = pictures_to_images(pictures)
    assert images.shape == (2, 2, 3, 3)
    planes = split_planes(images[1])
    assert planes[:6].all() and not planes[6:].any()


# ---------------------------------------------------------------------------------------- round trips
@settings(max_examples=150, deadline=None)
@given(
    height=st.integers(1, 12),
    width=st.integers(1, 300),
    kind=st.sampled_from(["random", "equal", "runs", "repeated_rows", "few_values"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_roundtrip_property(height: int, width: int, kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    if kind == "random":
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif kind == "equal":
        image = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (height, width, 3)).copy()
    elif kind == "runs":
        values = rng.integers(0, 4, (height, width), dtype=np.uint8)
        image = np.repeat(np.sort(values, axis=1)[..., None], 3, axis=2)
    elif kind == "repeated_rows":
        row = rng.integers(0, 3, (1, width, 3), dtype=np.uint8)
        image = np.repeat(row, height, axis=0)
        image[rng.integers(0, height)] = rng.integers(0, 3, (width, 3), dtype=np.uint8)
    else:
        image = rng.integers(0, 2, (height, width, 3), dtype=np.uint8)
    _roundtrip(image)


def test_runs_longer_than_the_count_limit_are_split() -> None:
    width = 2 * MAX_COUNT + 5
    image = np.zeros((2, width, 3), dtype=np.uint8)
    image[0, 10:] = 7  # a run of 2 * MAX_COUNT - 5 pixels in one row
    image[1, :] = image[0]  # a copy longer than one copy command
    data = _roundtrip(image)
    assert len(data) < 40


def test_long_uncompressed_stretch_is_split() -> None:
    width = MAX_COUNT + 100
    rng = np.random.default_rng(3)
    image = np.zeros((1, width, 3), dtype=np.uint8)
    image[0, :, 0] = np.arange(width) % 256
    image[0, :, 1] = (np.arange(width) // 256) % 256
    image[0, :, 2] = rng.integers(0, 256, width)
    _roundtrip(image)


def test_all_equal_and_repeated_rows_compress_to_a_few_bytes() -> None:
    image = np.full((1080, 1920, 3), 0xA5, dtype=np.uint8)
    data = _roundtrip(image)
    # one repeat for row 0, one copy per later row, end of image
    assert len(data) == (2 + 3) + 1079 * 4 + 3


def test_encode_image_prefixes_header_with_data_size() -> None:
    image = np.zeros((4, 5, 3), dtype=np.uint8)
    blob = encode_image(image)
    header = parse_header(blob)
    assert header.data_size == len(blob) - 48
    assert (header.width, header.height) == (5, 4)


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("02112233"),  # no end of image
        bytes.fromhex("03112233000100"),  # overflows a 2-pixel row
        bytes.fromhex("000102000100"),  # copy on the first row
        bytes.fromhex("0211223300010000"),  # bytes after end of image
    ],
)
def test_decoder_rejects_broken_streams(data: bytes) -> None:
    with pytest.raises(ImageDecodeError):
        decode_erle(data, 2, 1)
