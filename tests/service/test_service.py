"""The OPU service (opu_driver.service) and its client (dfa_client's tcp:// backend).

With ``noise=0`` the emulator is deterministic, so the exact expectation of every remote result is the direct
in-process ``Opu.linear_transform`` of the same vectors on a device opened with the same URL: comparisons are
bit-for-bit (no tolerance is needed, and none would hide a result sent to the wrong client or a coalesced request
decoded with another request's bit-plane scale).
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import dfa_client
import opu_driver
from dfa_client import wire
from dfa_client.errors import (
    AuthenticationError,
    ConnectionFailedError,
    DeviceChangedError,
    InvalidInputError,
    ProtocolVersionError,
    UnsupportedUrlError,
)
from dfa_client.remote import RemoteProjector, redact_url
from dfa_client.wire import MessageType, ProtocolError, WireLimits
from opu_driver.errors import ConfigurationError
from opu_driver.opu import linear
from opu_driver.service import OpuService, is_loopback
from tests.support import REPO_ROOT, service_token, small_sim

URL = small_sim("noise=0&seed=5")
N_FEATURES = 40
REPO = REPO_ROOT
WAIT_S = 10.0  # generous bound for "eventually" conditions; never a performance assertion


@pytest.fixture(scope="module")
def direct():
    """The same (noiseless) device in this process: the exact expectation of every remote result."""
    opu = opu_driver.open(URL)
    yield opu
    opu.close()


@pytest.fixture(scope="module")
def service():
    svc = OpuService(URL, max_batch=64, hello_timeout_s=1.0, message_timeout_s=0.3, idle_timeout_s=5.0).start()
    yield svc
    svc.stop()


def tcp(svc: OpuService) -> str:
    host, port = svc.address
    return f"tcp://{host}:{port}"


def errors(seed: int, batch: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "ternary":
        return rng.integers(-1, 2, (batch, N_FEATURES)).astype(np.float64)
    return rng.normal(size=(batch, N_FEATURES)) * (seed + 1)  # a different bit-plane scale per client


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def raw_client(svc: OpuService, n_components: int = 100, **hello) -> socket.socket:
    """A hand-driven connection that has completed its HELLO."""
    sock = socket.create_connection(svc.address, timeout=5)
    header = {
        "protocol_version": 1,
        "token": service_token(),
        "n_components": n_components,
        "n_features": N_FEATURES,
        "scheme": "four_frame",
        "n_bits": None,
        "max_batch": 64,
        **hello,
    }
    sock.sendall(wire.encode(MessageType.HELLO, 0, header))
    reply = wire.read_message(sock, WireLimits(), time.monotonic() + 5)
    assert reply.type is MessageType.WELCOME, reply
    _LAST_WELCOME[0] = reply.header
    return sock


def abort(sock: socket.socket) -> None:
    """Close with a reset (SO_LINGER 0), as a client that gives up on its request does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def read_until_closed(sock: socket.socket, timeout_s: float = WAIT_S) -> bytes:
    """Everything the service sends until it closes the connection."""
    sock.settimeout(timeout_s)
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


# ------------------------------------------------------------------------------------------------ results
def test_remote_results_equal_direct_calls(service, direct) -> None:
    E_ternary, E_real = errors(0, 5, "ternary"), errors(1, 4, "real")
    with dfa_client.connect(tcp(service), n_components=100) as projector:
        np.testing.assert_array_equal(projector.project(E_ternary), direct.linear_transform(E_ternary, 100))
        np.testing.assert_array_equal(projector.project(E_real), direct.linear_transform(E_real, 100))
        single = projector.project(E_real[0])
        assert single.shape == (100,) and single.dtype == np.float32
        np.testing.assert_array_equal(single, direct.linear_transform(E_real[:1], 100)[0])
        np.testing.assert_array_equal(projector.project(np.zeros((3, N_FEATURES))), np.zeros((3, 100)))
        assert projector.project(np.zeros((0, N_FEATURES))).shape == (0, 100)
        info = projector.info
        assert info.backend == "remote" and info.n_features == N_FEATURES and info.max_batch == 64
        assert info.details["serial_number"] == direct.info.serial_number
    with dfa_client.connect(tcp(service), n_components=60, scheme="two_frame", n_bits=4) as projector:
        np.testing.assert_array_equal(
            projector.project(E_real), direct.linear_transform(E_real, 60, scheme="two_frame", n_bits=4)
        )


