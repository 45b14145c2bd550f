"""The controller interface: identity, laser, shutter, temperature, interlock, trigger source and error queue.

The shared work is done here once: the light path the driver last set (:class:`LightState`, ``wanted``) is
recorded around every laser and shutter command, so that a controller that restarted on its own (a power cycle,
an unplug) is told apart from the user's own ``laser_off()``, and :meth:`Controller.restore` puts back what
differs. Safety comes first: switching the light off is recorded before the command is sent (a failed attempt is
never restored to on), an interlock trip is never re-armed or switched back on by the driver, and closing always
tries both the laser and the shutter. A backend implements the ``_do_*`` hooks.
"""

from __future__ import annotations

import logging
import math
from abc import abstractmethod
from dataclasses import dataclass, replace
from enum import Enum

from ..errors import ConfigurationError
from .base import Device

__all__ = ["Controller", "ControllerCounters", "Identity", "LightState", "TriggerMode"]

_log = logging.getLogger(__name__)


class TriggerMode(str, Enum):
    """Source of DMD frame triggers (docs/protocol.md 1.6)."""

    INTERNAL = "INT"
    SOFTWARE = "SOFT"
    EXTERNAL = "EXT"


@dataclass(frozen=True)
class Identity:
    """Who the controller says it is."""

    manufacturer: str
    model: str
    serial_number: str
    firmware_version: str


@dataclass
class ControllerCounters:
    """What the controller's exchanges met on its line, for diagnostics (``Controller.counters``).

    ``requests`` counts calls that sent a command (retries not included); ``retries`` the command lines sent
    again after a fault; ``garbled_replies`` replies outside the grammar and ``timeouts`` replies that did not
    come in time (each attempt counts); ``resyncs`` replies used after dropping garbage in front of them;
    ``requests_recovered`` requests that succeeded only thanks to a retry or a resync, ``requests_failed``
    requests that raised after their last attempt met a fault. Refusals are answers, not faults, and count in
    none of these.
    """

    requests: int = 0
    retries: int = 0
    garbled_replies: int = 0
    timeouts: int = 0
    resyncs: int = 0
    requests_recovered: int = 0
    requests_failed: int = 0


@dataclass(frozen=True)
class LightState:
    """The light path as the driver last set it (``Controller.wanted``); None where it never set a value.

    A device that restarts (a power cycle, a reset of its controller, an unplug and replug) comes back with the
    laser off and the shutter closed. The driver compares the device with this state to tell such a restart from
    the user's own ``laser_off()``, and :meth:`Controller.restore` writes back what differs.
    """

    laser_on: bool | None = None
    shutter_open: bool | None = None
    power_mw: float | None = None


