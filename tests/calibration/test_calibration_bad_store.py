"""A calibration store cannot break ``opu_driver.open``: one bad file per test, in the default store or named.

Each test puts a good record in the default store and a newer copy of it spoilt in one way. ``open`` must skip the
spoilt one with exactly one warning naming its file, apply the good one, and return within a second; named
explicitly (``calibration="path/record.json"``), the spoilt record must be refused with a ``CalibrationError``.
The cases that used to hang (a FIFO or ``/dev/zero`` in place of a file) run ``open`` in a child process with a
timeout and a memory limit, so a regression fails the test instead of hanging it or exhausting the memory.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration import CalibrationPlan, CalibrationStore, calibrate
from opu_driver.calibration.apply import apply_record, check_record
from opu_driver.calibration.store import (
    MAX_ARRAYS_BYTES,
    MAX_JSON_DEPTH,
    MAX_RECORD_JSON_BYTES,
    CalibrationError,
    CorruptCalibrationError,
    _json_nesting_depth,
)
from opu_driver.errors import OpuError
from tests.support import REPO_ROOT, small_sim

SIM = small_sim("seed=31")
PLAN = CalibrationPlan(n_features=48, n_components=400, dark_frames=8)
OPEN_WITHIN_S = 1.0
"""How long ``open`` may take with a bad record in the store (the good record's drift check included)."""
HANG_TIMEOUT_S = 30.0
"""How long a test waits before it calls ``open`` hung (a regression must fail, not block the run)."""

posix_only = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev/zero are POSIX")


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one good record of the device: camera settings, lag, linear-mode reference, drift baseline."""
    directory = tmp_path_factory.mktemp("good-store")
    with opu_driver.open(SIM, calibration=None, exposure_us=150, pixel_format="MONO12") as opu:
        calibrate(opu, ["latency", "reference", "drift"], CalibrationStore(directory), PLAN)
    return directory


@pytest.fixture
def store(good_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CalibrationStore:
    """A copy of the good store, made the default store (``$OPU_CALIBRATION_DIR``)."""
    directory = tmp_path / "store"
    shutil.copytree(good_store, directory)
    monkeypatch.setenv("OPU_CALIBRATION_DIR", str(directory))
    return CalibrationStore(directory)


def _good(store: CalibrationStore) -> Path:
    """The good record: the oldest of the store."""
    return store.list()[0]


def _newer_copy(store: CalibrationStore) -> Path:
    """A copy of the good record an hour newer (its own JSON and arrays file): the one ``open`` tries first."""
    record = store.load(_good(store))
    record.created += timedelta(hours=1)
    record.path = None
    return store.save(record)


def _arrays_file(path: Path) -> Path:
    return path.with_name(json.loads(path.read_text())["arrays_file"])


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    """Rewrite the record JSON at ``path`` after ``change(metadata)``; the arrays and their checksum stay valid."""
    metadata = json.loads(path.read_text())
    change(metadata)
    path.write_text(json.dumps(metadata))  # NaN is written as the NaN literal, which Python's json reads


def _setting(key: str, value: Any) -> Callable[[Path], None]:
    return lambda path: _edit(path, lambda m: m["settings"].__setitem__(key, value))


def _result(routine: str, key: str, value: Any) -> Callable[[Path], None]:
    return lambda path: _edit(path, lambda m: m["routines"][routine]["result"].__setitem__(key, value))


def _deep_nesting(path: Path) -> None:
    depth = 100_000  # far past the parser's recursion limit: it used to raise RecursionError
    text = path.read_text().replace('"settings": {', '"settings": {"deep": ' + "[" * depth + "]" * depth + ", ", 1)
    path.write_text(text)


def _oversized(path: Path) -> None:
    with open(path, "r+b") as f:  # sparse: no disk used, refused from its size before any byte is read
        f.truncate(MAX_RECORD_JSON_BYTES + 1)


def _truncated_arrays(path: Path) -> None:
    npz = _arrays_file(path)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])


def _arrays_link_out_of_the_store(path: Path) -> None:
    npz = _arrays_file(path)
    outside = path.parent.parent / "elsewhere.npz"
    shutil.copyfile(npz, outside)  # the very same bytes: only where it lies is wrong
    npz.unlink()
    npz.symlink_to(outside)


def _arrays_a_directory(path: Path) -> None:
    npz = _arrays_file(path)
    npz.unlink()
    npz.mkdir()


def _not_utf8(path: Path) -> None:
    path.write_bytes(path.read_bytes().replace(b'"settings": {', b'"settings": {"\xff\xfe": 1, ', 1))


def _index_dtype_disagrees(path: Path) -> None:
    _edit(path, lambda m: m["arrays"]["reference/mask"].update(dtype="<f4"))


BAD_RECORDS: dict[str, Callable[[Path], None]] = {
    "deep-nesting": _deep_nesting,
    "oversized-json": _oversized,
    "not-utf8": _not_utf8,
    "pixel_format-unknown": _setting("pixel_format", "MONO99"),
    "pixel_format-int": _setting("pixel_format", 12),
    "pixel_format-list": _setting("pixel_format", ["MONO12"]),
    "exposure_us-negative": _setting("exposure_us", -5),
    "exposure_us-string": _setting("exposure_us", "400"),
    "exposure_us-float": _setting("exposure_us", 150.5),
    "exposure_us-huge": _setting("exposure_us", 10**12),
    "exposure_us-bool": _setting("exposure_us", True),
    "exposure_us-object": _setting("exposure_us", {"us": 150}),
    "frame_time_us-too-short": _setting("frame_time_us", 10),
    "gain-nan": _setting("gain", math.nan),
    "gain-beyond-the-camera": _setting("gain", 100.0),
    "laser_power_mw-string": _setting("laser_power_mw", "x"),
    "laser_power_mw-negative": _setting("laser_power_mw", -1.0),
    "laser_power_mw-beyond-the-laser": _setting("laser_power_mw", 1e9),
    "laser_power_mw-nan": _setting("laser_power_mw", math.nan),
    "laser_power_mw-inf": _setting("laser_power_mw", math.inf),
    "drift-threshold-string": _result("drift", "threshold", "x"),
    "drift-threshold-null": _result("drift", "threshold", None),
    "drift-threshold-above-1": _result("drift", "threshold", 5.0),
    "drift-threshold-nan": _result("drift", "threshold", math.nan),
    "drift-scheme": _result("drift", "scheme", "one_frame"),
    "drift-n_components": _result("drift", "n_components", 7),
    "lag-string": _result("latency", "lag_frames", "x"),
    "lag-negative": _result("latency", "lag_frames", -1),
    "lag-float": _result("latency", "lag_frames", 2.5),
    "reference-n_components": _result("reference", "n_components", "many"),
    "reference-entry_variance": _result("reference", "entry_variance", -1.0),
    "index-dtype-disagrees": _index_dtype_disagrees,
    "result-not-a-scalar": _result("latency", "lag_frames", [1, 2]),
    "truncated-arrays": _truncated_arrays,
    "arrays-link-out-of-the-store": _arrays_link_out_of_the_store,
    "arrays-a-directory": _arrays_a_directory,
}


def _open_in_thread(**settings: Any) -> tuple[Any, float]:
    """``opu_driver.open(SIM, **settings)`` in a thread joined with a timeout: (the Opu or the error, seconds)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        started = time.perf_counter()
        try:
            outcome["value"] = opu_driver.open(SIM, **settings)
        except BaseException as exc:  # handed to the test
            outcome["value"] = exc
        outcome["elapsed_s"] = time.perf_counter() - started

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_TIMEOUT_S)
    assert not thread.is_alive(), f"open hung for {HANG_TIMEOUT_S} s"
    return outcome["value"], outcome["elapsed_s"]


