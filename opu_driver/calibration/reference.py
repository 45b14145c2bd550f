"""Reference calibration of the linear mode: the reference intensity |R r|^2 per output, the pixel mask and the scale.

``Opu.linear_transform`` measures this by itself the first time a size is used; running it as a calibration routine
makes it explicit, stores it, and lets ``opu_driver.open`` install it so that the first projection of a session
costs no calibration frames and uses the same effective matrix as the session that calibrated (see linear.py for
the physics: outputs are divided by 2 sqrt(|R r|^2 var), and outputs whose reference is weak or saturated are masked).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import InvalidInputError
from ..opu import Opu, ReferenceCalibration, Roi
from ..validation import check_int
from ._checks import check_components, check_count
from .exposure import ExposureResult
from .registry import register_routine
from .result import CalibrationResult, region, stored_property, summarised, summarised_property

if TYPE_CHECKING:
    from .plan import CalibrationPlan

__all__ = ["ReferenceResult", "measure_reference", "install_reference", "reference_layout"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReferenceResult(CalibrationResult):
    """The linear mode's reference for ``n_features`` signal features and ``n_components`` outputs.

    Attributes:
        calibration: what the linear mode uses (reference_dn, dark_dn, mask, entry_variance).
        roi: the camera region of the outputs.
    """

    routine: ClassVar[str] = "reference"

    n_features: int = summarised()
    n_components: int = summarised()
    roi: Roi = region()
    # mypy's dataclass plugin takes a call to the field helpers above for a default; they declare none, so a
    # field without a default may follow them (the dataclass itself checks this at class creation).
    calibration: ReferenceCalibration  # type: ignore[misc]

    @summarised_property(digits=4)
    def usable_fraction(self) -> float:
        """Share of the outputs the mask keeps."""
        return self.calibration.usable_fraction

    @summarised_property(convert=float)
    def entry_variance(self) -> float:
        """The scale of every output, at full precision."""
        return self.calibration.entry_variance

    @summarised_property(convert=float)
    def feature_dn(self) -> float:
        """Mean intensity of one signal feature alone (DN): the light auto-ranging plans with."""
        return self.calibration.feature_dn

    @summarised_property(digits=3)
    def reference_median_dn(self) -> float:
        """Median reference intensity of the usable outputs (0 when none is usable)."""
        usable = self.calibration.reference_dn[self.calibration.mask]
        return float(np.median(usable)) if usable.size else 0.0

    @summarised_property()
    def n_frames(self) -> int:
        """Frames averaged for the reference and the dark."""
        return self.calibration.n_frames

    @stored_property()
    def reference_dn(self) -> np.ndarray:
        return self.calibration.reference_dn

    @stored_property()
    def dark_dn(self) -> np.ndarray:
        return self.calibration.dark_dn

    @stored_property()
    def mask(self) -> np.ndarray:
        return self.calibration.mask


def reference_layout(opu: Opu, n_features: int):
    """The split layout (signal beside the reference) the linear mode uses for ``n_features``."""
    return opu.linear_mode.layout(n_features)


def _check_sizes(opu: Opu, n_features: int, n_components: int) -> None:
    check_int(n_features, "n_features", low=1)
    check_components(opu, n_components)


def measure_reference(opu: Opu, n_features: int, n_components: int, n_frames: int = 32) -> ReferenceResult:
    """Measure the linear-mode reference for these sizes under the current settings and keep it in use.

    ``n_frames`` dark and reference-only frames are averaged (plus one probe per feature, up to n_frames, for the
    scale of the matrix entries).

    Raises:
        InvalidInputError: bad sizes (before anything is sent), a signal that does not fit beside the reference, or
            no usable reference light.
    """
    _check_sizes(opu, n_features, n_components)
    check_count(n_frames, "n_frames", 2)
    linear = opu.linear_mode
    linear.layout(n_features)  # refuses a signal that does not fit beside the reference, before any frame
    previous = linear.calibration_frames
    linear.calibration_frames = int(n_frames)
    try:
        calibration = linear.calibration(n_features, n_components, refresh=True)
    finally:
        linear.calibration_frames = previous
    result = ReferenceResult(int(n_features), int(n_components), opu.roi_for(n_components), calibration)
    _log.info("reference: %s", result.summary())
    return result


def install_reference(opu: Opu, summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> bool:
    """Install a stored reference (a record's ``reference`` summary and arrays) in the Opu's linear mode.

    It is used only while the camera settings and laser power are those of the Opu now (the linear mode keys its
    calibrations by them), so the caller applies the record's settings first. Returns False, with a log line,
    when the stored arrays do not fit the device (a record of another geometry).
    """
    key, name = ReferenceResult.summary_key, ReferenceResult.array_key
    n_features, n_components = int(summary[key.n_features]), int(summary[key.n_components])
    reference, dark, mask = arrays[name.reference_dn], arrays[name.dark_dn], arrays[name.mask]
    n_pixels = opu.info.camera_width * opu.info.camera_height
    if not (
        1 <= n_components <= n_pixels
        and reference.shape == dark.shape == mask.shape == (n_components,)
        and mask.dtype == np.bool_
        and float(summary[key.entry_variance]) > 0
    ):
        _log.warning("stored reference does not fit this device; it is not used")
        return False
    linear = opu.linear_mode
    try:
        linear.layout(n_features)
    except InvalidInputError as exc:
        _log.warning("stored reference not used: %s", exc)
        return False
    linear.install(
        n_features,
        n_components,
        ReferenceCalibration(
            reference.astype(np.float32),
            dark.astype(np.float32),
            mask.copy(),
            float(summary["entry_variance"]),
            int(summary.get("n_frames", 0)),
            feature_dn=float(summary.get("feature_dn", 0.0)),  # records from before auto-ranging lack it
        ),
    )
    return True


@register_routine(ReferenceResult, position=50, stale_after=(ExposureResult,))
def _from_plan(opu: Opu, plan: CalibrationPlan, earlier: Mapping[str, Any], progress: bool) -> ReferenceResult:
    """The reference step of ``calibrate``: the linear mode's reference of the plan's sizes."""
    return measure_reference(opu, plan.n_features, plan.n_components)
