"""Garbage and silence on the controller's serial line: retried where safe, else the typed error in time.

The emulator's ``serial`` fault puts 1 to 16 non-ASCII bytes before a controller reply (docs/emulator.md). The
Controller retries exchanges that are safe to repeat (every query but ``SYSTEM:ERROR?``, every setter) and
resynchronises ``SYSTEM:ERROR?`` instead (asking again would pop another entry). With ``noise=0`` the emulator
is deterministic, so "recovered" means bit for bit the fault-free result of the same seed: no tolerance needed.
Timeouts are tested on a real pseudo-terminal, whose far end a test thread plays, so the transport's deadline
and its drain before a retry run for real.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

import opu_driver
from opu_driver.devices.controller import ControllerCounters
from opu_driver.devices.v1.controller import DEFAULT_MAX_RETRIES, RESYNC_MAX_S, ScpiController
from opu_driver.errors import (
    CommunicationTimeoutError,
    ConfigurationError,
    DeviceRefusedError,
    ProtocolError,
)
from opu_driver.transport import SerialTransport
from tests.support import small_sim

BASE = small_sim("noise=0&seed=5")
N_COMPONENTS = 40
TIMEOUT_S = 2.0
ATTEMPTS = 1 + DEFAULT_MAX_RETRIES
IDN = "OPU Open Stack,OPU-1,SIM-00000003,1.0.0"


def _inputs() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    X = rng.integers(0, 2, size=(24, 30), dtype=np.uint8)
    E = rng.integers(-1, 2, size=(4, 20)).astype(np.float32)  # ternary: 4 frames per vector
    E[np.abs(E).sum(axis=1) == 0, 0] = 1.0
    return X, E


def _session(opu) -> dict[str, object]:
    """Everything a user does with the controller in a session, plus both projections."""
    X, E = _inputs()
    controller = opu.controller
    out: dict[str, object] = {"identity": controller.identity}
    out["transform"] = opu.transform(X, N_COMPONENTS)
    out["linear_transform"] = opu.linear_transform(E, N_COMPONENTS)  # asks LASER:POWER? for its cache key
    controller.laser_off()
    out["off"] = (controller.laser_is_on, controller.shutter_is_open)
    controller.set_laser_power_mw(20.0)
    controller.laser_on()
    out["on"] = (
        controller.laser_is_on,
        controller.laser_power_mw,
        controller.interlock_ok,
        controller.trigger_mode,
        controller.laser_power_max_mw,
    )
    out["errors"] = controller.errors()
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, object]:
    with opu_driver.open(BASE) as opu:
        return _session(opu)


@pytest.fixture(scope="module")
def references() -> Callable[[int], dict[str, object]]:
    """The fault-free session of each seed, computed once."""
    cache: dict[int, dict[str, object]] = {}

    def get(seed: int) -> dict[str, object]:
        if seed not in cache:
            with opu_driver.open(_url(seed)) as opu:
                cache[seed] = _session(opu)
        return cache[seed]

    return get


def _url(seed: int) -> str:
    return small_sim(f"noise=0&seed={seed}")


def _assert_same(result: dict[str, object], reference: dict[str, object]) -> None:
    assert result.keys() == reference.keys()
    for key, value in reference.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(result[key], value, err_msg=key)
        else:
            assert result[key] == value, key


# -- the emulator: garbage before replies ----------------------------------------------------------------------


# A session makes about 22 controller exchanges (open, both projections, laser off and on, the queries, the error
# queue, close). At rate 0.2 per reply, one exchange uses up its 3 attempts with probability 0.2**3 = 0.008, so
# a session fails with about 16 % probability: the draws are replayed exactly from the seed, and seeds 2 and 3
# draw 9 and 3 garbled replies (seed 2 garbles some exchange twice in a row; seed 3 hits SYSTEM:ERROR?, which is
# resynchronised) and no exhausted exchange. serial@1,serial@4 hits *IDN? and the first command of the session.
@pytest.mark.parametrize(
    "seed, faults, least", [(2, "serial:0.2", 6), (3, "serial:0.2", 3), (5, "serial@1,serial@4", 2)]
)
def test_garbage_is_retried_and_the_session_gives_the_fault_free_results(references, seed, faults, least, caplog):
    caplog.set_level(logging.WARNING, logger="opu_driver.devices.v1.controller")
    with opu_driver.open(f"{_url(seed)}&faults={faults}", timeout_s=TIMEOUT_S) as opu:
        result = _session(opu)
        emulator = opu.emulator
    counters = opu.controller.counters  # includes the laser-off and shutter-close of close()
    injected = emulator.fault_counts["injected"]["serial"]
    _assert_same(result, references(seed))
    assert injected >= least, f"serial fired {injected} times: raise its rate so the test means something"
    # Every garbled reply cost exactly one retry (or one resync for SYSTEM:ERROR?); nothing failed.
    assert counters.retries + counters.resyncs == injected == counters.garbled_replies
    assert counters.requests_failed == 0 and counters.timeouts == 0
    assert 1 <= counters.requests_recovered <= injected
    retried = [r for r in caplog.records if "sending it again" in r.getMessage()]
    assert len(retried) == counters.retries


def test_garbage_on_every_reply_fails_open_with_protocol_error_in_time():
    started = time.monotonic()
    with pytest.raises(ProtocolError, match=f"after {ATTEMPTS} attempts"):
        opu_driver.open(f"{BASE}&faults=serial:1", timeout_s=TIMEOUT_S)
    # Garbage arrives at once: the only waits are the drains before the retries.
    assert time.monotonic() - started < TIMEOUT_S + 1.0


def test_three_garbled_replies_to_one_command_exhaust_its_retries_and_the_next_works():
    with opu_driver.open(BASE, timeout_s=TIMEOUT_S) as opu:
        controller = opu.controller
        power_mw = controller.laser_power_mw
        X, E = _inputs()
        expected = opu.linear_transform(E, N_COMPONENTS)
        opu.emulator.set_faults("serial@1,serial@2,serial@3")
        before = ControllerCounters(**vars(controller.counters))
        started = time.monotonic()
        with pytest.raises(ProtocolError):
            opu.linear_transform(E, N_COMPONENTS)  # its LASER:POWER? query gets garbage three times
        assert time.monotonic() - started < TIMEOUT_S + 1.0
        after = controller.counters
        assert after.retries - before.retries == DEFAULT_MAX_RETRIES
        assert after.garbled_replies - before.garbled_replies == ATTEMPTS
        assert after.requests_failed - before.requests_failed == 1
        assert opu.emulator.fault_counts["injected"]["serial"] == ATTEMPTS
        # The plan is spent: the next request is exact.
        assert controller.laser_power_mw == power_mw
        np.testing.assert_array_equal(opu.linear_transform(E, N_COMPONENTS), expected)


def test_transform_never_waits_on_the_controller(reference):
    with opu_driver.open(BASE, timeout_s=TIMEOUT_S) as opu:
        opu.emulator.set_faults("serial:1")
        X, _ = _inputs()
        np.testing.assert_array_equal(opu.transform(X, N_COMPONENTS), reference["transform"])
        assert opu.emulator.fault_counts["events"]["serial"] == 0
        opu.emulator.set_faults("")


def test_the_error_queue_is_resynchronised_not_retried():
    with opu_driver.open(BASE, timeout_s=TIMEOUT_S) as opu:
        controller = opu.controller
        assert controller.errors() == []
        with pytest.raises(DeviceRefusedError):
            controller._query("FROBNICATE 3")  # a refusal is an answer: not retried, one entry queued
        assert controller.counters.retries == 0
        opu.emulator.set_faults("serial:1")
        lines_before = opu.emulator.controller.lines_received
        # Garbage before both replies (the entry, then "0,No error"): each dropped, nothing asked twice.
        assert controller.errors() == [(-113, "Undefined header")]
        assert opu.emulator.controller.lines_received - lines_before == 2
        assert controller.counters.resyncs == 2 and controller.counters.retries == 0
        opu.emulator.set_faults("")


# -- scripted replies: what is retried and what is not ---------------------------------------------------------


class ScriptedSerial:
    """A transport answering each command line with the next reply of its script (a callable may raise)."""

    def __init__(self, script: dict[str, list[str | Callable[[], str]]]) -> None:
        self.script = {"*IDN?": [IDN], "SYSTEM:VERSION?": ["1"], **script}
        self.sent: list[str] = []
        self.drains = 0

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def discard_input(self, quiet_s: float, max_s: float) -> int:
        assert 0 <= quiet_s <= max_s <= RESYNC_MAX_S
        self.drains += 1
        return 0

    def query(self, line: bytes, timeout_s: float | None = None) -> str:
        text = line.decode("ascii").strip()
        self.sent.append(text)
        replies = self.script[text]
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        return reply() if callable(reply) else reply


def _timeout() -> str:
    raise CommunicationTimeoutError("no reply (scripted)")


@pytest.mark.parametrize(
    "line, act",
    [
        ("LASER:STATE ON", lambda c: c.laser_on()),
        ("SHUTTER:STATE CLOSED", lambda c: c.close_shutter()),
        ("TRIGGER:MODE SOFT", lambda c: c.set_trigger_mode("SOFT")),
        ("*RST", lambda c: c.reset()),
        ("TEMPERATURE?", lambda c: c.temperature_c),
    ],
)
def test_idempotent_exchanges_are_retried_after_garbage_and_timeouts(line, act):
    good = "25.00" if line.endswith("?") else "OK"
    transport = ScriptedSerial({line: ["\ufffdOK\ufffd", _timeout, good]})
    controller = ScpiController(transport)  # type: ignore[arg-type]
    controller.open()
    act(controller)
    assert transport.sent[2:] == [line] * 3 and transport.drains == 2
    c = controller.counters
    assert (c.retries, c.garbled_replies, c.timeouts, c.requests_recovered, c.requests_failed) == (2, 1, 1, 1, 0)


def test_the_interlock_reset_is_never_sent_twice():
    # a safety latch: a second sending could clear a trip that happened after the first, unseen
    transport = ScriptedSerial({"INTERLOCK:RESET": [_timeout, "OK"]})
    controller = ScpiController(transport)  # type: ignore[arg-type]
    controller.open()
    with pytest.raises(CommunicationTimeoutError):
        controller.reset_interlock()
    assert transport.sent.count("INTERLOCK:RESET") == 1 and controller.counters.retries == 0
    transport.script["INTERLOCK:RESET"] = ["\ufffdOK"]  # garbage in front of a whole reply: resynchronised
    controller.reset_interlock()
    assert transport.sent.count("INTERLOCK:RESET") == 2 and controller.counters.retries == 0


def test_refusals_are_answers_and_are_not_retried():
    transport = ScriptedSerial({"LASER:POWER:MAX?": ["100.000"], "LASER:POWER 12.5": ['ERR -222,"Data out of range"']})
    controller = ScpiController(transport)  # type: ignore[arg-type]
    controller.open()
    with pytest.raises(DeviceRefusedError):
        controller.set_laser_power_mw(12.5)
    assert transport.sent.count("LASER:POWER 12.5") == 1 and controller.counters.retries == 0


def test_the_error_queue_is_never_asked_twice():
    transport = ScriptedSerial(
        {"SYSTEM:ERROR?": ['\ufffd\ufffd\ufffd-113,"Undefined header"', '0,"No error"', "\ufffd\ufffd"]}
    )
    controller = ScpiController(transport)  # type: ignore[arg-type]
    controller.open()
    assert controller.errors() == [(-113, "Undefined header")]  # garbage dropped
    with pytest.raises(ProtocolError, match="not retried"):
        controller.errors()  # nothing behind the garbage: that entry is lost, and said so
    assert transport.sent.count("SYSTEM:ERROR?") == 3 and controller.counters.retries == 0
    transport.script["SYSTEM:ERROR?"] = [_timeout]
    with pytest.raises(CommunicationTimeoutError):
        controller.errors()
    assert transport.sent.count("SYSTEM:ERROR?") == 4 and controller.counters.retries == 0


def test_max_retries_bounds_the_attempts():
    transport = ScriptedSerial({"LASER:STATE?": ["\ufffd1"]})
    controller = ScpiController(transport, max_retries=0)  # type: ignore[arg-type]
    controller.open()
    with pytest.raises(ProtocolError):
        controller.laser_is_on
    assert transport.sent.count("LASER:STATE?") == 1
    controller.max_retries = 4
    with pytest.raises(ProtocolError, match="after 5 attempts"):
        controller.laser_is_on
    assert transport.sent.count("LASER:STATE?") == 6 and controller.counters.retries == 4
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(ConfigurationError):
            ScpiController(transport, max_retries=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ScpiController(transport, resync_quiet_s=float("nan"))  # type: ignore[arg-type]


def test_a_version_mismatch_is_an_answer_not_noise():
    transport = ScriptedSerial({"SYSTEM:VERSION?": ["2"]})
    with pytest.raises(ProtocolError, match="version"):
        ScpiController(transport).open()  # type: ignore[arg-type]
    assert transport.sent.count("SYSTEM:VERSION?") == 1


# -- a real line: timeouts, late replies, the drain --------------------------------------------------------------


class FarEnd:
    """The device end of a pseudo-terminal: answers each command line with ``answer(line)`` (None: silence)."""

    def __init__(self, answer: Callable[[str], str | None]) -> None:
        self._master, slave = os.openpty()
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the line stays up while the transport reopens it
        self._answer = answer
        self._stop = threading.Event()
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buffer = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master], [], [], 0.02)
            if not ready:
                continue
            try:
                buffer += os.read(self._master, 1024)
            except OSError:
                return
            while b"\n" in buffer:
                raw, buffer = buffer.split(b"\n", 1)
                line = raw.decode("ascii", errors="replace").strip()
                self.lines.append(line)
                reply = self._answer(line)
                if reply is not None:
                    os.write(self._master, reply.encode("latin-1"))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        os.close(self._master)
        os.close(self._slave)


@pytest.fixture
def far_end() -> Iterator[Callable[[Callable[[str], str | None]], FarEnd]]:
    ends: list[FarEnd] = []

    def make(answer: Callable[[str], str | None]) -> FarEnd:
        ends.append(FarEnd(answer))
        return ends[-1]

    yield make
    for end in ends:
        end.close()


LINE_TIMEOUT_S = 0.2


def _controller_on(end: FarEnd) -> ScpiController:
    controller = ScpiController(SerialTransport(end.path, timeout_s=LINE_TIMEOUT_S), timeout_s=LINE_TIMEOUT_S)
    controller.open()
    return controller


def _basic(line: str) -> str | None:
    return {
        "*IDN?": IDN + "\n",
        "SYSTEM:VERSION?": "1\n",
        "LASER:STATE OFF": "OK\n",
        "SHUTTER:STATE CLOSED": "OK\n",
    }.get(line)


def test_silence_is_retried_then_a_timeout_error_within_the_documented_bound(far_end):
    end = far_end(_basic)  # never answers TEMPERATURE?
    controller = _controller_on(end)
    started = time.monotonic()
    with pytest.raises(CommunicationTimeoutError, match=f"after {ATTEMPTS} attempts"):
        controller.temperature_c
    elapsed_s = time.monotonic() - started
    # Each attempt waits its full timeout; the drains add at most RESYNC_MAX_S each; 0.5 s for the scheduler.
    assert ATTEMPTS * LINE_TIMEOUT_S <= elapsed_s < ATTEMPTS * (LINE_TIMEOUT_S + RESYNC_MAX_S) + 0.5
    assert end.lines.count("TEMPERATURE?") == ATTEMPTS
    assert (controller.counters.timeouts, controller.counters.retries) == (ATTEMPTS, DEFAULT_MAX_RETRIES)
    controller.close()


def test_an_unended_and_a_garbled_reply_on_a_real_line_are_both_retried(far_end):
    asked = {"n": 0}

    def answer(line: str) -> str | None:
        if line == "LASER:POWER?":
            asked["n"] += 1
            if asked["n"] == 1:
                return "\xff\xfe\x80"  # garbage with no line end: the first attempt times out on it
            if asked["n"] == 2:
                return "\x9a\x9b12.500\n"  # garbage before a valid line: retried, not trusted
            return "12.500\n"
        return _basic(line)

    end = far_end(answer)
    controller = _controller_on(end)
    assert controller.laser_power_mw == 12.5
    assert end.lines.count("LASER:POWER?") == 3
    c = controller.counters
    assert (c.timeouts, c.garbled_replies, c.retries, c.requests_recovered) == (1, 1, 2, 1)
    controller.close()


def test_the_drain_drops_what_arrives_until_the_line_is_quiet(far_end):
    end = far_end(_basic)  # never answers QUIET
    transport = SerialTransport(end.path, timeout_s=LINE_TIMEOUT_S)
    transport.open()
    try:
        with pytest.raises(CommunicationTimeoutError):
            transport.query("QUIET", timeout_s=0.05)
        os.write(end._master, b"late reply\nand its tail")  # arrives after the query gave up
        time.sleep(0.05)
        assert transport.discard_input(quiet_s=0.02, max_s=RESYNC_MAX_S) == len(b"late reply\nand its tail")
        assert transport.discard_input(quiet_s=0.01, max_s=RESYNC_MAX_S) == 0
        assert transport.query("*IDN?") == IDN  # the next query reads its own answer
    finally:
        transport.close()
