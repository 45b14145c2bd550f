"""The OPU service: one device, several clients, concurrent requests coalesced into device calls.

Threads: an acceptor (new connections), one per connection (reads a request, waits for its result, writes the
reply: one request in flight per connection, so a reply can only ever go to the request that asked for it), and
one device thread, the only one that touches the Opu. The device thread takes every pending request at once,
groups those with the same (n_features, n_components, scheme, n_bits) and makes one device call per group, so
throughput grows with load: requests that arrive while the device is busy share its next call.

Equality with a request alone: ``LinearMode.project_many`` encodes each request on its own (a real-valued one gets
bit planes scaled on that request alone, as a direct call would), sends every request's ternary rows in one batch
and decodes each with its own encoder. Each row depends only on its own frames, so with a noiseless device a
coalesced result is bit-identical to the direct ``Opu.linear_transform`` of the same vectors.

Bounds: only clients that completed their HELLO (token checked) count toward ``max_clients``; connections still
in their handshake form a small separate pool (``max_pending_connections``, the oldest evicted when it is full)
with a total deadline, so silent sockets cannot take the slots. A device call holds at most ``max_device_bytes`` of
frames and camera values (requests are split across calls), a request's payload is bounded by its connection's
max_batch x n_features and its shape is checked from its header before the payload is read, and a request whose
client disconnected (or timed out) while it waited is skipped.

The message format is dfa_client.wire (docs/service.md).
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import hmac
import ipaddress
import itertools
import json
import logging
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields
from types import TracebackType
from typing import Any

import numpy as np

from dfa_client import wire
from dfa_client.errors import ProtocolVersionError
from dfa_client.wire import MessageType, MessageTooLargeError, PeerClosedError, ProtocolError, WireLimits

from .._version import __version__
from ..encoding.layouts import SplitLayout
from ..errors import ConfigurationError, InvalidInputError, OpuError
from ..opu import FRAMES_PER_TERNARY, PROJECTION_SCHEMES, call_bytes

__all__ = ["OpuService", "ServiceLimits", "ServiceStats", "is_loopback"]

_log = logging.getLogger(__name__)

SHUTDOWN_KIND = "ServiceShutdown"
"""ERROR kind of requests the service failed because it is stopping (clients retry them elsewhere or later)."""
TOO_MANY_CLIENTS_KIND = "TooManyClients"
"""ERROR kind of a HELLO refused because max_clients clients are served (clients retry it with their backoff)."""
_PEER_POLL_S = 0.05  # how often a connection waiting for the device checks that its client is still there


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
            (opu_driver.opu.call_bytes); coalesced requests are split across calls to stay within it.
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


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is a loopback address ("" and 0.0.0.0 are not)."""
    if host in ("", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


class _Request:
    """One PROJECT: its validated errors, and once done its result or its error (kind, message)."""

    __slots__ = ("key", "E", "cost_bytes", "done", "result", "error", "abandoned")

    def __init__(self, key: tuple, E: np.ndarray, cost_bytes: int = 0) -> None:
        self.key = key
        self.E = E
        self.cost_bytes = cost_bytes
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: tuple[str, str] | None = None
        self.abandoned = False

    def finish(self, result: np.ndarray | None = None, error: tuple[str, str] | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


class _TokenBucket:
    """Paces one connection's requests to ``rate_per_s``, with a burst of one second's worth."""

    def __init__(self, rate_per_s: float) -> None:
        self.rate_per_s = rate_per_s
        self.capacity = max(1.0, rate_per_s)
        self.tokens = self.capacity
        self.last = time.monotonic()

    def wait_s(self) -> float:
        """Take one token; how long to wait first (0 when one is there)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate_per_s)
        self.last = now
        self.tokens -= 1.0
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate_per_s


class _Connection:
    """One client connection and what its HELLO fixed."""

    def __init__(self, number: int, sock: socket.socket, peer: Any) -> None:
        self.number = number
        self.sock = sock
        self.peer = peer
        self.lock = threading.Lock()
        self.busy = False  # a request was read and its reply is not written yet
        self.closed = False
        self.authenticated = False  # HELLO accepted: counts toward max_clients
        self.evicted = False  # dropped from the handshake pool to make room
        self.thread: threading.Thread | None = None
        self.n_features: int | None = None
        self.n_components = 0
        self.scheme = "four_frame"
        self.n_bits: int | None = None
        self.max_batch = 1
        self.bucket: _TokenBucket | None = None

    def shutdown(self) -> None:
        """Wake the connection's thread from a blocking read (it then closes the socket)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)


class OpuService:
    """Serve one OPU's linear projections to several clients over TCP (protocol: docs/service.md).

    Args:
        url: the device, opened with ``opu_driver.open(url, **opu_settings)`` at start (unless ``opu`` is given).
        bind: (host, port) to listen on; port 0 picks a free one (see ``address``). Loopback by default.
        token: the shared secret clients must present; required for a non-loopback bind.
        opu: an already open Opu to serve instead of opening ``url`` (then it is not closed by stop()).
        opu_settings: opu_driver.open settings (pixel_format, exposure_us, ...).
        **limits: fields of :class:`ServiceLimits` (max_clients, max_batch, max_message_bytes, ...).

    Raises:
        ConfigurationError: bad limits, an empty token, or a non-loopback bind without a token (nothing opened).
    """

    def __init__(self, url: str, bind: tuple[str, int] = ("127.0.0.1", 0), token: str | None = None, *,
                 opu: Any = None, opu_settings: dict[str, Any] | None = None, **limits: Any) -> None:
        try:
            self.limits = ServiceLimits(**limits)
        except TypeError as exc:
            raise ConfigurationError(f"unknown service limit: {exc}; known: "
                                     f"{', '.join(f.name for f in fields(ServiceLimits))}") from None
        if not (isinstance(bind, tuple) and len(bind) == 2 and isinstance(bind[0], str)
                and isinstance(bind[1], int) and 0 <= bind[1] <= 65535):
            raise ConfigurationError(f"bind must be (host, port), got {bind!r}")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigurationError("token must be a non-empty string (or None on a loopback bind)")
        if token is None and not is_loopback(bind[0]):
            raise ConfigurationError(f"binding to {bind[0]!r} (not loopback) needs a token: anyone who can reach "
                                     "the port could otherwise use the device")
        self.url = url
        self.bind = bind
        self._token = None if token is None else token.encode("utf-8")
        self._opu = opu
        self._owns_opu = opu is None
        self._opu_settings = dict(opu_settings or {})
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._connections: dict[int, _Connection] = {}
        self._connections_lock = threading.Lock()
        self._numbers = itertools.count(1)
        self._queue: collections.deque[_Request] = collections.deque()
        self._cv = threading.Condition()
        self._paused = False
        self._stopping = False
        self._started = False
        self._stopped = threading.Event()
        self._stats_lock = threading.Lock()
        self._stats = ServiceStats()
        self._device: dict[str, Any] = {}

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> "OpuService":
        """Open the device, listen, and serve in background threads; returns self.

        Raises:
            OpuError: the device cannot be opened. OSError: the address cannot be bound.
        """
        if self._started:
            raise ConfigurationError("this service was already started")
        self._started = True
        if self._opu is None:
            import opu_driver

            self._opu = opu_driver.open(self.url, **self._opu_settings)
        try:
            info = self._opu.info
            self._device = {"model": info.model, "serial_number": info.serial_number,
                            "firmware_version": info.firmware_version, "camera_pixels":
                            info.camera_width * info.camera_height, "dmd_width": info.dmd_width,
                            "dmd_height": info.dmd_height}
            self._reference_fraction = float(self._opu.linear_mode.reference_fraction)
            self._device["frame_time_us"] = _frame_time_us(self._opu)
            self._device["fingerprint"] = device_fingerprint(self._opu)
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
        for name, target in (("opu-service-device", self._device_loop), ("opu-service-accept", self._accept_loop)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        _log.info("serving %s (%s %s) on %s:%d", self.url, self._device["model"], self._device["serial_number"],
                  *self.address[:2])
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
        with self._cv:
            if self._stopping:
                already = True
            else:
                already = False
                self._stopping = True
                self._cv.notify_all()
        if already:
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
        self._stopped.set()
        _log.info("service stopped: %s", self.stats())
        return clean

    def _close_device(self) -> None:
        if self._owns_opu and self._opu is not None:
            try:
                self._opu.close()
            except Exception:  # closing must not raise
                _log.exception("closing the device failed")

    def __enter__(self) -> "OpuService":
        if not self._started:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- control and counters -------------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop handing requests to the device; they queue until resume() (maintenance, and tests of
        coalescing: requests sent while paused share one device call)."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        """Requests waiting for the device."""
        with self._cv:
            return len(self._queue)

    def stats(self) -> ServiceStats:
        with self._stats_lock:
            return self._stats

    def _count(self, **increments: int) -> None:
        with self._stats_lock:
            values = asdict(self._stats)
            for name, delta in increments.items():
                values[name] += delta
            self._stats = ServiceStats(**values)

    # -- connections ----------------------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping:
            try:
                sock, peer = self._listener.accept()
            except (socket.timeout, BlockingIOError, InterruptedError):
                continue
            except OSError:
                if self._stopping:
                    return
                _log.exception("accept failed")
                time.sleep(0.1)
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Every connection is accepted into the handshake pool; when the pool is full the oldest connection
            # still in its handshake makes room (a flood of silent sockets cannot keep a real client out, and
            # authenticated clients are never evicted).
            conn = _Connection(next(self._numbers), sock, peer)
            evicted = None
            with self._connections_lock:
                pending = [c for c in self._connections.values() if not c.authenticated and not c.evicted]
                if len(pending) >= self.limits.max_pending_connections:
                    evicted = pending[0]
                    evicted.evicted = True
                self._connections[conn.number] = conn
            if evicted is not None:
                self._count(connections_evicted=1)
                _log.warning("evicted %s (still in its handshake) to make room for %s", evicted.peer, peer)
                evicted.shutdown()
            self._count(connections_accepted=1)
            conn.thread = threading.Thread(target=self._serve_connection, args=(conn,),
                                           name=f"opu-service-client-{conn.number}", daemon=True)
            conn.thread.start()

    def _send_error_and_close(self, sock: socket.socket, request_id: int, kind: str, message: str) -> None:
        with contextlib.suppress(OSError):
            sock.settimeout(1.0)
            wire.send_message(sock, MessageType.ERROR, request_id, {"kind": kind, "message": message})
        with contextlib.suppress(OSError):
            sock.close()

    def _serve_connection(self, conn: _Connection) -> None:
        sock = conn.sock
        limits = self.limits
        try:
            # The whole HELLO within hello_timeout_s (a total deadline: trickling bytes does not extend it).
            hello = wire.read_message(sock, WireLimits(limits.max_header_bytes, 0),
                                      time.monotonic() + limits.hello_timeout_s)
            if hello.type != MessageType.HELLO:
                raise ProtocolError(f"the first message must be HELLO, got {hello.type.name}")
            refusal = self._accept_hello(conn, hello.header)
            if refusal is None:
                refusal = self._admit(conn)
            sock.settimeout(limits.send_timeout_s)
            if refusal is not None:
                kind, message = refusal
                _log.warning("client %d (%s) refused: %s", conn.number, conn.peer, message)
                wire.send_message(sock, MessageType.ERROR, hello.request_id, {"kind": kind, "message": message})
                return
            wire.send_message(sock, MessageType.WELCOME, hello.request_id, self._welcome(conn))

            def check_header(prefix: wire.Prefix, header: dict[str, Any], spec: Any) -> None:
                if prefix.type == MessageType.PROJECT:
                    problem = self._check_shape(conn, None if spec is None else spec[1])
                    if problem is not None:
                        raise _RefusedRequest(prefix.request_id, problem)

            conn.bucket = _TokenBucket(limits.max_requests_per_s)
            while not self._stopping:
                message = wire.read_message(sock, self._request_limits(conn),
                                            time.monotonic() + limits.idle_timeout_s, limits.message_timeout_s,
                                            check_header)
                if message.type == MessageType.BYE:
                    return
                if message.type != MessageType.PROJECT:
                    raise ProtocolError(f"unexpected {message.type.name} from a client")
                with conn.lock:
                    conn.busy = True
                try:
                    self._pace(conn)
                    reply_type, header, array = self._handle_project(conn, message)
                    sock.settimeout(limits.send_timeout_s)
                    wire.send_message(sock, reply_type, message.request_id, header, array)
                finally:
                    with conn.lock:
                        conn.busy = False
        except _RefusedRequest as exc:
            # The shape was refused from the header: the payload stays unread, so the stream cannot continue.
            self._count(requests=1, request_errors=1)
            _log.info("client %d (%s): request refused from its header: %s; closing", conn.number, conn.peer,
                      exc.message)
            self._send_error_and_close(sock, exc.request_id, "InvalidInputError", exc.message)
        except ProtocolVersionError as exc:
            self._count(protocol_errors=1)
            self._send_error_and_close(sock, 0, "ProtocolVersionError", str(exc))
        except MessageTooLargeError as exc:
            self._count(protocol_errors=1)
            _log.warning("client %d (%s): %s; closing", conn.number, conn.peer, exc)
            self._send_error_and_close(sock, 0, "MessageTooLarge", str(exc))
        except ProtocolError as exc:
            self._count(protocol_errors=1)
            _log.warning("client %d (%s) broke the protocol: %s; closing", conn.number, conn.peer, exc)
            self._send_error_and_close(sock, 0, "ProtocolError", str(exc))
        except socket.timeout:
            _log.info("client %d (%s): timed out (idle, a half-sent message or an unread reply); closing",
                      conn.number, conn.peer)
        except PeerClosedError as exc:
            log = _log.warning if exc.partial else _log.debug
            log("client %d (%s) disconnected%s", conn.number, conn.peer, " mid-message" if exc.partial else "")
        except OSError as exc:
            if not self._stopping:
                _log.info("client %d (%s): connection error %s", conn.number, conn.peer, exc)
        except Exception:  # a bug must cost this connection only, never the service
            _log.exception("client %d (%s): unexpected error; closing", conn.number, conn.peer)
        finally:
            with contextlib.suppress(OSError):
                sock.close()
            with self._connections_lock:
                self._connections.pop(conn.number, None)
                was_client = conn.authenticated
                conn.authenticated = False
            if was_client:
                self._count(clients_connected=-1)

    def _pace(self, conn: _Connection) -> None:
        """Hold a PROJECT that came faster than ``max_requests_per_s`` until its turn (its client waits for the
        reply, so its next request comes later: pacing, not refusal)."""
        assert conn.bucket is not None
        wait_s = conn.bucket.wait_s()
        if wait_s <= 0:
            return
        self._count(requests_paced=1)
        resume = time.monotonic() + wait_s
        while not self._stopping and time.monotonic() < resume:
            time.sleep(min(_PEER_POLL_S, max(0.0, resume - time.monotonic())))

    def _accept_hello(self, conn: _Connection, header: dict[str, Any]) -> tuple[str, str] | None:
        """Fix the connection's settings from its HELLO; (kind, message) when it is refused."""
        version = header.get("protocol_version")
        if version != wire.PROTOCOL_VERSION:
            return "ProtocolVersionError", (f"the client speaks protocol version {version!r}; this service speaks "
                                            f"{wire.PROTOCOL_VERSION}")
        if self._token is not None:
            given = header.get("token")
            # compare_digest: the comparison takes the same time wherever the first differing byte is.
            if not isinstance(given, str) or not hmac.compare_digest(given.encode("utf-8"), self._token):
                return "AuthenticationError", "wrong or missing token"
        n_components, n_features = header.get("n_components"), header.get("n_features")
        scheme, n_bits, max_batch = header.get("scheme"), header.get("n_bits"), header.get("max_batch")
        pixels = self._device["camera_pixels"]
        if not _is_count(n_components) or not 1 <= n_components <= pixels:
            return "InvalidInputError", f"n_components={n_components!r}: the device has {pixels} camera pixels"
        if n_features is not None:
            if not _is_count(n_features):
                return "InvalidInputError", f"n_features={n_features!r} must be null or a positive integer"
            problem = self._check_features(n_features)
            if problem:
                return "InvalidInputError", problem
        if scheme not in PROJECTION_SCHEMES:
            return "InvalidInputError", f"scheme={scheme!r}; choose one of {PROJECTION_SCHEMES}"
        if n_bits is not None and (not _is_count(n_bits) or not 1 <= n_bits <= 16):
            return "InvalidInputError", f"n_bits={n_bits!r} must be null or an integer within 1..16"
        if not _is_count(max_batch):
            return "InvalidInputError", f"max_batch={max_batch!r} must be a positive integer"
        conn.n_components, conn.n_features, conn.scheme, conn.n_bits = n_components, n_features, scheme, n_bits
        conn.max_batch = min(max_batch, self.limits.max_batch)
        return None

    def _admit(self, conn: _Connection) -> tuple[str, str] | None:
        """Move an accepted HELLO's connection from the handshake pool to the clients; a refusal when
        max_clients clients are served already (or the connection was evicted meanwhile)."""
        with self._connections_lock:
            if conn.evicted:
                return TOO_MANY_CLIENTS_KIND, "the connection was evicted from the handshake pool"
            clients = sum(1 for c in self._connections.values() if c.authenticated)
            if clients >= self.limits.max_clients:
                self._count(connections_refused=1)
                _log.warning("refused client %d (%s): %d clients already connected", conn.number, conn.peer,
                             clients)
                return TOO_MANY_CLIENTS_KIND, f"the service already serves {self.limits.max_clients} clients"
            conn.authenticated = True
        self._count(clients_connected=1)
        return None

    def _request_limits(self, conn: _Connection) -> WireLimits:
        """What a PROJECT of this connection may carry: once its width is known, max_batch x n_features float64
        values (never more than max_message_bytes), so a connection cannot make the service hold more."""
        payload_bytes = self.limits.max_message_bytes
        if conn.n_features is not None:
            payload_bytes = min(payload_bytes, conn.max_batch * conn.n_features * 8)
        return WireLimits(self.limits.max_header_bytes, payload_bytes)

    def _check_shape(self, conn: _Connection, shape: tuple[int, ...] | None) -> str | None:
        """Why a PROJECT of this shape is refused (checked from its header, before its payload is read)."""
        if shape is None or len(shape) != 2:
            return "PROJECT needs a 2-D (batch, n_features) array payload"
        batch, width = shape
        if conn.n_features is None:
            if width < 1:
                return "errors have zero features"
            if width > self._device["dmd_width"] * self._device["dmd_height"]:
                return f"{width} features do not fit the {self._device['dmd_width']}x{self._device['dmd_height']} DMD"
        elif width != conn.n_features:
            return f"errors have {width} features; this connection takes {conn.n_features}"
        if batch > conn.max_batch:
            return f"a batch of {batch} exceeds max_batch={conn.max_batch}"
        return None

    def _check_features(self, n_features: int) -> str | None:
        """Why n_features cannot be projected (it must fit beside the linear mode's reference), or None."""
        try:
            SplitLayout(n_features, self._device["dmd_width"], self._device["dmd_height"],
                        reference_fraction=self._reference_fraction)
        except InvalidInputError as exc:
            return str(exc)
        return None

    def _welcome(self, conn: _Connection) -> dict[str, Any]:
        return {
            "protocol_version": wire.PROTOCOL_VERSION,
            "service_version": __version__,
            "model": self._device["model"],
            "serial_number": self._device["serial_number"],
            "firmware_version": self._device["firmware_version"],
            "n_features": conn.n_features,
            "n_components": conn.n_components,
            "max_batch": conn.max_batch,
            "max_message_bytes": self.limits.max_message_bytes,
            "max_header_bytes": self.limits.max_header_bytes,
            "device_fingerprint": self._device["fingerprint"],
            "frame_time_us": self._device["frame_time_us"],
        }

    def _handle_project(self, conn: _Connection, message: wire.Message
                        ) -> tuple[MessageType, dict[str, Any], np.ndarray | None]:
        """Validate a PROJECT, hand it to the device thread, wait for it; the reply (type, header, array)."""
        self._count(requests=1)
        problem = self._check_request(conn, message.array)
        if problem is not None:
            self._count(request_errors=1)
            return MessageType.ERROR, {"kind": "InvalidInputError", "message": problem}, None
        E = message.array
        assert E is not None
        if E.shape[0] == 0:
            return MessageType.RESULT, {}, np.zeros((0, conn.n_components), dtype=np.float32)
        E64 = np.asarray(E, dtype=np.float64)
        planes = 1 if conn.n_bits is None and np.isin(E64, (-1.0, 0.0, 1.0)).all() else (conn.n_bits or 8)
        frames = E.shape[0] * planes * FRAMES_PER_TERNARY[conn.scheme]
        request = _Request((E.shape[1], conn.n_components, conn.scheme, conn.n_bits), E64,
                           call_bytes(frames, E.shape[1], conn.n_components))
        with self._cv:
            if self._stopping:
                request.finish(error=(SHUTDOWN_KIND, "the service is shutting down"))
            else:
                self._queue.append(request)
                self._cv.notify_all()
        deadline = time.monotonic() + self.limits.request_timeout_s
        while not request.done.wait(_PEER_POLL_S):
            if _peer_closed(conn.sock):
                # The client is gone (it closed, or timed out and dropped the connection): the device skips the
                # request if it has not taken it yet, and nothing is written.
                request.abandoned = True
                self._count(requests_abandoned=1)
                raise PeerClosedError("the client disconnected while its request waited")
            if time.monotonic() >= deadline:
                request.abandoned = True
                self._count(request_errors=1)
                return MessageType.ERROR, {"kind": "RequestTimeoutError", "message": "the device did not answer "
                                           f"within {self.limits.request_timeout_s} s"}, None
        if request.error is not None:
            self._count(request_errors=1)
            kind, text = request.error
            return MessageType.ERROR, {"kind": kind, "message": text}, None
        self._count(vectors=E.shape[0])
        return MessageType.RESULT, {}, request.result

    def _check_request(self, conn: _Connection, E: np.ndarray | None) -> str | None:
        if E is None or E.ndim != 2:
            return "PROJECT needs a 2-D (batch, n_features) array payload"
        batch, width = E.shape
        if conn.n_features is None:
            if width < 1:
                return "errors have zero features"
            problem = self._check_features(width)
            if problem:
                return problem
            conn.n_features = width  # fixed by the first call, as in-process projectors do
        elif width != conn.n_features:
            return f"errors have {width} features; this connection takes {conn.n_features}"
        if batch > conn.max_batch:
            return f"a batch of {batch} exceeds max_batch={conn.max_batch}"
        if not np.isfinite(E).all():
            return "errors contain NaN or Inf"
        return None

    # -- the device thread -----------------------------------------------------------------------------------
    def _device_loop(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and (self._paused or not self._queue):
                    self._cv.wait(0.5)
                if self._stopping:
                    leftover = list(self._queue)
                    self._queue.clear()
                    break
                # Take queued requests in order while they fit one device call's bounds (at least one request;
                # a single request above max_device_bytes is split into chunks by project_many itself).
                taken: list[_Request] = []
                rows = cost = 0
                while self._queue:
                    head = self._queue[0]
                    if head.abandoned:
                        self._queue.popleft()
                        continue
                    if taken and (rows + head.E.shape[0] > self.limits.max_device_rows
                                  or cost + head.cost_bytes > self.limits.max_device_bytes):
                        break
                    taken.append(self._queue.popleft())
                    rows += head.E.shape[0]
                    cost += head.cost_bytes
            groups: dict[tuple, list[_Request]] = {}
            for request in taken:
                groups.setdefault(request.key, []).append(request)
            for key, requests in groups.items():
                requests = [request for request in requests if not request.abandoned]
                if requests:
                    self._run_group(key, requests)
        for request in leftover:
            request.finish(error=(SHUTDOWN_KIND, "the service is shutting down; the request was not run"))

    def _run_group(self, key: tuple, requests: list[_Request]) -> None:
        """One device call for requests of the same sizes and options; each gets exactly its own rows."""
        n_features, n_components, scheme, n_bits = key
        try:
            linear = self._opu.linear_mode
            linear.layout(n_features)
            # each request encoded on its own (its own bit-plane scale), one device call for all of them
            results = linear.project_many([request.E for request in requests], n_components, scheme, n_bits,
                                          max_call_bytes=self.limits.max_device_bytes)
            self._count(device_calls=1)
        except OpuError as exc:
            _log.warning("device call for %d request(s) failed: %s", len(requests), exc)
            for request in requests:
                request.finish(error=(type(exc).__name__, str(exc)))
            return
        except Exception as exc:  # a bug: fail these requests, keep serving
            _log.exception("device call for %d request(s) failed", len(requests))
            for request in requests:
                request.finish(error=("InternalError", f"{type(exc).__name__}: {exc}"))
            return
        for request, out in zip(requests, results):
            request.finish(result=np.ascontiguousarray(out, dtype=np.float32))


class _RefusedRequest(Exception):
    """A PROJECT refused from its header (its payload unread): answered with an ERROR, then the connection
    closes."""

    def __init__(self, request_id: int, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.message = message


def _peer_closed(sock: socket.socket) -> bool:
    """Whether the client closed its side (a non-blocking peek: data waiting means it is still there)."""
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset, or the socket was shut down by stop()
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _frame_time_us(opu: Any) -> int | None:
    """The camera's frame time (one DMD frame's device time), or None when unknown."""
    with contextlib.suppress(Exception):
        value = opu.camera.settings.frame_time_us
        return int(value) if value is not None else None
    return None


def device_fingerprint(opu: Any) -> str:
    """A short hash of what fixes the served random matrix B and its scale: the device identity, the camera
    settings (exposure, frame time, gain, pixel format), the laser power, the linear mode's reference fraction,
    and the calibration record applied at open (its file and date). Clients compare it across reconnects (with
    model, serial number and firmware) and refuse results from a service whose fingerprint changed.

    The linear mode's per-size reference calibration is measured by the service after start and is not part of
    it: it re-measures the same device under the same settings, so B is the same up to measurement noise."""
    info = opu.info
    state: dict[str, Any] = {"model": info.model, "serial_number": info.serial_number,
                             "firmware_version": info.firmware_version}
    with contextlib.suppress(Exception):
        camera = opu.camera.settings
        pixel_format = getattr(camera.pixel_format, "name", camera.pixel_format)
        state["camera"] = [camera.exposure_us, camera.frame_time_us, camera.gain, str(pixel_format)]
    with contextlib.suppress(Exception):
        state["laser_power_mw"] = opu.controller.laser_power_mw
    with contextlib.suppress(Exception):
        state["reference_fraction"] = float(opu.linear_mode.reference_fraction)
    with contextlib.suppress(Exception):
        applied = opu.calibration
        if applied is not None:
            record = applied.record
            state["calibration"] = [str(record.path), record.created.isoformat(), list(applied.applied)]
    text = json.dumps(state, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
