"""The controller of a protocol-v1 device: instrument-style ASCII commands on a serial line (SCPI-like).

Every command is built by :func:`opu_driver.protocol.format_command`, and every reply is checked against the
grammar of docs/protocol.md section 2 before it is used: a reply outside it (garbage on the line, a device of
another protocol) raises :class:`~opu_driver.errors.ProtocolError` naming the command and the reply, never a
bare ValueError and never a silently wrong value.

Serial lines pick up noise (a glitch on a UART, junk from a USB-serial adapter at power-up), so an exchange that
fails on the way is tried again where that is safe (docs/reliability.md):

- a reply outside the grammar (``ProtocolError``: garbage before or inside the line, an overlong line) or no
  complete reply by the deadline (``CommunicationTimeoutError``) is retried, up to ``max_retries`` times, after
  the input has been drained until the line goes quiet, so a late or partial reply to the failed attempt cannot
  be taken for the answer to the next one;
- a refusal (``ERR <code>``: ``DeviceRefusedError``), a lost port (``ConnectionLostError``) and bad input are
  never retried: the device answered, or there is no line to retry on.

Which commands are safe to send twice: every query but one only reads state, and every setter sets an absolute
state (``LASER:STATE ON``, ``LASER:POWER 12.5``, ``SHUTTER:STATE CLOSED``, ``TRIGGER:MODE INT``), so doing it
twice leaves what doing it once does. ``*RST`` returns to the power-on state, idempotent too (a refused one that
is repeated queues its error entry twice, nothing more). Two exceptions: ``INTERLOCK:RESET`` clears a safety latch,
and a retry could clear a trip that happened after the first sending without anyone seeing it; and
``SYSTEM:ERROR?``: reading pops the oldest entry of the error queue, so asking again after a lost reply would skip
an entry. Neither is retried. It is never retried; instead a reply with non-ASCII bytes in front of a valid line is
resynchronised by dropping those bytes (they can never be part of a reply, which is printable ASCII) and the
rest is checked as usual. Other replies are not resynchronised but asked again: a retry gets a clean line
instead of trusting one that arrived with noise.

``ScpiController.counters`` says what happened; each retry and resynchronisation is logged at WARNING.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable
from typing import TypeVar

from ...errors import (
    CommunicationTimeoutError,
    ConfigurationError,
    DeviceRefusedError,
    InterlockError,
    ProtocolError,
)
from ...protocol import PROTOCOL_VERSION, SERIAL_TIMEOUT_S, format_command, parse_error_entry, parse_reply
from ...transport import SerialTransport
from ...validation import check_int, check_number
from ..controller import Controller, ControllerCounters, Identity, TriggerMode

__all__ = ["ScpiController", "DEFAULT_MAX_RETRIES", "RESYNC_MAX_S"]

_log = logging.getLogger(__name__)

_EXECUTION_ERROR = -200
#: A decimal number as the device writes one (``50.000``, ``-3``, ``1e-3``); no nan, inf, hex or underscores.
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
#: Anything that cannot be part of a reply line: not printable ASCII (undecodable bytes arrive as U+FFFD).
_NOT_REPLY_CHAR = re.compile(r"[^\x20-\x7e]")

#: Retries after the first attempt of an exchange (so 3 attempts in all), as ``OpuSettings.retries`` defaults to.
DEFAULT_MAX_RETRIES = 2
#: Before a retry the input is drained until nothing arrived for this long (a late reply, the rest of a line).
DEFAULT_RESYNC_QUIET_S = 0.005
#: ... but for at most this long, so a line that never goes quiet cannot hold the call.
RESYNC_MAX_S = 0.1
#: Headers whose second sending would not do what the first did (section 2): never retried. Written in every
#: form the device accepts (long, four letters, three when the fourth is a vowel; any case, leading ``:``).
_NOT_IDEMPOTENT = frozenset(
    [f"{a}:{b}?" for a in ("SYSTEM", "SYST") for b in ("ERROR", "ERRO", "ERR")]
    # A safety latch: if the interlock trips again between two sendings, a retry would silently clear a trip
    # the user never saw. The user resets it again, knowingly.
    + [f"{a}:{b}" for a in ("INTERLOCK", "INTE", "INT") for b in ("RESET", "RES")]
)

_T = TypeVar("_T")


def _describe(command: bytes | str) -> str:
    text = command.decode("ascii", errors="replace") if isinstance(command, bytes) else command
    return text.strip()


def _header(command: bytes | str) -> str:
    """The command's header, upper case (``b"LASER:STATE ON\\n"`` -> ``"LASER:STATE"``)."""
    return _describe(command).partition(" ")[0].upper().removeprefix(":")


def _accept_any(reply: str) -> str:
    return reply


def _after_garbage(line: str) -> str | None:
    """The part of ``line`` after its last character that cannot belong to a reply, or None if there is none."""
    last = None
    for match in _NOT_REPLY_CHAR.finditer(line):
        last = match
    if last is None:
        return None
    rest = line[last.end() :]
    return rest if rest.strip() else None


