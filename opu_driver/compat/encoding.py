"""Encoders and decoders with the interface of ``lightonml.encoding.base`` (lightonml 1.4).

They turn real data into the 0/1 vectors an OPU shows and its outputs back, with lightonml's names, arguments and
results, so scripts written for lightonml run unchanged. Written from lightonml's documented behaviour; where
lightonml silently gave a wrong result (an ``auto`` threshold used before ``fit``, NaN input, a bit-plane encoder
given a 1-D array) these raise :class:`~opu_driver.errors.InvalidInputError` instead. Each accepts NumPy arrays and
PyTorch tensors and returns the kind it was given.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ConfigurationError, InvalidInputError
from ._arrays import like_input, to_numpy

__all__ = [
    "BaseTransformer",
    "NoEncoding",
    "NoDecoding",
    "BinaryThresholdEncoder",
    "MultiThresholdEncoder",
    "SeparatedBitPlanEncoder",
    "SeparatedBitPlanDecoder",
    "ConcatenatedBitPlanEncoder",
    "ConcatenatingBitPlanDecoder",
    "Float32Encoder",
    "ConcatenatedFloat32Encoder",
    "SequentialBaseTwoEncoder",
]

logger = logging.getLogger(__name__)


def _finite(X: np.ndarray, who: str) -> np.ndarray:
    """``X`` if it is numeric and has no NaN or Inf (they would encode to arbitrary bits)."""
    if X.dtype == object or not (np.issubdtype(X.dtype, np.number) or X.dtype == np.bool_):
        raise InvalidInputError(f"{who}: input must be numeric, got dtype {X.dtype}")
    if np.issubdtype(X.dtype, np.floating) and not np.isfinite(X).all():
        raise InvalidInputError(f"{who}: input has NaN or Inf values")
    return X


class BaseTransformer:
    """An encoder or a decoder: ``fit`` learns its parameters from data, ``transform`` applies them."""

    def fit(self, X: Any, y: Any = None) -> BaseTransformer:
        """Learn parameters from ``X`` (nothing to learn here); returns self so calls chain."""
        return self

    def transform(self, X: Any) -> Any:
        """Encode or decode ``X``."""
        raise NotImplementedError

    def fit_transform(self, X: Any, y: Any = None) -> Any:
        """``fit(X)`` then ``transform(X)``."""
        return self.fit(X, y).transform(X)


class NoEncoding(BaseTransformer):
    """The identity: the input is already binary."""

    def transform(self, X: Any) -> Any:
        """``X`` unchanged."""
        return X


class NoDecoding(BaseTransformer):
    """The identity: the output is used as the OPU gave it."""

    def transform(self, X: Any) -> Any:
        """``X`` unchanged."""
        return X


class BinaryThresholdEncoder(BaseTransformer):
    """One bit per value: 1 above the threshold (below it when ``greater_is_one`` is False), else 0.

    Args:
        threshold_enc: a number, or ``"auto"``: the median of each feature over the data given to :meth:`fit`.
        greater_is_one: whether values above the threshold are 1.
    """

    def __init__(self, threshold_enc: float | str = "auto", greater_is_one: bool = True) -> None:
        if isinstance(threshold_enc, bool) or not (
            isinstance(threshold_enc, (int, float, np.number)) or threshold_enc == "auto"
        ):
            raise ConfigurationError("threshold_enc must be a number or 'auto'")
        self.threshold_enc: Any = threshold_enc
        self.greater_is_one = greater_is_one

    def fit(self, X: Any, y: Any = None) -> BinaryThresholdEncoder:
        """With ``"auto"``, set the threshold to each feature's median over ``X``; else warn (through logging)
        when the threshold is outside the range of ``X``."""
        X_np = _finite(to_numpy(X)[0], "BinaryThresholdEncoder.fit")
        if isinstance(self.threshold_enc, str):
            self.threshold_enc = np.median(X_np, axis=0)
        elif not X_np.min() <= self.threshold_enc <= X_np.max():
            logger.warning("encoder threshold %s is outside the data range", self.threshold_enc)
        return self

    def transform(self, X: Any) -> Any:
        """uint8 0/1 array of ``X``'s shape."""
        if isinstance(self.threshold_enc, str):
            raise InvalidInputError("BinaryThresholdEncoder: with threshold_enc='auto', call fit before transform")
        X_np, was_tensor = to_numpy(X)
        _finite(X_np, "BinaryThresholdEncoder")
        bits = X_np > self.threshold_enc if self.greater_is_one else X_np < self.threshold_enc
        return like_input(bits.astype(np.uint8), was_tensor)


