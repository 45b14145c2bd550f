"""More of the fault matrix: the light-path faults (interlock, saturate), open and the calibration routines.

As in test_faults.py, noise=0 makes the emulator deterministic, so "the fault-free result" is a device of the
same seed without faults and results compare bit for bit: no tolerance is needed (a frame from the wrong
request, lost or decoded from a spoiled packet changes at least one value of these random inputs).

- ``interlock`` trips the laser interlock half-way through a sequence. A safety latch must never be re-armed by
  the driver, so the request raises InterlockError at once (no retry), and so does every request until the
  user clears the cause, resets the interlock and switches the laser on; then results are exact again.
- ``saturate`` makes one sequence 20 times brighter. Its frames saturate: transform returns them (counted,
  warned); linear_transform's light pilots see the jump and project that sequence's vectors again (exact).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import pytest

import firmware_sim
import opu_driver
from firmware_sim.errors import SimConfigError
from firmware_sim.faults import ALL_FAULT_KINDS, FAULT_KINDS, LIGHT_FAULT_KINDS, FaultInjector, FaultPlan
from opu_driver.calibration.dark import measure_dark
from opu_driver.calibration.drift import measure_drift
from opu_driver.calibration.exposure import tune_exposure
from opu_driver.calibration.fidelity import measure_fidelity
from opu_driver.calibration.latency import measure_latency
from opu_driver.calibration.matrix import estimate_matrix
from opu_driver.calibration.reference import measure_reference
from opu_driver.calibration.roi import measure_roi
from opu_driver.errors import (
    AcquisitionError,
    CommunicationError,
    DeviceError,
    DeviceResetError,
    InterlockError,
    OpuError,
    ProtocolError,
)
from tests.support.faults import BASE, CHUNK_FRAMES, N_COMPONENTS, TIMEOUT_S  # the same device and inputs
from tests.support.faults import fault_inputs as _inputs

QUERY = BASE.removeprefix("sim://?")
MARGIN_S = 1.0  # the contract: a typed error within the timeout plus a small margin
SETTINGS = dict(chunk_frames=CHUNK_FRAMES, timeout_s=TIMEOUT_S, calibration=None)


def _operate(opu, operation: str):
    X, E = _inputs()
    if operation == "transform":
        return opu.transform(X, N_COMPONENTS)
    return opu.linear_transform(E, N_COMPONENTS)


@pytest.fixture(scope="module")
def reference():
    with opu_driver.open(BASE, **SETTINGS) as opu:
        return {op: _operate(opu, op) for op in ("transform", "linear_transform")}


def test_light_faults_parse_replay_and_count_like_the_others():
    assert (
        set(ALL_FAULT_KINDS)
        == set(FAULT_KINDS) | {"interlock", "saturate", "light", "restart"}
        == set(FAULT_KINDS) | set(LIGHT_FAULT_KINDS)
    )
    plan = FaultPlan.parse("saturate:0.5, crc:0.1,interlock@2")
    assert str(plan) == "crc:0.1,saturate:0.5,interlock@2" and FaultPlan.parse(str(plan)) == plan
    for text in ("interlock:2", "saturate@0", "saturate"):
        with pytest.raises(SimConfigError, match="interlock|saturate"):
            FaultPlan.parse(text)
    a, b = FaultInjector("saturate:0.5", seed=3), FaultInjector("saturate:0.5,interlock:0.5", seed=3)
    assert [a.fire("saturate") for _ in range(50)] == [b.fire("saturate") for _ in range(50)]  # streams apart
    assert a.counts()["events"]["saturate"] == 50 and 10 < a.counts()["injected"]["saturate"] < 40


@pytest.mark.parametrize("operation", ["transform", "linear_transform"])
def test_an_interlock_trip_is_an_interlock_error_at_once_until_the_user_clears_it(reference, operation):
    with opu_driver.open(BASE, retries=3, **SETTINGS) as opu:
        opu.emulator.set_faults("interlock@1")
        start = time.monotonic()
        with pytest.raises(InterlockError):
            _operate(opu, operation)
        assert time.monotonic() - start < TIMEOUT_S + MARGIN_S
        assert opu.counters.retries == 0  # a safety latch is never re-armed by a retry
        assert opu.emulator.fault_counts["injected"]["interlock"] == 1
        with pytest.raises(InterlockError):  # tripped, and the laser is off: no light until the user acts
            _operate(opu, operation)
        with pytest.raises(DeviceError):  # the cause is still there: the controller refuses the reset
            opu.controller.reset_interlock()
        assert not opu.controller.interlock_ok
        opu.emulator.clear_interlock_cause()
        opu.controller.reset_interlock()
        # re-armed, but the laser stays off until the user switches it on: never by a retry or a restore
        try:
            _operate(opu, operation)
        except OpuError:
            pass  # linear mode in the dark (AcquisitionError), or dark frames for transform: either way no light
        assert not opu.controller.laser_is_on and opu.counters.light_restored == 0
        opu.controller.laser_on()
        np.testing.assert_array_equal(_operate(opu, operation), reference[operation])


def test_a_reset_whose_reply_is_lost_is_never_undone_by_a_restore(reference):
    with opu_driver.open(BASE, retries=2, **SETTINGS) as opu:
        opu.emulator.set_faults("serial@1,serial@2,serial@3")  # every attempt's reply to *RST garbled
        with pytest.raises(ProtocolError):
            opu.controller.reset()  # it did reset the device: laser off, shutter closed
        opu.emulator.set_faults("")
        _operate(opu, "transform")  # dark frames, as a reset leaves them
        assert not opu.controller.laser_is_on and opu.counters.light_restored == 0


def test_a_saturated_sequence_is_returned_counted_and_warned_and_the_next_is_exact(reference, caplog):
    expected = reference["transform"]
    with opu_driver.open(BASE, retries=3, **SETTINGS) as opu:
        opu.emulator.set_faults("saturate@1")  # the first of the 6 sequences: rows 0..7
        before = opu.counters.saturated_frames
        with caplog.at_level(logging.WARNING):
            y = _operate(opu, "transform")
        saturated = opu.counters.saturated_frames - before
        assert opu.emulator.fault_counts["injected"]["saturate"] == 1
        np.testing.assert_array_equal(y[CHUNK_FRAMES:], expected[CHUNK_FRAMES:])
        # x20 light: with noise=0 every row of the sequence has outputs at full scale, more than before
        full_scale = y.max()
        assert 1 <= saturated <= CHUNK_FRAMES
        assert (y[:CHUNK_FRAMES] == full_scale).sum() > (expected[:CHUNK_FRAMES] == full_scale).sum()
        assert any("saturated" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        assert opu.counters.requests_failed == 0 and opu.counters.retries == 0
        np.testing.assert_array_equal(_operate(opu, "transform"), expected)


def test_linear_transform_projects_a_saturated_sequence_again_and_is_exact(reference, caplog):
    expected = reference["linear_transform"]
    with opu_driver.open(BASE, retries=3, **SETTINGS) as opu:
        np.testing.assert_array_equal(_operate(opu, "linear_transform"), expected)  # calibrates the reference
        reruns, zeroed = opu.linear_mode.light_reruns, opu.linear_mode.saturated_outputs
        opu.emulator.set_faults("saturate@1")  # the first sequence: vectors 0 and 1 and their pilots
        with caplog.at_level(logging.WARNING):
            y = _operate(opu, "linear_transform")
        assert opu.emulator.fault_counts["injected"]["saturate"] == 1
        # The pilots shown with the saturated sequence read far above the calibrated light: its vectors are
        # projected again, and nothing of the jump is left in the result (no output zeroed either).
        np.testing.assert_array_equal(y, expected)
        assert opu.linear_mode.light_reruns > reruns and opu.linear_mode.saturated_outputs == zeroed
        assert any("light moved" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        assert opu.counters.requests_failed == 0 and opu.counters.retries == 0


@pytest.mark.parametrize("operation", ["transform", "linear_transform"])
@pytest.mark.parametrize("retries", [0, 2])
def test_a_controller_restart_between_requests_is_detected_and_the_light_restored(reference, operation, retries):
    # The controller alone restarts (its power-on state: laser off, shutter closed, default power): the camera
    # and DMD keep their settings, so only the dark frames tell. The driver last switched the light on, so a
    # dark frame is the device's doing, not the user's: DeviceResetError, retried after the light is restored.
    with opu_driver.open(BASE, retries=retries, **SETTINGS) as opu:
        np.testing.assert_array_equal(_operate(opu, operation), reference[operation])  # calibrates linear mode
        opu.emulator.controller.power_on()
        assert not opu.controller.laser_is_on
        if retries:
            np.testing.assert_array_equal(_operate(opu, operation), reference[operation])
            assert opu.counters.retries >= 1
        else:
            with pytest.raises(DeviceResetError):
                _operate(opu, operation)
        assert opu.counters.light_restored == 1  # counted once
        assert opu.counters.resets_detected == 0  # the USB side and its clock did not restart
        assert opu.controller.laser_is_on and opu.controller.shutter_is_open  # put back, even when it raised
        np.testing.assert_array_equal(_operate(opu, operation), reference[operation])


@pytest.mark.parametrize("operation", ["transform", "linear_transform"])
def test_a_scheduled_controller_restart_mid_request_is_recovered_exactly(reference, operation):
    # The same restart as above, as a fault of the plan: just before the second sequence of the request.
    with opu_driver.open(BASE, retries=2, **SETTINGS) as opu:
        _operate(opu, operation)  # calibrates linear mode
        opu.emulator.set_faults("restart@2")
        np.testing.assert_array_equal(_operate(opu, operation), reference[operation])
        assert opu.emulator.fault_counts["injected"]["restart"] == 1
        assert opu.counters.light_restored == 1 and opu.counters.retries >= 1
        assert opu.controller.laser_is_on and opu.controller.shutter_is_open


def test_the_users_own_laser_off_gives_dark_frames_not_an_error(reference):
    with opu_driver.open(BASE, retries=2, **SETTINGS) as opu:
        opu.controller.laser_off()
        y = _operate(opu, "transform")
        assert opu.counters.retries == 0 and opu.counters.resets_detected == 0
        assert not opu.controller.laser_is_on
        assert y.max() < reference["transform"].max()
        # the linear mode cannot measure its reference in the dark: a device-side error, not refused input
        with pytest.raises(AcquisitionError, match="usable reference|measurable light") as caught:
            _operate(opu, "linear_transform")
        assert not isinstance(caught.value, ValueError)
        opu.controller.laser_on()
        np.testing.assert_array_equal(_operate(opu, "linear_transform"), reference["linear_transform"])


@pytest.mark.parametrize("faults", ["timeout:0.5", "crc:0.5", "stall:0.5", "serial:0.5", "slow:0.5,drop:0.3"])
@pytest.mark.parametrize("retries", [0, 3])
def test_open_under_faults_succeeds_or_raises_in_time_and_a_later_open_works(reference, faults, retries):
    device = firmware_sim.create_device(f"{QUERY}&faults={faults}")
    try:
        start = time.monotonic()
        try:
            with opu_driver.open(f"sim://{device.name}", retries=retries, **SETTINGS) as opu:
                pass
        except OpuError:
            pass  # a typed error is within the contract
        assert time.monotonic() - start < TIMEOUT_S + MARGIN_S
        assert sum(device.fault_counts["events"].values()) >= 1  # open did talk to the faulty device
        device.set_faults("")
        with opu_driver.open(f"sim://{device.name}", **SETTINGS) as opu:
            np.testing.assert_array_equal(_operate(opu, "transform"), reference["transform"])
    finally:
        firmware_sim.release_device(device)


# Every routine together sends about 1,500 frames in about 190 sequences of 8: these rates make every fault
# fire (checked), retries=10 makes a request that spends them all unlikely (each retry fails with p < 0.1), and
# the short timeout keeps the injected timeouts cheap.
CALIBRATION_MIX = (
    "timeout:0.01,stall:0.03,crc:0.01,truncate:0.01,drop:0.01,dup:0.02,reorder:0.02,reset:0.02,slow:0.02,serial:0.05"
)
CALIBRATION_TIMEOUT_S = 0.5
# Fields that count cost or read the device clock: resent frames add to both, and a reset sets the clock back.
# Everything else a routine returns must be equal bit for bit.
_COST_OR_CLOCK = {
    "matrix": {
        "n_frames",
        "n_frames_reference",
        "n_frames_probes",
        "n_frames_noise",
        "n_frames_holdout",
        "n_frames_nonlinear",
    },
    "drift": {"baseline_device_time_us", "times_s"},
}


def _calibrate(opu) -> dict[str, object]:
    """Every routine, small and seeded; all go through the driver's acquisition path (retried like transform)."""
    return {
        "exposure": tune_exposure(opu, 20, 64, n_frames=2),
        "dark": measure_dark(opu, 32, n_frames=16),
        "reference": measure_reference(opu, 20, 32, n_frames=8),
        "roi": measure_roi(opu, 32, n_features=20, n_frames=8, max_lag_px=2, seed=1),
        "fidelity": measure_fidelity(opu, 20, 32, n_bits=(None, 2), n_vectors=8, seed=1),
        "matrix": estimate_matrix(opu, 16, 32, n_holdout=8, n_repeats=2, seed=1),
        "drift": measure_drift(opu, 16, 32, n_checks=2, frames_between=8, n_probes=8, seed=1),
    }