class ScpiController(Controller):
    """The controller interface spoken as instrument-style ASCII commands over a :class:`SerialTransport`.

    Args:
        transport: the serial line (anything with ``open()``, ``close()`` and ``query(line, timeout_s=)``; a
            ``discard_input(quiet_s=, max_s=)`` method, when it has one, drains the input before a retry).
        timeout_s: deadline for each reply (protocol section 3). A call that retries waits for each attempt,
            so it ends within ``(1 + max_retries) * (timeout_s + 0.1 s)`` at worst (3.3 s by default); a garbled
            reply arrives at once and costs only the drain (``resync_quiet_s``).
        max_retries: attempts after the first one for exchanges that are safe to repeat (see the module
            docstring); 0 makes the first garbled or missing reply raise.
        resync_quiet_s: before a retry the input is drained until nothing arrived for this long (at most 0.1 s).
    """

    def __init__(
        self,
        transport: SerialTransport,
        timeout_s: float = SERIAL_TIMEOUT_S,
        max_retries: int = DEFAULT_MAX_RETRIES,
        resync_quiet_s: float = DEFAULT_RESYNC_QUIET_S,
    ) -> None:
        super().__init__()
        max_retries = check_int(max_retries, "max_retries", low=0, error=ConfigurationError)
        resync_quiet_s = check_number(resync_quiet_s, "resync_quiet_s", low=0, error=ConfigurationError)
        self._transport = transport
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.resync_quiet_s = float(resync_quiet_s)
        self._counters = ControllerCounters()

    def _do_connect(self) -> Identity:
        self._transport.open()

        def identity(reply: str) -> Identity:
            parts = [p.strip() for p in reply.split(",")]
            if len(parts) != 4 or not all(parts):
                raise ProtocolError(f"expected <manufacturer>,<model>,<serial>,<firmware> to *IDN?, got {reply!r}")
            return Identity(*parts)

        def integer(reply: str) -> int:
            if not _INTEGER.fullmatch(reply):
                raise ProtocolError(f"expected an integer to SYSTEM:VERSION?, got {reply!r}")
            return int(reply)

        found = self._exchange(format_command("*IDN?"), identity)
        # A well-formed but different version is an answer, not line noise: checked after the exchange.
        version = self._exchange(format_command("SYSTEM:VERSION?"), integer)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"controller speaks protocol version {version!r}; this driver knows version {PROTOCOL_VERSION}"
            )
        return found

    def _do_close(self) -> None:
        # Switching the light off always gets the default retries, even when the session asked for none.
        retries, self.max_retries = self.max_retries, max(self.max_retries, DEFAULT_MAX_RETRIES)
        try:
            super()._do_close()
        finally:
            self.max_retries = retries

    def _do_release(self) -> None:
        self._transport.close()

    def _do_counters(self) -> ControllerCounters:
        return self._counters

    # -- one exchange ---------------------------------------------------------------------------------
    def _exchange(self, line: str | bytes, check: Callable[[str], _T]) -> _T:
        """Send one ready-made command line and return ``check(reply)``, retrying where that is safe.

        ``check`` turns a reply that passed :func:`parse_reply` into the value, or raises ProtocolError when it
        is outside the command's grammar; either way a garbled reply is handled like any other (retried, or
        resynchronised for ``SYSTEM:ERROR?``). ``ERR`` replies raise DeviceRefusedError at once.
        """
        header = _header(line)
        repeatable = header not in _NOT_IDEMPOTENT
        attempts = 1 + self.max_retries if repeatable else 1
        self._counters.requests += 1
        error: ProtocolError | CommunicationTimeoutError | None = None
        for attempt in range(1, attempts + 1):
            try:
                raw = self._transport.query(line, timeout_s=self.timeout_s)
                try:
                    value = check(parse_reply(raw))
                except ProtocolError:
                    if repeatable:
                        raise
                    value = self._resynchronise(raw, check, header)
            except CommunicationTimeoutError as exc:
                self._counters.timeouts += 1
                error = exc
            except ProtocolError as exc:
                self._counters.garbled_replies += 1
                error = exc
            else:
                if attempt > 1:
                    self._counters.requests_recovered += 1
                return value
            if attempt < attempts:
                self._counters.retries += 1
                _log.warning(
                    "controller: %s to %r; sending it again (retry %d of %d)",
                    error,
                    _describe(line),
                    attempt,
                    attempts - 1,
                )
                self._drain()
        assert error is not None
        self._counters.requests_failed += 1
        if attempts == 1:
            raise error
        message = f"{error} (after {attempts} attempts)"
        if isinstance(error, CommunicationTimeoutError):
            raise CommunicationTimeoutError(message) from error
        raise ProtocolError(message) from error

    def _resynchronise(self, raw: str, check: Callable[[str], _T], header: str) -> _T:
        """The value of the valid reply behind garbage in ``raw``; ProtocolError when there is none.

        Used only where a retry is unsafe. Bytes that are not printable ASCII cannot belong to a reply, so
        dropping everything up to the last of them loses nothing of it; what is left must still pass the
        grammar, so printable noise is caught as before.
        """
        rest = _after_garbage(raw)
        if rest is None:
            raise ProtocolError(
                f"garbled reply {raw!r} to {header!r}, which is not retried (asking again "
                "would skip an entry); the entry is lost"
            )
        try:
            reply = parse_reply(rest)
        except DeviceRefusedError:
            self._counters.resyncs += 1  # a refusal behind garbage is still the device's answer
            raise
        value = check(reply)
        self._counters.resyncs += 1
        self._counters.garbled_replies += 1
        self._counters.requests_recovered += 1
        _log.warning("controller: dropped %d garbage characters before the reply to %r", len(raw) - len(rest), header)
        return value

    def _drain(self) -> None:
        """Let a late reply or the rest of a garbled line arrive and drop it, so the retry reads its own answer."""
        discard = getattr(self._transport, "discard_input", None)
        if discard is None:
            return
        dropped = discard(quiet_s=self.resync_quiet_s, max_s=RESYNC_MAX_S)
        if dropped:
            _log.debug("controller: drained %d bytes before a retry", dropped)

    def _query(self, line: str | bytes) -> str:
        """Send one ready-made command line and return the checked reply (``ERR`` raises DeviceRefusedError)."""
        return self._exchange(line, _accept_any)

    def _command(self, keyword: str, *args: object) -> None:
        """Send a command whose only good reply is ``OK``."""
        line = format_command(keyword, *args)

        def ok(reply: str) -> None:
            if reply != "OK":
                raise ProtocolError(f"expected OK to {_describe(line)!r}, got {reply!r}")

        self._exchange(line, ok)

    def _ask_number(self, keyword: str) -> float:
        """A query answered by one finite decimal number."""

        def number(reply: str) -> float:
            if not _NUMBER.fullmatch(reply):
                raise ProtocolError(f"expected a number to {keyword!r}, got {reply!r}")
            value = float(reply)
            if not math.isfinite(value):  # digits beyond the float range overflow to inf
                raise ProtocolError(f"expected a finite number to {keyword!r}, got {reply!r}")
            return value

        return self._exchange(format_command(keyword), number)

    def _ask_choice(self, keyword: str, choices: dict[str, _T]) -> _T:
        """A query answered by one word of a fixed set, mapped to its value."""

        def choice(reply: str) -> _T:
            try:
                return choices[reply]
            except KeyError:
                expected = " or ".join(repr(c) for c in choices)
                raise ProtocolError(f"expected {expected} to {keyword!r}, got {reply!r}") from None

        return self._exchange(format_command(keyword), choice)

    # -- the interface's hooks ------------------------------------------------------------------------
    def _do_reset(self) -> None:
        self._command("*RST")

    def _do_set_laser(self, on: bool) -> None:
        try:
            self._command("LASER:STATE", "ON" if on else "OFF")
        except DeviceRefusedError as exc:
            if on and exc.code == _EXECUTION_ERROR and not self._do_interlock_ok():
                raise InterlockError(
                    "laser interlock is tripped: clear its cause, then reset_interlock()", exc.code
                ) from exc
            raise

    def _do_laser_is_on(self) -> bool:
        return self._ask_choice("LASER:STATE?", {"1": True, "0": False})

    def _do_laser_power_mw(self) -> float:
        return self._ask_number("LASER:POWER?")

    def _do_laser_power_max_mw(self) -> float:
        return self._ask_number("LASER:POWER:MAX?")

    def _do_set_laser_power_mw(self, power_mw: float) -> None:
        self._command("LASER:POWER", power_mw)

    def _do_set_shutter(self, open_: bool) -> None:
        self._command("SHUTTER:STATE", "OPEN" if open_ else "CLOSED")

    def _do_shutter_is_open(self) -> bool:
        return self._ask_choice("SHUTTER:STATE?", {"OPEN": True, "CLOSED": False})

    def _do_temperature_c(self) -> float:
        return self._ask_number("TEMPERATURE?")

    def _do_interlock_ok(self) -> bool:
        return self._ask_choice("INTERLOCK?", {"OK": True, "TRIPPED": False})

    def _do_reset_interlock(self) -> None:
        self._command("INTERLOCK:RESET")

    def _do_trigger_mode(self) -> TriggerMode:
        return self._ask_choice("TRIGGER:MODE?", {m.value: m for m in TriggerMode})

    def _do_set_trigger_mode(self, mode: TriggerMode) -> None:
        self._command("TRIGGER:MODE", mode.value)

    def _do_errors(self) -> list[tuple[int, str]]:
        drained = []
        for _ in range(64):  # the queue holds 16; the bound guards against a device that never empties
            # Not retried (reading pops the entry): garbage before the reply is dropped instead.
            code, message = self._exchange(format_command("SYSTEM:ERROR?"), parse_error_entry)
            if code == 0:
                break
            drained.append((code, message))
        return drained
