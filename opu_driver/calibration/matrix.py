"""The effective projection matrix, estimated by probing: a digital twin of ``opu.linear_transform``.

Known +-1 probe vectors (Hadamard rows or random) give the real matrix B of ``linear_transform`` by least squares,
held-out vectors its error beside the error the camera noise explains, and a layout with two reference regions
the complex field matrix whose |x M|^2 is checked against measured intensities. The derivations are in
docs/calibration.md ("Matrix"). Only the public Opu API is used; the device is left with the settings it had.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from ..errors import InvalidInputError
from ..opu import PROJECTION_SCHEMES, Opu, Roi
from ..validation import check_bool, check_choice, check_int, is_int
from ._checks import check_components, check_count, check_seed, correlation
from ._probes import TwoReferenceLayout, hadamard_order, hadamard_rows, sample_pairs
from .exposure import ExposureResult
from .reference import ReferenceResult
from .registry import register_routine
from .result import CalibrationResult, region, stored, summarised, summarised_property

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["MatrixResult", "estimate_matrix", "PROBES"]

_log = logging.getLogger(__name__)

PROBES = ("hadamard", "random")
_NONLINEAR_FRAMES_PER_PROBE = 6
_REFERENCE_FRAMES = 64  # frames of each of dark, A, B and A + B for the two-reference check
_BATCH_PROBES = 256  # probes per device request (one progress step)
_SAMPLE_POINTS = 20_000  # points kept for scatter plots
_ZEROED_WARNING = 1e-3  # share of zeroed outputs above which saturation is worth a warning
_MIN_REFERENCE = 0.1  # a reference weaker than this share of the median is too weak to divide by
_MIN_SIN = 0.25  # |sin D| below this amplifies the second quadrature's noise more than 4x
_MAX_FIELD_ERROR = 0.1  # largest relative error of the field estimate the reference measurements may cause


def _has_field_estimate(result: MatrixResult) -> bool:
    """Whether the result holds the nonlinear check's field matrix and its mask (kept only together)."""
    return result.field_matrix is not None and result.field_mask is not None