def _store_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("opu_")]


@pytest.mark.parametrize("spoil", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_open_skips_a_bad_record_of_the_default_store_with_one_warning(store, spoil, caplog):
    good, bad = _good(store), _newer_copy(store)
    spoil(bad)
    with caplog.at_level(logging.WARNING):
        opu, elapsed_s = _open_in_thread()
    assert not isinstance(opu, BaseException), f"open raised {opu!r}"
    with opu:
        assert opu.calibration is not None and opu.calibration.record.path == good
        assert {"camera", "latency", "reference", "drift_check"} <= set(opu.calibration.applied)
    warned = _store_warnings(caplog)
    assert len(warned) == 1 and bad.name in warned[0], warned
    assert elapsed_s < OPEN_WITHIN_S


@pytest.mark.parametrize("spoil", BAD_RECORDS.values(), ids=BAD_RECORDS.keys())
def test_a_bad_record_named_explicitly_is_refused_with_a_typed_error(store, spoil):
    bad = _newer_copy(store)
    spoil(bad)
    error, _ = _open_in_thread(calibration=str(bad))
    assert isinstance(error, CalibrationError) and isinstance(error, OpuError), repr(error)
    assert bad.name in str(error)


_CHILD = """
import json, logging, resource, sys, time
# reading /dev/zero must fail with MemoryError, not eat the machine's memory
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
records = []
class Collect(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())
logging.getLogger().addHandler(Collect(level=logging.WARNING))
import opu_driver
started = time.perf_counter()
try:
    with opu_driver.open(sys.argv[1], calibration=sys.argv[2]) as opu:
        outcome = {"applied": str(opu.calibration.record.path) if opu.calibration else None}
except Exception as exc:
    outcome = {"error": [c.__name__ for c in type(exc).__mro__], "message": str(exc)}
outcome["elapsed_s"] = time.perf_counter() - started
outcome["warnings"] = [m for m in records]
print(json.dumps(outcome))
"""


def _open_in_child(source: str, env_store: Path) -> dict[str, Any]:
    """``open(SIM, calibration=source)`` in a child process, killed after HANG_TIMEOUT_S: what it reported."""
    env = {**os.environ, "OPU_CALIBRATION_DIR": str(env_store), "PYTHONPATH": str(REPO_ROOT)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, SIM, source],
            capture_output=True,
            text=True,
            timeout=HANG_TIMEOUT_S,
            env=env,
            cwd=REPO_ROOT,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"open hung for {HANG_TIMEOUT_S} s (the child was killed)")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _arrays_fifo(path: Path) -> None:
    npz = _arrays_file(path)
    npz.unlink()
    os.mkfifo(npz)