class MultiThresholdEncoder(BaseTransformer):
    """``n_bins - 1`` bits per value, bit k set when the value exceeds threshold k (a thermometer code).

    The output of (n, f) input is (n, f * (n_bins - 1)): the f bits of threshold 0, then those of threshold 1, ...

    Args:
        thresholds: a list or array (1-D, or (n_features, n_bins - 1) with ``columnwise``), used as given, or
            ``"linspace"`` (evenly spaced over the data's range) or ``"quantiles"`` (the data's
            1/n_bins ... (n_bins-1)/n_bins quantiles, midpoint rule), computed by :meth:`fit`.
        n_bins: number of levels for ``"linspace"`` and ``"quantiles"``.
        columnwise: one set of thresholds per feature instead of one for all.
    """

    def __init__(self, thresholds: str | npt.ArrayLike = "linspace", n_bins: int = 8, columnwise: bool = False) -> None:
        self.thresholds: Any
        if isinstance(thresholds, str):
            if thresholds not in ("linspace", "quantiles"):
                raise ConfigurationError("thresholds must be a list, an array, 'linspace' or 'quantiles'")
            if int(n_bins) < 2:
                raise ConfigurationError("n_bins must be at least 2")
            self.n_bins = int(n_bins)
            self.thresholds = thresholds
        else:
            array = np.asarray(thresholds)
            if columnwise and array.ndim != 2:
                raise ConfigurationError("columnwise=True needs a 2-D thresholds array (n_features, n_bins - 1)")
            self.n_bins = array.shape[-1] + 1
            self.thresholds = array
        self.columnwise = columnwise

    def _levels(self, values: np.ndarray) -> np.ndarray:
        if self.thresholds == "linspace":
            return np.linspace(values.min(), values.max(), self.n_bins + 1)[1:-1]
        steps = np.arange(1, self.n_bins) / self.n_bins
        return np.quantile(values, steps, method="midpoint")

    def fit(self, X: Any, y: Any = None) -> MultiThresholdEncoder:
        """Compute the thresholds from ``X`` (2-D) when they were given as a rule; keep them otherwise."""
        if not isinstance(self.thresholds, str):
            return self
        X_np = _finite(to_numpy(X)[0], "MultiThresholdEncoder.fit")
        if self.columnwise:
            if X_np.ndim != 2:
                raise InvalidInputError("MultiThresholdEncoder.fit with columnwise=True needs 2-D input")
            self.thresholds = np.stack([self._levels(X_np[:, j]) for j in range(X_np.shape[1])]).astype(np.float32)
        else:
            self.thresholds = self._levels(X_np)
        return self

    def transform(self, X: Any) -> Any:
        """uint8 0/1 array, the last axis ``n_bins - 1`` times longer."""
        if isinstance(self.thresholds, str):
            raise InvalidInputError(f"MultiThresholdEncoder: with thresholds={self.thresholds!r}, call fit first")
        X_np, was_tensor = to_numpy(X)
        _finite(X_np, "MultiThresholdEncoder")
        levels = self.thresholds
        if levels.ndim == 2 and X_np.shape[-1:] != levels.shape[:1]:
            raise InvalidInputError(f"MultiThresholdEncoder: {levels.shape[0]} features fitted, got {X_np.shape}")
        per_level = [X_np > (levels[:, k] if levels.ndim == 2 else levels[k]) for k in range(levels.shape[-1])]
        return like_input(np.concatenate(per_level, axis=-1).astype(np.uint8), was_tensor)


