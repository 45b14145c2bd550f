"""The controller's ASCII line (docs/protocol.md section 2): laser, shutter, temperature, interlock, trigger.

SCPI-style: one command a line, ended by ``\\n`` (a preceding ``\\r`` is ignored); every line gets exactly one
reply line: the value of a query, ``OK``, or ``ERR <code>,"<message>"``, which is also queued (16 entries,
the newest replaced by -350 on overflow). Keywords are case-insensitive and may be shortened to their first
four letters, or to three when the fourth is a vowel as SCPI does (``LASER:POWER`` = ``LASE:POWE`` =
``LAS:POW``).

The controller owns the light path's state (laser, power setpoint, shutter, interlock) and the trigger
mode; the firmware reads them through :attr:`ControllerLine.light_on` and :attr:`ControllerLine.trigger_mode`.
It never reads the wall clock: the temperature drifts with the device time.
"""

from __future__ import annotations

import logging
import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ControllerLine", "ControllerHost", "SERIAL_ERRORS", "MAX_LINE_BYTES", "ERROR_QUEUE_LENGTH", "TRIGGER_MODES"]

_log = logging.getLogger(__name__)

MAX_LINE_BYTES = 256
ERROR_QUEUE_LENGTH = 16
MANUFACTURER = "OPU Open Stack"
PROTOCOL_VERSION = 1
BASE_TEMPERATURE_C = 25.0
TEMPERATURE_DRIFT_C_PER_HOUR = 0.1
TRIGGER_MODES = ("INT", "SOFT", "EXT")

SERIAL_ERRORS = {
    0: "No error",
    -100: "Command error",
    -101: "Invalid character",
    -102: "Syntax error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -200: "Execution error",
    -222: "Data out of range",
    -223: "Too much data",
    -350: "Queue overflow",
}

_NOT_PRINTABLE = re.compile(rb"[^\x20-\x7e]")
_VOWELS = "AEIOU"


class ControllerHost(Protocol):
    """What the controller needs from the firmware it sits in."""

    @property
    def device_time_us(self) -> int: ...

    @property
    def sequence_running(self) -> bool: ...

    def abort_sequence(self) -> None: ...


class _CommandError(Exception):
    """Refusal of one line, carrying its SCPI code."""

    def __init__(self, code: int) -> None:
        super().__init__(SERIAL_ERRORS[code])
        self.code = code


@dataclass(frozen=True)
class _Command:
    path: tuple[str, ...]  # long-form keywords
    query: bool
    takes_parameter: bool
    handler: Callable[[str], str]


def _keyword_matches(token: str, long_form: str) -> bool:
    if token == long_form:
        return True
    if len(long_form) <= 4 or long_form.startswith("*"):
        return False
    if token == long_form[:4]:
        return True
    return long_form[3] in _VOWELS and token == long_form[:3]


