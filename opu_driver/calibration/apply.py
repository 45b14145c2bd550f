"""Finding and applying a stored calibration when an Opu opens.

``opu_driver.open(url)`` looks in the default calibration store (``$OPU_CALIBRATION_DIR``, else
``$XDG_DATA_HOME/opu-driver/calibrations``, else ``~/.local/share/opu-driver/calibrations``) for the newest record
of the device (by serial number) whose settings match the settings the caller gave explicitly, and applies it:

1. camera settings (exposure, gain, pixel format, frame time) and laser power the caller did not set;
2. the DMD-to-camera lag (the acquisition starts from it instead of learning it);
3. linear-mode references, so ``linear_transform`` uses the calibrated effective matrix without new frames;
4. a drift check: the stored probe set is projected again and compared with the stored baseline.

It warns (:class:`CalibrationWarning`) when the record is older than ``calibration_max_age_s`` or the drift check
fails. ``calibration=None`` opens without any of this; ``calibration=PATH`` names a store directory or one record.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..opu import Opu, PixelFormat
from .drift import DriftResult, check_drift
from .reference import ReferenceResult, install_reference
from .store import CalibrationError, CalibrationRecord, CalibrationStore

__all__ = [
    "CalibrationWarning",
    "AppliedCalibration",
    "default_store_dir",
    "find_record",
    "apply_record",
    "SETTING_KEYS",
    "record_settings",
]

_log = logging.getLogger(__name__)

# The settings a record is taken under and matched by.
SETTING_KEYS = ("exposure_us", "frame_time_us", "gain", "pixel_format", "laser_power_mw")


class CalibrationWarning(UserWarning):
    """A calibration that is old, taken under other firmware, or that a drift check says no longer holds."""


@dataclass(frozen=True)
class AppliedCalibration:
    """What ``open`` applied from a record, and what its drift check said (None when not run)."""

    record: CalibrationRecord
    applied: tuple[str, ...]
    drift_correlation: float | None = None
    drift_threshold: float | None = None
    drifted: bool = False
    warnings: tuple[str, ...] = field(default=())


def default_store_dir() -> Path:
    """Where ``open`` and ``opu calibrate`` keep calibrations unless told otherwise."""
    explicit = os.environ.get("OPU_CALIBRATION_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "opu-driver" / "calibrations"


def record_settings(opu: Opu) -> dict[str, Any]:
    """The Opu's current settings as a record stores them."""
    camera = opu.camera_settings
    assert camera.pixel_format is not None  # an open camera's settings are complete
    return {
        "exposure_us": camera.exposure_us,
        "frame_time_us": camera.frame_time_us,
        "gain": camera.gain,
        "pixel_format": camera.pixel_format.name,
        "laser_power_mw": opu.laser_power_mw,
    }


def find_record(opu: Opu, source: str | os.PathLike[str], explicit: dict[str, Any]) -> CalibrationRecord | None:
    """The record to apply: ``source`` is "auto" (the default store), a store directory, or a record's JSON file.

    ``explicit`` are the settings the caller gave (record keys); a record must match them.

    Raises:
        CalibrationError: a named record file that is unreadable, corrupt, or of another device.
    """
    serial = opu.info.serial_number
    path = default_store_dir() if source == "auto" else Path(source).expanduser()
    if path.suffix == ".json" or path.is_file():
        record = CalibrationStore(path.parent).load(path)
        if record.serial_number != serial:
            raise CalibrationError(f"{path} is a calibration of {record.serial_number}, not of {serial}")
        mismatched = {k: (record.settings.get(k), v) for k, v in explicit.items() if record.settings.get(k) != v}
        if mismatched:
            raise CalibrationError(f"{path} was taken under other settings (stored, asked): {mismatched}")
        return record
    if not path.is_dir():
        if source != "auto":
            raise CalibrationError(f"no calibration store at {path}")
        return None
    return CalibrationStore(path).latest(serial, explicit)


def apply_record(
    opu: Opu,
    record: CalibrationRecord,
    *,
    explicit: dict[str, Any],
    drift_check: bool = True,
    max_age_s: float = 7 * 86400.0,
) -> AppliedCalibration:
    """Apply ``record`` to an open Opu (see the module docstring) and return what was applied."""
    applied: list[str] = []
    notes: list[str] = []
    info = opu.info
    if record.firmware_version != info.firmware_version:
        notes.append(
            f"calibration taken under firmware {record.firmware_version}; the device runs "
            f"{info.firmware_version}: recalibrate"
        )
    age_s = record.age_s()
    if age_s > max_age_s:
        notes.append(
            f"calibration is {age_s / 86400:.1f} days old (limit {max_age_s / 86400:.1f}): recalibrate "
            "(opu calibrate all)"
        )
    stored = record.settings
    camera_changes = {
        k: stored[k]
        for k in ("exposure_us", "frame_time_us", "gain", "pixel_format")
        if k not in explicit and stored.get(k) is not None
    }
    if camera_changes:
        if "pixel_format" in camera_changes:
            camera_changes["pixel_format"] = PixelFormat[camera_changes["pixel_format"]]
        opu.configure_camera(**camera_changes)
        applied.append("camera")
    if "laser_power_mw" not in explicit and stored.get("laser_power_mw") is not None:
        if stored["laser_power_mw"] != opu.laser_power_mw:
            opu.set_laser_power_mw(float(stored["laser_power_mw"]))
        applied.append("laser_power")
    latency = record.results.get("latency")
    if (
        latency
        and isinstance(latency.get("lag_frames"), int)
        and 0 <= latency["lag_frames"] <= opu.settings.max_lag_frames
    ):
        opu.lag_frames = latency["lag_frames"]
        applied.append("latency")
    if ReferenceResult.routine in record.results:
        arrays = {
            name.split("/", 1)[1]: value
            for name, value in record.arrays.items()
            if name.startswith(ReferenceResult.routine + "/")
        }
        try:
            if install_reference(opu, record.results[ReferenceResult.routine], arrays):
                applied.append("reference")
        except (KeyError, ValueError, TypeError) as exc:
            _log.warning("stored reference not used: %s", exc)
    correlation = threshold = None
    drifted = False
    drift = record.results.get(DriftResult.routine)
    key, drift_arrays = DriftResult.summary_key, DriftResult.record_array
    if drift_check and drift and drift_arrays.probes in record.arrays and drift_arrays.baseline in record.arrays:
        sample = check_drift(
            opu,
            record.arrays[drift_arrays.probes],
            record.arrays[drift_arrays.baseline],
            float(drift[key.threshold]),
            str(drift.get(key.scheme, "four_frame")),
        )
        correlation, threshold, drifted = sample.correlation, float(drift[key.threshold]), sample.drifted
        applied.append("drift_check")
        if drifted:
            notes.append(
                f"drift check failed: the probes correlate at {correlation:.4f} with the stored "
                f"baseline (threshold {threshold:.4f}): recalibrate (opu calibrate all)"
            )
    for note in notes:
        warnings.warn(f"{record.path or 'calibration'}: {note}", CalibrationWarning, stacklevel=5)
    _log.info("applied calibration %s: %s", record.path, ", ".join(applied) or "nothing")
    return AppliedCalibration(record, tuple(applied), correlation, threshold, drifted, tuple(notes))