def test_bad_input_is_refused_before_sending(service) -> None:
    with dfa_client.connect(tcp(service), n_components=100, n_features=N_FEATURES) as projector:
        before = service.stats().requests
        with pytest.raises(InvalidInputError):
            projector.project(np.full((2, N_FEATURES), np.nan))
        with pytest.raises(InvalidInputError):
            projector.project(np.ones((2, N_FEATURES + 1)))
        with pytest.raises(InvalidInputError, match="max_batch"):
            projector.project(np.ones((65, N_FEATURES)))  # the service's limit, learnt at HELLO
        assert service.stats().requests == before  # nothing was sent
        assert projector.project(np.ones((64, N_FEATURES))).shape == (64, 100)
    with pytest.raises(InvalidInputError, match="camera pixels"):
        dfa_client.connect(tcp(service), n_components=64 * 48 + 1)
    with pytest.raises(InvalidInputError, match="do not fit"):
        dfa_client.connect(tcp(service), n_components=10, n_features=96 * 64)


# ------------------------------------------------------------------------------------------------ concurrency
def test_concurrent_client_threads_each_get_their_own_result(service, direct) -> None:
    n_threads, n_calls = 6, 3
    plans = [(i, 100 if i % 3 else 60, "ternary" if i % 2 else "real") for i in range(n_threads)]
    results: dict[int, list[np.ndarray]] = {}
    failures: list[BaseException] = []
    barrier = threading.Barrier(n_threads)

    def client(i: int, n_components: int, kind: str) -> None:
        try:
            with dfa_client.connect(tcp(service), n_components=n_components) as projector:
                barrier.wait(timeout=WAIT_S)
                results[i] = [projector.project(errors(100 * i + c, 3 + i, kind)) for c in range(n_calls)]
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=client, args=plan) for plan in plans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not failures, failures
    for i, n_components, kind in plans:
        for c in range(n_calls):
            expected = direct.linear_transform(errors(100 * i + c, 3 + i, kind), n_components)
            np.testing.assert_array_equal(results[i][c], expected)


def _blocked_driver_script() -> str:
    """A client process in which importing opu_driver (or the emulator) fails: remote use needs neither."""
    return (
        "import sys, importlib.abc\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('opu_driver', 'firmware_sim'):\n"
        "            raise ImportError('blocked in this test: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np, dfa_client\n"
        "url, n_components, inp, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]\n"
        "E = np.load(inp)\n"
        "with dfa_client.connect(url, n_components=n_components, timeout_s=20) as p:\n"
        "    parts = [p.project(E[i:i + 4]) for i in range(0, len(E), 4)]\n"
        "np.save(out, np.vstack(parts))\n"
        "assert not any(m.split('.')[0] in ('opu_driver', 'firmware_sim') for m in sys.modules)\n"
    )


def test_client_processes_without_the_driver_get_their_own_results(service, direct, tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    processes = []
    for k in range(3):
        E = errors(500 + k, 12, "real" if k % 2 else "ternary")
        np.save(tmp_path / f"in{k}.npy", E)
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _blocked_driver_script(),
                    tcp(service),
                    "100",
                    str(tmp_path / f"in{k}.npy"),
                    str(tmp_path / f"out{k}.npy"),
                ],
                env=env,
                cwd=tmp_path,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    for k in range(3):
        E = np.load(tmp_path / f"in{k}.npy")
        expected = np.vstack([direct.linear_transform(E[i : i + 4], 100) for i in range(0, len(E), 4)])
        np.testing.assert_array_equal(np.load(tmp_path / f"out{k}.npy"), expected)


def test_concurrent_requests_are_coalesced_into_shared_device_calls(service, direct) -> None:
    # Requests sent while the device is paused all wait in the queue; on resume the device thread takes them
    # together: one call per (n_features, n_components, scheme, n_bits) group, so 6 requests -> 2 calls.
    plans = [
        (0, 100, "ternary"),
        (1, 100, "real"),
        (2, 100, "ternary"),
        (3, 100, "real"),
        (4, 60, "real"),
        (5, 60, "ternary"),
    ]
    projectors = [dfa_client.connect(tcp(service), n_components=nc) for _, nc, _ in plans]
    results: dict[int, np.ndarray] = {}
    before = service.stats()
    service.pause()
    try:
        threads = [
            threading.Thread(target=lambda i=i, p=p, k=k: results.__setitem__(i, p.project(errors(40 + i, 2 + i, k))))
            for (i, _, k), p in zip(plans, projectors, strict=True)
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: service.pending == len(plans))
    finally:
        service.resume()
    for thread in threads:
        thread.join(WAIT_S)
    after = service.stats()
    assert after.requests - before.requests == 6
    assert after.device_calls - before.device_calls == 2
    for i, n_components, kind in plans:
        # Mixed ternary and real requests shared a call; each real one kept its own bit-plane scale.
        np.testing.assert_array_equal(results[i], direct.linear_transform(errors(40 + i, 2 + i, kind), n_components))
    for projector in projectors:
        projector.close()


