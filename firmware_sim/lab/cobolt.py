"""Emulator of a Cobolt 04-01/06-01 series laser's serial line: the ASCII command set, byte for byte.

Commands end with a carriage return (``\\r``; a line feed is ignored); every command gets one reply line ended
by ``\\r\\n``: ``OK`` for a command that changes something, the value for a query, and
``Syntax error: illegal command`` for anything else. Powers travel in watts (``p 0.05000``, ``pa?``), except the
maximum power ``gmlp?``, which the public drivers read in milliwatts. ``docs/rig-laser.md`` lists the sources.

The state: emission on/off, the power set point, the output power (equal to the set point while the laser emits,
0 otherwise: no ramp), the interlock (a test opens and closes it), serial number, firmware, model, the latched
fault code (``f?``) and the operating mode (``gom?``). Opening the interlock while the laser emits switches it
off and latches fault 3 until ``cf`` with the interlock closed. ``l1`` while the interlock is open or a fault is
latched answers ``OK`` and leaves the laser off (the public documentation does not say what the real laser
answers there; a driver has to read the state back).

Faults are injected as data (:meth:`CoboltEmulator.inject`): a garbled reply, no reply, a delayed reply, a flood
of bytes without a line end, or a restart (a power cycle before the reply: laser off, buffers lost). The commands
received are logged, so a test can prove what was, or was not, sent.

``serial.serial_for_url("coboltsim://<name>")`` opens the line of an emulator made by :func:`create_laser`;
importing this module registers the scheme with pyserial (:mod:`firmware_sim.lab.protocol_coboltsim`).
"""

from __future__ import annotations

import collections
import logging
import math
import re
import threading
import time
from dataclasses import dataclass

import serial as _serial

__all__ = [
    "ILLEGAL_COMMAND",
    "CoboltSimConfig",
    "CoboltFault",
    "CoboltEmulator",
    "create_laser",
    "get_laser",
    "release_laser",
    "CoboltSimNotFoundError",
]

_log = logging.getLogger(__name__)

# pyserial imports <package>.protocol_<scheme> for URLs: this makes "coboltsim://" resolve to our handler.
_PACKAGE = __name__.rsplit(".", 1)[0]
if _PACKAGE not in _serial.protocol_handler_packages:
    _serial.protocol_handler_packages.append(_PACKAGE)

ILLEGAL_COMMAND = "Syntax error: illegal command"
MAX_COMMAND_BYTES = 64  # a longer command line is dropped up to its end and answered as illegal
MAX_OUTPUT_BYTES = 4096  # the reply FIFO; the oldest bytes are lost beyond it, as in a UART that overflows
MAX_LOGGED_COMMANDS = 10_000
FAULT_KINDS = ("garble", "drop", "delay", "flood", "restart")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


class CoboltSimNotFoundError(LookupError):
    """No emulated laser has that name."""


@dataclass(frozen=True)
class CoboltSimConfig:
    """What the emulated laser is.

    Attributes:
        serial_number: the ``sn?`` reply (a 32-bit unsigned integer on the 04-01 series).
        firmware_version: the ``gfv?`` reply.
        model: the ``glm?`` reply; None for firmware that does not know ``glm?`` (illegal command).
        max_power_mw: the ``gmlp?`` reply (milliwatts); None for firmware that does not know ``gmlp?``.
        power_limit_mw: the highest set point ``p`` accepts (defaults to max_power_mw, else 100 mW).
        operating_hours: the ``hrs?`` reply.
    """

    serial_number: str = "21345"
    firmware_version: str = "5.12"
    model: str | None = "0532-06-01-0100-300"
    max_power_mw: float | None = 100.0
    power_limit_mw: float | None = None
    operating_hours: float = 123.4

    @property
    def limit_w(self) -> float:
        limit_mw = self.power_limit_mw if self.power_limit_mw is not None else self.max_power_mw
        return (100.0 if limit_mw is None else limit_mw) / 1000.0


@dataclass
class CoboltFault:
    """A fault waiting for a command: applied to the next ``count`` replies (of ``command`` only, when given).

    Kinds: ``garble`` (the reply's bytes changed, still ended by ``\\r\\n``), ``drop`` (no reply), ``delay`` (the
    reply comes ``delay_s`` late), ``flood`` (``flood_bytes`` bytes without a line end instead of the reply),
    ``restart`` (the laser power-cycles on receiving the command, before acting on it: no reply, laser off).
    The command itself is carried out for all but ``restart``.
    """

    kind: str
    count: int = 1
    command: str | None = None
    delay_s: float = 0.0
    flood_bytes: int = 1000


