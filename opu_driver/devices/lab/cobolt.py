"""A Cobolt 04-01/06-01 series laser on its serial line (RS-232 or the USB virtual COM port), as a LightSource.

The laser speaks one ASCII line per command, ended by a carriage return; it answers every command with one line
ended by ``\\r\\n``: ``OK``, a value, or ``Syntax error: illegal command``. Powers travel in watts (``p 0.05000``
sets 50 mW; ``pa?`` and ``p?`` answer in watts); the maximum power ``gmlp?`` answers in milliwatts. Sources and
timing are in ``docs/rig-laser.md``.

Safety rules kept here: the interlock is read before every switch-on and an open one is an InterlockError with
nothing sent; a latched fault is reported, never cleared by the driver on its own (:meth:`CoboltLaser.clear_fault`
is the user's explicit act, refused while the interlock is open); a command that changes state is sent once and
its effect read back, never sent again blindly; closing switches the emission off.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import serial

from ...errors import (
    CommunicationTimeoutError,
    ConfigurationError,
    ConnectionLostError,
    DeviceError,
    DeviceNotFoundError,
    DeviceRefusedError,
    InterlockError,
    InvalidInputError,
    OpuError,
    ProtocolError,
    UnsupportedUrlError,
)
from .parts import LightSource, LightSourceInfo

__all__ = ["CoboltLaser", "CoboltStatus", "FAULTS", "OPERATING_MODES"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")

COMMAND_END = b"\r"
REPLY_END = b"\r\n"
MAX_REPLY_BYTES = 128  # the longest reply line accepted (a model string is about 20 characters)
REFUSAL_PREFIX = "Syntax error"
SET_POWER_DECIMALS = 5  # watts with 5 decimals: a 0.01 mW step on the wire
_READ_CHUNK_BYTES = 64

FAULTS = {
    0: "no fault",
    1: "temperature error",
    3: "interlock error (the interlock was opened)",
    4: "constant power time out",
}
OPERATING_MODES = {
    0: "off",
    1: "waiting for key",
    2: "continuous",
    3: "on/off modulation",
    4: "modulation",
    5: "fault",
    6: "aborted",
}

_FLOAT = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
_UNSIGNED = re.compile(r"\d{1,10}")
_TEXT = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,63}")


@dataclass(frozen=True)
class CoboltStatus:
    """The laser's state as read from it: emission, interlock, the latched fault and the operating mode."""

    on: bool
    interlock_ok: bool
    fault_code: int
    fault: str
    operating_mode: str


def _parse_bool(reply: str) -> bool:
    if reply not in ("0", "1"):
        raise ProtocolError(f"expected 0 or 1, got {reply!r}")
    return reply == "1"


def _parse_unsigned(reply: str) -> int:
    if not _UNSIGNED.fullmatch(reply):
        raise ProtocolError(f"expected an unsigned integer, got {reply!r}")
    return int(reply)


def _parse_float(reply: str) -> float:
    if not _FLOAT.fullmatch(reply):
        raise ProtocolError(f"expected a number, got {reply!r}")
    return float(reply)


def _parse_text(reply: str) -> str:
    if not _TEXT.fullmatch(reply):
        raise ProtocolError(f"expected printable text, got {reply!r}")
    return reply


def _parse_ok(reply: str) -> None:
    if reply != "OK":
        raise ProtocolError(f"expected OK, got {reply!r}")


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