# ------------------------------------------------------------------------------------------------ misbehaviour
@pytest.mark.slow
def test_misbehaving_clients_never_disturb_the_others(service, direct) -> None:
    good = dfa_client.connect(tcp(service), n_components=100)
    E = errors(7, 5, "real")
    expected = direct.linear_transform(E, 100)
    np.testing.assert_array_equal(good.project(E), expected)
    before = service.stats()

    garbage = socket.create_connection(service.address, timeout=5)
    garbage.sendall(b"GET / HTTP/1.1\r\nHost: opu\r\n\r\n" + os.urandom(200))
    half_hello = socket.create_connection(service.address, timeout=5)
    half_hello.sendall(wire.encode(MessageType.HELLO, 0, {"protocol_version": 1})[:20])  # then silence
    half_sent = raw_client(service)
    half_sent.sendall(wire.encode(MessageType.PROJECT, 1, None, np.ones((2, N_FEATURES)))[:40])  # then silence
    huge = raw_client(service)
    huge.sendall(wire.PREFIX.pack(wire.MAGIC, 1, MessageType.PROJECT, 0, 1, 30, 2**63))
    results: list[np.ndarray] = []
    service.pause()
    try:
        quitter = raw_client(service)  # sends a whole request, then disconnects before the answer
        quitter.sendall(wire.encode(MessageType.PROJECT, 1, None, errors(8, 3, "ternary")))
        wait_until(lambda: service.pending == 1)
        abort(quitter)  # its request is abandoned: the device skips it (test_abandoned_requests_are_not_run)
        worker = threading.Thread(target=lambda: results.append(good.project(E)))
        worker.start()
        wait_until(lambda: service.pending == 2)
    finally:
        service.resume()
    worker.join(WAIT_S)
    np.testing.assert_array_equal(results[0], expected)

    # Garbage and the huge length field get a typed ERROR (connection-level: request id 0), then the door.
    for sock, kind in ((garbage, "ProtocolError"), (huge, "MessageTooLarge")):
        reply = wire.decode(read_until_closed(sock))
        assert reply.type is MessageType.ERROR and reply.header["kind"] == kind and reply.request_id == 0
    # Silent half-messages are cut off by the hello and message timeouts (1 s and 0.3 s here).
    assert read_until_closed(half_hello) == b""
    assert read_until_closed(half_sent) == b""
    for sock in (garbage, huge, half_hello, half_sent):
        sock.close()
    wait_until(lambda: service.stats().clients_connected == before.clients_connected)
    assert service.stats().protocol_errors - before.protocol_errors == 2
    np.testing.assert_array_equal(good.project(E), expected)  # still served, on the same connection
    assert good.reconnects == 0
    good.close()


def test_a_foreign_or_malformed_reply_is_never_returned() -> None:
    def fake_service(listener: socket.socket, reply) -> None:
        sock, request = _welcome_and_read_request(listener)
        with sock:
            reply(sock, request)
            read_until_closed(sock, 5)

    replies = {
        "foreign id": lambda s, r: wire.send_message(
            s, MessageType.RESULT, r.request_id + 1, None, np.zeros((1, 5), np.float32)
        ),
        "wrong shape": lambda s, r: wire.send_message(
            s, MessageType.RESULT, r.request_id, None, np.zeros((1, 4), np.float32)
        ),
        "not a result": lambda s, r: wire.send_message(s, MessageType.WELCOME, r.request_id, {}),
    }
    for reply in replies.values():
        _expect_protocol_error(fake_service, reply)


# ------------------------------------------------------------------------------------------------ security
def test_token_is_required_and_checked() -> None:
    with OpuService(URL, token="s3cret-token") as svc:
        with pytest.raises(AuthenticationError):
            dfa_client.connect(tcp(svc), n_components=10)
        with pytest.raises(AuthenticationError):
            dfa_client.connect(tcp(svc), n_components=10, token="s3cret-tokeN")
        with dfa_client.connect(tcp(svc), n_components=10, token="s3cret-token") as projector:
            assert projector.project(np.ones(N_FEATURES)).shape == (10,)
        with dfa_client.connect(tcp(svc) + "?token=s3cret-token", n_components=10) as projector:
            assert "token" not in projector.info.url and "s3cret" not in repr(projector)
            assert projector.project(np.ones(N_FEATURES)).shape == (10,)


