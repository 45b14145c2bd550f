"""The `opu` command line."""

import json

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
