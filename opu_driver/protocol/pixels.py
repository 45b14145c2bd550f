"""Camera pixel formats (protocol section 1.5): sizes, vectorised decoding and encoding.

MONO8 is one byte a pixel; MONO10/MONO12 are little-endian u16 with the value in the low bits; MONO10P/MONO12P
are one little-endian bit stream (pixel k at stream bits b*k .. b*k+b-1, least significant bit first). The
packed formats repeat in groups (4 pixels in 5 bytes, 2 pixels in 3 bytes), which lets numpy decode a whole
frame with a handful of shifts and masks instead of a loop per pixel.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt

from opu_driver.errors import InvalidInputError, ProtocolError

__all__ = [
    "PixelFormat",
    "bits_per_pixel",
    "output_dtype",
    "payload_size",
    "decode_pixels",
    "encode_pixels",
]


class PixelFormat(IntEnum):
    """Pixel format codes of the PIXEL_FORMAT register and the CAMERA_FRAME header."""

    MONO8 = 1
    MONO10 = 2
    MONO12 = 3
    MONO10P = 4
    MONO12P = 5


_BITS = {
    PixelFormat.MONO8: 8,
    PixelFormat.MONO10: 10,
    PixelFormat.MONO12: 12,
    PixelFormat.MONO10P: 10,
    PixelFormat.MONO12P: 12,
}
_PACKED = frozenset({PixelFormat.MONO10P, PixelFormat.MONO12P})
# Packed formats repeat every (pixels, bytes): 4 pixels of 10 bits are 40 bits, 2 pixels of 12 bits are 24 bits.
_GROUP = {PixelFormat.MONO10P: (4, 5), PixelFormat.MONO12P: (2, 3)}


def _as_format(fmt: int, error: type[Exception] = InvalidInputError) -> PixelFormat:
    try:
        return PixelFormat(int(fmt))
    except ValueError:
        raise error(f"unknown pixel format code {int(fmt)}") from None


def bits_per_pixel(fmt: int) -> int:
    """Significant bits of a pixel value in format ``fmt`` (8, 10 or 12)."""
    return _BITS[_as_format(fmt)]


def output_dtype(fmt: int) -> np.dtype:
    """numpy dtype that holds decoded pixels: uint8 for MONO8, uint16 for every other format."""
    return np.dtype(np.uint8) if _as_format(fmt) == PixelFormat.MONO8 else np.dtype(np.uint16)


def payload_size(fmt: int, n_pixels: int) -> int:
    """Bytes that ``n_pixels`` take in format ``fmt`` (section 1.5 table)."""
    pf = _as_format(fmt)
    if n_pixels < 0:
        raise InvalidInputError(f"n_pixels must be >= 0, got {n_pixels}")
    if pf == PixelFormat.MONO8:
        return n_pixels
    if pf in _PACKED:
        return (_BITS[pf] * n_pixels + 7) // 8
    return 2 * n_pixels


def _check_out(out: np.ndarray | None, dtype: np.dtype, n_pixels: int) -> np.ndarray:
    """Return a flat writable view of ``out`` (or a new array) for n_pixels values of dtype."""
    if out is None:
        return np.empty(n_pixels, dtype=dtype)
    if out.dtype != dtype or out.size != n_pixels:
        raise InvalidInputError(f"out must hold {n_pixels} values of {dtype}, got {out.size} of {out.dtype}")
    if not out.flags.c_contiguous or not out.flags.writeable:
        raise InvalidInputError("out must be a writable C-contiguous array")
    return out.reshape(-1)


def _groups(raw: np.ndarray, group_bytes: int, n_groups: int) -> np.ndarray:
    """View (or zero-padded copy) of the stream as (n_groups, group_bytes) uint8."""
    if raw.size == n_groups * group_bytes:
        return raw.reshape(n_groups, group_bytes)
    padded = np.zeros(n_groups * group_bytes, dtype=np.uint8)
    padded[: raw.size] = raw
    return padded.reshape(n_groups, group_bytes)


def _unpack12(g: np.ndarray) -> np.ndarray:
    """(n, 3) bytes -> (n, 2) uint16 pixels of MONO12P."""
    b = g.astype(np.uint16)
    pix = np.empty((g.shape[0], 2), dtype=np.uint16)
    pix[:, 0] = b[:, 0] | ((b[:, 1] & 0x0F) << 8)
    pix[:, 1] = (b[:, 1] >> 4) | (b[:, 2] << 4)
    return pix


def _unpack10(g: np.ndarray) -> np.ndarray:
    """(n, 5) bytes -> (n, 4) uint16 pixels of MONO10P."""
    b = g.astype(np.uint16)
    pix = np.empty((g.shape[0], 4), dtype=np.uint16)
    pix[:, 0] = b[:, 0] | ((b[:, 1] & 0x03) << 8)
    pix[:, 1] = (b[:, 1] >> 2) | ((b[:, 2] & 0x0F) << 6)
    pix[:, 2] = (b[:, 2] >> 4) | ((b[:, 3] & 0x3F) << 4)
    pix[:, 3] = (b[:, 3] >> 6) | (b[:, 4] << 2)
    return pix


def decode_pixels(
    fmt: int,
    data: bytes | bytearray | memoryview,
    n_pixels: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Decode ``n_pixels`` pixel values from their wire bytes.

    Args:
        fmt: pixel format code (section 1.5).
        data: exactly ``payload_size(fmt, n_pixels)`` bytes.
        n_pixels: number of pixels (roi_w * roi_h).
        out: optional C-contiguous array of ``output_dtype(fmt)`` with n_pixels elements to fill (any shape).

    Returns:
        ``out`` when given, else a new 1-D array of ``output_dtype(fmt)``.

    Raises:
        ProtocolError: wrong byte count, unknown format, values above the format's range, or padding bits set:
            the bytes cannot be a frame of this format, and a wrong frame must never pass as data.
    """
    pf = _as_format(fmt, ProtocolError)
    expected = payload_size(pf, n_pixels)
    if len(data) != expected:
        raise ProtocolError(f"{pf.name}: {n_pixels} pixels need {expected} bytes, got {len(data)}")
    dtype = output_dtype(pf)
    flat = _check_out(out, dtype, n_pixels)
    bits = _BITS[pf]
    if pf == PixelFormat.MONO8:
        flat[:] = np.frombuffer(data, dtype=np.uint8, count=n_pixels)
    elif pf in _PACKED:
        per_group, group_bytes = _GROUP[pf]
        n_groups = -(-n_pixels // per_group)
        raw = np.frombuffer(data, dtype=np.uint8, count=expected)
        groups = _groups(raw, group_bytes, n_groups)
        pix = (_unpack10 if pf == PixelFormat.MONO10P else _unpack12)(groups).reshape(-1)
        # Padded bytes were zero-filled, so any padding bit that was set shows up in a pixel past the end.
        if pix.size > n_pixels and pix[n_pixels:].any():
            raise ProtocolError(f"{pf.name}: padding bits after the last pixel are not 0")
        flat[:] = pix[:n_pixels]
    else:
        flat[:] = np.frombuffer(data, dtype="<u2", count=n_pixels)
        if n_pixels and int(flat.max()) >> bits:
            raise ProtocolError(f"{pf.name}: a pixel has bits set above bit {bits - 1}")
    return flat if out is None else out


def encode_pixels(fmt: int, values: npt.ArrayLike) -> bytes:
    """Encode integer pixel values (row-major order when 2-D) into their wire bytes.

    Raises:
        InvalidInputError: non-integer values, or values outside 0 ..= 2**bits - 1 of the format.
    """
    pf = _as_format(fmt)
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        if arr.size == 0:
            arr = arr.astype(np.int64)
        else:
            raise InvalidInputError(f"pixel values must be integers, got dtype {arr.dtype}")
    flat = arr.reshape(-1)
    bits = _BITS[pf]
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise InvalidInputError(
            f"{pf.name} pixel values must lie in 0..{(1 << bits) - 1}, got {int(flat.min())}..{int(flat.max())}"
        )
    n = flat.size
    if pf == PixelFormat.MONO8:
        return flat.astype(np.uint8).tobytes()
    if pf not in _PACKED:
        return flat.astype("<u2").tobytes()
    per_group, group_bytes = _GROUP[pf]
    n_groups = -(-n // per_group)
    pix = np.zeros(n_groups * per_group, dtype=np.uint16)
    pix[:n] = flat
    p = pix.reshape(n_groups, per_group)
    g = np.empty((n_groups, group_bytes), dtype=np.uint16)
    if pf == PixelFormat.MONO12P:
        g[:, 0] = p[:, 0] & 0xFF
        g[:, 1] = (p[:, 0] >> 8) | ((p[:, 1] & 0x0F) << 4)
        g[:, 2] = p[:, 1] >> 4
    else:
        g[:, 0] = p[:, 0] & 0xFF
        g[:, 1] = (p[:, 0] >> 8) | ((p[:, 1] & 0x3F) << 2)
        g[:, 2] = (p[:, 1] >> 6) | ((p[:, 2] & 0x0F) << 4)
        g[:, 3] = (p[:, 2] >> 4) | ((p[:, 3] & 0x03) << 6)
        g[:, 4] = p[:, 3] >> 2
    return g.astype(np.uint8).reshape(-1)[: payload_size(pf, n)].tobytes()
