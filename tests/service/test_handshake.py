"""The service's handshake and connection slots under misuse: idle authenticated connections give their slot to a
new client, failed tokens are delayed per address and logged as a summary, every malformed HELLO gets a typed
ERROR, and a client that half-closes after its request still gets its reply.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from typing import Any

import numpy as np
import pytest

import dfa_client
import opu_driver
from dfa_client import wire
from dfa_client.errors import AuthenticationError, ConnectionFailedError
from dfa_client.wire import MessageType, WireLimits
from opu_driver.service import OpuService
from tests.support import small_sim

URL = small_sim("noise=0&seed=5")
N_FEATURES = 40
TOKEN = "handshake-test-token"
WAIT_S = 10.0  # a bound for "eventually", never a performance figure
DOCUMENTED_KINDS = {"AuthenticationError", "ProtocolVersionError", "InvalidInputError", "RequestTooLarge"}


def tcp(svc: OpuService) -> str:
    host, port = svc.address
    return f"tcp://{host}:{port}"


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


def hello_header(**fields: Any) -> dict[str, Any]:
    return {
        "protocol_version": 1,
        "token": TOKEN,
        "n_components": 10,
        "n_features": N_FEATURES,
        "scheme": "four_frame",
        "n_bits": None,
        "max_batch": 8,
        **fields,
    }


def exchange_hello(svc: OpuService, data: bytes) -> tuple[socket.socket, wire.Message]:
    sock = socket.create_connection(svc.address, timeout=5)
    sock.sendall(data)
    return sock, wire.read_message(sock, WireLimits(), time.monotonic() + WAIT_S)


def read_until_closed(sock: socket.socket, timeout_s: float = WAIT_S) -> bytes:
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


# ------------------------------------------------------------------------------------------------ slots
def test_silent_and_idle_connections_do_not_lock_out_a_client_holding_the_token() -> None:
    with OpuService(URL, token=TOKEN, idle_grace_s=0.3) as svc:  # the default max_clients: 32
        # 32 connections that never say a word: the handshake pool (16) evicts the oldest, then the deadline.
        silent = [socket.create_connection(svc.address, timeout=5) for _ in range(32)]
        # 32 HELLOs without the token, then silence: refused and closed at once.
        no_token = wire.encode(MessageType.HELLO, 0, hello_header(token=None))
        tokenless = [exchange_hello(svc, no_token) for _ in range(32)]
        assert all(reply.header["kind"] == "AuthenticationError" for _, reply in tokenless)
        # 32 authenticated HELLOs, then silence (a process that can read the token): every slot taken.
        idle = [exchange_hello(svc, wire.encode(MessageType.HELLO, 0, hello_header())) for _ in range(32)]
        assert all(reply.type is MessageType.WELCOME for _, reply in idle)
        assert svc.stats().clients_connected == 32
        started = time.monotonic()
        with dfa_client.connect(tcp(svc), n_components=10, token=TOKEN, retries=5, backoff_s=0.1) as projector:
            assert projector.project(np.ones(N_FEATURES)).shape == (10,)
        assert time.monotonic() - started < WAIT_S
        stats = svc.stats()
        assert stats.clients_evicted_idle >= 1 and stats.clients_connected <= 32
        for sock in silent + [s for s, _ in tokenless] + [s for s, _ in idle]:
            sock.close()


@pytest.mark.slow
def test_the_connection_idle_longest_gives_its_slot_and_its_client_reconnects() -> None:
    with OpuService(URL, max_clients=2, idle_grace_s=0.3) as svc:
        first = dfa_client.connect(tcp(svc), n_components=10, retries=3, backoff_s=0.05)
        second = dfa_client.connect(tcp(svc), n_components=10, retries=3, backoff_s=0.05)
        first.project(np.ones(N_FEATURES))
        second.project(np.ones(N_FEATURES))  # second was active last: first is idle longest
        # Within the grace nobody is idle enough: the client is refused (TooManyClients, retried, then failed).
        with pytest.raises(ConnectionFailedError, match="TooManyClients"):
            dfa_client.connect(tcp(svc), n_components=10, retries=0)
        time.sleep(0.4)
        third = dfa_client.connect(tcp(svc), n_components=10, retries=0)
        assert svc.stats().clients_evicted_idle == 1
        assert third.project(np.ones(N_FEATURES)).shape == (10,)
        # first lost its slot; its next request reconnects (taking the slot of second, idle longest by now)
        time.sleep(0.4)
        assert first.project(np.ones(N_FEATURES)).shape == (10,)
        assert first.reconnects >= 1 and second.reconnects == 0
        for projector in (first, second, third):
            projector.close()


# ------------------------------------------------------------------------------------------------ tokens
@pytest.mark.slow
def test_failed_tokens_are_delayed_per_address_and_logged_as_a_summary(caplog) -> None:
    caplog.set_level(logging.WARNING, logger="opu_driver.service")
    max_delay_s, attempts = 0.05, 20
    svc = OpuService(URL, token=TOKEN, auth_failure_delay_s=max_delay_s).start()
    try:
        started = time.monotonic()
        for _ in range(attempts):
            sock, reply = exchange_hello(svc, wire.encode(MessageType.HELLO, 0, hello_header(token="guess")))
            assert reply.header["kind"] == "AuthenticationError"
            sock.close()
        elapsed_s = time.monotonic() - started
        # each attempt after the first waited for the delay the previous ones earned: 10 ms doubling, capped
        earned_s = sum(min(max_delay_s, 0.01 * 2**k) for k in range(attempts - 1))
        assert elapsed_s >= earned_s
        assert svc.stats().auth_failures == attempts and svc.stats().auth_delayed >= attempts - 1
        warnings = [r.getMessage() for r in caplog.records if "token" in r.getMessage()]
        assert len(warnings) == 1, warnings  # the first failure; the others go into the summary
        # The right token from the same address still gets in, after at most the delay.
        with dfa_client.connect(tcp(svc), n_components=10, token=TOKEN) as projector:
            assert projector.project(np.ones(N_FEATURES)).shape == (10,)
    finally:
        svc.stop()
    summary = [r.getMessage() for r in caplog.records if "failed token attempt" in r.getMessage()]
    assert summary and f"{attempts} failed token attempt(s) from 1 address(es)" in summary[-1]
    assert "guess" not in caplog.text and TOKEN not in caplog.text


def _malformed_hellos() -> dict[str, bytes]:
    cases: dict[str, Any] = {
        "token a lone surrogate": hello_header(token="\ud800abc"),
        "token a number": hello_header(token=12345),
        "token a list": hello_header(token=[TOKEN]),
        "token an object": hello_header(token={"value": TOKEN}),
        "token true": hello_header(token=True),
        "token missing": {k: v for k, v in hello_header().items() if k != "token"},
        "version a string": hello_header(protocol_version="1"),
        "version a list": hello_header(protocol_version=[1]),
        "version missing": {k: v for k, v in hello_header().items() if k != "protocol_version"},
        "n_components a string": hello_header(n_components="10"),
        "n_components a float": hello_header(n_components=10.0),
        "n_components true": hello_header(n_components=True),
        "n_components a list": hello_header(n_components=[10]),
        "n_components huge": hello_header(n_components=10**400),
        "n_components negative": hello_header(n_components=-3),
        "n_features an object": hello_header(n_features={"n": 1}),
        "n_features zero": hello_header(n_features=0),
        "n_features huge": hello_header(n_features=2**80),
        "scheme a list": hello_header(scheme=["four_frame"]),
        "scheme an object": hello_header(scheme={"four_frame": 1}),
        "scheme null": hello_header(scheme=None),
        "n_bits a string": hello_header(n_bits="8"),
        "n_bits 17": hello_header(n_bits=17),
        "max_batch null": hello_header(max_batch=None),
        "max_batch a float": hello_header(max_batch=1.5),
    }
    # json.dumps writes a lone surrogate as the escape \ud800: valid JSON that decodes to a str no UTF-8 encodes
    return {name: wire.encode(MessageType.HELLO, 0, header) for name, header in cases.items()}


@pytest.fixture(scope="module")
def token_service():
    with OpuService(URL, token=TOKEN, auth_failure_delay_s=0.01) as svc:
        yield svc


@pytest.mark.parametrize("case", sorted(_malformed_hellos()))
def test_every_malformed_hello_gets_a_typed_error(token_service, case, caplog) -> None:
    caplog.set_level(logging.DEBUG, logger="opu_driver.service")
    sock, reply = exchange_hello(token_service, _malformed_hellos()[case])
    assert reply.type is MessageType.ERROR and reply.request_id == 0, reply
    assert reply.header["kind"] in DOCUMENTED_KINDS, reply.header
    assert read_until_closed(sock) == b""  # then the connection is closed
    sock.close()
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    if case.startswith("token"):
        assert reply.header["kind"] == "AuthenticationError"


def test_a_client_with_a_non_utf8_token_gets_an_authentication_error(token_service) -> None:
    with pytest.raises(AuthenticationError, match="UTF-8"):
        dfa_client.connect(tcp(token_service), n_components=10, token="\udcff")


# ------------------------------------------------------------------------------------------------ half-close
def test_a_client_that_half_closes_after_its_request_gets_its_reply() -> None:
    E = np.random.default_rng(4).normal(size=(3, N_FEATURES))
    with opu_driver.open(URL) as direct, OpuService(URL, token=TOKEN) as svc:
        expected = direct.linear_transform(E, 10)
        for errors, kind in ((E, None), (np.full((1, N_FEATURES), np.nan), "InvalidInputError")):
            sock, welcome = exchange_hello(svc, wire.encode(MessageType.HELLO, 0, hello_header()))
            assert welcome.type is MessageType.WELCOME
            svc.pause()  # the FIN comes while the request waits for the device
            try:
                wire.send_message(sock, MessageType.PROJECT, 5, None, errors)
                sock.shutdown(socket.SHUT_WR)
                time.sleep(0.2)
            finally:
                svc.resume()
            reply = wire.decode(read_until_closed(sock))
            assert reply.request_id == 5
            if kind is None:
                assert reply.type is MessageType.RESULT
                np.testing.assert_array_equal(reply.array, expected)
            else:
                assert reply.type is MessageType.ERROR and reply.header["kind"] == kind
            sock.close()
        assert svc.stats().requests_abandoned == 0


def test_a_hello_header_that_is_not_utf8_json_is_a_protocol_error(token_service) -> None:
    text = b'{"protocol_version": 1, "token": "\xff\xfe"}'
    data = wire.PREFIX.pack(wire.MAGIC, 1, MessageType.HELLO, 0, 0, len(text), 0) + text
    sock, reply = exchange_hello(token_service, data)
    assert reply.type is MessageType.ERROR and reply.header["kind"] == "ProtocolError"
    sock.close()
    text = json.dumps([1, 2]).encode()
    sock, reply = exchange_hello(token_service, wire.PREFIX.pack(wire.MAGIC, 1, 1, 0, 0, len(text), 0) + text)
    assert reply.type is MessageType.ERROR and reply.header["kind"] == "ProtocolError"
    sock.close()