@dataclass(frozen=True, kw_only=True)
class MatrixResult(CalibrationResult):
    """The estimated effective matrix, what it cost, how well it predicts, and the nonlinear check.

    Attributes:
        matrix: B (n_features, n_components) float32 in the units of ``opu.linear_transform`` (unit-variance
            entries): ``linear_transform(E) ~ E @ matrix``. Columns of unusable outputs are 0.
        mask: outputs whose estimate is usable: those nonzero in at least one linear probe's projection. The
            linear mode returns exactly 0 for the outputs its reference mask drops, so this is that mask less
            any output zeroed in every probe (its frames saturated each time); ``matrix`` is 0 outside it.
        n_frames: DMD frames the call sent, all stages together (``opu.counters.frames_sent`` difference);
            ``n_frames_reference`` of them measured the linear mode's reference (0 when it was already known),
            ``n_frames_probes`` the probes, ``n_frames_noise`` the repeated probes, ``n_frames_holdout`` the
            held-out vectors and ``n_frames_nonlinear`` the nonlinear check. The linear stages count the light
            pilots the linear mode puts among their frames (``opu.linear_mode.call_frames``).
        saturated_frames: frames of the linear stages that saturated some pixel; the linear mode zeroes the
            outputs they produce, which biases the estimate of those outputs: lower the exposure if not 0.
        relative_error, holdout_correlation: held-out prediction error (RMS residual / RMS measured) and
            correlation, over the usable outputs.
        expected_relative_error: the relative error the measured camera noise alone explains.
        output_noise_variance: the noise variance of one output of ``linear_transform`` (its units squared,
            mean over the usable outputs), from the repeated probes; each entry of ``matrix`` carries about
            this divided by the number of probes (Hadamard), so ``matrix`` correlates with the true matrix at
            about 1 / sqrt(1 + output_noise_variance / n_probes).
        field_matrix: the complex field matrix M' (n_features, n_components) complex64 in sqrt(DN), up to a
            per-output phase and conjugation (None without the nonlinear check); zero where ``field_mask`` is
            False. ``|x @ field_matrix|^2`` predicts the dark-subtracted intensity of a binary frame x.
        nonlinear_correlation, nonlinear_relative_error: measured vs predicted intensities of held-out binary
            frames (None without the check).
        holdout_measured/predicted, nonlinear_measured/predicted: at most 20,000 sample points for plots.
    """

    routine: ClassVar[str] = "matrix"

    # declared in the order of the summary, then of the arrays (keyword-only, so that order is free); errors and
    # correlations are None in the summary when not finite
    n_features: int = summarised()
    n_components: int = summarised()
    probes: str = summarised()
    scheme: str = summarised()
    n_probes: int = summarised()
    n_holdout: int = summarised()
    roi: Roi = region()
    matrix: npt.NDArray[np.float32] = stored(np.float32)
    mask: npt.NDArray[np.bool_] = stored(bool)
    n_frames: int = summarised()
    n_frames_reference: int = summarised()
    n_frames_probes: int = summarised()
    n_frames_noise: int = summarised()
    n_frames_holdout: int = summarised()
    n_frames_nonlinear: int = summarised()
    saturated_frames: int = summarised()

    @summarised_property(digits=4, finite=True)
    def usable_fraction(self) -> float:
        return float(self.mask.mean())

    relative_error: float = summarised(digits=5, finite=True)
    expected_relative_error: float = summarised(digits=5, finite=True)
    output_noise_variance: float = summarised(digits=6, finite=True)
    holdout_correlation: float = summarised(digits=5, finite=True)
    holdout_measured: npt.NDArray[np.float32] = stored(np.float32)
    holdout_predicted: npt.NDArray[np.float32] = stored(np.float32)
    nonlinear_correlation: float | None = summarised(digits=5, finite=True, default=None)
    nonlinear_relative_error: float | None = summarised(digits=5, finite=True, default=None)

    @summarised_property(digits=4)
    def nonlinear_usable_fraction(self) -> float | None:
        """Share of the outputs the field matrix covers (None without the nonlinear check)."""
        return None if self.field_mask is None else float(self.field_mask.mean())

    nonlinear_measured: npt.NDArray[np.float32] = stored(np.float32, default_factory=lambda: np.zeros(0, np.float32))
    nonlinear_predicted: npt.NDArray[np.float32] = stored(np.float32, default_factory=lambda: np.zeros(0, np.float32))
    field_matrix: npt.NDArray[np.complex64] | None = stored(np.complex64, when=_has_field_estimate, default=None)
    field_mask: npt.NDArray[np.bool_] | None = stored(bool, when=_has_field_estimate, default=None)

    def predict(self, E: npt.ArrayLike) -> np.ndarray:
        """The twin of ``opu.linear_transform(E, n_components)``: E @ matrix, float32."""
        return (np.asarray(E, dtype=np.float32) @ self.matrix).astype(np.float32)

    def predict_intensity(self, X: npt.ArrayLike) -> np.ndarray:
        """Dark-subtracted intensities (DN) of binary frames X of the split layout's signal: |X @ M'|^2."""
        if self.field_matrix is None:
            raise InvalidInputError("no field matrix: run estimate_matrix with nonlinear_check=True")
        fields = np.asarray(X, dtype=np.complex64) @ self.field_matrix
        return (fields.real**2 + fields.imag**2).astype(np.float32)


