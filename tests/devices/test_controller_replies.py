"""The driver's Controller checks every reply against the grammar of docs/protocol.md section 2.

A scripted fake transport stands in for the serial line: it records the command lines the Controller sends
and answers with the replies a test chooses, so garbage and out-of-grammar replies can be fed to each query.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opu_driver.devices.controller import Identity, TriggerMode
from opu_driver.devices.v1.controller import ScpiController
from opu_driver.errors import DeviceRefusedError, InterlockError, ProtocolError
from opu_driver.protocol import SERIAL_TIMEOUT_S

IDN = "OPU Open Stack,OPU-1,SIM-00000003,1.0.0"


class FakeSerial:
    """A serial transport whose replies are scripted: a dict from command line to reply, or a callable."""

    def __init__(self, replies: dict[str, str] | None = None) -> None:
        self.replies: dict[str, str] = {
            "*IDN?": IDN,
            "SYSTEM:VERSION?": "1",
            "LASER:STATE OFF": "OK",
            "SHUTTER:STATE CLOSED": "OK",
        }
        self.replies.update(replies or {})
        self.sent: list[str] = []
        self.timeouts: list[float | None] = []
        self.is_open = False

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def query(self, line: str | bytes, timeout_s: float | None = None) -> str:
        # Lines built by format_command are bytes ending in one newline.
        assert isinstance(line, bytes) and line.endswith(b"\n"), f"command {line!r} not from format_command"
        text = line[:-1].decode("ascii")
        self.sent.append(text)
        self.timeouts.append(timeout_s)
        reply = self.replies.get(text)
        if reply is None:
            return 'ERR -113,"Undefined header"'
        return reply


def _open(replies: dict[str, str] | None = None) -> tuple[ScpiController, FakeSerial]:
    transport = FakeSerial(replies)
    controller = ScpiController(transport)  # type: ignore[arg-type]
    controller.open()
    return controller, transport


GARBAGE = [
    "",
    "   ",
    "\x00\x01",
    "\ufffd\ufffd",
    "OK OK",
    "ERR",
    "ERR -200",
    "nan",
    "inf",
    "-inf",
    "1e999",
    "0x10",
    "1_000",
    "12,5",
    "yes",
    "true",
    "on",
    "ON",
    "open",
    "ok",
    "int",
    "2",
    "-1",
    " 1 0",
    "50.000 mW",
]


# -- good replies parse -----------------------------------------------------------------------------------------


def test_open_reads_identity_and_version_with_the_protocol_timeout():
    controller, transport = _open()
    assert controller.identity == Identity("OPU Open Stack", "OPU-1", "SIM-00000003", "1.0.0")
    assert transport.sent == ["*IDN?", "SYSTEM:VERSION?"]
    assert transport.timeouts == [SERIAL_TIMEOUT_S, SERIAL_TIMEOUT_S]


@pytest.mark.parametrize(
    "reply, value",
    [("50.000", 50.0), ("0", 0.0), ("-3.5", -3.5), ("1e-3", 0.001), ("+2.", 2.0), (".25", 0.25), ("1.5E+2", 150.0)],
)
@pytest.mark.parametrize(
    "keyword, getter",
    [
        ("TEMPERATURE?", lambda c: c.temperature_c),
        ("LASER:POWER?", lambda c: c.laser_power_mw),
        ("LASER:POWER:MAX?", lambda c: c.laser_power_max_mw),
    ],
)
def test_numbers_parse(keyword: str, getter: Callable[[ScpiController], float], reply: str, value: float):
    controller, _ = _open({keyword: reply})
    assert getter(controller) == pytest.approx(value, rel=1e-12)  # decimal -> float: exact up to rounding


@pytest.mark.parametrize(
    "keyword, getter, table",
    [
        ("LASER:STATE?", lambda c: c.laser_is_on, {"1": True, "0": False}),
        ("SHUTTER:STATE?", lambda c: c.shutter_is_open, {"OPEN": True, "CLOSED": False}),
        ("INTERLOCK?", lambda c: c.interlock_ok, {"OK": True, "TRIPPED": False}),
        (
            "TRIGGER:MODE?",
            lambda c: c.trigger_mode,
            {"INT": TriggerMode.INTERNAL, "SOFT": TriggerMode.SOFTWARE, "EXT": TriggerMode.EXTERNAL},
        ),
    ],
)
def test_words_parse(keyword: str, getter: Callable[[ScpiController], object], table: dict[str, object]):
    for reply, value in table.items():
        controller, _ = _open({keyword: reply})
        assert getter(controller) is value


def test_commands_are_built_by_format_command_and_accept_ok():
    controller, transport = _open(
        {
            "*RST": "OK",
            "LASER:STATE ON": "OK",
            "LASER:POWER:MAX?": "100.000",
            "LASER:POWER 12.5": "OK",
            "SHUTTER:STATE OPEN": "OK",
            "INTERLOCK:RESET": "OK",
            "TRIGGER:MODE SOFT": "OK",
        }
    )
    controller.reset()
    controller.laser_on()
    controller.laser_off()
    controller.set_laser_power_mw(12.5)
    controller.open_shutter()
    controller.close_shutter()
    controller.reset_interlock()
    controller.set_trigger_mode("SOFT")
    assert transport.sent[2:] == [
        "*RST",
        "LASER:STATE ON",
        "LASER:STATE OFF",
        "LASER:POWER:MAX?",
        "LASER:POWER 12.5",
        "SHUTTER:STATE OPEN",
        "SHUTTER:STATE CLOSED",
        "INTERLOCK:RESET",
        "TRIGGER:MODE SOFT",
    ]


def test_errors_drains_the_queue():
    queue = ['-113,"Undefined header"', '-222,"Data out of range"', '0,"No error"']

    class Draining(FakeSerial):
        def query(self, line, timeout_s=None):
            if line == b"SYSTEM:ERROR?\n":
                self.sent.append("SYSTEM:ERROR?")
                return queue.pop(0)
            return super().query(line, timeout_s)

    transport = Draining()
    controller = ScpiController(transport)  # type: ignore[arg-type]
    controller.open()
    assert controller.errors() == [(-113, "Undefined header"), (-222, "Data out of range")]
    assert transport.sent.count("SYSTEM:ERROR?") == 3


def test_laser_on_refused_by_a_tripped_interlock_raises_interlock_error():
    controller, _ = _open({"LASER:STATE ON": 'ERR -200,"Execution error"', "INTERLOCK?": "TRIPPED"})
    with pytest.raises(InterlockError):
        controller.laser_on()


def test_err_replies_are_device_refusals_not_protocol_errors():
    controller, _ = _open({"TEMPERATURE?": 'ERR -113,"Undefined header"'})
    with pytest.raises(DeviceRefusedError) as info:
        controller.temperature_c
    assert info.value.code == -113


# -- anything else is a ProtocolError --------------------------------------------------------------------------

QUERIES: list[tuple[str, Callable[[ScpiController], object], set[str]]] = [
    ("TEMPERATURE?", lambda c: c.temperature_c, {"2", "-1"}),
    ("LASER:POWER?", lambda c: c.laser_power_mw, {"2", "-1"}),
    ("LASER:POWER:MAX?", lambda c: c.laser_power_max_mw, {"2", "-1"}),
    ("LASER:STATE?", lambda c: c.laser_is_on, {"1", "0"}),
    ("SHUTTER:STATE?", lambda c: c.shutter_is_open, {"OPEN", "CLOSED"}),
    ("INTERLOCK?", lambda c: c.interlock_ok, {"OK", "TRIPPED"}),
    ("TRIGGER:MODE?", lambda c: c.trigger_mode, {"INT", "SOFT", "EXT"}),
]


BAD_QUERY_REPLIES = [
    pytest.param(keyword, getter, reply, id=f"{keyword}-{reply!r}")
    for keyword, getter, good in QUERIES
    for reply in GARBAGE
    if reply not in good
]


@pytest.mark.parametrize("keyword, getter, reply", BAD_QUERY_REPLIES)
def test_out_of_grammar_query_replies_raise_protocol_error(keyword, getter, reply: str):
    controller, _ = _open({keyword: reply})
    with pytest.raises(ProtocolError) as info:
        getter(controller)
    if reply.strip() and reply.isprintable():
        assert reply.strip() in str(info.value)  # the message shows what came back


@pytest.mark.parametrize("keyword, getter, good", QUERIES[:3], ids=[q[0] for q in QUERIES[:3]])
@settings(max_examples=60, deadline=None)
@given(reply=st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12))
def test_numbers_parse_or_raise_protocol_error(keyword, getter, good, reply: str):
    # Any printable reply either parses to a finite float or raises ProtocolError: never ValueError.
    controller, _ = _open({keyword: reply})
    try:
        value = getter(controller)
    except ProtocolError:
        return
    except DeviceRefusedError:
        assert reply.strip().startswith("ERR ")
        return
    assert isinstance(value, float) and value == value and abs(value) != float("inf")


COMMANDS: list[tuple[str, Callable[[ScpiController], None]]] = [
    ("*RST", lambda c: c.reset()),
    ("LASER:STATE ON", lambda c: c.laser_on()),
    ("LASER:STATE OFF", lambda c: c.laser_off()),
    ("SHUTTER:STATE OPEN", lambda c: c.open_shutter()),
    ("SHUTTER:STATE CLOSED", lambda c: c.close_shutter()),
    ("INTERLOCK:RESET", lambda c: c.reset_interlock()),
    ("TRIGGER:MODE EXT", lambda c: c.set_trigger_mode(TriggerMode.EXTERNAL)),
]


@pytest.mark.parametrize("line, act", COMMANDS, ids=[c[0] for c in COMMANDS])
@pytest.mark.parametrize("reply", ["", "ok", "OK OK", "1", "OKAY", "ERR", "\x07"])
def test_commands_accept_only_ok(line: str, act, reply: str):
    controller, _ = _open({line: reply})
    with pytest.raises(ProtocolError):
        act(controller)


@pytest.mark.parametrize("idn", ["", "OPU Open Stack", "a,b,c", "a,b,c,d,e", "a,,c,d", "\x00,b,c,d"])
def test_bad_identity_fails_open(idn: str):
    transport = FakeSerial({"*IDN?": idn})
    with pytest.raises(ProtocolError):
        ScpiController(transport).open()  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["2", "0", "", "one", "1.0", "nan"])
def test_bad_protocol_version_fails_open(version: str):
    transport = FakeSerial({"SYSTEM:VERSION?": version})
    with pytest.raises(ProtocolError):
        ScpiController(transport).open()  # type: ignore[arg-type]


@pytest.mark.parametrize("entry", ["", "0", "-113", "-113,Undefined header", 'x,"y"', "garbage"])
def test_malformed_error_queue_entries_raise_protocol_error(entry: str):
    controller, _ = _open({"SYSTEM:ERROR?": entry})
    with pytest.raises(ProtocolError):
        controller.errors()
