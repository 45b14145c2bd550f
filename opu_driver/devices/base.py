"""Template for the driver's devices: public methods check state, lock and log; protected hooks do the work.

A backend (protocol v1 today; ALP, DLPC900 or GenICam tomorrow) writes only the ``_do_*`` hooks of the interfaces
in :mod:`opu_driver.devices`; the checks, the locking and the logging live here once. Devices HAVE a transport
(composition); they never inherit from one.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from ..errors import DeviceError

__all__ = ["Device"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Device(ABC):
    """A part of the OPU that is opened, used, and closed.

    Every public call of a device runs under the device's own lock (re-entrant), so two threads never interleave
    their exchanges with one part; the Opu holds its own lock above that for whole requests.
    """

    def __init__(self) -> None:
        self._is_open = False
        self._lock = threading.RLock()

    @property
    def is_open(self) -> bool:
        return self._is_open

    def open(self) -> None:
        """Connect and read what the device says about itself; idempotent."""
        with self._lock:
            if self._is_open:
                return
            _log.debug("opening %s", type(self).__name__)
            self._do_open()
            self._is_open = True

    def close(self) -> None:
        """Leave the device in a safe state and release it; idempotent, never raises for a closed device."""
        with self._lock:
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

    def _call(self, hook: Callable[..., _T], *args: object) -> _T:
        """Run a hook for a public method: the device must be open, and the call holds the device's lock."""
        with self._lock:
            self._require_open()
            return hook(*args)

    def __enter__(self) -> Device:
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
        """Hook: connect, read identity and geometry from the device."""

    def _do_close(self) -> None:  # noqa: B027 - an optional hook: a device with nothing to release keeps it
        """Hook: put the device in a safe state and release it. Default: nothing to do."""
