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

Nothing of a record is applied before all of it is checked (:func:`check_record`): its settings by the driver's
rules and the device's limits (the camera's ranges, the laser's maximum), and every result field the steps above
use (the lag, the reference's sizes and arrays, the drift threshold, scheme, probes and baseline). A record that
fails is skipped with one warning naming its file and the reason, and the next older matching record is tried;
named explicitly, it is refused with :class:`~opu_driver.calibration.store.CalibrationError`. A well-formed
reference or drift baseline sized for another geometry (a record of the emulator opened with other options) is
left out with a log line, and the rest is applied.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigurationError, InvalidInputError
from ..opu import PROJECTION_SCHEMES, CameraSettings, Opu, PixelFormat
from ..validation import check_choice, check_int, check_number, is_int
from ._checks import MAX_COUNT
from .drift import DriftResult, check_drift, check_drift_record
from .latency import LatencyResult
from .reference import ReferenceResult, install_reference
from .store import SETTING_KEYS, CalibrationError, CalibrationRecord, CalibrationStore, check_record_settings

__all__ = [
    "CalibrationWarning",
    "AppliedCalibration",
    "default_store_dir",
    "find_record",
    "newest_applicable",
    "check_record",
    "apply_record",
    "SETTING_KEYS",
    "record_settings",
]

_log = logging.getLogger(__name__)

_CAMERA_KEYS = ("exposure_us", "frame_time_us", "gain", "pixel_format")


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


@dataclass(frozen=True)
class _Plan:
    """What applying a record will do, worked out and checked before anything is changed.

    Attributes:
        camera: camera settings to write (pixel format as a PixelFormat); empty when none.
        laser_power_mw: the laser setpoint to write, or None.
        lag_frames: the lag to start from, or None.
        reference: (summary, arrays by plain name) of the linear-mode reference to install, or None.
        drift: (probes int8, baseline float32, threshold, scheme) of the drift check, or None.
        left_out: parts of the record not applied because they do not fit the Opu as opened, in words.
    """

    camera: dict[str, Any]
    laser_power_mw: float | None
    lag_frames: int | None
    reference: tuple[dict[str, Any], dict[str, np.ndarray]] | None
    drift: tuple[np.ndarray, np.ndarray, float, str] | None
    left_out: tuple[str, ...]


def _where(record: CalibrationRecord) -> str:
    """How messages name a record: its file, or its device when it is not stored."""
    return str(record.path) if record.path is not None else f"calibration of {record.serial_number}"


def check_record(opu: Opu, record: CalibrationRecord, explicit: Mapping[str, Any] | None = None) -> None:
    """Check that ``record`` can be applied to ``opu`` as :func:`apply_record` would, without changing anything.

    ``explicit`` are the settings the caller gave (record keys; they are not taken from the record). Checked: the
    stored settings by the rules of :class:`~opu_driver.opu.OpuSettings`, then against the camera's ranges and the
    laser's maximum; the creation time; the lag (an integer >= 0); the reference's sizes, entry variance and its
    three arrays (shape (n_components,), real values and a boolean mask); the drift baseline's threshold (-1..1),
    scheme, probes and baseline (see :func:`~opu_driver.calibration.drift.check_drift_record`) and their sizes
    against its summary. The only traffic is reading the laser's maximum when the record sets a laser power.

    Raises:
        CalibrationError: naming the record's file and what is wrong.
    """
    _plan(opu, record, {} if explicit is None else dict(explicit))


def _plan(opu: Opu, record: CalibrationRecord, explicit: Mapping[str, Any]) -> _Plan:
    """The checked plan of applying ``record`` (see :func:`check_record`); CalibrationError when it cannot be."""
    where = _where(record)
    if not isinstance(record.settings, Mapping) or not isinstance(record.results, Mapping):
        raise CalibrationError(f"{where}: settings and results must be mappings")
    check_record_settings(record.settings, where)
    if not all(isinstance(v, Mapping) for v in record.results.values()):
        raise CalibrationError(f"{where}: every routine's results must be a mapping")
    if not isinstance(record.created, datetime) or record.created.utcoffset() is None:
        raise CalibrationError(f"{where}: created must be a timezone-aware datetime")
    left_out: list[str] = []
    try:
        return _Plan(
            camera=_planned_camera(opu, record, explicit),
            laser_power_mw=_planned_laser(opu, record, explicit),
            lag_frames=_planned_lag(opu, record, left_out),
            reference=_planned_reference(opu, record, left_out),
            drift=_planned_drift(opu, record, left_out),
            left_out=tuple(left_out),
        )
    except (ConfigurationError, InvalidInputError) as exc:  # CalibrationError is a ConfigurationError
        raise CalibrationError(f"{where}: {exc}") from None


def _planned_camera(opu: Opu, record: CalibrationRecord, explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The record's camera settings the caller did not give, checked against the camera's own ranges."""
    stored = record.settings
    changes = {k: stored[k] for k in _CAMERA_KEYS if k not in explicit and stored.get(k) is not None}
    if "pixel_format" in changes:  # a name of PixelFormat, in any case (check_record_settings saw to it)
        changes["pixel_format"] = PixelFormat[changes["pixel_format"].upper()]
    if changes:
        try:
            opu.camera.validate(CameraSettings(**changes))
        except ConfigurationError as exc:
            raise CalibrationError(f"the camera cannot take the stored settings: {exc}") from None
    return changes


def _planned_laser(opu: Opu, record: CalibrationRecord, explicit: Mapping[str, Any]) -> float | None:
    """The record's laser power, unless the caller gave one, checked against the laser's maximum."""
    power = record.settings.get("laser_power_mw")
    if "laser_power_mw" in explicit or power is None:
        return None
    maximum = opu.controller.laser_power_max_mw
    return check_number(power, "stored laser_power_mw", low=0.0, high=maximum, error=CalibrationError)


def _planned_lag(opu: Opu, record: CalibrationRecord, left_out: list[str]) -> int | None:
    """The stored lag: an integer >= 0; one above the Opu's ``max_lag_frames`` is left out."""
    latency = record.results.get(LatencyResult.routine)
    key = LatencyResult.summary_key.lag_frames
    if latency is None or latency.get(key) is None:
        return None
    lag = check_int(latency[key], f"{LatencyResult.routine} {key}", low=0, error=CalibrationError)
    if lag > opu.settings.max_lag_frames:
        left_out.append(f"stored lag {lag} not used: above max_lag_frames={opu.settings.max_lag_frames}")
        return None
    return lag


def _record_vector(record: CalibrationRecord, name: str, length: int, kinds: str) -> np.ndarray:
    """The record's array ``name``, which must be of shape (length,) and of a dtype kind among ``kinds``."""
    array = record.arrays.get(name)
    if not isinstance(array, np.ndarray) or array.shape != (length,) or array.dtype.kind not in kinds:
        found = "missing" if array is None else f"{getattr(array, 'dtype', type(array).__name__)}"
        found += f"{list(array.shape)}" if isinstance(array, np.ndarray) else ""
        raise CalibrationError(f"array {name} must have shape ({length},) and a dtype of kind {kinds!r}: {found}")
    return array


def _fits_linear_mode(opu: Opu, n_features: int, n_components: int) -> str | None:
    """Why the linear mode of ``opu`` cannot take these sizes (a record of another geometry), or None."""
    n_pixels = opu.info.camera_width * opu.info.camera_height
    if n_components > n_pixels:
        return f"{n_components} outputs, the camera has {n_pixels} pixels"
    try:
        opu.linear_mode.layout(n_features)
    except InvalidInputError as exc:
        return str(exc)
    return None


def _planned_reference(
    opu: Opu, record: CalibrationRecord, left_out: list[str]
) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """The stored linear-mode reference, checked; left out when sized for another geometry."""
    summary = record.results.get(ReferenceResult.routine)
    if summary is None:
        return None
    key, name = ReferenceResult.summary_key, ReferenceResult.record_array
    n_features = check_int(summary.get(key.n_features), "reference n_features", low=1, error=CalibrationError)
    n_components = check_int(summary.get(key.n_components), "reference n_components", low=1, error=CalibrationError)
    check_number(
        summary.get(key.entry_variance), "reference entry_variance", low=0.0, low_open=True, error=CalibrationError
    )
    n_frames = summary.get(key.n_frames)
    if n_frames is not None:
        check_int(n_frames, "reference n_frames", low=0, error=CalibrationError)
    arrays = {
        ReferenceResult.array_key.reference_dn: _record_vector(record, name.reference_dn, n_components, "iuf"),
        ReferenceResult.array_key.dark_dn: _record_vector(record, name.dark_dn, n_components, "iuf"),
        ReferenceResult.array_key.mask: _record_vector(record, name.mask, n_components, "b"),
    }
    misfit = _fits_linear_mode(opu, n_features, n_components)
    if misfit is not None:
        left_out.append(f"stored reference not used: {misfit}")
        return None
    return dict(summary), arrays


def _planned_drift(
    opu: Opu, record: CalibrationRecord, left_out: list[str]
) -> tuple[np.ndarray, np.ndarray, float, str] | None:
    """The stored drift baseline, checked; left out when sized for another geometry."""
    summary = record.results.get(DriftResult.routine)
    if summary is None:
        return None
    key, name = DriftResult.summary_key, DriftResult.record_array
    threshold = check_number(summary.get(key.threshold), "drift threshold", low=-1.0, high=1.0, error=CalibrationError)
    scheme = check_choice(
        summary.get(key.scheme, "four_frame"), "drift scheme", PROJECTION_SCHEMES, error=CalibrationError
    )
    probes, baseline = record.arrays.get(name.probes), record.arrays.get(name.baseline)
    if not isinstance(probes, np.ndarray) or not isinstance(baseline, np.ndarray):
        raise CalibrationError(f"the drift baseline needs the arrays {name.probes} and {name.baseline}")
    if probes.ndim != 2 or baseline.ndim != 2 or not 2 <= probes.shape[0] <= MAX_COUNT:
        raise CalibrationError(
            f"drift probes {list(probes.shape)} and baseline {list(baseline.shape)} must be (n_probes, n_features) "
            f"and (n_probes, n_components) with 2..{MAX_COUNT} probes"
        )
    for size_key, size in ((key.n_features, probes.shape[1]), (key.n_components, baseline.shape[1])):
        stated = summary.get(size_key)
        if stated is not None and not (is_int(stated) and stated == size):
            raise CalibrationError(f"drift {size_key}={stated!r} disagrees with its arrays ({size})")
    misfit = _fits_linear_mode(opu, probes.shape[1], baseline.shape[1])
    if misfit is not None:
        left_out.append(f"stored drift baseline not checked: {misfit}")
        return None
    try:
        probes, baseline = check_drift_record(opu, probes, baseline, threshold, scheme)
    except InvalidInputError as exc:
        raise CalibrationError(f"drift baseline: {exc}") from None
    return probes, baseline, threshold, scheme


def newest_applicable(opu: Opu, store: CalibrationStore, explicit: Mapping[str, Any]) -> CalibrationRecord | None:
    """The newest record of ``store`` for the Opu's device, matching ``explicit``, that passes :func:`check_record`.

    Records that cannot be read or verified (the store says why) or applied (:func:`check_record` says why) are
    skipped with one warning each, and the next older one is tried. None when no record is left.
    """
    for record in store.candidates(opu.info.serial_number, explicit):
        try:
            check_record(opu, record, explicit)
        except CalibrationError as exc:
            _log.warning("skipping calibration record: %s", exc)
            continue
        return record
    return None


def find_record(opu: Opu, source: str | os.PathLike[str], explicit: dict[str, Any]) -> CalibrationRecord | None:
    """The record to apply: ``source`` is "auto" (the default store), a store directory, or a record's JSON file.

    ``explicit`` are the settings the caller gave (record keys); a record must match them. Searching a store,
    records that are bad or cannot be applied are skipped (see :func:`newest_applicable`).

    Raises:
        CalibrationError: a named record file that is unreadable, corrupt, of another device or other settings,
            or that cannot be applied (:func:`check_record`); a named store directory that does not exist.
    """
    serial = opu.info.serial_number
    if source == "auto":
        path = default_store_dir()
        if path.is_dir():
            return newest_applicable(opu, CalibrationStore(path), explicit)
        if os.path.lexists(path):  # the default store is searched, never named: something else there is skipped
            _log.warning("skipping the default calibration store %s: not a directory", path)
        return None
    path = Path(source).expanduser()
    if path.suffix == ".json" or path.is_file():
        record = CalibrationStore(path.parent).load(path)
        if record.serial_number != serial:
            raise CalibrationError(f"{path} is a calibration of {record.serial_number}, not of {serial}")
        mismatched = {k: (record.settings.get(k), v) for k, v in explicit.items() if record.settings.get(k) != v}
        if mismatched:
            raise CalibrationError(f"{path} was taken under other settings (stored, asked): {mismatched}")
        check_record(opu, record, explicit)
        return record
    if not path.is_dir():
        raise CalibrationError(f"no calibration store at {path}")
    return newest_applicable(opu, CalibrationStore(path), explicit)


def apply_record(
    opu: Opu,
    record: CalibrationRecord,
    *,
    explicit: dict[str, Any],
    drift_check: bool = True,
    max_age_s: float = 7 * 86400.0,
) -> AppliedCalibration:
    """Apply ``record`` to an open Opu (see the module docstring) and return what was applied.

    The whole record is checked first (:func:`check_record`), so a bad record changes nothing.

    Raises:
        CalibrationError: the record cannot be applied (nothing was changed).
    """
    plan = _plan(opu, record, explicit)
    where = _where(record)
    for part in plan.left_out:
        _log.warning("%s: %s", where, part)
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
    if plan.camera:
        opu.configure_camera(**plan.camera)
        applied.append("camera")
    if plan.laser_power_mw is not None:
        if plan.laser_power_mw != opu.laser_power_mw:
            opu.set_laser_power_mw(plan.laser_power_mw)
        applied.append("laser_power")
    if plan.lag_frames is not None:
        opu.lag_frames = plan.lag_frames
        applied.append("latency")
    if plan.reference is not None and install_reference(opu, *plan.reference):
        applied.append("reference")
    correlation = threshold = None
    drifted = False
    if drift_check and plan.drift is not None:
        probes, baseline, threshold, scheme = plan.drift
        sample = check_drift(opu, probes, baseline, threshold, scheme)
        correlation, drifted = sample.correlation, sample.drifted
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