class SeparatedBitPlanEncoder(BaseTransformer):
    """Real values as ``precision`` bit planes per sign, for projecting real data with a binary OPU.

    Each row of (n, f) input is scaled by the largest magnitude of its sign over the whole input, quantised to
    ``precision`` bits and cut into bit planes, most significant first: the output is (n * precision, f) for one
    sign, or (2 * n * precision, f) with the positive side's planes first, then the negative side's. The scale is
    kept for :meth:`get_params`, which :class:`SeparatedBitPlanDecoder` takes. Integer input is scaled by a
    power of two so that its quantisation is a plain shift (signed integer input always has two sides).

    Args:
        precision: bits per sign, 1 to 8.
    """

    def __init__(self, precision: int = 6, **kwargs: Any) -> None:
        if "n_bits" in kwargs or "starting_bit" in kwargs:
            raise ConfigurationError("SeparatedBitPlanEncoder takes precision (bits per sign), not n_bits")
        if kwargs:
            raise ConfigurationError(f"unknown arguments {sorted(kwargs)}")
        if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) or not 0 < precision <= 8:
            raise ConfigurationError(f"precision must be an integer from 1 to 8, got {precision!r}")
        self.precision = int(precision)
        self.magnitude: tuple[float | None, float | None] = (None, None)

    def _integer_magnitude(self, largest: float) -> float:
        # a power of two times (2^p - 1): quantising is then an exact shift of the integers
        if largest < 0:
            return 0.0
        shift = self.precision - np.ceil(np.log2(largest + 1))
        return float((2**self.precision - 1) * 0.5**shift)

    def _planes(self, unit: np.ndarray) -> np.ndarray:
        quantised = (unit * (2**self.precision - 1) + 0.5).astype(np.uint8)
        bits = np.unpackbits(quantised[:, None], axis=1, bitorder="big")[:, -self.precision :]
        return bits.reshape(-1, unit.shape[1])

    def transform(self, X: Any) -> Any:
        """uint8 0/1 bit planes of 2-D ``X`` (see the class docstring for the layout)."""
        X_np, was_tensor = to_numpy(X)
        _finite(X_np, "SeparatedBitPlanEncoder")
        if X_np.ndim != 2:
            raise InvalidInputError(
                f"SeparatedBitPlanEncoder needs 2-D input (n_samples, n_features), got {X_np.shape}"
            )
        if np.issubdtype(X_np.dtype, np.signedinteger):
            high = self._integer_magnitude(float(X_np.max()))
            low = self._integer_magnitude(float(-X_np.min()))
        elif np.issubdtype(X_np.dtype, np.integer) or X_np.dtype == np.bool_:
            high, low = self._integer_magnitude(float(X_np.max())), 0.0
        else:
            high, low = max(float(X_np.max()), 0.0), max(float(-X_np.min()), 0.0)
        scale = (1 - 0.5**self.precision) * 2
        self.magnitude = (high / scale, low / scale)
        X_f = X_np.astype(np.float64)
        positive = self._planes(np.clip(X_f / (high or 1.0), 0, 1))
        negative = self._planes(np.clip(-X_f / (low or 1.0), 0, 1))
        if low <= 0:
            return like_input(positive, was_tensor)
        if high <= 0:
            return like_input(negative, was_tensor)
        return like_input(np.concatenate((positive, negative), axis=0), was_tensor)

    def get_params(self) -> dict[str, Any]:
        """What :class:`SeparatedBitPlanDecoder` needs to undo the last :meth:`transform`."""
        return {"precision": self.precision, "magnitude_p": self.magnitude[0], "magnitude_n": self.magnitude[1]}


