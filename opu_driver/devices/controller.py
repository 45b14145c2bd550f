"""The controller on the serial line: identity, laser, shutter, temperature, interlock, trigger, errors.

Every command is built by :func:`opu_driver.protocol.format_command`, and every reply is checked against the
grammar of docs/protocol.md section 2 before it is used: a reply outside it (garbage on the line, a device of
another protocol) raises :class:`~opu_driver.errors.ProtocolError` naming the command and the reply, never a
bare ValueError and never a silently wrong value.
"""
from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from enum import Enum

from ..errors import ConfigurationError, DeviceRefusedError, InterlockError, ProtocolError
from ..protocol import PROTOCOL_VERSION, SERIAL_TIMEOUT_S, format_command, parse_error_entry, parse_reply
from ..transport import SerialTransport
from .base import Device

__all__ = ["Controller", "Identity", "TriggerMode"]

_log = logging.getLogger(__name__)

_EXECUTION_ERROR = -200
#: A decimal number as the device writes one (``50.000``, ``-3``, ``1e-3``); no nan, inf, hex or underscores.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")


class TriggerMode(str, Enum):
    """Source of DMD frame triggers (docs/protocol.md 1.6)."""

    INTERNAL = "INT"
    SOFTWARE = "SOFT"
    EXTERNAL = "EXT"


@dataclass(frozen=True)
class Identity:
    """The reply to ``*IDN?``."""

    manufacturer: str
    model: str
    serial_number: str
    firmware_version: str


def _describe(command: bytes | str) -> str:
    text = command.decode("ascii", errors="replace") if isinstance(command, bytes) else command
    return text.strip()


