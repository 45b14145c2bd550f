"""Linear projections from an intensity camera (the linear mode).

The camera sees |x R|^2. With a reference region r on mirrors disjoint from the signal's,

    |R(x + r)|^2 - |R x|^2 - |R r|^2 = 2 Re[ conj(R r) . (R x) ]

so dividing pixel i by 2 |R r|_i gives Re[exp(-i phi_i) R_i] x: a real Gaussian matrix applied to x.
A ternary e = e+ - e- (disjoint binary parts) costs four frames (e+ + r), e+, (e- + r), e- ("four-frame",
exact: |R r|^2 and |R e+-|^2 cancel); with a strong reference two frames (e+ + r), (e- + r) approximate it
("two-frame": the leftover |R e+|^2 - |R e-|^2 shrinks relative to the reference term as r grows).
Real-valued vectors go through separated bit planes (one ternary projection per plane).

Output scale: entries of the effective matrix have unit variance. The reference calibration measures
|R r|^2 per pixel (mean of reference-only frames minus dark frames), masks pixels whose reference is too weak
(the division would amplify noise) or saturated (the difference would be clipped), and measures the variance
of the entries of Re[exp(-i phi) R] by probing single features (two frames each, the camera noise measured on
the reference frames subtracted); the output is divided by its square root. Masked outputs are 0, and so are
outputs whose frames saturate in a call (counted in ``saturated_outputs`` and warned about).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..encoding.encoders import BitPlaneEncoder
from ..encoding.layouts import SplitLayout
from ..errors import AcquisitionError
from ..native import combine_four, combine_two
from .light import MIN_SHIFT, PilotPlan, pilot_levels
from .ranging import FOUR_FRAME_RATIO, TWO_FRAME_RATIO, Range, choose_ranges

if TYPE_CHECKING:
    from ..devices.camera import CameraSettings
    from .facade import Opu


__all__ = [
    "ReferenceCalibration",
    "LinearMode",
    "StageTimes",
    "PROJECTION_SCHEMES",
    "FRAMES_PER_TERNARY",
    "DEFAULT_MAX_CALL_BYTES",
    "REFERENCE_LEVELS",
    "call_bytes",
]

_log = logging.getLogger(__name__)

PROJECTION_SCHEMES = ("four_frame", "two_frame")
FRAMES_PER_TERNARY = {"four_frame": 4, "two_frame": 2}
"""DMD frames one nonzero ternary projection costs under each scheme."""
_SATURATION_WARNING = 1e-3  # share of zeroed outputs above which a call warns (below it: logged at INFO)
_CALIBRATION_TRIES = 5  # measurements of the linear-mode reference before unsteady light is an error
_CALIBRATION_SPREAD = 0.1  # widest spread of its reference frames' totals taken as steady light (5x the noise)
_LIGHT_RERUNS = 8  # the most times vectors whose light moved are projected again within one call
REFERENCE_LEVELS = 8
"""Reference features of the linear mode's split layout: its reference can be shown at amplitude j/8, j = 1..8."""
_MIN_LEVEL_CORRELATION = 0.995  # a weaker reference whose map correlates less with the whole one changed shape
_LEVEL_GAIN_TOLERANCE = 0.5  # and one whose light is more than 50% off (j/L)^2 x the exposure factor as well
_SIGNAL_GAIN_TOLERANCE = 0.1  # a signal level's scale is its share of mirrors: its light must agree within 10%


@dataclass
class ReferenceCalibration:
    """What the linear mode measured for one (layout, n_components, camera settings)."""

    reference_dn: npt.NDArray[np.float32]
    dark_dn: npt.NDArray[np.float32]
    mask: npt.NDArray[np.bool_]
    entry_variance: float
    n_frames: int
    key: tuple = field(default=(), repr=False)
    feature_dn: float = 0.0
    """Mean intensity (DN above dark) of one signal feature alone, over the usable outputs: how much light a
    vector gives, for choosing its range (0: unknown, no auto-ranging)."""
    level: int | None = None
    """The reference level this calibration shows (None: the whole reference)."""
    exposure_factor: float = 1.0
    """Exposure relative to the settings the calibration was keyed by (auto-ranging's ranges)."""
    signal_level: int | None = None
    """The signal level of the layout its projections go through (None: the whole signal)."""
    signal_amplitude: float = 1.0
    """The field of a feature at that signal level, as a share of the whole feature's (signal_level / L)."""

    @property
    def usable_fraction(self) -> float:
        return float(self.mask.mean())


@dataclass(frozen=True)
class StageTimes:
    """Wall time the linear mode spent in each stage of its projections, summed since the Opu opened.

    It tells whether the host or the device bounds a workload (``opu bench --only lm`` reads it): the device stage is
    ``Opu.acquire``, the frames shown and their camera values read back (on the emulator, whose optics run in the
    caller's thread, that is host work too); encode and decode are host work around it, one after the other with it.
    Reference calibrations are not counted. Differences of two snapshots time one call (``after - before``).

    Attributes:
        encode_s: bit planes fitted and cut, ternary rows split into their frames, the light pilots placed.
        device_s: the device calls (``Opu.acquire``).
        decode_s: the pilots' light levels, the frames combined into projections, bit planes weighed back.
        device_calls: device calls made (light re-runs included).
    """

    encode_s: float = 0.0
    device_s: float = 0.0
    decode_s: float = 0.0
    device_calls: int = 0

    def __sub__(self, other: StageTimes) -> StageTimes:
        return StageTimes(
            self.encode_s - other.encode_s,
            self.device_s - other.device_s,
            self.decode_s - other.decode_s,
            self.device_calls - other.device_calls,
        )


