"""What the OPU service accepts and what it counts: :class:`ServiceLimits` (sizes, rates and timeouts, checked
before anything is opened) and :class:`ServiceStats` (counters since start), kept by :class:`StatsCounter`, which
every service thread increments."""
from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields

import numpy as np

from ..errors import ConfigurationError

__all__ = ["ServiceLimits", "ServiceStats", "StatsCounter"]


@dataclass(frozen=True)
class ServiceLimits:
    """What the service accepts, and how long it waits.

    Attributes:
        max_clients: authenticated clients (HELLO accepted) served at once; more are refused with an ERROR
            "TooManyClients" (clients retry it with their backoff).
        max_pending_connections: connections still in their handshake (not counted in max_clients); when this
            pool is full a new connection evicts the oldest one.
        max_batch: vectors per request (a client's own max_batch is lowered to this at HELLO).
        max_message_bytes: a request's payload limit (refused from the length field, before allocation); once
            a connection's n_features is known its limit is max_batch x n_features x 8 bytes.
        max_header_bytes: a message's JSON header limit.
        max_device_rows: vectors (before bit planes) coalesced into one device call, at least one request.
        max_device_bytes: working memory of one device call, frames x (n_features + 1 + 4 x n_components) bytes
            (opu_driver.linear.call_bytes); coalesced requests are split across calls to stay within it.
        hello_timeout_s: a new connection must complete its HELLO within this (a total deadline).
        idle_timeout_s: a connection with no message for this long is closed (clients reconnect transparently).
        message_timeout_s: once a message's first byte came, the rest must come within this.
        request_timeout_s: the longest a request waits for the device before an ERROR "RequestTimeoutError".
        send_timeout_s: the longest a reply may take to write (a client that does not read is dropped).
        max_requests_per_s: each connection's request rate (at least 1), paced by a token bucket that holds
            one second's worth: a request that comes faster is held before it is served, and its client, waiting
            for the reply, sends its next one later; it is not refused. A device call takes milliseconds, so a
            client bound by the device never reaches the default; a flood of empty or refused requests does.
    """

    max_clients: int = 32
    max_pending_connections: int = 16
    max_batch: int = 4096
    max_message_bytes: int = 128 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    max_device_rows: int = 65_536
    max_device_bytes: int = 256 * 1024 * 1024
    hello_timeout_s: float = 5.0
    idle_timeout_s: float = 600.0
    message_timeout_s: float = 10.0
    request_timeout_s: float = 300.0
    send_timeout_s: float = 30.0
    max_requests_per_s: float = 1000.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_s"):
                ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
                      and 0 < value < float("inf"))
                if ok:
                    object.__setattr__(self, f.name, float(value))
            else:  # counts and byte sizes: integers only (2.0 would fail later, after the device was opened)
                ok = not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value > 0
                if ok:
                    object.__setattr__(self, f.name, int(value))
            if not ok:
                kind = "a finite number > 0" if f.name.endswith("_s") else "an integer > 0"
                raise ConfigurationError(f"{f.name} must be {kind}, got {value!r}")
        if self.max_requests_per_s < 1:  # slower pacing would hold a request past a client's timeout
            raise ConfigurationError(f"max_requests_per_s must be >= 1, got {self.max_requests_per_s!r}")


@dataclass(frozen=True)
class ServiceStats:
    """Counters since start (a snapshot)."""

    connections_accepted: int = 0
    connections_refused: int = 0
    clients_connected: int = 0
    requests: int = 0
    vectors: int = 0
    device_calls: int = 0
    request_errors: int = 0
    protocol_errors: int = 0
    requests_abandoned: int = 0
    connections_evicted: int = 0
    requests_paced: int = 0


class StatsCounter:
    """The service's counters, shared by its threads: each ``count`` is applied atomically, and ``snapshot``
    returns an immutable :class:`ServiceStats` (so a reader never sees a half-applied update)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stats = ServiceStats()

    def count(self, **increments: int) -> None:
        """Add each increment to the counter of that name (``count(requests=1, request_errors=1)``)."""
        with self._lock:
            values = asdict(self._stats)
            for name, delta in increments.items():
                values[name] += delta
            self._stats = ServiceStats(**values)

    def snapshot(self) -> ServiceStats:
        """The counters now."""
        with self._lock:
            return self._stats
