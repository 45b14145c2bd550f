"""Fault injection: what a misbehaving link, camera or controller does to the emulated OPU, by plan and by seed.

A :class:`FaultPlan` says which faults happen and how often. Its text form is the ``faults`` emulator option::

    sim://?seed=1&faults=timeout:0.02,crc:0.02,drop:0.02,dup:0.02    # NAME:RATE, a probability per event
    sim://?seed=1&faults=reset@3                                      # NAME@K, exactly at the K-th event

Each fault kind has its own kind of event (a bulk IN read, a bulk transfer, a camera frame, a sequence start, a
controller reply; see :data:`FAULT_KINDS` and, for the light path, :data:`LIGHT_FAULT_KINDS`) and its own
random stream, keyed by the device seed and the kind's name. So a plan replays exactly from the seed, and
switching one fault on never moves when another one fires.

A :class:`FaultInjector` is the mutable side, one per emulated device: it counts events, draws, and records
what it injected (``EmulatedDevice.fault_counts``), and keeps the halted endpoints that a ``stall`` leaves
behind until the host clears them. The pyusb backend (transfers), the capture (camera frames), the sequencer
(sequence starts) and the device (controller replies) ask it at their hook points; nothing else in the
emulator changes when no fault is planned.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import SimConfigError

__all__ = [
    "FAULT_KINDS",
    "LIGHT_FAULT_KINDS",
    "ALL_FAULT_KINDS",
    "FaultPlan",
    "FaultInjector",
    "SLOW_DELAY_S",
    "FRAME_FAULTS",
    "SATURATE_FACTOR",
    "LIGHT_FACTOR",
]

#: The faults of the link, the camera stream and the USB side, with the event each is drawn on (once per event).
FAULT_KINDS: Mapping[str, str] = {
    "timeout": "a bulk IN read times out although data waits (per bulk IN read)",
    "stall": "a bulk endpoint stalls and stays halted until the host clears it (per bulk transfer)",
    "crc": "one bit of a camera packet's payload flips (per camera frame)",
    "truncate": "a camera packet is cut short (per camera frame)",
    "drop": "a camera frame is never sent (per camera frame)",
    "dup": "a camera frame is sent twice (per camera frame)",
    "reorder": "a camera frame is sent after the next one (per camera frame)",
    "reset": "the device resets half-way through a sequence: sequence memory, layout and registers lost "
    "(per sequence start)",
    "serial": "garbage bytes precede a reply on the controller line (per controller reply)",
    "slow": "a bulk IN read takes 20 ms longer (per bulk IN read)",
}

#: The faults of the light path (controller side), drawn once per sequence start like ``reset``. Kept apart
#: from FAULT_KINDS because they change what the camera sees rather than how it reaches the host.
LIGHT_FAULT_KINDS: Mapping[str, str] = {
    "interlock": "the interlock trips half-way through a sequence: the laser goes off, the rest of the sequence "
    "is dark, and the cause stays until cleared (per sequence start)",
    "saturate": "the light jumps for one sequence (x20 signal), so its frames saturate (per sequence start)",
    "light": "the light changes for one sequence (x0.8 signal: dimmer, nothing saturates) (per sequence start)",
    "restart": "the controller restarts just before a sequence, as after a power cut of the laser side: laser "
    "off, shutter closed, power back to its default (per sequence start)",
}

#: Every fault the emulator can inject: what plans accept and the injector counts.
ALL_FAULT_KINDS: Mapping[str, str] = {**FAULT_KINDS, **LIGHT_FAULT_KINDS}

#: How much brighter a ``saturate`` sequence is than the light it replaces.
SATURATE_FACTOR = 20.0

#: The light of a ``light`` sequence relative to the light it replaces (dimmer, so that nothing saturates and the
#: change shows only in the values).
LIGHT_FACTOR = 0.8

#: Faults drawn once per camera frame, in the order they are applied to it.
FRAME_FAULTS = ("drop", "crc", "truncate", "dup", "reorder")

#: How much longer a ``slow`` bulk read takes, seconds.
SLOW_DELAY_S = 0.02

_HEADER_BYTES = 16  # envelope header of docs/protocol.md 1.4; the payload follows it
_CRC_BYTES = 4
_MAX_SCHEDULE_EVENT = 2**31
_GARBAGE_MAX_BYTES = 16


def _refuse(message: str) -> SimConfigError:
    # Messages start with the option's name so that SimConfig.from_query can name the URL key.
    return SimConfigError(f"faults {message}")


@dataclass(frozen=True)
class FaultPlan:
    """Which faults happen: a rate per event for some kinds, exact event numbers for others.

    Attributes:
        rates: (kind, probability per event in 0..1) pairs, at most one per kind, in ALL_FAULT_KINDS order.
        schedule: (kind, event number >= 1) pairs: the kind fires at exactly that event (counted from 1 since
            the plan was installed), whatever its rate.

    Raises:
        SimConfigError: an unknown kind, a rate outside 0..1 or not a number, an event number below 1, a
            kind given two rates; the message names the offending entry.
    """

    rates: tuple[tuple[str, float], ...] = ()
    schedule: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        order = {kind: i for i, kind in enumerate(ALL_FAULT_KINDS)}
        seen: set[str] = set()
        rates = []
        for kind, rate in self.rates:
            self._check_kind(kind)
            if kind in seen:
                raise _refuse(f"entry {kind!r} given two rates")
            seen.add(kind)
            if (
                isinstance(rate, bool)
                or not isinstance(rate, (int, float))
                or not math.isfinite(rate)
                or not 0.0 <= rate <= 1.0
            ):
                raise _refuse(f"entry {kind!r}: rate must be a number in 0..1, got {rate!r}")
            rates.append((kind, float(rate)))
        schedule = []
        for kind, event in self.schedule:
            self._check_kind(kind)
            if isinstance(event, bool) or not isinstance(event, int) or not 1 <= event <= _MAX_SCHEDULE_EVENT:
                raise _refuse(f"entry {kind!r}: event number must be an integer >= 1, got {event!r}")
            schedule.append((kind, int(event)))
        object.__setattr__(self, "rates", tuple(sorted(rates, key=lambda item: order[item[0]])))
        object.__setattr__(self, "schedule", tuple(sorted(set(schedule), key=lambda item: (order[item[0]], item[1]))))

    @staticmethod
    def _check_kind(kind: object) -> None:
        if kind not in ALL_FAULT_KINDS:
            raise _refuse(f"entry {kind!r}: unknown fault; known: {', '.join(ALL_FAULT_KINDS)}")

    @classmethod
    def parse(cls, text: FaultPlan | str) -> FaultPlan:
        """A plan from its text form: comma-separated ``NAME:RATE`` and ``NAME@K`` entries ("" = no faults)."""
        if isinstance(text, FaultPlan):
            return text
        if not isinstance(text, str):
            raise _refuse(f"must be text such as 'crc:0.02,reset@3', got {text!r}")
        rates: list[tuple[str, float]] = []
        schedule: list[tuple[str, int]] = []
        for raw in text.split(","):
            entry = raw.strip()
            if not entry:
                if text.strip():
                    raise _refuse(f"has an empty entry in {text!r}")
                continue
            if "@" in entry:
                kind, _, value = (part.strip() for part in entry.partition("@"))
                cls._check_kind(kind.lower())
                try:
                    event = int(value, 10)
                except ValueError:
                    raise _refuse(f"entry {entry!r}: event number must be an integer >= 1") from None
                schedule.append((kind.lower(), event))
            elif ":" in entry:
                kind, _, value = (part.strip() for part in entry.partition(":"))
                cls._check_kind(kind.lower())
                try:
                    rate = float(value)
                except ValueError:
                    raise _refuse(f"entry {entry!r}: rate must be a number in 0..1") from None
                rates.append((kind.lower(), rate))
            else:
                cls._check_kind(entry.lower())
                raise _refuse(f"entry {entry!r}: give a rate ({entry}:0.02) or an event ({entry}@3)")
        return cls(tuple(rates), tuple(schedule))

    def __str__(self) -> str:
        parts = [f"{kind}:{rate!r}" for kind, rate in self.rates]
        parts += [f"{kind}@{event}" for kind, event in self.schedule]
        return ",".join(parts)

    @property
    def active(self) -> bool:
        """Whether any fault can fire at all."""
        return any(rate > 0 for _, rate in self.rates) or bool(self.schedule)

    def rate(self, kind: str) -> float:
        return dict(self.rates).get(kind, 0.0)

    def events(self, kind: str) -> frozenset[int]:
        """The event numbers at which ``kind`` is scheduled."""
        return frozenset(event for name, event in self.schedule if name == kind)


class FaultInjector:
    """Draws and records the faults of one device under a :class:`FaultPlan`.

    Args:
        plan: the plan (or its text form).
        seed: the device seed; each kind draws from its own stream keyed by (seed, kind).
    """

    def __init__(self, plan: FaultPlan | str = "", seed: int = 0) -> None:
        self._lock = threading.Lock()
        self.set_plan(plan, seed)

    def set_plan(self, plan: FaultPlan | str, seed: int | None = None) -> None:
        """Install a plan: event counts, draws and halted endpoints start afresh."""
        plan = FaultPlan.parse(plan)
        with self._lock:
            if seed is not None:
                self._seed = int(seed)
            self.plan = plan
            self._rates = dict(plan.rates)
            self._scheduled = {kind: plan.events(kind) for kind in ALL_FAULT_KINDS}
            self._streams = {kind: random.Random(f"opu-faults:{self._seed}:{kind}") for kind in ALL_FAULT_KINDS}
            self.events = {kind: 0 for kind in ALL_FAULT_KINDS}
            self.injected = {kind: 0 for kind in ALL_FAULT_KINDS}
            self._halted: set[int] = set()
            self.active = plan.active

    def fire(self, kind: str) -> bool:
        """Count one event of ``kind``'s sort; whether the fault happens at it."""
        with self._lock:
            self.events[kind] += 1
            hit = self.events[kind] in self._scheduled[kind]
            rate = self._rates.get(kind, 0.0)
            if rate > 0.0 and self._streams[kind].random() < rate:
                hit = True
            if hit:
                self.injected[kind] += 1
            return hit

    def draw(self, kind: str, low: int, high: int) -> int:
        """A reproducible integer in low..high for the details of a ``kind`` fault (which bit, how short)."""
        with self._lock:
            return self._streams[kind].randint(low, high)

    # -- halted endpoints ----------------------------------------------------------------------------
    def halt(self, endpoint: int) -> None:
        with self._lock:
            self._halted.add(endpoint)

    def is_halted(self, endpoint: int) -> bool:
        with self._lock:
            return endpoint in self._halted

    def clear_halt(self, endpoint: int) -> None:
        with self._lock:
            self._halted.discard(endpoint)

    # -- the camera stream -----------------------------------------------------------------------------
    def camera_packets(self, blob: bytes, packet_bytes: int) -> bytes:
        """Apply the per-frame faults to consecutive camera packets of ``packet_bytes`` each."""
        frames: list[list[bytes]] = []
        swaps: list[int] = []
        for start in range(0, len(blob), packet_bytes):
            packet = blob[start : start + packet_bytes]
            hits = {kind: self.fire(kind) for kind in FRAME_FAULTS}
            if hits["drop"]:
                continue
            if hits["crc"]:
                bit = self.draw("crc", 8 * _HEADER_BYTES, 8 * (len(packet) - _CRC_BYTES) - 1)
                corrupted = bytearray(packet)
                corrupted[bit // 8] ^= 1 << (bit % 8)
                packet = bytes(corrupted)
            if hits["truncate"]:
                packet = packet[: self.draw("truncate", _HEADER_BYTES, len(packet) - 1)]
            frames.append([packet, packet] if hits["dup"] else [packet])
            if hits["reorder"]:
                swaps.append(len(frames) - 1)
        for index in swaps:
            if index + 1 < len(frames):
                frames[index], frames[index + 1] = frames[index + 1], frames[index]
        return b"".join(part for group in frames for part in group)

    def serial_garbage(self) -> bytes:
        """Garbage to put before a controller reply (never a line end, never ASCII), or b""."""
        if not self.fire("serial"):
            return b""
        with self._lock:
            stream = self._streams["serial"]
            return bytes(stream.randint(0x80, 0xFE) for _ in range(stream.randint(1, _GARBAGE_MAX_BYTES)))

    def counts(self) -> dict[str, dict[str, int]]:
        """Events seen and faults injected, per kind."""
        with self._lock:
            return {"events": dict(self.events), "injected": dict(self.injected)}
