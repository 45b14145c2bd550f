"""The OPU service's device thread: the only thread that touches the Opu.

Connections submit validated requests (:meth:`Scheduler.submit`) and wait on them; the device thread takes every
pending request at once (in arrival order, while they fit one device call's bounds), groups those with the same
(n_features, n_components, scheme, n_bits) and makes one device call per group, so throughput grows with load:
requests that arrive while the device is busy share its next call.

Equality with a request alone: ``Opu.linear_transform_many`` encodes each request on its own (a real-valued one gets
bit planes scaled on that request alone, as a direct call would), sends every request's ternary rows in one batch
and decodes each with its own encoder. Each row depends only on its own frames, so with a noiseless device a
coalesced result is bit-identical to the direct ``Opu.linear_transform`` of the same vectors.

The service's device calls go through the Opu's public API only; what it needs to know of the linear mode to bound
them (``call_bytes``, ``FRAMES_PER_TERNARY``) comes from ``opu_driver.opu``.
"""

from __future__ import annotations

import collections
import logging
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfa_client.errors import kind_chain

from ..errors import OpuError
from ..opu import FRAMES_PER_TERNARY, Opu, call_bytes
from .limits import ServiceLimits, StatsCounter

__all__ = ["SHUTDOWN_KIND", "Failure", "Request", "Scheduler"]

_log = logging.getLogger(__name__)

SHUTDOWN_KIND = "ServiceShutdown"
"""ERROR kind of requests the service failed because it is stopping (clients retry them elsewhere or later)."""


@dataclass(frozen=True)
class Failure:
    """Why a request failed, as its ERROR reply says it.

    Attributes:
        kind: the ERROR kind (a driver error's class name, or one of the service's own kinds).
        message: the human-readable reason.
        kinds: for a driver error, its class's name and its bases' up to ``OpuError`` (most specific first), so
            that the client maps it exactly as its in-process backend maps the exception itself.
    """

    kind: str
    message: str
    kinds: tuple[str, ...] = ()

    @classmethod
    def of_driver_error(cls, exc: OpuError) -> Failure:
        """The failure a driver error makes: its class name, message and class chain."""
        return cls(type(exc).__name__, str(exc), tuple(kind_chain(exc, OpuError)))

    def header(self) -> dict[str, Any]:
        """The ERROR message's header."""
        header: dict[str, Any] = {"kind": self.kind, "message": self.message}
        if self.kinds:
            header["kinds"] = list(self.kinds)
        return header


RequestKey = tuple[int, int, str, int | None]
"""(n_features, n_components, scheme, n_bits): requests with the same key can share a device call."""


class Request:
    """One PROJECT: its validated errors, and once done its result or its error (kind, message).

    ``abandoned`` is set by the waiting connection when its client has gone or its time is up: the device thread
    then skips the request if it has not taken it yet."""

    __slots__ = ("key", "E", "cost_bytes", "done", "result", "error", "abandoned")

    def __init__(self, key: RequestKey, E: np.ndarray, cost_bytes: int = 0) -> None:
        self.key = key
        self.E = E
        self.cost_bytes = cost_bytes
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: Failure | None = None
        self.abandoned = False

    def finish(self, result: np.ndarray | None = None, error: Failure | None = None) -> None:
        """Record the outcome and wake the waiting connection."""
        self.result, self.error = result, error
        self.done.set()


def _cost_bytes(E64: np.ndarray, n_components: int, scheme: str, n_bits: int | None) -> int:
    """A request's working memory in a device call (``call_bytes`` of its frames): a ternary request with
    ``n_bits`` None is one bit plane, any other ``n_bits`` planes (8 when None)."""
    planes = 1 if n_bits is None and np.isin(E64, (-1.0, 0.0, 1.0)).all() else (n_bits or 8)
    frames = E64.shape[0] * planes * FRAMES_PER_TERNARY[scheme]
    return call_bytes(frames, E64.shape[1], n_components)


