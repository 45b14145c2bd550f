"""Input checks shared by the native kernels and their numpy fallback, and the prepared run table.

Everything the C code relies on (dtypes, contiguity, shapes, index ranges, byte counts) is checked here, in
Python, before any kernel runs: a kernel never sees an argument that could make it read or write out of bounds.
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError

__all__ = ["RunTable", "as_table", "check_bits", "check_combine"]

_MAX_MIRRORS = 2**32 - 1  # runs are uint32 (protocol section 1.3)


class RunTable:
    """A checked layout table: runs (feature, first_mirror, n_mirrors) over frames of ``n_mirrors`` mirrors.

    Build it once per layout and pass it to encode_frames many times: the checks (bounds, no overlap) and the
    planning cost O(M log M) once, not per frame. With ``row_width`` (mirrors per DMD row) the table also finds
    rows that repeat an earlier row at the same bit phase (every row of a macro-pixel band does) so that the C
    kernel draws the first rows of a band and copies the rest whole-byte, instead of filling every short run.

    Raises:
        InvalidInputError: runs not (M, 3) non-negative integers, a run past ``n_mirrors``, overlapping runs.
    """

    def __init__(self, runs: npt.ArrayLike, n_mirrors: int, row_width: int | None = None) -> None:
        if (
            isinstance(n_mirrors, bool)
            or not isinstance(n_mirrors, (int, np.integer))
            or not (1 <= n_mirrors <= _MAX_MIRRORS)
        ):
            raise InvalidInputError(f"n_mirrors must be an integer in 1..{_MAX_MIRRORS}, got {n_mirrors!r}")
        arr = np.asarray(runs)
        if arr.ndim != 2 or arr.shape[1] != 3:
            raise InvalidInputError(f"runs must have shape (M, 3), got {arr.shape}")
        if arr.size and not np.issubdtype(arr.dtype, np.integer):
            raise InvalidInputError(f"runs must be integers, got {arr.dtype}")
        wide = arr.astype(np.int64)
        if wide.size and (wide.min() < 0 or wide.max() > _MAX_MIRRORS):
            raise InvalidInputError("runs must hold values in 0..2**32-1")
        feature, first, count = wide[:, 0], wide[:, 1], wide[:, 2]
        if wide.size and int((first + count).max()) > n_mirrors:
            bad = int(np.argmax(first + count))
            raise InvalidInputError(
                f"run {bad} (mirrors {first[bad]}..{first[bad] + count[bad] - 1}) lies past the {n_mirrors} mirrors"
            )
        keep = count > 0
        order = np.argsort(first[keep], kind="stable")
        s_first, s_count = first[keep][order], count[keep][order]
        if s_first.size > 1 and np.any(s_first[1:] < s_first[:-1] + s_count[:-1]):
            raise InvalidInputError("runs overlap: every mirror may belong to one run at most")
        self.n_mirrors = int(n_mirrors)
        self.frame_bytes = (self.n_mirrors + 7) // 8
        self.runs = np.ascontiguousarray(wide, dtype=np.uint32)
        self.runs.flags.writeable = False
        # Features the bits must have: one past the largest feature a run names.
        self.min_features = int(feature.max()) + 1 if feature.size else 0
        sorted_runs = np.stack([feature[keep][order], s_first, s_count], axis=1)
        draw, ops = _plan_repeats(sorted_runs, self.n_mirrors, row_width)
        self.draw_runs = np.ascontiguousarray(draw, dtype=np.uint32)
        self.copy_ops = np.ascontiguousarray(ops, dtype=np.uint32).reshape(-1, 3)
        # The C kernel trusts these checked values: nothing may change them afterwards.
        self.draw_runs.flags.writeable = False
        self.copy_ops.flags.writeable = False
        self._frozen = True

    def __setattr__(self, name: str, value) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError(f"RunTable is read-only (checked once for the native kernels): {name}")
        object.__setattr__(self, name, value)

    @cached_property
    def mirror_sources(self) -> tuple[np.ndarray, np.ndarray]:
        """(mirror indices, feature of each) of every driven mirror: the per-mirror table of the numpy path."""
        feature, first, count = (self.runs[:, i].astype(np.int64) for i in range(3))
        total = int(count.sum())
        offsets = np.repeat(first - (np.cumsum(count) - count), count)
        return offsets + np.arange(total, dtype=np.int64), np.repeat(feature, count)


def _plan_repeats(runs: np.ndarray, n_mirrors: int, row_width: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted runs into runs to draw and copy ops (dst_first, src_first, n_mirrors) for repeated rows.

    Row r may be copied from row r - k, k = 8 / gcd(width, 8) (the nearest earlier row at the same bit phase,
    so that bytes copy whole), when both rows are made only of runs that start and end inside them and the two
    rows hold the same runs at the same columns. Consecutive copied rows merge into one op.
    """
    empty = np.zeros((0, 3), dtype=np.int64)
    if row_width is None or runs.shape[0] == 0 or row_width < 1 or n_mirrors % row_width:
        return runs, empty
    width = int(row_width)
    n_rows = n_mirrors // width
    k = 8 // math.gcd(width, 8)
    row_first = runs[:, 1] // width
    row_last = (runs[:, 1] + runs[:, 2] - 1) // width
    spans = row_first != row_last
    # Rows touched by a run that crosses a row boundary are neither copied nor used as a source.
    tainted = np.zeros(n_rows, dtype=bool)
    for a, b in zip(row_first[spans], row_last[spans], strict=True):
        tainted[a : b + 1] = True
    bounds = np.searchsorted(row_first, np.arange(n_rows + 1))
    signatures: list[bytes | None] = []
    for r in range(n_rows):
        lo, hi = bounds[r], bounds[r + 1]
        if tainted[r] or lo == hi:
            signatures.append(None)
            continue
        rel = runs[lo:hi].copy()
        rel[:, 1] -= r * width
        signatures.append(rel.tobytes())
    copied = np.zeros(n_rows, dtype=bool)
    for r in range(k, n_rows):
        copied[r] = signatures[r] is not None and signatures[r] == signatures[r - k]
    if not copied.any():
        return runs, empty
    ops = []
    r = 0
    while r < n_rows:
        if not copied[r]:
            r += 1
            continue
        start = r
        while r < n_rows and copied[r]:
            r += 1
        ops.append((start * width, (start - k) * width, (r - start) * width))
    return runs[~copied[row_first]], np.array(ops, dtype=np.int64)