def _arrays_dev_zero(path: Path) -> None:
    npz = _arrays_file(path)
    npz.unlink()
    npz.symlink_to("/dev/zero")


def _json_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


def _json_dev_zero(path: Path) -> None:
    path.unlink()
    path.symlink_to("/dev/zero")


HANGING_RECORDS = {
    "arrays-fifo": _arrays_fifo,
    "arrays-symlink-to-dev-zero": _arrays_dev_zero,
    "json-fifo": _json_fifo,
    "json-symlink-to-dev-zero": _json_dev_zero,
}


@posix_only
@pytest.mark.parametrize("spoil", HANGING_RECORDS.values(), ids=HANGING_RECORDS.keys())
def test_a_fifo_or_dev_zero_in_the_default_store_does_not_hang_open(store, spoil):
    good, bad = _good(store), _newer_copy(store)
    spoil(bad)
    outcome = _open_in_child("auto", store.directory)
    assert outcome.get("applied") == str(good), outcome
    assert len(outcome["warnings"]) == 1 and bad.name in outcome["warnings"][0], outcome
    assert outcome["elapsed_s"] < OPEN_WITHIN_S


@posix_only
@pytest.mark.parametrize("spoil", HANGING_RECORDS.values(), ids=HANGING_RECORDS.keys())
def test_a_fifo_or_dev_zero_named_explicitly_is_refused_without_hanging(store, spoil):
    bad = _newer_copy(store)
    spoil(bad)
    outcome = _open_in_child(str(bad), store.directory)
    assert "CalibrationError" in outcome.get("error", []) and "OpuError" in outcome["error"], outcome
    assert "FIFO" in outcome["message"] or "link out of the store" in outcome["message"], outcome