def test_non_loopback_bind_needs_a_token_and_tls_and_clients_are_limited() -> None:
    with pytest.raises(ConfigurationError, match="needs a token"):
        OpuService(URL, bind=("0.0.0.0", 0), token="", allow_cleartext=True)  # no token: loopback only
    for token in (None, "t"):  # the token file's, or one given: either would cross the network in clear
        with pytest.raises(ConfigurationError, match="needs TLS"):
            OpuService(URL, bind=("0.0.0.0", 0), token=token)
    with pytest.raises(ConfigurationError, match="non-blank"):
        OpuService(URL, token="   ")
    OpuService(URL, bind=("0.0.0.0", 0), token="t", allow_cleartext=True)  # the explicit opt-in (not started)
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("")
    with pytest.raises(ConfigurationError):
        OpuService(URL, max_clients=0)
    with OpuService(URL, max_clients=1) as svc:
        first = dfa_client.connect(tcp(svc), n_components=10)
        # TooManyClients is retried with the backoff (a slot may free up), then ConnectionFailedError.
        with pytest.raises(ConnectionFailedError, match="TooManyClients"):
            dfa_client.connect(tcp(svc), n_components=10, retries=0)
        assert svc.stats().connections_refused == 1
        # A slot that frees up during the retries is taken: first closes 0.2 s after the second starts trying.
        timer = threading.Timer(0.2, first.close)
        timer.start()
        with dfa_client.connect(tcp(svc), n_components=10, retries=20, backoff_s=0.05) as second:
            assert second.project(np.ones(N_FEATURES)).shape == (10,)
            assert second.reconnects >= 1
        timer.join()


def test_protocol_version_mismatch_is_a_typed_error(service) -> None:
    # A client of another version, in the HELLO header or in the frame itself: an ERROR of that kind.
    for data in (
        wire.encode(
            MessageType.HELLO, 0, {"protocol_version": 2, "n_components": 10, "scheme": "four_frame", "max_batch": 1}
        ),
        wire.encode(MessageType.HELLO, 0, {"protocol_version": 2}, version=2),
    ):
        with socket.create_connection(service.address, timeout=5) as sock:
            sock.sendall(data)
            reply = wire.decode(read_until_closed(sock))
        assert reply.type is MessageType.ERROR and reply.header["kind"] == "ProtocolVersionError"

    # A service of another version: the client says so instead of misreading its replies.
    def newer_service(listener: socket.socket) -> None:
        sock, _ = listener.accept()
        with sock:
            sock.settimeout(5)
            wire.read_message(sock, WireLimits(), None)
            sock.sendall(wire.encode(MessageType.WELCOME, 0, {}, version=2))
            read_until_closed(sock, 5)

    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=newer_service, args=(listener,), daemon=True)
    thread.start()
    with pytest.raises(ProtocolVersionError):
        dfa_client.connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}", n_components=5)
    thread.join(5)
    listener.close()


# ------------------------------------------------------------------------------------------------ faults
def test_idle_connections_are_closed_and_clients_reconnect(direct) -> None:
    with OpuService(URL, idle_timeout_s=0.2) as svc:
        with dfa_client.connect(tcp(svc), n_components=50) as projector:
            E = errors(3, 2, "real")
            np.testing.assert_array_equal(projector.project(E), direct.linear_transform(E, 50))
            wait_until(lambda: svc.stats().clients_connected == 0)  # the service dropped the idle connection
            np.testing.assert_array_equal(projector.project(E), direct.linear_transform(E, 50))
            assert projector.reconnects >= 1


def test_service_restart_mid_use_and_service_gone_for_good(direct) -> None:
    first = OpuService(URL).start()
    host, port = first.address
    projector = dfa_client.connect(f"tcp://{host}:{port}", n_components=100, retries=8, backoff_s=0.05)
    E1, E2 = errors(11, 3, "ternary"), errors(12, 3, "real")
    np.testing.assert_array_equal(projector.project(E1), direct.linear_transform(E1, 100))
    assert first.stop()
    assert first.opu.closed
    restarted: list[OpuService] = []
    timer = threading.Timer(0.3, lambda: restarted.append(OpuService(URL, bind=(host, port)).start()))
    timer.start()
    # Sent while the service is down: re-sent after reconnecting to the new one (same device, same B).
    np.testing.assert_array_equal(projector.project(E2), direct.linear_transform(E2, 100))
    assert projector.reconnects >= 1
    timer.join()
    restarted[0].stop()
    # Gone for good: ConnectionFailedError after the bounded retries (3 attempts, 0.05 + 0.1 s of backoff).
    projector.retries = 2
    started = time.monotonic()
    with pytest.raises(ConnectionFailedError):
        projector.project(E1)
    assert time.monotonic() - started < WAIT_S
    projector.close()


def test_stop_fails_waiting_requests_with_a_typed_error_and_closes_the_device() -> None:
    svc = OpuService(URL).start()
    projector = dfa_client.connect(tcp(svc), n_components=30, retries=0)
    outcome: list[BaseException] = []

    def waiting_client() -> None:
        try:
            projector.project(np.ones((2, N_FEATURES)))
        except BaseException as exc:
            outcome.append(exc)

    svc.pause()
    worker = threading.Thread(target=waiting_client)
    worker.start()
    wait_until(lambda: svc.pending == 1)
    assert svc.stop(timeout_s=5)
    worker.join(WAIT_S)
    assert isinstance(outcome[0], ConnectionFailedError) and "shutting down" in str(outcome[0])
    assert svc.opu.closed and not svc.running
    projector.close()