class Scheduler:
    """The queue of pending requests and the device thread that serves it (:meth:`run`).

    Stopping (:meth:`stop`) is decided under the queue's lock, so a request is either queued before it (and then
    run, or failed with ``SHUTDOWN_KIND`` by the device thread as it ends) or failed with ``SHUTDOWN_KIND`` at
    once: none is left waiting.
    """

    def __init__(self, limits: ServiceLimits, stats: StatsCounter) -> None:
        self._limits = limits
        self._stats = stats
        self._queue: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._paused = False
        self._stopping = False

    @property
    def stopping(self) -> bool:
        """Whether the service is stopping (set once by :meth:`stop`, never cleared)."""
        return self._stopping

    def stop(self) -> bool:
        """Stop: the device thread finishes its call in progress, fails what is queued and ends; later
        submissions fail at once. Returns False when the scheduler was stopping already."""
        with self._cv:
            if self._stopping:
                return False
            self._stopping = True
            self._cv.notify_all()
        return True

    def pause(self) -> None:
        """Stop handing requests to the device; they queue until :meth:`resume`."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        """Hand queued requests to the device again."""
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        """Requests waiting for the device."""
        with self._cv:
            return len(self._queue)

    def submit(self, E: np.ndarray, n_components: int, scheme: str, n_bits: int | None) -> Request:
        """Queue a validated, non-empty (batch, n_features) request for the device thread; the returned request
        is finished by it (or already finished with ``SHUTDOWN_KIND`` when the service is stopping)."""
        E64 = np.asarray(E, dtype=np.float64)
        request = Request(
            (E64.shape[1], n_components, scheme, n_bits), E64, _cost_bytes(E64, n_components, scheme, n_bits)
        )
        with self._cv:
            if self._stopping:
                request.finish(error=Failure(SHUTDOWN_KIND, "the service is shutting down"))
            else:
                self._queue.append(request)
                self._cv.notify_all()
        return request

    def run(self, opu: Opu) -> None:
        """The device thread: serve queued requests on ``opu`` until :meth:`stop`."""
        while True:
            with self._cv:
                while not self._stopping and (self._paused or not self._queue):
                    self._cv.wait(0.5)
                if self._stopping:
                    leftover = list(self._queue)
                    self._queue.clear()
                    break
                taken = self._take()
            groups: dict[RequestKey, list[Request]] = {}
            for request in taken:
                groups.setdefault(request.key, []).append(request)
            for key, requests in groups.items():
                requests = [request for request in requests if not request.abandoned]
                if requests:
                    self._run_group(opu, key, requests)
        for request in leftover:
            request.finish(error=Failure(SHUTDOWN_KIND, "the service is shutting down; the request was not run"))

    def _take(self) -> list[Request]:
        """Take queued requests in order while they fit one device call's bounds (at least one request; a single
        request above max_device_bytes is split into chunks by project_many itself). Called under the lock."""
        taken: list[Request] = []
        rows = cost = 0
        while self._queue:
            head = self._queue[0]
            if head.abandoned:
                self._queue.popleft()
                continue
            if taken and (
                rows + head.E.shape[0] > self._limits.max_device_rows
                or cost + head.cost_bytes > self._limits.max_device_bytes
            ):
                break
            taken.append(self._queue.popleft())
            rows += head.E.shape[0]
            cost += head.cost_bytes
        return taken

    def _run_group(self, opu: Opu, key: RequestKey, requests: list[Request]) -> None:
        """One device call for requests of the same sizes and options; each gets exactly its own rows."""
        n_features, n_components, scheme, n_bits = key
        try:
            # each request encoded on its own (its own bit-plane scale), as few device calls as fit the bound, and
            # the same checks as a direct linear_transform
            results = opu.linear_transform_many(
                [request.E for request in requests],
                n_components,
                scheme,
                n_bits,
                max_call_bytes=self._limits.max_device_bytes,
            )
            self._stats.count(device_calls=1)
        except OpuError as exc:
            _log.warning("device call for %d request(s) failed: %s", len(requests), exc)
            failure = Failure.of_driver_error(exc)
            for request in requests:
                request.finish(error=failure)
            return
        except Exception as exc:  # a bug: fail these requests, keep serving
            _log.exception("device call for %d request(s) failed", len(requests))
            for request in requests:
                request.finish(error=Failure("InternalError", f"{type(exc).__name__}: {exc}"))
            return
        for request, out in zip(requests, results, strict=True):  # one result per batch
            request.finish(result=np.ascontiguousarray(out, dtype=np.float32))