class SeparatedBitPlanDecoder(BaseTransformer):
    """Recombines the projections of :class:`SeparatedBitPlanEncoder`'s bit planes into projections of the reals.

    Plane k is weighted by ``decoding_decay ** k`` (most significant first), each side by its magnitude, and the
    negative side is subtracted; (sides * n * precision, m) becomes (n, m) float32.

    Args:
        precision, magnitude_p, magnitude_n: from the encoder's ``get_params()`` (lightonml passes them itself
            when the decoder is given as a class).
        decoding_decay: the weight ratio between successive planes (0.5 for binary planes).
    """

    def __init__(
        self, precision: int, magnitude_p: float = 1, magnitude_n: float = 0, decoding_decay: float = 0.5
    ) -> None:
        if magnitude_p is None or magnitude_n is None:
            raise ConfigurationError("the encoder has not encoded anything yet: no magnitudes to decode with")
        self.precision = int(precision)
        self.magnitude_p = float(magnitude_p)
        self.magnitude_n = float(magnitude_n)
        self.decoding_decay = float(decoding_decay)

    def transform(self, X: Any) -> Any:
        """float32 (n, m) from (sides * n * precision, m)."""
        X_np, was_tensor = to_numpy(X)
        _finite(X_np, "SeparatedBitPlanDecoder")
        if X_np.ndim != 2:
            raise InvalidInputError(f"SeparatedBitPlanDecoder needs 2-D input, got {X_np.shape}")
        sides = 2 if (self.magnitude_n > 0 and self.magnitude_p > 0) else 1
        if X_np.shape[0] % (sides * self.precision):
            raise InvalidInputError(
                f"SeparatedBitPlanDecoder: {X_np.shape[0]} rows is not a multiple of {sides} x {self.precision}"
            )
        n = X_np.shape[0] // (sides * self.precision)
        planes = X_np.reshape(sides, n, self.precision, X_np.shape[1]).astype(np.float32)
        weights = (self.decoding_decay ** np.arange(self.precision)).astype(np.float32)
        combined = np.einsum("snkm,k->snm", planes, weights)
        if self.magnitude_n <= 0:
            out = combined[0] * np.float32(self.magnitude_p)
        elif self.magnitude_p <= 0:
            out = -combined[0] * np.float32(self.magnitude_n)
        else:
            out = combined[0] * np.float32(self.magnitude_p) - combined[1] * np.float32(self.magnitude_n)
        return like_input(out.astype(np.float32), was_tensor)


def _two_d(X: np.ndarray, who: str) -> np.ndarray:
    if X.ndim != 2:
        raise InvalidInputError(f"{who} needs 2-D input (n_samples, n_features), got shape {X.shape}")
    return X


def _float32_bits(X: Any, who: str) -> tuple[np.ndarray, bool]:
    """The 32 bits of each float32 value, sign first then exponent then mantissa: (n, f, 32) uint8."""
    X_np, was_tensor = to_numpy(X)
    _two_d(_finite(X_np, who), who)
    if not np.issubdtype(X_np.dtype, np.floating):
        raise InvalidInputError(f"{who} encodes floating-point input, got dtype {X_np.dtype}")
    big_endian = X_np.astype(">f4")[:, :, None].view(np.uint8)
    return np.unpackbits(big_endian, axis=2), was_tensor


class _Float32Bits(BaseTransformer):
    """Which bits of a float32 the Float32 encoders keep: the sign, the top ``exp_bits`` of the exponent and the top
    ``mantissa_bits`` of the mantissa, in the number's order."""

    def __init__(self, sign_bit: bool = True, exp_bits: int = 8, mantissa_bits: int = 23) -> None:
        if not 0 <= exp_bits <= 8:
            raise ConfigurationError(f"exp_bits must be within 0..8, got {exp_bits!r}")
        if not 0 <= mantissa_bits <= 23:
            raise ConfigurationError(f"mantissa_bits must be within 0..23, got {mantissa_bits!r}")
        self.sign_bit = bool(sign_bit)
        self.exp_bits = int(exp_bits)
        self.mantissa_bits = int(mantissa_bits)
        self.n_bits = int(self.sign_bit) + self.exp_bits + self.mantissa_bits
        if self.n_bits == 0:
            raise ConfigurationError("a Float32 encoder must keep at least one bit")
        kept = [0] if self.sign_bit else []
        self.indices = kept + list(range(1, 1 + self.exp_bits)) + list(range(9, 9 + self.mantissa_bits))


