"""Failed token attempts: each address that presents a wrong token waits longer before its next HELLO is checked,
and the failures are logged as one summary line per period instead of one warning each.

The delay grows with the address's recent failures (10 ms, doubling, capped at ``max_delay_s``) and applies to
every HELLO from that address, wrong or right, so a guesser cannot check tokens faster by opening connections in
parallel: at most about ``max_pending_connections`` guesses per ``max_delay_s``, instead of a thousand a second. An
address's count is forgotten after a quiet minute. At most ``_MAX_ADDRESSES`` addresses are remembered (the one
quiet longest makes room), so a flood of addresses cannot grow the table.
"""

from __future__ import annotations

import collections
import logging
import threading
import time

__all__ = ["AuthThrottle"]

_log = logging.getLogger("opu_driver.service")

_FIRST_DELAY_S = 0.01
_FORGET_AFTER_S = 60.0  # an address's failures are forgotten after this long without one
_MAX_ADDRESSES = 4096
LOG_PERIOD_S = 60.0
"""Failed attempts are logged once per period: the first at once, the rest as one summary line."""


class _Record:
    __slots__ = ("failures", "last_s", "blocked_until")

    def __init__(self) -> None:
        self.failures = 0
        self.last_s = 0.0
        self.blocked_until = 0.0


class AuthThrottle:
    """The failed-token record of each client address, and the summary log of failures.

    Args:
        max_delay_s: the longest an address waits before its next HELLO is checked
            (``ServiceLimits.auth_failure_delay_s``).
    """

    def __init__(self, max_delay_s: float) -> None:
        self.max_delay_s = float(max_delay_s)
        self._lock = threading.Lock()
        self._records: collections.OrderedDict[str, _Record] = collections.OrderedDict()
        self._period_start = 0.0
        self._period_failures = 0
        self._period_addresses: set[str] = set()

    def wait_s(self, address: str) -> float:
        """How long a HELLO from ``address`` must wait before its token is checked (0 when it need not)."""
        with self._lock:
            record = self._records.get(address)
            return 0.0 if record is None else max(0.0, record.blocked_until - time.monotonic())

    def failed(self, address: str) -> None:
        """A wrong token from ``address``: count it, delay that address's next check, log (summarised)."""
        now = time.monotonic()
        with self._lock:
            record = self._records.pop(address, None) or _Record()
            if now - record.last_s > _FORGET_AFTER_S:
                record.failures = 0
            record.failures += 1
            record.last_s = now
            delay_s = min(self.max_delay_s, _FIRST_DELAY_S * 2 ** min(record.failures - 1, 30))
            record.blocked_until = max(record.blocked_until, now + delay_s)
            self._records[address] = record  # most recent last
            while len(self._records) > _MAX_ADDRESSES:
                self._records.popitem(last=False)
            first_of_period = self._period_failures == 0
            if first_of_period:
                self._period_start = now
            self._period_failures += 1
            self._period_addresses.add(address)
            if len(self._period_addresses) > _MAX_ADDRESSES:
                self._period_addresses.pop()
        if first_of_period:
            _log.warning(
                "a client at %s presented a wrong token; further failures are summarised every %.0f s",
                address,
                LOG_PERIOD_S,
            )
        self.flush(force=False)

    def flush(self, force: bool = True) -> None:
        """Log the period's summary when it is over (or now with ``force``: at stop), then start a new one."""
        with self._lock:
            due = self._period_failures > 0 and (force or time.monotonic() - self._period_start >= LOG_PERIOD_S)
            if not due:
                return
            failures, addresses = self._period_failures, len(self._period_addresses)
            elapsed_s = time.monotonic() - self._period_start
            self._period_failures = 0
            self._period_addresses = set()
        if failures > 1:  # a single failure was logged when it happened
            _log.warning(
                "%d failed token attempt(s) from %d address(es) in the last %.0f s (each address delayed up to "
                "%.3g s per attempt)",
                failures,
                addresses,
                elapsed_s,
                self.max_delay_s,
            )