def _assert_same(a: object, b: object, where: str) -> None:
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        assert type(a) is type(b), where
        for field in dataclasses.fields(a):
            if field.name not in _COST_OR_CLOCK.get(where, ()):
                _assert_same(getattr(a, field.name), getattr(b, field.name), f"{where}.{field.name}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, np.ndarray):
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), where
    else:
        assert a == b, where


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_calibration_routines_under_a_mix_of_faults_give_the_fault_free_results(seed):
    settings = {**SETTINGS, "timeout_s": CALIBRATION_TIMEOUT_S}
    with opu_driver.open(BASE, **settings) as opu:
        clean = _calibrate(opu)
    with opu_driver.open(f"{BASE}&faults={CALIBRATION_MIX}", retries=10, **settings) as opu:
        opu.emulator.faults.set_plan(CALIBRATION_MIX, seed=seed)  # afresh after open, another stream per seed
        faulty = _calibrate(opu)
        injected = opu.emulator.fault_counts["injected"]
        retries = opu.counters.retries
    fired = {kind for kind, count in injected.items() if count}
    assert {"stall", "crc", "drop", "dup", "reorder", "reset"} <= fired, injected
    assert retries >= 3
    for name in clean:
        _assert_same(faulty[name], clean[name], name)


@pytest.mark.parametrize(
    "faults",
    [
        "crc:0.1",
        "drop:0.1",
        "timeout:0.3",
        "reset:0.5",
        # measure_latency places each frame by the camera's own frame counter, so duplicated and reordered frames
        # (which once shifted the series: a lag of 3 instead of 2) cannot move it
        "dup:0.2,reorder:0.2",
    ],
)
def test_measure_latency_under_faults_gives_the_same_lag_or_a_typed_error_in_time(faults):
    # measure_latency reads its frames directly (no retry): a spoiled or lost frame is a typed error of the
    # link, never a wrong lag; the pattern is drawn afresh each call, so only the lags are compared.
    def latency(opu):
        return measure_latency(opu, n_frames=16, max_lag_frames=4, n_components=32, n_features=16, timeout_s=TIMEOUT_S)

    with opu_driver.open(f"{BASE}&lag=2", **SETTINGS) as opu:
        clean = latency(opu)
    assert clean.lag_frames == 2
    outcomes = []
    with opu_driver.open(f"{BASE}&lag=2&faults={faults}", retries=3, **SETTINGS) as opu:
        for _ in range(4):
            start = time.monotonic()
            try:
                result = latency(opu)
                outcomes.append("same")
                assert (result.lag_frames, result.header_lag_frames) == (clean.lag_frames, clean.header_lag_frames)
            except (CommunicationError, AcquisitionError) as exc:
                outcomes.append(type(exc).__name__)
            assert time.monotonic() - start < 2 * TIMEOUT_S + MARGIN_S  # the priming transform, then the read
        assert sum(opu.emulator.fault_counts["injected"].values()) >= 1
        opu.emulator.set_faults("")
        result = latency(opu)  # nothing left over from the faulty runs
        assert (result.lag_frames, result.header_lag_frames) == (clean.lag_frames, clean.header_lag_frames)
