"""Calibration of an OPU from scripts: routines built on the public device API, and the calibration store.

The store (:mod:`opu_driver.calibration.store`) keeps each calibration as a versioned JSON + .npz pair,
written atomically and verified on reading, so ``opu_driver.open`` can find and apply the latest one.
"""

from opu_driver.calibration.apply import AppliedCalibration, CalibrationWarning, default_store_dir
from opu_driver.calibration.dark import DarkResult, measure_dark
from opu_driver.calibration.drift import DriftMonitor, DriftResult, DriftSample, check_drift, measure_drift
from opu_driver.calibration.exposure import ExposureResult, tune_exposure
from opu_driver.calibration.fidelity import FidelityResult, FidelityRow, measure_fidelity
from opu_driver.calibration.latency import LatencyResult, measure_latency
from opu_driver.calibration.matrix import MatrixResult, estimate_matrix
from opu_driver.calibration.reference import ReferenceResult, measure_reference
from opu_driver.calibration.report import ReportUnavailableError, panels_for, render_report
from opu_driver.calibration.roi import RoiResult, measure_roi
from opu_driver.calibration.run import ROUTINES, CalibrationPlan, calibrate, summary_table
from opu_driver.calibration.store import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CalibrationError,
    CalibrationRecord,
    CalibrationStore,
    CalibrationVersionError,
    CorruptCalibrationError,
)

__all__ = [
    "AppliedCalibration",
    "CalibrationWarning",
    "default_store_dir",
    "DriftMonitor",
    "DriftResult",
    "DriftSample",
    "check_drift",
    "measure_drift",
    "ExposureResult",
    "tune_exposure",
    "FidelityResult",
    "FidelityRow",
    "measure_fidelity",
    "MatrixResult",
    "estimate_matrix",
    "ReportUnavailableError",
    "panels_for",
    "render_report",
    "RoiResult",
    "measure_roi",
    "ReferenceResult",
    "measure_reference",
    "ROUTINES",
    "CalibrationPlan",
    "calibrate",
    "summary_table",
    "DarkResult",
    "measure_dark",
    "LatencyResult",
    "measure_latency",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CalibrationError",
    "CalibrationRecord",
    "CalibrationStore",
    "CalibrationVersionError",
    "CorruptCalibrationError",
]
