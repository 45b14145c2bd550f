"""Running calibration routines in order and saving each result as it comes (``opu calibrate``).

``calibrate(opu, ["all"], store)`` runs exposure, dark, latency, roi, reference, fidelity, matrix and drift in that
order: the exposure first because the dark level, the reference and everything after depend on it; the drift
baseline last so it is taken with the final reference. After each routine the record is saved again under the same
name (atomically), so an interrupted run loses at most the routine in progress and ``resume=True`` continues it:
the stored settings and results are applied and the missing routines run.

A single routine starts from the newest record of the device under the same settings and replaces that routine's
result in a new record, so the newest record always holds the latest of every routine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from typing import Any

from tqdm import tqdm

from ..errors import InvalidInputError
from ..opu import Opu
from ._checks import check_components, check_features
from .apply import apply_record, check_record, newest_applicable, record_settings
from .fidelity import FidelityResult, FidelityRow
from .plan import CalibrationPlan
from .reference import ReferenceResult
from .registry import get_routine, routine_names
from .registry import routines as registered_routines
from .result import REGION_PREFIX
from .store import CalibrationError, CalibrationRecord, CalibrationStore

__all__ = ["ROUTINES", "CalibrationPlan", "calibrate", "run_routine", "summary_table"]

_log = logging.getLogger(__name__)

ROUTINES = routine_names()
"""The registered routines' names, in the order ``calibrate(opu, ["all"], ...)`` runs them."""
_RUN = "run"  # the results entry that describes the run itself

# Results that no longer hold once a routine runs again: everything measured at the old exposure, and everything
# measured through the old linear-mode reference (from the routines' stale_after).
INVALIDATES: dict[str, tuple[str, ...]] = {
    name: stale for name in ROUTINES if (stale := tuple(r.name for r in registered_routines() if name in r.stale_after))
}
# Routines whose result is tied to the reference in use: it must be the stored one (measured first if missing).
NEEDS_REFERENCE = tuple(r.name for r in registered_routines() if r.needs_reference)


def run_routine(
    opu, name: str, plan: CalibrationPlan, *, done: dict[str, Any] | None = None, progress: bool = False
) -> Any:
    """Run one routine with the plan's sizes; ``done`` holds results of this run (the roi uses the dark's)."""
    return get_routine(name).run(opu, plan, done or {}, progress)


def _new_record(opu: Opu, base: CalibrationRecord | None) -> CalibrationRecord:
    info = opu.info
    record = CalibrationRecord(
        model=info.model,
        serial_number=info.serial_number,
        firmware_version=info.firmware_version,
        settings=record_settings(opu),
    )
    if base is not None:
        record.results.update({k: dict(v) for k, v in base.results.items() if k != _RUN})
        record.arrays.update(base.arrays)
    return record


def _drop(record: CalibrationRecord, name: str) -> None:
    record.results.pop(name, None)
    for key in [k for k in record.arrays if k.startswith(name + "/")]:
        del record.arrays[key]


def _put(record: CalibrationRecord, name: str, result: Any) -> None:
    _drop(record, name)
    record.results[name] = result.summary()
    record.arrays.update({f"{name}/{key}": value for key, value in result.arrays().items()})


def _has_reference_for(record: CalibrationRecord, plan: CalibrationPlan) -> bool:
    stored = record.results.get(ReferenceResult.routine, {})
    key = ReferenceResult.summary_key
    return stored.get(key.n_features) == plan.n_features and stored.get(key.n_components) == plan.n_components


def _unfinished_run(opu: Opu, store: CalibrationStore, plan_fields: dict[str, Any]) -> CalibrationRecord | None:
    """The newest ``all`` run of this device under the caller's settings if it is unfinished and of this plan.

    Records of single routines are passed over; the newest ``all`` run decides: finished or of another plan
    means there is nothing to resume.
    """
    explicit = opu.settings.explicit_record_settings()
    for path in reversed(store.list(opu.info.serial_number)):
        try:
            record = store.load(path)
            run = record.results.get(_RUN)
            if run is None or any(record.settings.get(k) != v for k, v in explicit.items()):
                continue
            check_record(opu, record, explicit)  # resuming applies it: one that cannot be applied is skipped
        except CalibrationError as exc:
            _log.warning("skipping calibration record: %s", exc)
            continue
        if run.get("complete") is False and all(run.get(k) == v for k, v in plan_fields.items()):
            return record
        return None
    return None


