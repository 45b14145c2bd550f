"""Latency calibration: the DMD-to-camera frame lag, measured optically with alternating patterns.

A pseudo-random sequence of bright (every feature on) and dark (every feature off) DMD frames is displayed,
and the camera frames are read in arrival order, ignoring their metadata. The brightness of camera frame t
follows the pattern shown k frames earlier: the k that maximises the correlation is the optical lag. The lag
the frame metadata implies is reported beside it; the two disagree on a device whose firmware mislabels frames.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import AcquisitionError
from ..opu import Opu
from ..validation import check_int, check_number
from ._checks import check_components, check_count, check_features
from .registry import register_routine
from .result import CalibrationResult, stored, summarised

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["LatencyResult", "measure_latency"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatencyResult(CalibrationResult):
    """The optical lag, the lag the metadata implies, and how clear the optical peak was.

    ``correlations`` holds the correlation of camera brightness with the pattern per candidate lag
    0..max_lag_frames.
    """

    routine: ClassVar[str] = "latency"

    lag_frames: int = summarised()
    header_lag_frames: int | None = summarised()
    peak_correlation: float = summarised(digits=4)
    second_correlation: float = summarised(digits=4)
    n_frames: int = summarised()
    correlations: np.ndarray = stored(np.float32, default_factory=lambda: np.zeros(0))


def measure_latency(
    opu: Opu,
    n_frames: int = 64,
    max_lag_frames: int = 16,
    n_components: int = 256,
    n_features: int = 64,
    timeout_s: float = 5.0,
) -> LatencyResult:
    """Display ``n_frames`` alternating patterns plus ``max_lag_frames`` blanks and find the camera's lag.

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
        AcquisitionError: no clear correlation peak (no light, or a lag beyond max_lag_frames).
    """
    check_count(n_frames, "n_frames", 8)
    check_int(max_lag_frames, "max_lag_frames", low=1, high=n_frames - 1)  # smaller than n_frames
    check_features(opu, n_features)
    check_components(opu, n_components)
    check_number(timeout_s, "timeout_s", low=0, low_open=True)
    rng = np.random.default_rng(secrets.randbits(32))
    pattern = rng.integers(0, 2, size=n_frames).astype(bool)
    pattern[:2] = (True, False)  # never constant
    bits = np.zeros((n_frames + max_lag_frames, n_features), dtype=bool)
    bits[:n_frames] = pattern[:, None]
    # One sequence, every camera frame in arrival order, unmatched: the light is what is measured here.
    sequence = opu.display_sequence(bits, n_components, timeout_s=timeout_s)
    # Each camera frame goes where the camera's own counter puts it (not the DMD frame it claims to show, which
    # is what the optical measurement checks): a duplicated frame lands on its slot twice, a reordered one in its
    # place, a lost one leaves its slot empty (NaN) and out of the correlation.
    brightness = np.full(len(bits), np.nan)
    inside = sequence.camera_positions < len(bits)
    brightness[sequence.camera_positions[inside]] = sequence.pixels[inside].mean(axis=1)
    claimed = (sequence.shown >= 0) & (sequence.shown < n_frames)
    header_lags = (sequence.camera_positions[claimed] - sequence.shown[claimed]).tolist()
    correlations = []
    for lag in range(max_lag_frames + 1):
        seen = brightness[lag : lag + n_frames]
        valid = np.isfinite(seen)
        if valid.sum() >= 3 and seen[valid].std() > 0 and pattern[valid].std() > 0:
            correlations.append(float(np.corrcoef(seen[valid], pattern[valid].astype(float))[0, 1]))
        else:
            correlations.append(0.0)
    order = np.argsort(correlations)[::-1]
    best, second = int(order[0]), float(correlations[order[1]])
    if correlations[best] < 0.5:
        raise AcquisitionError(
            f"no clear lag: the best correlation is {correlations[best]:.2f} (is the light on? is the lag "
            f"beyond {max_lag_frames} frames?)"
        )
    header = int(np.median(header_lags)) if header_lags else None
    result = LatencyResult(best, header, correlations[best], second, n_frames, np.array(correlations))
    if header is not None and header != best:
        _log.warning("the frame metadata implies a lag of %d frames, the light says %d", header, best)
    _log.info("latency: %s", result.summary())
    return result


@register_routine(LatencyResult, position=30)
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> LatencyResult:
    """The latency step of ``calibrate``: the lag does not depend on the sizes, so a small projection does."""
    return measure_latency(opu, n_components=min(plan.n_components, 256), n_features=min(plan.n_features, 64))
