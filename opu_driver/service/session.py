"""One client connection of the OPU service, from its HELLO to its close, served by a thread of its own.

A session runs the TLS handshake when the service has TLS, checks the HELLO (protocol version, token after the
delay its address earned with wrong ones, options: every malformed field a typed ERROR) and asks the service to
admit the client, answers WELCOME, then reads PROJECT requests one at a time: each is checked (its shape from its
header, before its payload is read, then its values), paced to ``max_requests_per_s``, submitted to the scheduler
and waited for, and its reply written by this same thread. One request in flight per connection, so a reply can
only ever go to the request that asked for it.

A connection's payload is bounded by its max_batch x n_features once its width is known. From a PROJECT's header,
before its payload is read, the session refuses a result above ``max_result_bytes`` and reserves the request's
payload and result bytes from the service's memory budget (``max_total_bytes``), waiting for room within
``request_timeout_s``; a request refused there gets its typed ERROR, its payload is read and discarded through a
small buffer, and the connection goes on. A request whose client reset the connection while it waited (or that
waited request_timeout_s) is marked abandoned, so the device thread drops it before its next call; a client that
only half-closed (a FIN) still gets its reply.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

import numpy as np

from dfa_client import wire
from dfa_client.errors import ProtocolVersionError
from dfa_client.wire import MessageTooLargeError, MessageType, PeerClosedError, ProtocolError, WireLimits

from .._version import __version__
from ..opu import PROJECTION_SCHEMES
from .auth import AuthThrottle
from .budget import MemoryBudget, Reservation
from .fingerprint import ServedDevice
from .limits import ServiceLimits, StatsCounter
from .scheduler import SHUTDOWN_KIND, Scheduler, row_chunks

__all__ = ["Connection", "ServiceContext", "Session", "REQUEST_TOO_LARGE_KIND", "SERVICE_BUSY_KIND"]

_log = logging.getLogger(__name__)

_PEER_POLL_S = 0.05  # how often a connection waiting for the device checks that its client is still there
_RESULT_ITEM_BYTES = 4  # results are float32

REQUEST_TOO_LARGE_KIND = "RequestTooLarge"
"""ERROR kind of a request whose result (or payload and result together) exceeds the service's limits."""
SERVICE_BUSY_KIND = "ServiceBusy"
"""ERROR kind of a request that found no room in the memory budget within request_timeout_s."""


class Connection:
    """One accepted connection as the service's connection pool sees it (the session holds what its HELLO
    fixed)."""

    def __init__(self, number: int, sock: socket.socket, peer: Any) -> None:
        self.number = number
        self.sock = sock
        self.peer = peer
        self.lock = threading.Lock()
        self.busy = False  # a request was read and its reply is not written yet
        self.authenticated = False  # HELLO accepted: counts toward max_clients
        self.evicted = False  # dropped (from the handshake pool, or idle when the clients were full) to make room
        self.idle_since: float | None = None  # monotonic time since which it waits for a message's first byte
        self.thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """The client's address without its port (what failed token attempts are counted by)."""
        return str(self.peer[0]) if isinstance(self.peer, tuple) and self.peer else str(self.peer)

    def shutdown(self) -> None:
        """Wake the connection's thread from a blocking read (it then closes the socket). The plain socket's
        shutdown, also under TLS: the TLS layer's own would drop its state under the reading thread."""
        with contextlib.suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def mark_idle(self) -> None:
        """The connection now waits for the first byte of its next message."""
        with self.lock:
            self.idle_since = time.monotonic()

    def mark_started(self) -> None:
        """A message's first byte came: no longer idle."""
        with self.lock:
            self.idle_since = None


@dataclass(frozen=True)
class ServiceContext:
    """What every session shares with the service, fixed at start.

    Attributes:
        limits: the service's limits.
        token: the shared secret (UTF-8) a HELLO must carry, None when none is needed.
        device: the served device as read at start.
        scheduler: where requests go to the device.
        stats: the service's counters.
        throttle: the failed-token record of each client address.
        budget: the memory held for all clients' requests (max_total_bytes).
        admit: moves a connection whose HELLO was accepted from the handshake pool to the clients; returns a
            refusal (kind, message) when it cannot.
        tls: the service's TLS settings, None for plain TCP.
    """

    limits: ServiceLimits
    token: bytes | None
    device: ServedDevice
    scheduler: Scheduler
    stats: StatsCounter
    throttle: AuthThrottle
    budget: MemoryBudget
    admit: Callable[[Connection], tuple[str, str] | None]
    tls: ssl.SSLContext | None = None


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