class CoboltLaser(LightSource):
    """A Cobolt laser driven over its serial line.

    Args:
        port: a serial port or pyserial URL (``/dev/ttyUSB0``, ``COM5``, ``coboltsim://laser-1`` for the
            emulator in :mod:`firmware_sim.lab.cobolt`).
        baudrate: 115200 (the lasers' default; some are set to 19200).
        timeout_s: the deadline for one reply line.
        retries: how many times a query (a command ending in ``?``) is sent again after a garbled or missing
            reply. Commands that change state are never sent again: their effect is read back instead.
        max_power_mw: the highest power this driver will set. Firmware that answers ``gmlp?`` gives the laser's
            own maximum; this value may then only lower it. Needed for firmware that does not know ``gmlp?``.
        use_autostart: switch on with ``@cob1`` (the autostart sequence: the laser waits for its temperatures
            and warms up) instead of ``l1`` (direct, for lasers with autostart disabled).
        serial_factory: what opens the port, called like ``serial.serial_for_url(port, baudrate=...,
            timeout=..., write_timeout=...)`` (the default).
    """

    def __init__(
        self,
        port: str,
        *,
        baudrate: int = 115200,
        timeout_s: float = 1.0,
        retries: int = 2,
        max_power_mw: float | None = None,
        use_autostart: bool = False,
        serial_factory: Callable[..., Any] | None = None,
    ) -> None:
        if not isinstance(port, str) or not port:
            raise InvalidInputError(f"port must be a non-empty string, got {port!r}")
        if isinstance(baudrate, bool) or not isinstance(baudrate, int) or baudrate <= 0:
            raise InvalidInputError(f"baudrate must be a positive integer, got {baudrate!r}")
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 10:
            raise InvalidInputError(f"retries must be an integer in 0..10, got {retries!r}")
        self.port = port
        self.baudrate = baudrate
        self.timeout_s = _check_positive("timeout_s", timeout_s)
        self.retries = retries
        self._max_power_arg_mw = None if max_power_mw is None else _check_positive("max_power_mw", max_power_mw)
        self.use_autostart = bool(use_autostart)
        self._factory = serial_factory if serial_factory is not None else serial.serial_for_url
        self._serial: Any = None
        self._lock = threading.RLock()
        self._info: LightSourceInfo | None = None
        self._switched_on = False  # what this driver last set, to tell a restart from its own switch-off

    # ------------------------------------------------------------------------------------------- LightSource
    def open(self) -> LightSourceInfo:
        """Open the line and read serial number (``sn?``), firmware (``gfv?``), model (``glm?``) and maximum
        power (``gmlp?``, milliwatts).

        Raises:
            DeviceNotFoundError: the port cannot be opened, or nothing answers on it.
            ConfigurationError: no maximum power is known (firmware without ``gmlp?`` and no ``max_power_mw``),
                or ``max_power_mw`` is above the laser's own maximum.
        """
        with self._lock:
            if self._info is not None:
                return self._info
            try:
                self._serial = self._factory(
                    self.port, baudrate=self.baudrate, timeout=self.timeout_s, write_timeout=self.timeout_s
                )
            except ValueError as exc:
                raise UnsupportedUrlError(f"cannot open laser port {self.port!r}: {exc}") from exc
            except (serial.SerialException, OSError) as exc:
                raise DeviceNotFoundError(f"cannot open laser port {self.port!r}: {exc}") from exc
            try:
                info = self._identify()
                status = self.status()
            except BaseException:
                self._release()
                raise
            self._info = info
            _log.info(
                "opened %s %s (serial %s, firmware %s, max %.1f mW) on %s: %s, interlock %s, fault %s",
                info.manufacturer,
                info.model,
                info.serial_number,
                info.firmware_version,
                info.max_power_mw,
                self.port,
                "on" if status.on else "off",
                "closed" if status.interlock_ok else "OPEN",
                status.fault,
            )
            self._switched_on = status.on
            return info

    def set_on(self, on: bool) -> None:
        """Switch the emission on (after checking the interlock and the fault state) or off, and read it back.

        Raises:
            InterlockError: the interlock is open, or an interlock fault is latched (nothing is sent).
            DeviceError: another fault is latched (nothing sent), or the laser is not in the state asked for
                after the command.
        """
        with self._lock:
            self._require_open()
            if on:
                self._check_may_emit()
                command = "@cob1" if self.use_autostart else "l1"
            else:
                command = "l0"
                self._switched_on = False  # recorded first: a failed switch-off is never taken for a restart
            self._change_state(command, lambda: self._query("l?", _parse_bool) == on, f"emission {on}")
            self._switched_on = on
            _log.info("laser %s: emission %s", self.port, "on" if on else "off")

    def is_on(self) -> bool:
        """Whether the laser emits now (``l?``). Logs a warning when it is off although this driver switched it
        on and never off (a restart or an interlock trip); the driver does not switch it on again."""
        with self._lock:
            self._require_open()
            on = self._query("l?", _parse_bool)
            if self._switched_on and not on:
                _log.warning(
                    "laser %s is off although it was switched on: it restarted or its interlock tripped "
                    "(the driver does not switch it on again)",
                    self.port,
                )
                self._switched_on = False
            return on

    def set_power_mw(self, power_mw: float) -> None:
        """Set the power set point (``p`` in watts) and read it back (``p?``).

        Raises:
            InvalidInputError: not a finite number in 0 ..= max_power_mw (nothing is sent).
            DeviceRefusedError: the laser refused the value.
            DeviceError: the set point read back differs from the value sent.
        """
        with self._lock:
            info = self._require_open()
            if isinstance(power_mw, bool) or not isinstance(power_mw, (int, float)) or not math.isfinite(power_mw):
                raise InvalidInputError(f"power_mw must be a finite number, got {power_mw!r}")
            if not 0.0 <= power_mw <= info.max_power_mw:
                raise InvalidInputError(
                    f"power_mw must be in 0 ..= {info.max_power_mw:g} mW for laser {self.port}, got {power_mw!r}"
                )
            watts_text = f"{power_mw / 1000.0:.{SET_POWER_DECIMALS}f}"
            sent_w = float(watts_text)

            def set_point_matches() -> bool:
                reply = self._query("p?", _parse_text)
                read_w = _parse_float(reply)
                decimals = len(reply.partition(".")[2].split("e")[0].split("E")[0])
                # Half a step of what was sent plus half a step of the reply's own resolution.
                tolerance_w = 0.5 * 10.0**-SET_POWER_DECIMALS + 0.5 * 10.0**-decimals
                return abs(read_w - sent_w) <= tolerance_w

            self._change_state(f"p {watts_text}", set_point_matches, f"power set point {watts_text} W")
            _log.info("laser %s: power set point %s W", self.port, watts_text)

    def power_mw(self) -> float:
        """The output power the laser measures now (``pa?``, watts on the wire), in milliwatts."""
        with self._lock:
            self._require_open()
            return self._query("pa?", _parse_float) * 1000.0

    def set_point_mw(self) -> float:
        """The power set point (``p?``), in milliwatts."""
        with self._lock:
            self._require_open()
            return self._query("p?", _parse_float) * 1000.0

    def interlock_ok(self) -> bool:
        """Whether the interlock loop is closed (``ilk?`` answers 0 when it is, 1 when it is open)."""
        with self._lock:
            self._require_open()
            return not self._query("ilk?", _parse_bool)

    def close(self) -> None:
        """Switch the emission off (``l0``, read back) and release the port; idempotent.

        Raises:
            DeviceError: the laser could not be confirmed off (the port is released all the same).
        """
        with self._lock:
            if self._serial is None:
                return
            failure: OpuError | None = None
            if self._info is not None:
                try:
                    self.set_on(False)
                except OpuError as exc:
                    failure = exc
                    _log.error("laser %s: could not confirm the emission off while closing: %s", self.port, exc)
            self._release()
            if failure is not None:
                raise DeviceError(
                    f"laser {self.port}: the emission could not be confirmed off ({failure}); check it by hand"
                ) from failure

    # ------------------------------------------------------------------------------------------------- extras
    @property
    def info(self) -> LightSourceInfo | None:
        """What :meth:`open` read, or None before it."""
        return self._info

    def status(self) -> CoboltStatus:
        """Emission (``l?``), interlock (``ilk?``), latched fault (``f?``) and operating mode (``gom?``;
        ``unknown`` where the firmware does not know it)."""
        with self._lock:
            self._require_serial()
            on = self._query("l?", _parse_bool)
            interlock_ok = not self._query("ilk?", _parse_bool)
            fault_code = self._query("f?", _parse_unsigned)
            try:
                mode_code = self._query("gom?", _parse_unsigned)
                mode = OPERATING_MODES.get(mode_code, f"mode {mode_code}")
            except DeviceRefusedError:
                mode = "unknown"
            return CoboltStatus(on, interlock_ok, fault_code, FAULTS.get(fault_code, f"fault {fault_code}"), mode)

    def clear_fault(self) -> int:
        """Clear a latched fault (``cf``) and return the fault code read after it (0 when cleared).

        The user's explicit act after checking why the fault happened; the driver never calls it on its own.

        Raises:
            InterlockError: the interlock is open (nothing is sent: clearing would not re-arm it anyway).
        """
        with self._lock:
            self._require_open()
            if self._query("ilk?", _parse_bool):
                raise InterlockError(f"laser {self.port}: the interlock is open; close it before clearing the fault")
            self._change_state("cf", lambda: True, "clear fault")
            code = self._query("f?", _parse_unsigned)
            _log.info("laser %s: fault cleared by request, fault now %s", self.port, FAULTS.get(code, code))
            return code

    # ---------------------------------------------------------------------------------------------- internals
    def _identify(self) -> LightSourceInfo:
        try:
            serial_number = self._query("sn?", _parse_text)
        except CommunicationTimeoutError as exc:
            raise DeviceNotFoundError(f"no laser answers on {self.port!r}: {exc}") from exc
        firmware = self._query("gfv?", _parse_text)
        try:
            model = self._query("glm?", _parse_text)
        except DeviceRefusedError:
            model = "model not reported (firmware without glm?)"
        try:
            device_max_mw: float | None = self._query("gmlp?", _parse_float)
        except DeviceRefusedError:
            device_max_mw = None
        wanted_mw = self._max_power_arg_mw
        if device_max_mw is None and wanted_mw is None:
            raise ConfigurationError(
                f"laser {self.port} does not report its maximum power (no gmlp?): pass max_power_mw "
                "(the laser's nominal power, from its label or data sheet)"
            )
        if device_max_mw is not None and wanted_mw is not None and wanted_mw > device_max_mw:
            raise ConfigurationError(
                f"max_power_mw={wanted_mw:g} is above the laser's own maximum of {device_max_mw:g} mW"
            )
        max_mw = wanted_mw if wanted_mw is not None else device_max_mw
        assert max_mw is not None  # both None raised above
        return LightSourceInfo("Cobolt", model, serial_number, firmware, max_mw)

    def _check_may_emit(self) -> None:
        if self._query("ilk?", _parse_bool):
            raise InterlockError(
                f"laser {self.port}: the interlock is open (the remote interlock loop is broken: a door, a cover or "
                "the interlock plug); close it, then switch on again"
            )
        fault = self._query("f?", _parse_unsigned)
        if fault == 3:
            raise InterlockError(
                f"laser {self.port}: an interlock fault is latched (the interlock was opened while emitting); "
                "find why, then clear it with clear_fault() before switching on"
            )
        if fault != 0:
            raise DeviceError(
                f"laser {self.port} reports fault {fault} ({FAULTS.get(fault, 'unknown')}); "
                "find why, then clear it with clear_fault()"
            )

    def _change_state(self, command: str, confirmed: Callable[[], bool], what: str) -> None:
        """Send a state change once; a lost or garbled acknowledgment is settled by reading the state back."""
        ack_error: OpuError | None = None
        try:
            self._exchange(command, _parse_ok)
        except (ProtocolError, CommunicationTimeoutError) as exc:
            ack_error = exc
            _log.warning("laser %s: no clean reply to %r (%s); reading the state back", self.port, command, exc)
            self._drain()
        if not confirmed():
            raise DeviceError(
                f"laser {self.port}: {what} not in effect after {command!r}"
                + (f" (its reply was lost: {ack_error})" if ack_error else "")
            ) from ack_error
        if ack_error is not None:
            _log.info("laser %s: %s confirmed by reading back", self.port, what)

    def _query(self, command: str, parse: Callable[[str], _T]) -> _T:
        """Send a query and parse its reply, sending it again after a garbled or missing reply (``retries``)."""
        last: OpuError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self._drain()
                _log.info("laser %s: sending %r again (%s)", self.port, command, last)
            try:
                return self._exchange(command, parse)
            except (ProtocolError, CommunicationTimeoutError) as exc:
                last = exc
        assert last is not None
        raise last

    def _exchange(self, command: str, parse: Callable[[str], _T]) -> _T:
        """One command line out, one reply line back within ``timeout_s``; a refusal is DeviceRefusedError."""
        port = self._require_serial()
        data = command.encode("ascii") + COMMAND_END
        deadline = time.monotonic() + self.timeout_s
        try:
            port.reset_input_buffer()
            port.write(data)
            port.flush()
            line = self._read_line(port, deadline, command)
        except OpuError:
            raise  # ours already (a CommunicationTimeoutError is an OSError too: keep it as it is)
        except serial.SerialTimeoutException as exc:
            raise CommunicationTimeoutError(f"laser {self.port}: writing {command!r} timed out") from exc
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLostError(f"laser port {self.port!r} failed: {exc}") from exc
        if line.startswith(REFUSAL_PREFIX):
            raise DeviceRefusedError(f"laser {self.port} refused {command!r}: {line}")
        try:
            return parse(line)
        except ProtocolError as exc:
            raise ProtocolError(f"laser {self.port}: bad reply to {command!r}: {exc}") from None

    def _read_line(self, port: Any, deadline: float, command: str) -> str:
        buffer = bytearray()
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                raw = bytes(buffer[: end + 1])
                if not raw.endswith(REPLY_END):
                    raise ProtocolError(f"laser {self.port}: reply to {command!r} not ended by CR LF: {raw!r}")
                try:
                    return raw[:-2].decode("ascii")
                except UnicodeDecodeError:
                    raise ProtocolError(f"laser {self.port}: reply to {command!r} is not ASCII: {raw!r}") from None
            if len(buffer) > MAX_REPLY_BYTES:
                raise ProtocolError(
                    f"laser {self.port}: reply to {command!r} longer than {MAX_REPLY_BYTES} bytes without a line end"
                )
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                detail = f" (partial reply {bytes(buffer)!r})" if buffer else ""
                raise CommunicationTimeoutError(
                    f"laser {self.port}: no reply to {command!r} within {self.timeout_s:.3g} s{detail}"
                )
            port.timeout = remaining_s
            chunk = port.read(min(max(1, port.in_waiting), _READ_CHUNK_BYTES, MAX_REPLY_BYTES + 1 - len(buffer)))
            buffer += chunk

    def _drain(self, quiet_s: float = 0.01, max_s: float = 0.2) -> None:
        """Drop input until the line is quiet for ``quiet_s`` (the rest of a bad reply, a late one)."""
        port = self._serial
        if port is None:
            return
        deadline = time.monotonic() + max_s
        try:
            while time.monotonic() < deadline:
                port.timeout = quiet_s
                if not port.read(max(1, min(port.in_waiting, 4096))):
                    break
        except (serial.SerialException, OSError) as exc:
            raise ConnectionLostError(f"laser port {self.port!r} failed: {exc}") from exc

    def _require_serial(self) -> Any:
        if self._serial is None:
            raise DeviceError(f"laser {self.port} is not open")
        return self._serial

    def _require_open(self) -> LightSourceInfo:
        self._require_serial()
        if self._info is None:
            raise DeviceError(f"laser {self.port} is not open")
        return self._info

    def _release(self) -> None:
        port, self._serial, self._info = self._serial, None, None
        self._switched_on = False
        if port is not None:
            try:
                port.close()
            except (serial.SerialException, OSError) as exc:
                _log.debug("closing laser port %s failed: %s", self.port, exc)
        _log.info("released laser port %s", self.port)