class Controller(Device):
    """Instrument-style ASCII commands over a :class:`SerialTransport`.

    Args:
        transport: the serial line (anything with ``open()``, ``close()`` and ``query(line, timeout_s=)``).
        timeout_s: deadline for each reply (protocol section 3).
    """

    def __init__(self, transport: SerialTransport, timeout_s: float = SERIAL_TIMEOUT_S) -> None:
        super().__init__()
        self._transport = transport
        self.timeout_s = timeout_s
        self._identity: Identity | None = None

    def _do_open(self) -> None:
        self._transport.open()
        reply = self._ask("*IDN?")
        parts = [p.strip() for p in reply.split(",")]
        if len(parts) != 4 or not all(parts):
            raise ProtocolError(f"expected <manufacturer>,<model>,<serial>,<firmware> to *IDN?, got {reply!r}")
        self._identity = Identity(*parts)
        version = self._ask("SYSTEM:VERSION?")
        if not _INTEGER.fullmatch(version):
            raise ProtocolError(f"expected an integer to SYSTEM:VERSION?, got {version!r}")
        if int(version) != PROTOCOL_VERSION:
            raise ProtocolError(
                f"controller speaks protocol version {version!r}; this driver knows version {PROTOCOL_VERSION}"
            )

    def _do_close(self) -> None:
        # Each safety step on its own: a failed laser command must not leave the shutter open.
        try:
            try:
                self.laser_off()
            finally:
                self.close_shutter()
        finally:
            self._transport.close()

    # -- one exchange ---------------------------------------------------------------------------------
    def _query(self, line: str | bytes) -> str:
        """Send one ready-made command line and return the checked reply (``ERR`` raises DeviceRefusedError)."""
        return parse_reply(self._transport.query(line, timeout_s=self.timeout_s))

    def _ask(self, keyword: str, *args: object) -> str:
        """Send ``keyword`` with its arguments, built by format_command; return the reply."""
        return self._query(format_command(keyword, *args))

    def _command(self, keyword: str, *args: object) -> None:
        """Send a command whose only good reply is ``OK``."""
        line = format_command(keyword, *args)
        reply = self._query(line)
        if reply != "OK":
            raise ProtocolError(f"expected OK to {_describe(line)!r}, got {reply!r}")

    def _ask_number(self, keyword: str) -> float:
        """A query answered by one finite decimal number."""
        reply = self._ask(keyword)
        if not _NUMBER.fullmatch(reply):
            raise ProtocolError(f"expected a number to {keyword!r}, got {reply!r}")
        value = float(reply)
        if not math.isfinite(value):  # digits beyond the float range overflow to inf
            raise ProtocolError(f"expected a finite number to {keyword!r}, got {reply!r}")
        return value

    def _ask_choice(self, keyword: str, choices: dict[str, bool]) -> bool:
        """A query answered by one word of a fixed set, mapped to a bool."""
        reply = self._ask(keyword)
        try:
            return choices[reply]
        except KeyError:
            expected = " or ".join(repr(c) for c in choices)
            raise ProtocolError(f"expected {expected} to {keyword!r}, got {reply!r}") from None

    @property
    def identity(self) -> Identity:
        self._require_open()
        assert self._identity is not None
        return self._identity

    def reset(self) -> None:
        """``*RST``: laser off, shutter closed, trigger INT, error queue cleared, sequence aborted."""
        self._require_open()
        self._command("*RST")

    # -- laser ------------------------------------------------------------------------------------
    def laser_on(self) -> None:
        """Switch the laser on; InterlockError if the interlock is tripped."""
        self._require_open()
        try:
            self._command("LASER:STATE", "ON")
        except DeviceRefusedError as exc:
            if exc.code == _EXECUTION_ERROR and not self.interlock_ok:
                raise InterlockError("laser interlock is tripped: clear its cause, then reset_interlock()",
                                     exc.code) from exc
            raise

    def laser_off(self) -> None:
        self._require_open()
        self._command("LASER:STATE", "OFF")

    @property
    def laser_is_on(self) -> bool:
        self._require_open()
        return self._ask_choice("LASER:STATE?", {"1": True, "0": False})

    @property
    def laser_power_mw(self) -> float:
        self._require_open()
        return self._ask_number("LASER:POWER?")

    @property
    def laser_power_max_mw(self) -> float:
        self._require_open()
        return self._ask_number("LASER:POWER:MAX?")

    def set_laser_power_mw(self, power_mw: float) -> None:
        """Set the optical power; refused before sending when outside 0..LASER:POWER:MAX."""
        self._require_open()
        maximum = self.laser_power_max_mw
        if not (0.0 <= float(power_mw) <= maximum):
            raise ConfigurationError(f"laser power {power_mw} mW outside 0..{maximum} mW")
        self._command("LASER:POWER", float(power_mw))

    # -- shutter, temperature, interlock, trigger -------------------------------------------------
    def open_shutter(self) -> None:
        self._require_open()
        self._command("SHUTTER:STATE", "OPEN")

    def close_shutter(self) -> None:
        self._require_open()
        self._command("SHUTTER:STATE", "CLOSED")

    @property
    def shutter_is_open(self) -> bool:
        self._require_open()
        return self._ask_choice("SHUTTER:STATE?", {"OPEN": True, "CLOSED": False})

    @property
    def temperature_c(self) -> float:
        self._require_open()
        return self._ask_number("TEMPERATURE?")

    @property
    def interlock_ok(self) -> bool:
        self._require_open()
        return self._ask_choice("INTERLOCK?", {"OK": True, "TRIPPED": False})

    def reset_interlock(self) -> None:
        self._require_open()
        self._command("INTERLOCK:RESET")

    @property
    def trigger_mode(self) -> TriggerMode:
        self._require_open()
        reply = self._ask("TRIGGER:MODE?")
        try:
            return TriggerMode(reply)
        except ValueError:
            expected = ", ".join(repr(m.value) for m in TriggerMode)
            raise ProtocolError(f"expected one of {expected} to 'TRIGGER:MODE?', got {reply!r}") from None

    def set_trigger_mode(self, mode: TriggerMode | str) -> None:
        self._require_open()
        try:
            mode = TriggerMode(mode)
        except ValueError:
            raise ConfigurationError(f"unknown trigger mode {mode!r}; use one of {[m.value for m in TriggerMode]}") from None
        self._command("TRIGGER:MODE", mode.value)

    def errors(self) -> list[tuple[int, str]]:
        """Drain the device's error queue, oldest first."""
        self._require_open()
        drained = []
        for _ in range(64):  # the queue holds 16; the bound guards against a device that never empties
            code, message = parse_error_entry(self._ask("SYSTEM:ERROR?"))
            if code == 0:
                break
            drained.append((code, message))
        return drained
