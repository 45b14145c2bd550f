"""numpy versions of the native kernels: the same results, bit for bit, where no C compiler is available.

Each function takes the same arguments as its twin in opu_driver.native, checks them the same way, and is
written so that integer outputs are byte-identical and float32 outputs bit-identical to the C kernels (float32
arithmetic in the same order; pixel values are small integers, exact in float32).
"""
from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..errors import ProtocolError
from ..protocol.pixels import PixelFormat
from .checks import RunTable, as_table, check_bits, check_combine, check_frames, check_index, check_pixel_data

__all__ = ["encode_frames", "decode_pixels", "decode_pixels_batch", "combine_four", "combine_two"]

# Frames expanded at once: one unpacked frame is n_mirrors bytes (about 1 MB at the reference geometry).
_ENCODE_CHUNK = 16


def encode_frames(bits: npt.ArrayLike, runs: RunTable | npt.ArrayLike, n_mirrors: int) -> npt.NDArray[np.uint8]:
    """Packed mirror frames (n, ceil(n_mirrors / 8)), MSB first, through a per-mirror index table."""
    table = as_table(runs, n_mirrors)
    arr = check_bits(bits, table)
    mirrors, sources = table.mirror_sources
    out = np.empty((arr.shape[0], table.frame_bytes), dtype=np.uint8)
    unpacked = np.zeros((min(_ENCODE_CHUNK, arr.shape[0]), table.frame_bytes * 8), dtype=np.bool_)
    for start in range(0, arr.shape[0], _ENCODE_CHUNK):
        block = arr[start:start + _ENCODE_CHUNK]
        view = unpacked[: block.shape[0]]
        view[:, mirrors] = block[:, sources] != 0
        out[start:start + block.shape[0]] = np.packbits(view, axis=1)
    return out


def _decode(pf: PixelFormat, frames: np.ndarray, n_pixels: int, idx: np.ndarray | None, check: bool) -> np.ndarray:
    keep = np.arange(n_pixels, dtype=np.int64) if idx is None else idx
    if pf == PixelFormat.MONO8:
        return frames[:, keep].astype(np.float32)
    if pf in (PixelFormat.MONO10, PixelFormat.MONO12):
        high = frames[:, 1::2]
        if check and frames.shape[0] and n_pixels and np.any(high >> (2 if pf == PixelFormat.MONO10 else 4)):
            raise ProtocolError(f"{pf.name}: a pixel has bits set above its range")
        lo = frames[:, 2 * keep].astype(np.uint16)
        hi = frames[:, 2 * keep + 1].astype(np.uint16)
        return (lo | (hi << 8)).astype(np.float32)
    # Packed: pixel k lies in stream bytes j, j + 1 with j = b k // 8, starting b k % 8 bits into byte j.
    b = 10 if pf == PixelFormat.MONO10P else 12
    bit = keep * b
    j = bit >> 3
    word = frames[:, j].astype(np.uint16) | (frames[:, j + 1].astype(np.uint16) << 8)
    return ((word >> (bit & 7).astype(np.uint16)) & np.uint16((1 << b) - 1)).astype(np.float32)


def decode_pixels(
    fmt: int, data: bytes | bytearray | memoryview | npt.ArrayLike, n_pixels: int,
    pixel_index: npt.ArrayLike | None = None, check: bool = True,
) -> npt.NDArray[np.float32]:
    """Pixels of one camera payload as float32 (n_selected,), gathered at pixel_index (all when None)."""
    pf, frames = check_pixel_data(fmt, data, n_pixels)
    return _decode(pf, frames, int(n_pixels), check_index(pixel_index, n_pixels), check)[0]


def decode_pixels_batch(
    fmt: int, frames: npt.ArrayLike, n_pixels: int, pixel_index: npt.ArrayLike | None = None, check: bool = True,
) -> npt.NDArray[np.float32]:
    """Pixels of many payloads, frames uint8 (n_frames, frame_bytes) -> float32 (n_frames, n_selected)."""
    pf, arr = check_frames(fmt, frames, n_pixels)
    return _decode(pf, arr, int(n_pixels), check_index(pixel_index, n_pixels), check)


def combine_four(frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """((f0 - f1) - (f2 - f3)) * scale in float32 for frames (n, 4, m), scale (m,)."""
    f, s = check_combine(frames, scale, 4)
    return ((f[:, 0] - f[:, 1]) - (f[:, 2] - f[:, 3])) * s


def combine_two(frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(f0 - f1) * scale in float32 for frames (n, 2, m), scale (m,)."""
    f, s = check_combine(frames, scale, 2)
    return (f[:, 0] - f[:, 1]) * s