def test_a_link_to_an_arrays_file_inside_the_store_is_followed(store):
    path = _newer_copy(store)
    npz = _arrays_file(path)
    kept = npz.with_name("kept-arrays.npz")
    npz.rename(kept)
    npz.symlink_to(kept.name)
    assert store.load(path).arrays.keys() == store.load(_good(store)).arrays.keys()


def test_a_bad_record_is_checked_before_anything_is_applied(store):
    record = store.load(_good(store))
    record.settings["laser_power_mw"] = 1e9  # the last setting applied: the camera would have changed first
    with opu_driver.open(SIM, calibration=None) as opu:
        camera, laser_mw = opu.camera_settings, opu.laser_power_mw
        with pytest.raises(CalibrationError, match="laser_power_mw"):
            check_record(opu, record)
        with pytest.raises(CalibrationError, match="laser_power_mw"):
            apply_record(opu, record, explicit={})
        assert opu.camera_settings == camera and opu.laser_power_mw == laser_mw


def test_an_older_good_record_behind_several_bad_ones_is_found(store, caplog):
    good = _good(store)
    bad = []
    for hours, spoil in ((1, _deep_nesting), (2, _setting("pixel_format", 12)), (3, _truncated_arrays)):
        record = store.load(good)
        record.created += timedelta(hours=hours)
        record.path = None
        bad.append(store.save(record))
        spoil(bad[-1])
    with caplog.at_level(logging.WARNING):
        with opu_driver.open(SIM) as opu:
            assert opu.calibration.record.path == good
    warned = _store_warnings(caplog)
    assert len(warned) == 3 and all(any(p.name in w for w in warned) for p in bad)


def test_a_single_routine_extends_the_newest_good_record_past_a_bad_one(store):
    _result("drift", "threshold", "x")(_newer_copy(store))  # matches the settings; only applying it would fail
    with opu_driver.open(SIM, calibration=None, exposure_us=150, pixel_format="MONO12") as opu:
        record = calibrate(opu, ["latency"], store, PLAN)
    assert {"reference", "drift"} <= set(record.results)  # taken over from the good record


# -- the bounds themselves ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, depth",
    [
        ("{}", 1),
        ('{"a": [1, {"b": [[]]}]}', 5),
        ('{"a": "[[[[[[[[{{{{"}', 1),  # brackets in strings do not count
        ('{"a": "\\"[[[", "b": [1]}', 2),  # an escaped quote does not end the string
        ('{"a": "\\\\", "b": [[1]]}', 3),  # an escaped backslash does not escape the quote after it
        ('{"a": "\\\\\\"[[["}', 1),
        ('{"\u00e9\u6f22": [[]]}', 3),  # multi-byte characters
        ("", 0),
        ("]]][[", 0),
    ],
)
def test_nesting_depth_is_measured_outside_strings(text, depth):
    data = text.encode("utf-8")
    assert _json_nesting_depth(data) == depth
    if depth and text.startswith("{"):
        assert _nesting_of(json.loads(text)) == depth


def _nesting_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_nesting_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_nesting_of(v) for v in value), default=0)
    return 0


def test_nesting_just_within_the_limit_is_read_and_one_more_level_is_refused(store):
    path = _newer_copy(store)
    original = path.read_text()
    for extra, ok in ((MAX_JSON_DEPTH - 2, True), (MAX_JSON_DEPTH - 1, False)):  # 2: the record, its settings
        nested = "[" * extra + "]" * extra
        path.write_text(original.replace('"settings": {', '"settings": {"x": ' + nested + ", ", 1))
        if ok:
            assert store.load(path).settings["x"] is not None
        else:
            with pytest.raises(CorruptCalibrationError, match="nested"):
                store.load(path)


def test_an_index_declaring_huge_arrays_is_refused_before_reading_them(store):
    path = _newer_copy(store)
    _edit(path, lambda m: m["arrays"]["drift/baseline"].update(shape=[MAX_ARRAYS_BYTES, 8]))
    with pytest.raises(CorruptCalibrationError, match="declares"):
        store.load(path)


