"""Encoders: real or integer feature vectors -> binary DMD feature frames, and their decoders.

The DMD shows binary frames only, so every input goes through one of three encodings:

* :class:`BinaryThreshold`: x -> (x > threshold), one frame per vector.
* :class:`TernaryEncoder`: e -> (e+, e-), two disjoint binary frames with e ~ t * (e+ - e-); the error of
  DFA is ternary by design (DESIGN.md section 5), and a linear projection of it is B e+ - B e-.
* :class:`BitPlaneEncoder`: separated bit planes, p bits per sign, for real-valued vectors; the projection
  of x is recovered by linearity, as the weighted sum of the projections of the 2p planes.

All follow one sklearn-like contract: ``fit(X)`` validates the data, stores what it learns in attributes
ending in ``_`` and returns ``self``; ``transform(X, chunk_rows=...)`` streams over the batch in chunks of
rows, so its transient memory is bounded by the chunk, and allocates its output once. Calling ``transform``
(or a decoder) before ``fit`` raises :class:`~opu_driver.errors.ConfigurationError` (a usage-order error,
not bad data). Bad data raises :class:`~opu_driver.errors.InvalidInputError`: NaN or Inf, non-numeric or
complex dtypes, more than 2 dimensions, or a number of features different from the one seen at ``fit``.
A 1-D input is one vector; the output then has no batch axis either. An empty batch gives an empty output.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from ..errors import ConfigurationError, InvalidInputError
from ..validation import check_int

__all__ = [
    "BinaryThreshold",
    "TernaryEncoder",
    "TernaryPlanes",
    "BitPlaneEncoder",
    "DEFAULT_CHUNK_ELEMENTS",
]

logger = logging.getLogger(__name__)

#: With ``chunk_rows=None`` a chunk holds about this many input values (at least one row). The float64
#: work buffers of a chunk then stay in the CPU cache (~0.5 MB), which is also what makes the passes fast.
DEFAULT_CHUNK_ELEMENTS = 1 << 16

# Integer dtypes small enough to encode through a lookup table of every possible value.
_LUT_DTYPES = {np.dtype(np.bool_), np.dtype(np.uint8), np.dtype(np.int8), np.dtype(np.uint16), np.dtype(np.int16)}


# --------------------------------------------------------------------------------------------- helpers
def _as_batch(X: npt.ArrayLike, name: str = "X") -> tuple[np.ndarray, bool]:
    """Return (2-D array, input_was_1d) after the dtype and shape checks (not the finiteness check)."""
    if isinstance(X, np.ma.MaskedArray):  # np.asarray would silently encode the hidden values
        raise InvalidInputError(f"{name} is a masked array: fill or drop the masked entries first")
    try:
        arr = np.asarray(X)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"{name} is not a numeric array: {exc}") from exc
    if arr.dtype.kind not in "biuf":
        raise InvalidInputError(f"{name} must be boolean, integer or real, got dtype {arr.dtype}")
    if arr.ndim == 1:
        return arr.reshape(1, -1), True
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be 1-D (one vector) or 2-D (batch, n_features), got shape {arr.shape}")
    return arr, False


def _check_finite_range(chunk: np.ndarray, name: str = "X") -> tuple[float, float]:
    """(min, max) of a non-empty chunk; raise on NaN or Inf. min/max propagate NaN, so no mask is allocated."""
    lo = chunk.min()
    hi = chunk.max()
    if chunk.dtype.kind == "f" and not (np.isfinite(lo) and np.isfinite(hi)):
        raise InvalidInputError(f"{name} contains NaN or Inf")
    return float(lo), float(hi)


def _resolve_chunk_rows(chunk_rows: int | None, n_features: int) -> int:
    if chunk_rows is None:
        return max(1, DEFAULT_CHUNK_ELEMENTS // max(1, n_features))
    return check_int(chunk_rows, "chunk_rows", low=1, error=ConfigurationError)


def _check_real_scalar(value: float, name: str, low: float | None = None, high: float | None = None) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigurationError(f"{name} must be a real number, got {value!r}") from exc
    if not np.isfinite(v) or (low is not None and v < low) or (high is not None and v > high):
        raise ConfigurationError(f"{name} must be finite and within [{low}, {high}], got {value!r}")
    return v


class _FittedMixin:
    """Shared bookkeeping: ``n_features_in_`` is set by ``fit``; ``fitted`` says whether it ran."""

    n_features_in_: int

    @property
    def fitted(self) -> bool:
        return hasattr(self, "n_features_in_")

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise ConfigurationError(f"{type(self).__name__} is not fitted: call fit(X) before transform/decode")

    def _validate_for_transform(self, X: npt.ArrayLike) -> tuple[np.ndarray, bool]:
        self._require_fitted()
        arr, was_1d = _as_batch(X)
        if arr.shape[1] != self.n_features_in_:
            raise InvalidInputError(
                f"X has {arr.shape[1]} features but {type(self).__name__} was fitted on {self.n_features_in_}"
            )
        return arr, was_1d

    def _fit_batch(self, X: npt.ArrayLike) -> np.ndarray:
        arr, _ = _as_batch(X)
        if arr.shape[1] < 1:
            raise InvalidInputError("X must have at least one feature")
        if arr.size:
            _check_finite_range(arr)
        return arr


def _check_binary(arr: np.ndarray, name: str) -> None:
    if arr.size and arr.dtype != np.bool_ and not np.all((arr == 0) | (arr == 1)):
        raise InvalidInputError(f"{name} must hold only 0 and 1")


# --------------------------------------------------------------------------------------------- binary
@dataclass
class BinaryThreshold(_FittedMixin):
    """x -> (x > threshold) as uint8, one binary frame per vector.

    Args:
        threshold: the cut; ``None`` means 0.0 (so the sign of x: positive -> 1). Nothing is learnt from the
            data: ``fit`` validates X and records ``n_features_in_`` and ``threshold_``.
    """

    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _check_real_scalar(self.threshold, "threshold")

    def fit(self, X: npt.ArrayLike) -> BinaryThreshold:
        arr = self._fit_batch(X)
        self.threshold_ = 0.0 if self.threshold is None else float(self.threshold)
        self.n_features_in_ = int(arr.shape[1])
        return self

    def transform(self, X: npt.ArrayLike, chunk_rows: int | None = None) -> npt.NDArray[np.uint8]:
        """uint8 array of X's shape, 1 where x > threshold_. Raises ConfigurationError if not fitted."""
        arr, was_1d = self._validate_for_transform(X)
        step = _resolve_chunk_rows(chunk_rows, arr.shape[1])
        out = np.empty(arr.shape, dtype=np.uint8)
        for r0 in range(0, arr.shape[0], step):
            chunk = arr[r0 : r0 + step]
            _check_finite_range(chunk)
            np.greater(chunk, self.threshold_, out=out[r0 : r0 + step])
        return out[0] if was_1d else out

    def decode(self, values: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The projection of a binary frame needs no combination: returns ``values`` as float32."""
        self._require_fitted()
        arr = np.asarray(values, dtype=np.float32)
        if arr.size and not np.isfinite(arr).all():
            raise InvalidInputError("values contain NaN or Inf")
        return arr


# --------------------------------------------------------------------------------------------- ternary
@dataclass(frozen=True)
class TernaryPlanes:
    """The two disjoint binary frames of a ternary code; unpacks as ``plus, minus = code``."""

    plus: npt.NDArray[np.uint8]
    minus: npt.NDArray[np.uint8]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter((self.plus, self.minus))


TernaryRule = Literal["fraction_of_max", "quantile"]


@dataclass
class TernaryEncoder(_FittedMixin):
    """e -> (e+, e-) with e+ = (e > t), e- = (e < -t): disjoint binary uint8 frames, e ~ t (e+ - e-).

    Args:
        threshold: t itself (>= 0), or ``None`` to choose it at ``fit`` from the data with ``rule``.
        rule: ``"fraction_of_max"``: t = value * max|e| over the fit data (t = 0 for all-zero data, which
            then encodes every positive entry as +1 and every negative one as -1);
            ``"quantile"``: t = quantile(|e|, value) over the fit data (this one holds |e| of the whole fit
            batch in memory once).
        value: the fraction or the quantile level, in [0, 1].

    ``fit`` stores ``threshold_`` and ``n_features_in_``; fitting an empty batch with ``threshold=None``
    raises InvalidInputError (there is nothing to choose t from).
    """

    threshold: float | None = None
    rule: TernaryRule = "fraction_of_max"
    value: float = 0.3

    def __post_init__(self) -> None:
        if self.threshold is not None:
            _check_real_scalar(self.threshold, "threshold", low=0.0)
        if self.rule not in ("fraction_of_max", "quantile"):
            raise ConfigurationError(f"rule must be 'fraction_of_max' or 'quantile', got {self.rule!r}")
        _check_real_scalar(self.value, "value", low=0.0, high=1.0)

    def fit(self, X: npt.ArrayLike) -> TernaryEncoder:
        arr = self._fit_batch(X)
        if self.threshold is not None:
            t = float(self.threshold)
        elif arr.size == 0:
            raise InvalidInputError("cannot choose a ternary threshold from an empty batch; give threshold=")
        elif self.rule == "fraction_of_max":
            lo, hi = _check_finite_range(arr)
            t = float(self.value) * max(abs(lo), abs(hi))
        else:
            t = float(np.quantile(np.abs(arr.astype(np.float64)), float(self.value)))
        self.threshold_ = t
        self.n_features_in_ = int(arr.shape[1])
        logger.debug("ternary threshold %g (%s)", t, "given" if self.threshold is not None else self.rule)
        return self

    def transform(self, X: npt.ArrayLike, chunk_rows: int | None = None) -> TernaryPlanes:
        """TernaryPlanes(plus, minus), each uint8 of X's shape. Raises ConfigurationError if not fitted."""
        arr, was_1d = self._validate_for_transform(X)
        step = _resolve_chunk_rows(chunk_rows, arr.shape[1])
        plus = np.empty(arr.shape, dtype=np.uint8)
        minus = np.empty(arr.shape, dtype=np.uint8)
        t = self.threshold_
        for r0 in range(0, arr.shape[0], step):
            chunk = arr[r0 : r0 + step]
            _check_finite_range(chunk)
            np.greater(chunk, t, out=plus[r0 : r0 + step])
            np.less(chunk, -t, out=minus[r0 : r0 + step])
        if was_1d:
            return TernaryPlanes(plus[0], minus[0])
        return TernaryPlanes(plus, minus)

    def decode(self, plus_values: npt.ArrayLike, minus_values: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """t * (plus_values - minus_values) as float32, for frames or for their linear projections alike."""
        self._require_fitted()
        p = np.asarray(plus_values, dtype=np.float64)
        m = np.asarray(minus_values, dtype=np.float64)
        if p.shape != m.shape:
            raise InvalidInputError(f"plus and minus shapes differ: {p.shape} vs {m.shape}")
        if p.size and not (np.isfinite(p).all() and np.isfinite(m).all()):
            raise InvalidInputError("values contain NaN or Inf")
        return (self.threshold_ * (p - m)).astype(np.float32)

    def inverse_transform(self, plus: npt.ArrayLike, minus: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """t * (plus - minus) as float32 from binary frames of n_features_in_ features (checked)."""
        self._require_fitted()
        p, _ = _as_batch(plus, "plus")
        m, _ = _as_batch(minus, "minus")
        for arr, name in ((p, "plus"), (m, "minus")):
            if arr.shape[1] != self.n_features_in_:
                raise InvalidInputError(f"{name} has {arr.shape[1]} features, fitted on {self.n_features_in_}")
            _check_binary(arr, name)
        return self.decode(plus, minus)


# --------------------------------------------------------------------------------------------- bit planes
@dataclass
class BitPlaneEncoder(_FittedMixin):
    """Separated bit planes: x -> 2 * n_bits binary frames, n_bits per sign.

    ``fit`` stores ``scale_ = max|x|`` over the fit data. ``transform`` quantises each magnitude to an
    integer q in 0 .. L = 2**n_bits - 1, computed in float64 as::

        q = min(L, rint(|x| * (L / scale_)))        (round to nearest, ties to even)

    and returns uint8 planes of shape ``(n_bits, 2, batch, n_features)`` (``(n_bits, 2, n_features)`` for a
    1-D input): ``planes[b, 0]`` is bit b (least significant first) of q where x > 0, ``planes[b, 1]`` bit b
    of q where x < 0. So x ~= scale_ / L * sum_b 2**b (planes[b, 0] - planes[b, 1]); :meth:`decode` computes
    exactly that (also for the linear projections of the planes), and is the exact inverse on the grid.

    Values with |x| > scale_ (beyond the fitted range) are clipped to q = L, with one ``warnings.warn``
    (RuntimeWarning) per ``transform`` call. All-zero fit data gives ``scale_ = 0``: everything then encodes
    to zeros, and any non-zero value counts as out of range (warned).

    Transient memory is a few buffers of one chunk (about 20 bytes per input value of the chunk) on top of
    the output, which is allocated once; the work is vectorised per chunk, 2 cheap uint8 passes per plane.
    Small integer inputs (bool, (u)int8, (u)int16) go through a lookup table of all their values.

    Args:
        n_bits: bits per sign, 1..16.
    """

    n_bits: int = 8

    def __post_init__(self) -> None:
        check_int(self.n_bits, "n_bits", low=1, high=16, error=ConfigurationError)

    @property
    def levels(self) -> int:
        """L = 2**n_bits - 1, the largest magnitude code."""
        return (1 << int(self.n_bits)) - 1

    def fit(self, X: npt.ArrayLike) -> BitPlaneEncoder:
        arr = self._fit_batch(X)
        if arr.size == 0:
            raise InvalidInputError("cannot fit the bit-plane scale on an empty batch")
        lo, hi = _check_finite_range(arr)
        self.scale_ = max(abs(lo), abs(hi))
        self.n_features_in_ = int(arr.shape[1])
        self._lut_cache: dict = {}
        return self

    # -- quantisation -------------------------------------------------------------------------------
    def _q_dtype(self) -> np.dtype:
        return np.dtype(np.uint8) if self.n_bits <= 8 else np.dtype(np.uint16)

    def _magnitude_codes(self, magnitudes: np.ndarray) -> np.ndarray:
        """q for float64 magnitudes (the formula of the class docstring), in place; returns the array."""
        if self.scale_ == 0.0:
            magnitudes[...] = 0.0
            return magnitudes
        factor = self.levels / self.scale_
        if np.isfinite(factor):
            np.multiply(magnitudes, factor, out=magnitudes)
        else:  # a subnormal scale: L / scale overflows, so divide first
            np.divide(magnitudes, self.scale_, out=magnitudes)
            np.multiply(magnitudes, self.levels, out=magnitudes)
        np.rint(magnitudes, out=magnitudes)
        np.minimum(magnitudes, self.levels, out=magnitudes)
        return magnitudes

    def _lut(self, dtype: np.dtype) -> tuple[np.dtype, np.ndarray, np.ndarray]:
        """(index dtype, signed-free q tables for x > 0 and x < 0) over every value of a small int dtype."""
        if dtype not in self._lut_cache:
            if dtype == np.bool_:
                values, index_dtype = np.array([False, True]), np.dtype(np.uint8)
            else:
                index_dtype = np.dtype(f"u{dtype.itemsize}")
                # Entry i of the table is the value whose bit pattern is i, so X.view(index_dtype) indexes it.
                values = np.arange(1 << (8 * dtype.itemsize), dtype=np.int64).astype(index_dtype).view(dtype)
            v = values.astype(np.float64)
            q = self._magnitude_codes(np.abs(v)).astype(self._q_dtype())
            self._lut_cache[dtype] = (
                index_dtype,
                np.where(v > 0, q, 0).astype(q.dtype),
                np.where(v < 0, q, 0).astype(q.dtype),
            )
        return self._lut_cache[dtype]

    def transform(
        self, X: npt.ArrayLike, chunk_rows: int | None = None, out: np.ndarray | None = None
    ) -> npt.NDArray[np.uint8]:
        """uint8 planes (n_bits, 2, batch, n_features); see the class docstring. ConfigurationError if not fitted.

        ``out``: optionally a uint8 array of exactly that shape (for a 1-D X: (n_bits, 2, 1, n_features)) to
        write into and return, so that a stream of batches reuses one buffer (a fresh output of 1000 x 100,000
        values at 6 bits is 1.2 GB, and first-touching its pages costs about as much as the encoding itself).
        """
        arr, was_1d = self._validate_for_transform(X)
        n_rows, n_feat = arr.shape
        step = _resolve_chunk_rows(chunk_rows, n_feat)
        shape = (self.n_bits, 2, n_rows, n_feat)
        out, zeroed = self._output_planes(shape, out)
        if n_rows == 0:
            return out[:, :, 0] if was_1d else out
        qdt = self._q_dtype()
        rows = min(step, n_rows)
        q_plus = np.empty((rows, n_feat), dtype=qdt)
        q_minus = np.empty((rows, n_feat), dtype=qdt)
        shifted = np.empty((rows, n_feat), dtype=qdt)
        use_lut = arr.dtype in _LUT_DTYPES
        signed = arr.dtype.kind in "if"
        if use_lut:
            index_dtype, lut_plus, lut_minus = self._lut(arr.dtype)
        else:
            mags = np.empty((rows, n_feat), dtype=np.float64)
        clipped = False
        for r0 in range(0, n_rows, step):
            chunk = arr[r0 : r0 + step]
            k = chunk.shape[0]
            lo, hi = _check_finite_range(chunk)
            if hi > self.scale_ or -lo > self.scale_:
                clipped = True
            qp, qm, sh = q_plus[:k], q_minus[:k], shifted[:k]
            has_minus = signed and lo < 0
            if use_lut:
                idx = chunk.view(index_dtype) if chunk.dtype != np.bool_ else chunk.view(np.uint8)
                np.take(lut_plus, idx, out=qp)
                if has_minus:
                    np.take(lut_minus, idx, out=qm)
            else:
                m = mags[:k]
                np.abs(chunk, out=m, dtype=np.float64)
                self._magnitude_codes(m)
                np.copyto(qp, m, casting="unsafe")
                if has_minus:
                    np.copyto(qm, qp)
                    # Zero the other sign's codes; x == 0 has q == 0 in both.
                    np.multiply(qp, chunk > 0, out=qp, casting="unsafe")
                    np.multiply(qm, chunk < 0, out=qm, casting="unsafe")
            for sign, q in ((0, qp), (1, qm)):
                if sign == 1 and not has_minus:
                    if not zeroed:
                        out[:, 1, r0 : r0 + k] = 0
                    continue
                self._write_planes(out, sign, q, slice(r0, r0 + k), sh)
        if clipped:
            warnings.warn(
                f"values beyond the fitted range |x| <= {self.scale_:g} were clipped to the largest bit-plane code",
                RuntimeWarning,
                stacklevel=2,
            )
        return out[:, :, 0] if was_1d else out

    @staticmethod
    def _output_planes(shape: tuple[int, int, int, int], out: np.ndarray | None) -> tuple[npt.NDArray[np.uint8], bool]:
        """The array ``transform`` writes into, and whether it starts zeroed: a new one, or ``out`` once checked."""
        if out is None:
            # zeros, not empty: the minus planes of non-negative chunks are never written (calloc'd pages stay lazy).
            return np.zeros(shape, dtype=np.uint8), True
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.shape != shape or not out.flags.writeable:
            raise InvalidInputError(f"out must be a writeable uint8 array of shape {shape}")
        return out, False

    def _write_planes(
        self, out: npt.NDArray[np.uint8], sign: int, q: np.ndarray, rows: slice, shifted: np.ndarray
    ) -> None:
        """Bit b of the codes ``q`` into ``out[b, sign, rows]``, for every plane b (``shifted``: scratch like q)."""
        for b in range(self.n_bits):
            if b == 0:
                np.bitwise_and(q, 1, out=out[0, sign, rows], casting="unsafe")
            else:
                np.right_shift(q, b, out=shifted)
                np.bitwise_and(shifted, 1, out=out[b, sign, rows], casting="unsafe")

    # -- decoding -----------------------------------------------------------------------------------
    def decode(self, values_per_plane: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """scale_ / L * sum_b 2**b (v[b, 0] - v[b, 1]) as float32, for v of shape (n_bits, 2, ...).

        ``v`` may be the planes themselves or their linear projections (n_bits, 2, batch, n_components):
        projection is linear, so the same weighted sum gives the projection of the quantised x.
        Accumulated in float64, so on integer planes it is exact before the final float32 rounding.
        """
        self._require_fitted()
        v = np.asarray(values_per_plane)
        if v.dtype.kind not in "biuf":
            raise InvalidInputError(f"values_per_plane must be real, got dtype {v.dtype}")
        if v.ndim < 2 or v.shape[0] != self.n_bits or v.shape[1] != 2:
            raise InvalidInputError(f"values_per_plane must have shape ({self.n_bits}, 2, ...), got {v.shape}")
        if v.dtype.kind == "f" and v.size and not np.isfinite(v).all():
            raise InvalidInputError("values_per_plane contains NaN or Inf")
        acc = np.zeros(v.shape[2:], dtype=np.float64)
        for b in range(self.n_bits):
            # Weights 2**b are exact in float64, and so are the integer partial sums below 2**53.
            acc += float(1 << b) * (v[b, 0].astype(np.float64) - v[b, 1])
        scale_per_level = self.scale_ / self.levels
        return (acc * scale_per_level).astype(np.float32)

    def inverse_transform(self, planes: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """x on the quantisation grid, float32 (batch, n_features), from binary planes (checked)."""
        self._require_fitted()
        p = np.asarray(planes)
        if p.ndim not in (3, 4) or p.shape[-1] != self.n_features_in_:
            raise InvalidInputError(
                f"planes must have shape ({self.n_bits}, 2, [batch,] {self.n_features_in_}), got {p.shape}"
            )
        _check_binary(p, "planes")
        return self.decode(p)
