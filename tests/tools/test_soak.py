"""Load and soak: the soak command at a small N, and the service under 16 concurrent clients.

Every comparison is bit for bit. With ``noise=0`` the emulator is deterministic, so a vector's result is a pure
function of the vector and the device's seed: the exact expectation of a faulty or concurrent run is the result of
the same vectors on a fault-free device opened with the same URL (no tolerance is needed, and none would hide a
row computed from another request's frames).

Every fault kind is in the runs, stalls included (a stall on the bulk write that uploads a layout table was not
recovered before the soak found it: ``test_a_stall_on_the_layout_upload_is_recovered``).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import dfa_client
import opu_driver
from opu_driver.errors import ConfigurationError, OpuError
from opu_driver.service import OpuService
from opu_tools import soak
from opu_tools.cli import main
from opu_tools.soak import RowCheck, SoakConfig, check_rows, run_soak
from tests.support import small_sim

# Every fault, at rates that make each fire several times in 20,000 frames (about 370 sequences of
# 64 frames: timeout and reset are drawn once per sequence, the frame faults once per frame).
SOAK_FAULTS = "timeout:0.02,stall:0.01,crc:0.002,drop:0.002,dup:0.002,reorder:0.002,truncate:0.002,reset:0.02"
SERVICE_URL = small_sim("noise=0&seed=5")
SERVICE_FAULTS = "timeout:0.05,stall:0.02,crc:0.01,drop:0.01,dup:0.01,reorder:0.01,truncate:0.01,reset:0.05"
N_FEATURES = 40
N_CLIENTS = 16
N_REQUESTS = 4  # per client
WAIT_S = 60.0  # generous bound for threads to finish; never a performance assertion


# ------------------------------------------------------------------------------------------------ row checks
def _pool(rows: int = 6, width: int = 5) -> tuple[np.ndarray, dict[bytes, int]]:
    reference = np.arange(rows * width, dtype=np.float32).reshape(rows, width) + 0.5
    view = reference.view(np.uint8).reshape(rows, -1)
    return reference, {view[i].tobytes(): i for i in range(rows)}


def test_check_rows_tells_every_kind_of_wrong_row_apart() -> None:
    reference, owners = _pool()
    lookup = owners.get
    indices = np.array([4, 1, 3])
    assert check_rows(reference[indices], indices, reference, lookup) == RowCheck(rows=3, matched=3)

    swapped = reference[[1, 4, 3]]  # two requests' rows exchanged
    assert check_rows(swapped, indices, reference, lookup) == RowCheck(rows=3, matched=1, mismatched=2, misattributed=2)
    repeated = reference[[4, 4, 3]]  # a frame used twice
    assert check_rows(repeated, indices, reference, lookup) == RowCheck(
        rows=3, matched=2, mismatched=1, misattributed=1, duplicated=1
    )
    corrupt = reference[indices].copy()
    corrupt.view(np.uint32)[2, 0] ^= 1  # one bit of one value
    assert check_rows(corrupt, indices, reference, lookup) == RowCheck(rows=3, matched=2, mismatched=1)
    assert check_rows(reference[indices[:2]], indices, reference, lookup) == RowCheck(rows=3, matched=2, lost=1)
    longer = reference[[4, 1, 3, 0]]
    assert check_rows(longer, indices, reference, lookup) == RowCheck(rows=3, matched=3, extra=1)
    assert not check_rows(longer, indices, reference, lookup).ok

    signed = reference.copy()
    signed[0, 0] = 0.0
    negative = signed[[0]].copy()
    negative[0, 0] = -0.0  # equal as numbers, not bit for bit
    assert check_rows(negative, np.array([0]), signed, lookup).mismatched == 1
    assert check_rows(reference[indices].astype(np.float64), indices, reference, lookup).lost == 3


def test_soak_settings_are_checked_before_anything_is_opened() -> None:
    with pytest.raises(ConfigurationError, match="seed"):
        SoakConfig(url_query="dmd=96x64&seed=3")
    with pytest.raises(ConfigurationError, match="bogus"):
        SoakConfig(faults="bogus:0.1")
    with pytest.raises(ConfigurationError, match="pool_size"):
        SoakConfig(pool_size=10, max_batch=20)
    with pytest.raises(ConfigurationError, match="frames"):
        SoakConfig(frames=0)
    assert SoakConfig(faults="", seed=4).url() == f"sim://?{soak.DEFAULT_URL_QUERY}&seed=4&noise=0"
    assert SoakConfig(faults="crc:0.1").url(faults=False) == f"sim://?{soak.DEFAULT_URL_QUERY}&seed=0&noise=0"


# ------------------------------------------------------------------------------------------------ the soak
@pytest.mark.slow
def test_a_small_soak_with_faults_returns_every_row_exactly() -> None:
    config = SoakConfig(frames=20_000, faults=SOAK_FAULTS, seed=1)
    report = run_soak(config)
    assert report.ok, soak.format_report(report)
    assert report.mismatched_rows == report.misattributed_rows == report.duplicated_rows == 0
    assert report.lost_rows == report.extra_rows == 0 and not report.unexpected_errors
    assert report.frames_sent >= 20_000
    assert set(report.requests_by_operation) == set(soak.OPERATIONS)
    # rows returned = rows checked and all matched; failed requests (retries spent) are the only other rows
    assert report.rows_matched == report.rows_checked > 1000
    assert report.counters["requests_failed"] == sum(report.typed_errors.values())
    # the faults really fired and were really recovered: else this test proves nothing
    for kind in ("timeout", "crc", "drop", "dup", "reorder", "truncate", "reset"):
        assert report.faults_injected.get(kind, 0) >= 1, (kind, report.faults_injected)
    # frames lost one by one are sent again within their attempt, stalls are cleared in place, and a reset
    # re-runs the attempt (a retry): each of these recoveries happened, and every frame lost was sent again
    counters = report.counters
    assert counters["frames_resent"] >= counters["frames_missing"] >= 100 and counters["frames_recovered"] >= 100
    assert counters["stalls"] >= 1 and counters["resets_detected"] >= 1 and counters["corrupt_packets"] >= 10
    assert counters["retries"] >= counters["resets_detected"] and counters["requests_recovered"] >= 1
    text = soak.format_report(report)
    assert "OK" in text and "mismatched rows" in text


def test_the_soak_catches_rows_attributed_to_the_wrong_request(monkeypatch) -> None:
    """Feed the soak a reference in which every pool vector owns its neighbour's row: every returned row must
    then count as misattributed, and the command must exit 1. (A soak that cannot fail proves nothing.)"""
    measure = soak.measure_reference

    def shifted(config):
        X, E, reference = measure(config)
        return X, E, {op: np.roll(rows, 1, axis=0) for op, rows in reference.items()}

    monkeypatch.setattr(soak, "measure_reference", shifted)
    report = run_soak(SoakConfig(frames=2_000, faults=""))
    assert not report.ok
    assert report.mismatched_rows == report.misattributed_rows == report.rows_checked > 0
    assert report.rows_matched == 0


@pytest.mark.slow
def test_soak_command(capsys, monkeypatch) -> None:
    assert main(["soak", "--frames", "3000", "--seed", "2", "--no-progress", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] and data["frames_sent"] >= 3000 and data["mismatched_rows"] == 0
    assert data["url"].startswith("sim://?dmd=96x64") and "faults=timeout" in data["url"]
    assert main(["soak", "--frames", "3000", "--faults", "", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "rows checked" in table and "verdict" in table and "OK" in table
    assert main(["soak", "--url-query", "noise=1"]) == 2  # refused before anything runs
    assert "noise" in capsys.readouterr().err

    measure = soak.measure_reference
    monkeypatch.setattr(
        soak,
        "measure_reference",
        lambda config: (lambda X, E, ref: (X, E, {op: np.roll(rows, 1, axis=0) for op, rows in ref.items()}))(
            *measure(config)
        ),
    )
    assert main(["soak", "--frames", "1000", "--no-progress"]) == 1
    assert "FAILED" in capsys.readouterr().out


def test_a_stall_on_the_layout_upload_is_recovered() -> None:
    # Found by the soak: the layout upload was outside the retry path, so a stall there was neither retried
    # nor cleared and every later request stalled.
    rng = np.random.default_rng(3)
    X = rng.integers(0, 2, (8, 32), dtype=np.uint8)
    E = rng.integers(-1, 2, (4, 32)).astype(np.float32)
    E[:, 0] = 1.0
    url = small_sim("noise=0&seed=2")
    with opu_driver.open(url, calibration=None) as opu:
        expected = opu.linear_transform(E, 64)
    with opu_driver.open(url, calibration=None, retries=2, timeout_s=2.0) as opu:
        opu.transform(X, 64)  # the lined layout is loaded; the next call uploads the split layout
        opu.emulator.set_faults("stall@1")  # the next bulk transfer: that upload
        retries = opu.counters.retries
        # retried (halt cleared, upload again) within the call: the caller never sees the stall
        np.testing.assert_array_equal(opu.linear_transform(E, 64), expected)
        assert opu.counters.retries == retries + 1
    with opu_driver.open(url, calibration=None, retries=0, timeout_s=2.0) as opu:
        opu.transform(X, 64)
        opu.emulator.set_faults("stall@1")
        with pytest.raises(OpuError):  # no retries: the typed error, and the halt cleared for the next call
            opu.linear_transform(E, 64)
        np.testing.assert_array_equal(opu.linear_transform(E, 64), expected)


# ------------------------------------------------------------------------------------------------ the service
def _client_plan(i: int) -> dict:
    """Client i's options: output counts, schemes and bit planes differ, so coalescing mixes kinds."""
    return {
        "n_components": (100, 60, 80)[i % 3],
        "scheme": "two_frame" if i % 4 == 3 else "four_frame",
        "n_bits": 4 if i % 5 == 4 else None,
    }


