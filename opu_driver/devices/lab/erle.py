"""Binary pictures -> the DLPC900's 24-bit images -> Enhanced Run-Length Encoding (ERLE), host work only.

The DLPC900 takes one-bit patterns in groups of 24: bit plane ``p`` of a 24-bit image is pattern ``p`` of the
group (DLPC900 programmer's guide DLPU018, Pattern Display LUT Definition 0x1A34: image index and bit position
0..23). On the wire each pixel is three bytes; the public drivers that run on hardware (pycrafter6500's ERLE
module, mcSIM) put planes 16..23 in the first byte, 8..15 in the second, 0..7 in the third, bit ``p % 8`` of its
byte, which is the BB GG RR order of the image header's background colour (DLPU018 section 2.4.2).

ERLE (DLPU018 section 2.4.3.2) encodes rows of pixels with these commands:

====================  ========================================================
``n  B G R``           repeat the pixel n times (n >= 1)
``00 n  pixels``       n (>= 2) uncompressed pixels follow
``00 01 n``            copy n pixels from the same columns of the previous row
``00 00``              end of row (optional in ERLE; this encoder omits it)
``00 01 00``           end of image
====================  ========================================================

A count below 128 is one byte; from 128 to 32767 it is two bytes, the low seven bits first with bit 7 set, then
the count shifted right by seven (``(n & 0x7F) | 0x80, n >> 7``), as the drivers that run on hardware write it.
(The guide's worked example ``82 01`` for 513 repetitions does not fit its own rule, which gives 130; the test of
this module pins the rule the hardware drivers use.) Longer runs are split.

The encoder is vectorised over the whole image (numpy), so a full 1920x1080 image of random mirrors encodes in a
fraction of a second; rows equal to the previous row become one copy command, which is what makes macropixel
pictures small.
"""

from __future__ import annotations

import struct

import numpy as np
import numpy.typing as npt

__all__ = [
    "PLANES_PER_IMAGE",
    "MAX_COUNT",
    "HEADER_SIZE",
    "COMPRESSION_ERLE",
    "pictures_to_images",
    "encode_count",
    "erle_encode",
    "image_header",
    "encode_image",
]

#: One-bit patterns per 24-bit image.
PLANES_PER_IMAGE = 24
#: The largest count one ERLE command carries (two count bytes: 15 bits).
MAX_COUNT = 0x7FFF
#: The image header that precedes each image's data (DLPU018 section 2.4.2).
HEADER_SIZE = 48
#: The header's compression byte for Enhanced RLE.
COMPRESSION_ERLE = 2
_SIGNATURE = b"Spld"  # 0x53 0x70 0x6C 0x64