def _validate(
    opu, n_features, n_components, probes, scheme, n_probes, n_holdout, n_repeats, nonlinear_check, seed, progress
) -> int:
    """Check every argument (nothing is sent); return the number of probes."""
    check_int(n_features, "n_features", low=1)
    check_components(opu, n_components)
    check_choice(probes, "probes", PROBES)
    check_choice(scheme, "scheme", PROJECTION_SCHEMES)
    check_count(n_holdout, "n_holdout", 1)
    check_count(n_repeats, "n_repeats", 1)
    check_bool(nonlinear_check, "nonlinear_check")
    check_bool(progress, "progress")
    check_seed(seed)
    # The layouts refuse a signal that does not fit beside the reference region(s).
    layout = opu.linear_mode.layout(int(n_features))
    if nonlinear_check:
        TwoReferenceLayout.beside(layout)
    if n_features + 2 > opu.max_features:
        raise InvalidInputError(f"{n_features} features exceed the {opu.max_features - 2} a probe table can hold")
    order = hadamard_order(int(n_features))
    if probes == "hadamard":
        if n_probes is not None and (not is_int(n_probes) or n_probes != order):
            raise InvalidInputError(
                f"Hadamard probes of {n_features} features are the {order} rows of the order-{order} matrix; "
                f"leave n_probes=None (got {n_probes!r})"
            )
        return order
    if n_probes is None:
        return 2 * int(n_features)
    if not is_int(n_probes, n_features):
        raise InvalidInputError(
            f"random probes need n_probes >= n_features = {n_features} (least squares), got {n_probes!r}"
        )
    return check_count(n_probes, "n_probes", int(n_features))


def _relative_error(measured: np.ndarray, predicted: np.ndarray) -> float:
    scale = float(np.sqrt(np.mean(measured.astype(np.float64) ** 2))) if measured.size else 0.0
    if scale == 0:
        return float("nan")
    return float(np.sqrt(np.mean((measured.astype(np.float64) - predicted) ** 2))) / scale


