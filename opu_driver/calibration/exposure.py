"""Exposure calibration: choose exposure (and gain if needed) for the brightest frame a projection can show.

Speckle intensity is exponential, so a frame has no maximum worth aiming at: the routine puts a high quantile of
the brightest frame (every feature on) at ``target_fraction`` of full scale with at most
``max_saturated_fraction`` of its pixels saturated, through a sweep, a straight-line fit, a refinement and steps
down, and never changes the laser power (the caller's light budget). The derivation and the steps are in
docs/calibration.md ("Exposure").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import tqdm

from ..encoding.layouts import Layout
from ..errors import AcquisitionError, InvalidInputError
from ..opu import Opu, Roi
from ..validation import check_bool, check_int, is_number
from ._checks import check_components
from .registry import register_routine
from .result import CalibrationResult, region, stored, summarised, summarised_property

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["ExposureResult", "tune_exposure"]

_log = logging.getLogger(__name__)

FRAME_GAP_US = 50
"""The camera needs frame_time_us >= exposure_us + 50 (docs/protocol.md 1.2)."""
MIN_EXPOSURE_US = 10
MAX_EXPOSURE_US = 1_000_000
MAX_GAIN = 16.0
_CLIPPED = 0.95  # a top above this share of full scale may be clipped by the ADC: never fitted
_ACCEPT = 0.03  # a measured top within 3% of the target ends the refinement (a few DN at 8 bits)
_MAX_REFINE = 4  # measurements spent converging on the target after the sweep
_MAX_STEPS_DOWN = 6  # steps down while too many pixels are saturated
_STEP_DOWN = 0.85  # each step down lowers exposure x gain by 15%


@dataclass(frozen=True, kw_only=True)
class ExposureResult(CalibrationResult):
    """The chosen camera setting and every measurement that led to it.

    Attributes:
        exposure_us, gain, frame_time_us: what the camera is left at.
        top_dn: the (1 - max_saturated_fraction) quantile of the brightest frame's pixel values at that setting.
        saturated_fraction: share of those pixel values at full scale.
        max_saturated_fraction, target_fraction: as asked; target_dn = target_fraction * full_scale_dn.
        full_scale_dn: 2^bits - 1 of the pixel format.
        dark_dn, slope_dn_per_us: the fitted model top = dark_dn + slope_dn_per_us * exposure_us * gain.
        reached_target: False when the longest exposure (and the highest gain allowed) left the top below the
            target by more than the refinement's 3% tolerance.
        n_features, n_components, n_frames, layout: the frame measured (layout kind) and its repetitions.
        roi: the camera region of the n_components outputs.
        sweep_*: every measurement in order (sweep, refinement, steps down): exposure, gain, top, saturated share.

    ``gain`` is in the camera's own unit (``opu.camera.geometry.gain_unit``: a factor, dB, or the camera's raw
    scale); ``sweep_gain`` and the fitted model use the linear gain factor, 1 at unity gain.
    """

    routine: ClassVar[str] = "exposure"

    # declared in the order of the summary, then of the arrays (keyword-only, so that order is free)
    exposure_us: int = summarised()
    gain: float = summarised(digits=3)
    frame_time_us: int = summarised()
    saturated_fraction: float = summarised(digits=6)
    max_saturated_fraction: float = summarised()
    top_dn: float = summarised(digits=2)
    full_scale_dn: int = summarised()
    target_dn: float = summarised(digits=2)
    target_fraction: float = summarised()
    dark_dn: float = summarised(digits=3)
    slope_dn_per_us: float = summarised(significant=6)
    reached_target: bool = summarised()
    n_features: int = summarised()
    n_components: int = summarised()
    n_frames: int = summarised()
    layout: str = summarised()

    @summarised_property()
    def n_measurements(self) -> int:
        """Settings measured: the sweep, the refinement and the steps down."""
        return int(self.sweep_exposure_us.size)

    roi: Roi = region()
    sweep_exposure_us: np.ndarray = stored(np.float64, default_factory=lambda: np.zeros(0))
    sweep_gain: np.ndarray = stored(np.float64, default_factory=lambda: np.zeros(0))
    sweep_top_dn: np.ndarray = stored(np.float64, default_factory=lambda: np.zeros(0))
    sweep_saturated_fraction: np.ndarray = stored(np.float64, default_factory=lambda: np.zeros(0))


def tune_exposure(
    opu: Opu,
    n_features: int,
    n_components: int,
    *,
    layout: Layout | None = None,
    max_saturated_fraction: float = 1e-3,
    target_fraction: float = 0.8,
    max_exposure_us: int | None = None,
    allow_gain: bool = True,
    n_frames: int = 4,
    progress: bool = False,
) -> ExposureResult:
    """Set exposure (and gain if needed) so the brightest frame's top sits near ``target_fraction`` of full scale.

    The camera is LEFT at the chosen exposure, gain and frame time: setting them is this routine's purpose.
    On an exception it restores the exposure, gain and frame time it found.

    Args:
        n_features: features of the projection; with ``layout`` None the frame goes through the layout
            ``opu.transform`` would use for them (``opu.settings.layout``).
        n_components: outputs (camera region ``opu.roi_for(n_components)``) whose pixels are measured.
        layout: the layout to light fully instead (its n_features must equal n_features); for a
            SplitLayout the reference is lit too, the brightest frame of the linear mode.
        max_saturated_fraction: the share of pixel values allowed at full scale, in (0, 0.5).
        target_fraction: where the (1 - max_saturated_fraction) quantile should sit, in (0, 1].
        max_exposure_us: longest exposure allowed (10..1000000); default: the current frame time minus the
            50 us gap, so the frame rate does not change. A longer one lets the frame time grow.
        allow_gain: raise the gain (up to a factor of 16, within the camera's range) when the longest exposure
            cannot reach the target. On a camera whose gain is in its raw unit, the gain is left as it is.
        n_frames: repetitions of the frame per measurement (their values are pooled).

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
        AcquisitionError: no light reaches the camera, the shortest exposure already saturates, or too many
            pixels stay saturated after the steps down.
    """
    # -- arguments: everything below until the try block only computes -----------------------------
    info = opu.info
    check_int(n_features, "n_features", low=1)
    check_components(opu, n_components)
    if not (is_number(max_saturated_fraction) and 0 < max_saturated_fraction < 0.5):
        raise InvalidInputError(f"max_saturated_fraction must be within (0, 0.5), got {max_saturated_fraction!r}")
    if not (is_number(target_fraction) and 0 < target_fraction <= 1):
        raise InvalidInputError(f"target_fraction must be within (0, 1], got {target_fraction!r}")
    check_int(n_frames, "n_frames", low=1)
    check_bool(allow_gain, "allow_gain")
    before = opu.camera_settings  # the settings last read or written: no traffic
    # an open camera's settings are complete
    assert before.frame_time_us is not None and before.exposure_us is not None and before.gain is not None
    if max_exposure_us is None:
        max_exposure_us = before.frame_time_us - FRAME_GAP_US
        if max_exposure_us < MIN_EXPOSURE_US:
            raise InvalidInputError(
                f"the frame time of {before.frame_time_us} us leaves no room for an exposure; pass max_exposure_us"
            )
    else:
        check_int(max_exposure_us, "max_exposure_us", low=MIN_EXPOSURE_US, high=MAX_EXPOSURE_US)
    max_exposure_us = int(max_exposure_us)
    if layout is None:
        layout = opu.layout_for(int(n_features))
    elif not isinstance(layout, Layout):
        raise InvalidInputError(f"layout must be a Layout or None, got {type(layout).__name__}")
    elif layout.n_features != n_features:
        raise InvalidInputError(f"the layout has {layout.n_features} features, n_features is {n_features}")
    elif (layout.dmd_width, layout.dmd_height) != (info.dmd_width, info.dmd_height):
        raise InvalidInputError(
            f"the layout is for a {layout.dmd_width}x{layout.dmd_height} DMD; this one is "
            f"{info.dmd_width}x{info.dmd_height}"
        )
    if n_components * max_saturated_fraction < 3:
        _log.warning(
            "the %.4g quantile of %d outputs rests on fewer than 3 pixels: the top will be noisy",
            1 - max_saturated_fraction,
            n_components,
        )

    full_scale = opu.full_scale_dn
    target = float(target_fraction) * full_scale
    bar = tqdm.tqdm(desc="exposure", unit="setting", disable=not progress)
    search = _Search(
        opu=opu,
        layout=layout,
        n_components=n_components,
        bits=np.ones((int(n_frames), layout.n_table_features), dtype=np.uint8),
        before=before,
        full_scale=full_scale,
        target=target,
        max_saturated_fraction=max_saturated_fraction,
        max_exposure_us=max_exposure_us,
        max_gain=_max_gain_factor(opu, before.gain) if allow_gain else 1.0,
        camera_gain=_camera_gain(opu, before.gain),
        bar=bar,
    )
    try:
        _sweep(search)
        choice, dark, slope = _refine(search)
        choice, top, saturated, steps = _step_down(search, choice)
        final = opu.configure_camera(
            exposure_us=choice[0],
            gain=search.camera_gain(choice[1]),
            frame_time_us=max(before.frame_time_us, choice[0] + FRAME_GAP_US),
        )
    except BaseException:
        try:
            opu.configure_camera(exposure_us=before.exposure_us, gain=before.gain, frame_time_us=before.frame_time_us)
        except Exception as exc:  # report the first failure, not this one
            _log.warning("could not restore the camera settings: %s", exc)
        raise
    finally:
        bar.close()

    # After steps down the top sits wherever saturation allows: the target was reached, and passed.
    reached = top >= (1 - _ACCEPT) * target or steps > 0
    if not reached:
        _log.warning(
            "the brightest frame reaches %.0f DN of the %.0f DN target at %d us, gain %.3f: the light is "
            "weak for this exposure limit",
            top,
            target,
            choice[0],
            choice[1],
        )
    keys, measured = search.order, search.measured
    assert final.exposure_us is not None and final.gain is not None and final.frame_time_us is not None
    result = ExposureResult(
        exposure_us=int(final.exposure_us),
        gain=float(final.gain),
        frame_time_us=int(final.frame_time_us),
        top_dn=top,
        saturated_fraction=saturated,
        max_saturated_fraction=float(max_saturated_fraction),
        target_fraction=float(target_fraction),
        target_dn=target,
        full_scale_dn=full_scale,
        dark_dn=dark,
        slope_dn_per_us=slope,
        reached_target=bool(reached),
        n_features=int(n_features),
        n_components=int(n_components),
        n_frames=int(n_frames),
        layout=layout.kind,
        roi=opu.roi_for(n_components),
        sweep_exposure_us=np.array([k[0] for k in keys], dtype=np.float64),
        sweep_gain=np.array([k[1] for k in keys], dtype=np.float64),
        sweep_top_dn=np.array([measured[k][0] for k in keys], dtype=np.float64),
        sweep_saturated_fraction=np.array([measured[k][1] for k in keys], dtype=np.float64),
    )
    _log.info("exposure: %s", result.summary())
    return result


def _camera_gain(opu: Opu, current: float) -> Callable[[float], float]:
    """How a linear gain factor is written to this camera: as it is, in dB, or (a raw scale the driver cannot
    convert) as the gain the camera has now, whatever the factor (the routine then never raises the gain)."""
    unit = opu.camera.geometry.gain_unit
    if unit == "factor":
        return float
    if unit == "dB":
        return lambda factor: round(20.0 * math.log10(factor), 3)
    return lambda factor: float(current)


def _max_gain_factor(opu: Opu, current: float) -> float:
    """The largest linear gain factor the routine may use: up to MAX_GAIN, within the camera's range."""
    geometry = opu.camera.geometry
    low, high = geometry.gain_range
    if geometry.gain_unit == "factor":
        return max(1.0, min(MAX_GAIN, high)) if low <= 1.0 else 1.0
    if geometry.gain_unit == "dB":
        return max(1.0, min(MAX_GAIN, 10.0 ** (high / 20.0))) if low <= 0.0 else 1.0
    _log.info("the camera's gain is in its own raw unit: the exposure routine leaves it at %g", current)
    return 1.0


@dataclass
class _Search:
    """What the phases of :func:`tune_exposure` share: the frame measured, the target and limits, and every
    measurement so far (by setting, and in the order taken)."""

    opu: Opu
    layout: Layout
    n_components: int
    bits: np.ndarray
    before: Any  # the CameraSettings found, restored on failure
    full_scale: int
    target: float
    max_saturated_fraction: float
    max_exposure_us: int
    max_gain: float  # the largest linear gain factor allowed
    camera_gain: Callable[[float], float]  # a linear gain factor in the camera's unit
    bar: Any  # progress bar, one step per measurement
    measured: dict[tuple[int, float], tuple[float, float]] = field(default_factory=dict)
    order: list[tuple[int, float]] = field(default_factory=list)

    def measure(self, exposure_us: int, gain: float) -> tuple[float, float]:
        """(top_dn, saturated_fraction) of the brightest frame at this setting (each setting measured once)."""
        key = (int(exposure_us), round(float(gain), 3))
        if key in self.measured:
            return self.measured[key]
        opu, before, bits, layout, n_components = self.opu, self.before, self.bits, self.layout, self.n_components
        opu.configure_camera(
            exposure_us=key[0],
            gain=self.camera_gain(key[1]),
            frame_time_us=max(before.frame_time_us, key[0] + FRAME_GAP_US),
        )
        # the sweep saturates on purpose: measured here, not warned about
        values = opu.acquire(bits, layout, n_components, warn_saturated=False)
        top = float(np.quantile(values, 1.0 - float(self.max_saturated_fraction)))
        saturated = float(np.count_nonzero(values >= self.full_scale)) / values.size
        self.measured[key] = (top, saturated)
        self.order.append(key)
        self.bar.update(1)
        _log.debug("exposure %d us, gain %.3f: top %.1f DN, %.2e saturated", key[0], key[1], top, saturated)
        return top, saturated

    def usable(self, key: tuple[int, float]) -> bool:
        """Whether a measured setting may be fitted: its top not clipped, few enough pixels saturated."""
        top, saturated = self.measured[key]
        return top < _CLIPPED * self.full_scale and saturated <= self.max_saturated_fraction


def _sweep(search: _Search) -> None:
    """Sweep at gain 1, halving from the longest exposure, until two points are not clipped (and three were
    measured: a line through two points has no check at all); refuse too much light and no light."""
    exposure = search.max_exposure_us
    while True:
        search.measure(exposure, 1.0)
        n_usable = sum(search.usable(key) for key in search.order)
        if (n_usable >= 2 and len(search.order) >= 3) or exposure == MIN_EXPOSURE_US:
            break
        exposure = max(MIN_EXPOSURE_US, exposure // 2)
    if n_usable < 2:
        raise AcquisitionError(
            f"the brightest frame is clipped even at {exposure} us: too much light for this camera; lower "
            "the laser power (opu.set_laser_power_mw)"
        )
    fitted = [key for key in search.order if search.usable(key)]
    tops = [search.measured[key][0] for key in fitted]
    rise = max(tops) - min(tops)
    if rise < max(3.0, 0.005 * search.full_scale):
        raise AcquisitionError(
            f"no light: the brightest frame's top rises by only {rise:.1f} DN from {fitted[-1][0]} to "
            f"{fitted[0][0]} us (is the laser on and the shutter open? is anything blocking the beam?)"
        )


def _fit(search: _Search, near: float | None = None) -> tuple[float, float]:
    """(dark_dn, slope per us of exposure x gain) of the line through the usable points, the two nearest ``near``
    (in log exposure x gain) when given: the line is exact in the physics, nearly so with an ADC offset or a dark
    level that scales with gain, and the nearest points make what is left of that negligible."""
    keys = [key for key in search.order if search.usable(key)]
    if near is not None and len(keys) > 2:
        keys = sorted(keys, key=lambda k: abs(math.log(k[0] * k[1] / near)))[:2]
    x = np.array([k[0] * k[1] for k in keys], dtype=np.float64)
    y = np.array([search.measured[k][0] for k in keys], dtype=np.float64)
    if np.ptp(x) == 0:
        return 0.0, float(y.mean() / x[0])
    slope, dark = np.polyfit(x, y, 1)
    return float(dark), float(slope)


def _setting_for(search: _Search, dark: float, slope: float) -> tuple[int, float]:
    """The exposure (then gain) that the line puts on the target, within the limits."""
    x = (search.target - dark) / slope
    if x <= search.max_exposure_us:
        return max(MIN_EXPOSURE_US, int(math.floor(x))), 1.0
    return search.max_exposure_us, round(min(search.max_gain, x / search.max_exposure_us), 3)


def _refine(search: _Search) -> tuple[tuple[int, float], float, float]:
    """Converge on the target: predict, measure, refit with the nearest points; (setting, dark_dn, slope)."""
    dark, slope = _fit(search)
    choice = _setting_for(search, dark, slope)
    for _ in range(_MAX_REFINE):
        if slope <= 0:
            raise AcquisitionError("no light: the top of the brightest frame does not grow with exposure")
        top, _sat = search.measure(*choice)
        at_limit = choice[0] == search.max_exposure_us and choice[1] >= search.max_gain
        if abs(top - search.target) <= _ACCEPT * search.target or (at_limit and top < search.target):
            break
        dark, slope = _fit(search, near=choice[0] * choice[1])
        following = _setting_for(search, dark, slope)
        if following == choice:
            break
        choice = following
    return choice, dark, slope


def _step_down(search: _Search, choice: tuple[int, float]) -> tuple[tuple[int, float], float, float, int]:
    """Verify the setting and step down while too many pixels are saturated (gain first: exposure is free
    signal); (setting, top_dn, saturated_fraction, steps taken)."""
    top, saturated = search.measure(*choice)
    steps = 0
    while saturated > search.max_saturated_fraction:
        if steps == _MAX_STEPS_DOWN:
            raise AcquisitionError(
                f"{saturated:.2%} of the pixels are still saturated at {choice[0]} us, gain {choice[1]:.3f} "
                f"after {steps} steps down (hot pixels? a reflection?); lower the laser power"
            )
        exposure_us, gain = choice
        if gain > 1.0:
            gain = round(max(1.0, gain * _STEP_DOWN), 3)
        else:
            exposure_us = max(MIN_EXPOSURE_US, int(exposure_us * _STEP_DOWN))
        if (exposure_us, gain) == choice:
            raise AcquisitionError(
                f"{saturated:.2%} of the pixels are saturated at the shortest exposure; lower the laser power"
            )
        choice = (exposure_us, gain)
        top, saturated = search.measure(*choice)
        steps += 1
    return choice, top, saturated, steps


@register_routine(ExposureResult, position=10, sets_camera=True)
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> ExposureResult:
    """The exposure step of ``calibrate``, first: everything after it is measured at the exposure it sets."""
    from .reference import reference_layout

    # The brightest frame the calibrated projections use is the linear mode's: every signal feature and the
    # reference on.
    return tune_exposure(
        opu,
        plan.n_features,
        plan.n_components,
        layout=reference_layout(opu, plan.n_features),
        max_saturated_fraction=plan.max_saturated_fraction,
        progress=progress,
    )
