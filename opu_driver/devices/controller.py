"""The controller on the serial line: identity, laser, shutter, temperature, interlock, trigger, errors."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from ..errors import ConfigurationError, DeviceRefusedError, InterlockError, ProtocolError
from ..protocol import parse_error_entry, parse_reply
from ..transport import SerialTransport
from .base import Device

__all__ = ["Controller", "Identity", "TriggerMode"]

_log = logging.getLogger(__name__)

_EXECUTION_ERROR = -200


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


class Controller(Device):
    """Instrument-style ASCII commands over a :class:`SerialTransport`."""

    def __init__(self, transport: SerialTransport, timeout_s: float = 1.0) -> None:
        super().__init__()
        self._transport = transport
        self.timeout_s = timeout_s
        self._identity: Identity | None = None

    def _do_open(self) -> None:
        self._transport.open()
        reply = self._query("*IDN?")
        parts = [p.strip() for p in reply.split(",")]
        if len(parts) != 4:
            raise ProtocolError(f"unexpected identity reply {reply!r}")
        self._identity = Identity(*parts)
        version = self._query("SYSTEM:VERSION?")
        if version != "1":
            raise ProtocolError(f"controller speaks protocol version {version!r}; this driver knows version 1")

    def _do_close(self) -> None:
        try:
            self.laser_off()
            self.close_shutter()
        finally:
            self._transport.close()

    def _query(self, line: str) -> str:
        return parse_reply(self._transport.query(line, timeout_s=self.timeout_s))

    def _command(self, line: str) -> None:
        reply = self._query(line)
        if reply != "OK":
            raise ProtocolError(f"expected OK to {line!r}, got {reply!r}")

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
            self._command("LASER:STATE ON")
        except DeviceRefusedError as exc:
            if exc.code == _EXECUTION_ERROR and not self.interlock_ok:
                raise InterlockError("laser interlock is tripped: clear its cause, then reset_interlock()",
                                     exc.code) from exc
            raise

    def laser_off(self) -> None:
        self._require_open()
        self._command("LASER:STATE OFF")

    @property
    def laser_is_on(self) -> bool:
        self._require_open()
        return self._query("LASER:STATE?") == "1"

    @property
    def laser_power_mw(self) -> float:
        self._require_open()
        return float(self._query("LASER:POWER?"))

    @property
    def laser_power_max_mw(self) -> float:
        self._require_open()
        return float(self._query("LASER:POWER:MAX?"))

    def set_laser_power_mw(self, power_mw: float) -> None:
        """Set the optical power; refused before sending when outside 0..LASER:POWER:MAX."""
        self._require_open()
        maximum = self.laser_power_max_mw
        if not (0.0 <= float(power_mw) <= maximum):
            raise ConfigurationError(f"laser power {power_mw} mW outside 0..{maximum} mW")
        self._command(f"LASER:POWER {float(power_mw):.3f}")

    # -- shutter, temperature, interlock, trigger -------------------------------------------------
    def open_shutter(self) -> None:
        self._require_open()
        self._command("SHUTTER:STATE OPEN")

    def close_shutter(self) -> None:
        self._require_open()
        self._command("SHUTTER:STATE CLOSED")

    @property
    def shutter_is_open(self) -> bool:
        self._require_open()
        return self._query("SHUTTER:STATE?") == "OPEN"

    @property
    def temperature_c(self) -> float:
        self._require_open()
        return float(self._query("TEMPERATURE?"))

    @property
    def interlock_ok(self) -> bool:
        self._require_open()
        return self._query("INTERLOCK?") == "OK"

    def reset_interlock(self) -> None:
        self._require_open()
        self._command("INTERLOCK:RESET")

    @property
    def trigger_mode(self) -> TriggerMode:
        self._require_open()
        return TriggerMode(self._query("TRIGGER:MODE?"))

    def set_trigger_mode(self, mode: TriggerMode | str) -> None:
        self._require_open()
        try:
            mode = TriggerMode(mode)
        except ValueError:
            raise ConfigurationError(f"unknown trigger mode {mode!r}; use one of {[m.value for m in TriggerMode]}") from None
        self._command(f"TRIGGER:MODE {mode.value}")

    def errors(self) -> list[tuple[int, str]]:
        """Drain the device's error queue, oldest first."""
        self._require_open()
        drained = []
        for _ in range(64):  # the queue holds 16; the bound guards against a device that never empties
            code, message = parse_error_entry(self._transport.query("SYSTEM:ERROR?", timeout_s=self.timeout_s))
            if code == 0:
                break
            drained.append((code, message))
        return drained