def check_bits(bits: npt.ArrayLike, table: RunTable) -> np.ndarray:
    """Feature frames as a C-contiguous uint8 (n, n_features) array (bool is viewed as uint8; nonzero is ON)."""
    arr = np.asarray(bits)
    if arr.dtype == np.bool_:
        arr = arr.view(np.uint8)
    if arr.dtype != np.uint8:
        raise InvalidInputError(f"bits must be uint8 or bool, got {arr.dtype}")
    if arr.ndim != 2:
        raise InvalidInputError(f"bits must have shape (n, n_features), got {arr.shape}")
    if arr.shape[1] < table.min_features:
        raise InvalidInputError(
            f"the runs name feature {table.min_features - 1} but bits have only {arr.shape[1]} features"
        )
    return np.ascontiguousarray(arr)


def as_table(runs: RunTable | npt.ArrayLike, n_mirrors: int) -> RunTable:
    """A RunTable for ``runs`` (checked when given as an array; a RunTable must match n_mirrors)."""
    if isinstance(runs, RunTable):
        if runs.n_mirrors != n_mirrors:
            raise InvalidInputError(f"the run table is for {runs.n_mirrors} mirrors, not {n_mirrors}")
        return runs
    return RunTable(runs, n_mirrors)


def check_combine(frames: npt.ArrayLike, scale: npt.ArrayLike, n_parts: int) -> tuple[np.ndarray, np.ndarray]:
    """frames float32 (n, n_parts, m) and scale float32 (m,), both C-contiguous."""
    f = np.asarray(frames)
    s = np.asarray(scale)
    if f.dtype != np.float32 or s.dtype != np.float32:
        raise InvalidInputError(f"frames and scale must be float32, got {f.dtype} and {s.dtype}")
    if f.ndim != 3 or f.shape[1] != n_parts:
        raise InvalidInputError(f"frames must have shape (n, {n_parts}, m), got {f.shape}")
    if s.shape != (f.shape[2],):
        raise InvalidInputError(f"scale must have shape ({f.shape[2]},), got {s.shape}")
    return np.ascontiguousarray(f), np.ascontiguousarray(s)
