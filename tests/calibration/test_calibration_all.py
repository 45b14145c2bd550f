"""The whole calibration sequence: in order, saved after each routine, resumable, applied at the next open."""

import json

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration import ROUTINES, CalibrationPlan, CalibrationStore, calibrate
from opu_driver.calibration import run as run_module
from opu_driver.errors import InvalidInputError
from tests.calibration.conftest import CALIBRATED_SIM
from tests.support import exact_linear_matrix, small_sim

SIM = CALIBRATED_SIM  # strong light: the exposure routine has something to improve
PLAN = CalibrationPlan(n_features=64, n_components=512, dark_frames=16, drift_probes=16)


def _fidelity(opu, E):
    """Correlation of four-frame projections with the exact ones over the usable outputs (the linear mode's fidelity
    figure; outputs zeroed because their frames saturated count against it), and the usable fraction."""
    Y = opu.linear_transform(E, PLAN.n_components)
    exact = E @ exact_linear_matrix(opu, PLAN.n_features, PLAN.n_components)  # the split layout is loaded
    mask = opu.linear_mode.calibration(PLAN.n_features, PLAN.n_components).mask
    return float(np.corrcoef(Y[:, mask].ravel(), exact[:, mask].ravel())[0, 1]), float(mask.mean())


@pytest.mark.slow  # its fixture runs the whole calibration once
def test_all_runs_in_order_saves_a_record_and_improves_fidelity(calibrated):
    E = np.random.default_rng(0).choice([-1, 0, 1], size=(32, PLAN.n_features), p=[0.25, 0.5, 0.25])
    with opu_driver.open(SIM, calibration=None, pixel_format="MONO12") as opu:
        before, usable_before = _fidelity(opu, E)
    record = calibrated.record
    assert set(ROUTINES) <= set(record.results)  # the order they ran in is checked on what the command printed
    assert record.results["run"]["complete"] is True
    with opu_driver.open(SIM, calibration=str(calibrated.store_dir), pixel_format="MONO12") as opu:
        applied = opu.calibration
        assert {"camera", "latency", "reference", "drift_check"} <= set(applied.applied)
        assert not applied.drifted
        assert opu.camera_settings.exposure_us == record.settings["exposure_us"]
        after, usable_after = _fidelity(opu, E)
    # the linear mode's fidelity bar for four-frame ternary projections, met after calibration; before it the brightest
    # frames saturated (about 0.96 here), so calibration must improve both the correlation and the usable outputs
    assert after >= 0.99 and after > before and usable_after >= usable_before


class _Crash(Exception):
    """Stands for anything that stops a run half-way (a cable pulled, Ctrl-C, a power cut)."""


@pytest.mark.slow
def test_an_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    store = CalibrationStore(tmp_path)
    calls = []
    crashed = []
    real = run_module.run_routine

    def failing(opu, name, plan, **kwargs):
        calls.append(name)
        if name == "roi" and not crashed:
            crashed.append(name)
            raise _Crash
        return real(opu, name, plan, **kwargs)

    monkeypatch.setattr(run_module, "run_routine", failing)
    with opu_driver.open(SIM, calibration=None) as opu, pytest.raises(_Crash):
        calibrate(opu, ["all"], store, PLAN)
    partial = store.latest("SIM-00000021")
    assert partial.results["run"]["complete"] is False
    assert set(partial.results) == {"run", "exposure", "dark", "latency"}
    with opu_driver.open(SIM, calibration=None) as opu:
        calibrate(opu, ["latency"], store, PLAN)  # a single routine in between does not hide the unfinished run
    calls.clear()
    with opu_driver.open(SIM, calibration=None) as opu:
        record = calibrate(opu, ["all"], store, PLAN, resume=True)
        assert opu.camera.settings.exposure_us == partial.settings["exposure_us"]  # the stored exposure re-applied
    assert calls == ["roi", "reference", "fidelity", "matrix", "drift"]
    assert record.results["run"]["complete"] is True and record.path == partial.path
    assert record.results["roi"]["hot_source"] == "dark"  # the stored dark result served the resumed roi
    assert len(store.list("SIM-00000021")) == 2


def test_a_single_routine_extends_the_newest_record(tmp_path):
    store = CalibrationStore(tmp_path)
    with opu_driver.open(SIM, calibration=None, exposure_us=300) as opu:
        first = calibrate(opu, ["latency"], store, PLAN)
        second = calibrate(opu, ["dark"], store, PLAN)
    assert set(second.results) == {"latency", "dark"} and second.path != first.path
    assert second.results["latency"] == first.results["latency"]


def test_unknown_routines_are_refused_before_anything_is_sent(tmp_path):
    with opu_driver.open(SIM, calibration=None) as opu:
        sent = opu.link_counters.bytes_sent
        for routines in (["bogus"], [], ["dark", "all"]):
            with pytest.raises(InvalidInputError):
                calibrate(opu, routines, CalibrationStore(tmp_path), PLAN)
        assert opu.link_counters.bytes_sent == sent
    with pytest.raises(InvalidInputError):
        CalibrationPlan(n_features=0)