def calibrate(
    opu: Opu,
    routines: Sequence[str],
    store: CalibrationStore | None,
    plan: CalibrationPlan | None = None,
    *,
    resume: bool = False,
    progress: bool = False,
    on_result: Callable[[str, Any], None] | None = None,
) -> CalibrationRecord:
    """Run ``routines`` (names from ROUTINES, or ["all"]) and return the record (saved after each routine).

    Single routines extend the newest record of the device under the current settings: its latency and reference
    are installed first, results the new ones invalidate are dropped (a new exposure drops everything measured at
    the old one; a new reference drops the matrix, fidelity and drift baseline), and the matrix and drift routines
    measure the reference first when the record has none for the plan's sizes, so that what is stored together
    was measured together.

    Args:
        store: where to save; None keeps the record in memory only.
        resume: with "all", continue the newest unfinished run of this device, plan and explicit settings instead
            of starting anew (its settings, lag and reference are applied first).
        on_result: called with (name, result) after each routine (the CLI prints from it).

    Raises:
        InvalidInputError: unknown routine names, resume without "all", or a plan that is not a CalibrationPlan or
            whose sizes do not fit the device (before anything is sent).
    """
    plan, names, run_all = _checked_request(opu, routines, plan, resume)
    plan_fields = dict(asdict(plan))
    done: dict[str, Any] = {}
    record = _resumed_run(opu, store, plan_fields, done) if run_all and resume and store is not None else None
    if record is None:
        record = _fresh_record(opu, store, run_all)
    todo = _routines_to_run(record, names, plan, plan_fields, run_all)
    for name in tqdm(todo, desc="calibration", unit="routine", disable=not progress or len(todo) < 2):
        frames_before, started = opu.frames_displayed, time.perf_counter()
        result = run_routine(opu, name, plan, done=done, progress=progress)
        done[name] = result
        _record_result(opu, record, name, result, done, frames_before, started)
        if run_all:
            record.results[_RUN]["complete"] = name == todo[-1]
        if store is not None:
            store.save(record)
        if on_result is not None:
            on_result(name, result)
    if run_all and not todo:
        record.results[_RUN]["complete"] = True
        if store is not None:
            store.save(record)
    return record


def _checked_request(
    opu, routines: Sequence[str], plan: CalibrationPlan | None, resume: bool
) -> tuple[CalibrationPlan, list[str], bool]:
    """Check what :func:`calibrate` was asked before anything is sent: (plan, routine names, whether "all")."""
    plan = plan or CalibrationPlan()
    if not isinstance(plan, CalibrationPlan):
        raise InvalidInputError(f"plan must be a CalibrationPlan or None, got {type(plan).__name__}")
    check_components(opu, plan.n_components)  # the plan's sizes must fit this device: refused before any traffic
    check_features(opu, plan.n_features)
    names = list(ROUTINES) if list(routines) == ["all"] else list(routines)
    unknown = [n for n in names if n not in ROUTINES]
    if unknown or not names or len(set(names)) != len(names):
        raise InvalidInputError(f"unknown or repeated routines {unknown or names}; choose from {ROUTINES} or 'all'")
    run_all = list(routines) == ["all"]
    if resume and not run_all:
        raise InvalidInputError("resume continues an interrupted 'all' run; single routines always run afresh")
    return plan, names, run_all


def _resumed_run(
    opu, store: CalibrationStore, plan_fields: dict[str, Any], done: dict[str, Any]
) -> CalibrationRecord | None:
    """The unfinished run to continue, its settings applied and the results later routines use put in ``done``;
    None when there is none."""
    record = _unfinished_run(opu, store, plan_fields)
    if record is None:
        _log.info("nothing to resume: starting a new calibration run")
        return None
    apply_record(opu, record, explicit=opu.settings.explicit_record_settings(), drift_check=False)
    for needed in dict.fromkeys(name for entry in registered_routines() for name in entry.needs):
        if needed in record.results:  # handed to the routines that use it, as in an uninterrupted run
            rebuild = get_routine(needed).result.from_record  # type: ignore[attr-defined]  # checked
            done[needed] = rebuild(record.results[needed], record.arrays)
    _log.info("resuming %s: done %s", record.path, ", ".join(k for k in record.results if k != _RUN))
    return record


def _fresh_record(opu: Opu, store: CalibrationStore | None, run_all: bool) -> CalibrationRecord:
    """A new record: for single routines, on top of the newest stored one under the same settings."""
    base = None
    if not run_all and store is not None:
        base = newest_applicable(opu, store, record_settings(opu))
        if base is not None:
            # the stored lag and reference are the ones the new results must go with
            apply_record(opu, base, explicit=record_settings(opu), drift_check=False)
    return _new_record(opu, base)


