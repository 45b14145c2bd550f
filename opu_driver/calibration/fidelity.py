"""Fidelity of linear projections: repeatability, linearity and signal-to-noise, per scheme and frame budget.

For each linear-mode scheme and encoding (ternary vectors, or real vectors through bit planes) the routine projects
a, a again, b and a + b in one batch and derives the repeatability, the linearity error (and the nonlinearity left
when the noise is taken off) and the SNR, so schemes and frame budgets can be compared on the same vectors. The
definitions and what each number holds are in docs/calibration.md ("Fidelity"). Only the public Opu API is used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import tqdm

from ..errors import InvalidInputError
from ..opu import FRAMES_PER_TERNARY, PROJECTION_SCHEMES, Opu
from ..validation import is_int
from ._checks import check_components, check_count, check_features, check_seed, correlation
from .exposure import ExposureResult
from .reference import ReferenceResult
from .registry import register_routine
from .result import CalibrationResult, Recorded, row_key, summarised
from .result import rows as rows_of

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["FidelityRow", "FidelityResult", "measure_fidelity", "row_label", "correlation"]

_log = logging.getLogger(__name__)


def row_label(scheme: str, n_bits: int | None) -> str:
    """The label of a row: "four_frame/ternary" or "four_frame/4bit"."""
    return f"{scheme}/{'ternary' if n_bits is None else f'{n_bits}bit'}"


@dataclass(frozen=True, kw_only=True)
class FidelityRow(Recorded):
    """Fidelity of one (scheme, encoding).

    Attributes:
        scheme: "four_frame" or "two_frame".
        n_bits: None for ternary vectors, else the number of bit planes real vectors went through.
        frames_per_vector: frames one nonzero vector costs (4 or 2 per ternary projection, times n_bits).
        repeatability: correlation between two projections of the same vectors.
        linearity_error: RMS of L(a) + L(b) - L(a + b) over RMS of L(a + b).
        nonlinearity: the linearity error with the noise of its three projections removed (3 noise_variance
            taken off the mean square residual): the systematic part, e.g. the two-frame scheme's bias.
        snr_db: 10 log10(signal variance / noise variance); inf when repeats are identical.
        signal_variance, noise_variance: the two variances, in output units (entries of unit variance).
        n_outputs: outputs the statistics used (those the linear mode did not mask).
    """

    # declared in the order of a row's summary (keyword-only, so that order is free); NaN and infinities are
    # None in the summary (JSON has neither)
    scheme: str
    n_bits: int | None
    frames_per_vector: int = summarised(array=np.int64)
    repeatability: float = summarised(digits=6, finite=True, array=np.float64)
    linearity_error: float = summarised(digits=6, finite=True, array=np.float64)
    nonlinearity: float = summarised(digits=6, finite=True)
    snr_db: float = summarised(digits=3, finite=True, array=np.float64)
    signal_variance: float
    noise_variance: float
    n_outputs: int

    @property
    def label(self) -> str:
        return row_label(self.scheme, self.n_bits)

    @property
    def snr(self) -> float:
        """Signal over noise variance as a plain ratio (inf without noise)."""
        return math.inf if math.isinf(self.snr_db) and self.snr_db > 0 else 10 ** (self.snr_db / 10)


def _label(row: FidelityRow) -> str:
    return row.label


@dataclass(frozen=True)
class FidelityResult(CalibrationResult):
    """Fidelity rows for every (scheme, encoding) measured, with the sizes they were measured at.

    The summary holds the sizes, the row labels (comma-separated, under ``rows``) and per row
    "<label>:<quantity>" (:meth:`row_key`); the arrays one entry per row, in the order of the labels.
    """

    routine: ClassVar[str] = "fidelity"

    n_features: int = summarised()
    n_components: int = summarised()
    n_vectors: int = summarised()
    rows: tuple[FidelityRow, ...] = rows_of(FidelityRow, _label)

    @staticmethod
    def row_key(label: str, quantity: str) -> str:
        """The summary key of one row's quantity (a key of ``FidelityRow.summary_key``)."""
        return row_key(label, quantity)

    def row(self, scheme: str, n_bits: int | None = None) -> FidelityRow:
        """The row of one (scheme, encoding); KeyError if it was not measured."""
        for candidate in self.rows:
            if candidate.scheme == scheme and candidate.n_bits == n_bits:
                return candidate
        raise KeyError(row_label(scheme, n_bits))

    def table(self) -> str:
        """The rows as a printable text table."""
        header = (
            f"{'row':<22} {'frames/vector':>13} {'repeatability':>13} {'linearity err':>13} "
            f"{'nonlinearity':>12} {'SNR (dB)':>9}"
        )
        lines = [
            f"fidelity of {self.n_vectors} vectors, {self.n_features} features -> {self.n_components} outputs",
            header,
            "-" * len(header),
        ]
        for r in self.rows:
            lines.append(
                f"{r.label:<22} {r.frames_per_vector:>13d} {r.repeatability:>13.5f} "
                f"{r.linearity_error:>13.5f} {r.nonlinearity:>12.5f} {r.snr_db:>9.2f}"
            )
        return "\n".join(lines)


