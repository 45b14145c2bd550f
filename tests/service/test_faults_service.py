"""The fault matrix's service column: every fault behind an in-process OpuService, seen through dfa_client.

The device and inputs are test_faults.py's (``noise=0``, same seed and geometry), so the emulator is
deterministic and "exact" means bit for bit the fault-free direct ``Opu.linear_transform`` of the same vectors:
no tolerance is needed anywhere (a frame attributed to the wrong request, lost, duplicated or decoded from a
spoiled packet changes at least one value).

The service passes ``opu_settings`` to ``opu_driver.open`` (``retries``, ``timeout_s``, ...); the faults are
installed on the served device after start (``service.opu.emulator.set_faults``), so the open is clean and the
first request (which also measures the linear mode's reference) meets them. What the driver counted is read
from the served Opu (``service.opu.counters``, ``.controller.counters``, ``.linear_mode``) and the service's
``stats()``; a client sees only its results or an ERROR, which dfa_client raises as ``ServiceError(kind=...)``
with the driver error's class name as the kind (docs/service.md, "ERROR kinds").

Columns: with retries every fault is recovered exactly; with ``retries=0`` the faults that lose or spoil frames
are their typed error within the driver's timeout plus 1 s, on the same connection, and the next request is
exact; interlock is always an error until the user clears it; a saturated sequence is returned with the outputs
it fed set to 0, exactly what the direct call returns (and one during the linear mode's reference measurement
makes the driver measure it again); two clients coalesced into the same device calls under a mix of faults each
get their own rows.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

import dfa_client
import opu_driver
import opu_driver.errors
import opu_driver.transport
from dfa_client.errors import ServiceError
from opu_driver.errors import DeviceError, OpuError
from opu_driver.service import OpuService
from tests.support.faults import (  # the same device, inputs, rates and driver errors as the driver's columns
    BASE,
    CHUNK_FRAMES,
    ERRORS_WITHOUT_RETRY,
    FRAME_LEVEL,
    HARMLESS,
    N_COMPONENTS,
    RATES,
    RETRIES,
    TIMEOUT_S,
)
from tests.support.faults import (
    fault_inputs as _inputs,
)

SETTINGS = dict(chunk_frames=CHUNK_FRAMES, timeout_s=TIMEOUT_S, calibration=None)
MARGIN_S = 1.0  # the contract: a typed error within the request's timeout plus this
CLIENT_TIMEOUT_S = 10.0  # recovered requests: a bound for "no hang", never a performance assertion
WAIT_S = 10.0

# The faults drawn at a rate, as in test_faults.py (each fires several times: asserted). ``serial`` is scheduled
# instead, so that no draw can garble every attempt of one exchange: two garbled replies to the first
# LASER:POWER? of a request and one to the second, each recovered by the controller sending it again.
PLANS = {kind: f"{kind}:{rate}" for kind, rate in RATES.items()} | {"serial": "serial@1,serial@2,serial@4"}

# retries=0: the ERROR kind the client gets (ServiceError.kind), the driver's error class name.
ERROR_KINDS = {
    "stall": {"StallError"},
    "crc": {"CorruptPacketError"},
    "truncate": {"CorruptPacketError", "CommunicationTimeoutError"},
    "drop": {"CommunicationTimeoutError", "DroppedFramesError"},
    "reset": {
        "CommunicationTimeoutError",
        "DroppedFramesError",
        "ProtocolError",
        "CorruptPacketError",
        "DeviceResetError",
    },
    "serial": {"ProtocolError"},  # a garbled reply to every attempt the controller makes
}


def _one_fault(kind: str, opu) -> str:
    """The plan that makes ``kind`` fail one request: the first event, or for ``serial`` one garbled reply per
    attempt of the controller's first exchange (its attempts are read from the driver, not assumed)."""
    if kind == "serial":
        return ",".join(f"serial@{event}" for event in range(1, opu.controller.max_retries + 2))
    return f"{kind}@1"