class ControllerLine:
    """Line parser and state of the serial controller; :meth:`feed` returns the reply bytes."""

    def __init__(
        self,
        host: ControllerHost,
        *,
        model: str,
        serial_number: str,
        firmware_version: tuple[int, int, int],
        default_power_mw: float,
        max_power_mw: float,
    ) -> None:
        if not (math.isfinite(max_power_mw) and max_power_mw > 0):
            raise ValueError(f"laser_power_max_mw must be positive, got {max_power_mw}")
        if not (math.isfinite(default_power_mw) and 0 <= default_power_mw <= max_power_mw):
            raise ValueError(f"laser_power_mw must be in 0..{max_power_mw}, got {default_power_mw}")
        self._host = host
        self._identity = f"{MANUFACTURER},{model},{serial_number},{'.'.join(str(v) for v in firmware_version)}"
        self.default_power_mw = float(default_power_mw)
        self.max_power_mw = float(max_power_mw)
        self._partial = bytearray()
        self._overlong = False
        self._errors: deque[tuple[int, str]] = deque()
        self.interlock_tripped = False
        self.interlock_cause = False
        self.lines_received = 0
        self._commands = self._build_commands()
        self.power_on()

    @property
    def identity(self) -> str:
        """The ``*IDN?`` reply."""
        return self._identity

    # -- state the firmware reads ------------------------------------------------------------------
    @property
    def light_on(self) -> bool:
        """Light reaches the medium: laser on, shutter open, interlock OK."""
        return self.laser_on and self.shutter_open and not self.interlock_tripped

    def power_on(self) -> None:
        """State after power-up (and after ``*RST``): laser off, shutter closed, trigger INT, no errors."""
        self.laser_on = False
        self.shutter_open = False
        self.power_mw = self.default_power_mw
        self.trigger_mode = "INT"
        self._errors.clear()
        self._partial.clear()
        self._overlong = False

    def trip_interlock(self) -> None:
        """The interlock opens (door, fibre, key): the laser goes off and stays off until reset."""
        self.interlock_tripped = True
        self.interlock_cause = True
        self.laser_on = False
        _log.info("interlock tripped")

    def clear_interlock_cause(self) -> None:
        """The cause goes away; the interlock stays tripped until INTERLOCK:RESET."""
        self.interlock_cause = False

    def temperature_c(self) -> float:
        hours = self._host.device_time_us / 3.6e9
        return BASE_TEMPERATURE_C + TEMPERATURE_DRIFT_C_PER_HOUR * hours

    @property
    def error_queue(self) -> list[tuple[int, str]]:
        """A copy of the queued errors, oldest first (for tests)."""
        return list(self._errors)

    # -- the line ----------------------------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """Consume bytes; return the reply lines of every line they complete."""
        replies: list[bytes] = []
        data = bytes(data)
        start = 0
        while True:
            newline = data.find(b"\n", start)
            piece = data[start:] if newline < 0 else data[start:newline]
            if not self._overlong:
                self._partial += piece
                # One byte of slack for the \r that may precede the \n.
                if len(self._partial) > MAX_LINE_BYTES + 1:
                    self._overlong = True
                    self._partial.clear()
            if newline < 0:
                break
            replies.append(self._complete_line())
            start = newline + 1
        return b"".join(replies)

    def _complete_line(self) -> bytes:
        self.lines_received += 1
        line = bytes(self._partial)
        overlong = self._overlong
        self._partial.clear()
        self._overlong = False
        if line.endswith(b"\r"):
            line = line[:-1]
        try:
            if overlong or len(line) > MAX_LINE_BYTES:
                raise _CommandError(-223)
            if _NOT_PRINTABLE.search(line):
                raise _CommandError(-101)
            reply = self._execute(line.decode("ascii"))
        except _CommandError as exc:
            self._push_error(exc.code)
            _log.debug("serial line %r refused: %d", line[:64], exc.code)
            return f'ERR {exc.code},"{SERIAL_ERRORS[exc.code]}"\n'.encode("ascii")
        return reply.encode("ascii") + b"\n"

    def _push_error(self, code: int) -> None:
        if len(self._errors) < ERROR_QUEUE_LENGTH:
            self._errors.append((code, SERIAL_ERRORS[code]))
        else:
            self._errors[-1] = (-350, SERIAL_ERRORS[-350])

    def _execute(self, text: str) -> str:
        text = text.strip(" ")
        if not text:
            raise _CommandError(-102)
        header, _, parameter = text.partition(" ")
        parameter = parameter.strip(" ")
        query = header.endswith("?")
        if query:
            header = header[:-1]
        if header.startswith(":"):
            header = header[1:]
        tokens = header.upper().split(":")
        if not all(tokens):
            raise _CommandError(-102)
        for command in self._commands:
            if command.query != query or len(command.path) != len(tokens):
                continue
            if all(_keyword_matches(t, k) for t, k in zip(tokens, command.path, strict=True)):
                if command.takes_parameter:
                    if not parameter:
                        raise _CommandError(-109)
                    if " " in parameter:
                        raise _CommandError(-108)
                elif parameter:
                    raise _CommandError(-108)
                return command.handler(parameter)
        raise _CommandError(-113)

    # -- commands ----------------------------------------------------------------------------------
    def _build_commands(self) -> list[_Command]:
        c = _Command
        return [
            c(("*IDN",), True, False, lambda _: self._identity),
            c(("*RST",), False, False, self._reset),
            c(("SYSTEM", "ERROR"), True, False, self._next_error),
            c(("SYSTEM", "VERSION"), True, False, lambda _: str(PROTOCOL_VERSION)),
            c(("LASER", "STATE"), False, True, self._set_laser),
            c(("LASER", "STATE"), True, False, lambda _: "1" if self.laser_on else "0"),
            c(("LASER", "POWER"), False, True, self._set_power),
            c(("LASER", "POWER"), True, False, lambda _: f"{self.power_mw:.3f}"),
            c(("LASER", "POWER", "MAX"), True, False, lambda _: f"{self.max_power_mw:.3f}"),
            c(("SHUTTER", "STATE"), False, True, self._set_shutter),
            c(("SHUTTER", "STATE"), True, False, lambda _: "OPEN" if self.shutter_open else "CLOSED"),
            c(("TEMPERATURE",), True, False, lambda _: f"{self.temperature_c():.2f}"),
            c(("INTERLOCK",), True, False, lambda _: "TRIPPED" if self.interlock_tripped else "OK"),
            c(("INTERLOCK", "RESET"), False, False, self._reset_interlock),
            c(("TRIGGER", "MODE"), False, True, self._set_trigger),
            c(("TRIGGER", "MODE"), True, False, lambda _: self.trigger_mode),
        ]

    def _reset(self, _: str) -> str:
        self._host.abort_sequence()
        self.power_on()
        return "OK"

    def _next_error(self, _: str) -> str:
        code, message = self._errors.popleft() if self._errors else (0, SERIAL_ERRORS[0])
        return f'{code},"{message}"'

    def _set_laser(self, parameter: str) -> str:
        value = parameter.upper()
        if value in ("ON", "1"):
            if self.interlock_tripped:
                raise _CommandError(-200)
            self.laser_on = True
        elif value in ("OFF", "0"):
            self.laser_on = False
        else:
            raise _CommandError(-222)
        return "OK"

    def _set_power(self, parameter: str) -> str:
        try:
            power_mw = float(parameter)
        except ValueError:
            raise _CommandError(-102) from None
        if not (math.isfinite(power_mw) and 0.0 <= power_mw <= self.max_power_mw):
            raise _CommandError(-222)
        self.power_mw = power_mw
        return "OK"

    def _set_shutter(self, parameter: str) -> str:
        value = parameter.upper()
        if value == "OPEN":
            self.shutter_open = True
        elif value in ("CLOSED", "CLOSE", "CLOS"):
            self.shutter_open = False
        else:
            raise _CommandError(-222)
        return "OK"

    def _reset_interlock(self, _: str) -> str:
        if self.interlock_cause:
            raise _CommandError(-200)
        self.interlock_tripped = False
        return "OK"

    def _set_trigger(self, parameter: str) -> str:
        mode = {
            "INT": "INT",
            "INTERNAL": "INT",
            "SOFT": "SOFT",
            "SOFTWARE": "SOFT",
            "EXT": "EXT",
            "EXTERNAL": "EXT",
        }.get(parameter.upper())
        if mode is None:
            raise _CommandError(-222)
        if mode != self.trigger_mode and self._host.sequence_running:
            raise _CommandError(-200)
        self.trigger_mode = mode
        return "OK"
