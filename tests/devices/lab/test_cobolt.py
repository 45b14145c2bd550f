"""The Cobolt laser backend against the byte-level emulator of its serial protocol (``coboltsim://``), and the
hand-switched light."""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Iterator

import pytest
import serial

from firmware_sim.lab.cobolt import (
    ILLEGAL_COMMAND,
    CoboltEmulator,
    CoboltSimConfig,
    create_laser,
    release_laser,
)
from opu_driver.devices.lab.cobolt import CoboltLaser
from opu_driver.devices.lab.manual_light import ManualLight
from opu_driver.devices.lab.parts import LightSource
from opu_driver.errors import (
    CommunicationTimeoutError,
    ConfigurationError,
    DeviceError,
    DeviceNotFoundError,
    DeviceRefusedError,
    InterlockError,
    InvalidInputError,
    ProtocolError,
    UnsupportedUrlError,
)

TIMEOUT_S = 0.2
_names = itertools.count()


@pytest.fixture
def emulator() -> Iterator[CoboltEmulator]:
    name = f"laser-{next(_names)}"
    laser = create_laser(name)
    yield laser
    release_laser(name)


def _driver(emulator: CoboltEmulator, **kwargs: object) -> CoboltLaser:
    kwargs.setdefault("timeout_s", TIMEOUT_S)
    return CoboltLaser(f"coboltsim://{emulator.name}", **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def laser(emulator: CoboltEmulator) -> Iterator[CoboltLaser]:
    driver = _driver(emulator)
    driver.open()
    yield driver
    driver.close()


# ------------------------------------------------------------------------------------------- the emulator's wire
def test_emulator_wire_format() -> None:
    """Replies byte for byte: CR-terminated commands in, CR LF-terminated lines out, watts on the wire."""
    create_laser("wire")
    try:
        port = serial.serial_for_url("coboltsim://wire", timeout=TIMEOUT_S)
        exchanges = [
            (b"l?\r", b"0\r\n"),
            (b"ilk?\r", b"0\r\n"),
            (b"p 0.05000\r", b"OK\r\n"),
            (b"p?\r", b"0.0500\r\n"),
            (b"pa?\r", b"0.0000\r\n"),
            (b"l1\r", b"OK\r\n"),
            (b"pa?\r", b"0.0500\r\n"),
            (b"gmlp?\r", b"100.0\r\n"),
            (b"sn?\r", b"21345\r\n"),
            (b"ver?\r", ILLEGAL_COMMAND.encode() + b"\r\n"),
            (b"p 5\r", ILLEGAL_COMMAND.encode() + b"\r\n"),
            (b"x" * 80 + b"\r", ILLEGAL_COMMAND.encode() + b"\r\n"),
        ]
        for sent, expected in exchanges:
            port.write(sent)
            assert port.read_until(b"\r\n") == expected, sent
        port.close()
    finally:
        release_laser("wire")


# ---------------------------------------------------------------------------------------------- every method
def test_open_reads_identity(emulator: CoboltEmulator) -> None:
    driver = _driver(emulator)
    info = driver.open()
    assert isinstance(driver, LightSource)
    assert (info.manufacturer, info.model, info.serial_number, info.firmware_version) == (
        "Cobolt",
        "0532-06-01-0100-300",
        "21345",
        "5.12",
    )
    assert info.max_power_mw == 100.0
    assert emulator.commands == ["sn?", "gfv?", "glm?", "gmlp?", "l?", "ilk?", "f?", "gom?"]
    assert driver.open() is info  # opening again reads nothing new
    assert len(emulator.commands) == 8
    driver.close()


def test_old_firmware_needs_max_power(emulator: CoboltEmulator) -> None:
    old = create_laser("old-fw", CoboltSimConfig(model=None, max_power_mw=None))
    try:
        with pytest.raises(ConfigurationError, match="max_power_mw"):
            _driver(old).open()
        # The port was released: a second driver opens it and takes the maximum from its argument.
        driver = _driver(old, max_power_mw=50.0)
        info = driver.open()
        assert info.max_power_mw == 50.0
        assert "not reported" in info.model
        driver.close()
    finally:
        release_laser("old-fw")


def test_max_power_argument_may_only_lower(emulator: CoboltEmulator) -> None:
    with pytest.raises(ConfigurationError, match="above the laser's own maximum"):
        _driver(emulator, max_power_mw=150.0).open()
    driver = _driver(emulator, max_power_mw=40.0)
    assert driver.open().max_power_mw == 40.0
    with pytest.raises(InvalidInputError):
        driver.set_power_mw(45.0)
    driver.close()


def test_switch_on_off_and_power(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    start = len(emulator.commands)
    laser.set_power_mw(50.0)
    assert emulator.set_power_w == pytest.approx(0.05)
    assert emulator.commands[start:] == ["p 0.05000", "p?"]
    assert laser.set_point_mw() == pytest.approx(50.0)
    assert laser.power_mw() == 0.0  # off: no output
    assert not laser.is_on()

    start = len(emulator.commands)
    laser.set_on(True)
    assert emulator.on
    assert emulator.commands[start:] == ["ilk?", "f?", "l1", "l?"]
    assert laser.is_on()
    assert laser.power_mw() == pytest.approx(50.0)
    laser.set_power_mw(12.345)
    assert laser.power_mw() == pytest.approx(12.345, abs=0.05 + 1e-9)  # the emulator reports 0.1 mW steps

    laser.set_on(False)
    assert not emulator.on and not laser.is_on()
    assert laser.interlock_ok()


def test_autostart_switches_on_with_cob1(emulator: CoboltEmulator) -> None:
    driver = _driver(emulator, use_autostart=True)
    driver.open()
    driver.set_on(True)
    assert emulator.on and "@cob1" in emulator.commands and "l1" not in emulator.commands
    driver.close()
    assert not emulator.on


def test_power_range_refused_before_sending(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    before = emulator.commands
    for bad in (-0.001, 100.001, math.nan, math.inf, -math.inf, "50", None, True):
        with pytest.raises(InvalidInputError):
            laser.set_power_mw(bad)  # type: ignore[arg-type]
    assert emulator.commands == before  # nothing at all went on the line
    assert emulator.set_power_w == 0.0
    laser.set_power_mw(100.0)  # the maximum itself is allowed
    assert emulator.set_power_w == pytest.approx(0.1)


def test_refusal_is_typed(emulator: CoboltEmulator) -> None:
    # Firmware without gmlp?, a limit below what the user claimed: the laser's own refusal reaches the caller.
    limited = create_laser("limited", CoboltSimConfig(max_power_mw=None, power_limit_mw=30.0))
    try:
        driver = _driver(limited, max_power_mw=100.0)
        driver.open()
        with pytest.raises(DeviceRefusedError, match="illegal command"):
            driver.set_power_mw(50.0)
        assert limited.commands.count("p 0.05000") == 1  # a refusal is an answer: not sent again
        assert limited.set_power_w == 0.0
        driver.close()
    finally:
        release_laser("limited")


# -------------------------------------------------------------------------------------------------- interlock
def test_open_interlock_refuses_switch_on(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    emulator.open_interlock()
    assert not laser.interlock_ok()
    with pytest.raises(InterlockError, match="interlock is open"):
        laser.set_on(True)
    assert not emulator.on
    assert "l1" not in emulator.commands and "@cob1" not in emulator.commands


def test_tripped_interlock_stays_latched_until_cleared_by_hand(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    laser.set_on(True)
    emulator.open_interlock()  # the laser stops at once and latches fault 3
    assert not laser.is_on()
    with pytest.raises(InterlockError, match="interlock is open"):
        laser.clear_fault()
    assert "cf" not in emulator.commands
    emulator.close_interlock()
    with pytest.raises(InterlockError, match="latched"):
        laser.set_on(True)
    assert emulator.commands.count("l1") == 1 and not emulator.on
    assert laser.status().operating_mode == "fault"
    assert laser.clear_fault() == 0  # the user's explicit act
    laser.set_on(True)
    assert emulator.on


# ------------------------------------------------------------------------------------------- faults on the line
@pytest.mark.parametrize("kind", ["garble", "drop", "flood"])
def test_query_recovered_by_retry(laser: CoboltLaser, emulator: CoboltEmulator, kind: str) -> None:
    laser.set_power_mw(20.0)
    laser.set_on(True)
    emulator.inject(kind, command="pa?")
    assert laser.power_mw() == pytest.approx(20.0)
    assert emulator.commands.count("pa?") == 2


@pytest.mark.parametrize(("kind", "error"), [("garble", ProtocolError), ("drop", CommunicationTimeoutError)])
def test_query_fault_typed_within_timeout(emulator: CoboltEmulator, kind: str, error: type[Exception]) -> None:
    driver = _driver(emulator, retries=0)
    driver.open()
    emulator.inject(kind, command="ilk?")
    start = time.monotonic()
    with pytest.raises(error):
        driver.interlock_ok()
    assert time.monotonic() - start < TIMEOUT_S + 0.15
    assert emulator.commands.count("ilk?") == 2  # once at open, once here: never sent again with retries=0
    driver.close()


def test_flood_is_bounded(emulator: CoboltEmulator) -> None:
    driver = _driver(emulator, retries=0)
    driver.open()
    emulator.inject("flood", command="l?", flood_bytes=5000)
    with pytest.raises(ProtocolError, match="longer than"):
        driver.is_on()
    driver.close()


def test_retries_are_bounded(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    emulator.inject("garble", command="pa?", count=100)
    with pytest.raises(ProtocolError):
        laser.power_mw()
    assert emulator.commands.count("pa?") == 1 + laser.retries
    emulator.clear_faults()


def test_late_reply_then_recovered(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    emulator.inject("delay", command="f?", delay_s=TIMEOUT_S * 1.5)
    assert laser.status().fault_code == 0  # the first attempt timed out, the second was answered
    assert emulator.commands.count("f?") >= 2
    emulator.inject("delay", command="l?", delay_s=TIMEOUT_S / 4)
    before = emulator.commands.count("l?")
    assert not laser.is_on()  # slow but in time: one attempt
    assert emulator.commands.count("l?") == before + 1


@pytest.mark.parametrize("kind", ["garble", "drop"])
def test_lost_acknowledgment_settled_by_reading_back(laser: CoboltLaser, emulator: CoboltEmulator, kind: str) -> None:
    emulator.inject(kind, command="l1")
    laser.set_on(True)
    assert emulator.on and emulator.commands.count("l1") == 1  # never sent blindly again
    emulator.inject(kind, command="p 0.03000")
    laser.set_power_mw(30.0)
    assert emulator.set_power_w == pytest.approx(0.03) and emulator.commands.count("p 0.03000") == 1


def test_state_change_not_in_effect_is_an_error(laser: CoboltLaser, emulator: CoboltEmulator) -> None:
    emulator.inject("restart", command="l1")  # the laser restarts on receiving l1: no reply, stays off
    with pytest.raises(DeviceError, match="not in effect"):
        laser.set_on(True)
    assert not emulator.on and emulator.commands.count("l1") == 1


def test_restart_detected(laser: CoboltLaser, emulator: CoboltEmulator, caplog: pytest.LogCaptureFixture) -> None:
    laser.set_on(True)
    emulator.power_cycle()
    with caplog.at_level(logging.WARNING, logger="opu_driver.devices.lab.cobolt"):
        assert not laser.is_on()
    assert "restarted or its interlock tripped" in caplog.text
    assert not emulator.on  # nothing switched it on again


# ---------------------------------------------------------------------------------------------- open and close
def test_close_switches_off_and_is_idempotent(emulator: CoboltEmulator) -> None:
    driver = _driver(emulator)
    driver.open()
    driver.set_on(True)
    driver.close()
    assert not emulator.on
    assert emulator.commands[-2:] == ["l0", "l?"]
    count = len(emulator.commands)
    driver.close()
    assert len(emulator.commands) == count
    with pytest.raises(DeviceError, match="not open"):
        driver.is_on()


def test_close_reports_unconfirmed_switch_off(emulator: CoboltEmulator) -> None:
    driver = _driver(emulator, retries=0)
    driver.open()
    driver.set_on(True)
    emulator.inject("drop", count=10)
    with pytest.raises(DeviceError, match="could not be confirmed off"):
        driver.close()
    emulator.clear_faults()
    driver.close()  # released all the same: nothing more to do


def test_open_errors() -> None:
    with pytest.raises(DeviceNotFoundError):
        CoboltLaser("coboltsim://no-such-laser", timeout_s=TIMEOUT_S).open()
    with pytest.raises(UnsupportedUrlError):
        CoboltLaser("nosuchscheme://x", timeout_s=TIMEOUT_S).open()
    for bad in ({"timeout_s": 0}, {"timeout_s": math.nan}, {"retries": -1}, {"baudrate": 0}, {"max_power_mw": -1}):
        with pytest.raises(InvalidInputError):
            CoboltLaser("coboltsim://x", **bad)  # type: ignore[arg-type]


def test_silent_line_is_not_found(emulator: CoboltEmulator) -> None:
    emulator.inject("drop", count=10)
    with pytest.raises(DeviceNotFoundError, match="no laser answers"):
        _driver(emulator, retries=1).open()
    emulator.clear_faults()
    driver = _driver(emulator)
    driver.open()  # the failed attempt released the port
    driver.close()


def test_serial_factory_is_used(emulator: CoboltEmulator) -> None:
    calls: list[tuple[str, dict[str, object]]] = []

    def factory(port: str, **kwargs: object) -> object:
        calls.append((port, kwargs))
        return serial.serial_for_url(f"coboltsim://{emulator.name}", **kwargs)

    driver = CoboltLaser("/dev/ttyFAKE", baudrate=19200, timeout_s=TIMEOUT_S, serial_factory=factory)
    driver.open()
    driver.close()
    assert calls == [("/dev/ttyFAKE", {"baudrate": 19200, "timeout": TIMEOUT_S, "write_timeout": TIMEOUT_S})]


# ------------------------------------------------------------------------------------------------ manual light
def test_manual_light(caplog: pytest.LogCaptureFixture) -> None:
    light = ManualLight("the 532 nm laser")
    info = light.open()
    assert info.max_power_mw == 0.0 and "by hand" in info.model
    assert light.interlock_ok()
    assert not light.is_on()
    with caplog.at_level(logging.INFO, logger="opu_driver.devices.lab.manual_light"):
        light.set_on(True)
    assert "switch the 532 nm laser ON by hand" in caplog.text
    assert light.is_on()
    with pytest.raises(ConfigurationError, match="cannot be set"):
        light.set_power_mw(1.0)
    with pytest.raises(ConfigurationError, match="cannot be read"):
        light.power_mw()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="opu_driver.devices.lab.manual_light"):
        light.close()
        light.close()
    assert caplog.text.count("OFF by hand") == 1
    assert not light.is_on()
    with pytest.raises(ConfigurationError):
        ManualLight("  ")


# --------------------------------------------------------------------------------------------- the documentation
def test_doc_command_table() -> None:
    """Each command of docs/rig-laser.md's table gets, from a laser just powered on, the reply the table shows."""
    import pathlib
    import re

    doc = (pathlib.Path(__file__).resolve().parents[3] / "docs" / "rig-laser.md").read_text(encoding="utf-8")
    section = doc.split("## The commands used", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \|[^|]*\| `([^`]+)` \|", section, flags=re.MULTILINE)
    assert len(rows) >= 15
    for command, expected in rows:
        create_laser("doc")
        try:
            port = serial.serial_for_url("coboltsim://doc", timeout=TIMEOUT_S)
            port.write(command.encode("ascii") + b"\r")
            assert port.read_until(b"\r\n") == expected.encode("ascii") + b"\r\n", command
            port.close()
        finally:
            release_laser("doc")
