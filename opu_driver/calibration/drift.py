"""Drift monitoring: re-project a fixed probe set and say when the projection has changed enough to recalibrate.

A scattering medium slowly changes, and with it the effective matrix of the linear mode. The monitor keeps fixed
ternary probes and their projections at a baseline (taken twice, which gives the noise floor); a check projects
them again and correlates with the baseline, against a threshold derived from the baseline's own spread. Times
are read on the device clock. The noise floor, the threshold, the clock and the stale reference are derived in
docs/calibration.md ("Drift").
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
import tqdm

from ..errors import InvalidInputError
from ..opu import FRAMES_PER_TERNARY, PROJECTION_SCHEMES, Opu, Roi
from ..validation import check_choice, check_int, check_number
from ._checks import check_components, check_count, check_features, check_seed, correlation
from .exposure import ExposureResult
from .reference import ReferenceResult
from .registry import register_routine
from .result import CalibrationResult, region, stored, summarised, summarised_property

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = [
    "DriftSample",
    "DriftResult",
    "DriftMonitor",
    "measure_drift",
    "check_drift",
    "check_drift_record",
    "default_threshold",
    "THRESHOLD_SIGMAS",
    "MIN_DROP",
]

_log = logging.getLogger(__name__)

THRESHOLD_SIGMAS = 6.0
"""How many sampling spreads (of a difference of two correlations) the default threshold sits below rho_c."""
MIN_DROP = 1e-3
"""The default threshold is never above 1 - MIN_DROP."""
_BLANK_CHUNK_FRAMES = 4096


@dataclass(frozen=True)
class DriftSample:
    """One check: seconds since the baseline (device clock; NaN when the baseline's time is unknown), the
    correlation of the probes' projections with the baseline, and whether it fell below the threshold."""

    time_s: float
    correlation: float
    drifted: bool
    device_time_us: int = 0


@dataclass(frozen=True, kw_only=True)
class DriftResult(CalibrationResult):
    """A monitor's baseline, threshold and checks so far.

    Attributes:
        n_features, n_components: sizes of the probes and of their projections.
        scheme: linear-mode scheme of the projections.
        threshold: correlations below it mean "recalibrate".
        baseline_repeatability: correlation of the baseline's two repeats (None when resumed from a record).
        expected_correlation: what a check without drift should give, rho_c (None when resumed from a record).
        baseline_device_time_us: device time of the baseline (None when unknown).
        roi: camera region of the outputs.
        times_s, correlations: the checks, in seconds since the baseline.
        probes: (n_probes, n_features) int8 ternary probe vectors.
        baseline: (n_probes, n_components) float32 mean of the baseline's two projections.
        needs_recalibration: whether some check since the baseline fell below the threshold.
    """

    routine: ClassVar[str] = "drift"

    # declared in the order of the summary, then of the arrays (keyword-only, so that order is free);
    # correlations are None in the summary when not finite
    n_features: int = summarised()
    n_components: int = summarised()
    scheme: str = summarised()

    @summarised_property()
    def n_probes(self) -> int:
        return int(self.probes.shape[0])

    threshold: float = summarised(digits=6, finite=True)
    baseline_repeatability: float | None = summarised(digits=6, finite=True)
    expected_correlation: float | None = summarised(digits=6, finite=True)

    @summarised_property(digits=6, finite=True)
    def last_correlation(self) -> float | None:
        return float(self.correlations[-1]) if self.correlations.size else None

    needs_recalibration: bool = summarised(convert=bool)

    @summarised_property()
    def n_checks(self) -> int:
        """Checks since the baseline."""
        return int(self.correlations.size)

    baseline_device_time_us: int | None = summarised()
    roi: Roi = region()
    times_s: npt.NDArray[np.float64] = stored(np.float64)
    correlations: npt.NDArray[np.float64] = stored(np.float64)
    probes: npt.NDArray[np.int8] = stored(np.int8)
    baseline: npt.NDArray[np.float32] = stored(np.float32)


def default_threshold(repeat_1: npt.ArrayLike, repeat_2: npt.ArrayLike) -> tuple[float, float, float]:
    """(threshold, r0, rho_c) from two projections (n_probes, n_outputs) of the same probes.

    r0 is their correlation, rho_c = r0 sqrt(2 / (1 + r0)) what a check correlates with their mean without drift,
    and the threshold rho_c - THRESHOLD_SIGMAS sqrt(2) sigma (at most 1 - MIN_DROP), sigma the jackknife spread of
    r0 over probes (derived in docs/calibration.md, "Drift").
    """
    y1 = np.asarray(repeat_1, dtype=np.float64)
    y2 = np.asarray(repeat_2, dtype=np.float64)
    n = y1.shape[0]
    r0 = correlation(y1, y2)
    if not math.isfinite(r0):
        raise InvalidInputError("the probes' projections are constant: no light, or every output masked")
    rho_c = r0 * math.sqrt(2 / (1 + r0)) if r0 > -1 else -1.0
    # Leave-one-probe-out correlations from per-probe sums.
    m = y1.shape[1]
    sx, sy = y1.sum(axis=1), y2.sum(axis=1)
    sxx, syy, sxy = (y1 * y1).sum(axis=1), (y2 * y2).sum(axis=1), (y1 * y2).sum(axis=1)
    count = (n - 1) * m
    tx, ty = sx.sum() - sx, sy.sum() - sy
    cxx = sxx.sum() - sxx - tx * tx / count
    cyy = syy.sum() - syy - ty * ty / count
    cxy = sxy.sum() - sxy - tx * ty / count
    with np.errstate(invalid="ignore", divide="ignore"):
        leave_one_out = np.clip(cxy / np.sqrt(cxx * cyy), -1, 1)
    leave_one_out = leave_one_out[np.isfinite(leave_one_out)]
    sigma = (
        math.sqrt((n - 1) / n * float(((leave_one_out - leave_one_out.mean()) ** 2).sum()))
        if leave_one_out.size >= 2
        else 0.0
    )
    threshold = min(rho_c - THRESHOLD_SIGMAS * math.sqrt(2) * sigma, 1 - MIN_DROP)
    return threshold, r0, rho_c


def _check_threshold(threshold: object) -> None:
    check_number(threshold, "threshold", low=-1, high=1)


def _check_scheme(scheme: object) -> None:
    check_choice(scheme, "scheme", PROJECTION_SCHEMES)


def check_drift_record(
    opu: Opu, probes: npt.ArrayLike, baseline: npt.ArrayLike, threshold: float, scheme: str
) -> tuple[np.ndarray, np.ndarray]:
    """Probes and baseline of a stored record, checked (nothing is sent), as int8 and float32.

    What :func:`check_drift` and the open-time check (``apply.py``, before anything of a record is applied) refuse:
    a threshold outside -1..1, an unknown scheme, probes that are not a (n_probes >= 2, n_features) ternary array
    with a nonzero entry in each, a baseline that is not (n_probes, n_components) finite and nonzero, or more
    outputs than the camera's pixels.

    Raises:
        InvalidInputError: naming what is wrong.
    """
    _check_scheme(scheme)
    _check_threshold(threshold)
    probes = np.asarray(probes)
    baseline = np.asarray(baseline)
    if probes.ndim != 2 or probes.shape[0] < 2 or probes.shape[1] < 1 or probes.dtype.kind not in "biuf":
        raise InvalidInputError(f"probes must be a (n_probes >= 2, n_features) array, got {probes.shape}")
    if not np.isin(probes, (-1, 0, 1)).all() or not probes.any(axis=1).all():
        raise InvalidInputError("probes must be ternary (-1, 0, 1) with a nonzero entry in every probe")
    if baseline.ndim != 2 or baseline.shape[0] != probes.shape[0] or baseline.dtype.kind not in "biuf":
        raise InvalidInputError(f"baseline must be (n_probes={probes.shape[0]}, n_components), got {baseline.shape}")
    check_components(opu, baseline.shape[1])  # from the shape, before a huge baseline is scanned
    if not np.isfinite(baseline).all():
        raise InvalidInputError("baseline contains NaN or Inf")
    if not baseline.any():
        raise InvalidInputError("baseline is all zero")
    return probes.astype(np.int8), baseline.astype(np.float32)


def _project(
    opu: Opu, probes: np.ndarray, n_components: int, scheme: str, refresh: bool = False
) -> tuple[np.ndarray, int]:
    """Linear projections of the probes and the device time (us) at the middle of their frames."""
    frame_time_us = opu.camera_settings.frame_time_us
    before = opu.device_time_us
    out = opu.linear_transform(probes, n_components, scheme=scheme, refresh_reference=refresh)
    after = opu.device_time_us
    # The call may first measure the reference: the probes' frames are the last ones.
    duration = min(after - before, probes.shape[0] * FRAMES_PER_TERNARY[scheme] * frame_time_us)
    return np.asarray(out, dtype=np.float64), int(after - duration // 2)


def _clock_epoch(opu: Opu) -> int:
    """How many times the driver saw the device clock restart (device resets and replugs)."""
    return opu.counters.resets_detected + opu.counters.reconnects


def _sample(
    opu, probes: np.ndarray, baseline: np.ndarray, threshold: float, scheme: str, origin_us: int | None
) -> DriftSample:
    projected, time_us = _project(opu, probes, baseline.shape[1], scheme)
    used = np.any(baseline != 0, axis=0)
    value = correlation(projected[:, used], baseline[:, used])
    # A device clock behind the baseline's was set back (a reset or a power cycle): the time since is unknown.
    time_s = (time_us - origin_us) * 1e-6 if origin_us is not None and time_us >= origin_us else float("nan")
    drifted = not value >= threshold  # NaN (no light any more) counts as drifted
    if drifted:
        _log.warning(
            "drift check: correlation %.4f with the baseline is below the threshold %.4f: recalibrate", value, threshold
        )
    return DriftSample(float(time_s), float(value), bool(drifted), int(time_us))


def check_drift(
    opu: Opu,
    probes: npt.ArrayLike,
    baseline: npt.ArrayLike,
    threshold: float,
    scheme: str = "four_frame",
    *,
    baseline_time_us: int | None = None,
) -> DriftSample:
    """Project stored probes once and compare with their stored baseline (the open-time drift check).

    ``time_s`` is NaN unless ``baseline_time_us`` (the baseline's device time, meaningful only while the device
    clock has not been reset) is given. At open (``opu_driver/calibration/apply.py``) the record's stored
    linear-mode reference, the one the baseline was measured with, is installed first, so this check projects
    through the same reference as the baseline did and sees the medium's change since then (and any change of
    settings). Only when the record holds no usable reference does the linear mode measure a fresh one.

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
    """
    probes, baseline = check_drift_record(opu, probes, baseline, threshold, scheme)
    return _sample(opu, probes, baseline, float(threshold), scheme, baseline_time_us)


class DriftMonitor:
    """Re-projects a fixed probe set and reports its correlation with a baseline over device time.

    Usage in a training loop::

        monitor = DriftMonitor(opu, n_features, n_components, interval_steps=200)
        monitor.baseline()
        for batch in data:
            ...                               # training work with the OPU
            sample = monitor.step()           # a check every 200 calls, else None
            if monitor.needs_recalibration:
                ...                           # recalibrate, then monitor.baseline()

    ``needs_recalibration`` latches: it stays True from the first failed check until the next ``baseline()``.
    """

    def __init__(
        self,
        opu: Opu,
        n_features: int,
        n_components: int,
        *,
        n_probes: int = 32,
        scheme: str = "four_frame",
        threshold: float | None = None,
        interval_steps: int = 100,
        seed: int | None = None,
    ) -> None:
        check_features(opu, n_features)
        check_components(opu, n_components)
        check_count(n_probes, "n_probes", 3)  # the spread needs a jackknife
        _check_scheme(scheme)
        if threshold is not None:
            _check_threshold(threshold)
        check_int(interval_steps, "interval_steps", low=1)
        check_seed(seed)
        self._opu = opu
        self.n_features = int(n_features)
        self.n_components = int(n_components)
        self.scheme = scheme
        self.interval_steps = int(interval_steps)
        self._fixed_threshold = None if threshold is None else float(threshold)
        rng = np.random.default_rng(seed)
        probes = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(n_probes, n_features))
        empty = ~probes.any(axis=1)
        probes[empty, rng.integers(0, n_features, size=int(empty.sum()))] = 1  # never an all-zero probe
        self.probes: np.ndarray = probes
        self._baseline: np.ndarray | None = None
        self._threshold: float | None = self._fixed_threshold
        self.baseline_repeatability: float | None = None
        self.expected_correlation: float | None = None
        self.baseline_device_time_us: int | None = None
        self._clock_epoch = _clock_epoch(opu)  # device resets and replugs seen when the baseline's time was read
        self._clock_lost = False
        self._history: list[DriftSample] = []
        self._latched = False
        self._steps = 0

    @classmethod
    def from_arrays(
        cls,
        opu: Opu,
        probes: npt.ArrayLike,
        baseline: npt.ArrayLike,
        threshold: float,
        scheme: str = "four_frame",
        *,
        baseline_time_us: int | None = None,
        interval_steps: int = 100,
    ) -> DriftMonitor:
        """Resume from a stored record (its probes, baseline and threshold); nothing is sent.

        Times count from ``baseline_time_us`` when given, else from the first check after resuming.
        """
        probes, baseline = check_drift_record(opu, probes, baseline, threshold, scheme)
        monitor = cls(
            opu,
            probes.shape[1],
            baseline.shape[1],
            n_probes=max(3, probes.shape[0]),
            scheme=scheme,
            threshold=float(threshold),
            interval_steps=interval_steps,
        )
        monitor.probes = probes
        monitor._baseline = baseline
        monitor.baseline_device_time_us = None if baseline_time_us is None else int(baseline_time_us)
        return monitor

    # -- state ------------------------------------------------------------------------------------------
    @property
    def threshold(self) -> float | None:
        """Correlations below it flag drift (None until the baseline when it is derived)."""
        return self._threshold

    @property
    def history(self) -> tuple[DriftSample, ...]:
        """Checks since the baseline, oldest first."""
        return tuple(self._history)

    @property
    def needs_recalibration(self) -> bool:
        """Whether some check since the baseline fell below the threshold."""
        return self._latched

    @property
    def has_baseline(self) -> bool:
        return self._baseline is not None

    # -- work -------------------------------------------------------------------------------------------
    def baseline(self, refresh_reference: bool = True) -> float:
        """Project the probes twice (after refreshing the linear mode's reference unless told not to), keep the
        mean as the baseline, derive the threshold unless one was given, clear the history; return the repeats'
        correlation r0 (the noise floor)."""
        both, time_us = _project(
            self._opu,
            np.concatenate([self.probes, self.probes]),
            self.n_components,
            self.scheme,
            refresh=refresh_reference,
        )
        first, second = np.split(both, 2)
        used = np.any(both != 0, axis=0)
        if not used.any():
            raise InvalidInputError(
                "every output of the probes' projections is 0: no light, or every output masked by the linear mode"
            )
        threshold, r0, rho_c = default_threshold(first[:, used], second[:, used])
        self._baseline = ((first + second) / 2).astype(np.float32)
        self._threshold = self._fixed_threshold if self._fixed_threshold is not None else threshold
        self.baseline_repeatability = r0
        self.expected_correlation = rho_c
        self.baseline_device_time_us = time_us
        self._clock_epoch = _clock_epoch(self._opu)
        self._clock_lost = False
        self._history = []
        self._latched = False
        self._steps = 0
        _log.info(
            "drift baseline: repeat correlation %.5f, expected check correlation %.5f, threshold %.5f",
            r0,
            rho_c,
            self._threshold,
        )
        return r0

    def check(self) -> DriftSample:
        """Project the probes once and correlate with the baseline (takes the baseline first if there is none)."""
        if self._baseline is None:
            self.baseline()
        assert self._baseline is not None and self._threshold is not None
        if self.baseline_device_time_us is None:  # resumed without a time: count from the first check
            self.baseline_device_time_us = self._opu.device_time_us
            self._clock_epoch = _clock_epoch(self._opu)
        sample = _sample(
            self._opu, self.probes, self._baseline, self._threshold, self.scheme, self.baseline_device_time_us
        )
        clock_back = sample.device_time_us < self.baseline_device_time_us
        if self._clock_lost or clock_back or _clock_epoch(self._opu) != self._clock_epoch:
            # The device reset (or was replugged, or power cycled) since the baseline: its clock restarted at 0,
            # so even a time that still lies after the baseline's is not the time since the baseline.
            if not self._clock_lost:
                _log.warning(
                    "drift check: the device clock was reset since the baseline; the times of this and "
                    "later checks are unknown (NaN)"
                )
            self._clock_lost = True
            sample = dataclasses.replace(sample, time_s=float("nan"))
        self._history.append(sample)
        self._latched = self._latched or sample.drifted
        return sample

    def step(self) -> DriftSample | None:
        """Call once per training step: checks every ``interval_steps`` calls (the first call takes the baseline
        if there is none) and returns the sample, else None."""
        if self._baseline is None:
            self.baseline()
            return None
        self._steps += 1
        if self._steps % self.interval_steps:
            return None
        return self.check()

    def result(self) -> DriftResult:
        """Baseline, threshold and checks so far."""
        if self._baseline is None or self._threshold is None:
            raise InvalidInputError("no baseline yet: call baseline() first")
        return DriftResult(
            n_features=self.n_features,
            n_components=self.n_components,
            scheme=self.scheme,
            threshold=self._threshold,
            baseline_repeatability=self.baseline_repeatability,
            expected_correlation=self.expected_correlation,
            baseline_device_time_us=self.baseline_device_time_us,
            roi=self._opu.roi_for(self.n_components),
            needs_recalibration=self._latched,
            times_s=np.array([s.time_s for s in self._history], dtype=np.float64),
            correlations=np.array([s.correlation for s in self._history], dtype=np.float64),
            probes=self.probes.copy(),
            baseline=self._baseline.copy(),
        )


def measure_drift(
    opu: Opu,
    n_features: int,
    n_components: int,
    *,
    n_checks: int = 8,
    frames_between: int = 1000,
    n_probes: int = 32,
    scheme: str = "four_frame",
    threshold: float | None = None,
    seed: int | None = None,
    refresh_reference: bool = True,
    progress: bool = False,
) -> DriftResult:
    """A baseline, then ``n_checks`` checks each after ``frames_between`` blank frames (standing in for work).

    At the default 500 us frame period 1000 frames are half a second of device time. ``refresh_reference=False``
    keeps the linear-mode reference already in use (``opu calibrate all`` stores that one beside the baseline).

    Raises:
        InvalidInputError: bad arguments (before anything is sent).
    """
    check_int(n_checks, "n_checks", low=1)
    check_int(frames_between, "frames_between", low=0)
    monitor = DriftMonitor(
        opu, n_features, n_components, n_probes=n_probes, scheme=scheme, threshold=threshold, seed=seed
    )
    monitor.baseline(refresh_reference=refresh_reference)
    blank = np.zeros((min(frames_between, _BLANK_CHUNK_FRAMES), 1), dtype=np.uint8)
    for _ in tqdm.tqdm(range(n_checks), desc="drift", disable=not progress):
        left = frames_between
        while left > 0:
            # one mirror's worth of blank frames, one output read: the cheapest frames to show
            opu.transform(blank[:left], 1)
            left -= min(left, blank.shape[0])
        monitor.check()
    result = monitor.result()
    _log.info("drift: %s", result.summary())
    return result


@register_routine(DriftResult, position=80, stale_after=(ExposureResult, ReferenceResult), needs_reference=True)
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> DriftResult:
    """The drift step of ``calibrate``, last: its baseline uses the reference measured (and stored) just before,
    then a few checks show the short-term stability; ``open`` compares the same probes with this baseline."""
    return measure_drift(
        opu,
        plan.n_features,
        plan.n_components,
        n_checks=plan.drift_checks,
        frames_between=1000,
        n_probes=plan.drift_probes,
        refresh_reference=False,
        progress=progress,
    )