def _vectors(rng: np.random.Generator, n_vectors: int, n_features: int, n_bits: int | None):
    """(a, b) of the row: ternary with disjoint supports (about a third of the features each), or Gaussian."""
    if n_bits is None:
        part = rng.choice(3, size=(n_vectors, n_features), p=(1 / 3, 1 / 3, 1 / 3))  # 0: in a, 1: in b, 2: neither
        # Every vector gets at least one nonzero entry (an all-zero one projects to 0 without the device).
        rows = np.arange(n_vectors)
        first = rng.integers(0, n_features, size=n_vectors)
        second = (first + rng.integers(1, n_features, size=n_vectors)) % n_features
        part[rows, first], part[rows, second] = 0, 1
        sign = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_vectors, n_features))
        return np.where(part == 0, sign, 0).astype(np.int8), np.where(part == 1, sign, 0).astype(np.int8)
    return rng.standard_normal((n_vectors, n_features)), rng.standard_normal((n_vectors, n_features))


def measure_fidelity(
    opu: Opu,
    n_features: int,
    n_components: int,
    *,
    schemes: tuple[str, ...] = PROJECTION_SCHEMES,
    n_bits: tuple[int | None, ...] = (None, 2, 4, 8),
    n_vectors: int = 32,
    seed: int | None = None,
    progress: bool = False,
) -> FidelityResult:
    """Measure repeatability, linearity error and SNR of linear projections for each scheme and encoding.

    Args:
        opu: an open Opu.
        n_features: length of the projected vectors.
        n_components: outputs per projection.
        schemes: linear-mode schemes to measure ("four_frame", "two_frame").
        n_bits: encodings: None for ternary vectors, an integer b (1..16) for real Gaussian vectors through b bit
            planes.
        n_vectors: vectors per set (each row projects 4 sets: a, a again, b, a + b).
        seed: seed of the random vectors (None: fresh ones).
        progress: show a progress bar over the rows.

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
    """
    check_features(opu, n_features, 2)  # a and b need disjoint supports
    check_components(opu, n_components)
    check_count(n_vectors, "n_vectors", 2)  # a correlation needs two
    schemes = tuple(schemes) if isinstance(schemes, (tuple, list)) else (schemes,)
    if not schemes or any(s not in PROJECTION_SCHEMES for s in schemes) or len(set(schemes)) != len(schemes):
        raise InvalidInputError(f"schemes={schemes!r}; choose distinct ones of {PROJECTION_SCHEMES}")
    encodings = tuple(n_bits) if isinstance(n_bits, (tuple, list)) else (n_bits,)
    if (
        not encodings
        or len(set(encodings)) != len(encodings)
        or any(b is not None and not is_int(b, 1, 16) for b in encodings)
    ):
        raise InvalidInputError(f"n_bits={n_bits!r}; give distinct values, each None (ternary) or 1..16")
    check_seed(seed)

    rng = np.random.default_rng(seed)
    ternary = _vectors(rng, n_vectors, n_features, None)
    gaussian = _vectors(rng, n_vectors, n_features, 8)
    plan = [(scheme, bits) for scheme in schemes for bits in encodings]
    rows = []
    for scheme, bits in tqdm.tqdm(plan, desc="fidelity", disable=not progress):
        a, b = ternary if bits is None else gaussian
        rows.append(_measure_row(opu, n_components, a, b, scheme, bits))
        _log.info(
            "fidelity %s: repeatability %.5f, linearity error %.5f, SNR %.2f dB",
            rows[-1].label,
            rows[-1].repeatability,
            rows[-1].linearity_error,
            rows[-1].snr_db,
        )
    return FidelityResult(int(n_features), int(n_components), int(n_vectors), tuple(rows))