def _routines_to_run(
    record: CalibrationRecord, names: list[str], plan: CalibrationPlan, plan_fields: dict[str, Any], run_all: bool
) -> list[str]:
    """The routines to run in order: for "all", those the record lacks (marking the run unfinished); for single
    routines, the reference first where a routine needs one the record does not hold for the plan's sizes."""
    if run_all:
        record.results[_RUN] = {**plan_fields, "complete": False}
        return [n for n in names if n not in record.results]
    todo = list(names)
    reference = ReferenceResult.routine
    if any(n in NEEDS_REFERENCE for n in todo) and reference not in todo and not _has_reference_for(record, plan):
        todo.insert(min(todo.index(n) for n in todo if n in NEEDS_REFERENCE), reference)
    return todo


def _record_result(
    opu, record: CalibrationRecord, name: str, result: Any, done: dict[str, Any], frames_before: int, started: float
) -> None:
    """Put a routine's result into the record, with what it cost, dropping the stored results it invalidates."""
    for stale in INVALIDATES.get(name, ()):
        if stale not in done and stale in record.results:
            _log.info("dropping the stored %s result: it was measured before this %s", stale, name)
            _drop(record, stale)
    _put(record, name, result)
    # what the routine cost, beside what it found: frames the DMD displayed (blanks flushing the lag included)
    record.results[name]["frames_used"] = opu.frames_displayed - frames_before
    record.results[name]["wall_s"] = round(time.perf_counter() - started, 3)
    if get_routine(name).sets_camera:
        record.settings = record_settings(opu)


def summary_table(record: CalibrationRecord, width: int = 100) -> str:
    """The record's results as a plain-text table: one block per routine, its summary keys and values."""
    lines = [
        f"{record.model} {record.serial_number} (firmware {record.firmware_version}), "
        f"{record.created:%Y-%m-%d %H:%M:%S} UTC",
        "settings: " + ", ".join(f"{k}={v}" for k, v in record.settings.items()),
    ]
    name_width = max([len(n) for n in record.results] + [7])
    lines.append(f"{'routine':<{name_width}}  results")
    lines.append(f"{'-' * name_width}  {'-' * (width - name_width - 2)}")
    for name in [n for n in ROUTINES if n in record.results] + [n for n in record.results if n not in ROUTINES]:
        summary = record.results[name]
        if name == FidelityResult.routine and isinstance(summary.get(FidelityResult.summary_key.rows), str):
            lines.extend(_fidelity_lines(summary, name_width))
            continue
        items = [f"{k}={v}" for k, v in summary.items() if not k.startswith(REGION_PREFIX)]
        current, first = "", True
        for item in items:
            if current and len(current) + 2 + len(item) > width - name_width - 2:
                lines.append(f"{name if first else '':<{name_width}}  {current}")
                current, first = item, False
            else:
                current = f"{current}, {item}" if current else item
        lines.append(f"{name if first else '':<{name_width}}  {current}")
    return "\n".join(lines)


# The columns of the fidelity table: a row's summary key, its heading and its width.
_FIDELITY_COLUMNS = tuple(
    zip(
        FidelityRow.summary_key,
        ("frames", "repeatability", "linearity err", "nonlinearity", "SNR dB"),
        (6, 13, 13, 12, 7),
        strict=True,
    )
)


def _fidelity_lines(summary: dict[str, Any], name_width: int) -> list[str]:
    """The fidelity summary's flat "<row>:<figure>" keys as a small table."""
    n_vectors = summary.get(FidelityResult.summary_key.n_vectors)
    header = f"{'scheme/encoding':<20}" + "".join(f" {heading:>{width}}" for _, heading, width in _FIDELITY_COLUMNS)
    lines = [f"{'fidelity':<{name_width}}  {n_vectors} vectors; {header}"]
    indent = " " * (name_width + 2 + len(f"{n_vectors} vectors; "))
    for label in summary[FidelityResult.summary_key.rows].split(","):
        cells = "".join(f" {_fidelity_cell(summary, label, key):>{width}}" for key, _, width in _FIDELITY_COLUMNS)
        lines.append(f"{indent}{label:<20}" + cells)
    if "frames_used" in summary:
        lines.append(f"{'':<{name_width}}  frames_used={summary['frames_used']}, wall_s={summary.get('wall_s')}")
    return lines


def _fidelity_cell(summary: dict[str, Any], label: str, key: str) -> str:
    """One cell of the fidelity table: row ``label``'s figure ``key`` ("-" when the summary lacks it)."""
    value = summary.get(FidelityResult.row_key(label, key))
    return "-" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