class Controller(Device):
    """Laser, shutter and the rest of the light path, and what the driver last set them to."""

    def __init__(self) -> None:
        super().__init__()
        self._wanted = LightState()
        self._identity: Identity | None = None

    def _do_open(self) -> None:
        self._identity = self._do_connect()

    def _do_close(self) -> None:
        # Each safety step on its own: a failed laser command must not leave the shutter open.
        try:
            try:
                self._wanted = replace(self._wanted, laser_on=False)
                self._do_set_laser(False)
            finally:
                self._wanted = replace(self._wanted, shutter_open=False)
                self._do_set_shutter(False)
        finally:
            self._do_release()

    # -- identity and state ---------------------------------------------------------------------------
    @property
    def identity(self) -> Identity:
        self._require_open()
        assert self._identity is not None
        return self._identity

    @property
    def wanted(self) -> LightState:
        """The light path as the driver last set it (a snapshot)."""
        return self._wanted

    @property
    def counters(self) -> ControllerCounters:
        """What the exchanges with the controller met (retries, garbled replies, timeouts)."""
        return self._do_counters()

    def reset(self) -> None:
        """Back to the power-on state: laser off, shutter closed, trigger internal, error queue cleared."""
        with self._lock:
            self._require_open()
            # first: a lost reply must not undo it
            self._wanted = replace(self._wanted, laser_on=False, shutter_open=False)
            self._do_reset()

    # -- laser ----------------------------------------------------------------------------------------
    def laser_on(self) -> None:
        """Switch the laser on; InterlockError if the interlock is tripped."""
        with self._lock:
            self._require_open()
            self._do_set_laser(True)
            self._wanted = replace(self._wanted, laser_on=True)

    def laser_off(self) -> None:
        """Switch the laser off."""
        with self._lock:
            self._require_open()
            self._wanted = replace(self._wanted, laser_on=False)  # first: a failed attempt is never restored to on
            self._do_set_laser(False)

    @property
    def laser_is_on(self) -> bool:
        return self._call(self._do_laser_is_on)

    @property
    def laser_power_mw(self) -> float:
        return self._call(self._do_laser_power_mw)

    @property
    def laser_power_max_mw(self) -> float:
        return self._call(self._do_laser_power_max_mw)

    def set_laser_power_mw(self, power_mw: float) -> None:
        """Set the optical power; refused before sending when outside 0..laser_power_max_mw."""
        with self._lock:
            self._require_open()
            maximum = self._do_laser_power_max_mw()
            if not (0.0 <= float(power_mw) <= maximum):
                raise ConfigurationError(f"laser power {power_mw} mW outside 0..{maximum} mW")
            self._do_set_laser_power_mw(float(power_mw))
            self._wanted = replace(self._wanted, power_mw=float(power_mw))

    # -- shutter, temperature, interlock, trigger -----------------------------------------------------
    def open_shutter(self) -> None:
        with self._lock:
            self._require_open()
            self._do_set_shutter(True)
            self._wanted = replace(self._wanted, shutter_open=True)

    def close_shutter(self) -> None:
        with self._lock:
            self._require_open()
            self._wanted = replace(self._wanted, shutter_open=False)
            self._do_set_shutter(False)

    @property
    def shutter_is_open(self) -> bool:
        return self._call(self._do_shutter_is_open)

    @property
    def temperature_c(self) -> float:
        return self._call(self._do_temperature_c)

    @property
    def interlock_ok(self) -> bool:
        return self._call(self._do_interlock_ok)

    def reset_interlock(self) -> None:
        """Re-arm the tripped interlock (refused while its cause is there). The laser stays off until
        :meth:`laser_on`: the driver never switches it back on by itself after a trip."""
        with self._lock:
            self._require_open()
            self._wanted = replace(self._wanted, laser_on=False)
            self._do_reset_interlock()

    def note_interlock_trip(self) -> None:
        """Record that the interlock tripped (the laser went off without the driver): no restore switches the
        laser back on; only the user's :meth:`laser_on` does."""
        self._wanted = replace(self._wanted, laser_on=False)

    @property
    def trigger_mode(self) -> TriggerMode:
        return self._call(self._do_trigger_mode)

    def set_trigger_mode(self, mode: TriggerMode | str) -> None:
        with self._lock:
            self._require_open()
            try:
                mode = TriggerMode(mode)
            except ValueError:
                raise ConfigurationError(
                    f"unknown trigger mode {mode!r}; use one of {[m.value for m in TriggerMode]}"
                ) from None
            self._do_set_trigger_mode(mode)

    def errors(self) -> list[tuple[int, str]]:
        """Drain the device's error queue, oldest first."""
        return self._call(self._do_errors)

    # -- the light path as the driver set it ----------------------------------------------------------
    def light_differs(self) -> bool:
        """Whether the laser or shutter is off or closed although the driver last switched it on or open
        (the device restarted without being told); reads two states from the device."""
        with self._lock:
            self._require_open()
            wanted = self._wanted
            return (wanted.laser_on is True and not self._do_laser_is_on()) or (
                wanted.shutter_open is True and not self._do_shutter_is_open()
            )

    def restore(self) -> bool:
        """Write back the light path the driver last set (:attr:`wanted`) where the device differs.

        Power first, then the laser, then the shutter, as at open. Nothing is written while the interlock is
        tripped: re-arming a safety latch is the user's decision (the next request raises InterlockError).
        Returns whether anything was written.
        """
        with self._lock:
            self._require_open()
            if not self._do_interlock_ok():
                self.note_interlock_trip()
                return False
            wanted, written = self._wanted, False
            # The device may round a setpoint: only a real difference is a lost setting.
            if wanted.power_mw is not None and not math.isclose(
                self._do_laser_power_mw(), wanted.power_mw, rel_tol=1e-3, abs_tol=1e-3
            ):
                self._do_set_laser_power_mw(wanted.power_mw)
                written = True
            if wanted.laser_on is not None and self._do_laser_is_on() != wanted.laser_on:
                self._do_set_laser(wanted.laser_on)  # InterlockError, typed, if it trips in between
                written = True
            if wanted.shutter_open is not None and self._do_shutter_is_open() != wanted.shutter_open:
                self._do_set_shutter(wanted.shutter_open)
                written = True
            if written:
                _log.warning(
                    "the controller's light path differed from what the driver set (a restart?): restored "
                    "laser %s, shutter %s, power %s mW",
                    wanted.laser_on,
                    wanted.shutter_open,
                    wanted.power_mw,
                )
            return written

    # -- hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _do_connect(self) -> Identity:
        """Hook: open the line, read the identity, check the protocol version."""

    @abstractmethod
    def _do_release(self) -> None:
        """Hook: close the line (after the light is off)."""

    @abstractmethod
    def _do_counters(self) -> ControllerCounters:
        """Hook: the exchange counters."""

    @abstractmethod
    def _do_reset(self) -> None:
        """Hook: return to the power-on state."""

    @abstractmethod
    def _do_set_laser(self, on: bool) -> None:
        """Hook: switch the laser; InterlockError when a tripped interlock refuses it."""

    @abstractmethod
    def _do_laser_is_on(self) -> bool:
        """Hook: the laser state."""

    @abstractmethod
    def _do_laser_power_mw(self) -> float:
        """Hook: the laser setpoint."""

    @abstractmethod
    def _do_laser_power_max_mw(self) -> float:
        """Hook: the largest setpoint."""

    @abstractmethod
    def _do_set_laser_power_mw(self, power_mw: float) -> None:
        """Hook: write the setpoint (already checked against the maximum)."""

    @abstractmethod
    def _do_set_shutter(self, open_: bool) -> None:
        """Hook: open or close the shutter."""

    @abstractmethod
    def _do_shutter_is_open(self) -> bool:
        """Hook: the shutter state."""

    @abstractmethod
    def _do_temperature_c(self) -> float:
        """Hook: the temperature of the medium."""

    @abstractmethod
    def _do_interlock_ok(self) -> bool:
        """Hook: whether the interlock is armed (not tripped)."""

    @abstractmethod
    def _do_reset_interlock(self) -> None:
        """Hook: re-arm the interlock (the device refuses while its cause is there)."""

    @abstractmethod
    def _do_trigger_mode(self) -> TriggerMode:
        """Hook: the trigger source."""

    @abstractmethod
    def _do_set_trigger_mode(self, mode: TriggerMode) -> None:
        """Hook: set the trigger source."""

    @abstractmethod
    def _do_errors(self) -> list[tuple[int, str]]:
        """Hook: drain the device's error queue."""
