"""The remote backend: ``tcp://host:port``, the OPU service (``opu serve``), numpy and the standard library only.

One connection per projector, one request in flight on it (calls are serialised by the base class). Every request
carries an id that never repeats within the projector's life; a reply with another id is a protocol error and is
never returned. Projections are stateless, so on a lost connection (or a service that says it is shutting down)
the request is re-sent on a new connection, at most ``retries`` times with exponential backoff; then
ConnectionFailedError. A request with no reply within its timeout raises RequestTimeoutError (the connection is
dropped, so a late reply can never be taken for the next request's, and the service skips the request if it has
not run yet). A request's timeout is ``timeout_s`` plus twice its own device time (its frame count times the frame
time the service announces), so a large batch is not cut off by a limit sized for small ones.

The first WELCOME fixes the device identity (model, serial number, firmware and the service's
``device_fingerprint`` of what fixes the random matrix); a reconnect that lands on another identity raises
DeviceChangedError before the request is sent, so a result from another device is never returned.

Tokens never appear in messages, reprs or logs: URLs are redacted (``token=***``) wherever they are quoted.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import numpy.typing as npt

from . import wire
from .base import DEFAULT_MAX_BATCH, Projector, ProjectorInfo, finite_float
from .errors import (
    ConnectionFailedError,
    DeviceChangedError,
    DfaError,
    InvalidInputError,
    RequestTimeoutError,
    RequestTooLargeError,
    UnsupportedUrlError,
    error_from_kinds,
)
from .security import TokenFileError, client_tls_context, default_token_path, is_loopback, read_token_file
from .wire import MessageType, PeerClosedError, ProtocolError, WireLimits

__all__ = [
    "RemoteProjector",
    "SCHEMES",
    "parse_tcp_url",
    "redact_url",
    "SHUTDOWN_KIND",
    "TOO_MANY_CLIENTS_KIND",
    "IDENTITY_KEYS",
]

_log = logging.getLogger(__name__)

SCHEMES = ("tcp", "tcps")
"""The service's URL schemes: plain TCP, and TLS."""
SHUTDOWN_KIND = "ServiceShutdown"
TOO_MANY_CLIENTS_KIND = "TooManyClients"
_RETRYABLE_KINDS = (SHUTDOWN_KIND, TOO_MANY_CLIENTS_KIND)
"""ERROR kinds a later connection may cure: retried with the backoff, then ConnectionFailedError."""
IDENTITY_KEYS = ("model", "serial_number", "firmware_version", "device_fingerprint")
"""WELCOME fields that must not change across reconnects (else DeviceChangedError)."""
_DEVICE_TIME_MARGIN = 2.0  # a request's own device time counts this many times in its timeout
_FRAMES_PER_TERNARY = {"four_frame": 4, "two_frame": 2}
_REPLY_HEADER_BYTES = 64 * 1024
_LINGER_RESET = struct.pack("HH" if sys.platform == "win32" else "ii", 1, 0)
"""SO_LINGER on, 0 s: close() resets the connection (struct linger: two u_short on Windows, two int elsewhere)."""


_T = TypeVar("_T")


class _Retryable(Exception):
    """The connection failed in a way a new connection may cure (lost, refused, service restarting)."""


class _Answered(Exception):
    """The service answered with an ERROR: ``error`` is raised to the caller, and the connection, still in step,
    is kept (a service that closes it after a refusal is reconnected on the next call)."""

    def __init__(self, error: DfaError) -> None:
        super().__init__(str(error))
        self.error = error


_TOKEN_VALUE = re.compile(r"(token=)[^&#;]*", re.IGNORECASE)
_USER_INFO = re.compile(r"(//)[^/?#@]*@")


def redact_url(url: str) -> str:
    """``url`` with every token value (and any user:password@ part) replaced by ``***``, for messages and
    reprs. Works on text, so it also redacts URLs that do not parse."""
    return _USER_INFO.sub(r"\1***@", _TOKEN_VALUE.sub(r"\1***", url))


