"""Template for the driver's devices: public methods check state and log, protected hooks do the work.

A concrete device (Dmd, Camera, Controller) writes only the ``_do_*`` hooks; the checks live here once.
Devices HAVE a transport (composition); they never inherit from one.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from types import TracebackType

from ..errors import DeviceError

__all__ = ["Device"]

_log = logging.getLogger(__name__)


class Device(ABC):
    """A part of the OPU that is opened, used, and closed."""

    def __init__(self) -> None:
        self._is_open = False

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        """Connect and read what the device says about itself; idempotent."""
        if self._is_open:
            return
        _log.debug("opening %s", type(self).__name__)
        self._do_open()
        self._is_open = True

    def close(self) -> None:
        """Leave the device in a safe state and release it; idempotent, never raises for a closed device."""
        if not self._is_open:
            return
        _log.debug("closing %s", type(self).__name__)
        try:
            self._do_close()
        finally:
            self._is_open = False

    def mark_lost(self) -> None:
        """The connection is gone (a cable pulled): mark the device closed without sending anything to it, so
        that ``open`` connects afresh."""
        self._is_open = False

    def _require_open(self) -> None:
        if not self._is_open:
            raise DeviceError(f"{type(self).__name__} is not open")

    def __enter__(self):
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @abstractmethod
    def _do_open(self) -> None:
        """Hook: read identity and geometry from the device."""

    def _do_close(self) -> None:
        """Hook: put the device in a safe state. Default: nothing to do."""
