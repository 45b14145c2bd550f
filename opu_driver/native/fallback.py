"""numpy versions of the native kernels: the same results, bit for bit, where no C compiler is available.

Each function takes the same arguments as its twin in opu_driver.native, checks them the same way, and is
written so that integer outputs are byte-identical and float32 outputs bit-identical to the C kernels (float32
arithmetic in the same order; pixel values are small integers, exact in float32).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from .checks import RunTable, as_table, check_bits, check_combine

__all__ = ["encode_frames", "combine_four", "combine_two"]

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
        block = arr[start : start + _ENCODE_CHUNK]
        view = unpacked[: block.shape[0]]
        view[:, mirrors] = block[:, sources] != 0
        out[start : start + block.shape[0]] = np.packbits(view, axis=1)
    return out


def combine_four(frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """((f0 - f1) - (f2 - f3)) * scale in float32 for frames (n, 4, m), scale (m,)."""
    f, s = check_combine(frames, scale, 4)
    return ((f[:, 0] - f[:, 1]) - (f[:, 2] - f[:, 3])) * s


def combine_two(frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(f0 - f1) * scale in float32 for frames (n, 2, m), scale (m,)."""
    f, s = check_combine(frames, scale, 2)
    return (f[:, 0] - f[:, 1]) * s
