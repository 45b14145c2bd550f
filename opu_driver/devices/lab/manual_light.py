"""A light switched by hand: no line to it, so the driver tells the user what to do and remembers what it asked.

For a rig whose laser has no remote control (a key switch, a separate controller): :meth:`ManualLight.set_on`
logs, at INFO, the action the user must take; :meth:`ManualLight.is_on` returns what was last asked, not a
measurement. The power cannot be set (``max_power_mw`` is 0) nor read, and there is no interlock to read.
"""

from __future__ import annotations

import logging

from ...errors import ConfigurationError
from .parts import LightSource, LightSourceInfo

__all__ = ["ManualLight"]

_log = logging.getLogger(__name__)


class ManualLight(LightSource):
    """A light source the user switches by hand.

    Args:
        description: what the user switches, as the log messages name it (``"the 532 nm laser"``).
    """

    def __init__(self, description: str = "the laser") -> None:
        if not isinstance(description, str) or not description.strip():
            raise ConfigurationError(f"description must be a non-empty string, got {description!r}")
        self.description = description.strip()
        self._on = False

    def open(self) -> LightSourceInfo:
        """Nothing to connect to: what it is, with no settable power."""
        return LightSourceInfo(
            manufacturer="manual",
            model=f"{self.description} (switched by hand)",
            serial_number="",
            firmware_version="",
            max_power_mw=0.0,
        )

    def set_on(self, on: bool) -> None:
        """Ask the user (INFO log) to switch the light on or off, and remember it."""
        _log.info("switch %s %s by hand now", self.description, "ON" if on else "OFF")
        self._on = bool(on)

    def is_on(self) -> bool:
        """What was last asked with :meth:`set_on` (not measured: nothing reports the light's state)."""
        return self._on

    def set_power_mw(self, power_mw: float) -> None:
        """Always ConfigurationError: a hand-switched light has no power control (its max_power_mw is 0)."""
        raise ConfigurationError(
            f"the power of {self.description} cannot be set: it is switched by hand (max_power_mw is 0); "
            "set it on the laser itself"
        )

    def power_mw(self) -> float:
        """Always ConfigurationError: nothing measures a hand-switched light's power."""
        raise ConfigurationError(
            f"the power of {self.description} cannot be read: it is switched by hand; use a power meter"
        )

    def interlock_ok(self) -> bool:
        """True: there is no interlock the driver can read (the laser's own interlock acts on it directly)."""
        return True

    def close(self) -> None:
        """Ask the user to switch the light off if it was on; idempotent."""
        if self._on:
            self.set_on(False)