def _client_errors(i: int, r: int) -> np.ndarray:
    """Client i's r-th batch: its own vectors (a seed per client and request), real or ternary, never zero."""
    rng = np.random.default_rng(1000 * i + r)
    batch = 2 + (i + r) % 4
    if (i + r) % 2:
        return rng.normal(size=(batch, N_FEATURES)) * (i + 1)  # its own bit-plane scale
    E = rng.integers(-1, 2, size=(batch, N_FEATURES)).astype(np.float64)
    E[:, i % N_FEATURES] = 1.0
    return E


@pytest.mark.slow
@pytest.mark.parametrize("faults", ["", SERVICE_FAULTS], ids=["no-faults", "faults"])
def test_sixteen_concurrent_clients_each_get_exactly_their_own_results(faults) -> None:
    url = SERVICE_URL + (f"&faults={faults}" if faults else "")
    service = OpuService(url, opu_settings={"retries": 10, "chunk_frames": 16, "calibration": None}).start()
    host, port = service.address
    results: dict[int, list[np.ndarray]] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(N_CLIENTS)

    def client(i: int) -> None:
        try:
            with dfa_client.connect(f"tcp://{host}:{port}", timeout_s=WAIT_S, **_client_plan(i)) as projector:
                barrier.wait(timeout=WAIT_S)  # all 16 connected: their requests overlap
                results[i] = [projector.project(_client_errors(i, r)) for r in range(N_REQUESTS)]
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    try:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(N_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert not any(thread.is_alive() for thread in threads)
        assert not failures, failures
        stats = service.stats()
        injected = sum(service.opu.emulator.fault_counts["injected"].values())
        retries = service.opu.counters.retries
    finally:
        service.stop()

    expected: dict[int, list[np.ndarray]] = {}
    with opu_driver.open(SERVICE_URL, calibration=None) as direct:
        for i in range(N_CLIENTS):
            plan = _client_plan(i)
            expected[i] = [
                direct.linear_transform(
                    _client_errors(i, r), plan["n_components"], scheme=plan["scheme"], n_bits=plan["n_bits"]
                )
                for r in range(N_REQUESTS)
            ]
    # Isolation is meaningful only if no two clients' rows coincide: then equality below rules out that a client
    # ever got another's rows.
    owners: dict[bytes, int] = {}
    for i, batches in expected.items():
        for row in np.vstack(batches):
            assert owners.setdefault(row.tobytes(), i) == i
    for i in range(N_CLIENTS):
        assert len(results[i]) == N_REQUESTS
        for r in range(N_REQUESTS):
            np.testing.assert_array_equal(results[i][r], expected[i][r], err_msg=f"client {i}, request {r}")

    n_vectors = sum(len(_client_errors(i, r)) for i in range(N_CLIENTS) for r in range(N_REQUESTS))
    assert stats.requests == N_CLIENTS * N_REQUESTS
    assert stats.vectors == n_vectors
    assert stats.request_errors == stats.protocol_errors == stats.requests_abandoned == 0
    assert stats.connections_accepted == N_CLIENTS and stats.connections_refused == 0
    assert 1 <= stats.device_calls <= stats.requests
    if faults:
        assert injected >= 5 and retries >= 1  # the faults fired and were recovered behind the service