def _read_line(process: subprocess.Popen, timeout_s: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout_s)
    assert ready, "opu serve printed nothing"
    return process.stdout.readline()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_opu_serve_shuts_down_cleanly_on_a_signal(signum: int, direct) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "opu_tools.cli", "serve", "--url", URL, "--bind", "127.0.0.1:0", "--max-batch", "16"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        line = _read_line(process, 30)
        assert "serving" in line, line + process.stderr.read()
        port = int(line.split(" on ")[1].split(";")[0].rsplit(":", 1)[1])
        projector = dfa_client.connect(f"tcp://127.0.0.1:{port}", n_components=20, retries=1, backoff_s=0.05)
        E = errors(21, 4, "ternary")
        np.testing.assert_array_equal(projector.project(E), direct.linear_transform(E, 20))
        assert projector.max_batch == 16
        process.send_signal(signum)
        out, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "device closed" in out and "1 requests" in out
        with pytest.raises(ConnectionFailedError):  # a client of the stopped service: typed, bounded
            projector.project(E)
        projector.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


# ------------------------------------------------------------------------------------------------ review fixes
def test_a_reconnect_to_another_device_raises_device_changed_and_returns_nothing(direct) -> None:
    first = OpuService(URL).start()
    host, port = first.address
    projector = dfa_client.connect(f"tcp://{host}:{port}", n_components=50, retries=8, backoff_s=0.05)
    E = errors(31, 3, "ternary")
    np.testing.assert_array_equal(projector.project(E), direct.linear_transform(E, 50))
    fingerprint = projector._welcome["device_fingerprint"]
    assert isinstance(fingerprint, str) and len(fingerprint) == 16
    first.stop()
    # The same device (same seed) again: a transparent reconnect, the same results.
    with OpuService(URL, bind=(host, port)) as same:
        np.testing.assert_array_equal(projector.project(E), direct.linear_transform(E, 50))
        assert projector.reconnects >= 1 and same.stats().requests == 1
    # Another device (another seed, so another serial number and random matrix): typed error, nothing sent.
    other_url = small_sim("noise=0&seed=6")
    with OpuService(other_url, bind=(host, port)) as other:
        for _ in range(2):  # and it stays refused: the first identity is the projector's for its life
            with pytest.raises(DeviceChangedError, match="serial_number"):
                projector.project(E)
        assert other.stats().requests == 0
    projector.close()


def test_the_fingerprint_follows_the_settings_that_fix_the_matrix() -> None:
    # Same device, another exposure: the serial number is the same, the fingerprint is not.
    with OpuService(URL) as a, OpuService(URL, opu_settings={"exposure_us": 300}) as b, OpuService(URL) as c:
        prints = [raw_welcome(svc)["device_fingerprint"] for svc in (a, b, c)]
    assert prints[0] == prints[2] != prints[1]


def raw_welcome(svc: OpuService) -> dict:
    sock = raw_client(svc)
    sock.close()
    return _LAST_WELCOME[0]


_LAST_WELCOME: list[dict] = [{}]


def test_device_calls_are_bounded_in_bytes_and_results_are_unchanged(direct) -> None:
    # frames x (n_features + 1 + 4 n_components) bytes per device call: 41 + 400 = 441 bytes a frame here, a real
    # row costs 8 planes x 4 frames = 32 frames (14,112 bytes), so 50,000 bytes hold 3 rows: 4 requests of 5 rows
    # need several calls, each request is split across calls, and with noise=0 every result is still bit-identical.
    limit = 50_000
    with OpuService(URL, max_device_bytes=limit) as svc:
        projectors = [dfa_client.connect(tcp(svc), n_components=100) for _ in range(4)]
        projectors[0].project(np.ones((1, N_FEATURES)))  # the reference calibration is measured outside the bound
        calls: list[int] = []
        acquire = svc.opu.acquire

        def recording(frames, layout, n_components, **options):
            calls.append(linear.call_bytes(len(frames), frames.shape[1] - linear.REFERENCE_LEVELS, n_components))
            return acquire(frames, layout, n_components, **options)

        svc.opu.acquire = recording
        results: dict[int, np.ndarray] = {}
        svc.pause()
        try:

            def send(i: int, p) -> None:
                results[i] = p.project(errors(60 + i, 5, "real"))

            threads = [threading.Thread(target=send, args=(i, p)) for i, p in enumerate(projectors)]
            for thread in threads:
                thread.start()
            wait_until(lambda: svc.pending == 4)
        finally:
            svc.resume()
        for thread in threads:
            thread.join(WAIT_S)
        assert len(calls) >= 20 / 3 and max(calls) <= limit
        for i in range(4):
            np.testing.assert_array_equal(results[i], direct.linear_transform(errors(60 + i, 5, "real"), 100))
        for projector in projectors:
            projector.close()