def estimate_matrix(
    opu: Opu,
    n_features: int,
    n_components: int,
    *,
    probes: str = "hadamard",
    scheme: str = "four_frame",
    n_probes: int | None = None,
    n_holdout: int = 32,
    n_repeats: int = 16,
    nonlinear_check: bool = True,
    seed: int | None = None,
    progress: bool = False,
) -> MatrixResult:
    """Estimate the matrix B of ``opu.linear_transform`` by probing, its prediction error, and the |xM|^2 check.

    Args:
        opu: an open Opu.
        n_features, n_components: the projection's sizes.
        probes: "hadamard" (n = next power of two >= n_features probes, exact inverse) or "random"
            (``n_probes`` random +-1 probes, least squares; default 2 n_features).
        scheme: the linear mode's scheme ("four_frame" or "two_frame") the twin is for.
        n_holdout: held-out random +-1 vectors for the prediction error (and binary frames for the check).
        n_repeats: probes measured twice to measure the noise (the expected error).
        nonlinear_check: also estimate the complex field matrix with two references and check |x M|^2.
        seed: seed of the probe signs and held-out vectors (None: fresh).
        progress: show a progress bar over the probe batches.

    Raises:
        InvalidInputError: bad arguments (before anything is sent), or no usable output.
    """
    n_probes = _validate(
        opu, n_features, n_components, probes, scheme, n_probes, n_holdout, n_repeats, nonlinear_check, seed, progress
    )
    n_features, n_components = int(n_features), int(n_components)
    n_repeats = min(int(n_repeats), n_probes)
    rng = np.random.default_rng(seed)
    saturated_before = opu.counters.saturated_frames
    zeroed_before = opu.linear_mode.saturated_outputs
    start = opu.counters.frames_sent

    order = hadamard_order(n_features)
    if probes == "hadamard":
        signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=n_features)
        rows = rng.permutation(order)  # any order of the rows; shuffled so slow drift does not follow the rows

        def probe_block(lo: int, hi: int) -> np.ndarray:
            return hadamard_rows(rows[lo:hi], n_features, signs)
    else:
        random_probes = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_probes, n_features))

        def probe_block(lo: int, hi: int) -> np.ndarray:
            return random_probes[lo:hi]

    batches = [(lo, min(n_probes, lo + _BATCH_PROBES)) for lo in range(0, n_probes, _BATCH_PROBES)]
    nonlinear_batches = (
        [(lo, min(order, lo + _BATCH_PROBES)) for lo in range(0, order, _BATCH_PROBES)] if nonlinear_check else []
    )
    bar = tqdm(total=len(batches) + len(nonlinear_batches), desc="matrix", unit="batch", disable=not progress)
    try:
        # -- linear probes: accumulate P^T Y (and P^T P for random probes) -----------------------------
        pty = np.zeros((n_features, n_components), dtype=np.float64)
        ptp = np.zeros((n_features, n_features), dtype=np.float64) if probes == "random" else None
        nonzero = np.zeros(n_components, dtype=bool)
        first_measurement = None
        # the reference first (a no-op when it is known), so each stage below counts its own frames, pilots included
        opu.linear_mode.calibration(n_features, n_components)
        reference_end = opu.counters.frames_sent
        for lo, hi in batches:
            P = probe_block(lo, hi)
            Y = opu.linear_transform(P, n_components, scheme=scheme)
            if first_measurement is None:
                first_measurement = Y[:n_repeats].astype(np.float64)
            nonzero |= (Y != 0).any(axis=0)
            pty += P.T.astype(np.float64) @ Y
            if ptp is not None:
                ptp += P.T.astype(np.float64) @ P
            bar.update(1)
        probes_end = opu.counters.frames_sent
        mask = nonzero
        if not mask.any():
            raise InvalidInputError("no output gave a signal: check the laser, shutter and exposure")
        matrix: npt.NDArray[np.floating]
        if ptp is None:
            matrix = pty / order
            gram = None
        else:
            matrix = np.linalg.solve(ptp, pty)
            gram = ptp
        matrix[:, ~mask] = 0.0

        # -- noise: the first probes again -----------------------------------------------------------
        again = opu.linear_transform(probe_block(0, n_repeats), n_components, scheme=scheme).astype(np.float64)
        noise_end = opu.counters.frames_sent
        assert first_measurement is not None  # set by the first batch of the loop above
        noise_var = ((again - first_measurement)[:, mask] ** 2).mean(axis=0) / 2  # per output

        # -- held-out +-1 vectors (the probes' light budget, so the repeats' noise applies) ------------
        E_h = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n_holdout, n_features))
        measured = opu.linear_transform(E_h, n_components, scheme=scheme).astype(np.float64)
        holdout_end = opu.counters.frames_sent
        saturated_frames = opu.counters.saturated_frames - saturated_before
        predicted = E_h.astype(np.float64) @ matrix
        m_meas, m_pred = measured[:, mask], predicted[:, mask]
        relative_error = _relative_error(m_meas, m_pred)
        holdout_correlation = correlation(m_meas, m_pred)
        # A prediction e @ B carries s^2 e^T (P^T P)^-1 e of the probes' noise, the measurement s^2.
        if gram is None:
            leverage = n_features / order  # e^T e / n for +-1 vectors
        else:
            leverage = float(np.mean(np.sum(E_h * np.linalg.solve(gram, E_h.T.astype(np.float64)).T, axis=1)))
        rms_measured = float(np.sqrt(np.mean(m_meas**2)))
        expected_relative_error = (
            float(np.sqrt(noise_var.mean() * (1 + leverage))) / rms_measured if rms_measured > 0 else float("nan")
        )
        usable = np.flatnonzero(mask)
        i, j = sample_pairs(n_holdout, usable, _SAMPLE_POINTS, rng)
        holdout_measured = measured[i, j].astype(np.float32)
        holdout_predicted = predicted[i, j].astype(np.float32)
        zeroed = opu.linear_mode.saturated_outputs - zeroed_before
        n_outputs = (n_probes + n_repeats + n_holdout) * n_components
        if zeroed:
            # Exponential speckle makes a rare saturated pixel normal; many of them bias the estimate.
            level = logging.WARNING if zeroed > _ZEROED_WARNING * n_outputs else logging.INFO
            _log.log(
                level,
                "%d probe frames saturated; %d of %d projected outputs were zeroed by the linear mode "
                "and bias the estimate slightly: lower the exposure, gain or laser power if this matters",
                saturated_frames,
                zeroed,
                n_outputs,
            )

        # -- nonlinear |x M|^2 check ------------------------------------------------------------------
        nonlinear = None
        if nonlinear_check:
            nonlinear = _nonlinear_check(opu, n_features, n_components, n_holdout, rng, nonlinear_batches, bar)
        end = opu.counters.frames_sent
    finally:
        bar.close()

    result = MatrixResult(
        n_features=n_features,
        n_components=n_components,
        probes=probes,
        scheme=scheme,
        n_probes=n_probes,
        n_holdout=int(n_holdout),
        roi=opu.roi_for(n_components),
        matrix=matrix.astype(np.float32),
        mask=mask,
        n_frames=end - start,
        n_frames_reference=reference_end - start,
        n_frames_probes=probes_end - reference_end,
        n_frames_noise=noise_end - probes_end,
        n_frames_holdout=holdout_end - noise_end,
        n_frames_nonlinear=end - holdout_end,
        saturated_frames=int(saturated_frames),
        relative_error=relative_error,
        expected_relative_error=expected_relative_error,
        output_noise_variance=float(noise_var.mean()),
        holdout_correlation=holdout_correlation,
        holdout_measured=holdout_measured,
        holdout_predicted=holdout_predicted,
        **(nonlinear or {}),
    )
    _log.info("matrix: %s", result.summary())
    return result


