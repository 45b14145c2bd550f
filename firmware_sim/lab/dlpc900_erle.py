"""The emulated DLPC900's own decoder of uploaded images: the 48-byte image header and Enhanced RLE (DLPC900
programmer's guide DLPU018, sections 2.4.2 and 2.4.3.2), written apart from the driver's encoder so that a bug in
one cannot hide behind the same bug in the other.

It decodes byte by byte, as firmware would: a control byte, then what it announces. Counts are one byte below 128,
else two (bit 7 of the first byte set; value = low seven bits + 128 * second byte). End of row is accepted and
must fall on a row boundary; rows also end when they hold ``width`` pixels. Anything else (a row that overflows, a
copy on the first row, data after End of Image, no End of Image) is an error, which the controller reports as an
invalid compressed image.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["ImageHeader", "ImageDecodeError", "parse_header", "decode_erle", "split_planes", "HEADER_BYTES"]

HEADER_BYTES = 48


class ImageDecodeError(ValueError):
    """The uploaded bytes are not a valid image."""


@dataclass(frozen=True)
class ImageHeader:
    width: int
    height: int
    data_size: int
    compression: int


def parse_header(blob: bytes) -> ImageHeader:
    """Read and check the 48-byte header."""
    if len(blob) < HEADER_BYTES:
        raise ImageDecodeError(f"image shorter than its header ({len(blob)} bytes)")
    if blob[0:4] != bytes((0x53, 0x70, 0x6C, 0x64)):
        raise ImageDecodeError(f"bad image signature {blob[0:4].hex()}")
    width, height = struct.unpack_from("<HH", blob, 4)
    (data_size,) = struct.unpack_from("<I", blob, 8)
    if blob[12:20] != b"\xff" * 8:
        raise ImageDecodeError("reserved header bytes 12..19 are not 0xFF")
    if blob[23] != 0 or blob[24] != 0 or blob[26] != 1 or any(blob[27:48]):
        raise ImageDecodeError("reserved header bytes differ from the guide's values")
    return ImageHeader(width, height, data_size, blob[25])


def _count(data: bytes, pos: int) -> tuple[int, int]:
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    if pos + 1 >= len(data):
        raise ImageDecodeError("count cut short")
    return (first & 0x7F) + (data[pos + 1] << 7), pos + 2


def decode_erle(data: bytes, width: int, height: int) -> npt.NDArray[np.uint8]:
    """Decode ERLE data into (height, width, 3) pixel bytes in wire order."""
    out = np.zeros((height, width, 3), dtype=np.uint8)
    row = col = pos = 0
    end = len(data)

    def advance(n: int) -> None:
        nonlocal row, col
        if row >= height or col + n > width:
            raise ImageDecodeError(f"row {row} overflows at column {col} + {n}")
        col += n
        if col == width:
            row, col = row + 1, 0

    while True:
        if pos >= end:
            raise ImageDecodeError("no End of Image")
        control = data[pos]
        if control != 0:
            n, pos = _count(data, pos)
            if pos + 3 > end:
                raise ImageDecodeError("repeat pixel cut short")
            if n == 0:
                raise ImageDecodeError("repeat of 0 pixels")
            r, c = row, col
            advance(n)
            out[r, c : c + n] = np.frombuffer(data, np.uint8, 3, pos)
            pos += 3
            continue
        if pos + 1 >= end:
            raise ImageDecodeError("command cut short")
        second = data[pos + 1]
        if second == 0:  # end of row
            if col != 0:
                raise ImageDecodeError(f"end of row at column {col} of row {row}")
            pos += 2
            continue
        if second == 1:
            if pos + 2 >= end:
                raise ImageDecodeError("copy command cut short")
            n, pos = _count(data, pos + 2)
            if n == 0:  # end of image
                if pos != end:
                    raise ImageDecodeError(f"{end - pos} bytes after End of Image")
                if row != height:
                    raise ImageDecodeError(f"End of Image after {row} of {height} rows")
                return out
            if row == 0:
                raise ImageDecodeError("copy from the previous row on the first row")
            r, c = row, col
            advance(n)
            out[r, c : c + n] = out[r - 1, c : c + n]
            continue
        n, pos = _count(data, pos + 1)
        if n < 2:
            raise ImageDecodeError(f"uncompressed group of {n} pixels")
        if pos + 3 * n > end:
            raise ImageDecodeError("uncompressed pixels cut short")
        r, c = row, col
        advance(n)
        out[r, c : c + n] = np.frombuffer(data, np.uint8, 3 * n, pos).reshape(n, 3)
        pos += 3 * n


def split_planes(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """The 24 bit planes of a decoded image, (24, height, width): plane p is bit p % 8 of pixel byte 2 - p // 8."""
    planes = np.empty((24,) + image.shape[:2], dtype=bool)
    for plane in range(24):
        byte = image[..., 2 - plane // 8]
        planes[plane] = (byte >> (plane % 8)) & 1
    return planes