class Float32Encoder(_Float32Bits):
    """Floats as separated bit planes of their float32 bits: (n, f) -> (n * n_bits, f), each sample's planes
    together, in the number's bit order (sign, exponent, mantissa). Other float dtypes are converted to float32.

    Args:
        sign_bit: keep the sign bit.
        exp_bits: exponent bits kept (most significant first), 0 to 8.
        mantissa_bits: mantissa bits kept (most significant first), 0 to 23.
    """

    def transform(self, X: Any) -> Any:
        """uint8 0/1 planes (n * n_bits, f) of 2-D float ``X``."""
        bits, was_tensor = _float32_bits(X, "Float32Encoder")
        n, f = bits.shape[:2]
        planes = bits.transpose(0, 2, 1)[:, self.indices, :].reshape(n * self.n_bits, f)
        return like_input(np.ascontiguousarray(planes), was_tensor)


class ConcatenatedFloat32Encoder(_Float32Bits):
    """Floats as their kept float32 bits side by side: (n, f) -> (n, f * n_bits), each feature's bits together.
    Arguments as :class:`Float32Encoder`'s."""

    def transform(self, X: Any) -> Any:
        """uint8 0/1 (n, f * n_bits) of 2-D float ``X``."""
        bits, was_tensor = _float32_bits(X, "ConcatenatedFloat32Encoder")
        n, f = bits.shape[:2]
        return like_input(np.ascontiguousarray(bits[:, :, self.indices].reshape(n, f * self.n_bits)), was_tensor)


class ConcatenatedBitPlanEncoder(BaseTransformer):
    """Unsigned integers as ``n_bits`` bits side by side: (n, f) -> (n, f * n_bits), each feature's bits together.

    Bits are read as lightonml reads them: the value's bytes least significant first, each byte most significant
    bit first, skipping the first ``starting_bit``. For uint8 that is bit 7 down to bit 0.

    Args:
        n_bits: bits kept per value (>= 1).
        starting_bit: bits skipped first (>= 0); ``starting_bit + n_bits`` must not exceed the dtype's width.
    """

    def __init__(self, n_bits: int = 8, starting_bit: int = 0) -> None:
        if n_bits <= 0:
            raise ConfigurationError(f"n_bits must be a positive integer, got {n_bits!r}")
        if starting_bit < 0:
            raise ConfigurationError(f"starting_bit must be 0 or positive, got {starting_bit!r}")
        self.n_bits = int(n_bits)
        self.starting_bit = int(starting_bit)

    def transform(self, X: Any) -> Any:
        """uint8 0/1 (n, f * n_bits) of 2-D unsigned integer ``X``."""
        X_np, was_tensor = to_numpy(X)
        _two_d(X_np, "ConcatenatedBitPlanEncoder")
        if not (np.issubdtype(X_np.dtype, np.unsignedinteger) or X_np.dtype == np.bool_):
            raise InvalidInputError(f"ConcatenatedBitPlanEncoder encodes unsigned integers, got dtype {X_np.dtype}")
        width = X_np.dtype.itemsize * 8
        if self.starting_bit + self.n_bits > width:
            raise InvalidInputError(
                f"starting_bit + n_bits = {self.starting_bit + self.n_bits} is more than the {width} bits of "
                f"{X_np.dtype}"
            )
        little_endian = X_np.astype(X_np.dtype.newbyteorder("<"))[:, :, None].view(np.uint8)
        bits = np.unpackbits(little_endian, axis=2)[:, :, self.starting_bit : self.starting_bit + self.n_bits]
        n, f = X_np.shape
        return like_input(np.ascontiguousarray(bits.reshape(n, f * self.n_bits)), was_tensor)


