"""The one retry engine: a device operation run again after a fault that can only have lost or spoilt data.

Both the frame sequences (:class:`~opu_driver.acquisition.SequenceRunner`) and the Opu's preparation of a
request (layout upload, camera region) run through :func:`run_with_retries`, so every retried operation follows
the same rules: which faults are retried, the backoff, the deadline, reconnecting after an unplug, restoring the
device state before the next attempt, and the counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import (
    CommunicationTimeoutError,
    ConnectionLostError,
    CorruptPacketError,
    DeviceResetError,
    DroppedFramesError,
    ProtocolError,
    StallError,
)

__all__ = ["RetryPolicy", "RETRYABLE", "CLEARED", "CLEARED_IN_A_ROW", "run_with_retries", "count_fault"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

RETRYABLE: tuple[type[Exception], ...] = (
    CommunicationTimeoutError,
    ProtocolError,
    DroppedFramesError,
    StallError,
    DeviceResetError,
)
"""Faults that can only have lost or spoilt camera frames or an idempotent write, never changed what the device
displays: a retry after abort, drain and restore is safe. Refusals, interlock trips and interrupts are never
retried; a lost connection is retried only by reconnecting."""

CLEARED: tuple[type[Exception], ...] = (StallError, DeviceResetError)
"""Faults the driver identifies and clears: a stalled pipe (its halt cleared), a device reset (its state written
back). An attempt ended by one is not a failed attempt, unless they come ``CLEARED_IN_A_ROW`` times in a row."""

CLEARED_IN_A_ROW = 3
"""Cleared faults one after another, with nothing brought back between, that make the last one count against
``retries``: a pipe that stalls again at once, or a device that resets at every start, is no passing fault."""


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed operation is run again (``OpuSettings.retries``, ``retry_backoff_s``, ``reconnect_timeout_s``).

    Before a retry the device is recovered (abort, drain, halts cleared), the caller's state restored (layout,
    camera settings, light path), and only what is still missing is re-run, with fresh frame ids: a late frame of
    an earlier attempt can never fill a slot.

    Attributes:
        retries: attempts after the first one; 0 makes the first fault raise.
        backoff_s: wait before the first retry, doubled for each further one.
        max_backoff_s: the longest wait between two attempts.
        reconnect_timeout_s: how long a retry after a lost connection (unplug) waits for the device to come
            back before ConnectionLostError is raised; 0 never reconnects (the loss raises at once).
    """

    retries: int = 0
    backoff_s: float = 0.01
    max_backoff_s: float = 0.5
    reconnect_timeout_s: float = 0.0

    def wait_s(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        return min(self.max_backoff_s, self.backoff_s * 2.0 ** (attempt - 1))

    def total_wait_s(self) -> float:
        """The backoff of every retry together (for a call's deadline)."""
        return sum(self.wait_s(k) for k in range(1, self.retries + 1))


def count_fault(tally: Any, exc: BaseException) -> None:
    """Count a retryable fault by its type in the runner's tally."""
    if isinstance(exc, CommunicationTimeoutError):
        tally.timeouts += 1
    elif isinstance(exc, StallError):
        tally.stalls += 1
    elif isinstance(exc, CorruptPacketError):
        tally.corrupt_packets += 1


def run_with_retries(
    policy: RetryPolicy,
    attempt: Callable[[], _T],
    *,
    tally: Any,
    recover: Callable[[], None],
    restore: Callable[[], None] | None = None,
    reconnect: Callable[[], None] | None = None,
    deadline: float | None = None,
    complete: Callable[[], bool] = lambda: False,
    missing: Callable[[], int] = lambda: 0,
    progress: Callable[[], int] = lambda: 0,
    what: str = "the operation",
) -> _T | None:
    """Run ``attempt()`` until it returns, retrying faults of :data:`RETRYABLE` as ``policy`` allows.

    Args:
        attempt: one try; it may have done part of the work before failing (``complete`` and ``missing`` say how
            much is left, so the next try does only that).
        tally: the counters to count in (retries, faults, reconnects, requests recovered or failed).
        recover: abort, drain and clear halts after a fault; must not raise.
        restore: put back what a device reset loses, before the next attempt (part of that attempt: a fault in it
            is retried like one in the attempt) and, quietly, after a final failure.
        reconnect: reopen the same device after ConnectionLostError (within ``policy.reconnect_timeout_s``, else it
            raises); None, or a policy without reconnect time, lets the loss raise at once.
        deadline: a ``time.monotonic()`` time after which no further backoff wait starts.
        complete: whether every result is in although the attempt failed (only flush frames were lost): the
            engine then recovers and returns None without a retry.
        missing: how many results are still missing (frames), for the counters and the log.
        progress: how many results are in so far. A failed attempt that brought results does not count against
            ``policy.retries`` (it is still counted in ``retries`` and bounded by ``deadline``): the budget is for
            attempts that made no progress, so a long sequence survives as many scattered faults as it meets. Nor does
            one ended by a fault of :data:`CLEARED` (``recover`` clears a halt, ``restore`` what a reset lost),
            unless it is the ``CLEARED_IN_A_ROW``-th in a row.
        what: what is retried, for the log ("the sequence", "loading the layout").

    Returns:
        what ``attempt`` returned, or None when ``complete()`` said so after a fault.
    """
    tries = 0  # attempts that failed without bringing results: what policy.retries bounds
    cleared_row = 0  # attempts ended by a cleared fault, in a row
    reruns = 0  # every attempt after the first
    needs_restore = False
    try:
        while True:
            results_before = progress()
            try:
                if needs_restore and restore is not None:
                    restore()
                needs_restore = False
                result = attempt()
            except ConnectionLostError as exc:
                if reconnect is None or policy.reconnect_timeout_s <= 0 or tries >= policy.retries:
                    raise
                tries += 1
                reruns += 1
                lost = missing()
                tally.frames_missing += lost
                _log.warning(
                    "connection lost during %s (%s); waiting up to %.3g s for the device to come back, "
                    "then running again what is missing (%d frames; retry %d of %d)",
                    what,
                    exc,
                    policy.reconnect_timeout_s,
                    lost,
                    tries,
                    policy.retries,
                )
                reconnect()  # raises ConnectionLostError or DeviceNotFoundError when it does not come back
                tally.reconnects += 1
                tally.retries += 1
                _log.info("reconnected to the device; restoring its state")
                recover()
                if complete():  # only flush frames were lost: put the state back and the work is done
                    if restore is not None:
                        restore()
                    tally.requests_recovered += 1
                    return None
                needs_restore = True
                tally.frames_resent += lost
                continue
            except RETRYABLE as exc:
                lost = missing()
                tally.frames_missing += lost
                count_fault(tally, exc)
                if complete():
                    _log.info(
                        "%s after every result of %s arrived (%s): recovering without a retry",
                        type(exc).__name__,
                        what,
                        exc,
                    )
                    recover()
                    _restore_quietly(restore, exc)  # it may have been a reset: leave the device ready
                    tally.requests_recovered += 1
                    return None
                progressed = policy.retries > 0 and progress() > results_before
                cleared_row = cleared_row + 1 if isinstance(exc, CLEARED) and not progressed else 0
                cleared = policy.retries > 0 and 0 < cleared_row < CLEARED_IN_A_ROW
                wait_s = 0.0 if progressed or cleared else policy.wait_s(tries + 1)
                if (tries >= policy.retries and not (progressed or cleared)) or (
                    deadline is not None and time.monotonic() + wait_s >= deadline
                ):
                    raise
                if not (progressed or cleared):
                    tries += 1
                reruns += 1
                tally.retries += 1
                _log.warning(
                    "%s of %s after %s: %s%s",
                    "re-run (the attempt brought results)"
                    if progressed
                    else "re-run (a cleared fault)"
                    if cleared
                    else f"retry {tries} of {policy.retries}",
                    what,
                    type(exc).__name__,
                    exc,
                    f"; re-running the {lost} frames still missing" if lost else "",
                )
                recover()
                time.sleep(wait_s)
                needs_restore = True
                tally.frames_resent += lost
                continue
            if reruns:
                tally.requests_recovered += 1
                _log.info("%s recovered after %d re-runs", what, reruns)
            return result
    except BaseException as exc:
        recover()
        if isinstance(exc, RETRYABLE):
            tally.requests_failed += 1
            # The fault may have been a reset: leave the device as the next request expects it.
            _restore_quietly(restore, exc)
        raise


def _restore_quietly(restore: Callable[[], None] | None, cause: BaseException) -> None:
    """Put the device state back after a fault; a failure is logged (the next request checks again)."""
    if restore is None:
        return
    try:
        restore()
    except Exception as restore_exc:
        _log.warning("could not restore the device state after %s: %s", type(cause).__name__, restore_exc)
