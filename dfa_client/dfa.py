"""Direct feedback alignment (DFA) helpers: ternarised errors, one projection sliced across layers, diagnostics.

In DFA every hidden layer l learns from a fixed random projection of the output error e (batch, n_classes):
delta_l = (B_l e) * f'(a_l) replaces backprop's (W_{l+1}^T delta_{l+1}) * f'(a_l). All the B_l are slices of one
matrix B (n_classes x sum of hidden widths), so one projector call per batch serves every layer
(``FeedbackProjection``).

Errors reach an optical projector either ternarised (``ternarize``: 4 or 2 DMD frames per vector, the cheapest
and the default for optical use) or real-valued through bit planes (the projector's ``n_bits`` option: n_bits
ternary projections per vector). The digital projector (``digital://?seed=N``) projects real errors exactly and
is the reference. Feedback is seeded: ``digital://?seed=N`` gives the same B in every process; an optical B is
fixed by the device's scattering medium (and the emulator's seed).

The default threshold rule (0.3 x max|e| per vector, each code rescaled to its error and centred) was chosen by
measurement; the study is in docs/dfa.md.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from .base import Projector, check_errors
from .errors import InvalidInputError

__all__ = [
    "DEFAULT_THRESHOLD",
    "TERNARY_RULES",
    "ERROR_ENCODINGS",
    "SCALE_RULES",
    "ternarize",
    "ternary_scales",
    "FeedbackProjection",
    "alignment_angle",
]

_log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.3
"""Fraction of max|e| (per error vector) an entry needs to survive ternarisation; see the module docstring."""
TERNARY_RULES = ("max", "absolute", "stochastic")
ERROR_ENCODINGS = ("real", "ternary")
SCALE_RULES = ("classes", "width")


def ternarize(
    errors: npt.ArrayLike,
    threshold: float = DEFAULT_THRESHOLD,
    rule: str = "max",
    rng: np.random.Generator | None = None,
) -> npt.NDArray[np.int8]:
    """Ternary codes of error vectors: int8 in {-1, 0, 1}, same shape as ``errors``.

    Rules (per error vector, i.e. per row of a 2-D array):
        "max": keep sign(e_k) where |e_k| >= threshold * max_k |e_k| (0 < threshold <= 1). Scale-free, and the
            largest entry always survives, so a nonzero error never becomes a zero code.
        "absolute": keep sign(e_k) where |e_k| >= threshold (threshold > 0).
        "stochastic": keep sign(e_k) with probability |e_k| / max_k |e_k|, drawn from ``rng`` (threshold unused).
            Then max|e| times the code is an unbiased estimate of e: small entries survive in proportion to
            their size instead of vanishing. A softmax error over many classes (a language model's, per token)
            is one large entry and many small ones that carry what the model predicted; the deterministic rules
            drop them all, and the feedback loses the part that cancels across tokens only in expectation.
    Zero entries always give 0.

    Raises:
        InvalidInputError: errors with NaN/Inf or not 1-D/2-D real numbers; a threshold outside the rule's range;
            an unknown rule.
    """
    if rule not in TERNARY_RULES:
        raise InvalidInputError(f"rule={rule!r}; choose one of {TERNARY_RULES}")
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float, np.integer, np.floating))
        or not (math.isfinite(threshold) and threshold > 0)
    ):
        raise InvalidInputError(f"threshold must be a finite number > 0, got {threshold!r}")
    if rule == "max" and threshold > 1:
        raise InvalidInputError(f"the 'max' rule takes a threshold within (0, 1], got {threshold!r}")
    E, squeeze = check_errors(errors, None, np.iinfo(np.int64).max)
    magnitude = np.abs(E)
    if rule == "stochastic":
        largest = magnitude.max(axis=1, keepdims=True)
        chance = np.divide(magnitude, largest, out=np.zeros_like(magnitude), where=largest > 0)
        draws = (rng if rng is not None else np.random.default_rng()).random(E.shape)
        codes = (np.sign(E) * (draws < chance)).astype(np.int8)
        return codes[0] if squeeze else codes
    if rule == "max":
        cut = float(threshold) * magnitude.max(axis=1, keepdims=True)
    else:
        cut = np.full((E.shape[0], 1), float(threshold))
    keep = (magnitude >= cut) & (magnitude > 0)
    codes = (np.sign(E) * keep).astype(np.int8)
    return codes[0] if squeeze else codes


def ternary_scales(errors: npt.ArrayLike, codes: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Per-vector scale s minimising |e - s t|^2 for codes t: s = (t . e) / (t . t), 0 for zero codes.

    ``codes`` are ternary codes, or centred ones (t minus its mean).
    Projections are linear, so B e ~ s (B t): multiplying each projected code by its row's s restores the error's
    magnitude (a well-classified sample's small error then moves the weights little). float64 (batch,).
    """
    E = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    T = np.atleast_2d(np.asarray(codes, dtype=np.float64))
    if E.shape != T.shape:
        raise InvalidInputError(f"errors {E.shape} and codes {T.shape} differ in shape")
    count = (T * T).sum(axis=1)
    return np.divide((T * E).sum(axis=1), count, out=np.zeros(E.shape[0]), where=count > 0)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class FeedbackProjection:
    """One projector call per batch, sliced into the feedback signal of every hidden layer, scaled.

    ``feedback(errors)`` returns [B_1 e, ..., B_L e] as float32 arrays (batch, layer_sizes[l]), from one
    projection of n_components = sum(layer_sizes) outputs (a projector with more outputs is sliced from the start).

    Scaling: the projector's B has unit-variance entries, so an output of B e has variance |e|^2, whatever the
    layer. Each slice is multiplied by its scale:
        "classes" (default): 1 / sqrt(n_classes), so an output has the mean square of an error entry, the same for
            every layer width and number of classes (learning rates then carry over between networks);
        "width": 1 / sqrt(layer width), the size of backprop's W^T e at initialisation for a last layer W with
            variance-1/width entries (LeCun/Glorot), so DFA starts with backprop's step size;
        a number, or one number per layer.

    Errors: ``encoding="real"`` sends them as they are (exact on a digital projector, through the projector's
    ``n_bits`` bit planes on an optical one); ``"ternary"`` sends the codes t = ``ternarize(e, threshold, rule)``.
    Projections are linear, so two corrections cost nothing but host arithmetic:
        ``centre`` (default): a softmax error sums to zero over the classes, its code does not (the code -onehot(y)
            of a confident mistake has mean -1/n_classes). The code's mean m times B1 is a common push on every
            hidden unit for every sample, which drives tanh units into saturation early in training. The
            feedback uses B(t - m 1) = Bt - m B1, with the all-ones vector projected in the same call (one more
            vector per batch: 4 or 2 more frames on an optical projector).
        ``rescale`` (default): multiply each row by the least-squares scale of the (centred) code against e
            (``ternary_scales``), so that a well-classified sample's small error moves the weights little.

    Args:
        projector: any dfa_client projector (``dfa_client.connect(...)``).
        layer_sizes: the hidden widths, input side first.
        scale: "classes", "width", a number or one number per layer.
        encoding: "real" or "ternary".
        threshold, rule: the ternarisation rule (see ``ternarize``).
        rescale: multiply ternary projections by their row's least-squares scale; under the "stochastic" rule, by
            the row's max|e| instead (the scale that makes the estimate unbiased).
        seed: the seed of the "stochastic" rule's draws (None: fresh entropy).
        centre: remove the mean of each ternary code (through the projection of the all-ones vector).

    Raises:
        InvalidInputError: bad sizes, scales or options, or a projector with too few outputs.
    """

    def __init__(
        self,
        projector: Projector,
        layer_sizes: Sequence[int],
        scale: str | float | Sequence[float] = "classes",
        encoding: str = "real",
        threshold: float = DEFAULT_THRESHOLD,
        rule: str = "max",
        rescale: bool = True,
        centre: bool = True,
        seed: int | None = None,
    ) -> None:
        if not hasattr(projector, "project") or not hasattr(projector, "n_components"):
            raise InvalidInputError(f"projector must be a dfa_client projector, got {type(projector).__name__}")
        if isinstance(layer_sizes, (str, bytes)) or not isinstance(layer_sizes, Sequence) or not layer_sizes:
            raise InvalidInputError(f"layer_sizes must be a non-empty sequence of widths, got {layer_sizes!r}")
        self.layer_sizes = tuple(_positive_int(size, "every layer size") for size in layer_sizes)
        self.n_components = sum(self.layer_sizes)
        if projector.n_components < self.n_components:
            raise InvalidInputError(
                f"the projector has {projector.n_components} outputs; the layers need "
                f"{self.n_components} (sum of {list(self.layer_sizes)})"
            )
        if encoding not in ERROR_ENCODINGS:
            raise InvalidInputError(f"encoding={encoding!r}; choose one of {ERROR_ENCODINGS}")
        if encoding == "ternary":
            ternarize(np.ones(1), threshold, rule)  # refuse a bad rule or threshold now
        self._check_scale(scale)
        self.projector = projector
        self.scale = scale
        self.encoding = encoding
        self.threshold = float(threshold)
        self.rule = rule
        self.rescale = bool(rescale)
        self.centre = bool(centre)
        self._rng = np.random.default_rng(seed)
        self.offsets = tuple(int(x) for x in np.concatenate(([0], np.cumsum(self.layer_sizes))))
        self._scales: tuple[float, ...] | None = None
        if projector.n_features is not None:
            self._scales = self._resolve_scales(projector.n_features)

    def _check_scale(self, scale: Any) -> None:
        if isinstance(scale, str):
            if scale not in SCALE_RULES:
                raise InvalidInputError(f"scale={scale!r}; choose one of {SCALE_RULES}, a number or one per layer")
            return
        values = [scale] if not isinstance(scale, Sequence) else list(scale)
        if not isinstance(scale, Sequence) or len(values) == len(self.layer_sizes):
            for value in values:
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float, np.integer, np.floating))
                    or not (math.isfinite(value) and value > 0)
                ):
                    raise InvalidInputError(f"every scale must be a finite number > 0, got {value!r}")
            return
        raise InvalidInputError(f"{len(values)} scales for {len(self.layer_sizes)} layers")

    def _resolve_scales(self, n_classes: int) -> tuple[float, ...]:
        if self.scale == "classes":
            return (1.0 / math.sqrt(n_classes),) * len(self.layer_sizes)
        if self.scale == "width":
            return tuple(1.0 / math.sqrt(size) for size in self.layer_sizes)
        if isinstance(self.scale, Sequence):
            return tuple(float(value) for value in self.scale)
        return (float(self.scale),) * len(self.layer_sizes)

    @property
    def scales(self) -> tuple[float, ...] | None:
        """The multiplier of each layer's slice (None until the number of classes is known)."""
        return self._scales

    @property
    def frames_sent(self) -> int | None:
        """DMD frames the projector's device displayed so far (None for backends that do not count them)."""
        value = getattr(self.projector, "frames_sent", None)
        return None if value is None else int(value)

    def project(self, errors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """The scaled projection of all layers at once: float32 (batch, sum(layer_sizes)), one projector call.

        Raises:
            InvalidInputError: NaN/Inf, a wrong width or shape (before anything is sent).
        """
        # The projector's batch limit, checked from the shape before anything is copied (a broadcast view can
        # declare 10**9 rows for free).
        max_batch = getattr(self.projector, "max_batch", np.iinfo(np.int64).max)
        E, _ = check_errors(errors, self.projector.n_features, max_batch)
        if self._scales is None:
            self._scales = self._resolve_scales(E.shape[1])
        column_scale = np.repeat(np.asarray(self._scales, dtype=np.float64), self.layer_sizes)
        if self.encoding == "real":
            projected = np.asarray(self.projector.project(E), dtype=np.float64)[:, : self.n_components]
            return (projected * column_scale).astype(np.float32)
        codes = ternarize(E, self.threshold, self.rule, self._rng)
        if not self.centre:
            projected = np.asarray(self.projector.project(codes), dtype=np.float64)[:, : self.n_components]
            effective = codes.astype(np.float64)
        else:
            ones = np.ones((1, E.shape[1]), dtype=np.int8)
            if E.shape[0] < max_batch:
                both = np.asarray(self.projector.project(np.vstack([codes, ones])), dtype=np.float64)
            else:  # a full batch: the all-ones row goes in a call of its own
                both = np.vstack(
                    [
                        np.asarray(self.projector.project(codes), dtype=np.float64),
                        np.asarray(self.projector.project(ones), dtype=np.float64),
                    ]
                )
            mean = codes.mean(axis=1, keepdims=True, dtype=np.float64)
            projected = (both[:-1] - mean * both[-1])[:, : self.n_components]
            effective = codes - mean
        if self.rescale and self.rule == "stochastic":
            projected *= np.abs(E).max(axis=1, keepdims=True)
        elif self.rescale:
            projected *= ternary_scales(E, effective)[:, None]
        return (projected * column_scale).astype(np.float32)

    def split(self, projected: npt.NDArray[np.float32]) -> list[npt.NDArray[np.float32]]:
        """Slices of a (batch, sum(layer_sizes)) projection, one per layer."""
        return [projected[:, start:stop] for start, stop in zip(self.offsets[:-1], self.offsets[1:], strict=True)]

    def __call__(self, errors: npt.ArrayLike) -> list[npt.NDArray[np.float32]]:
        """[B_1 e, ..., B_L e]: float32 (batch, layer_sizes[l]) each, from one projector call."""
        return self.split(self.project(errors))

    def dense_matrix(self) -> npt.NDArray[np.float32] | None:
        """The effective feedback matrix, scaled (n_classes x sum(layer_sizes), float32), when it is known exactly.

        Known for a digital projector with real errors (e @ matrix == project(e)); None otherwise (optical B is
        hidden in the device, ternary codes are not linear in e). The PyTorch integration keeps it as a buffer.
        """
        matrix = getattr(self.projector, "matrix", None)
        if self.encoding != "real" or matrix is None:
            return None
        if self._scales is None:
            self._scales = self._resolve_scales(matrix.shape[0])
        column_scale = np.repeat(np.asarray(self._scales, dtype=np.float32), self.layer_sizes)
        return (np.asarray(matrix, dtype=np.float32)[:, : self.n_components] * column_scale).astype(np.float32)

    def __repr__(self) -> str:
        ternary = (
            f", threshold={self.threshold}, rule={self.rule!r}, rescale={self.rescale}, centre={self.centre}"
            if self.encoding == "ternary"
            else ""
        )
        return (
            f"FeedbackProjection({self.projector!r}, layer_sizes={list(self.layer_sizes)}, scale={self.scale!r}, "
            f"encoding={self.encoding!r}{ternary})"
        )


def alignment_angle(update: npt.ArrayLike, gradient: npt.ArrayLike) -> float:
    """Angle in degrees between two updates (e.g. a layer's DFA update and its backprop gradient), flattened.

    0 means the same direction, 90 unrelated (two random vectors of dimension d sit at 90 +- 57/sqrt(d) degrees),
    under 90 a descent direction for the backprop loss. NaN if either is all zeros.
    """
    a = np.asarray(update, dtype=np.float64).ravel()
    b = np.asarray(gradient, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise InvalidInputError(f"update {np.shape(update)} and gradient {np.shape(gradient)} differ in shape")
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norm == 0.0:
        return float("nan")
    cosine = float(np.clip(a @ b / norm, -1.0, 1.0))
    return math.degrees(math.acos(cosine))
