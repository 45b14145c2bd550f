"""ROI calibration: the camera region, the speckle grain size, and a selection of nearly independent outputs.

The region is the one ``opu.transform`` uses for n_components outputs (``opu.roi_for``). Random binary frames
(half the features ON) are projected; the normalised spatial autocorrelation of the speckle intensity gives the
grain; the selection keeps a sub-grid of outputs spaced so that neighbours are nearly independent, without the
hot, dead and saturated pixels.

It uses the public Opu API only (``opu.transform``, ``opu.roi_for``, ``opu.full_scale_dn``).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
import tqdm

from ..errors import AcquisitionError, InvalidInputError
from ..opu import Opu, Roi
from ..validation import check_int
from ._checks import check_components, check_count, check_features, check_seed
from .dark import DarkResult
from .exposure import ExposureResult
from .registry import register_routine
from .result import CalibrationResult, region, stored, stored_property, summarised, summarised_property

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = [
    "RoiResult",
    "measure_roi",
    "intensity_autocorrelation",
    "half_width_px",
    "stride_for",
    "autocorrelation_noise_sd",
    "neighbour_threshold",
]

_log = logging.getLogger(__name__)

NEIGHBOUR_CORRELATION = 0.05
"""Largest normalised intensity autocorrelation allowed between selected neighbours (the stride's criterion),
unless the measurement cannot resolve it: see :func:`neighbour_threshold`."""
NOISE_SIGMAS = 3.0
"""Standard errors of the autocorrelation estimate the stride's threshold keeps above 0 (see
:func:`neighbour_threshold`): a lag whose true autocorrelation is 0 reads above it with probability 0.13%."""
FALSE_ALARM = 1e-4
"""Chance that a working pixel is called dead, or hot (without a DarkResult), from which thresholds derive."""
_CHUNK_FRAMES = 8  # frames per transform call (the progress bar's step)


@dataclass(frozen=True, kw_only=True)
class RoiResult(CalibrationResult):
    """Region, speckle grain and output selection.

    Attributes:
        roi: the camera region of the n_components outputs.
        grain_px: speckle grain, the mean of grain_x_px and grain_y_px: the full width at half maximum of the
            normalised intensity autocorrelation along each axis (twice the lag where it falls to 1/2, linear
            interpolation between whole-pixel lags). A pixel-sized speckle gives 1.
        stride_px: spacing of the selection's sub-grid: the smallest lag at which the autocorrelation has fallen
            to stride_threshold along both axes.
        stride_threshold: NEIGHBOUR_CORRELATION (0.05), or 3 autocorrelation_noise_sd when that is larger
            (few frames, a coarse grain or a small region): see neighbour_threshold.
        autocorrelation_noise_sd: standard error of the autocorrelation at a lag where it is truly 0
            (autocorrelation_noise_sd()).
        autocorrelation_2d: (2L+1, 2L+1) normalised autocorrelation, index [L + dy, L + dx], 1 at the centre.
        selection: output indices (into the n_components outputs) of the sub-grid without bad pixels.
        mean_intensity_dn: mean over the frames of each output, raw DN.
        hot, dead, saturated: per-output flags (see measure_roi); hot_source says where hot came from
            ("dark": a DarkResult, "frames": detected in the speckle frames).
        dropped_hot, dropped_dead, dropped_saturated: sub-grid outputs removed for each reason (an output may
            count under several).
    """

    routine: ClassVar[str] = "roi"

    # declared in the order of the summary, then of the arrays (keyword-only, so that order is free)
    roi: Roi = region()
    grain_px: float = summarised(digits=4)
    grain_x_px: float = summarised(digits=4)
    grain_y_px: float = summarised(digits=4)
    stride_px: int = summarised()
    stride_threshold: float = summarised(digits=4)
    autocorrelation_noise_sd: float = summarised(digits=5)

    @summarised_property()
    def n_selected(self) -> int:
        return int(self.selection.size)

    n_components: int = summarised()
    n_features: int = summarised()
    n_frames: int = summarised()

    @summarised_property()
    def max_lag_px(self) -> int:
        return (self.autocorrelation_2d.shape[0] - 1) // 2

    hot_source: str = summarised()
    dropped_hot: int = summarised()
    dropped_dead: int = summarised()
    dropped_saturated: int = summarised()

    @stored_property(np.float64)
    def autocorrelation_lag_px(self) -> npt.NDArray[np.float64]:
        """The lags of :attr:`autocorrelation`: 0..max_lag_px."""
        return np.arange(self.max_lag_px + 1, dtype=np.float64)

    @stored_property(np.float64)
    def autocorrelation(self) -> npt.NDArray[np.float64]:
        """Autocorrelation versus lag 0..max_lag_px, the mean of the x and y axes (1 at lag 0)."""
        lag = self.max_lag_px
        return 0.5 * (self.autocorrelation_2d[lag, lag:] + self.autocorrelation_2d[lag:, lag])

    autocorrelation_2d: npt.NDArray[np.float64] = stored(np.float32)
    selection: npt.NDArray[np.int64] = stored(np.int64)
    mean_intensity_dn: npt.NDArray[np.float32] = stored(np.float32)
    hot: npt.NDArray[np.bool_] = field(repr=False)
    dead: npt.NDArray[np.bool_] = field(repr=False)
    saturated: npt.NDArray[np.bool_] = field(repr=False)

    def select(self, Y: npt.ArrayLike) -> np.ndarray:
        """The selected outputs of projections Y (..., n_components): Y[..., selection]."""
        Y = np.asarray(Y)
        if Y.shape[-1] != self.n_components:
            raise InvalidInputError(f"Y has {Y.shape[-1]} outputs; this selection is for {self.n_components}")
        return Y[..., self.selection]


def intensity_autocorrelation(images: npt.ArrayLike, valid: npt.ArrayLike, max_lag_px: int) -> np.ndarray:
    """Normalised spatial autocorrelation of speckle images, pooled over frames.

    Args:
        images: (n_frames, height, width) intensities.
        valid: (height, width) bool, the pixels to use (bad pixels excluded from every pair).
        max_lag_px: largest lag along each axis.

    Returns:
        (2L+1, 2L+1) array c[L + dy, L + dx] = sum over frames and valid pairs of dI(r) dI(r + d), divided by
        the number of pairs, over the same at lag 0 (so c = 1 at the centre; c(-d) = c(d)). dI is each frame's
        intensity minus that frame's spatial mean over the valid pixels: within one frame the field is one circular
        Gaussian field, so this gives the |mu(d)|^2 of fully developed speckle (why not each pixel's mean over
        frames: docs/calibration.md, "Roi").
    """
    data = np.asarray(images, dtype=np.float64)
    mask = np.asarray(valid, dtype=bool)
    n, height, width = data.shape
    lag = int(max_lag_px)
    weight = mask.astype(np.float64)
    n_valid = weight.sum()
    if n_valid == 0:
        raise AcquisitionError("no valid pixel left for the autocorrelation")
    frame_means = (data * weight).sum(axis=(1, 2)) / n_valid
    fluct = (data - frame_means[:, None, None]) * weight
    out = np.zeros((2 * lag + 1, 2 * lag + 1))
    for dy in range(lag + 1):
        for dx in range(-lag, lag + 1):
            if dy == 0 and dx < 0:
                continue
            x0, x1 = max(0, -dx), width - max(0, dx)  # r runs over x0..x1, r + d over x0 + dx..x1 + dx
            pairs = float((weight[: height - dy, x0:x1] * weight[dy:, x0 + dx : x1 + dx]).sum()) * n
            if pairs == 0:
                raise AcquisitionError(f"no valid pixel pair at lag ({dx}, {dy})")
            value = float(np.einsum("nij,nij->", fluct[:, : height - dy, x0:x1], fluct[:, dy:, x0 + dx : x1 + dx]))
            out[lag + dy, lag + dx] = out[lag - dy, lag - dx] = value / pairs
    if not out[lag, lag] > 0:
        raise AcquisitionError("the frames show no speckle (no intensity variation): is the light on?")
    return out / out[lag, lag]


def half_width_px(profile: npt.ArrayLike) -> float:
    """Full width at half maximum of a normalised autocorrelation profile c(0) = 1, c(1), ... c(L):
    twice the lag where it first falls to 1/2, interpolated linearly between whole-pixel lags.

    Raises:
        AcquisitionError: it stays above 1/2 up to the last lag (the grain is larger than the lags measured).
    """
    c = np.asarray(profile, dtype=np.float64)
    below = np.flatnonzero(c <= 0.5)
    if below.size == 0:
        raise AcquisitionError(f"the autocorrelation stays above 1/2 up to a lag of {c.size - 1} px: raise max_lag_px")
    k = int(below[0])
    return float(2.0 * ((k - 1) + (c[k - 1] - 0.5) / (c[k - 1] - c[k])))


def autocorrelation_noise_sd(autocorrelation_2d: npt.ArrayLike, n_frames_eff: float, n_pixels: int) -> float:
    """Standard error of the pooled autocorrelation estimate (:func:`intensity_autocorrelation`) at a lag where
    the true autocorrelation is 0: sqrt(A / (n_frames_eff * P)), with A the sum of c^2 over the measured lags
    (the speckle's coherence area in pixels), ``n_frames_eff`` the frames counted as independent ones and P =
    ``n_pixels`` positions (Bartlett's formula; derived in docs/calibration.md, "Roi").
    """
    c = np.asarray(autocorrelation_2d, dtype=np.float64)
    area = float((c**2).sum())
    if not (n_frames_eff > 0 and n_pixels > 0):
        return math.inf
    return math.sqrt(area / (float(n_frames_eff) * float(n_pixels)))


def neighbour_threshold(noise_sd: float) -> float:
    """The stride's threshold: NEIGHBOUR_CORRELATION (0.05), or NOISE_SIGMAS (3) standard errors of the
    autocorrelation estimate when those are larger: below that the measurement cannot tell a lag whose
    autocorrelation is 0 from one at 0.05, and the stride search would fail at random."""
    return max(NEIGHBOUR_CORRELATION, NOISE_SIGMAS * float(noise_sd))


def stride_for(autocorrelation_2d: npt.ArrayLike, threshold: float = NEIGHBOUR_CORRELATION) -> int:
    """Smallest lag s >= 1 at which the autocorrelation is <= threshold along both axes.

    This is ceil(grain) made robust: it does not flip with noise when the grain sits on an integer, and it says
    what it guarantees: neighbours correlate by at most ``threshold`` (docs/calibration.md, "Roi").
    :func:`measure_roi` passes :func:`neighbour_threshold`, which the estimate's noise can meet.

    Raises:
        AcquisitionError: the autocorrelation stays above ``threshold`` at every lag up to the last one.
    """
    c = np.asarray(autocorrelation_2d, dtype=np.float64)
    lag = (c.shape[0] - 1) // 2
    for s in range(1, lag + 1):
        if max(c[lag, lag + s], c[lag, lag - s], c[lag + s, lag], c[lag - s, lag]) <= threshold:
            return s
    raise AcquisitionError(
        f"neighbours still correlate above {threshold:.3g} at every lag up to {lag} px: use more frames "
        "(n_frames) or a larger max_lag_px"
    )


def _dead_threshold(n_eff: float, false_alarm: float) -> float:
    """Share of the median mean below which a pixel's mean over frames is called dead.

    A working pixel's mean over frames is modelled as a Gamma law with ``n_eff`` degrees of freedom, whose lower
    tail is fatter than the real one, so the threshold errs towards calling fewer pixels dead (derived in
    docs/calibration.md, "Roi").
    """
    k = max(float(n_eff), 1.0)
    x_over_theta = math.exp((math.log(false_alarm) + math.lgamma(k + 1)) / k)
    return x_over_theta / k / (1 - 1 / (9 * k)) ** 3


def _hot_threshold(false_alarm: float) -> float:
    """Multiple of the median mean that a pixel's minimum over the frames exceeds only if it is hot.

    log2(1 / false_alarm) (13.3 for 1e-4) whatever the layout (derived in docs/calibration.md, "Roi"). Hot pixels
    fainter than that are indistinguishable from bright speckle in the frames: pass a DarkResult to catch them all.
    """
    return math.log2(1.0 / false_alarm)


def measure_roi(
    opu: Opu,
    n_components: int,
    *,
    n_features: int = 256,
    n_frames: int = 16,
    dark: DarkResult | None = None,
    max_lag_px: int = 8,
    seed: int | None = None,
    progress: bool = False,
) -> RoiResult:
    """Project ``n_frames`` random binary frames (half the features ON) and characterise the output region.

    - Grain: from the normalised intensity autocorrelation (:func:`intensity_autocorrelation`) of the
      complete rows of the region, up to max_lag_px along x and y; grain_px is its full width at half maximum
      (:func:`half_width_px`), the mean of the two axes.
    - Selection: the sub-grid x % stride == 0 and y % stride == 0 of the region (stride from
      :func:`stride_for` at :func:`neighbour_threshold`: 0.05, or 3 standard errors of the autocorrelation
      estimate when the frames cannot resolve 0.05), without
        hot pixels: ``dark.hot_pixels`` when a DarkResult is given, else pixels whose minimum over the frames
        stands above the speckle's range (:func:`_hot_threshold`);
        dead pixels: mean over frames (minus the dark level when known, else minus nothing) below a share of
        the median derived from the exponential law and the frames' measured mutual correlation
        (:func:`_dead_threshold`);
        saturated pixels: at full scale in any frame.

    The device is left as found: only projections are made (the camera region is the one transform sets).
    ``seed`` fixes the random frames (None draws new ones each call).

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
        AcquisitionError: no speckle (light off), a grain larger than max_lag_px, or an autocorrelation that
            stays above the stride's threshold up to max_lag_px (use more frames or a larger max_lag_px).
    """
    check_components(opu, n_components)
    check_features(opu, n_features, 2)  # half of them ON
    check_count(n_frames, "n_frames", 2)
    check_int(max_lag_px, "max_lag_px", low=1)
    check_seed(seed)
    roi = opu.roi_for(int(n_components))
    rows = n_components // roi.width
    if rows <= max_lag_px or roi.width <= max_lag_px:
        raise InvalidInputError(
            f"{n_components} outputs fill {rows} complete rows of {roi.width} px: too few for lags up to "
            f"{max_lag_px} px (use more outputs or a smaller max_lag_px)"
        )
    if dark is not None:
        if not isinstance(dark, DarkResult):
            raise InvalidInputError(f"dark must be a DarkResult or None, got {type(dark).__name__}")
        if dark.roi != roi or dark.mean_dn.shape != (n_components,):
            raise InvalidInputError(
                f"the dark result covers {dark.mean_dn.shape[0]} outputs of {dark.roi}; this measurement needs "
                f"{n_components} of {roi}: measure_dark(opu, {n_components})"
            )

    rng = np.random.default_rng(secrets.randbits(64) if seed is None else seed)
    n_on = n_features // 2
    order = np.argsort(rng.random((n_frames, n_features)), axis=1)
    bits = np.zeros((n_frames, n_features), dtype=np.uint8)
    np.put_along_axis(bits, order[:, :n_on], 1, axis=1)
    Y = np.empty((n_frames, n_components), dtype=np.float64)
    for start in tqdm.tqdm(range(0, n_frames, _CHUNK_FRAMES), desc="roi", unit="chunk", disable=not progress):
        Y[start : start + _CHUNK_FRAMES] = opu.transform(bits[start : start + _CHUNK_FRAMES], n_components)
    full_scale = opu.full_scale_dn

    saturated: np.ndarray = np.asarray((Y >= full_scale).any(axis=0))
    signal = Y - dark.mean_dn.astype(np.float64) if dark is not None else Y
    mean = signal.mean(axis=0)
    median = float(np.median(mean))
    if not median > 0:
        raise AcquisitionError("the frames are dark (median signal <= 0): is the light on?")
    # Frames share part of their field (docs/calibration.md, "Roi"), so a pixel's mean over n frames varies like the
    # mean of n_eff independent intensities: n_eff = n / (1 + (n - 1) rho), rho the mean correlation of two
    # frames' intensities across the region, measured here rather than assumed (it depends on the optics).
    frame_corr = np.corrcoef(signal)
    rho = float(np.clip((frame_corr.sum() - n_frames) / (n_frames * (n_frames - 1)), 0.0, 1.0))
    # The autocorrelation's products covary between frames by rho_ij^2 (autocorrelation_noise_sd).
    rho_squared = float(np.clip(((frame_corr**2).sum() - n_frames) / (n_frames * (n_frames - 1)), 0.0, 1.0))
    n_eff = n_frames / (1 + (n_frames - 1) * rho)
    dead = mean < _dead_threshold(n_eff, FALSE_ALARM) * median
    if dark is not None:
        hot, hot_source = np.asarray(dark.hot_pixels, dtype=bool).copy(), "dark"
    else:
        hot, hot_source = signal.min(axis=0) > _hot_threshold(FALSE_ALARM) * median, "frames"

    bad = hot | dead | saturated
    width = roi.width
    images = signal[:, : rows * width].reshape(n_frames, rows, width)
    valid = ~bad[: rows * width].reshape(rows, width)
    corr = intensity_autocorrelation(images, valid, max_lag_px)
    lag = int(max_lag_px)
    grain_x = half_width_px(corr[lag, lag:])
    grain_y = half_width_px(corr[lag:, lag])
    noise_sd = autocorrelation_noise_sd(corr, n_frames / (1 + (n_frames - 1) * rho_squared), int(valid.sum()))
    threshold = neighbour_threshold(noise_sd)
    stride = stride_for(corr, threshold)

    index = np.arange(n_components, dtype=np.int64)
    on_grid = (index % width % stride == 0) & (index // width % stride == 0)
    selection = index[on_grid & ~bad]
    result = RoiResult(
        roi=roi,
        n_components=int(n_components),
        n_features=int(n_features),
        n_frames=int(n_frames),
        grain_px=0.5 * (grain_x + grain_y),
        grain_x_px=grain_x,
        grain_y_px=grain_y,
        stride_px=stride,
        stride_threshold=threshold,
        autocorrelation_noise_sd=noise_sd,
        hot_source=hot_source,
        dropped_hot=int((on_grid & hot).sum()),
        dropped_dead=int((on_grid & dead).sum()),
        dropped_saturated=int((on_grid & saturated).sum()),
        autocorrelation_2d=corr,
        selection=selection,
        mean_intensity_dn=Y.mean(axis=0).astype(np.float32),
        hot=hot,
        dead=dead,
        saturated=saturated,
    )
    if result.n_selected == 0:
        raise AcquisitionError("no output left to select: every sub-grid pixel is hot, dead or saturated")
    _log.info("roi: %s", result.summary())
    return result


@register_routine(RoiResult, position=40, needs=(DarkResult,), stale_after=(ExposureResult,))
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> RoiResult:
    """The roi step of ``calibrate``: with this run's dark result, hot pixels come from the dark frames."""
    return measure_roi(
        opu, plan.n_components, n_features=plan.n_features, dark=earlier.get(DarkResult.routine), progress=progress
    )
