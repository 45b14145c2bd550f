"""The calibration store: round trips, choice of the latest record, refusal of bad files, atomic writes."""

from __future__ import annotations

import io
import json
import logging
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from opu_driver.calibration import (
    FORMAT_VERSION,
    CalibrationError,
    CalibrationRecord,
    CalibrationStore,
    CalibrationVersionError,
    CorruptCalibrationError,
)
from opu_driver.errors import ConfigurationError, OpuError

T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=timezone.utc)


def make_record(serial="OPU-0001", created=T0, **settings) -> CalibrationRecord:
    rng = np.random.default_rng(1)
    return CalibrationRecord(
        model="OPU-sim",
        serial_number=serial,
        firmware_version="1.2.3",
        settings={"exposure_us": 400, "gain": 1.5, "pixel_format": "mono12", "n_components": 64, **settings},
        created=created,
        results={
            "dark": {"level_dn": 12.25, "read_noise_dn": 1.5, "hot_pixels": 3, "ok": True, "note": None},
            "latency": {"lag_frames": 2},
        },
        arrays={
            "dark/mean_dn": rng.normal(12.0, 1.0, (6, 8)).astype(np.float32),
            "dark/hot_mask": rng.random((6, 8)) > 0.9,
            "dark/hot_index": np.array([[1, 2], [3, 4]], dtype=np.int64),
            "latency/trace": rng.integers(0, 4096, 10).astype(np.uint16),
            "latency/complex": (rng.normal(size=3) + 1j * rng.normal(size=3)).astype(np.complex64),
        },
    )


def test_round_trip_keeps_identity_settings_results_and_arrays(tmp_path):
    store = CalibrationStore(tmp_path)
    record = make_record()
    path = store.save(record)
    assert path.suffix == ".json" and path.name.startswith("OPU-0001_20240501T120000.123456Z")
    assert record.path == path
    loaded = store.load(path)
    assert (loaded.model, loaded.serial_number, loaded.firmware_version) == ("OPU-sim", "OPU-0001", "1.2.3")
    assert loaded.settings == record.settings
    assert loaded.created == T0 and loaded.created.tzinfo is not None
    assert loaded.results == record.results
    assert set(loaded.arrays) == set(record.arrays)
    for name, array in record.arrays.items():
        assert loaded.arrays[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded.arrays[name], array)
    meta = json.loads(path.read_text())
    assert meta["format_version"] == FORMAT_VERSION == 1
    assert meta["created"] == "2024-05-01T12:00:00.123456+00:00"
    assert meta["routines"]["dark"]["arrays"] == ["dark/hot_index", "dark/hot_mask", "dark/mean_dn"]
    assert meta["routines"]["latency"]["result"] == {"lag_frames": 2}
    assert store.list() == [path] and store.list("OPU-0001") == [path] and store.list("other") == []


def test_numpy_scalars_and_non_utc_times_are_normalised(tmp_path):
    store = CalibrationStore(tmp_path)
    paris = timezone(timedelta(hours=2))
    record = make_record(created=T0.astimezone(paris), gain=np.float64(2.0))
    record.results["dark"]["level_dn"] = np.float32(3.5)
    loaded = store.load(store.save(record))
    assert loaded.created == T0 and loaded.created.utcoffset() == timedelta(0)
    assert loaded.settings["gain"] == 2.0 and loaded.results["dark"]["level_dn"] == 3.5


def test_age_is_seconds_since_creation():
    record = make_record()
    assert record.age_s(T0 + timedelta(minutes=5)) == pytest.approx(300.0)
    assert make_record(created=datetime.now(timezone.utc)).age_s() == pytest.approx(0.0, abs=60.0)


def test_latest_picks_the_newest_record_of_that_serial_matching_the_given_settings(tmp_path):
    store = CalibrationStore(tmp_path)
    assert store.latest("OPU-0001") is None
    store.save(make_record(created=T0))
    store.save(make_record(created=T0 + timedelta(hours=1), exposure_us=800))
    store.save(make_record(created=T0 + timedelta(hours=2)))
    store.save(make_record(serial="OPU-0002", created=T0 + timedelta(hours=3)))

    assert store.latest("OPU-0001").created == T0 + timedelta(hours=2)
    assert store.latest("OPU-0001", {"exposure_us": 800}).created == T0 + timedelta(hours=1)
    assert store.latest("OPU-0001", {"exposure_us": 400, "gain": 1.5}).created == T0 + timedelta(hours=2)
    assert store.latest("OPU-0001", {"exposure_us": 400, "gain": 2.0}) is None
    assert store.latest("OPU-0001", {"no_such_key": 1}) is None
    assert store.latest("OPU-0002").serial_number == "OPU-0002"
    assert store.latest("OPU-0003") is None
    assert len(store.list("OPU-0001")) == 3 and len(store.list()) == 4


def test_serials_with_awkward_characters_stay_distinct(tmp_path):
    store = CalibrationStore(tmp_path)
    store.save(make_record(serial="A_B"))
    store.save(make_record(serial="A/B"))
    assert store.latest("A_B").serial_number == "A_B"
    assert store.latest("A/B").serial_number == "A/B"
    assert all(p.parent == tmp_path for p in store.list())