def test_direct_linear_calls_are_chunked_with_bit_identical_results(direct, monkeypatch) -> None:
    E_real, E_ternary = errors(70, 7, "real"), errors(71, 9, "ternary")
    expected = [direct.linear_transform(E_real, 80), direct.linear_transform(E_ternary, 80, scheme="two_frame")]
    calls: list[int] = []
    acquire = direct.acquire

    def recording(frames, layout, n_components, **options):
        calls.append(linear.call_bytes(len(frames), frames.shape[1] - linear.REFERENCE_LEVELS, n_components))
        return acquire(frames, layout, n_components, **options)

    limit = 4 * linear.call_bytes(4, N_FEATURES, 80)  # 4 ternary rows of four frames a call
    monkeypatch.setattr(linear, "DEFAULT_MAX_CALL_BYTES", limit)
    monkeypatch.setattr(direct, "acquire", recording)
    np.testing.assert_array_equal(direct.linear_transform(E_real, 80), expected[0])  # 56 ternary rows
    assert len(calls) >= 56 / 4 and max(calls) <= limit
    calls.clear()
    np.testing.assert_array_equal(direct.linear_transform(E_ternary, 80, scheme="two_frame"), expected[1])
    assert len(calls) >= 9 / 8 and max(calls) <= limit
    # project_many with an explicit bound: each batch as alone, whatever the split.
    many = direct.linear_mode.project_many(
        [E_real, E_ternary[:, :N_FEATURES]],
        80,
        "four_frame",
        None,
        max_call_bytes=3 * linear.call_bytes(4, N_FEATURES, 80),
    )
    np.testing.assert_array_equal(many[0], expected[0])
    monkeypatch.undo()
    np.testing.assert_array_equal(many[1], direct.linear_transform(E_ternary, 80))


def test_silent_connections_cannot_take_the_client_slots() -> None:
    with OpuService(URL, token="secret", max_clients=4, max_pending_connections=3) as svc:
        silent = [socket.create_connection(svc.address, timeout=5) for _ in range(6)]  # no token, no bytes
        wait_until(lambda: svc.stats().connections_accepted == 6)
        assert svc.stats().connections_evicted == 3  # the handshake pool holds 3: the oldest made room
        with dfa_client.connect(tcp(svc), n_components=10, token="secret", retries=3, backoff_s=0.05) as p:
            assert p.project(np.ones(N_FEATURES)).shape == (10,)
            assert svc.stats().clients_connected == 1
        for sock in silent:
            sock.close()
    # Silent connections are cut after the whole-HELLO deadline even if they trickle bytes.
    with OpuService(URL, hello_timeout_s=0.5, message_timeout_s=5.0) as svc:
        trickle = socket.create_connection(svc.address, timeout=5)
        hello = wire.encode(MessageType.HELLO, 0, {"protocol_version": 1})
        started = time.monotonic()
        closed = False
        for byte in hello[:20]:
            try:
                trickle.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.1)
        if not closed:
            assert read_until_closed(trickle) == b""
        assert time.monotonic() - started < 4.0  # the 0.5 s deadline, not 20 x message_timeout_s
        trickle.close()


def test_zero_size_shapes_with_huge_dimensions_are_protocol_errors(service) -> None:
    header = {"dtype": "<f8", "shape": [0, 2**70]}
    with socket.create_connection(service.address, timeout=5) as sock:  # client -> service
        hello = {
            "protocol_version": 1,
            "token": service_token(),
            "n_components": 10,
            "n_features": None,
            "scheme": "four_frame",
            "n_bits": None,
            "max_batch": 8,
        }
        sock.sendall(wire.encode(MessageType.HELLO, 0, hello))
        assert wire.read_message(sock, WireLimits(), time.monotonic() + 5).type is MessageType.WELCOME
        text = json.dumps(header).encode()
        sock.sendall(wire.PREFIX.pack(wire.MAGIC, 1, MessageType.PROJECT, 0, 1, len(text), 0) + text)
        reply = wire.decode(read_until_closed(sock))
    assert reply.type is MessageType.ERROR and reply.header["kind"] == "ProtocolError"

    def fake_service(listener: socket.socket) -> None:  # service -> client
        sock, request = _welcome_and_read_request(listener)
        with sock:
            text = json.dumps(header).encode()
            sock.sendall(
                wire.PREFIX.pack(wire.MAGIC, 1, MessageType.RESULT, 0, request.request_id, len(text), 0) + text
            )
            read_until_closed(sock, 5)

    _expect_protocol_error(fake_service)


