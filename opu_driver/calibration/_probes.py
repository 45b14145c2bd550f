"""Probe patterns and the two-reference layout the matrix estimate uses (helpers of ``matrix.py``).

Hadamard probes are rows of a Sylvester matrix with each column's sign flipped at random, so the matrix behind
them is recovered exactly as P^T Y / n while each frame carries about half the signal light (docs/calibration.md,
"Matrix"); rows are computed on demand, a batch at a time, so no n x n matrix is ever held.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..encoding.layouts import SplitLayout
from ..errors import InvalidInputError

__all__ = ["hadamard_order", "hadamard_rows", "TwoReferenceLayout", "sample_pairs"]


def hadamard_order(n_features: int) -> int:
    """The smallest power of two >= n_features: the order of the Sylvester matrix the probes come from."""
    return 1 << max(0, int(n_features - 1).bit_length())


def hadamard_rows(rows: npt.ArrayLike, n_features: int, signs: npt.ArrayLike | None = None) -> npt.NDArray[np.int8]:
    """Rows ``rows`` of the Sylvester Hadamard matrix, first ``n_features`` columns, times column ``signs``.

    Entry (i, j) is (-1)^popcount(i & j): the parity of the set bits, folded with XOR shifts (no table).
    """
    i = np.asarray(rows, dtype=np.uint64)[:, None]
    j = np.arange(n_features, dtype=np.uint64)[None, :]
    bits = i & j
    for shift in (32, 16, 8, 4, 2, 1):
        bits = bits ^ (bits >> np.uint64(shift))
    out = (1 - 2 * (bits & np.uint64(1)).astype(np.int8)).astype(np.int8)
    if signs is not None:
        out *= np.asarray(signs, dtype=np.int8)[None, :]
    return out


@dataclass(frozen=True)
class TwoReferenceLayout(SplitLayout):
    """A split layout whose reference columns are cut into two regions: top rows A and bottom rows B.

    The signal features sit exactly where :class:`SplitLayout` puts them (same runs), so their fields are
    the ones the linear mode sees. Feature ``n_features`` is region A (the upper half of the reference
    columns) and ``n_features + 1`` region B (the lower half); ``n_table_features = n_features + 2``.
    """

    kind_name = "split2"

    def __post_init__(self) -> None:
        if self.dmd_height < 2:
            raise InvalidInputError("two reference regions need a DMD of at least two rows")
        super().__post_init__()

    @property
    def reference_features(self) -> tuple[int, int]:
        """Table indices of the regions A and B."""
        return self.n_features, self.n_features + 1

    @property
    def n_table_features(self) -> int:
        return self.n_features + 2

    @classmethod
    def beside(cls, layout: SplitLayout) -> TwoReferenceLayout:
        """The two-reference layout of a split layout's signal (its features on the same mirrors)."""
        return cls(
            layout.n_features,
            layout.dmd_width,
            layout.dmd_height,
            reference_fraction=layout.reference_fraction,
            signal_layout=layout.signal_layout,
            reference_levels=layout.reference_levels,
        )

    def _build_runs(self) -> np.ndarray:
        runs = super()._build_runs().astype(np.int64)
        reference = runs[:, 0] >= self.n_features  # every reference level's rows
        rows = runs[:, 1] // self.dmd_width
        runs[reference, 0] = self.n_features + (rows[reference] >= self.dmd_height // 2)
        return runs


def sample_pairs(
    n_rows: int, columns: npt.NDArray[np.intp], limit: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """At most ``limit`` (row, column) index pairs drawn without replacement from rows x ``columns``."""
    total = n_rows * columns.size
    flat = np.arange(total) if total <= limit else np.sort(rng.choice(total, size=limit, replace=False))
    return flat // max(columns.size, 1), columns[flat % max(columns.size, 1)]
