"""Mirror layouts: which DMD mirrors each input feature drives.

A layout is a list of runs (feature, first_mirror, n_mirrors) over the row-major mirror index
``row * width + column``. That is exactly the LAYOUT packet of the wire protocol (docs/protocol.md 1.3), so
the firmware can expand feature frames itself, and it is compact: runs of mirrors, never a per-mirror table.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError
from ..native import RunTable, encode_frames

__all__ = ["Layout", "LinedLayout", "MacroPixelLayout", "SplitLayout", "make_layout", "LAYOUT_KINDS"]


@dataclass(frozen=True)
class Layout(ABC):
    """Where features sit on a DMD of ``dmd_width`` x ``dmd_height`` mirrors."""

    #: The name of the layout kind, set by each concrete subclass (a class constant, not a field).
    kind_name: ClassVar[str]

    n_features: int
    dmd_width: int
    dmd_height: int
    _runs: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n_mirrors = self.dmd_width * self.dmd_height
        if not isinstance(self.n_features, (int, np.integer)) or self.n_features < 1:
            raise InvalidInputError(f"n_features must be a positive integer, got {self.n_features!r}")
        if self.n_features > n_mirrors:
            raise InvalidInputError(
                f"{self.n_features} features do not fit a DMD of {self.dmd_width}x{self.dmd_height} "
                f"= {n_mirrors} mirrors"
            )
        runs = np.ascontiguousarray(self._build_runs(), dtype=np.uint32)
        object.__setattr__(self, "_runs", runs)

    @abstractmethod
    def _build_runs(self) -> np.ndarray:
        """Return the (M, 3) runs (feature, first_mirror, n_mirrors)."""

    @property
    def kind(self) -> str:
        return type(self).kind_name

    @property
    def n_table_features(self) -> int:
        """Features in the device's layout table (a split layout adds its reference region)."""
        return self.n_features

    @property
    def runs(self) -> npt.NDArray[np.uint32]:
        """(M, 3) uint32 rows (feature, first_mirror, n_mirrors), read-only."""
        view = self._runs.view()
        view.flags.writeable = False
        return view

    def mirrors_per_feature(self) -> npt.NDArray[np.int64]:
        """How many mirrors each feature drives (its weight in the optics)."""
        counts = np.zeros(self.n_features, dtype=np.int64)
        np.add.at(counts, self._runs[:, 0].astype(np.int64), self._runs[:, 2].astype(np.int64))
        return counts

    def mirror_feature_map(self) -> npt.NDArray[np.int32]:
        """Feature index of every mirror (row-major, length width*height), -1 where no feature."""
        n_mirrors = self.dmd_width * self.dmd_height
        mapping = np.full(n_mirrors, -1, dtype=np.int32)
        starts = self._runs[:, 1].astype(np.int64)
        lengths = self._runs[:, 2].astype(np.int64)
        # Expand runs to mirror indices without a Python loop per mirror.
        offsets = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        mirrors = offsets + np.arange(int(lengths.sum()), dtype=np.int64)
        mapping[mirrors] = np.repeat(self._runs[:, 0].astype(np.int32), lengths)
        return mapping

    def expand(self, bits: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Packed raw mirror frames (n, ceil(W*H/8)) for binary feature frames ``bits`` (n, n_features).

        This is the host-side twin of the firmware's expansion of a FEATURE_FRAME; used for raw-frame mode.
        """
        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] != self.n_features:
            raise InvalidInputError(f"expected shape (n, {self.n_features}), got {bits.shape}")
        return self._expand_table(bits)

    def _expand_table(self, bits: np.ndarray) -> npt.NDArray[np.uint8]:
        if bits.dtype not in (np.uint8, np.bool_):
            bits = bits.astype(np.bool_)  # the kernels take bytes; any nonzero value is ON, as in a feature frame
        return encode_frames(bits, self.run_table, self.dmd_width * self.dmd_height)

    @cached_property
    def run_table(self) -> RunTable:
        """The runs checked and planned once for the data path's kernels (opu_driver.native.RunTable)."""
        return RunTable(self.runs, self.dmd_width * self.dmd_height, row_width=self.dmd_width)


@dataclass(frozen=True)
class LinedLayout(Layout):
    """Spread n_features over the whole mirror array: feature f drives one run of about W*H/n mirrors.

    Every mirror is used, so the light budget is the largest possible; features are lines of mirrors.
    """

    kind_name = "lined"

    def _build_runs(self) -> np.ndarray:
        n_mirrors = self.dmd_width * self.dmd_height
        edges = (np.arange(self.n_features + 1, dtype=np.int64) * n_mirrors) // self.n_features
        return np.stack([np.arange(self.n_features, dtype=np.int64), edges[:-1], np.diff(edges)], axis=1)


@dataclass(frozen=True)
class MacroPixelLayout(Layout):
    """Features as square macro-pixels of ``macro_px`` x ``macro_px`` mirrors on a 2-D grid.

    ``macro_px=None`` picks the largest square that fits all features. The grid starts at the array's top-left
    mirror, so macro-pixels whose side is a multiple of the optics' input-mode cell align with the cells: each
    feature then drives whole input modes, and intensities grow exactly in proportion to the features ON.
    Lines of mirrors (the lined layout) share cells between features instead, whose fields add coherently.
    """

    macro_px: int | None = None
    kind_name = "macro"

    def __post_init__(self) -> None:
        if self.macro_px is not None and (int(self.macro_px) != self.macro_px or self.macro_px < 1):
            raise InvalidInputError(f"macro_px must be a positive integer, got {self.macro_px!r}")
        super().__post_init__()

    def grid(self) -> tuple[int, int, int]:
        """(side in mirrors, columns, rows) of the macro-pixel grid."""
        side = self.macro_px or self.largest_side(self.n_features, self.dmd_width, self.dmd_height)
        cols = self.dmd_width // side
        rows = math.ceil(self.n_features / cols) if cols else 0
        if cols == 0 or rows * side > self.dmd_height:
            raise InvalidInputError(
                f"{self.n_features} macro-pixels of {side}x{side} mirrors do not fit a "
                f"{self.dmd_width}x{self.dmd_height} DMD"
            )
        return side, cols, rows

    @staticmethod
    def largest_side(n_features: int, width: int, height: int) -> int:
        side = max(1, int(math.isqrt(width * height // n_features)))
        while side > 1 and (width // side) * (height // side) < n_features:
            side -= 1
        return side

    def _build_runs(self) -> np.ndarray:
        side, cols, _ = self.grid()
        return _grid_runs(self.n_features, self.dmd_width, side, side, cols)


def _grid_runs(n_features: int, width: int, feature_width: int, feature_height: int, cols: int) -> np.ndarray:
    """Runs of features as rectangles of feature_width x feature_height mirrors, ``cols`` a row of the grid, from
    the top-left mirror of an array ``width`` mirrors wide."""
    feature = np.arange(n_features, dtype=np.int64)
    fx = (feature % cols) * feature_width
    fy = (feature // cols) * feature_height
    line = np.arange(feature_height, dtype=np.int64)
    first = ((fy[:, None] + line[None, :]) * width + fx[:, None]).ravel()
    return np.stack(
        [np.repeat(feature, feature_height), first, np.full(first.size, feature_width, dtype=np.int64)], axis=1
    )


_MIN_ALIGNED_AREA = 0.9
"""A split layout's row-aligned signal grid is used when its features keep this share of the square ones' mirrors."""


def _row_aligned_grid(
    n_features: int, width: int, height: int, multiple: int, max_area: int
) -> tuple[int, int, int] | None:
    """(feature width, feature height, columns) of a grid of rectangles whose height is a multiple of ``multiple``
    rows that holds n_features with at most ``max_area`` mirrors each: the squarest of those within 5% of the most
    mirrors, or None when none fits."""
    grids = []
    for feature_height in range(multiple, height + 1, multiple):
        cols = math.ceil(n_features / (height // feature_height))
        feature_width = min(width // cols, max_area // feature_height)
        if feature_width >= 1:
            grids.append((feature_width, feature_height, cols))
    if not grids:
        return None
    most = max(w * h for w, h, _ in grids)
    return max(
        (grid for grid in grids if grid[0] * grid[1] >= 0.95 * most),
        key=lambda grid: min(grid[0], grid[1]) / max(grid[0], grid[1]),
    )


def _remap_runs(runs: np.ndarray, sub_width: int, width: int, x0: int) -> np.ndarray:
    """Runs over a sub-array of ``sub_width`` columns -> runs over the full array (columns x0..x0+sub_width).

    A run that continues onto the next row of the sub-array is cut at each row end, because the rows of the
    sub-array are not contiguous in the full array.
    """
    feature, start, length = (runs[:, i].astype(np.int64) for i in range(3))
    first_row = start // sub_width
    last_row = (start + length - 1) // sub_width
    pieces = last_row - first_row + 1
    run_of_piece = np.repeat(np.arange(runs.shape[0]), pieces)
    row = np.repeat(first_row, pieces) + (np.arange(int(pieces.sum())) - np.repeat(np.cumsum(pieces) - pieces, pieces))
    row_start = row * sub_width
    piece_start = np.maximum(start[run_of_piece], row_start)
    piece_stop = np.minimum(start[run_of_piece] + length[run_of_piece], row_start + sub_width)
    full_start = row * width + x0 + (piece_start - row_start)
    return np.stack([feature[run_of_piece], full_start, piece_stop - piece_start], axis=1)


@dataclass(frozen=True)
class SplitLayout(Layout):
    """Signal features on the left of the DMD, a disjoint reference region on the right (linear mode).

    The reference region is ``reference_levels`` more features, from index ``n_features``, so a frame "signal +
    reference" is just a feature frame with those bits set: the LAYOUT packet carries both, and the protocol needs
    nothing new. ``n_features`` counts the signal features only; ``n_table_features`` = n_features +
    reference_levels is what the device sees. ``reference_fraction`` is the share of mirror columns given to the
    reference; ``signal_layout`` lays the signal out ("macro" or "lined") inside the remaining columns.

    With ``reference_levels`` L > 1 (a power of two) the reference is cut by mirror row: reference feature k holds
    the rows whose index modulo L is the k-th of the bit-reversed order of 0..L-1. Turning on the first j of them
    (:meth:`reference_bits`) turns on j rows in every L, spread as evenly as nested sets allow, so every input
    cell of the optics whose height is a multiple of L keeps the same share j/L of its mirrors ON: the reference
    field keeps its shape and phase at amplitude j/L, and the linear mode's matrix stays the same at a weaker
    reference (a dimmer reference beside a sparse signal is what the camera's range wants).

    ``signal_level`` m (1..L; None: every row) dims the signal the same way: each signal feature keeps only its
    mirrors on the rows of the first m of those L row classes, so its field is about m/L of the whole feature's
    (exactly so for each optical input cell it fills over whole groups of L rows). A strong reference beside a
    dimmed signal is what the two-frame scheme needs, whose error term |R e+|^2 - |R e-|^2 shrinks with the signal's
    intensity while the interference term shrinks only with its amplitude.
    """

    reference_fraction: float = 0.5
    signal_layout: str = "macro"
    reference_levels: int = 1
    signal_level: int | None = None
    kind_name = "split"

    def __post_init__(self) -> None:
        if not 0.0 < float(self.reference_fraction) < 1.0:
            raise InvalidInputError(f"reference_fraction must be within (0, 1), got {self.reference_fraction!r}")
        if self.signal_layout not in ("macro", "lined"):
            raise InvalidInputError(f"signal_layout must be 'macro' or 'lined', got {self.signal_layout!r}")
        levels = self.reference_levels
        if not isinstance(levels, (int, np.integer)) or levels < 1 or levels & (levels - 1) or levels > self.dmd_height:
            raise InvalidInputError(
                f"reference_levels must be a power of two no larger than the DMD's {self.dmd_height} rows, got "
                f"{levels!r}"
            )
        if self.signal_level is not None and (
            not isinstance(self.signal_level, (int, np.integer)) or not 1 <= self.signal_level <= levels
        ):
            raise InvalidInputError(f"signal_level must be within 1..{levels} or None, got {self.signal_level!r}")
        reference_cols = int(round(self.dmd_width * float(self.reference_fraction)))
        if not 1 <= reference_cols < self.dmd_width:
            raise InvalidInputError(
                f"a reference of {self.reference_fraction:.0%} of {self.dmd_width} columns leaves no room for "
                "the signal or for the reference"
            )
        signal_cols = self.dmd_width - reference_cols
        if self.n_features > signal_cols * self.dmd_height:
            raise InvalidInputError(
                f"{self.n_features} features do not fit the {signal_cols}x{self.dmd_height} mirrors left beside "
                f"the reference region"
            )
        if self.signal_level is not None and not self.rows_aligned:
            raise InvalidInputError(
                f"signal_level needs signal features of whole groups of {levels} rows: {self.n_features} "
                f"features beside this reference leave none (the macro signal layout and reference_levels > 1 give "
                "them where they fit)"
            )
        super().__post_init__()

    @property
    def signal_width(self) -> int:
        return self.dmd_width - int(round(self.dmd_width * float(self.reference_fraction)))

    @property
    def reference_feature(self) -> int:
        """Index of the (first) reference feature in the layout table."""
        return self.n_features

    @property
    def n_table_features(self) -> int:
        return self.n_features + self.reference_levels

    def reference_bits(self, level: int | None = None) -> npt.NDArray[np.uint8]:
        """The reference features' bits (length ``reference_levels``) of a reference at ``level`` of
        ``reference_levels`` (None: the whole reference): the first ``level`` ON."""
        levels = self.reference_levels
        level = levels if level is None else int(level)
        if not 1 <= level <= levels:
            raise InvalidInputError(f"reference level must be within 1..{levels}, got {level}")
        bits = np.zeros(levels, dtype=np.uint8)
        bits[:level] = 1
        return bits

    @cached_property
    def _signal_grid(self) -> tuple[int, int, int] | None:
        """The macro signal's grid of rectangles L rows high or a multiple of it, when L > 1 and one fits."""
        if self.signal_layout != "macro" or self.reference_levels == 1:
            return None
        # as many mirrors a feature as the square macro-pixels have at most, and not much fewer: about the same
        # light, cut another way (else the square macro-pixels, and no signal levels)
        side = MacroPixelLayout.largest_side(self.n_features, self.signal_width, self.dmd_height)
        grid = _row_aligned_grid(
            self.n_features, self.signal_width, self.dmd_height, self.reference_levels, side * side
        )
        if grid is None or grid[0] * grid[1] < _MIN_ALIGNED_AREA * side * side:
            return None
        return grid

    @property
    def rows_aligned(self) -> bool:
        """Whether every signal feature holds whole groups of ``reference_levels`` rows, aligned to multiples of
        it: then a signal level dims each feature's field without changing its shape (see the class doc)."""
        return self._signal_grid is not None

    def _build_runs(self) -> np.ndarray:
        signal_width = self.signal_width
        grid = self._signal_grid
        if grid is not None:
            feature_width, feature_height, cols = grid
            inner_runs = _grid_runs(self.n_features, signal_width, feature_width, feature_height, cols)
        else:
            inner_runs = LAYOUT_KINDS[self.signal_layout](self.n_features, signal_width, self.dmd_height).runs
        signal = _remap_runs(inner_runs, signal_width, self.dmd_width, 0)  # each run within one row
        rows = np.arange(self.dmd_height, dtype=np.int64)
        levels = self.reference_levels
        width_bits = levels.bit_length() - 1
        # feature k holds the rows r with r % L == bitreverse(k): the first j features spread evenly over L rows
        position = np.array([int(format(k, f"0{width_bits}b")[::-1], 2) if width_bits else 0 for k in range(levels)])
        feature_of_class = np.empty(levels, dtype=np.int64)
        feature_of_class[position] = np.arange(levels)
        if self.signal_level is not None:
            signal_rows = signal[:, 1].astype(np.int64) // self.dmd_width
            signal = signal[feature_of_class[signal_rows % levels] < self.signal_level]
        reference = np.stack(
            [
                self.n_features + feature_of_class[rows % levels],
                rows * self.dmd_width + signal_width,
                np.full(self.dmd_height, self.dmd_width - signal_width, dtype=np.int64),
            ],
            axis=1,
        )
        return np.concatenate([signal, reference])

    def mirrors_per_feature(self) -> npt.NDArray[np.int64]:
        """Mirrors of each signal feature, then of each reference feature (length ``n_table_features``)."""
        counts = np.zeros(self.n_table_features, dtype=np.int64)
        np.add.at(counts, self._runs[:, 0].astype(np.int64), self._runs[:, 2].astype(np.int64))
        return counts

    def expand(self, bits: npt.ArrayLike) -> npt.NDArray[np.uint8]:
        """Like Layout.expand, with bits of shape (n, n_table_features): the last columns are the reference."""
        bits = np.asarray(bits)
        if bits.ndim != 2 or bits.shape[1] != self.n_table_features:
            raise InvalidInputError(f"expected shape (n, {self.n_table_features}), got {bits.shape}")
        return self._expand_table(bits)


LAYOUT_KINDS = {"lined": LinedLayout, "macro": MacroPixelLayout}


def make_layout(kind: str, n_features: int, dmd_width: int, dmd_height: int, **options) -> Layout:
    """Build a layout by name ("lined", "macro" or "split"); refuses unknown names and sizes that do not fit."""
    try:
        cls = {**LAYOUT_KINDS, "split": SplitLayout}[kind]
    except KeyError:
        raise InvalidInputError(f"unknown layout {kind!r}; choose one of {sorted(LAYOUT_KINDS)}") from None
    return cls(n_features, dmd_width, dmd_height, **options)