def _nonlinear_check(
    opu: Opu,
    n_features: int,
    n_components: int,
    n_holdout: int,
    rng: np.random.Generator,
    batches: list[tuple[int, int]],
    bar,
) -> dict:
    """Complex field matrix from two references and Hadamard probes; held-out binary frames compared."""
    layout = TwoReferenceLayout.beside(opu.linear_mode.layout(n_features))
    a_col, b_col = layout.reference_features
    width = layout.n_table_features
    full_scale = opu.full_scale_dn
    order = hadamard_order(n_features)
    signs = rng.choice(np.array([-1, 1], dtype=np.int8), size=n_features)
    rows = rng.permutation(order)

    # dark, A, B and A + B, _REFERENCE_FRAMES each
    n = _REFERENCE_FRAMES
    frames = np.zeros((4 * n, width), dtype=np.uint8)
    frames[n : 2 * n, a_col] = 1
    frames[2 * n : 3 * n, b_col] = 1
    frames[3 * n :, [a_col, b_col]] = 1
    raw = opu.acquire(frames, layout, n_components)
    saturated = (raw >= full_scale).any(axis=0)
    values = raw.astype(np.float64).reshape(4, n, n_components)
    means = values.mean(axis=1)
    # variance of each mean: temporal noise over n frames, plus the rounding (1/12 DN^2, which averaging does not
    # remove when the frames are identical, as without noise); the cross term adds the four
    frame_var = values.var(axis=1) / n + 1 / 12
    cross_sd = np.sqrt(frame_var.sum(axis=0))
    dark = means[0]
    ref_a, ref_b = means[1] - dark, means[2] - dark
    cross = means[3] - means[1] - means[2] + dark  # 2 |a| |b| cos D

    # six frames per probe: p+, p-, p+ + A, p- + A, p+ + B, p- + B
    sum_a = np.zeros((n_features, n_components), dtype=np.float64)
    sum_b = np.zeros((n_features, n_components), dtype=np.float64)
    for lo, hi in batches:
        P = hadamard_rows(rows[lo:hi], n_features, signs)
        plus, minus = (P > 0).astype(np.uint8), (P < 0).astype(np.uint8)
        block = np.zeros((hi - lo, _NONLINEAR_FRAMES_PER_PROBE, width), dtype=np.uint8)
        block[:, 0::2, :n_features] = plus[:, None, :]
        block[:, 1::2, :n_features] = minus[:, None, :]
        block[:, 2:4, a_col] = 1
        block[:, 4:6, b_col] = 1
        raw = opu.acquire(block.reshape(-1, width), layout, n_components)
        saturated |= (raw >= full_scale).any(axis=0)
        v = raw.astype(np.float64).reshape(hi - lo, _NONLINEAR_FRAMES_PER_PROBE, n_components)
        d_a = (v[:, 2] - v[:, 0]) - (v[:, 3] - v[:, 1])  # 2 |a| Re[t]
        d_b = (v[:, 4] - v[:, 0]) - (v[:, 5] - v[:, 1])  # 2 |b| Re[t exp(-i D)]
        sum_a += P.T.astype(np.float64) @ d_a
        sum_b += P.T.astype(np.float64) @ d_b
        bar.update(1)

    # held-out binary frames, references off
    X = (rng.random((n_holdout, n_features)) < 0.5).astype(np.uint8)
    held = np.zeros((n_holdout, width), dtype=np.uint8)
    held[:, :n_features] = X
    raw = opu.acquire(held, layout, n_components)
    held_saturated = raw >= full_scale
    measured = raw.astype(np.float64) - dark

    positive = (ref_a > 0) & (ref_b > 0)
    floor_a = _MIN_REFERENCE * np.median(ref_a[positive]) if positive.any() else np.inf
    floor_b = _MIN_REFERENCE * np.median(ref_b[positive]) if positive.any() else np.inf
    field_mask = positive & (ref_a >= floor_a) & (ref_b >= floor_b) & ~saturated
    amp_a = np.sqrt(np.where(field_mask, ref_a, 1.0))
    amp_b = np.sqrt(np.where(field_mask, ref_b, 1.0))
    cos_d = np.clip(cross / (2 * amp_a * amp_b), -1.0, 1.0)
    sin_d = np.sqrt(1.0 - cos_d**2)
    # Im = (u_B - u_A cos D) / sin D: an error e of cos D moves it by about e (1 / sin D + |cos D| / sin^2 D)
    # relative to the field (the second term through sin D = sqrt(1 - cos^2 D)); keep the pixels where the
    # cross term's error keeps that small.
    cos_error = cross_sd / (2 * amp_a * amp_b)
    safe_sin = np.maximum(sin_d, 1e-6)
    phase_error = cos_error * (1 / safe_sin + np.abs(cos_d) / safe_sin**2)
    # and errors of |a|^2, |b|^2 scale the two quadratures by half their relative error
    amplitude_error = np.sqrt(frame_var[0] + frame_var[1]) / (2 * amp_a**2) + np.sqrt(frame_var[0] + frame_var[2]) / (
        2 * amp_b**2
    )
    field_mask &= (sin_d >= _MIN_SIN) & (phase_error + amplitude_error <= _MAX_FIELD_ERROR)
    real = sum_a / order / (2 * amp_a)  # Re[t] per feature, sqrt(DN)
    quad_b = sum_b / order / (2 * amp_b)
    imag = (quad_b - real * cos_d) / np.where(field_mask, sin_d, 1.0)
    field_matrix = (real + 1j * imag).astype(np.complex64)
    field_matrix[:, ~field_mask] = 0

    fields = X.astype(np.float64) @ field_matrix.astype(np.complex128)
    predicted = fields.real**2 + fields.imag**2
    keep = field_mask[None, :] & ~held_saturated
    m_meas, m_pred = measured[keep], predicted[keep]
    if m_meas.size == 0:
        _log.warning("the nonlinear check found no usable output (weak or saturated references)")
    usable = np.flatnonzero(field_mask)
    i, j = sample_pairs(n_holdout, usable, _SAMPLE_POINTS, rng)
    ok = ~held_saturated[i, j]
    return {
        "nonlinear_correlation": correlation(m_meas, m_pred),
        "nonlinear_relative_error": _relative_error(m_meas, m_pred),
        "field_matrix": field_matrix,
        "field_mask": field_mask,
        "nonlinear_measured": measured[i, j][ok].astype(np.float32),
        "nonlinear_predicted": predicted[i, j][ok].astype(np.float32),
    }


@register_routine(MatrixResult, position=70, stale_after=(ExposureResult, ReferenceResult), needs_reference=True)
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> MatrixResult:
    """The matrix step of ``calibrate``: the twin of the plan's projection, through the stored reference."""
    return estimate_matrix(opu, plan.n_features, plan.n_components, probes=plan.matrix_probes, progress=progress)