class CoboltEmulator:
    """The laser and its serial line (the host side reads and writes through the ``coboltsim://`` handler)."""

    def __init__(self, config: CoboltSimConfig | None = None, *, name: str = "cobolt") -> None:
        self.config = config or CoboltSimConfig()
        self.name = name
        self._cond = threading.Condition()
        self._input = bytearray()
        self._input_overflow = False
        self._output: collections.deque[tuple[float, bytes]] = collections.deque()  # (ready at, bytes)
        self._faults: list[CoboltFault] = []
        self._log: collections.deque[str] = collections.deque(maxlen=MAX_LOGGED_COMMANDS)
        self.connected = True
        self.restarts = 0
        self.on = False
        self.set_power_w = 0.0
        self.interlock_open = False
        self.fault_code = 0

    # ------------------------------------------------------------------------------------------- test controls
    @property
    def commands(self) -> list[str]:
        """The command lines received, oldest first (the last 10,000)."""
        with self._cond:
            return list(self._log)

    @property
    def output_power_w(self) -> float:
        """What ``pa?`` reports: the set point while emitting (no ramp), else 0."""
        return self.set_power_w if self.on else 0.0

    def inject(
        self,
        kind: str,
        *,
        count: int = 1,
        command: str | None = None,
        delay_s: float = 0.0,
        flood_bytes: int = 1000,
    ) -> None:
        """Queue a fault for the next ``count`` replies (to ``command`` only, when given); see :class:`CoboltFault`."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
        if count < 1 or not math.isfinite(delay_s) or delay_s < 0 or flood_bytes < 1:
            raise ValueError("count and flood_bytes must be >= 1, delay_s a finite number >= 0")
        with self._cond:
            self._faults.append(CoboltFault(kind, count, command, delay_s, flood_bytes))

    def clear_faults(self) -> None:
        """Forget injected faults not yet applied."""
        with self._cond:
            self._faults.clear()

    def open_interlock(self) -> None:
        """Open the interlock loop: emission stops at once and fault 3 latches if the laser was on."""
        with self._cond:
            self.interlock_open = True
            if self.on:
                self.on = False
                self.fault_code = 3

    def close_interlock(self) -> None:
        """Close the interlock loop; a latched fault stays until ``cf``."""
        with self._cond:
            self.interlock_open = False

    def power_cycle(self) -> None:
        """A restart: the laser comes back off, with no fault, its set point kept and its line buffers empty."""
        with self._cond:
            self._restart_locked()

    def unplug(self) -> None:
        """The line goes away: ports open on it fail from now on."""
        with self._cond:
            self.connected = False
            self._cond.notify_all()

    # ----------------------------------------------------------------------------------------- the serial line
    def serial_write(self, data: bytes) -> None:
        """Bytes from the host: every completed command line is answered (into the output FIFO)."""
        with self._cond:
            for byte in data:
                if byte == 0x0D:
                    line, overflow = bytes(self._input), self._input_overflow
                    self._input.clear()
                    self._input_overflow = False
                    self._handle_line_locked(line, overflow)
                elif byte == 0x0A:
                    continue  # a line feed after the carriage return is tolerated
                elif len(self._input) >= MAX_COMMAND_BYTES:
                    self._input_overflow = True
                else:
                    self._input.append(byte)
            self._cond.notify_all()

    @property
    def serial_in_waiting(self) -> int:
        """Reply bytes ready to read now."""
        with self._cond:
            now = time.monotonic()
            return sum(len(chunk) for ready, chunk in self._output if ready <= now)

    def serial_read(self, size: int) -> bytes:
        """Up to ``size`` reply bytes ready now (never blocks)."""
        with self._cond:
            now = time.monotonic()
            data = bytearray()
            while self._output and len(data) < size:
                ready, chunk = self._output[0]
                if ready > now:
                    break
                take = size - len(data)
                data += chunk[:take]
                if take < len(chunk):
                    self._output[0] = (ready, chunk[take:])
                else:
                    self._output.popleft()
            return bytes(data)

    def serial_wait(self, timeout_s: float | None) -> None:
        """Block until reply bytes are ready, the line goes away, or ``timeout_s`` passes (None: no limit)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self.connected:
                now = time.monotonic()
                if self._output and self._output[0][0] <= now:
                    return
                wait_s = None if deadline is None else deadline - now
                if self._output:
                    until_ready_s = self._output[0][0] - now
                    wait_s = until_ready_s if wait_s is None else min(wait_s, until_ready_s)
                if wait_s is not None and wait_s <= 0:
                    return
                self._cond.wait(wait_s)

    def serial_reset_input(self) -> None:
        """The host drops what it has not read: replies ready now are lost (late ones still come)."""
        with self._cond:
            now = time.monotonic()
            self._output = collections.deque(item for item in self._output if item[0] > now)

    # ---------------------------------------------------------------------------------------------- internals
    def _restart_locked(self) -> None:
        self.restarts += 1
        self.on = False
        self.fault_code = 0
        self._input.clear()
        self._input_overflow = False
        self._output.clear()
        _log.info("emulated laser %s restarted", self.name)

    def _take_fault_locked(self, command: str) -> CoboltFault | None:
        for fault in self._faults:
            if fault.command is None or fault.command == command:
                fault.count -= 1
                if fault.count <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def _handle_line_locked(self, raw: bytes, overflow: bool) -> None:
        command = raw.decode("ascii", errors="replace").strip()
        if not command and not overflow:
            return  # an empty line gets no reply
        self._log.append(command)
        fault = self._take_fault_locked(command)
        if fault is not None and fault.kind == "restart":
            self._restart_locked()
            return
        reply = ILLEGAL_COMMAND if overflow else self._execute_locked(command)
        data = reply.encode("ascii") + b"\r\n"
        ready = time.monotonic()
        if fault is not None:
            if fault.kind == "drop":
                return
            if fault.kind == "garble":
                data = bytes(b ^ 0x55 for b in data[:-2]) + b"\r\n"
            elif fault.kind == "flood":
                data = bytes(0x21 + (i % 90) for i in range(fault.flood_bytes))
            elif fault.kind == "delay":
                ready += fault.delay_s
        self._output.append((ready, data))
        excess = sum(len(chunk) for _, chunk in self._output) - MAX_OUTPUT_BYTES
        while excess > 0:  # the oldest bytes are lost
            first_ready, first = self._output.popleft()
            if len(first) > excess:
                self._output.appendleft((first_ready, first[excess:]))
            excess -= len(first)

    def _switch_on_locked(self) -> str:
        if self.interlock_open:
            self.fault_code = 3
        elif self.fault_code == 0:
            self.on = True
        return "OK"

    def _execute_locked(self, command: str) -> str:
        config = self.config
        simple = {
            "l?": lambda: "1" if self.on else "0",
            "ilk?": lambda: "1" if self.interlock_open else "0",
            "f?": lambda: str(self.fault_code),
            "gom?": lambda: "5" if self.fault_code else ("2" if self.on else "0"),
            "p?": lambda: f"{self.set_power_w:.4f}",
            "pa?": lambda: f"{self.output_power_w:.4f}",
            "sn?": lambda: config.serial_number,
            "gsn?": lambda: config.serial_number,
            "gfv?": lambda: config.firmware_version,
            "hrs?": lambda: f"{config.operating_hours:.2f}",
            "?": lambda: "OK",
        }
        if command in simple:
            return simple[command]()
        if command == "glm?" and config.model is not None:
            return config.model
        if command == "gmlp?" and config.max_power_mw is not None:
            return f"{config.max_power_mw:.1f}"
        if command in ("l1", "@cob1"):
            return self._switch_on_locked()
        if command in ("l0", "@cob0"):
            self.on = False
            return "OK"
        if command == "cf":
            if not self.interlock_open:
                self.fault_code = 0
            return "OK"
        if command.startswith("p "):
            text = command[2:].strip()
            if _NUMBER.fullmatch(text) and 0.0 <= float(text) <= config.limit_w + 1e-12:
                self.set_power_w = float(text)
                return "OK"
        return ILLEGAL_COMMAND


# -------------------------------------------------------------------------------------------------- registry
_lasers: dict[str, CoboltEmulator] = {}
_registry_lock = threading.Lock()


def create_laser(name: str, config: CoboltSimConfig | None = None) -> CoboltEmulator:
    """Make an emulated laser reachable as ``coboltsim://<name>``; ValueError when the name is taken."""
    with _registry_lock:
        if name in _lasers:
            raise ValueError(f"an emulated laser named {name!r} already exists")
        laser = _lasers[name] = CoboltEmulator(config, name=name)
    return laser


def get_laser(name: str) -> CoboltEmulator:
    """The emulated laser of that name; CoboltSimNotFoundError names those that exist."""
    with _registry_lock:
        laser = _lasers.get(name)
        known = sorted(_lasers)
    if laser is None:
        raise CoboltSimNotFoundError(f"no emulated laser named {name!r}; registered: {known or 'none'}")
    return laser


def release_laser(name: str) -> None:
    """Unregister and unplug a laser; releasing an unknown name does nothing."""
    with _registry_lock:
        laser = _lasers.pop(name, None)
    if laser is not None:
        laser.unplug()