def test_latest_skips_a_corrupt_newer_record_with_a_warning(tmp_path, caplog):
    store = CalibrationStore(tmp_path)
    store.save(make_record(created=T0))
    newer = store.save(make_record(created=T0 + timedelta(hours=1)))
    newer.write_text("{ not json")
    with caplog.at_level(logging.WARNING, logger="opu_driver.calibration.store"):
        found = store.latest("OPU-0001")
    assert found.created == T0
    assert any("skipping" in r.message and newer.name in r.message for r in caplog.records)
    with pytest.raises(CorruptCalibrationError):
        store.load(newer)


def test_corrupt_json_is_refused_with_a_typed_error(tmp_path):
    store = CalibrationStore(tmp_path)
    path = store.save(make_record())
    path.write_text(path.read_text()[:-40])
    with pytest.raises(CorruptCalibrationError, match="not valid JSON") as info:
        store.load(path)
    assert isinstance(info.value, CalibrationError) and isinstance(info.value, ConfigurationError)
    assert isinstance(info.value, OpuError)


def _arrays_path(path: Path) -> Path:
    return path.with_name(json.loads(path.read_text())["arrays_file"])


def test_truncated_npz_is_refused(tmp_path):
    store = CalibrationStore(tmp_path)
    path = store.save(make_record())
    npz = _arrays_path(path)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])
    with pytest.raises(CorruptCalibrationError, match="checksum"):
        store.load(path)
    assert store.latest("OPU-0001") is None


def test_missing_npz_is_refused(tmp_path):
    store = CalibrationStore(tmp_path)
    path = store.save(make_record())
    _arrays_path(path).unlink()
    with pytest.raises(CorruptCalibrationError, match="missing"):
        store.load(path)


def test_changed_npz_fails_the_checksum_even_when_it_is_a_valid_npz(tmp_path):
    store = CalibrationStore(tmp_path)
    path = store.save(make_record())
    other = make_record()
    other.arrays["dark/mean_dn"] = other.arrays["dark/mean_dn"] + 1
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **other.arrays)
    _arrays_path(path).write_bytes(buffer.getvalue())
    with pytest.raises(CorruptCalibrationError, match="checksum"):
        store.load(path)


def _saved_with_edited_metadata(tmp_path, edit):
    """A saved record whose JSON metadata ``edit(meta)`` then changed on disk: (store, path)."""
    store = CalibrationStore(tmp_path)
    path = store.save(make_record())
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return store, path


def test_npz_content_disagreeing_with_the_metadata_is_refused_even_with_a_matching_checksum(tmp_path):
    store, path = _saved_with_edited_metadata(tmp_path, lambda meta: meta["arrays"]["dark/mean_dn"].update(dtype="<f8"))
    with pytest.raises(CorruptCalibrationError, match="dark/mean_dn"):
        store.load(path)


@pytest.mark.parametrize("version", [0, 2, "1", None, True])
def test_wrong_format_version_is_refused(tmp_path, version):
    store, path = _saved_with_edited_metadata(tmp_path, lambda meta: meta.update(format_version=version))
    with pytest.raises(CalibrationVersionError, match="format version"):
        store.load(path)
    assert store.latest("OPU-0001") is None


def test_a_renamed_or_mismatched_file_is_refused(tmp_path):
    store, path = _saved_with_edited_metadata(tmp_path, lambda meta: meta["device"].update(serial_number="OPU-9999"))
    with pytest.raises(CorruptCalibrationError, match="file name does not match"):
        store.load(path)
    assert store.latest("OPU-0001") is None


def test_an_arrays_file_name_that_escapes_the_directory_is_refused(tmp_path):
    store, path = _saved_with_edited_metadata(tmp_path, lambda meta: meta.update(arrays_file="../elsewhere.npz"))
    with pytest.raises(CorruptCalibrationError, match="plain file name"):
        store.load(path)