def _merge_groups(
    groups: list[tuple[Range, np.ndarray]], more: list[tuple[Range, np.ndarray]]
) -> list[tuple[Range, np.ndarray]]:
    """``groups`` with the rows of ``more`` added to the queued group of the same range (or queued after them)."""
    merged = dict(groups)
    for where, rows in more:
        queued = merged.get(where)
        merged[where] = rows if queued is None else np.concatenate([queued, rows])
    return list(merged.items())


class _LightChanged(Exception):
    """Raised inside a call when the light changed for good and the reference was measured again."""


class LinearMode:
    """Turns an Opu's intensity measurements into real linear projections (``Opu.linear_transform``)."""

    def __init__(
        self,
        opu: Opu,
        reference_fraction: float = 0.5,
        min_reference: float = 0.1,
        calibration_frames: int = 32,
        auto_range: bool = False,
        max_exposure_factor: float = 64.0,
        peak_factor: float = 8.0,
    ) -> None:
        self._opu = opu
        self.reference_fraction = reference_fraction
        self.min_reference = min_reference
        self.calibration_frames = calibration_frames
        self.auto_range = auto_range
        """Choose each vector's reference level and exposure from its light (see :mod:`.ranging`). Off by default
        for now: the calibration routines' frame counts and noise predictions still assume one range."""
        self.max_exposure_factor = max_exposure_factor
        """The longest exposure auto-ranging may use, as a multiple of the settings' exposure."""
        self.peak_factor = peak_factor
        """Auto-ranging aims the brightest frame's mean at full scale / peak_factor (speckle is exponential: about
        one value in e^peak_factor saturates)."""
        self._layouts: dict[tuple[int, int | None], SplitLayout] = {}
        self._calibrations: dict[tuple, ReferenceCalibration] = {}
        self._ranges: dict[tuple, ReferenceCalibration | None] = {}  # None: a level that changes the reference
        self._signal_levels: dict[tuple, bool] = {}  # (base key, signal level): whether it keeps the signal's shape
        self._base_settings: CameraSettings | None = None  # the settings' camera times during a call
        self._pending_restore: CameraSettings | None = None  # set while the camera is in a range
        self._range_exposure_us: int | None = None  # the exposure auto-ranging last set
        self.ranges_used: dict[Range, int] = {}
        """Vectors projected in each range (reference level, signal level, exposure factor) since the Opu opened."""
        self.exposure_changes = 0
        """Camera reconfigurations auto-ranging made (each costs a settings write and, on hardware, a frame)."""
        self.last_ranges: list[tuple[Range, int]] = []
        """(range, vectors) of each range of the last call's ternary rows, in the order they were projected."""
        self.saturated_outputs = 0
        self._clipped_in_call = [0, 0]  # outputs zeroed, outputs made, since the last report
        self.light_reruns = 0
        """Vectors projected again because the light moved while they were projected (their pilots said so)."""
        self.reference_remeasured = 0
        """Times the reference was measured again because the light changed for good."""
        self._times = StageTimes()

    @property
    def stage_times(self) -> StageTimes:
        """Time spent so far in each stage of the projections (a snapshot; see :class:`StageTimes`)."""
        return self._times

    def _add_times(self, encode_s: float = 0.0, device_s: float = 0.0, decode_s: float = 0.0, calls: int = 0) -> None:
        """Add one stage's (or one call's) time to :attr:`stage_times` (a new frozen snapshot each time)."""
        t = self._times
        self._times = StageTimes(
            t.encode_s + encode_s, t.device_s + device_s, t.decode_s + decode_s, t.device_calls + calls
        )

    def layout(self, n_features: int, signal_level: int | None = None) -> SplitLayout:
        """The split layout of n_features: the whole signal, or the signal dimmed to ``signal_level`` of L (the
        two-frame scheme's strong-reference layouts; the features and the reference on the same mirrors)."""
        key = (n_features, signal_level)
        if key not in self._layouts:
            info = self._opu.info
            self._layouts[key] = SplitLayout(
                n_features,
                info.dmd_width,
                info.dmd_height,
                reference_fraction=self.reference_fraction,
                reference_levels=min(REFERENCE_LEVELS, 1 << (info.dmd_height.bit_length() - 1)),
                signal_level=signal_level,
            )
        return self._layouts[key]

    def call_frames(self, n_rows: int, scheme: str = "four_frame") -> int:
        """Frames one device call of ``n_rows`` nonzero ternary rows sends: the rows' frames and the light pilots
        among them (one per sequence at most; see :mod:`opu_driver.opu.light`)."""
        return PilotPlan(n_rows, FRAMES_PER_TERNARY[scheme], self._opu._shortest_sequence_frames()).total_frames

    def _key(self, n_features: int, n_components: int) -> tuple:
        s = self._opu.camera_settings
        return (n_features, n_components, s.exposure_us, s.gain, s.pixel_format, self._opu.laser_power_mw)

    def calibration(self, n_features: int, n_components: int, refresh: bool = False) -> ReferenceCalibration:
        """The reference calibration for these sizes and settings, measured once (or again with refresh)."""
        key = self._key(n_features, n_components)
        if refresh or key not in self._calibrations:
            self._calibrations[key] = self._calibrate(n_features, n_components, key)
            self._forget_ranges(key)
        return self._calibrations[key]

    def _forget_ranges(self, key: tuple) -> None:
        """Drop the ranges measured against an earlier whole reference of these settings."""
        self._ranges = {k: v for k, v in self._ranges.items() if k[0] != key}
        self._signal_levels = {k: v for k, v in self._signal_levels.items() if k[0] != key}

    def install(self, n_features: int, n_components: int, calibration: ReferenceCalibration) -> None:
        """Use a stored calibration for these sizes under the current settings (instead of measuring one)."""
        key = self._key(n_features, n_components)
        calibration.key = key
        self._calibrations[key] = calibration
        self._forget_ranges(key)

    def _calibrate(self, n_features: int, n_components: int, key: tuple) -> ReferenceCalibration:
        layout = self.layout(n_features)
        n = self.calibration_frames
        probes = np.unique(np.linspace(0, n_features - 1, min(n_features, n)).astype(int))
        k = probes.size
        frames = np.zeros((2 * n + 2 * k, layout.n_table_features), dtype=np.uint8)
        frames[n : 2 * n, n_features:] = 1  # reference only
        frames[2 * n + np.arange(k), probes] = 1  # one feature with the reference ...
        frames[2 * n : 2 * n + k, n_features:] = 1
        frames[2 * n + k + np.arange(k), probes] = 1  # ... and without it
        raw = self._measure_steadily(frames, n, layout, n_components)
        full_scale = self._opu.full_scale_dn
        values = raw.astype(np.float32)
        dark_frames, reference_frames = values[:n], values[n : 2 * n]
        dark = dark_frames.mean(axis=0)
        reference_mean = reference_frames.mean(axis=0)
        reference = reference_mean - dark
        saturated = (raw[n : 2 * n] >= full_scale).any(axis=0) | (raw[2 * n : 2 * n + k] >= full_scale).any(axis=0)
        positive = reference > 0
        floor = self.min_reference * np.median(reference[positive]) if positive.any() else np.inf
        mask = ~saturated & positive & (reference >= floor)
        if not mask.any():
            raise AcquisitionError("no camera pixel has a usable reference: raise the exposure or laser power")
        # Probes give the scale of the effective matrix: z = I(f + r) - I(f) - |R r|^2 = 2 Re[conj(R r) R f] plus
        # noise, so z^2 / (4 |R r|^2) averages var(B entry) plus the noise of the two frames and the mean.
        z = values[2 * n : 2 * n + k] - values[2 * n + k :] - reference
        noise = reference_frames.var(axis=0) * (1 + 1 / n) + dark_frames.var(axis=0)
        variance = float(((z[:, mask] ** 2 - noise[mask]) / (4 * reference[mask])).mean())
        if variance <= 0:
            raise AcquisitionError("the signal features give no measurable light: check the laser and exposure")
        feature_dn = float((values[2 * n + k :][:, mask] - dark[mask]).mean())
        calibration = ReferenceCalibration(
            reference.astype(np.float32), dark.astype(np.float32), mask, variance, n, key, max(feature_dn, 0.0)
        )
        _log.info("linear-mode reference: %.1f%% of %d outputs usable", 100 * calibration.usable_fraction, n_components)
        return calibration

    def _measure_steadily(self, frames: np.ndarray, n: int, layout: SplitLayout, n_components: int) -> np.ndarray:
        """Camera values of the calibration frames (dark, reference, probes in this order), measured under steady
        light.

        A change of the light while the reference is measured would spoil the scale of every later call, silently.
        So the frames are measured twice, as separate device calls, and the reference frames go to the device
        spread among the probe frames, so that every stretch of a measurement holds some. A measurement is kept
        when its reference frames' totals over the outputs agree within ``_CALIBRATION_SPREAD`` (measured at most
        2% apart under steady light) and with those of the measurement before it; else it is measured again, at
        most ``_CALIBRATION_TRIES`` times in all.
        """
        order = _spread_order(frames.shape[0], n)
        previous: float | None = None
        spread = 0.0
        for _ in range(_CALIBRATION_TRIES):
            raw = self._opu.acquire(frames[order], layout, n_components)
            values = np.empty_like(raw)
            values[order] = raw
            totals = (values[n : 2 * n].astype(np.float64) - values[:n].mean(axis=0)).sum(axis=1)
            middle = float(np.median(totals))
            if middle <= 0:
                return values  # no light at all: the caller says what to check
            spread = float(np.ptp(totals) / middle)
            if spread > _CALIBRATION_SPREAD:
                previous = None
                _log.warning(
                    "the light moved while the linear-mode reference was measured (its frames %.0f%% apart): "
                    "measuring it again",
                    100 * spread,
                )
                continue
            if previous is not None:
                spread = abs(middle / previous - 1)
                if spread <= _CALIBRATION_SPREAD:
                    return values
                _log.warning(
                    "the light differed by %.0f%% between two measurements of the linear-mode reference: "
                    "measuring it again",
                    100 * spread,
                )
            previous = middle
        raise AcquisitionError(
            f"the light kept moving while the linear-mode reference was measured ({_CALIBRATION_TRIES} times, "
            f"{100 * spread:.0f}% apart): check that the laser is stable"
        )

    def project_ternary(
        self,
        plus: np.ndarray,
        minus: np.ndarray,
        n_components: int,
        scheme: str,
        max_call_bytes: int | None = None,
        report: bool = True,
    ) -> np.ndarray:
        """Real projections of e = plus - minus (binary, disjoint), float32 (batch, n_components).

        Rows go to the device in chunks of at most ``max_call_bytes`` (default ``DEFAULT_MAX_CALL_BYTES``) of
        working memory, counted by :func:`call_bytes`, so a very large input never needs all its frames and
        camera values at once. Each row depends only on its own frames, so chunking does not change results.
        """
        batch, n_features = plus.shape
        if report:
            self._clipped_in_call = [0, 0]
        out = np.zeros((batch, n_components), dtype=np.float32)
        nonzero = np.flatnonzero(plus.any(axis=1) | minus.any(axis=1))
        if nonzero.size == 0:
            return out  # all-zero errors project to zero: nothing to send
        per = FRAMES_PER_TERNARY[scheme]
        limit = DEFAULT_MAX_CALL_BYTES if max_call_bytes is None else int(max_call_bytes)
        gap = self._opu._shortest_sequence_frames()
        step = PilotPlan.most_vectors(limit // call_bytes(1, n_features, n_components), per, gap)
        if self._pending_restore is not None:  # an earlier call could not put the camera back
            self._restore_camera(self._pending_restore)
        settings = self._base_settings = self._opu.camera_settings
        self._range_exposure_us = settings.exposure_us  # where the camera is now (the caller may have changed it)
        try:
            try:
                clipped_count, clipped_size = self._project_groups(
                    plus, minus, nonzero, out, n_components, scheme, step
                )
            except _LightChanged:  # the reference is measured anew: project the call again as under this light
                try:
                    clipped_count, clipped_size = self._project_groups(
                        plus, minus, nonzero, out, n_components, scheme, step
                    )
                except _LightChanged:
                    raise AcquisitionError(
                        "the light changed for good twice within one call: check that the laser is stable"
                    ) from None
        finally:
            self._restore_camera(settings)
        self.saturated_outputs += clipped_count
        self._clipped_in_call[0] += clipped_count
        self._clipped_in_call[1] += clipped_size
        if report:
            self._report_clipped()
        return out

    def _report_clipped(self) -> None:
        """Log the outputs zeroed for saturation since the last report: once per user call, however many device
        calls it took."""
        clipped_count, clipped_size = self._clipped_in_call
        self._clipped_in_call = [0, 0]
        if not clipped_count:
            return
        share = clipped_count / clipped_size
        # Speckle intensity is exponential: a few saturated outputs are normal, many are a setting to change.
        level = logging.WARNING if share > _SATURATION_WARNING else logging.INFO
        _log.log(
            level,
            "%d of %d linear outputs (%.2g%%) came from saturated frames and were set to 0: lower "
            "the exposure, gain or laser power",
            clipped_count,
            clipped_size,
            100 * share,
        )

    def _project_groups(
        self,
        plus: np.ndarray,
        minus: np.ndarray,
        nonzero: np.ndarray,
        out: np.ndarray,
        n_components: int,
        scheme: str,
        step: int,
    ) -> tuple[int, int]:
        """Project the nonzero rows range by range into ``out``; returns (outputs zeroed, outputs made)."""
        n_features = plus.shape[1]
        calibration = self.calibration(n_features, n_components)
        settings = self._base_settings
        assert settings is not None
        clipped_count = clipped_size = 0
        groups = self._plan_ranges(plus, minus, nonzero, calibration, scheme)
        self.last_ranges = []
        while groups:
            where, group_rows = groups.pop(0)
            in_range = self._enter_range(n_features, n_components, calibration, where, settings)
            if in_range is None:  # this range changes the reference's or the signal's shape: plan without it
                groups = _merge_groups(groups, self._plan_ranges(plus, minus, group_rows, calibration, scheme))
                continue
            self.last_ranges.append((where, group_rows.size))
            for start in range(0, group_rows.size, step):
                rows = group_rows[start : start + step]
                projected, clipped, levels = self._project_rows(plus[rows], minus[rows], n_components, scheme, in_range)
                in_range = self._watch_light(
                    plus, minus, rows, projected, clipped, levels, n_components, scheme, in_range
                )
                out[rows] = projected
                clipped_count += int(clipped.sum())
                clipped_size += clipped.size
        for where, n_rows in self.last_ranges:  # counted once the call went through
            self.ranges_used[where] = self.ranges_used.get(where, 0) + n_rows
        return clipped_count, clipped_size

    def _plan_ranges(
        self,
        plus: np.ndarray,
        minus: np.ndarray,
        rows: np.ndarray,
        calibration: ReferenceCalibration,
        scheme: str,
    ) -> list[tuple[Range, np.ndarray]]:
        """Rows grouped by range, the whole reference and signal at the settings' exposure first.

        Four-frame: one group of all rows in that range without auto-ranging. Two-frame: each row's signal level
        is chosen even without auto-ranging (at the settings' exposure and the whole reference), as its error term
        asks of a bright vector; with auto-ranging its reference level and exposure too. Ranges found unusable for
        these settings are left out: their rows go to the whole reference and signal at the settings' exposure,
        which always works."""
        n_features = plus.shape[1]
        layout = self.layout(n_features)
        n_levels = layout.reference_levels
        whole = Range(n_levels, n_levels, 1.0)
        two_frame = scheme == "two_frame"
        if calibration.feature_dn <= 0 or not rows.size or not (self.auto_range or two_frame):
            return [(whole, rows)]
        key = calibration.key
        refused = {(k[1], k[2]) for k, v in self._ranges.items() if v is None and k[0] == key}
        bad_levels = {level for level, _ in refused if level != n_levels}
        levels = [j for j in range(1, n_levels + 1) if j not in bad_levels] if self.auto_range else [n_levels]
        signal_levels = None
        if two_frame and layout.rows_aligned:
            signal_levels = [m for m in range(1, n_levels) if self._signal_levels.get((key, m), True)]
        light = np.maximum(plus[rows].sum(axis=1), minus[rows].sum(axis=1)) * calibration.feature_dn
        usable = calibration.mask
        target = (self._opu.full_scale_dn - float(np.median(calibration.dark_dn[usable]))) / self.peak_factor
        settings = self._base_settings or self._opu.camera_settings
        exposure_us = float(settings.exposure_us or 1)
        if self.auto_range:
            low_us, high_us = self._opu.camera.geometry.exposure_range_us
            factor_range = (low_us / exposure_us, min(self.max_exposure_factor, high_us / exposure_us))
        else:
            factor_range = (1.0, 1.0)
        chosen = choose_ranges(
            light,
            float(calibration.reference_dn[usable].mean()),
            levels,
            n_levels,
            target,
            factor_range,
            signal_levels=signal_levels,
            ratio=TWO_FRAME_RATIO if two_frame else FOUR_FRAME_RATIO,
        )
        groups: dict[Range, list[int]] = {}
        for row, where in zip(rows, chosen, strict=True):
            if (where.level, int(round(exposure_us * where.factor))) in refused:
                where = Range(n_levels, where.signal_level, 1.0)
            groups.setdefault(where, []).append(int(row))
        order = sorted(groups, key=lambda where: (where != whole, where))
        return [(where, np.asarray(groups[where], dtype=np.int64)) for where in order]

    def _enter_range(
        self,
        n_features: int,
        n_components: int,
        calibration: ReferenceCalibration,
        where: Range,
        settings: CameraSettings,
    ) -> ReferenceCalibration | None:
        """Set the camera for a range and return its calibration (measured the first time), or None when its
        reference level does not keep the reference's shape or its signal level the signal's. The whole reference
        at the settings' exposure is ``calibration``."""
        layout = self.layout(n_features)
        n_levels = layout.reference_levels
        if where.signal_level != n_levels:
            checked = (calibration.key, where.signal_level)
            if checked not in self._signal_levels:  # refused levels are left out of the next plans
                self._signal_levels[checked] = self._signal_level_holds(
                    n_features, n_components, calibration, where.signal_level, settings
                )
            if not self._signal_levels[checked]:
                return None
        if where.level == n_levels and where.factor == 1.0:
            self._restore_camera(settings)
            in_range: ReferenceCalibration | None = calibration
        else:
            in_range = self._reference_range(n_features, n_components, calibration, where, settings)
        if in_range is None or where.signal_level == n_levels:
            return in_range
        return replace(in_range, signal_level=where.signal_level, signal_amplitude=where.signal_level / n_levels)

    def _reference_range(
        self,
        n_features: int,
        n_components: int,
        calibration: ReferenceCalibration,
        where: Range,
        settings: CameraSettings,
    ) -> ReferenceCalibration | None:
        """The camera set to the range's exposure, and the reference of its level there (measured the first
        time; None when that level does not keep the reference's shape)."""
        assert settings.exposure_us is not None
        exposure_us = int(round(settings.exposure_us * where.factor))
        key = (calibration.key, where.level, exposure_us)
        if key not in self._ranges:
            # A range's reference is measured against the whole one: first make sure the light is still the light
            # the whole one was measured under (else its change would pass into this range's scale unseen).
            self._restore_camera(settings)
            self._check_light(n_features, n_components, calibration)
        self._set_exposure(exposure_us, settings)
        if key not in self._ranges:
            actual = self._opu.camera_settings.exposure_us or exposure_us
            self._ranges[key] = self._measure_range(
                n_features, n_components, calibration, where.level, actual / settings.exposure_us
            )
        return self._ranges[key]

    def _set_exposure(self, exposure_us: int, settings: CameraSettings) -> None:
        """The camera at ``exposure_us`` (the frame time kept at least as much longer than it as the settings'),
        remembered to be put back to ``settings`` after the call."""
        assert settings.exposure_us is not None and settings.frame_time_us is not None
        if self._range_exposure_us == exposure_us:
            return
        margin = settings.frame_time_us - settings.exposure_us
        self._pending_restore = settings
        self._opu.configure_camera(
            exposure_us=exposure_us, frame_time_us=max(settings.frame_time_us, exposure_us + margin)
        )
        self._range_exposure_us = exposure_us
        self.exposure_changes += 1

    def _signal_level_holds(
        self,
        n_features: int,
        n_components: int,
        calibration: ReferenceCalibration,
        signal_level: int,
        settings: CameraSettings,
    ) -> bool:
        """Whether a signal level dims every feature's field to signal_level / L without changing its shape:
        measured once per whole reference, from all signal features ON at the level (exposed longer, by up to
        (L / level)^2, so that its frames are about as bright) against all of them ON whole at the settings'
        exposure. The layout gives each feature exactly that share of its mirrors on every L rows; optics that
        resolve finer than L rows would break it, and then the level is not used."""
        assert settings.exposure_us is not None
        whole_layout = self.layout(n_features)
        n_levels = whole_layout.reference_levels
        n = max(8, self.calibration_frames // 2)
        frames = np.zeros((n, whole_layout.n_table_features), dtype=np.uint8)
        frames[:, :n_features] = 1
        self._restore_camera(settings)
        whole = self._opu.acquire(frames, whole_layout, n_components, warn_saturated=False)
        whole_dn = whole.astype(np.float32).mean(axis=0) - calibration.dark_dn
        high_us = self._opu.camera.geometry.exposure_range_us[1]
        boost = min((n_levels / signal_level) ** 2, self.max_exposure_factor, high_us / settings.exposure_us)
        self._set_exposure(int(round(settings.exposure_us * boost)), settings)
        boost = (self._opu.camera_settings.exposure_us or settings.exposure_us) / settings.exposure_us
        both = np.concatenate([np.zeros_like(frames), frames])
        values = self._opu.acquire(both, self.layout(n_features, signal_level), n_components, warn_saturated=False)
        dimmed = values.astype(np.float32)
        dimmed_dn = dimmed[n:].mean(axis=0) - dimmed[:n].mean(axis=0)
        usable = calibration.mask & (whole < self._opu.full_scale_dn).all(axis=0)
        usable &= (values < self._opu.full_scale_dn).all(axis=0)
        expected = (signal_level / n_levels) ** 2 * boost
        gain = float(dimmed_dn[usable].mean() / whole_dn[usable].mean()) if usable.any() else 0.0
        correlation = float(np.corrcoef(dimmed_dn[usable], whole_dn[usable])[0, 1]) if gain > 0 else 0.0
        holds = correlation >= _MIN_LEVEL_CORRELATION and abs(gain / expected - 1) <= _SIGNAL_GAIN_TOLERANCE
        (_log.debug if holds else _log.info)(
            "signal level %d/%d: light %.4g (%.4g expected), map correlation %.5f%s",
            signal_level,
            n_levels,
            gain,
            expected,
            correlation,
            "" if holds else ": it changes the signal's shape and is not used",
        )
        return holds

    def _check_light(self, n_features: int, n_components: int, calibration: ReferenceCalibration) -> None:
        """Pilots of the whole reference at the settings' exposure: a light off by more than ``MIN_SHIFT`` from
        the whole reference's is a change for good (the reference is measured again and the call projected again)."""
        layout = self.layout(n_features)
        frames = np.zeros((4, layout.n_table_features), dtype=np.uint8)
        frames[:, n_features:] = 1
        shown = self._opu.acquire(frames, layout, n_components, warn_saturated=False)
        level = float(np.median(pilot_levels(shown, calibration.reference_dn, calibration.dark_dn, calibration.mask)))
        if abs(level - 1.0) > MIN_SHIFT:
            _log.warning(
                "the light changed by %.0f%% since the linear-mode reference was measured: measuring it again",
                100 * (level - 1.0),
            )
            self.reference_remeasured += 1
            self._remeasure(n_features, n_components)
            raise _LightChanged

    def _restore_camera(self, settings: CameraSettings) -> None:
        """Put the camera back to the settings' exposure and frame time (a no-op when it is there)."""
        current = self._opu.camera_settings
        if (current.exposure_us, current.frame_time_us) != (settings.exposure_us, settings.frame_time_us):
            self._opu.configure_camera(exposure_us=settings.exposure_us, frame_time_us=settings.frame_time_us)
            self.exposure_changes += 1
        self._pending_restore = None
        self._range_exposure_us = settings.exposure_us

    def _measure_range(
        self, n_features: int, n_components: int, calibration: ReferenceCalibration, level: int, factor: float
    ) -> ReferenceCalibration | None:
        """Dark and reference-at-``level`` frames at the camera's present exposure: the range's reference is the
        whole reference's map times their measured ratio, once the level is shown to keep its shape."""
        layout = self.layout(n_features)
        n = max(8, self.calibration_frames // 2)
        frames = np.zeros((2 * n, layout.n_table_features), dtype=np.uint8)
        frames[n:, n_features:] = layout.reference_bits(level)
        values = self._measure_steadily(frames, n, layout, n_components).astype(np.float32)
        dark = values[:n].mean(axis=0)
        reference = values[n:].mean(axis=0) - dark
        usable = calibration.mask
        whole = calibration.reference_dn[usable]
        gain = float(reference[usable].mean() / whole.mean())
        expected = (level / layout.reference_levels) ** 2 * factor
        correlation = float(np.corrcoef(reference[usable], whole)[0, 1]) if gain > 0 else 0.0
        _log.debug(
            "reference level %d at exposure x%.3g: light %.4g (%.4g expected), map correlation %.5f",
            level,
            factor,
            gain,
            expected,
            correlation,
        )
        if correlation < _MIN_LEVEL_CORRELATION or abs(gain / expected - 1) > _LEVEL_GAIN_TOLERANCE:
            _log.info(
                "reference level %d/%d changes the reference's shape (map correlation %.3f, light %.3g of %.3g "
                "expected): it is not used",
                level,
                layout.reference_levels,
                correlation,
                gain,
                expected,
            )
            return None
        return ReferenceCalibration(
            (calibration.reference_dn * gain).astype(np.float32),
            dark.astype(np.float32),
            calibration.mask,
            calibration.entry_variance,
            n,
            calibration.key,
            calibration.feature_dn * factor,
            level,
            factor,
        )

    def _watch_light(
        self,
        plus: np.ndarray,
        minus: np.ndarray,
        rows: np.ndarray,
        projected: np.ndarray,
        clipped: np.ndarray,
        levels: np.ndarray,
        n_components: int,
        scheme: str,
        calibration: ReferenceCalibration,
    ) -> ReferenceCalibration:
        """Project again (in place) the rows whose pilots say the light moved while they were projected.

        Rows still off after being projected again are projected again, up to ``_LIGHT_RERUNS`` times. A glitch of
        the light touches a few sequences, so the rows projected again come back on level in the main; when their
        median level stays off by more than ``MIN_SHIFT`` twice in a row (a re-run that fits in one sequence can meet
        another glitch), the light itself changed since the reference was measured: the reference is measured
        again (the matrix B keeps its scale, which the reference sets). With one range (four-frame without
        auto-ranging) the rows are projected with it; otherwise the ranges measured against the old reference are
        forgotten and ``_LightChanged`` makes the caller project this call's rows again under the new one, as a
        device calibrated under this light would. Rows still off after the last time raise AcquisitionError: they
        are never returned as if right.
        Returns the calibration in force afterwards.
        """
        moved = np.abs(levels - 1.0) > MIN_SHIFT
        off_in_a_row = 0
        shift = 0.0
        for _ in range(_LIGHT_RERUNS):
            if not moved.any():
                return calibration
            again = np.flatnonzero(moved)
            self.light_reruns += int(again.size)
            # A re-run small enough for one sequence can meet another glitch: twice off in a row is a change.
            if off_in_a_row >= 2:
                _log.warning(
                    "the light changed since the linear-mode reference was measured (%d vectors still off by a "
                    "median %.0f%% when projected again): measuring the reference again",
                    again.size,
                    100 * shift,
                )
                self.reference_remeasured += 1
                if self.auto_range or scheme == "two_frame":  # several ranges: the call starts again
                    self._remeasure(plus.shape[1], n_components)
                    raise _LightChanged
                calibration = self.calibration(plus.shape[1], n_components, refresh=True)
                off_in_a_row = -_LIGHT_RERUNS  # measured again once: a light still moving is an error below
            _log.warning("the light moved while %d vectors were projected: projecting them again", again.size)
            source = rows[again]
            redo, redo_clipped, redo_levels = self._project_rows(
                plus[source], minus[source], n_components, scheme, calibration
            )
            projected[again], clipped[again] = redo, redo_clipped
            # A glitch touches a few of the sequences that project these rows again; a change for good, all.
            shift = float(np.median(redo_levels)) - 1.0
            off_in_a_row = off_in_a_row + 1 if abs(shift) > MIN_SHIFT else 0
            moved = np.zeros_like(moved)
            moved[again[np.abs(redo_levels - 1.0) > MIN_SHIFT]] = True
        if moved.any():
            raise AcquisitionError(
                f"the light kept moving: {int(moved.sum())} vectors were still off its level after being projected "
                f"{_LIGHT_RERUNS} more times; check that the laser is stable"
            )
        return calibration

    def _remeasure(self, n_features: int, n_components: int) -> None:
        """The light changed for good: the whole reference measured again at the settings' exposure (it sets B's
        scale, as for a device calibrated under this light) and the ranges measured against the old one
        forgotten."""
        settings = self._base_settings
        assert settings is not None
        self._restore_camera(settings)
        self.calibration(n_features, n_components, refresh=True)  # forgets the ranges of the old one

    def _project_rows(
        self,
        p: np.ndarray,
        m: np.ndarray,
        n_components: int,
        scheme: str,
        calibration: ReferenceCalibration,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One device call for nonzero ternary rows, through the layout of the calibration's signal level:
        (projections, mask of outputs zeroed for saturation, each row's light level from the pilots shown with it)."""
        started = time.perf_counter()
        n_rows, n_features = p.shape
        layout = self.layout(n_features, calibration.signal_level)
        bits = layout.reference_bits(calibration.level)
        reference = np.broadcast_to(bits, (n_rows, bits.size))
        if scheme == "four_frame":
            parts = [
                np.hstack([p, reference]),
                np.hstack([p, 0 * reference]),
                np.hstack([m, reference]),
                np.hstack([m, 0 * reference]),
            ]
        else:
            parts = [np.hstack([p, reference]), np.hstack([m, reference])]
        per = FRAMES_PER_TERNARY[scheme]
        assert len(parts) == per
        pilot = np.zeros(layout.n_table_features, dtype=np.uint8)
        pilot[n_features:] = bits  # the reference alone
        plan = PilotPlan(n_rows, per, self._opu._shortest_sequence_frames())
        frames = plan.frames(np.stack(parts, axis=1).reshape(n_rows * per, layout.n_table_features), pilot)
        del parts
        encoded = time.perf_counter()
        shown = self._opu.acquire(frames, layout, n_components, warn_saturated=False)  # reported as zeroed outputs
        del frames
        acquired = time.perf_counter()
        usable = calibration.mask
        levels = plan.vector_levels(
            pilot_levels(shown[plan.pilot_rows], calibration.reference_dn, calibration.dark_dn, usable)
        )
        counts = shown[plan.vector_rows].reshape(n_rows, per, -1)
        del shown
        # A saturated frame breaks the difference: such outputs are set to 0, like masked ones, and counted.
        clipped = np.asarray((counts >= self._opu.full_scale_dn).any(axis=1))
        raw = counts.astype(np.float32)
        del counts
        scale = np.zeros(n_components, dtype=np.float32)
        # y / (2 |R r|) has entries of the calibrated variance: divide by its square root for unit variance, by the
        # square root of the exposure factor, which the cross term carries once more than |R r| does, and by the
        # signal level's share of each feature's field.
        scale[usable] = 1.0 / (
            2.0
            * calibration.signal_amplitude
            * np.sqrt(calibration.reference_dn[usable] * calibration.entry_variance * calibration.exposure_factor)
        )
        combine = combine_four if scheme == "four_frame" else combine_two
        projected = combine(np.ascontiguousarray(raw), scale)
        projected[clipped] = 0.0
        self._add_times(encoded - started, acquired - encoded, time.perf_counter() - acquired, 1)
        return projected, clipped, levels

    def project(self, E: np.ndarray, n_components: int, scheme: str, n_bits: int | None) -> np.ndarray:
        """Real projections of E (batch, n_features): ternary values directly, real values through bit planes."""
        return self.project_many([E], n_components, scheme, n_bits)[0]

    def project_many(
        self,
        batches: list[np.ndarray],
        n_components: int,
        scheme: str,
        n_bits: int | None,
        max_call_bytes: int | None = None,
    ) -> list[np.ndarray]:
        """Project several batches of the same width, each exactly as ``project`` would alone, in as few device
        calls as ``max_call_bytes`` allows (default ``DEFAULT_MAX_CALL_BYTES``; see :func:`call_bytes`).

        Each batch's bit-plane encoder is fitted on the whole batch (its own scale, as a direct call has), then
        rows are encoded, sent and decoded in chunks that fit the limit: rows of several batches share a call
        while they fit, a large batch is split across calls. A row's result depends only on its own frames and its
        own batch's encoder, so neither sharing nor splitting changes it. The OPU service coalesces its clients'
        requests through this.
        """
        limit = DEFAULT_MAX_CALL_BYTES if max_call_bytes is None else int(max_call_bytes)
        started = time.perf_counter()
        encoders = [_fit_encoder(E, n_bits) for E in batches]
        self._add_times(encode_s=time.perf_counter() - started)
        results = [np.zeros((E.shape[0], n_components), dtype=np.float32) for E in batches]
        if not batches:
            return results
        self._clipped_in_call = [0, 0]
        try:
            self._project_all(batches, encoders, results, n_components, scheme, limit)
        finally:
            self._report_clipped()
        return results

    def _project_all(
        self,
        batches: list[np.ndarray],
        encoders: list[BitPlaneEncoder | None],
        results: list[np.ndarray],
        n_components: int,
        scheme: str,
        limit: int,
    ) -> None:
        """Cut the batches into pieces that fit ``limit`` bytes a device call and project them."""
        frame_cost = call_bytes(FRAMES_PER_TERNARY[scheme], batches[0].shape[1], n_components)
        pieces: list[tuple[int, int, int]] = []  # (batch index, first row, end row) sharing the next call
        cost = 0
        for index, E in enumerate(batches):
            encoder = encoders[index]
            row_cost = frame_cost * (1 if encoder is None else encoder.n_bits)
            lo = 0
            while lo < E.shape[0]:
                take = (limit - cost) // row_cost
                if take < 1 and pieces:
                    self._project_pieces(pieces, batches, encoders, results, n_components, scheme, limit)
                    pieces, cost = [], 0
                    continue
                hi = min(E.shape[0], lo + max(1, take))
                pieces.append((index, lo, hi))
                cost += (hi - lo) * row_cost
                lo = hi
        if pieces:
            self._project_pieces(pieces, batches, encoders, results, n_components, scheme, limit)

    def _project_pieces(
        self,
        pieces: list[tuple[int, int, int]],
        batches: list[np.ndarray],
        encoders: list[BitPlaneEncoder | None],
        results: list[np.ndarray],
        n_components: int,
        scheme: str,
        limit: int,
    ) -> None:
        """Encode row ranges of several batches, project all their ternary rows in one call, decode each range
        into its batch's result."""
        started = time.perf_counter()
        encoded = [_encode_rows(batches[i][lo:hi], encoders[i]) for i, lo, hi in pieces]
        plus = np.concatenate([e[0] for e in encoded]) if len(encoded) > 1 else encoded[0][0]
        minus = np.concatenate([e[1] for e in encoded]) if len(encoded) > 1 else encoded[0][1]
        del encoded
        self._add_times(encode_s=time.perf_counter() - started)
        rows = self.project_ternary(plus, minus, n_components, scheme, max_call_bytes=limit, report=False)
        started = time.perf_counter()
        offset = 0
        for i, lo, hi in pieces:
            batch, encoder = hi - lo, encoders[i]
            if encoder is None:
                results[i][lo:hi] = rows[offset : offset + batch]
                offset += batch
            else:
                # Plane b carries bit b of |e| on its positive and negative parts: a ternary vector. Decoding weighs
                # plane b by 2^b (its negative slot stays 0: the sign is already in the ternary projection).
                n_planes = encoder.n_bits
                projected = np.zeros((n_planes, 2, batch, n_components), dtype=np.float32)
                projected[:, 0] = rows[offset : offset + n_planes * batch].reshape(n_planes, batch, n_components)
                results[i][lo:hi] = encoder.decode(projected).astype(np.float32)
                offset += n_planes * batch
        self._add_times(decode_s=time.perf_counter() - started)


DEFAULT_MAX_CALL_BYTES = 256 * 1024 * 1024
"""Default working-memory bound of one device call of the linear mode (see :func:`call_bytes`)."""


def call_bytes(frames: int, n_features: int, n_components: int) -> int:
    """Working memory of ``frames`` DMD frames in a linear-mode call, in bytes: each frame's uint8 table row
    (n_features + REFERENCE_LEVELS) and its camera values as float32 (4 x n_components). Transient copies (the raw
    counts, the combined rows) add at most about as much again; the bound is for sizing chunks, not an exact
    account."""
    return int(frames) * (int(n_features) + REFERENCE_LEVELS + 4 * int(n_components))


def _fit_encoder(E: np.ndarray, n_bits: int | None) -> BitPlaneEncoder | None:
    """The bit-plane encoder of a batch, fitted on the whole batch; None when E is ternary and n_bits is None."""
    if n_bits is None and np.isin(E, (-1, 0, 1)).all():
        return None
    return BitPlaneEncoder(n_bits or 8).fit(E)


def _encode_rows(E: np.ndarray, encoder: BitPlaneEncoder | None) -> tuple[np.ndarray, np.ndarray]:
    """Ternary rows (plus, minus) of E: E itself when ternary, else its bit planes (plane-major)."""
    if encoder is None:
        return (E > 0).astype(np.uint8), (E < 0).astype(np.uint8)
    planes = encoder.transform(E)
    n_planes, _, batch, n_features = planes.shape
    return (planes[:, 0].reshape(n_planes * batch, n_features), planes[:, 1].reshape(n_planes * batch, n_features))


def _spread_order(n_frames: int, n: int) -> np.ndarray:
    """The order the calibration frames are shown in: the n dark frames first, then the n reference frames
    (rows n..2n) spread evenly among the probe frames (rows 2n..), so that every stretch of the measurement holds
    some reference frames to tell whether the light held."""
    probes = np.arange(2 * n, n_frames)
    slots = np.linspace(0, probes.size, n, endpoint=False).round().astype(int) if n else np.zeros(0, dtype=int)
    spread = np.insert(probes, slots, np.arange(n, 2 * n))
    return np.concatenate([np.arange(n), spread])