def parse_tcp_url(url: str) -> tuple[str, int, str | None]:
    """(host, port, token or None) of ``tcp://host:port[?token=T]`` or ``tcps://host:port[?token=T]`` (TLS).

    Raises:
        UnsupportedUrlError: another form; its message quotes the URL with the token redacted.
    """
    shown = repr(redact_url(url))
    try:
        parts = urlsplit(url)
    except ValueError:
        raise UnsupportedUrlError(f"{shown}: not a valid URL") from None
    if parts.scheme not in SCHEMES or parts.path not in ("", "/") or parts.fragment or "@" in parts.netloc:
        raise UnsupportedUrlError(f"{shown}: the service's URL is tcp://host:port or tcps://host:port (TLS)")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise UnsupportedUrlError(f"{shown}: bad port") from None
    if not host or port is None or port == 0:
        raise UnsupportedUrlError(f"{shown}: give the host and the port, {parts.scheme}://host:port")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = set(query) - {"token"}
    if unknown:
        names = sorted(redact_url(name) for name in unknown)
        raise UnsupportedUrlError(f"{shown}: unknown option(s) {names}; {parts.scheme}:// takes token only")
    return host, port, query.get("token")


def _tls_for(url: str, ca_file: str | os.PathLike[str] | None) -> ssl.SSLContext | None:
    """The TLS settings of a ``tcps://`` URL (None for ``tcp://``); InvalidInputError for a CA file that cannot
    be loaded, or a CA file given to ``tcp://``."""
    if urlsplit(url).scheme != "tcps":
        if ca_file is not None:
            raise InvalidInputError("ca_file is for tcps:// URLs (a service with TLS)")
        return None
    try:
        return client_tls_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise InvalidInputError(f"cannot load the CA file {ca_file}: {exc}") from None


def _resolve_token(host: str, token: str | None, token_file: str | os.PathLike[str] | None) -> str | None:
    """The token to present: ``token`` ("" for none), else ``token_file``'s, else for a loopback host the default
    token file's if it exists (a remote host never gets the local service's token unasked)."""
    if token is not None:
        if not isinstance(token, str):
            raise InvalidInputError("token must be a string")
        return token or None
    try:
        if token_file is not None:
            found = read_token_file(token_file)
            if found is None:
                raise InvalidInputError(f"the token file {token_file} does not exist")
            return found
        if is_loopback(host):
            return read_token_file(default_token_path())
    except TokenFileError as exc:
        raise InvalidInputError(str(exc)) from None
    return None


def _redact(url: str) -> str:
    """The projector's public URL: without its query (the token), as before."""
    parts = urlsplit(url)
    return parts._replace(query="").geturl() if "token" in parts.query.lower() else url


