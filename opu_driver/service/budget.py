"""The memory the OPU service holds for all its clients together: request payloads and results in flight.

Every PROJECT reserves its payload and result bytes (:meth:`MemoryBudget.reserve`) from its header, before the
payload is read or the result allocated; the reservation is returned when the reply is written and the device
thread no longer holds the request (:class:`Reservation` counts both holders). Requests that do not fit wait in
arrival order, each within its own deadline, so a large request is not overtaken for ever by small ones; one
that cannot fit even alone is refused at once by the caller.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable

__all__ = ["MemoryBudget", "Reservation"]

_POLL_S = 0.05  # how often a waiting reservation checks whether its client is still there


class MemoryBudget:
    """At most ``limit_bytes`` reserved at once, granted in arrival order.

    Args:
        limit_bytes: the most bytes reserved together (``ServiceLimits.max_total_bytes``).
    """

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = int(limit_bytes)
        self._held = 0
        self._peak = 0
        self._cv = threading.Condition()
        self._tickets = itertools.count()
        self._waiting: list[int] = []  # tickets of waiting reservations, in arrival order

    @property
    def held_bytes(self) -> int:
        """Bytes reserved now."""
        with self._cv:
            return self._held

    @property
    def peak_bytes(self) -> int:
        """The most bytes reserved at once since start."""
        with self._cv:
            return self._peak

    def reserve(self, nbytes: int, deadline: float, cancelled: Callable[[], bool]) -> Reservation | None:
        """Reserve ``nbytes`` (at most ``limit_bytes``), waiting behind earlier requests until ``deadline``
        (time.monotonic()) or until ``cancelled()`` is true (checked every 50 ms); None when it was not granted.
        """
        if nbytes > self.limit_bytes:
            return None
        with self._cv:
            ticket = next(self._tickets)
            self._waiting.append(ticket)
            try:
                while self._waiting[0] != ticket or self._held + nbytes > self.limit_bytes:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or cancelled():
                        return None
                    self._cv.wait(min(_POLL_S, remaining))
                self._held += nbytes
                self._peak = max(self._peak, self._held)
            finally:
                self._waiting.remove(ticket)
                self._cv.notify_all()  # the next in line may fit now (or the head left)
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._cv:
            self._held -= nbytes
            self._cv.notify_all()


class Reservation:
    """Bytes reserved from a :class:`MemoryBudget` for one request, returned when every holder has let go: the
    session (until its reply is written) and, once submitted, the device thread (until it drops the request)."""

    def __init__(self, budget: MemoryBudget, nbytes: int) -> None:
        self.nbytes = nbytes
        self._budget = budget
        self._holders = 1
        self._lock = threading.Lock()

    def hold(self) -> None:
        """One more holder (the device thread, when the request is submitted)."""
        with self._lock:
            if self._holders == 0:
                raise RuntimeError("this reservation was already returned")
            self._holders += 1

    def release(self) -> None:
        """A holder lets go; the bytes go back to the budget when the last one does. Extra calls are no-ops."""
        with self._lock:
            if self._holders == 0:
                return
            self._holders -= 1
            last = self._holders == 0
        if last:
            self._budget._release(self.nbytes)