@pytest.mark.parametrize(
    "url",
    [
        "tcp://opu.example?token=tok-SECRET-1",  # no port
        "tcp://opu.example:5000/path?token=tok-SECRET-1",
        "tcp://opu.example:5000?token=tok-SECRET-1&speed=9",
        "tcp://opu.example:99999?token=tok-SECRET-1",
        "tcp://opu.example:5000?TOKEN=tok-SECRET-1",
        "tcp://[::1?token=tok-SECRET-1",
        "tcp://user:tok-SECRET-1@opu.example:5000",
        "tcp://opu.example:5000#token=tok-SECRET-1",
    ],
)
def test_tokens_never_appear_in_error_messages(url: str) -> None:
    # RemoteProjector directly: dfa_client.connect's own urlsplit raises a plain ValueError on "[::1" first.
    with pytest.raises(UnsupportedUrlError) as info:
        RemoteProjector(url, n_components=10)
    assert "SECRET" not in str(info.value) and "SECRET" not in repr(info.value)
    assert info.value.__cause__ is None or "SECRET" not in str(info.value.__cause__)
    assert redact_url(url).count("***") >= 1 and "SECRET" not in redact_url(url)


@pytest.mark.parametrize(
    "limit, value",
    [
        ("max_clients", 2.0),
        ("max_batch", True),
        ("max_device_bytes", 1.5),
        ("max_pending_connections", "4"),
        ("hello_timeout_s", float("inf")),
        ("max_header_bytes", -1),
        ("send_timeout_s", 0),
        ("idle_timeout_s", float("nan")),
        ("message_timeout_s", False),
    ],
)
def test_limits_must_have_the_right_type_before_the_device_opens(limit: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=limit):
        OpuService("sim://?this-url-is-never-opened", **{limit: value})


def test_limits_accept_numpy_integers() -> None:
    svc = OpuService(URL, max_clients=np.int64(3), hello_timeout_s=2)
    assert type(svc.limits.max_clients) is int and type(svc.limits.hello_timeout_s) is float


def test_an_over_limit_shape_is_refused_from_its_header(service) -> None:
    # Only the prefix and the header are sent: the refusal comes without the payload ever being read.
    def header_only(sock: socket.socket, shape: list[int]) -> wire.Message:
        text = json.dumps({"dtype": "<f8", "shape": shape}).encode()
        payload_bytes = int(np.prod(shape)) * 8
        sock.sendall(wire.PREFIX.pack(wire.MAGIC, 1, MessageType.PROJECT, 0, 9, len(text), payload_bytes) + text)
        return wire.decode(read_until_closed(sock))

    # n_features known (40, max_batch 64): the payload limit is 64 x 40 x 8 bytes, checked from the prefix.
    reply = header_only(raw_client(service), [65, N_FEATURES])
    assert reply.header["kind"] == "MessageTooLarge" and "20480" in reply.header["message"]
    # n_features not yet known: the shape is checked from the header (too wide for the DMD; too large a batch).
    for shape, match in (([2, 10**6], "do not fit"), ([65, N_FEATURES], "max_batch")):
        reply = header_only(raw_client(service, n_features=None), shape)
        assert reply.type is MessageType.ERROR and reply.request_id == 9
        assert reply.header["kind"] == "InvalidInputError" and match in reply.header["message"]
    # The client sees a typed error, and its next request reconnects transparently.
    with dfa_client.connect(tcp(service), n_components=10) as projector:
        with pytest.raises(InvalidInputError):
            projector.project(np.ones((1, 96 * 64)))  # n_features is now fixed at 6144
    with dfa_client.connect(tcp(service), n_components=10) as projector:
        assert projector.project(np.ones((2, N_FEATURES))).shape == (2, 10)


def test_abandoned_requests_are_not_run(service) -> None:
    before = service.stats()
    service.pause()
    try:
        quitter = raw_client(service)
        quitter.sendall(wire.encode(MessageType.PROJECT, 1, None, errors(80, 3, "real")))
        wait_until(lambda: service.pending == 1)
        abort(quitter)  # a reset, as dfa_client gives up on a request (a FIN alone is a half-close: answered)
        wait_until(lambda: service.stats().requests_abandoned == before.requests_abandoned + 1)
    finally:
        service.resume()
    wait_until(lambda: service.pending == 0)
    time.sleep(0.1)  # the device thread has taken the queue: it skipped the abandoned request
    assert service.stats().device_calls == before.device_calls