@pytest.mark.slow  # its fixture runs the whole calibration once
def test_opu_calibrate_all_prints_a_table_and_draws_the_report(calibrated, capsys):
    from opu_tools.cli import main

    text = calibrated.printed
    places = [text.index(f"\n{name}") for name in ROUTINES]  # one row per routine, in the order they ran
    assert places == sorted(places)
    assert "saved to" in text and "report written to" in text
    data = calibrated.report.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 50_000
    import matplotlib.image

    image = matplotlib.image.imread(str(calibrated.report))
    assert image.shape[0] > 500 and image.shape[1] > 500 and image[..., :3].std() > 0.05
    assert main(["calibrate", "latency", "--url", SIM, "--no-save", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["saved"] is None and "latency" in printed["results"]


@pytest.mark.parametrize("routine", ROUTINES)
def test_every_routine_runs_from_the_command_line(routine, tmp_path, capsys):
    from opu_tools.cli import main

    small = ["--n-features", "32", "--n-components", "400", "--frames", "8", "--no-progress", "--json"]
    assert main(["calibrate", routine, "--url", SIM, "--out", str(tmp_path), *small]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["routine"] == routine and routine in printed["results"]
    record = CalibrationStore(tmp_path).load(printed["saved"])
    assert record.results[routine] == printed["results"][routine]
    assert all(name.split("/")[0] in record.results for name in record.arrays)


def test_command_line_errors_are_reported_with_exit_code_2(tmp_path, capsys):
    from opu_tools.cli import main

    assert main(["calibrate", "dark", "--url", SIM, "--no-save", "--n-features", "0"]) == 2
    assert "n_features" in capsys.readouterr().err
    assert main(["calibrate", "dark", "--url", SIM, "--no-save", "--report", str(tmp_path / "r.jpeg")]) == 2
    assert ".png" in capsys.readouterr().err and not (tmp_path / "r.jpeg").exists()
    (tmp_path / "SIM-00000021_20260101T000000.000000Z.json").write_text("{not json")
    assert main(["calibrate", "latency", "--url", SIM, "--out", str(tmp_path), "--no-progress"]) == 0  # skipped


@pytest.mark.slow
def test_the_drift_check_at_open_agrees_with_the_stored_baseline(tmp_path):
    # drift alone: the reference it depends on is measured first and stored with it, so at open the probes go
    # through the very reference the baseline was taken with
    plan = CalibrationPlan(n_features=64, n_components=3072, drift_probes=32)
    url = small_sim("seed=0")
    with opu_driver.open(url, calibration=None) as opu:
        record = calibrate(opu, ["drift"], CalibrationStore(tmp_path), plan)
    assert {"reference", "drift"} <= set(record.results)
    drift = record.results["drift"]
    with opu_driver.open(url, calibration=str(tmp_path)) as opu:
        applied = opu.calibration
    assert "drift_check" in applied.applied and not applied.drifted
    # The threshold sits 6 sqrt(2) sigma below the expected correlation (drift.py): the check must land within
    # 3 sqrt(2) sigma of it. A check through a re-measured reference lands about 4 such sigma lower.
    gap = drift["expected_correlation"] - drift["threshold"]
    assert abs(applied.drift_correlation - drift["expected_correlation"]) < gap / 2


@pytest.mark.slow
def test_a_new_exposure_drops_what_was_measured_at_the_old_one(tmp_path):
    store = CalibrationStore(tmp_path)
    with opu_driver.open(SIM, calibration=None, exposure_us=300) as opu:
        calibrate(opu, ["latency", "reference", "matrix"], store, PLAN)
        record = calibrate(opu, ["exposure"], store, PLAN)
        assert opu.camera.settings.exposure_us != 300
    assert set(record.results) == {"latency", "exposure"}  # reference and matrix belonged to 300 us
    assert record.settings["exposure_us"] == record.results["exposure"]["exposure_us"]
    with opu_driver.open(SIM, calibration=None, exposure_us=300) as opu:
        calibrate(opu, ["reference"], store, PLAN)
        record = calibrate(opu, ["reference"], store, PLAN)  # a second reference replaces the first
    assert "matrix" not in record.results and record.results["reference"]["n_features"] == PLAN.n_features


def test_resume_and_store_paths_are_checked_before_the_device_is_used(tmp_path, capsys):
    from opu_tools.cli import main

    with opu_driver.open(SIM, calibration=None) as opu:
        sent = opu.link_counters.bytes_sent
        with pytest.raises(InvalidInputError, match="resume"):
            calibrate(opu, ["dark"], CalibrationStore(tmp_path), PLAN, resume=True)
        with pytest.raises(InvalidInputError):
            calibrate(opu, ["dark", "dark"], CalibrationStore(tmp_path), PLAN)
        assert opu.link_counters.bytes_sent == sent
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["calibrate", "dark", "--url", SIM, "--out", str(a_file)]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["calibrate", "dark", "--url", SIM, "--resume", "--out", str(tmp_path)]) == 2
