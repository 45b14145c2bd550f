"""The plan of a calibration run: the projection's sizes and the options of the routines (``opu calibrate``).

One frozen object, checked when it is built, so a bad size or option is refused before a device is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import InvalidInputError, OpuError
from ..validation import Validated, setting
from .dark import METHODS as DARK_METHODS
from .matrix import PROBES as MATRIX_PROBES

__all__ = ["CalibrationPlan"]


@dataclass(frozen=True)
class CalibrationPlan(Validated):
    """The sizes and options the routines use (the projection the device is calibrated for).

    Attributes:
        n_features: signal features of the projection (linear mode: beside the reference).
        n_components: outputs (camera pixels of ``opu.roi_for(n_components)``).
        dark_frames: frames averaged by the dark routine; dark_method: "shutter" or "laser_off".
        max_saturated_fraction: the exposure routine's limit on saturated pixels of the brightest frame.
        matrix_probes: "hadamard" or "random".
        drift_probes, drift_checks: probe vectors of the drift monitor, and checks after its baseline (1,000
            frames apart).

    Raises:
        InvalidInputError: a field that is not what it says (naming the field), when the plan is built.
    """

    _error: ClassVar[type[OpuError]] = InvalidInputError

    n_features: int = setting(1000, kind="int", low=1)
    n_components: int = setting(4096, kind="int", low=1)
    dark_frames: int = setting(64, kind="int", low=1)
    dark_method: str = setting("shutter", kind="choice", choices=DARK_METHODS)
    max_saturated_fraction: float = setting(1e-3, kind="number", low=0.0)
    matrix_probes: str = setting("hadamard", kind="choice", choices=MATRIX_PROBES)
    drift_probes: int = setting(32, kind="int", low=1)
    drift_checks: int = setting(4, kind="int", low=1)

    def _check(self) -> None:
        if not self.max_saturated_fraction < 1:
            raise self._error(f"max_saturated_fraction must be within [0, 1), got {self.max_saturated_fraction}")