# Every fault but the light ones at once, for two clients: test_faults.MIX with ``slow`` raised, so that each kind
# fires at least twice in the few device calls of that test (asserted).
SERVICE_MIX = "timeout:0.05,stall:0.03,crc:0.02,truncate:0.02,drop:0.02,dup:0.02,reorder:0.02,reset:0.05,slow:0.15"
ROUNDS = 3


def _real_inputs() -> np.ndarray:
    """Real-valued errors of test_faults' width: 8 bit planes each, 96 frames."""
    return np.random.default_rng(12).normal(size=(3, 20))


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    """The fault-free direct results of the same vectors on a device of the same seed."""
    _, E = _inputs()
    with opu_driver.open(BASE, **SETTINGS) as opu:
        return {
            "ternary": opu.linear_transform(E, N_COMPONENTS),
            "real": opu.linear_transform(_real_inputs(), N_COMPONENTS),
        }


@contextlib.contextmanager
def _serve(retries: int) -> Iterator[OpuService]:
    service = OpuService(BASE, opu_settings=dict(SETTINGS, retries=retries)).start()
    try:
        yield service
    finally:
        service.stop()


def _client(service: OpuService, timeout_s: float = CLIENT_TIMEOUT_S):
    host, port = service.address
    # retries=0: a lost connection is not re-sent behind the test's back; the service must keep it in step.
    return dfa_client.connect(f"tcp://{host}:{port}", n_components=N_COMPONENTS, timeout_s=timeout_s, retries=0)


def _driver_error(kind: str) -> type:
    """The driver's error class an ERROR kind names (docs/service.md: "a driver error name")."""
    cls = getattr(opu_driver.errors, kind, None) or getattr(opu_driver.transport, kind)
    assert isinstance(cls, type) and issubclass(cls, OpuError), kind
    return cls


def _snapshot(counters):
    return dataclasses.replace(counters)


# ------------------------------------------------------------------------------------------ retries >= 1
@pytest.mark.parametrize("kind", sorted(PLANS))
def test_each_fault_behind_the_service_is_recovered_exactly_with_retries(reference, kind):
    _, E = _inputs()
    R = _real_inputs()
    with _serve(RETRIES) as service:
        opu = service.opu
        opu.emulator.set_faults(PLANS[kind])
        with _client(service) as projector:
            ternary = projector.project(E)  # measures the linear mode's reference first, under the faults too
            real = projector.project(R)
            assert projector.reconnects == 0
        injected = opu.emulator.fault_counts["injected"][kind]
        counters = _snapshot(opu.counters)
        controller = _snapshot(opu.controller.counters)
        stats = service.stats()
    np.testing.assert_array_equal(ternary, reference["ternary"])
    np.testing.assert_array_equal(real, reference["real"])
    assert injected >= 2, f"{kind} fired {injected} times: raise its rate so the test means something"
    assert stats.requests == 2 and stats.vectors == len(E) + len(R)
    assert stats.request_errors == stats.protocol_errors == stats.requests_abandoned == 0
    assert counters.requests_failed == 0 and controller.requests_failed == 0
    if kind in FRAME_LEVEL:  # the lost frames shown again in the same attempt
        assert counters.frames_missing >= 1 and counters.frames_resent >= 1
    elif kind in ERRORS_WITHOUT_RETRY:
        assert counters.retries >= 1 and counters.requests_recovered >= 1 and counters.frames_recovered >= 1
    if kind in HARMLESS or kind == "serial":
        assert counters.retries == 0
    if kind == "dup":
        assert 1 <= counters.duplicate_frames <= injected
    if kind == "reorder":
        assert counters.reordered_frames >= 1
    if kind == "reset":
        assert counters.resets_detected >= 1
    if kind in ("crc", "truncate"):
        assert counters.corrupt_packets >= 1
    if kind == "stall":
        assert counters.stalls >= 1
    if kind == "serial":
        assert controller.garbled_replies == injected == 3
        assert controller.retries == 3 and controller.requests_recovered == 2