class ConcatenatingBitPlanDecoder(BaseTransformer):
    """lightonml's decoder for bit planes stacked as rows: (n * n_bits, m) -> (n, n_bits * m) float32, plane k
    weighted by ``decoding_decay ** k``. As in lightonml, the weighted planes are laid side by side, not summed.

    Args:
        n_bits: planes per sample, as encoded.
        decoding_decay: weight ratio between successive planes.
    """

    def __init__(self, n_bits: int = 8, decoding_decay: float = 0.5) -> None:
        self.n_bits = int(n_bits)
        self.decoding_decay = float(decoding_decay)

    def transform(self, X: Any) -> Any:
        """float32 (n, n_bits * m) from (n * n_bits, m)."""
        X_np, was_tensor = to_numpy(X)
        _two_d(_finite(X_np, "ConcatenatingBitPlanDecoder"), "ConcatenatingBitPlanDecoder")
        if X_np.shape[0] % self.n_bits:
            raise InvalidInputError(f"{X_np.shape[0]} rows is not a multiple of n_bits={self.n_bits}")
        n = X_np.shape[0] // self.n_bits
        weights = (self.decoding_decay ** np.arange(self.n_bits)).reshape(1, self.n_bits, 1)
        weighted = X_np.reshape(n, self.n_bits, X_np.shape[1]) * weights
        return like_input(weighted.reshape(n, -1).astype(np.float32), was_tensor)


class SequentialBaseTwoEncoder(BaseTransformer):
    """Values as ``n_gray_levels - 1`` bits: each value is scaled to an integer level 0..L-1 (range learnt by
    ``fit``) and each bit of its base-2 writing is repeated by its weight, most significant first, so the number of
    ones is the level: (n, f) -> (n, f * (L - 1)).

    Args:
        n_gray_levels: L, a power of 2 from 2 to 256.
    """

    def __init__(self, n_gray_levels: int = 16) -> None:
        levels = n_gray_levels
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or not 2 <= levels <= 256:
            raise ConfigurationError(f"n_gray_levels must be a power of 2 from 2 to 256, got {levels!r}")
        if levels & (levels - 1):
            raise ConfigurationError(f"n_gray_levels must be a power of 2, got {levels}")
        self.n_gray_levels = int(levels)
        self.n_bits = self.n_gray_levels.bit_length() - 1
        self.offset: float | None = None
        self.scale: float | None = None

    def fit(self, X: Any, y: Any = None) -> SequentialBaseTwoEncoder:
        """Learn the range: the minimum of ``X`` maps to level 0, its maximum to L - 1."""
        X_np = _finite(to_numpy(X)[0], "SequentialBaseTwoEncoder")
        self.offset = float(X_np.min())
        self.scale = float(X_np.max()) - self.offset
        return self

    def normalize(self, X: np.ndarray) -> np.ndarray:
        """Integer levels (uint8) of ``X``, clipped to 0..L-1; a constant training set maps everything to 0."""
        if self.offset is None or self.scale is None:
            raise InvalidInputError("SequentialBaseTwoEncoder: call fit on training data before transform")
        top = self.n_gray_levels - 1
        if self.scale == 0:
            return np.zeros(X.shape, dtype=np.uint8)
        levels = np.round(top * (X - self.offset) / self.scale)
        return np.clip(levels, 0, top).astype(np.uint8)

    def transform(self, X: Any) -> Any:
        """uint8 0/1 (n, f * (L - 1)) of 2-D ``X``."""
        X_np, was_tensor = to_numpy(X)
        _two_d(_finite(X_np, "SequentialBaseTwoEncoder"), "SequentialBaseTwoEncoder")
        bits = np.unpackbits(self.normalize(X_np)[:, :, None], axis=2)[:, :, 8 - self.n_bits :]
        repeated = np.repeat(bits, 2 ** np.arange(self.n_bits)[::-1], axis=2)
        n, f = X_np.shape
        return like_input(repeated.reshape(n, f * (self.n_gray_levels - 1)), was_tensor)