def test_crash_between_the_two_writes_leaves_no_record(tmp_path, monkeypatch):
    """Simulated crash: the arrays file is renamed into place, the JSON's rename never happens."""
    store = CalibrationStore(tmp_path)
    real_replace = os.replace

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        store.save(make_record())
    monkeypatch.undo()
    assert any(p.suffix == ".npz" for p in tmp_path.iterdir())
    assert store.list() == [] and store.latest("OPU-0001") is None

    # Leftover temporary files of interrupted writes (a half-written JSON among them) are not records.
    (tmp_path / ".OPU-0001_20240501T120000.123456Z.json.abc123.tmp").write_text('{"format": "opu-cal')
    (tmp_path / ".OPU-0001_20240501T120000.123456Z.0123456789abcdef.npz.def456.tmp").write_bytes(b"PK\x03")
    assert store.list() == [] and store.latest("OPU-0001") is None
    path = store.save(make_record())
    assert store.list() == [path] and store.latest("OPU-0001").path == path


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    store = CalibrationStore(tmp_path)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "no space left on device")))
    with pytest.raises(OSError):
        store.save(make_record())
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic_old_record_stays_whole_until_the_new_json_lands(tmp_path, monkeypatch):
    store = CalibrationStore(tmp_path)
    old = make_record()
    path = store.save(old)
    new = make_record()
    new.results["dark"]["level_dn"] = 99.0
    new.arrays["dark/mean_dn"] = np.zeros((6, 8), np.float32)

    real_replace = os.replace
    seen_between = []

    def crash_on_json(src, dst):
        if str(dst).endswith(".json"):
            seen_between.append(store.load(path))  # the state a reader sees between the two renames
            raise KeyboardInterrupt("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_json)
    with pytest.raises(KeyboardInterrupt):
        store.save(new)
    monkeypatch.undo()
    for record in (seen_between[0], store.load(path)):
        assert record.results["dark"]["level_dn"] == 12.25
        np.testing.assert_array_equal(record.arrays["dark/mean_dn"], old.arrays["dark/mean_dn"])

    assert store.save(new) == path
    loaded = store.load(path)
    assert loaded.results["dark"]["level_dn"] == 99.0
    np.testing.assert_array_equal(loaded.arrays["dark/mean_dn"], 0.0)
    # The superseded arrays file is gone; what is left is the new pair plus the crash's orphan (same content).
    referenced = json.loads(path.read_text())["arrays_file"]
    assert (tmp_path / referenced).exists()
    assert old_arrays_gone(tmp_path, referenced, old)


def old_arrays_gone(directory: Path, referenced: str, old: CalibrationRecord) -> bool:
    for npz in directory.glob("*.npz"):
        with np.load(npz, allow_pickle=False) as data:
            if np.array_equal(data["dark/mean_dn"], old.arrays["dark/mean_dn"]):
                return False
    return True


def test_no_pickle_object_arrays_are_refused_on_save(tmp_path):
    store = CalibrationStore(tmp_path)
    record = make_record()
    record.arrays["dark/objects"] = np.array([{"a": 1}, None], dtype=object)
    with pytest.raises(CalibrationError, match="pickle"):
        store.save(record)
    assert list(tmp_path.iterdir()) == []


def test_no_pickle_a_pickled_array_is_refused_on_load_even_with_a_valid_checksum(tmp_path):
    import hashlib

    store = CalibrationStore(tmp_path)
    record = make_record()
    path = store.save(record)
    meta = json.loads(path.read_text())
    arrays = dict(record.arrays)
    arrays["dark/mean_dn"] = np.array([object()] * 2, dtype=object)  # np.savez pickles object arrays
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    data = buffer.getvalue()
    _arrays_path(path).write_bytes(data)
    meta["arrays_sha256"] = hashlib.sha256(data).hexdigest()
    meta["arrays"]["dark/mean_dn"] = {"dtype": "|O", "shape": [2]}
    path.write_text(json.dumps(meta))
    with pytest.raises(CorruptCalibrationError, match="does not write"):  # refused from the index
        store.load(path)
    meta["arrays"]["dark/mean_dn"] = {"dtype": "<f8", "shape": [2]}  # an index that hides the pickle
    path.write_text(json.dumps(meta))
    with pytest.raises(CorruptCalibrationError, match="metadata says"):  # refused from the member's header
        store.load(path)


def test_no_pickle_np_load_is_always_called_with_allow_pickle_false(tmp_path, monkeypatch):
    store = CalibrationStore(tmp_path)
    path = store.save(make_record())
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    store.load(path)
    store.latest("OPU-0001")
    assert calls == [False, False]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.results.__setitem__("dark", {"map": [1, 2]}), "scalars only"),
        (lambda r: r.arrays.__setitem__("orphan/x", np.zeros(2)), "no results entry"),
        (lambda r: r.arrays.__setitem__("no_routine", np.zeros(2)), "<routine>/<name>"),
        (lambda r: r.settings.__setitem__("when", datetime.now()), "not a JSON value"),
        (lambda r: setattr(r, "created", datetime(2024, 1, 1)), "timezone-aware"),
        (lambda r: setattr(r, "serial_number", ""), "serial_number"),
    ],
)
def test_records_that_cannot_be_stored_are_refused_before_writing(tmp_path, change, message):
    store = CalibrationStore(tmp_path / "store")
    record = make_record()
    change(record)
    with pytest.raises(CalibrationError, match=message):
        store.save(record)
    assert not (tmp_path / "store").exists() or list((tmp_path / "store").iterdir()) == []


def test_load_of_a_missing_path_raises_a_calibration_error(tmp_path):
    with pytest.raises(CalibrationError, match="no such"):
        CalibrationStore(tmp_path).load(tmp_path / "nothing.json")
    assert CalibrationStore(tmp_path / "absent").list() == []


def test_check_writable_refuses_a_store_that_save_could_not_create(tmp_path):
    CalibrationStore(tmp_path / "new" / "store").check_writable()  # missing folders are made by save
    (tmp_path / "a-file").write_text("")
    with pytest.raises(CalibrationError, match="is not a directory"):
        CalibrationStore(tmp_path / "a-file" / "store").check_writable()
    assert not (tmp_path / "new").exists()  # the check creates nothing