# ------------------------------------------------------------------------------------------ retries = 0
@pytest.mark.parametrize("kind", sorted(ERROR_KINDS))
def test_without_retries_each_fault_is_its_typed_service_error_in_time_and_the_service_keeps_serving(reference, kind):
    _, E = _inputs()
    for name in ERROR_KINDS[kind]:  # the driver's own column (test_faults.py) names the same errors
        if kind != "serial":
            assert issubclass(_driver_error(name), ERRORS_WITHOUT_RETRY[kind])
        else:
            assert _driver_error(name) is opu_driver.errors.ProtocolError
    with _serve(0) as service:
        opu = service.opu
        with _client(service, timeout_s=TIMEOUT_S + MARGIN_S) as projector:
            np.testing.assert_array_equal(projector.project(E), reference["ternary"])  # reference measured
            opu.emulator.set_faults(_one_fault(kind, opu))
            attempts = opu.controller.max_retries + 1
            started = time.monotonic()
            with pytest.raises(ServiceError) as caught:
                projector.project(E)
            elapsed_s = time.monotonic() - started
            assert caught.value.kind in ERROR_KINDS[kind], caught.value
            assert elapsed_s < TIMEOUT_S + MARGIN_S
            assert service.running
            injected = opu.emulator.fault_counts["injected"][kind]
            failed = opu.counters.requests_failed + opu.controller.counters.requests_failed
            opu.emulator.set_faults("")
            # the same connection stays in step, and a new one is served too
            np.testing.assert_array_equal(projector.project(E), reference["ternary"])
            assert projector.reconnects == 0
        with _client(service) as other:
            np.testing.assert_array_equal(other.project(E), reference["ternary"])
        stats = service.stats()
    assert injected == (attempts if kind == "serial" else 1)
    assert failed == 1
    assert stats.requests == 4 and stats.request_errors == 1 and stats.protocol_errors == 0
    assert stats.vectors == 3 * len(E)


@pytest.mark.parametrize("kind", HARMLESS)
def test_without_retries_the_harmless_faults_are_still_exact(reference, kind):
    _, E = _inputs()
    with _serve(0) as service:
        service.opu.emulator.set_faults(PLANS[kind])
        with _client(service) as projector:
            np.testing.assert_array_equal(projector.project(E), reference["ternary"])
            np.testing.assert_array_equal(projector.project(_real_inputs()), reference["real"])
        assert service.opu.emulator.fault_counts["injected"][kind] >= 2
        assert service.opu.counters.retries == 0 and service.stats().request_errors == 0


# ------------------------------------------------------------------------------------------ light faults
@pytest.mark.parametrize("retries", [0, RETRIES])
def test_an_interlock_trip_behind_the_service_is_an_interlock_error_until_the_user_clears_it(reference, retries):
    _, E = _inputs()
    with _serve(retries) as service:
        opu = service.opu
        with _client(service, timeout_s=TIMEOUT_S + MARGIN_S) as projector:
            np.testing.assert_array_equal(projector.project(E), reference["ternary"])
            retries_before = opu.counters.retries
            opu.emulator.set_faults("interlock@1")
            for attempt in range(2):  # tripped, and the laser is off: every request fails until the user acts
                started = time.monotonic()
                with pytest.raises(ServiceError) as caught:
                    projector.project(E)
                assert caught.value.kind == "InterlockError", (attempt, caught.value)
                assert issubclass(_driver_error(caught.value.kind), DeviceError)
                assert time.monotonic() - started < TIMEOUT_S + MARGIN_S
            assert opu.counters.retries == retries_before  # a safety latch is never re-armed by a retry
            assert opu.emulator.fault_counts["injected"]["interlock"] == 1
            assert service.running
            # The user's steps, on the service's host (no client can clear a safety latch); no request is in
            # flight, and pausing keeps any new one queued meanwhile.
            service.pause()
            try:
                with pytest.raises(DeviceError):  # the cause is still there: the controller refuses the reset
                    opu.controller.reset_interlock()
                opu.emulator.clear_interlock_cause()
                opu.controller.reset_interlock()
                opu.controller.laser_on()
            finally:
                service.resume()
            np.testing.assert_array_equal(projector.project(E), reference["ternary"])
            assert projector.reconnects == 0
        stats = service.stats()
    assert stats.requests == 4 and stats.request_errors == 2