def _measure_row(
    opu: Opu, n_components: int, a: np.ndarray, b: np.ndarray, scheme: str, n_bits: int | None
) -> FidelityRow:
    s = a + b
    # One call: the same reference calibration and, for bit planes, one quantisation step for a, b and a + b
    # (fitted on the largest of them), so the linearity error holds the rounding, not a change of scale.
    batch = np.concatenate([a, a, b, s]).astype(np.int8 if n_bits is None else np.float64)
    out = opu.linear_transform(batch, n_components, scheme=scheme, n_bits=n_bits).astype(np.float64)
    y1, y2, yb, ys = np.split(out, 4)
    frames = FRAMES_PER_TERNARY[scheme] * (1 if n_bits is None else n_bits)
    # Masked outputs are 0 in every projection: left out. (An output whose frames saturated in one call is 0 in
    # that call only; it stays in, since it is what a user gets, and the linear mode warns about it.)
    used = np.any(out != 0, axis=0)
    nan = float("nan")
    if not used.any():
        return FidelityRow(
            scheme=scheme,
            n_bits=n_bits,
            frames_per_vector=frames,
            repeatability=nan,
            linearity_error=nan,
            nonlinearity=nan,
            snr_db=nan,
            signal_variance=nan,
            noise_variance=nan,
            n_outputs=0,
        )
    y1, y2, yb, ys = y1[:, used], y2[:, used], yb[:, used], ys[:, used]
    repeatability = correlation(y1, y2)
    noise = float(np.var(y1 - y2)) / 2
    total = (float(np.var(y1)) + float(np.var(y2))) / 2
    signal = max(total - noise, 0.0)
    if noise == 0:
        snr_db = math.inf if signal > 0 else nan
    else:
        snr_db = 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    residual = y1 + yb - ys
    scale = math.sqrt(float(np.mean(ys**2)))
    mean_square = float(np.mean(residual**2))
    linearity = math.sqrt(mean_square) / scale if scale > 0 else nan
    # The residual holds the independent noise of three projections (about 3 noise, the noise of a + b being
    # close to that of a): what is left is systematic.
    nonlinearity = math.sqrt(max(mean_square - 3 * noise, 0.0)) / scale if scale > 0 else nan
    return FidelityRow(
        scheme=scheme,
        n_bits=n_bits,
        frames_per_vector=frames,
        repeatability=repeatability,
        linearity_error=linearity,
        nonlinearity=nonlinearity,
        snr_db=snr_db,
        signal_variance=signal,
        noise_variance=noise,
        n_outputs=int(used.sum()),
    )


@register_routine(FidelityResult, position=60, stale_after=(ExposureResult, ReferenceResult))
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> FidelityResult:
    """The fidelity step of ``calibrate``: every scheme and encoding at the plan's sizes."""
    return measure_fidelity(opu, plan.n_features, plan.n_components, progress=progress)
