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


class _Decoder:
    """Decoding state: the output, the write position (row, column) and the read position."""

    def __init__(self, data: bytes, width: int, height: int) -> None:
        self.data, self.width, self.height = data, width, height
        self.out = np.zeros((height, width, 3), dtype=np.uint8)
        self.row = self.col = self.pos = 0

    def claim(self, n: int) -> tuple[int, int]:
        """Reserve n pixels of the current row; return where they start."""
        row, col = self.row, self.col
        if row >= self.height or col + n > self.width:
            raise ImageDecodeError(f"row {row} overflows at column {col} + {n}")
        self.col += n
        if self.col == self.width:
            self.row, self.col = row + 1, 0
        return row, col

    def pixels(self, n: int) -> npt.NDArray[np.uint8]:
        if self.pos + 3 * n > len(self.data):
            raise ImageDecodeError("pixels cut short")
        values = np.frombuffer(self.data, np.uint8, 3 * n, self.pos).reshape(n, 3)
        self.pos += 3 * n
        return values

    def repeat(self) -> None:
        n, self.pos = _count(self.data, self.pos)
        pixel = self.pixels(1)
        row, col = self.claim(n)
        self.out[row, col : col + n] = pixel

    def escape(self) -> bool:
        """A command that starts with 0; True at End of Image."""
        data = self.data
        if self.pos + 1 >= len(data):
            raise ImageDecodeError("command cut short")
        second = data[self.pos + 1]
        if second == 0:  # end of row
            if self.col != 0:
                raise ImageDecodeError(f"end of row at column {self.col} of row {self.row}")
            self.pos += 2
            return False
        if second == 1:
            if self.pos + 2 >= len(data):
                raise ImageDecodeError("copy command cut short")
            n, self.pos = _count(data, self.pos + 2)
            if n == 0:
                return True
            if self.row == 0:
                raise ImageDecodeError("copy from the previous row on the first row")
            row, col = self.claim(n)
            self.out[row, col : col + n] = self.out[row - 1, col : col + n]
            return False
        n, self.pos = _count(data, self.pos + 1)
        if n < 2:
            raise ImageDecodeError(f"uncompressed group of {n} pixels")
        values = self.pixels(n)
        row, col = self.claim(n)
        self.out[row, col : col + n] = values
        return False


def decode_erle(data: bytes, width: int, height: int) -> npt.NDArray[np.uint8]:
    """Decode ERLE data into (height, width, 3) pixel bytes in wire order."""
    decoder = _Decoder(data, width, height)
    while True:
        if decoder.pos >= len(data):
            raise ImageDecodeError("no End of Image")
        if data[decoder.pos] != 0:
            decoder.repeat()
            continue
        if decoder.escape():
            break
    if decoder.pos != len(data):
        raise ImageDecodeError(f"{len(data) - decoder.pos} bytes after End of Image")
    if decoder.row != height:
        raise ImageDecodeError(f"End of Image after {decoder.row} of {height} rows")
    return decoder.out


def split_planes(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.bool_]:
    """The 24 bit planes of a decoded image, (24, height, width): plane p is bit p % 8 of pixel byte 2 - p // 8."""
    planes = np.empty((24,) + image.shape[:2], dtype=bool)
    for plane in range(24):
        byte = image[..., 2 - plane // 8]
        planes[plane] = (byte >> (plane % 8)) & 1
    return planes