def test_a_saturated_sequence_behind_the_service_is_projected_again_and_exact(reference, caplog):
    # The light pilots of the saturated sequence are far off the calibrated level, so the driver projects its
    # vectors again; the service passes the result on unchanged: exact, not an error. Saturation is counted.
    _, E = _inputs()
    expected = reference["ternary"]
    with _serve(3) as service:
        opu = service.opu
        with _client(service) as projector:
            np.testing.assert_array_equal(projector.project(E), expected)
            reruns, saturated = opu.linear_mode.light_reruns, opu.counters.saturated_frames
            opu.emulator.set_faults("saturate@1")  # the first sequence: vectors 0 and 1 and their pilots
            with caplog.at_level(logging.WARNING):
                y = projector.project(E)
            assert opu.emulator.fault_counts["injected"]["saturate"] == 1
            np.testing.assert_array_equal(projector.project(E), expected)  # the next request is exact too
        counters = _snapshot(opu.counters)
        stats = service.stats()
    np.testing.assert_array_equal(y, expected)
    assert opu.linear_mode.light_reruns > reruns and counters.saturated_frames > saturated
    assert any("light moved" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    assert counters.requests_failed == counters.retries == 0
    assert stats.request_errors == 0 and stats.requests == 3


@pytest.mark.parametrize("frames", ["reference", "probes"])
def test_a_light_jump_during_the_reference_measurement_is_measured_again(reference, frames, caplog):
    # Found by this column: the first request measures the linear mode's reference (dark frames, reference-only
    # frames, then single-feature probes), which every later request of that size reuses. A saturated sequence
    # there spoiled it: in the reference frames the request failed with InvalidInputError (which the client
    # raises as "your input was refused"); in the probes the scale was wrong and every later result of every
    # client was wrong, silently. The driver now measures the reference again when its frames saturated.
    _, E = _inputs()
    with _serve(3) as service:
        opu = service.opu
        n = opu.linear_mode.calibration_frames  # n dark frames, n reference frames, then the probes
        sequence = (n if frames == "reference" else 2 * n) // CHUNK_FRAMES + 1
        opu.emulator.set_faults(f"saturate@{sequence}")
        with _client(service) as projector, caplog.at_level(logging.WARNING):
            first = projector.project(E)
            second = projector.project(E)
        assert opu.emulator.fault_counts["injected"]["saturate"] == 1
        assert opu.counters.saturated_frames >= 1  # the driver saw the jump
        stats = service.stats()
    np.testing.assert_array_equal(first, reference["ternary"])
    np.testing.assert_array_equal(second, reference["ternary"])
    assert any("reference" in r.getMessage() and "again" in r.getMessage() for r in caplog.records)
    assert stats.request_errors == 0


# ------------------------------------------------------------------------------------------ two clients
def _client_errors(client: int, round_: int) -> np.ndarray:
    """Client 0 sends ternary errors, client 1 real-valued ones (bit planes); every round its own vectors."""
    rng = np.random.default_rng(100 * client + round_)
    if client == 0:
        E = rng.integers(-1, 2, size=(3 + round_ % 2, 20)).astype(np.float64)
        E[:, 0] = 1.0
        return E
    return rng.normal(size=(2 + round_ % 2, 20)) * 3.0


def _wait_until(condition) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for a condition"
        time.sleep(0.002)


def _coalesced_round(service: OpuService, projectors: list, batches: list[np.ndarray]) -> list:
    """Both clients' requests queued in a fixed order, then run in one device call: each outcome (an array or
    the exception) in client order."""
    outcomes: list = [None, None]

    def run(i: int) -> None:
        try:
            outcomes[i] = projectors[i].project(batches[i])
        except BaseException as exc:  # examined by the caller
            outcomes[i] = exc

    service.pause()
    threads = []
    try:
        for i in range(2):
            threads.append(threading.Thread(target=run, args=(i,)))
            threads[-1].start()
            _wait_until(
                lambda queued=i + 1: service.pending == queued
            )  # the queue's order is fixed, so the faults replay
    finally:
        service.resume()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads)
    return outcomes