def test_a_member_header_disagreeing_with_the_index_is_refused_before_it_is_read(store):
    """A member whose header declares 4 TB (and holds nothing) is refused from its header, before NumPy allocates."""
    import hashlib
    import io
    import zipfile

    path = _newer_copy(store)
    arrays = store.load(path).arrays
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            if name == "drift/baseline":
                header = {"descr": "<f4", "fortran_order": False, "shape": (10**6, 10**6)}
                np.lib.format.write_array_header_1_0(member, header)
            else:
                np.lib.format.write_array(member, array, allow_pickle=False)
            archive.writestr(f"{name}.npy", member.getvalue())
    data = buffer.getvalue()
    _arrays_file(path).write_bytes(data)
    _edit(path, lambda m: m.update(arrays_sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(CorruptCalibrationError, match="metadata says"):
        store.load(path)


def _spoil_array(name: str, value: Callable[[np.ndarray], Any]) -> Callable[[Any], None]:
    return lambda record: record.arrays.__setitem__(name, value(record.arrays[name]))


BAD_ARRAYS = {
    "reference-mask-float": _spoil_array("reference/mask", lambda a: a.astype(np.float32)),
    "reference-short": _spoil_array("reference/reference_dn", lambda a: a[:-1]),
    "reference-missing": lambda record: record.arrays.pop("reference/dark_dn"),
    "reference-complex": _spoil_array("reference/dark_dn", lambda a: a.astype(np.complex64)),
    "drift-probes-not-ternary": _spoil_array("drift/probes", lambda a: a * 3),
    "drift-probes-missing": lambda record: record.arrays.pop("drift/probes"),
    "drift-probes-1d": _spoil_array("drift/probes", lambda a: a.ravel()),
    "drift-baseline-nan": _spoil_array("drift/baseline", lambda a: np.where(a == a.max(), np.nan, a)),
    "drift-baseline-rows": _spoil_array("drift/baseline", lambda a: a[:-1]),
}


@pytest.mark.parametrize("spoil", BAD_ARRAYS.values(), ids=BAD_ARRAYS.keys())
def test_arrays_the_apply_step_uses_are_checked_before_use(store, spoil):
    record = store.load(_good(store))
    spoil(record)
    with opu_driver.open(SIM, calibration=None) as opu:
        sent = opu.link_counters.bytes_sent
        with pytest.raises(CalibrationError, match=str(record.path)):
            apply_record(opu, record, explicit={})
        assert opu.link_counters.bytes_sent == sent and opu.calibration is None


def test_the_checks_cost_little_beside_open(store):
    # A store of 20 bad records and the good one: open stays within the bound.
    good = _good(store)
    for hours in range(1, 21):
        record = store.load(good)
        record.created += timedelta(hours=hours)
        record.path = None
        _setting("exposure_us", -hours)(store.save(record))
    opu, elapsed_s = _open_in_thread()
    assert not isinstance(opu, BaseException), repr(opu)
    with opu:
        assert opu.calibration.record.path == good
    assert elapsed_s < 2 * OPEN_WITHIN_S


def test_a_default_store_that_is_not_a_directory_is_skipped_with_a_warning(tmp_path, monkeypatch, caplog):
    not_a_store = tmp_path / "calibrations"
    not_a_store.write_text("a file where the store should be")
    monkeypatch.setenv("OPU_CALIBRATION_DIR", str(not_a_store))
    with caplog.at_level(logging.WARNING):
        opu, elapsed_s = _open_in_thread()
    assert not isinstance(opu, BaseException), repr(opu)
    with opu:
        assert opu.calibration is None
    warned = _store_warnings(caplog)
    assert len(warned) == 1 and str(not_a_store) in warned[0], warned
    assert elapsed_s < OPEN_WITHIN_S


def test_a_default_store_that_cannot_be_listed_is_skipped_with_a_warning(store, monkeypatch, caplog):
    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "iterdir", refuse)
    with caplog.at_level(logging.WARNING):
        opu, _ = _open_in_thread()
    assert not isinstance(opu, BaseException), repr(opu)
    with opu:
        assert opu.calibration is None
    warned = _store_warnings(caplog)
    assert len(warned) == 1 and "Permission denied" in warned[0], warned