class RemoteProjector(Projector):
    """Projections computed by the OPU service.

    Args:
        url: ``tcp://host:port``, or ``tcps://host:port`` for a service with TLS (``?token=T`` is accepted; the
            ``token`` option wins).
        n_components, n_features, scheme, n_bits, max_batch: the projector options. The service may lower
            max_batch (to its own limit, and so that a request fits its message size limit).
        token: the service's shared secret. None: ``token_file``'s, else, for a loopback host, the one in the
            default token file the service made (``dfa_client.security.default_token_path()``) if it exists.
            ``""``: send none (a service started without a token).
        token_file: a file holding the token (read when ``token`` is None and the URL has none).
        ca_file: for ``tcps://``, a PEM file of the CA (or the self-signed certificate) that signed the service's
            certificate; default: the system's CAs. The service's host name is checked against it too.
        allow_cleartext: send a token to a non-loopback host over plain ``tcp://`` (refused otherwise: the token
            would cross the network in clear).
        timeout_s: the limit for connecting and for each request's reply.
        retries: re-sends on a lost connection before ConnectionFailedError.
        backoff_s: the first pause before a retry; it doubles with each one (capped at 2 s).

    The connection is made here, so a wrong token (AuthenticationError), an incompatible service
    (ProtocolVersionError) or options it refuses (InvalidInputError) show at once; an unreachable service raises
    ConnectionFailedError after the retries, within about (retries + 1) * timeout_s plus the backoff.
    """

    backend = "remote"

    def __init__(
        self,
        url: str,
        n_components: int,
        *,
        token: str | None = None,
        token_file: str | os.PathLike[str] | None = None,
        ca_file: str | os.PathLike[str] | None = None,
        allow_cleartext: bool = False,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        n_features: int | None = None,
        scheme: str = "four_frame",
        n_bits: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        if not isinstance(url, str):
            raise UnsupportedUrlError(f"url must be a string, got {type(url).__name__}")
        host, port, url_token = parse_tcp_url(url)  # redacts the token in its errors
        super().__init__(
            _redact(url), n_components, n_features=n_features, scheme=scheme, n_bits=n_bits, max_batch=max_batch
        )
        self.timeout_s = finite_float(timeout_s, "timeout_s")
        self.backoff_s = finite_float(backoff_s, "backoff_s")
        if isinstance(retries, bool) or not isinstance(retries, (int, np.integer)) or retries < 0:
            raise InvalidInputError(f"retries must be an integer >= 0, got {retries!r}")
        self.retries = int(retries)
        self._tls = _tls_for(url, ca_file)
        self._token = _resolve_token(host, url_token if token is None else token, token_file)
        if self._tls is None and self._token is not None and not allow_cleartext and not is_loopback(host):
            raise InvalidInputError(
                f"{host} is not a loopback address and tcp:// is not encrypted: the token would cross the network "
                "in clear. Use tcps:// (a service with TLS), or allow_cleartext=True on a trusted network"
            )
        self._address = (host, port)
        self._requested_max_batch = self.max_batch
        self._sock: socket.socket | None = None
        self._welcome: dict[str, Any] = {}
        self._identity: dict[str, Any] | None = None  # the first WELCOME's; later ones must match it
        self._frame_time_s = 0.0
        self._max_message_bytes = 0
        self._max_result_bytes = 0
        self._ids = itertools.count(1)
        self.reconnects = 0
        self._with_retries(lambda: None)  # connect now: a wrong token or version shows at once

    # -- connection ---------------------------------------------------------------------------------------
    def _connect(self) -> None:
        """Open a connection and shake hands (HELLO -> WELCOME)."""
        try:
            sock = socket.create_connection(self._address, timeout=self.timeout_s)
        except OSError as exc:  # refused, unreachable, timed out
            raise _Retryable(f"cannot connect to {self._address[0]}:{self._address[1]}: {exc}") from exc
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._start_tls(sock)
            hello = {
                "protocol_version": wire.PROTOCOL_VERSION,
                "token": self._token,
                "n_components": self.n_components,
                "n_features": self.n_features,
                "scheme": self.scheme,
                "n_bits": self.n_bits,
                "max_batch": self._requested_max_batch,
            }
            wire.send_message(sock, MessageType.HELLO, 0, hello)
            reply = wire.read_message(sock, WireLimits(_REPLY_HEADER_BYTES, 0), time.monotonic() + self.timeout_s)
            if reply.type == MessageType.ERROR:
                self._raise_error(reply)
            if reply.type != MessageType.WELCOME or reply.request_id != 0:
                raise ProtocolError(f"the service answered HELLO with {reply.type.name}")
            welcome = reply.header
            max_batch, max_bytes = welcome.get("max_batch"), welcome.get("max_message_bytes")
            if not (isinstance(max_batch, int) and max_batch > 0 and isinstance(max_bytes, int) and max_bytes > 0):
                raise ProtocolError(f"WELCOME without valid limits: {welcome}"[:500])
            identity = {key: welcome.get(key) for key in IDENTITY_KEYS}
            if self._identity is not None and identity != self._identity:
                changed = {
                    key: (self._identity[key], identity[key])
                    for key in IDENTITY_KEYS
                    if identity[key] != self._identity[key]
                }
                raise DeviceChangedError(
                    f"the service at {self._address[0]}:{self._address[1]} now serves another device or another "
                    f"random matrix (first -> now: {changed}); nothing was sent. Open a new projector to use it"
                )
        except (OSError, PeerClosedError) as exc:  # incl. a timeout: the handshake never completed
            with contextlib.suppress(OSError):
                sock.close()
            if isinstance(exc, DfaError):  # a TLS failure: final (it is an OSError, as ConnectionError is)
                raise
            raise _Retryable(f"the handshake with {self._address[0]}:{self._address[1]} failed: {exc}") from exc
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
        self._welcome = welcome
        if self._identity is None:
            self._identity = identity
        frame_time_us = welcome.get("frame_time_us")
        self._frame_time_s = (
            float(frame_time_us) * 1e-6
            if isinstance(frame_time_us, (int, float))
            and not isinstance(frame_time_us, bool)
            and 0 < frame_time_us < 1e9
            else 0.0
        )
        self.max_batch = min(self._requested_max_batch, max_batch)
        self._max_message_bytes = max_bytes
        max_result = welcome.get("max_result_bytes")  # absent from older services: checked by the service only
        self._max_result_bytes = max_result if isinstance(max_result, int) and max_result > 0 else 0
        self._sock = sock
        _log.debug("connected to %s:%d (%s %s)", *self._address, welcome.get("model"), welcome.get("serial_number"))

    def _start_tls(self, sock: socket.socket) -> ssl.SSLSocket:
        """The TLS handshake (within timeout_s). A certificate that does not verify, or a service that does not
        speak TLS, is ConnectionFailedError at once: retrying cannot cure it."""
        assert self._tls is not None
        host = self._address[0]
        try:
            return self._tls.wrap_socket(sock, server_hostname=host)
        except ssl.SSLError as exc:
            with contextlib.suppress(OSError):
                sock.close()
            raise ConnectionFailedError(
                f"TLS with {host}:{self._address[1]} failed: {exc.reason or exc} (is it a tcps:// service, and is "
                "its certificate signed by ca_file or a system CA, for this host name?)"
            ) from exc

    def _drop(self, abort: bool = False) -> None:
        """Close the connection. ``abort``: with a reset (SO_LINGER 0) rather than a FIN, which the service
        reads as "the client is gone" and drops the request in progress (a FIN alone is a half-close, still
        answered)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                if abort:
                    self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                self._sock.close()
            self._sock = None

    def _raise_error(self, reply: wire.Message) -> NoReturn:
        """An ERROR reply as the client error the one mapping gives (dfa_client.errors.error_from_kinds: the
        in-process backend raises the same class for the same driver failure), or a retry."""
        kind = str(reply.header.get("kind", "ServiceError"))
        message = str(reply.header.get("message", ""))
        if kind in _RETRYABLE_KINDS:
            raise _Retryable(
                f"{kind}: {message}" if kind != SHUTDOWN_KIND else f"the service is shutting down: {message}"
            )
        kinds = reply.header.get("kinds")  # a driver error's class and bases, most specific first
        if not (isinstance(kinds, list) and kinds and kinds[0] == kind and all(isinstance(k, str) for k in kinds)):
            kinds = [kind]  # an error of the service's own (or an older service's): its kind alone
        raise _Answered(error_from_kinds(kinds, message))

    def _with_retries(self, action: Callable[[], _T]) -> _T:
        """Run ``action``; on a _Retryable failure drop the connection, back off and try again, at most
        ``retries`` more times; then ConnectionFailedError (the last failure chained)."""
        attempt = 0
        while True:
            try:
                if self._sock is None:
                    self._connect()
                return action()
            except _Retryable as exc:
                self._drop()
                if attempt >= self.retries:
                    raise ConnectionFailedError(
                        f"the service at {self._address[0]}:{self._address[1]} is "
                        f"unavailable after {attempt + 1} attempt(s): {exc}"
                    ) from exc
                pause_s = min(2.0, self.backoff_s * 2**attempt)
                attempt += 1
                self.reconnects += 1
                _log.info("%s; retry %d of %d in %.2f s", exc, attempt, self.retries, pause_s)
                time.sleep(pause_s)
            except _Answered as exc:
                raise exc.error from None  # the service answered: the connection is in step and stays open
            except BaseException:
                # a timeout, a protocol error or an interrupt leaves the stream in an unknown state: reset it, so
                # that the service drops the request if it is still running it
                self._drop(abort=True)
                raise

    # -- projection ----------------------------------------------------------------------------------------
    def _project(self, E: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        result_bytes = E.shape[0] * self.n_components * 4
        if self._max_message_bytes and E.nbytes > self._max_message_bytes:
            raise RequestTooLargeError(
                f"a request of {E.nbytes} bytes exceeds the service's limit of "
                f"{self._max_message_bytes}; split the batch",
                "MessageTooLarge",
            )
        if self._max_result_bytes and result_bytes > self._max_result_bytes:
            raise RequestTooLargeError(
                f"a result of {E.shape[0]} x {self.n_components} float32 values ({result_bytes} bytes) exceeds "
                f"the service's max_result_bytes={self._max_result_bytes}; split the batch",
                "RequestTooLarge",
            )
        if E.shape[0] > self.max_batch:
            raise InvalidInputError(f"a batch of {E.shape[0]} exceeds the service's max_batch={self.max_batch}")
        request_id = next(self._ids)
        return self._with_retries(lambda: self._exchange(request_id, E))

    def _frames(self, E: npt.NDArray[np.floating[Any]]) -> int:
        """DMD frames the request costs at most: batch x bit planes x frames per ternary projection."""
        if self.n_bits is None and np.isin(E, (-1.0, 0.0, 1.0)).all():
            planes = 1
        else:
            planes = self.n_bits or 8
        return E.shape[0] * planes * _FRAMES_PER_TERNARY.get(self.scheme, 4)

    def request_timeout_s(self, E: npt.ArrayLike) -> float:
        """How long a request for ``E`` waits for its reply: ``timeout_s`` (network, queueing behind other
        clients, the first call's calibration) plus twice the request's own device time (frames x the frame time
        the service announced)."""
        return self.timeout_s + _DEVICE_TIME_MARGIN * self._frames(np.asarray(E)) * self._frame_time_s

    def _exchange(self, request_id: int, E: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        sock = self._sock
        assert sock is not None
        expected_bytes = E.shape[0] * self.n_components * 4
        timeout_s = self.request_timeout_s(E)
        try:
            sock.settimeout(timeout_s)
            wire.send_message(sock, MessageType.PROJECT, request_id, None, E)
            reply = wire.read_message(
                sock, WireLimits(_REPLY_HEADER_BYTES, expected_bytes), time.monotonic() + timeout_s
            )
        except TimeoutError as exc:
            raise RequestTimeoutError(f"no reply from the service within {timeout_s:.3g} s") from exc
        except (OSError, PeerClosedError) as exc:
            raise _Retryable(f"connection lost: {exc}") from exc
        if reply.type == MessageType.ERROR and reply.request_id in (request_id, 0):
            self._raise_error(reply)  # id 0: about the connection, not a request
        if reply.request_id != request_id:
            raise ProtocolError(
                f"a {reply.type.name} for request {reply.request_id} arrived while request {request_id} was pending"
            )
        if reply.type != MessageType.RESULT:
            raise ProtocolError(f"unexpected {reply.type.name} in reply to PROJECT")
        out = reply.array
        if out is None or out.dtype != np.float32 or out.shape != (E.shape[0], self.n_components):
            raise ProtocolError(
                f"a RESULT of {None if out is None else (out.dtype, out.shape)} for a request of "
                f"{E.shape[0]} vectors and {self.n_components} components"
            )
        return out.astype(np.float32, copy=False)  # native byte order (a no-op on little-endian hosts)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.settimeout(1.0)
                wire.send_message(self._sock, MessageType.BYE, 0)
        self._drop()

    @property
    def info(self) -> ProjectorInfo:
        details = {
            key: self._welcome.get(key)
            for key in (
                "service_version",
                "protocol_version",
                "model",
                "serial_number",
                "firmware_version",
                "device_fingerprint",
            )
        }
        details["address"] = f"{self._address[0]}:{self._address[1]}"
        return ProjectorInfo(
            "remote", self.url, self.n_features, self.n_components, self.scheme, self.n_bits, self.max_batch, details
        )