def test_the_client_timeout_grows_with_the_request(service) -> None:
    with dfa_client.connect(tcp(service), n_components=10, timeout_s=1.0) as projector:
        frame_time_s = projector._welcome["frame_time_us"] * 1e-6
        assert frame_time_s > 0
        small, large = np.full((1, N_FEATURES), 0.5), np.full((64, N_FEATURES), 0.5)
        # Real values with n_bits=None: 8 bit planes x 4 frames a row, counted twice (a margin).
        assert projector.request_timeout_s(small) == pytest.approx(1.0 + 2 * 32 * frame_time_s)
        assert projector.request_timeout_s(large) == pytest.approx(1.0 + 2 * 64 * 32 * frame_time_s)
        assert projector.request_timeout_s(np.ones((64, N_FEATURES))) == pytest.approx(1.0 + 2 * 64 * 4 * frame_time_s)


def _expect_protocol_error(fake_service, *args) -> None:
    """A client of ``fake_service(listener, *args)`` (a hand-written misbehaving service) gets ProtocolError."""
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=fake_service, args=(listener, *args), daemon=True)
    thread.start()
    projector = dfa_client.connect(f"tcp://127.0.0.1:{listener.getsockname()[1]}", n_components=5, retries=0)
    with pytest.raises(ProtocolError):
        projector.project(np.ones((1, 3)))
    projector.close()
    thread.join(5)
    listener.close()


def _welcome_and_read_request(listener: socket.socket):
    """A hand-written service's first steps: accept, read HELLO, send WELCOME, read the PROJECT request."""
    sock, _ = listener.accept()
    sock.settimeout(5)
    wire.read_message(sock, WireLimits(), None)
    wire.send_message(sock, MessageType.WELCOME, 0, {"max_batch": 8, "max_message_bytes": 1 << 20})
    return sock, wire.read_message(sock, WireLimits(), None)


def test_opu_serve_has_a_flag_for_every_service_limit_and_refuses_a_bad_one(capsys) -> None:
    from opu_driver.service import ServiceLimits
    from opu_tools.cli import _service_limits, build_parser, main

    args = build_parser().parse_args(
        ["serve", "--max-device-bytes", "1000000", "--max-pending-connections", "3", "--hello-timeout-s", "0.5"]
    )
    limits = ServiceLimits(**_service_limits(args))
    assert (limits.max_device_bytes, limits.max_pending_connections, limits.hello_timeout_s) == (1_000_000, 3, 0.5)
    assert limits.max_clients == ServiceLimits().max_clients  # not given: the default
    for f in dataclasses.fields(ServiceLimits):
        flag = f"--{f.name.replace('_', '-')}"
        assert getattr(build_parser().parse_args(["serve", flag, "7"]), f.name) == 7, flag
    assert main(["serve", "--url", URL, "--max-batch", "0"]) == 2  # refused before the device opens
    from opu_driver.opu import OpuSettings
    from opu_tools.cli import _serve_opu_settings

    args = build_parser().parse_args(["serve", "--retries", "0", "--timeout-s", "1.5", "--pixel-format", "MONO12"])
    settings = _serve_opu_settings(args)
    assert settings == {"retries": 0, "timeout_s": 1.5, "pixel_format": "MONO12"}
    assert OpuSettings(**settings).retries == 0
    assert _serve_opu_settings(build_parser().parse_args(["serve"])) == {}
    assert "max_batch" in capsys.readouterr().err


@pytest.mark.slow
def test_a_client_faster_than_max_requests_per_s_is_paced_not_refused(direct) -> None:
    rate_per_s, n_requests = 5.0, 12
    with OpuService(URL, max_requests_per_s=rate_per_s) as svc:
        host, port = svc.address
        with dfa_client.connect(f"tcp://{host}:{port}", n_components=20) as projector:
            E = errors(41, 1, "ternary")
            expected = direct.linear_transform(E, 20)
            start = time.monotonic()
            for _ in range(n_requests):
                np.testing.assert_array_equal(projector.project(E), expected)
            elapsed_s = time.monotonic() - start
        stats = svc.stats()
    # The bucket holds rate_per_s requests; the rest come at most rate_per_s per second. A lower bound on the
    # time (a slow machine only adds to it), not a performance figure.
    assert elapsed_s >= (n_requests - rate_per_s - 1) / rate_per_s
    # After k requests of d seconds each the bucket holds 5 - k + 5 k d tokens: at d = 2 ms the 6th is held and
    # every later one; even at d = 100 ms (a heavily loaded machine) the 11th still is.
    assert stats.requests_paced >= 1
    with pytest.raises(ConfigurationError, match="max_requests_per_s"):
        OpuService(URL, max_requests_per_s=0.5)  # slower pacing would outlast a client's timeout
    assert stats.requests == n_requests and stats.request_errors == 0
