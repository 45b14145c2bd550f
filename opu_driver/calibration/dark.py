"""Dark calibration: the camera's dark level, fixed pattern, temporal (read) noise and hot pixels.

It uses the public Opu API only: the shutter is closed (or the laser switched off) through the controller
line, blank frames are acquired over the camera region the projection uses, and the light is restored as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from ..opu import Opu, Roi
from ..validation import check_choice, check_number
from ._checks import check_components, check_count
from .exposure import ExposureResult
from .registry import register_routine
from .result import CalibrationResult, region, region_keys, stored, summarised

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["DarkResult", "measure_dark"]

_log = logging.getLogger(__name__)

METHODS = ("shutter", "laser_off")


def _count(mask: npt.NDArray[np.bool_]) -> int:
    """How many outputs a per-output flag array marks."""
    return int(mask.sum())


@dataclass(frozen=True)
class DarkResult(CalibrationResult):
    """What the dark frames say, in ADC counts (DN) of the current pixel format.

    Attributes:
        roi: the camera region measured (the one ``n_components`` outputs use).
        n_frames: dark frames averaged.
        mean_dn: per-output dark level (offset + fixed pattern + dark current), length n_components.
        level_dn: median of mean_dn over outputs.
        fixed_pattern_dn: spatial standard deviation of mean_dn over the non-hot outputs, with the part that the
            temporal noise of a mean of n_frames adds removed.
        read_noise_dn: median over outputs of the temporal standard deviation (read noise with the dark
            current's shot noise and the ADC rounding).
        hot_pixels: outputs whose dark level stands out of the pattern (more than ``hot_sigma`` robust spreads);
            the summary holds their count.
        method: how the light was blocked ("shutter" or "laser_off").
    """

    routine: ClassVar[str] = "dark"

    roi: Roi = region()
    n_frames: int = summarised()
    mean_dn: npt.NDArray[np.float32] = stored(repr=True)
    level_dn: float = summarised(digits=4)
    fixed_pattern_dn: float = summarised(digits=4)
    read_noise_dn: float = summarised(digits=4)
    hot_pixels: npt.NDArray[np.bool_] = stored(summary=_count, repr=True)
    method: str = summarised()

    @classmethod
    def from_record(cls, summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> DarkResult:
        """The result again from a record's ``dark`` summary and its ``dark/...`` arrays (a resumed run)."""
        key, stored_as = cls.summary_key, cls.record_array
        roi = Roi(*(int(summary[k]) for k in region_keys()))
        return cls(
            roi,
            int(summary[key.n_frames]),
            np.asarray(arrays[stored_as.mean_dn], dtype=np.float32),
            float(summary[key.level_dn]),
            float(summary[key.fixed_pattern_dn]),
            float(summary[key.read_noise_dn]),
            np.asarray(arrays[stored_as.hot_pixels], dtype=bool),
            str(summary[key.method]),
        )


def measure_dark(
    opu, n_components: int, n_frames: int = 64, method: str = "shutter", hot_sigma: float = 8.0
) -> DarkResult:
    """Acquire ``n_frames`` dark frames over the region of ``n_components`` outputs and characterise them.

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
    """
    check_choice(method, "method", METHODS)
    check_components(opu, n_components)  # before the shutter closes: nothing is sent for bad arguments
    check_count(n_frames, "n_frames", 2)  # a temporal spread needs two
    check_number(hot_sigma, "hot_sigma", low=0, low_open=True)
    controller = opu.controller
    was_open, was_on = controller.shutter_is_open, controller.laser_is_on
    try:
        if method == "shutter":
            controller.close_shutter()
        else:
            controller.laser_off()
        # No mirror on, no light: a one-feature blank frame is the cheapest thing to display.
        frames = opu.transform(np.zeros((n_frames, 1), dtype=np.uint8), n_components).astype(np.float64)
        roi = opu.roi_for(n_components)
    finally:
        if was_on and method == "laser_off":
            controller.laser_on()
        if was_open and method == "shutter":
            controller.open_shutter()
    mean = frames.mean(axis=0)
    temporal_sd = frames.std(axis=0, ddof=1)
    read_noise = float(np.median(temporal_sd))
    level = float(np.median(mean))
    # Robust spread of the pattern (median absolute deviation): hot pixels do not inflate it.
    spread = 1.4826 * float(np.median(np.abs(mean - level)))
    floor = max(spread, read_noise / np.sqrt(n_frames), 0.5)
    hot = mean > level + hot_sigma * floor
    pattern_var = float(mean[~hot].var()) - read_noise**2 / n_frames
    result = DarkResult(
        roi,
        int(n_frames),
        mean.astype(np.float32),
        level,
        float(np.sqrt(max(pattern_var, 0.0))),
        read_noise,
        hot,
        method,
    )
    _log.info("dark: %s", result.summary())
    return result


@register_routine(DarkResult, position=20, stale_after=(ExposureResult,))
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> DarkResult:
    """The dark step of ``calibrate``: the dark frames of the plan's outputs."""
    return measure_dark(opu, plan.n_components, n_frames=plan.dark_frames, method=plan.dark_method)