@pytest.mark.slow
def test_two_clients_under_a_mix_of_faults_each_get_exactly_their_own_rows():
    with opu_driver.open(BASE, **SETTINGS) as direct:
        expected = [
            [direct.linear_transform(_client_errors(c, r), N_COMPONENTS) for r in range(ROUNDS)] for c in range(2)
        ]
    # Isolation is meaningful only if no two rows coincide: then equality rules out a lost, repeated or swapped
    # row (another request's, the other client's, or one of its own in another place).
    owners: dict[bytes, tuple[int, int, int]] = {}
    for c in range(2):
        for r, rows in enumerate(expected[c]):
            for k, row in enumerate(rows):
                assert owners.setdefault(row.tobytes(), (c, r, k)) == (c, r, k)

    with _serve(RETRIES) as service:
        opu = service.opu
        opu.emulator.set_faults(SERVICE_MIX)
        with _client(service) as first, _client(service) as second:
            results = [
                _coalesced_round(service, [first, second], [_client_errors(c, r) for c in range(2)])
                for r in range(ROUNDS)
            ]
        injected = opu.emulator.fault_counts["injected"]
        counters = _snapshot(opu.counters)
        stats = service.stats()
    for r, outcomes in enumerate(results):
        for c in range(2):
            assert isinstance(outcomes[c], np.ndarray), (r, c, outcomes[c])
            np.testing.assert_array_equal(outcomes[c], expected[c][r], err_msg=f"client {c}, round {r}")
    for kind in (entry.split(":")[0] for entry in SERVICE_MIX.split(",")):
        assert injected[kind] >= 2, f"{kind} fired {injected[kind]} times in the mix: raise its rate"
    assert counters.retries >= 1 and counters.requests_failed == 0
    assert stats.requests == 2 * ROUNDS and stats.device_calls == ROUNDS  # each round shared one device call
    assert stats.vectors == sum(len(_client_errors(c, r)) for c in range(2) for r in range(ROUNDS))
    assert stats.request_errors == stats.protocol_errors == stats.requests_abandoned == 0


def test_a_failed_shared_device_call_fails_both_clients_typed_and_the_next_round_is_exact():
    with opu_driver.open(BASE, **SETTINGS) as direct:
        expected = [[direct.linear_transform(_client_errors(c, r), N_COMPONENTS) for r in range(2)] for c in range(2)]
    with _serve(0) as service:
        opu = service.opu
        with (
            _client(service, timeout_s=TIMEOUT_S + MARGIN_S) as first,
            _client(service, timeout_s=TIMEOUT_S + MARGIN_S) as second,
        ):
            projectors = [first, second]
            warm = _coalesced_round(service, projectors, [_client_errors(c, 0) for c in range(2)])
            opu.emulator.set_faults("crc@1")
            started = time.monotonic()
            failed = _coalesced_round(service, projectors, [_client_errors(c, 1) for c in range(2)])
            elapsed_s = time.monotonic() - started
            opu.emulator.set_faults("")
            again = _coalesced_round(service, projectors, [_client_errors(c, 1) for c in range(2)])
        stats = service.stats()
    for c in range(2):
        np.testing.assert_array_equal(warm[c], expected[c][0])
        assert isinstance(failed[c], ServiceError) and failed[c].kind == "CorruptPacketError", failed[c]
        np.testing.assert_array_equal(again[c], expected[c][1])
    assert elapsed_s < TIMEOUT_S + MARGIN_S
    assert stats.device_calls == 2 and stats.request_errors == 2 and stats.requests == 6
