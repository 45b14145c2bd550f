"""The `opu` command line."""

import errno
import json
import os

import pytest

import firmware_sim
from firmware_sim.usb_backend import get_backend
from opu_driver.devices.v1.discovery import describe_devices, find_devices, udev_rule_path
from opu_tools.cli import main
from tests.support import SMALL_QUERY, SMALL_SIM, small_query, small_sim


def test_info_prints_what_the_device_reports(capsys):
    assert main(["info", small_sim("seed=7"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["serial_number"] == "SIM-00000007"
    assert (info["dmd_width"], info["dmd_height"]) == (96, 64)


def test_bad_url_is_a_clear_error_and_exit_code_2(capsys):
    assert main(["info", "ftp://nowhere"]) == 2
    assert "unknown URL scheme" in capsys.readouterr().err


def test_list_finds_an_emulated_usb_device_and_gives_its_url():
    device = firmware_sim.create_device(small_query("seed=8"))
    try:
        found = find_devices(backend=get_backend([device]))
        assert [d.serial_number for d in found] == ["SIM-00000008"]
        text = describe_devices(backend=get_backend([device]))
        assert "usb://1209:4f50/SIM-00000008" in text
    finally:
        firmware_sim.release_device(device)


def test_udev_rule_ships_with_the_package():
    with open(udev_rule_path(), encoding="utf-8") as fh:
        rule = fh.read()
    assert 'ATTRS{idVendor}=="1209"' in rule and 'ATTRS{idProduct}=="4f50"' in rule


def test_demo_runs_and_explains(capsys):
    assert (
        main(["demo", SMALL_SIM, "--features", "40", "--components", "64", "--batch", "220", "--dfa-epochs", "0"]) == 0
    )
    out = capsys.readouterr().out
    assert "speckle contrast" in out and "theory" in out and "DFA training" not in out


@pytest.mark.slow
def test_demo_trains_by_dfa_with_optical_feedback(capsys, monkeypatch):
    # On a bare install (no scikit-learn) the demo trains on the synthetic stand-in task: simulate that.
    import sys

    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    assert (
        main(["demo", SMALL_SIM, "--features", "40", "--components", "64", "--batch", "220", "--dfa-epochs", "2"]) == 0
    )
    out = capsys.readouterr().out
    assert "DFA training" in out and "synthetic task" in out
    rows = [line for line in out.splitlines() if "DFA, optical feedback, four-frame" in line]
    accuracy = float(rows[0].split()[-3].rstrip("%")) / 100
    # 10 balanced classes: chance is 10%; the stand-in task is learnt to ~90% in 3 epochs (backprop and DFA);
    # after 2 epochs optical DFA must be far above chance (5 binomial sd over 400 test samples is 7.5 points).
    assert accuracy > 0.5


def test_bench_code_runs_at_a_small_size():
    # The benchmark code itself must run; its figures are not asserted (performance lives in `opu bench`).
    from opu_tools.bench.frames import bench_frames

    results = bench_frames(quick=True, repeats=1, query="dmd=96x64&camera=64x48", n_features=100, n_components=256)
    assert len(results) == 5 and all(r.value > 0 for r in results)


@pytest.mark.slow
def test_dfa_bench_code_runs_at_a_small_size():
    # direct, in-process client and service with client processes; the figures are not asserted
    from opu_tools.bench.dfa import bench_dfa

    results = bench_dfa(quick=True, repeats=1, query=SMALL_QUERY, sizes=((10, 256),), client_counts=(1, 2))
    assert len(results) == 4 and all(r.value > 0 and r.unit == "vectors/s" for r in results)


def test_lm_bench_code_runs_at_a_small_size():
    # in-process and service paths, both schemes; the figures are not asserted, only that the split adds up
    from opu_tools.bench.lm import LmShape, bench_lm

    shape = LmShape(batch=2, sequence=4, vocabulary=10, n_blocks=2, d_model=16)
    results = {r.name: r for r in bench_lm(quick=True, repeats=1, query=SMALL_QUERY, shape=shape)}
    for scheme, per in (("four-frame", 4), ("two-frame", 2)):
        label = f"LM step 2x4 tokens, 10 -> 2x16, {scheme}"
        assert results[f"{label}, in-process"].value > 0 and results[f"{label}, service"].value > 0
        assert results[f"{label}, frames per step"].value >= 9 * per  # 8 tokens and the all-ones vector
        for path in ("in-process", "service"):
            shares = [float(results[f"{label}, {path}: {stage}"].note.split("%")[0]) for stage in STAGES]
            assert 99 <= sum(shares) <= 101
        assert results[f"{label}, physical OPU at 1.5 kHz"].unit == "s/step"
    assert results["LM step 2x4 tokens, 10 -> 2x16, digital:// (exact B e in numpy on this CPU)"].value > 0


STAGES = ("encode", "device", "decode", "other")


def test_bench_only_takes_every_registered_benchmark():
    from opu_tools.bench import BENCHMARKS
    from opu_tools.cli import build_parser

    assert "lm" in BENCHMARKS
    for name in BENCHMARKS:
        assert build_parser().parse_args(["bench", "--only", name]).only == name


def _calibrate_dark(*extra: str) -> list[str]:
    return ["calibrate", "dark", "--url", small_sim("seed=9"), "--frames", "4", "--no-progress", *extra]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("opu: error: "), err
    return err


def _path_cases(tmp_path):
    """(arguments, text the error must hold) of path errors, each refused before the device is opened."""
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    (tmp_path / "folder.png").mkdir()
    store = str(tmp_path / "store")
    return {
        "out-under-a-file": (["--out", str(a_file / "x")], "is not a directory"),
        "out-is-a-file": (["--out", str(a_file)], "not a directory"),
        "report-in-a-missing-folder": (
            ["--out", store, "--report", str(tmp_path / "missing" / "r.png")],
            "does not exist",
        ),
        "report-under-a-file": (["--out", store, "--report", str(a_file / "r.png")], "is not a directory"),
        "report-is-a-folder": (["--out", store, "--report", str(tmp_path / "folder.png")], "is a directory"),
    }


@pytest.mark.parametrize(
    "case",
    ["out-under-a-file", "out-is-a-file", "report-in-a-missing-folder", "report-under-a-file", "report-is-a-folder"],
)
def test_calibrate_path_errors_exit_2_with_one_line_before_the_run(tmp_path, capsys, case):
    args, message = _path_cases(tmp_path)[case]
    assert main(_calibrate_dark(*args)) == 2
    assert message in _one_error_line(capsys)
    assert not (tmp_path / "store").exists()  # refused before anything ran or was saved


@pytest.mark.slow  # draws a report (matplotlib): about 1.5 s
def test_calibrate_a_report_in_the_store_folder_the_run_creates_is_written(tmp_path, capsys):
    store = tmp_path / "calib"
    assert main(_calibrate_dark("--out", str(store), "--report", str(store / "report.png"))) == 0
    assert (store / "report.png").stat().st_size > 0 and len(list(store.glob("*.json"))) == 1


@pytest.mark.skipif(not os.path.isfile("/etc/passwd"), reason="needs /etc/passwd, a file")
def test_calibrate_out_under_etc_passwd_exits_2(capsys):
    assert main(_calibrate_dark("--out", "/etc/passwd/x")) == 2
    assert "/etc/passwd is not a directory" in _one_error_line(capsys)


def _writing_in(folder: str, which: str, tmp_path) -> list[str]:
    """Arguments that make ``opu calibrate`` write its store (``--out``) or its report (``--report``) in ``folder``."""
    if which == "--out":
        return _calibrate_dark("--out", os.path.join(folder, "store"))
    return _calibrate_dark("--out", str(tmp_path / "store"), "--report", os.path.join(folder, "report.png"))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes in read-only folders")
@pytest.mark.parametrize("which", ["--out", "--report"])
def test_calibrate_read_only_folders_exit_2(tmp_path, capsys, which):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    try:
        assert main(_writing_in(str(read_only), which, tmp_path)) == 2
        assert "cannot write in" in _one_error_line(capsys)
    finally:
        read_only.chmod(0o755)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs /proc, where no file can be created")
@pytest.mark.parametrize("which", ["--out", "--report"])
def test_calibrate_folders_that_cannot_be_written_exit_2_even_for_root(tmp_path, capsys, which):
    assert main(_writing_in("/proc", which, tmp_path)) == 2
    assert "cannot write in /proc" in _one_error_line(capsys)


def test_calibrate_a_write_that_fails_during_the_run_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    from opu_driver.calibration import CalibrationStore

    def full_disk(self, record):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.directory / "record.json"))

    monkeypatch.setattr(CalibrationStore, "save", full_disk)
    assert main(_calibrate_dark("--out", str(tmp_path / "store"))) == 2
    err = _one_error_line(capsys)
    assert "No space left on device" in err and "record.json" in err
