"""The OPU service: one device, several clients, concurrent requests coalesced into device calls.

This module is the service's lifecycle and its connections: :class:`OpuService` opens the device, listens,
accepts connections into a bounded pool and stops cleanly. Each connection is served on a thread of its own by a
``session.Session`` (handshake, requests, replies); the only thread that touches the Opu is the scheduler's device
thread (``scheduler``), which coalesces pending requests into device calls; what is read of the device at start,
its fingerprint included, is in ``fingerprint``; the limits and counters are in ``limits``.

Bounds: only clients that completed their HELLO (token checked) count toward ``max_clients``; connections still
in their handshake form a small separate pool (``max_pending_connections``, the oldest evicted when it is full)
with a total deadline, so silent sockets cannot take the slots; and when the clients are full, a new
authenticated client takes the slot of the connection idle longest (beyond ``idle_grace_s``), so idle
connections cannot keep an active client out either.

The message format is dfa_client.wire (docs/service.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import socket
import ssl
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from dfa_client.security import TokenFileError, default_token_path, is_loopback, load_or_create_token

from ..errors import ConfigurationError
from ..opu import Opu
from .auth import AuthThrottle
from .budget import MemoryBudget
from .fingerprint import ServedDevice, read_served_device
from .limits import ServiceLimits, ServiceStats, StatsCounter
from .scheduler import Scheduler
from .session import Connection, ServiceContext, Session

__all__ = ["OpuService", "is_loopback", "TOO_MANY_CLIENTS_KIND"]

_log = logging.getLogger(__name__)

TOO_MANY_CLIENTS_KIND = "TooManyClients"
"""ERROR kind of a HELLO refused because max_clients clients are served (clients retry it with their backoff)."""


class OpuService:
    """Serve one OPU's linear projections to several clients over TCP (protocol: docs/service.md).

    Args:
        url: the device, opened with ``opu_driver.open(url, **opu_settings)`` at start (unless ``opu`` is given).
        bind: (host, port) to listen on; port 0 picks a free one (see ``address``). Loopback by default.
        token: the shared secret clients must present. None (the default): the token in ``token_file``, made
            with a fresh random token at the first start (see dfa_client.security). ``""``: no token at all, for
            tests and local use on a loopback bind only.
        token_file: where the token is kept when ``token`` is None (default:
            ``dfa_client.security.default_token_path()``, where local clients look for it).
        tls_cert, tls_key: PEM files of the service's certificate (chain) and private key: clients then connect
            with ``tcps://`` and everything, the token first, travels encrypted. ``tls_key`` may be omitted when
            the certificate file holds the key too.
        allow_cleartext: allow a non-loopback bind without TLS (the token and the data then cross the network in
            clear: for a network that is trusted or encrypted otherwise, a VPN say).
        opu: an already open Opu to serve instead of opening ``url`` (then it is not closed by stop()).
        opu_settings: opu_driver.open settings (pixel_format, exposure_us, ...).
        **limits: fields of :class:`ServiceLimits` (max_clients, max_batch, max_message_bytes, ...).

    Raises:
        ConfigurationError: bad limits, a blank token, no token on a non-loopback bind, a non-loopback bind without
            TLS (unless allow_cleartext), TLS files that cannot be loaded (nothing opened). At start, a token file
            that cannot be read or made or that other users may read (before the device is opened).
    """

    def __init__(
        self,
        url: str,
        bind: tuple[str, int] = ("127.0.0.1", 0),
        token: str | None = None,
        *,
        token_file: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        allow_cleartext: bool = False,
        opu: Opu | None = None,
        opu_settings: dict[str, Any] | None = None,
        **limits: Any,
    ) -> None:
        try:
            self.limits = ServiceLimits(**limits)
        except TypeError as exc:
            raise ConfigurationError(
                f"unknown service limit: {exc}; known: {', '.join(f.name for f in dataclasses.fields(ServiceLimits))}"
            ) from None
        if not (
            isinstance(bind, tuple)
            and len(bind) == 2
            and isinstance(bind[0], str)
            and isinstance(bind[1], int)
            and 0 <= bind[1] <= 65535
        ):
            raise ConfigurationError(f"bind must be (host, port), got {bind!r}")
        loopback = is_loopback(bind[0])
        if token is not None and (not isinstance(token, str) or (token and not token.strip())):
            raise ConfigurationError("token must be a non-blank string, None (the token file) or '' (no token)")
        if token is not None and token_file is not None:
            raise ConfigurationError("give a token or a token_file, not both")
        if token == "" and not loopback:
            raise ConfigurationError(
                f"binding to {bind[0]!r} (not loopback) needs a token: anyone who can reach "
                "the port could otherwise use the device"
            )
        if not isinstance(allow_cleartext, bool):
            raise ConfigurationError(f"allow_cleartext must be True or False, got {allow_cleartext!r}")
        self._tls = _server_tls_context(tls_cert, tls_key)
        if self._tls is None and not loopback and not allow_cleartext:
            raise ConfigurationError(
                f"binding to {bind[0]!r} (not loopback) needs TLS (tls_cert and tls_key; clients use tcps://): "
                "the token would cross the network in clear. allow_cleartext=True (opu serve --allow-cleartext) "
                "accepts that, for a network trusted or encrypted otherwise"
            )
        self.url = url
        self.bind = bind
        self._given_token = token
        self._token_file = None if token is not None else Path(token_file or default_token_path())
        self._token: bytes | None = None
        self._opu = opu
        self._owns_opu = opu is None
        self._opu_settings = dict(opu_settings or {})
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: dict[int, Connection] = {}
        self._connections_lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._stats = StatsCounter()
        self._scheduler = Scheduler(self.limits, self._stats)
        self._budget = MemoryBudget(self.limits.max_total_bytes)
        self._throttle = AuthThrottle(self.limits.auth_failure_delay_s)
        self._started = False
        self._stopped = threading.Event()
        self._device: ServedDevice | None = None
        self._context: ServiceContext | None = None

    @property
    def token_file(self) -> Path | None:
        """The file the token comes from (None when it was given, or for no token)."""
        return self._token_file

    @property
    def tls(self) -> bool:
        """Whether clients connect with TLS (``tcps://``)."""
        return self._tls is not None

    def _resolve_token(self) -> None:
        """The token clients must present: the one given, none (""), or the token file's (made now if absent)."""
        if self._given_token is not None:
            self._token = self._given_token.encode("utf-8") if self._given_token else None
            return
        assert self._token_file is not None
        try:
            token, created = load_or_create_token(self._token_file)
        except TokenFileError as exc:
            raise ConfigurationError(str(exc)) from None
        if created:
            _log.info("made a new service token in %s (mode 0600); local clients read it there", self._token_file)
        self._token = token.encode("utf-8")

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> OpuService:
        """Find or make the token, open the device, listen, and serve in background threads; returns self.

        Raises:
            ConfigurationError: the token file cannot be used. OpuError: the device cannot be opened. OSError: the
                address cannot be bound.
        """
        if self._started:
            raise ConfigurationError("this service was already started")
        self._resolve_token()  # before the device is opened: a bad token file costs nothing
        self._started = True
        if self._opu is None:
            import opu_driver

            self._opu = opu_driver.open(self.url, **self._opu_settings)
        try:
            self._device = device = read_served_device(self._opu)
            self._context = ServiceContext(
                self.limits,
                self._token,
                device,
                self._scheduler,
                self._stats,
                self._throttle,
                self._budget,
                self._admit,
                self._tls,
            )
            family = socket.AF_INET6 if ":" in self.bind[0] else socket.AF_INET
            listener = socket.socket(family, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(self.bind)
            listener.listen(min(128, 2 * self.limits.max_clients + self.limits.max_pending_connections))
            listener.settimeout(0.1)  # the acceptor polls, so stop() needs no trick to wake it
            self._listener = listener
        except BaseException:
            self._close_device()
            raise
        self._threads = [
            threading.Thread(
                target=self._scheduler.run,
                args=(self._opu, device.frame_time_us),
                name="opu-service-device",
                daemon=True,
            ),
            threading.Thread(target=self._accept_loop, name="opu-service-accept", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        _log.info("serving %s (%s %s) on %s:%d", self.url, device.model, device.serial_number, *self.address[:2])
        return self

    @property
    def address(self) -> tuple[str, int]:
        """The (host, port) the service listens on (the real port when bound to port 0)."""
        if self._listener is None:
            raise ConfigurationError("the service is not started")
        host, port = self._listener.getsockname()[:2]
        return host, port

    @property
    def opu(self) -> Any:
        """The served Opu (None before start)."""
        return self._opu

    @property
    def running(self) -> bool:
        """Whether the service was started and has not finished stopping."""
        return self._started and not self._stopped.is_set()

    def serve_forever(self, poll_s: float = 0.5) -> None:
        """Start if needed and block until stop() (from another thread or a signal handler) has finished.
        Ctrl-C here stops the service cleanly."""
        if not self._started:
            self.start()
        try:
            while not self._stopped.wait(poll_s):
                pass
        except KeyboardInterrupt:
            self.stop()

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Stop accepting, finish the device call in progress (its requests are answered), fail queued requests
        with an ERROR "ServiceShutdown", close the connections, then close the device (if the service opened
        it). Returns whether every thread ended within ``timeout_s``. Safe to call twice."""
        deadline = time.monotonic() + timeout_s
        if not self._scheduler.stop():  # stopping already: wait for that stop to finish
            self._stopped.wait(timeout_s)
            return self._stopped.is_set()
        clean = True
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            clean &= not thread.is_alive()
        if self._listener is not None:
            self._listener.close()
        # Idle connections are woken now; busy ones write their reply (a result or ServiceShutdown) and close.
        with self._connections_lock:
            connections = list(self._connections.values())
        for conn in connections:
            with conn.lock:
                if not conn.busy:
                    conn.shutdown()
        for conn in connections:
            if conn.thread is not None:
                conn.thread.join(max(0.0, deadline - time.monotonic()))
                if conn.thread.is_alive():
                    conn.shutdown()
                    clean = False
        self._close_device()
        self._throttle.flush()
        self._stopped.set()
        _log.info("service stopped: %s", self.stats())
        return clean

    def _close_device(self) -> None:
        if self._owns_opu and self._opu is not None:
            try:
                self._opu.close()
            except Exception:  # closing must not raise
                _log.exception("closing the device failed")

    def __enter__(self) -> OpuService:
        if not self._started:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- control and counters -------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop handing requests to the device; they queue until resume() (maintenance, and tests of
        coalescing: requests sent while paused share one device call)."""
        self._scheduler.pause()

    def resume(self) -> None:
        """Hand queued requests to the device again."""
        self._scheduler.resume()

    @property
    def pending(self) -> int:
        """Requests waiting for the device."""
        return self._scheduler.pending

    def stats(self) -> ServiceStats:
        """The counters since start (a snapshot), with the memory held for requests now and at most."""
        return dataclasses.replace(
            self._stats.snapshot(), bytes_held=self._budget.held_bytes, bytes_held_peak=self._budget.peak_bytes
        )

    # -- connections ----------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._scheduler.stopping:
            self._throttle.flush(force=False)  # the failed-token summary, once per period
            try:
                sock, peer = self._listener.accept()
            except (TimeoutError, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._scheduler.stopping:
                    return
                _log.exception("accept failed")
                time.sleep(0.1)
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Every connection is accepted into the handshake pool; when the pool is full the oldest connection
            # still in its handshake makes room (a flood of silent sockets cannot keep a real client out, and
            # authenticated clients are never evicted).
            conn = Connection(next(self._numbers), sock, peer)
            evicted = None
            with self._connections_lock:
                pending = [c for c in self._connections.values() if not c.authenticated and not c.evicted]
                if len(pending) >= self.limits.max_pending_connections:
                    evicted = pending[0]
                    evicted.evicted = True
                self._connections[conn.number] = conn
            if evicted is not None:
                self._stats.count(connections_evicted=1)
                _log.warning("evicted %s (still in its handshake) to make room for %s", evicted.peer, peer)
                evicted.shutdown()
            self._stats.count(connections_accepted=1)
            conn.thread = threading.Thread(
                target=self._serve_connection, args=(conn,), name=f"opu-service-client-{conn.number}", daemon=True
            )
            conn.thread.start()

    def _serve_connection(self, conn: Connection) -> None:
        """A connection's thread: its session, then its removal from the pool."""
        assert self._context is not None
        try:
            Session(conn, self._context).run()
        finally:
            with self._connections_lock:
                self._connections.pop(conn.number, None)
                was_client = conn.authenticated
                conn.authenticated = False
            if was_client:
                self._stats.count(clients_connected=-1)

    def _admit(self, conn: Connection) -> tuple[str, str] | None:
        """Move an accepted HELLO's connection from the handshake pool to the clients; when max_clients clients
        are served, take the slot of the one idle longest (beyond idle_grace_s), else refuse (or when the
        connection was evicted meanwhile)."""
        victim: Connection | None = None
        with self._connections_lock:
            if conn.evicted:
                return TOO_MANY_CLIENTS_KIND, "the connection was evicted from the handshake pool"
            clients = [c for c in self._connections.values() if c.authenticated]
            if len(clients) >= self.limits.max_clients:
                victim = self._idle_longest(clients)
                if victim is None:
                    self._stats.count(connections_refused=1)
                    _log.warning(
                        "refused client %d (%s): %d clients already connected, none idle for %.3g s",
                        conn.number,
                        conn.peer,
                        len(clients),
                        self.limits.idle_grace_s,
                    )
                    return TOO_MANY_CLIENTS_KIND, (
                        f"the service already serves {self.limits.max_clients} clients, none of them idle"
                    )
                victim.authenticated = False  # its slot is conn's from now on
            conn.authenticated = True
        if victim is not None:
            self._stats.count(clients_evicted_idle=1, clients_connected=-1)
            _log.info(
                "closed idle client %d (%s) to admit client %d (%s)", victim.number, victim.peer, conn.number, conn.peer
            )
            victim.shutdown()
        self._stats.count(clients_connected=1)
        return None

    def _idle_longest(self, clients: list[Connection]) -> Connection | None:
        """The client connection idle longest, if longer than idle_grace_s (marked evicted); None otherwise.
        Called under the connections' lock."""
        now = time.monotonic()
        best: Connection | None = None
        best_since = now - self.limits.idle_grace_s
        for candidate in clients:
            with candidate.lock:
                since = candidate.idle_since
                if not candidate.busy and since is not None and since <= best_since:
                    best, best_since = candidate, since
        if best is not None:
            with best.lock:
                if best.busy or best.idle_since is None:  # it started a message meanwhile: leave it be
                    return None
                best.evicted = True
        return best


def _server_tls_context(
    cert: str | os.PathLike[str] | None, key: str | os.PathLike[str] | None
) -> ssl.SSLContext | None:
    """The service's TLS settings (TLS 1.2 or later, no client certificates) from its certificate and key files;
    None without a certificate. ConfigurationError when the files cannot be loaded."""
    if cert is None:
        if key is not None:
            raise ConfigurationError("tls_key needs tls_cert (the certificate that goes with the key)")
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), None if key is None else str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(f"cannot load the TLS certificate {cert} and key {key}: {exc}") from None
    return context