def pictures_to_images(pictures: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """Pack pictures (n, height, width) bool into ceil(n/24) images (height, width, 3) of wire-order pixel bytes.

    Picture ``i`` goes to image ``i // 24``, bit plane ``p = i % 24``: byte ``2 - p // 8`` of each pixel, bit
    ``p % 8``. Planes past the last picture of the last image are 0.
    """
    n, height, width = pictures.shape
    n_images = -(-n // PLANES_PER_IMAGE)
    padded = np.zeros((n_images * PLANES_PER_IMAGE, height, width), dtype=np.uint8)
    padded[:n] = pictures
    planes = padded.reshape(n_images, 3, 8, height, width)  # [image, byte group (planes 0-7, 8-15, 16-23), bit]
    weights = (1 << np.arange(8, dtype=np.uint8)).reshape(1, 1, 8, 1, 1)
    groups = (planes * weights).sum(axis=2, dtype=np.uint8)  # (n_images, 3, h, w): group 0 = planes 0..7
    # wire order: byte 0 = planes 16..23, byte 1 = planes 8..15, byte 2 = planes 0..7
    return np.ascontiguousarray(groups[:, ::-1].transpose(0, 2, 3, 1))


def encode_count(n: int) -> bytes:
    """One ERLE count: one byte below 128, else two (low seven bits with bit 7 set, then ``n >> 7``)."""
    if not 0 <= n <= MAX_COUNT:
        raise ValueError(f"an ERLE count must be 0..{MAX_COUNT}, got {n}")
    return bytes((n,)) if n < 128 else bytes(((n & 0x7F) | 0x80, n >> 7))


def _count_sizes(counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    return np.where(counts < 128, 1, 2).astype(np.int64)


def _write_counts(out: npt.NDArray[np.uint8], at: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> None:
    short = counts < 128
    out[at[short]] = counts[short]
    long_at, long_n = at[~short], counts[~short]
    out[long_at] = (long_n & 0x7F) | 0x80
    out[long_at + 1] = long_n >> 7


def erle_encode(image: npt.NDArray[np.uint8]) -> bytes:
    """ERLE-encode one image (height, width, 3) of wire-order pixel bytes, ending with End of Image."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a (height, width, 3) uint8 image, got {image.shape} {image.dtype}")
    height, width, _ = image.shape
    pixels = image[..., 0].astype(np.uint32) << 16 | image[..., 1].astype(np.uint32) << 8 | image[..., 2]
    copy_row = np.zeros(height, dtype=bool)
    copy_row[1:] = np.all(pixels[1:] == pixels[:-1], axis=1)
    coded_rows = np.flatnonzero(~copy_row)
    columns = np.arange(width, dtype=np.int64)

    # runs of equal pixels in the coded rows; a run also breaks every MAX_COUNT columns so no count overflows
    coded = pixels[coded_rows]
    starts = np.ones(coded.shape, dtype=bool)
    starts[:, 1:] = coded[:, 1:] != coded[:, :-1]
    starts[:, columns % MAX_COUNT == 0] = True
    run_row, run_col = np.nonzero(starts)  # row-major order
    run_flat = run_row * width + run_col
    run_len = np.diff(np.append(run_flat, coded.size))
    single = run_len == 1
    # a token is one repeat run, or a group of consecutive single pixels in one MAX_COUNT slice of a row
    previous_single = np.concatenate(([False], single[:-1]))
    token_start = ~single | ~previous_single | (run_col % MAX_COUNT == 0)
    token_first_run = np.flatnonzero(token_start)
    token_pixels = np.add.reduceat(run_len, token_first_run)
    token_repeat = ~single[token_first_run] | (token_pixels == 1)  # one lone pixel is a repeat of 1
    token_row = coded_rows[run_row[token_first_run]]
    token_col = run_col[token_first_run]
    token_src = run_flat[token_first_run]  # first pixel, flat index into `coded`
    count_size = _count_sizes(token_pixels)
    token_size = np.where(token_repeat, count_size + 3, 1 + count_size + 3 * token_pixels)

    # copy commands for rows equal to the previous one, split every MAX_COUNT columns
    copy_rows = np.flatnonzero(copy_row)
    piece_cols = np.arange(0, width, MAX_COUNT, dtype=np.int64)
    copy_row_of = np.repeat(copy_rows, piece_cols.size)
    copy_col = np.tile(piece_cols, copy_rows.size)
    copy_n = np.minimum(width - copy_col, MAX_COUNT)
    copy_size = 2 + _count_sizes(copy_n)

    # interleave both kinds in image order and lay them out
    keys = np.concatenate((token_row * (width + 1) + token_col, copy_row_of * (width + 1) + copy_col))
    sizes = np.concatenate((token_size, copy_size))
    order = np.argsort(keys, kind="stable")
    offsets = np.empty(sizes.size, dtype=np.int64)
    ordered_offsets = np.cumsum(sizes[order]) - sizes[order]
    offsets[order] = ordered_offsets
    total = int(sizes.sum()) + 3
    out = np.zeros(total, dtype=np.uint8)

    n_tokens = token_size.size
    at = offsets[:n_tokens]
    flat_bytes = image[coded_rows].reshape(-1, 3)
    # repeats: count, then the pixel
    rep_at, rep_n, rep_src = at[token_repeat], token_pixels[token_repeat], token_src[token_repeat]
    _write_counts(out, rep_at, rep_n)
    pixel_at = rep_at + _count_sizes(rep_n)
    for c in range(3):
        out[pixel_at + c] = flat_bytes[rep_src, c]
    # uncompressed groups: 00, count, the pixels
    lit = ~token_repeat
    lit_at, lit_n, lit_src = at[lit], token_pixels[lit], token_src[lit]
    _write_counts(out, lit_at + 1, lit_n)
    payload_at = lit_at + 1 + _count_sizes(lit_n)
    within = np.arange(int(lit_n.sum()), dtype=np.int64) - np.repeat(np.cumsum(lit_n) - lit_n, lit_n)
    dest = np.repeat(payload_at, lit_n) + 3 * within
    src = np.repeat(lit_src, lit_n) + within
    for c in range(3):
        out[dest + c] = flat_bytes[src, c]
    # copies: 00 01 count
    copy_at = offsets[n_tokens:]
    out[copy_at + 1] = 1
    _write_counts(out, copy_at + 2, copy_n)
    out[-3:] = (0, 1, 0)  # end of image
    return out.tobytes()


def image_header(width: int, height: int, data_size: int) -> bytes:
    """The 48-byte image header (DLPU018 section 2.4.2): signature, width, height, encoded data size, eight
    reserved 0xFF, background colour (black), a reserved 0, compression (ERLE), a reserved 1, 21 reserved 0."""
    return (
        _SIGNATURE
        + struct.pack("<HHI", width, height, data_size)
        + b"\xff" * 8
        + b"\x00\x00\x00\x00"
        + bytes((0, COMPRESSION_ERLE, 1))
        + bytes(21)
    )


def encode_image(image: npt.NDArray[np.uint8]) -> bytes:
    """Header plus ERLE data for one image, as 0x1A2B uploads it."""
    data = erle_encode(image)
    height, width, _ = image.shape
    return image_header(width, height, len(data)) + data
