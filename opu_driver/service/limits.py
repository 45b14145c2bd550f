"""What the OPU service accepts and what it counts: :class:`ServiceLimits` (sizes, rates and timeouts, checked
before anything is opened) and :class:`ServiceStats` (counters since start), kept by :class:`StatsCounter`, which
every service thread increments."""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass

from ..validation import Validated, setting

__all__ = ["ServiceLimits", "ServiceStats", "StatsCounter"]


@dataclass(frozen=True)
class ServiceLimits(Validated):
    """What the service accepts, and how long it waits.

    Counts and byte sizes are integers >= 1 (a float such as 2.0 is refused here rather than failing after the
    device was opened), times finite numbers > 0; anything else is a ``ConfigurationError`` naming the field.

    Attributes:
        max_clients: authenticated clients (HELLO accepted) served at once; more are refused with an ERROR
            "TooManyClients" (clients retry it with their backoff).
        max_pending_connections: connections still in their handshake (not counted in max_clients); when this
            pool is full a new connection evicts the oldest one.
        max_batch: vectors per request (a client's own max_batch is lowered to this at HELLO).
        max_message_bytes: a request's payload limit (refused from the length field, before allocation); once
            a connection's n_features is known its limit is max_batch x n_features x 8 bytes.
        max_result_bytes: a request's result limit, batch x n_components x 4 bytes (float32): a larger request is
            refused from its header with an ERROR "RequestTooLarge", before any work or allocation.
        max_total_bytes: the memory the service holds for all clients together, payloads and results in flight.
            Each request reserves its payload and result bytes from its header; one that does not fit waits (in
            arrival order, within request_timeout_s) and is then refused with an ERROR "ServiceBusy"; one that
            could never fit is refused at once ("RequestTooLarge").
        max_header_bytes: a message's JSON header limit.
        max_device_rows: vectors (before bit planes) coalesced into one device call, at least one request.
        max_device_bytes: working memory of one device call, frames x (n_features + 1 + 4 x n_components) bytes
            (opu_driver.opu.call_bytes); coalesced requests are split across calls to stay within it.
        device_call_s: the device time one call aims at (its frames x the camera's frame time): a longer request
            is split into calls of about this, between which an abandoned request stops and the other clients'
            requests get their turn.
        hello_timeout_s: a new connection must complete its HELLO within this (a total deadline).
        idle_timeout_s: a connection with no message for this long is closed (clients reconnect transparently).
        idle_grace_s: when max_clients clients are connected, a new authenticated client takes the slot of the
            connection idle longest, if it has been idle longer than this (its client reconnects on its next
            request, transparently while a slot is free).
        auth_failure_delay_s: the longest delay a client address earns with failed token attempts: each failure
            doubles it (from 10 ms), and every HELLO from that address waits it out before its token is checked.
        message_timeout_s: once a message's first byte came, the rest must come within this.
        request_timeout_s: the longest a request waits for the device before an ERROR "RequestTimeoutError".
        send_timeout_s: the longest a reply may take to write (a client that does not read is dropped).
        max_requests_per_s: each connection's request rate (at least 1), paced by a token bucket that holds
            one second's worth: a request that comes faster is held before it is served, and its client, waiting
            for the reply, sends its next one later; it is not refused. A device call takes milliseconds, so a
            client bound by the device never reaches the default; a flood of empty or refused requests does.
    """

    max_clients: int = setting(32, kind="int", low=1)
    max_pending_connections: int = setting(16, kind="int", low=1)
    max_batch: int = setting(4096, kind="int", low=1)
    max_message_bytes: int = setting(128 * 1024 * 1024, kind="int", low=1)
    max_result_bytes: int = setting(256 * 1024 * 1024, kind="int", low=1)
    max_total_bytes: int = setting(1024 * 1024 * 1024, kind="int", low=1)
    max_header_bytes: int = setting(16 * 1024, kind="int", low=1)
    max_device_rows: int = setting(65_536, kind="int", low=1)
    max_device_bytes: int = setting(256 * 1024 * 1024, kind="int", low=1)
    device_call_s: float = setting(1.0, kind="number", low=0, low_open=True)
    hello_timeout_s: float = setting(5.0, kind="number", low=0, low_open=True)
    idle_timeout_s: float = setting(600.0, kind="number", low=0, low_open=True)
    idle_grace_s: float = setting(10.0, kind="number", low=0, low_open=True)
    auth_failure_delay_s: float = setting(1.0, kind="number", low=0, low_open=True)
    message_timeout_s: float = setting(10.0, kind="number", low=0, low_open=True)
    request_timeout_s: float = setting(300.0, kind="number", low=0, low_open=True)
    send_timeout_s: float = setting(30.0, kind="number", low=0, low_open=True)
    # at least 1: slower pacing would hold a request past a client's timeout
    max_requests_per_s: float = setting(1000.0, kind="number", low=1)


@dataclass(frozen=True)
class ServiceStats:
    """Counters since start (a snapshot). ``bytes_held`` and ``bytes_held_peak`` are the memory reserved for
    requests now and at most since start (payloads and results, bounded by ``max_total_bytes``)."""

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
    requests_too_large: int = 0
    requests_waited_for_memory: int = 0
    requests_refused_busy: int = 0
    clients_evicted_idle: int = 0
    auth_failures: int = 0
    auth_delayed: int = 0
    bytes_held: int = 0
    bytes_held_peak: int = 0


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
