"""The fault matrix: every fault the emulator injects, against transform and linear_transform.

DESIGN.md section 8: a request returns exactly its own result or raises a typed error in time. With noise=0
the emulator is deterministic, so "its own result" is testable bit for bit: a device with the same seed and no
faults gives the reference, and a faulty run must give exactly the same array (a frame attributed to the wrong
request, lost, duplicated or decoded from a corrupt packet would change at least one value; the inputs are
random, so no two rows share their counts). No tolerance is needed anywhere.

Two columns per fault: with ``retries`` the driver recovers (the result equals the reference and the counters
show the recovery); with ``retries=0`` the fault surfaces as its documented typed error within the timeout plus
a margin, and the next request works again.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

import opu_driver
from firmware_sim.config import SimConfig
from firmware_sim.errors import SimConfigError
from firmware_sim.faults import FAULT_KINDS, FaultInjector, FaultPlan
from opu_driver.errors import (
    CommunicationTimeoutError,
    ConfigurationError,
    DroppedFramesError,
    ProtocolError,
    StallError,
)
from tests.support import small_sim
from tests.support.faults import (
    BASE,
    CHUNK_FRAMES,
    CLEARED_IN_ATTEMPT,
    ERRORS_WITHOUT_RETRY,
    FRAME_LEVEL,
    HARMLESS,
    MIX,
    N_COMPONENTS,
    RATES,
    RETRIES,
    TIMEOUT_S,
)
from tests.support.faults import fault_inputs as _inputs
from tests.support.v1 import v1_link


@pytest.fixture(scope="module")
def reference():
    X, E = _inputs()
    with opu_driver.open(BASE, chunk_frames=CHUNK_FRAMES) as opu:
        return {"transform": opu.transform(X, N_COMPONENTS), "linear_transform": opu.linear_transform(E, N_COMPONENTS)}


def _operate(opu, operation: str):
    X, E = _inputs()
    if operation == "transform":
        return opu.transform(X, N_COMPONENTS)
    return opu.linear_transform(E, N_COMPONENTS)


def _open(faults: str, **settings):
    return opu_driver.open(f"{BASE}&faults={faults}", chunk_frames=CHUNK_FRAMES, timeout_s=TIMEOUT_S, **settings)


OPERATIONS = ("transform", "linear_transform")


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", sorted(RATES))
def test_each_fault_is_recovered_exactly_with_retries(reference, operation, kind):
    with _open(f"{kind}:{RATES[kind]}", retries=RETRIES) as opu:
        result = _operate(opu, operation)
        injected = opu.emulator.fault_counts["injected"][kind]
        counters = opu.counters
    np.testing.assert_array_equal(result, reference[operation])
    assert injected >= 2, f"{kind} fired {injected} times: raise its rate so the test means something"
    assert counters.requests_failed == 0
    if kind in FRAME_LEVEL:  # the lost frames shown again in the same attempt: no retry of the sequence
        assert counters.frames_missing >= 1 and counters.frames_resent >= 1
    elif kind in CLEARED_IN_ATTEMPT:
        assert counters.stalls >= 1
    elif kind in ERRORS_WITHOUT_RETRY:
        assert counters.retries >= 1 and counters.requests_recovered >= 1
        assert counters.frames_recovered >= 1
    if kind == "dup":
        # recognised by camera frame id, never used twice (a copy left last in the stream is discarded as stale
        # by the next sequence instead)
        assert 1 <= counters.duplicate_frames <= injected
    if kind == "reorder":
        assert counters.reordered_frames >= 1
    if kind == "reset":
        assert counters.resets_detected >= 1  # layout and ROI were uploaded again
    if kind in ("crc", "truncate"):
        assert counters.corrupt_packets >= 1
    if kind == "stall":
        assert counters.stalls >= 1


@pytest.mark.parametrize("operation", OPERATIONS)
def test_a_mix_of_faults_with_a_lag_is_recovered_exactly(reference, operation):
    with opu_driver.open(BASE, chunk_frames=CHUNK_FRAMES) as opu:
        lagged_reference = _operate(opu, operation)
    np.testing.assert_array_equal(lagged_reference, reference[operation])
    with opu_driver.open(
        f"{BASE}&lag=2&faults={MIX}", chunk_frames=CHUNK_FRAMES, timeout_s=TIMEOUT_S, retries=RETRIES
    ) as opu:
        first = _operate(opu, operation)
        second = _operate(opu, operation)  # a second request after recoveries: nothing left over from the first
        injected = sum(opu.emulator.fault_counts["injected"].values())
        assert opu.lag_frames == 2
    np.testing.assert_array_equal(first, reference[operation])
    np.testing.assert_array_equal(second, reference[operation])
    assert injected >= 5


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize("kind", sorted(ERRORS_WITHOUT_RETRY))
def test_without_retries_each_fault_is_its_typed_error_in_time_and_the_next_request_works(reference, operation, kind):
    with _open("", retries=0) as opu:
        good = _operate(opu, operation)
        opu.emulator.set_faults(f"{kind}@1")
        started = time.monotonic()
        with pytest.raises(ERRORS_WITHOUT_RETRY[kind]):
            _operate(opu, operation)
        elapsed_s = time.monotonic() - started
        assert opu.emulator.fault_counts["injected"][kind] == 1
        assert opu.counters.requests_failed == 1
        # The failed request aborted, drained and cleared halts: the next one is exact.
        again = _operate(opu, operation)
    np.testing.assert_array_equal(good, reference[operation])
    np.testing.assert_array_equal(again, reference[operation])
    # The emulator answers at once (an empty FIFO times out immediately): any wait is the driver's own; the
    # contract is the request's timeout plus a margin for the recovery.
    assert elapsed_s < TIMEOUT_S + 1.0


@pytest.mark.parametrize("kind", HARMLESS)
def test_harmless_faults_need_no_retry(reference, kind):
    with _open(f"{kind}:{RATES[kind]}", retries=0) as opu:
        np.testing.assert_array_equal(_operate(opu, "transform"), reference["transform"])
        assert opu.emulator.fault_counts["injected"][kind] >= 2
        assert opu.counters.retries == 0


def test_garbage_on_the_controller_line_is_retried_and_past_the_retries_a_protocol_error():
    with _open("") as opu:
        power_mw = opu.controller.laser_power_mw
        opu.emulator.set_faults("serial@1")  # one garbled reply: the query is sent again
        assert opu.controller.laser_power_mw == power_mw
        opu.emulator.set_faults("serial@1,serial@2,serial@3")  # three in a row exhaust the 3 attempts
        with pytest.raises(ProtocolError):
            opu.controller.laser_power_mw
        assert opu.controller.laser_power_mw == power_mw
        # transform never waits on the controller: garbage there cannot touch its results
        opu.emulator.set_faults("serial:1")
        X, _ = _inputs()
        y = opu.transform(X, N_COMPONENTS)
    with _open("") as opu:
        np.testing.assert_array_equal(y, opu.transform(X, N_COMPONENTS))


def test_a_scheduled_reset_happens_at_exactly_that_sequence_start():
    with _open("reset@3", retries=2) as opu:
        X, _ = _inputs()
        opu.transform(X, N_COMPONENTS)
        counts = opu.emulator.fault_counts
        assert counts["injected"]["reset"] == 1
        assert opu.counters.resets_detected == 1
        assert opu.counters.retries == 1


def test_a_fault_plan_replays_exactly_from_the_seed():
    def run(seed: int):
        url = small_sim(f"noise=0&seed={seed}&faults={MIX}")
        with opu_driver.open(url, chunk_frames=CHUNK_FRAMES, retries=RETRIES) as opu:
            y = _operate(opu, "transform")
            counters = opu.counters
            return y, opu.emulator.fault_counts, (counters.retries, counters.frames_resent, counters.sequences)

    first, second, other = run(9), run(9), run(10)
    np.testing.assert_array_equal(first[0], second[0])
    assert first[1:] == second[1:]
    assert first[1] != other[1]  # another seed, other draws


def test_the_fault_plan_text_round_trips_and_bad_plans_are_refused_naming_the_entry():
    plan = FaultPlan.parse("timeout:0.02, crc:0.02,drop:0.02,dup:0.02,reset@3")
    assert str(plan) == "timeout:0.02,crc:0.02,drop:0.02,dup:0.02,reset@3"
    assert FaultPlan.parse(str(plan)) == plan and plan.active
    assert not FaultPlan.parse("").active
    config = SimConfig.from_query("seed=1&faults=timeout:0.02,crc:0.02,drop:0.02,dup:0.02")
    assert SimConfig.from_query(config.to_query()) == config
    assert SimConfig(faults=plan).fault_plan == plan
    for text, named in [
        ("bogus:0.1", "bogus"),
        ("crc:1.5", "crc"),
        ("crc:x", "crc"),
        ("drop@0", "drop"),
        ("dup", "dup"),
        ("crc:0.1,crc:0.2", "crc"),
        ("crc:0.1,,drop:0.1", "empty"),
    ]:
        with pytest.raises(SimConfigError, match=named):
            FaultPlan.parse(text)
        with pytest.raises(SimConfigError, match="faults"):
            SimConfig.from_query({"faults": text})
        with pytest.raises(ConfigurationError, match="faults"):  # the driver's sim:// hook translates it
            opu_driver.open(f"sim://?faults={text}")
    assert set(FAULT_KINDS) == {
        "timeout",
        "stall",
        "crc",
        "truncate",
        "drop",
        "dup",
        "reorder",
        "reset",
        "serial",
        "slow",
    }


def test_frame_faults_change_only_what_they_say():
    packet_bytes = 40
    blob = bytes(range(packet_bytes)) * 3 + bytes(range(1, packet_bytes + 1)) * 1
    frames = [blob[i : i + packet_bytes] for i in range(0, len(blob), packet_bytes)]
    assert FaultInjector("drop@2").camera_packets(blob, packet_bytes) == frames[0] + frames[2] + frames[3]
    assert FaultInjector("dup@1").camera_packets(blob, packet_bytes) == frames[0] * 2 + b"".join(frames[1:])
    assert FaultInjector("reorder@3").camera_packets(blob, packet_bytes) == b"".join(frames[:2]) + frames[3] + frames[2]
    flipped = FaultInjector("crc@1").camera_packets(blob, packet_bytes)
    diff = np.frombuffer(flipped, np.uint8) ^ np.frombuffer(blob, np.uint8)
    assert np.unpackbits(diff).sum() == 1 and 16 <= np.flatnonzero(diff)[0] < packet_bytes - 4  # payload only
    cut = FaultInjector("truncate@4").camera_packets(blob, packet_bytes)
    assert cut.startswith(b"".join(frames[:3])) and 16 <= len(cut) - 3 * packet_bytes < packet_bytes


def test_a_restore_that_fails_half_way_is_finished_before_the_next_request():
    # A reset loses the camera registers; the restore's gain write then times out once. The driver must not
    # forget the settings it wants (gain 3): the next request writes them again and gives the exact result.
    from opu_driver.protocol import Register

    url = small_sim("noise=0&seed=5")
    X = np.random.default_rng(11).integers(0, 2, size=(48, 30), dtype=np.uint8)
    settings = dict(chunk_frames=8, timeout_s=2.0, gain=3.0, calibration=None)
    with opu_driver.open(url, **settings) as opu:
        reference = opu.transform(X, 40)
    with opu_driver.open(url, retries=1, **settings) as opu:
        write = v1_link(opu).write_register
        armed = {"gain": True}

        def failing_write(register, value):
            if armed["gain"] and int(register) == int(Register.GAIN_MILLI):
                armed["gain"] = False
                raise CommunicationTimeoutError("injected: the gain write of the restore timed out")
            return write(register, value)

        v1_link(opu).write_register = failing_write
        opu.emulator.set_faults("reset@1")
        try:
            opu.transform(X, 40)
        except CommunicationTimeoutError:
            pass  # within the contract: a typed error for this request
        assert not armed["gain"]  # the failing write did happen
        np.testing.assert_array_equal(opu.transform(X, 40), reference)
        assert v1_link(opu).read_register(Register.GAIN_MILLI) == 3000


def test_the_session_fault_counters_are_logged_at_close(caplog):
    with caplog.at_level(logging.INFO, logger="opu_driver.opu"):
        with _open(f"reset:{RATES['reset']}", retries=RETRIES) as opu:
            _operate(opu, "transform")
            retries = opu.counters.retries
    summary = [r.getMessage() for r in caplog.records if "faults met this session" in r.getMessage()]
    assert retries >= 1 and len(summary) == 1 and f"retries {retries}" in summary[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="opu_driver.opu"):
        with _open("") as opu:
            _operate(opu, "transform")
    assert not any("faults met this session" in r.getMessage() for r in caplog.records)  # nothing went wrong


# ---------------------------------------------------------------------------------------- frame-level recovery
LINK_MIX = "timeout:0.02,crc:0.02,drop:0.02,dup:0.02"
"""Faults at the rates a flaky USB hub or cable produces."""


@pytest.mark.slow
@pytest.mark.parametrize("batch", [300, 2000])
def test_a_lost_frame_costs_that_frame_only_with_the_default_retries(batch):
    X = np.random.default_rng(batch).integers(0, 2, size=(batch, 500), dtype=np.uint8)
    with opu_driver.open(BASE) as opu:
        reference = opu.transform(X, N_COMPONENTS)
        clean_frames = opu.counters.frames_sent
    with opu_driver.open(f"{BASE}&faults={LINK_MIX}") as opu:  # default retries, default sequence length
        result = opu.transform(X, N_COMPONENTS)
        counters, injected = opu.counters, opu.emulator.fault_counts["injected"]
    np.testing.assert_array_equal(result, reference)
    assert injected["crc"] >= 3 and injected["drop"] >= 3  # the faults really hit this call
    assert counters.corrupt_packets >= 1 and counters.frames_resent >= injected["drop"]
    # Only the lost frames were shown again: frames sent within 1.25x of a clean run (about 1.04x here).
    assert counters.frames_sent <= 1.25 * clean_frames


def test_the_retry_budget_counts_attempts_that_made_no_progress():
    # One retry allowed; a stall ends an attempt, but every attempt brings results: the call still succeeds,
    # however many attempts it takes (each scattered fault is paid for by the frames it touched).
    X = np.random.default_rng(7).integers(0, 2, size=(96, 30), dtype=np.uint8)
    with opu_driver.open(BASE) as opu:
        reference = opu.transform(X, N_COMPONENTS)
    with opu_driver.open(f"{BASE}&faults=reset@1,reset@2,reset@3", retries=1) as opu:
        np.testing.assert_array_equal(opu.transform(X, N_COMPONENTS), reference)
        counters = opu.counters
    assert counters.retries >= 3 and counters.requests_failed == 0 and counters.resets_detected >= 3


def test_without_retries_a_lost_frame_is_still_a_typed_error():
    X = np.random.default_rng(8).integers(0, 2, size=(48, 30), dtype=np.uint8)
    with opu_driver.open(f"{BASE}&faults=drop@5", retries=0, timeout_s=TIMEOUT_S) as opu:
        started = time.monotonic()
        with pytest.raises(DroppedFramesError, match="never arrived"):
            opu.transform(X, N_COMPONENTS)
        assert time.monotonic() - started < TIMEOUT_S  # known lost from the camera's counter, not timed out


def test_a_pipe_that_stalls_at_every_transfer_is_a_stall_error_in_time():
    # Stalls are cleared where they happen, but one that comes back at once, again and again, is no passing fault:
    # after a few in a row the attempt ends, and once the retries are spent the call raises StallError.
    with _open("", retries=2) as opu:
        X, _ = _inputs()
        opu.transform(X, N_COMPONENTS)
        opu.emulator.set_faults("stall:1")
        start = time.monotonic()
        with pytest.raises(StallError):
            opu.transform(X, N_COMPONENTS)
        assert time.monotonic() - start < TIMEOUT_S + 1.0
        assert opu.counters.requests_failed == 1 and opu.counters.stalls >= 3
        opu.emulator.set_faults("")
        opu.transform(X, N_COMPONENTS)  # the next call starts clean
