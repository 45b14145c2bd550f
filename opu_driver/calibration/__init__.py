"""Calibration of an OPU from scripts: routines built on the public device API, and the calibration store.

The store (:mod:`opu_driver.calibration.store`) keeps each calibration as a versioned JSON + .npz pair,
written atomically and verified on reading, so ``opu_driver.open`` can find and apply the latest one.
"""
from opu_driver.calibration.apply import AppliedCalibration, CalibrationWarning, default_store_dir
from opu_driver.calibration.dark import DarkResult, measure_dark
from opu_driver.calibration.latency import LatencyResult, measure_latency
from opu_driver.calibration.reference import ReferenceResult, measure_reference
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