class _RefusedRequest(Exception):
    """A PROJECT refused from its header (its payload unread): answered with an ERROR of ``kind``; its payload
    (``payload_bytes``) is then read and discarded so that the connection can go on."""

    def __init__(self, request_id: int, kind: str, message: str, payload_bytes: int, counter: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.kind = kind
        self.message = message
        self.payload_bytes = payload_bytes
        self.counter = counter  # the ServiceStats counter of this refusal, besides request_errors


class Session:
    """Serve one connection (:meth:`run`, on the connection's own thread) with what its HELLO fixed."""

    def __init__(self, conn: Connection, context: ServiceContext) -> None:
        self.conn = conn
        self.context = context
        self.n_features: int | None = None
        self.n_components = 0
        self.scheme = "four_frame"
        self.n_bits: int | None = None
        self.max_batch = 1
        # full from the start (refills are capped at one second's worth), so its creation time does not matter
        self.bucket = _TokenBucket(context.limits.max_requests_per_s)
        self.reservation: Reservation | None = None  # the memory of the request being read or served
        self.request_deadline = 0.0  # when the request being served has waited request_timeout_s

    def run(self) -> None:
        """Handshake, then requests until BYE, a close, a timeout, a protocol error or the service's stop; the
        socket is closed on return. Never raises for anything the client does."""
        conn, context = self.conn, self.context
        sock, stats = conn.sock, context.stats
        try:
            hello_deadline = time.monotonic() + context.limits.hello_timeout_s
            if context.tls is not None:
                wrapped = self._start_tls(sock, context.tls, hello_deadline)
                if wrapped is None:
                    return
                sock = wrapped
            if self._handshake(sock, hello_deadline):
                self._serve_requests(sock)
        except ProtocolVersionError as exc:
            stats.count(protocol_errors=1)
            _send_error_and_close(sock, 0, "ProtocolVersionError", str(exc))
        except MessageTooLargeError as exc:
            stats.count(protocol_errors=1)
            _log.warning("client %d (%s): %s; closing", conn.number, conn.peer, exc)
            _send_error_and_close(sock, 0, "MessageTooLarge", str(exc))
        except ProtocolError as exc:
            stats.count(protocol_errors=1)
            _log.warning("client %d (%s) broke the protocol: %s; closing", conn.number, conn.peer, exc)
            _send_error_and_close(sock, 0, "ProtocolError", str(exc))
        except TimeoutError:
            _log.info(
                "client %d (%s): timed out (idle, a half-sent message or an unread reply); closing",
                conn.number,
                conn.peer,
            )
        except PeerClosedError as exc:
            log = _log.warning if exc.partial else _log.debug
            log("client %d (%s) disconnected%s", conn.number, conn.peer, " mid-message" if exc.partial else "")
        except OSError as exc:
            if not context.scheduler.stopping:
                _log.info("client %d (%s): connection error %s", conn.number, conn.peer, exc)
        except Exception:  # a bug must cost this connection only, never the service
            _log.exception("client %d (%s): unexpected error; closing", conn.number, conn.peer)
        finally:
            self._release()
            with contextlib.suppress(OSError):
                conn.sock.close()  # the TLS socket once there is one

    def _release(self) -> None:
        """Let go of the current request's memory reservation (the session's hold on it)."""
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    # -- the handshake ------------------------------------------------------------------------------------------
    def _start_tls(self, sock: socket.socket, tls: ssl.SSLContext, deadline: float) -> ssl.SSLSocket | None:
        """The TLS handshake, within the HELLO's deadline; the encrypted socket (also the connection's from now
        on), or None when the handshake failed (logged, the socket closed)."""
        conn = self.conn
        try:
            wrapped = tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
            with conn.lock:
                conn.sock = wrapped  # what stop() and eviction shut down from now on
            wrapped.settimeout(max(0.001, deadline - time.monotonic()))
            wrapped.do_handshake()
            return wrapped
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError; a timeout too
            self.context.stats.count(protocol_errors=1)
            _log.info("client %d (%s): TLS handshake failed: %s; closing", conn.number, conn.peer, exc)
            with contextlib.suppress(OSError):
                conn.sock.close()
            return None

    def _handshake(self, sock: socket.socket, deadline: float) -> bool:
        """Read and check the HELLO, have the service admit the client and answer WELCOME: True when admitted;
        False when refused (the refusal is sent as an ERROR and the connection is to close)."""
        conn, context, limits = self.conn, self.context, self.context.limits
        # The whole HELLO (and the TLS handshake) within hello_timeout_s: a total deadline, trickling bytes does
        # not extend it.
        hello = wire.read_message(sock, WireLimits(limits.max_header_bytes, 0), deadline)
        if hello.type != MessageType.HELLO:
            raise ProtocolError(f"the first message must be HELLO, got {hello.type.name}")
        refusal = self._check_version(hello.header) or self._check_token(hello.header)
        if refusal is None:
            refusal = self._accept_hello(hello.header)
        if refusal is None:
            refusal = context.admit(conn)
        sock.settimeout(limits.send_timeout_s)
        if refusal is not None:
            kind, text = refusal
            # failed tokens are summarised by the throttle; anything else is worth a line of its own
            log = _log.debug if kind == "AuthenticationError" else _log.warning
            log("client %d (%s) refused: %s", conn.number, conn.peer, text)
            wire.send_message(sock, MessageType.ERROR, hello.request_id, {"kind": kind, "message": text})
            return False
        wire.send_message(sock, MessageType.WELCOME, hello.request_id, self._welcome())
        return True

    @staticmethod
    def _check_version(header: dict[str, Any]) -> tuple[str, str] | None:
        version = header.get("protocol_version")
        if version != wire.PROTOCOL_VERSION:
            return "ProtocolVersionError", (
                f"the client speaks protocol version {_shown(version)}; this service speaks {wire.PROTOCOL_VERSION}"
            )
        return None

    def _check_token(self, header: dict[str, Any]) -> tuple[str, str] | None:
        """Check the HELLO's token; a refusal when it is missing, malformed or wrong. A wrong one (a string that
        could have been right: a guess) is counted against the client's address, whose next HELLOs wait out the
        delay it earned before their token is checked."""
        token, limits = self.context.token, self.context.limits
        if token is None:
            return None
        given = header.get("token")
        try:
            given_bytes = given.encode("utf-8") if isinstance(given, str) else None
        except UnicodeEncodeError:  # a JSON string may hold lone surrogates ("\ud800"): not UTF-8
            given_bytes = None
        if given_bytes is None:  # cannot be right: refused at once, no guess to slow down
            self.context.stats.count(auth_failures=1)
            if given is None:
                return "AuthenticationError", "this service needs a token"
            return "AuthenticationError", "the token must be a string of valid UTF-8"
        throttle, address = self.context.throttle, self.conn.address
        wait_s = throttle.wait_s(address)
        if wait_s > limits.hello_timeout_s:
            return "AuthenticationError", f"too many failed token attempts from {address}: retry in {wait_s:.1f} s"
        if wait_s > 0:
            self.context.stats.count(auth_delayed=1)
            resume = time.monotonic() + wait_s
            while time.monotonic() < resume and not (self.context.scheduler.stopping or self.conn.evicted):
                time.sleep(min(_PEER_POLL_S, max(0.0, resume - time.monotonic())))
        # compare_digest: the comparison takes the same time wherever the first differing byte is.
        if hmac.compare_digest(given_bytes, token):
            return None
        self.context.stats.count(auth_failures=1)
        throttle.failed(address)
        return "AuthenticationError", "wrong token"

    def _accept_hello(self, header: dict[str, Any]) -> tuple[str, str] | None:
        """Fix the connection's settings from its HELLO (version and token checked); (kind, message) when it is
        refused. Every field of any JSON type gets a typed refusal, never an exception."""
        n_components, n_features = header.get("n_components"), header.get("n_features")
        scheme, n_bits, max_batch = header.get("scheme"), header.get("n_bits"), header.get("max_batch")
        pixels = self.context.device.camera_pixels
        if not _is_count(n_components) or not 1 <= n_components <= pixels:
            return "InvalidInputError", f"n_components={_shown(n_components)}: the device has {pixels} camera pixels"
        if n_components * _RESULT_ITEM_BYTES > self.context.limits.max_result_bytes:
            return REQUEST_TOO_LARGE_KIND, (
                f"one vector's result ({n_components} float32 values) exceeds max_result_bytes="
                f"{self.context.limits.max_result_bytes}"
            )
        if n_features is not None:
            if not _is_count(n_features):
                return "InvalidInputError", f"n_features={_shown(n_features)} must be null or a positive integer"
            problem = self.context.device.features_problem(n_features)
            if problem:
                return "InvalidInputError", problem
        if scheme not in PROJECTION_SCHEMES:
            return "InvalidInputError", f"scheme={_shown(scheme)}; choose one of {PROJECTION_SCHEMES}"
        if n_bits is not None and (not _is_count(n_bits) or not 1 <= n_bits <= 16):
            return "InvalidInputError", f"n_bits={_shown(n_bits)} must be null or an integer within 1..16"
        if not _is_count(max_batch):
            return "InvalidInputError", f"max_batch={_shown(max_batch)} must be a positive integer"
        self.n_components, self.n_features, self.scheme, self.n_bits = n_components, n_features, scheme, n_bits
        self.max_batch = min(max_batch, self.context.limits.max_batch)
        return None

    def _welcome(self) -> dict[str, Any]:
        """WELCOME's header: the device's identity and what this connection may send."""
        device, limits = self.context.device, self.context.limits
        return {
            "protocol_version": wire.PROTOCOL_VERSION,
            "service_version": __version__,
            "model": device.model,
            "serial_number": device.serial_number,
            "firmware_version": device.firmware_version,
            "n_features": self.n_features,
            "n_components": self.n_components,
            "max_batch": self.max_batch,
            "max_message_bytes": limits.max_message_bytes,
            "max_header_bytes": limits.max_header_bytes,
            "max_result_bytes": limits.max_result_bytes,
            "device_fingerprint": device.fingerprint,
            "frame_time_us": device.frame_time_us,
        }

    # -- requests -----------------------------------------------------------------------------------------------
    def _serve_requests(self, sock: socket.socket) -> None:
        """Read PROJECT requests one at a time and answer each, until BYE or the service's stop."""
        context, limits = self.context, self.context.limits

        def check_header(prefix: wire.Prefix, header: dict[str, Any], spec: Any) -> None:
            if prefix.type == MessageType.PROJECT:
                self._admit_request(sock, prefix, None if spec is None else spec[1])

        while not context.scheduler.stopping:
            self.conn.mark_idle()  # evictable after idle_grace_s when the clients are full
            try:
                message = wire.read_message(
                    sock,
                    self._request_limits(),
                    time.monotonic() + limits.idle_timeout_s,
                    limits.message_timeout_s,
                    check_header,
                    self.conn.mark_started,
                )
            except _RefusedRequest as exc:
                if not self._refuse(sock, exc):
                    return
                continue
            if message.type == MessageType.BYE:
                return
            if message.type != MessageType.PROJECT:
                raise ProtocolError(f"unexpected {message.type.name} from a client")
            self._serve_request(sock, message)
            del message  # the payload is not kept while the connection idles (its reservation was returned)

    def _admit_request(self, sock: socket.socket, prefix: wire.Prefix, shape: tuple[int, ...] | None) -> None:
        """From a PROJECT's header, before its payload is read or anything allocated: check its shape and its
        result size, and reserve its payload and result bytes from the memory budget (waiting for room within
        request_timeout_s). Raises _RefusedRequest with the ERROR to send."""
        limits, stats = self.context.limits, self.context.stats
        problem = self._check_shape(shape)
        if problem is not None:
            raise _RefusedRequest(prefix.request_id, "InvalidInputError", problem, prefix.payload_bytes, "requests")
        assert shape is not None
        result_bytes = shape[0] * self.n_components * _RESULT_ITEM_BYTES
        nbytes = prefix.payload_bytes + result_bytes
        if result_bytes > limits.max_result_bytes or nbytes > limits.max_total_bytes:
            what, limit = (
                ("result", f"max_result_bytes={limits.max_result_bytes}")
                if result_bytes > limits.max_result_bytes
                else ("payload and result", f"the service's memory budget, max_total_bytes={limits.max_total_bytes}")
            )
            raise _RefusedRequest(
                prefix.request_id,
                REQUEST_TOO_LARGE_KIND,
                f"a request of {shape[0]} vectors x {self.n_components} components needs {nbytes} bytes "
                f"({what}: {result_bytes} of result); that exceeds {limit}: split the batch",
                prefix.payload_bytes,
                "requests_too_large",
            )
        self.request_deadline = time.monotonic() + limits.request_timeout_s
        budget = self.context.budget
        reservation = budget.reserve(nbytes, time.monotonic(), lambda: True)
        if reservation is None:
            stats.count(requests_waited_for_memory=1)
            scheduler = self.context.scheduler
            reservation = budget.reserve(
                nbytes, self.request_deadline, lambda: scheduler.stopping or _peer_failed(sock)
            )
        if reservation is None and self.context.scheduler.stopping:
            raise _RefusedRequest(
                prefix.request_id, SHUTDOWN_KIND, "the service is shutting down", prefix.payload_bytes, "requests"
            )
        if reservation is None:
            raise _RefusedRequest(
                prefix.request_id,
                SERVICE_BUSY_KIND,
                f"the service holds {budget.held_bytes} of its {limits.max_total_bytes} bytes for other requests "
                f"and found no room for this one's {nbytes} within {limits.request_timeout_s} s; retry later",
                prefix.payload_bytes,
                "requests_refused_busy",
            )
        self.reservation = reservation

    def _refuse(self, sock: socket.socket, exc: _RefusedRequest) -> bool:
        """Answer a request refused from its header, then read and discard its payload; whether the connection
        can go on (False: the payload did not come within message_timeout_s, or the client left)."""
        conn, limits = self.conn, self.context.limits
        counters = {"requests": 1, "request_errors": 1}
        counters[exc.counter] = 1
        self.context.stats.count(**counters)
        _log.info("client %d (%s): request refused from its header: %s", conn.number, conn.peer, exc.message)
        sock.settimeout(limits.send_timeout_s)
        wire.send_message(sock, MessageType.ERROR, exc.request_id, {"kind": exc.kind, "message": exc.message})
        try:
            wire.drain(sock, exc.payload_bytes, time.monotonic() + limits.message_timeout_s)
        except (TimeoutError, PeerClosedError, OSError):
            _log.info("client %d (%s): the refused request's payload did not follow; closing", conn.number, conn.peer)
            return False
        return True

    def _serve_request(self, sock: socket.socket, message: wire.Message) -> None:
        """Answer one PROJECT (paced, then run on the device); the connection counts as busy until its reply is
        written, and the request's memory reservation is returned then."""
        conn = self.conn
        request_id = message.request_id
        with conn.lock:
            conn.busy = True
        array: np.ndarray | None = None
        try:
            self._pace()
            reply_type, header, array = self._handle_project(message)
            sock.settimeout(self.context.limits.send_timeout_s)
            wire.send_message(sock, reply_type, request_id, header, array)
        finally:
            array = None  # the result goes before its reservation does
            self._release()
            with conn.lock:
                conn.busy = False

    def _request_limits(self) -> WireLimits:
        """What a PROJECT of this connection may carry: once its width is known, max_batch x n_features float64
        values (never more than max_message_bytes), so a connection cannot make the service hold more."""
        limits = self.context.limits
        payload_bytes = limits.max_message_bytes
        if self.n_features is not None:
            payload_bytes = min(payload_bytes, self.max_batch * self.n_features * 8)
        return WireLimits(limits.max_header_bytes, payload_bytes)

    def _check_shape(self, shape: tuple[int, ...] | None) -> str | None:
        """Why a PROJECT of this shape is refused (checked from its header, before its payload is read)."""
        if shape is None or len(shape) != 2:
            return "PROJECT needs a 2-D (batch, n_features) array payload"
        batch, width = shape
        if self.n_features is None:
            device = self.context.device
            if width < 1:
                return "errors have zero features"
            if width > device.dmd_width * device.dmd_height:
                return f"{width} features do not fit the {device.dmd_width}x{device.dmd_height} DMD"
        elif width != self.n_features:
            return f"errors have {width} features; this connection takes {self.n_features}"
        if batch > self.max_batch:
            return f"a batch of {batch} exceeds max_batch={self.max_batch}"
        return None

    def _check_request(self, E: np.ndarray | None) -> str | None:
        """Why a PROJECT's errors are refused, or None; the first accepted one fixes the connection's width."""
        if E is None or E.ndim != 2:
            return "PROJECT needs a 2-D (batch, n_features) array payload"
        batch, width = E.shape
        if self.n_features is None:
            if width < 1:
                return "errors have zero features"
            problem = self.context.device.features_problem(width)
            if problem:
                return problem
            self.n_features = width  # fixed by the first call, as in-process projectors do
        elif width != self.n_features:
            return f"errors have {width} features; this connection takes {self.n_features}"
        if batch > self.max_batch:
            return f"a batch of {batch} exceeds max_batch={self.max_batch}"
        if not all(bool(np.isfinite(chunk).all()) for chunk in row_chunks(E)):
            return "errors contain NaN or Inf"
        return None

    def _pace(self) -> None:
        """Hold a PROJECT that came faster than ``max_requests_per_s`` until its turn (its client waits for the
        reply, so its next request comes later: pacing, not refusal)."""
        wait_s = self.bucket.wait_s()
        if wait_s <= 0:
            return
        self.context.stats.count(requests_paced=1)
        resume = time.monotonic() + wait_s
        while not self.context.scheduler.stopping and time.monotonic() < resume:
            time.sleep(min(_PEER_POLL_S, max(0.0, resume - time.monotonic())))

    def _handle_project(self, message: wire.Message) -> tuple[MessageType, dict[str, Any], np.ndarray | None]:
        """Validate a PROJECT, hand it to the device thread, wait for it; the reply (type, header, array)."""
        stats, limits = self.context.stats, self.context.limits
        stats.count(requests=1)
        problem = self._check_request(message.array)
        if problem is not None:
            stats.count(request_errors=1)
            return MessageType.ERROR, {"kind": "InvalidInputError", "message": problem}, None
        E = message.array
        assert E is not None
        if E.shape[0] == 0:
            return MessageType.RESULT, {}, np.zeros((0, self.n_components), dtype=np.float32)
        request = self.context.scheduler.submit(E, self.n_components, self.scheme, self.n_bits, self.reservation)
        deadline = self.request_deadline
        while not request.done.wait(_PEER_POLL_S):
            if _peer_gone(self.conn.sock):
                # The client is gone (it reset the connection, as dfa_client does when it gives up): the device
                # drops the request before its next call, and nothing is written. A client that only closed its
                # sending side (a FIN) may still read: it gets its reply.
                request.abandoned = True
                stats.count(requests_abandoned=1)
                raise PeerClosedError("the client disconnected while its request waited")
            if time.monotonic() >= deadline:
                request.abandoned = True
                stats.count(request_errors=1)
                return (
                    MessageType.ERROR,
                    {
                        "kind": "RequestTimeoutError",
                        "message": f"the device did not answer within {limits.request_timeout_s} s",
                    },
                    None,
                )
        if request.error is not None:
            stats.count(request_errors=1)
            return MessageType.ERROR, request.error.header(), None
        stats.count(vectors=E.shape[0])
        return MessageType.RESULT, {}, request.result


def _send_error_and_close(sock: socket.socket, request_id: int, kind: str, message: str) -> None:
    """Best effort: tell the client why (within a second), then close."""
    with contextlib.suppress(OSError):
        sock.settimeout(1.0)
        wire.send_message(sock, MessageType.ERROR, request_id, {"kind": kind, "message": message})
    with contextlib.suppress(OSError):
        sock.close()


def _peer_gone(sock: socket.socket) -> bool:
    """Whether the client has gone: the connection was reset (dfa_client resets when it gives up on a request) or
    failed. A FIN alone is a half-close (the client sent its request and shut its sending side) and is not "gone":
    the reply is still written. Reads nothing of the stream: a non-blocking peek at the plain socket (also under
    TLS, whose records it does not decrypt)."""
    if _peer_failed(sock):
        return True
    timeout = sock.gettimeout()
    try:
        sock.setblocking(False)
        socket.socket.recv(sock, 1, socket.MSG_PEEK)  # b"" is a FIN: a half-close
        return False
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset, or another failure of the connection
        return True
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _peer_failed(sock: socket.socket) -> bool:
    """Whether the connection has failed (reset by the client): a pending socket error, read without touching the
    stream (unread payload bytes may still be waiting in front of the reset)."""
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0
    except OSError:
        return True


def _shown(value: object, limit: int = 60) -> str:
    """A HELLO field's value for a refusal message: its repr, cut to ``limit`` characters (any JSON value)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_count(value: object) -> TypeGuard[int]:
    """Whether ``value`` is an int >= 1 (not a bool): JSON numbers from a HELLO."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1
