"""The OPU service's device thread: the only thread that touches the Opu.

Connections submit validated requests (:meth:`Scheduler.submit`) and wait on them. The device thread keeps the
requests in progress in arrival order and serves them one device call at a time: a call takes the first request's
(n_features, n_components, scheme, n_bits) and rows of every request in progress with the same sizes, while they
fit the call's bounds (``max_device_bytes`` of working memory, ``max_device_rows`` vectors, ``device_call_s`` of
device time). A large request is therefore split into several calls; between two calls the device thread drops
the requests whose client has gone or timed out, lets newly arrived requests join, and sends the requests it
served to the back of the line, so another client's small request waits for one call at most, not for the whole
large one. Throughput still grows with load: requests that arrive while the device is busy share its next call.

Equality with a request alone: ``Opu.linear_transform_many`` encodes each batch on its own (a real-valued one gets
bit planes scaled on that batch, as a direct call would), sends every batch's ternary rows in one call and decodes
each with its own encoder. Each row depends only on its own frames and its batch's scale, so when a request is
split, each of its pieces carries its request's scale: a piece whose own largest magnitude is smaller gets one
extra row holding the request's largest value (and, for ``n_bits`` None, one holding half of it when the piece
alone would look ternary); those rows' results are discarded. With a noiseless device a coalesced or split result
is therefore bit-identical to the direct ``Opu.linear_transform`` of the same vectors.

Payloads stay in the dtype they came in (float32 or float64): nothing here copies a whole payload; the scans of a
request (finite values, ternary or not) go through row chunks of bounded size.

The service's device calls go through the Opu's public API only; what it needs to know of the linear mode to bound
them (``call_bytes``, ``FRAMES_PER_TERNARY``) comes from ``opu_driver.opu``.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from dfa_client.errors import kind_chain

from ..errors import OpuError
from ..opu import FRAMES_PER_TERNARY, Opu, call_bytes
from .budget import Reservation
from .limits import ServiceLimits, StatsCounter

__all__ = ["SHUTDOWN_KIND", "Failure", "Request", "Scheduler", "row_chunks"]

_log = logging.getLogger(__name__)

SHUTDOWN_KIND = "ServiceShutdown"
"""ERROR kind of requests the service failed because it is stopping (clients retry them elsewhere or later)."""

_SCAN_ELEMENTS = 1 << 20  # values per row chunk when a request is scanned (bounded temporaries)


def row_chunks(E: np.ndarray) -> Iterator[np.ndarray]:
    """Views of ``E``'s rows in chunks of about a million values, so that a scan's temporaries stay small."""
    step = max(1, _SCAN_ELEMENTS // max(1, E.shape[1]))
    for start in range(0, E.shape[0], step):
        yield E[start : start + step]


def _is_ternary(E: np.ndarray) -> bool:
    """Whether every value of E is -1, 0 or 1 (the linear mode's own test, ``np.isin``, chunk by chunk)."""
    return all(bool(np.isin(chunk, (-1, 0, 1)).all()) for chunk in row_chunks(E))


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
    """One PROJECT: its validated errors, its progress, and once done its result or its failure.

    ``abandoned`` is set by the waiting connection when its client has gone or its time is up: the device thread
    then drops the request before its next call (a request split into several calls stops between two).
    """

    __slots__ = (
        "key",
        "E",
        "encoded",
        "peak",
        "row_frames",
        "row_bytes",
        "next_row",
        "out",
        "reservation",
        "done",
        "result",
        "error",
        "abandoned",
    )

    def __init__(self, key: RequestKey, E: np.ndarray, reservation: Reservation | None = None) -> None:
        n_features, n_components, scheme, n_bits = key
        self.key = key
        self.E = E
        # Bit planes (an encoder fitted on the whole request) unless ternary with n_bits None, as the linear mode.
        self.encoded = n_bits is not None or not _is_ternary(E)
        planes = (n_bits or 8) if self.encoded else 1
        self.row_frames = planes * FRAMES_PER_TERNARY[scheme]
        self.row_bytes = call_bytes(self.row_frames, n_features, n_components)
        # The request's largest magnitude as one of its own values (its bit-plane scale): min and max, no copy.
        lo, hi = E.min(), E.max()
        self.peak = hi if hi >= -lo else -lo
        self.next_row = 0
        self.out: np.ndarray | None = None
        self.reservation = reservation
        self.done = threading.Event()
        self.result: np.ndarray | None = None
        self.error: Failure | None = None
        self.abandoned = False

    @property
    def rows(self) -> int:
        return int(self.E.shape[0])

    def finish(self, result: np.ndarray | None = None, error: Failure | None = None) -> None:
        """Record the outcome and wake the waiting connection."""
        self.result, self.error = result, error
        self.done.set()

    def drop(self) -> None:
        """The device thread lets go of the request (its rows and its reservation)."""
        self.out = None
        if self.reservation is not None:
            self.reservation.release()
            self.reservation = None

    def piece(self, lo: int, hi: int) -> np.ndarray:
        """Rows lo..hi as a batch that is encoded exactly as within the whole request: a piece of an encoded
        request gets the rows that give it the request's scale and its bit planes (their results are dropped)."""
        rows = self.E[lo:hi]
        if not self.encoded or (lo == 0 and hi == self.rows):
            return rows
        extra = []
        if max(rows.max(), -rows.min()) < self.peak:
            extra.append(self._row(self.peak))  # the request's scale
        n_bits = self.key[3]
        if n_bits is None and self.peak == 1 and _is_ternary(rows):
            extra.append(self._row(self.peak / 2))  # keeps the piece in bit planes, as its request is
        return np.concatenate([rows, *extra]) if extra else rows

    def _row(self, value: Any) -> np.ndarray:
        row = np.zeros((1, self.E.shape[1]), dtype=self.E.dtype)
        row[0, 0] = value
        return row


class Scheduler:
    """The queue of submitted requests and the device thread that serves it (:meth:`run`).

    Stopping (:meth:`stop`) is decided under the queue's lock, so a request is either queued before it (and then
    run, or failed with ``SHUTDOWN_KIND`` by the device thread as it ends) or failed with ``SHUTDOWN_KIND`` at
    once: none is left waiting. The device call in progress finishes; a request split into several calls is
    failed with ``SHUTDOWN_KIND`` between two of them.
    """

    def __init__(self, limits: ServiceLimits, stats: StatsCounter) -> None:
        self._limits = limits
        self._stats = stats
        self._queue: collections.deque[Request] = collections.deque()
        self._cv = threading.Condition()
        self._paused = False
        self._stopping = False
        self._call_frames: int | None = None  # device_call_s in frames, once the frame time is known

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
        """Stop handing requests to the device (between two calls); they queue until :meth:`resume`."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        """Hand queued requests to the device again."""
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    @property
    def pending(self) -> int:
        """Requests submitted and not yet taken by the device thread."""
        with self._cv:
            return len(self._queue)

    def submit(
        self,
        E: np.ndarray,
        n_components: int,
        scheme: str,
        n_bits: int | None,
        reservation: Reservation | None = None,
    ) -> Request:
        """Queue a validated, non-empty (batch, n_features) request for the device thread (``E`` is kept as it is,
        not copied); the returned request is finished by it (or already finished with ``SHUTDOWN_KIND`` when the
        service is stopping). The device thread holds ``reservation`` while it holds the request."""
        request = Request((E.shape[1], n_components, scheme, n_bits), E)
        with self._cv:
            if self._stopping:
                request.finish(error=Failure(SHUTDOWN_KIND, "the service is shutting down"))
            else:
                if reservation is not None:
                    reservation.hold()
                    request.reservation = reservation
                self._queue.append(request)
                self._cv.notify_all()
        return request

    def run(self, opu: Opu, frame_time_us: int | None = None) -> None:
        """The device thread: serve requests on ``opu`` until :meth:`stop`. ``frame_time_us`` (the camera's frame
        time, None when unknown) turns ``device_call_s`` into a bound on a call's frames."""
        if frame_time_us:
            self._call_frames = max(1, int(self._limits.device_call_s * 1e6 / frame_time_us))
        active: collections.deque[Request] = collections.deque()  # taken, in the order of their next turn
        while True:
            with self._cv:
                while not self._stopping and (self._paused or not (self._queue or active)):
                    self._cv.wait(0.5)
                if self._stopping:
                    leftover = [*active, *self._queue]
                    self._queue.clear()
                    break
                active.extend(self._queue)
                self._queue.clear()
            for request in [r for r in active if r.abandoned]:
                active.remove(request)
                request.drop()
            if not active:
                continue
            pieces = self._plan(active)
            self._run_call(opu, pieces)
            served = [request for request, _, _ in pieces]
            rest = [request for request in active if request not in served]
            active = collections.deque(rest + [request for request in served if not request.done.is_set()])
            for request in served:
                if request.done.is_set():
                    request.drop()
        for request in leftover:
            request.finish(error=Failure(SHUTDOWN_KIND, "the service is shutting down; the request was not run"))
            request.drop()

    def _plan(self, active: collections.deque[Request]) -> list[tuple[Request, int, int]]:
        """The next device call: the first request's sizes, and rows of every request in progress with the same
        sizes, in order, while they fit the call's bounds (at least one row). An encoded request's piece counts
        two more rows for what :meth:`Request.piece` may add."""
        key = active[0].key
        bytes_left, rows_left = self._limits.max_device_bytes, self._limits.max_device_rows
        frames_left = self._call_frames
        pieces: list[tuple[Request, int, int]] = []
        for request in active:
            if request.key != key:
                continue
            spare = 2 if request.encoded else 0
            take = min(request.rows - request.next_row, rows_left, bytes_left // request.row_bytes - spare)
            if frames_left is not None:
                take = min(take, frames_left // request.row_frames - spare)
            if take < 1:
                if pieces:
                    break
                take = 1  # a single row above the bounds still goes, alone (linear_transform_many splits it)
            lo = request.next_row
            pieces.append((request, lo, lo + take))
            rows_left -= take
            bytes_left -= (take + spare) * request.row_bytes
            if frames_left is not None:
                frames_left -= (take + spare) * request.row_frames
            if rows_left < 1 or bytes_left < 1 or (frames_left is not None and frames_left < 1):
                break
        return pieces

    def _run_call(self, opu: Opu, pieces: list[tuple[Request, int, int]]) -> None:
        """One device call for the pieces (requests of the same sizes and options); each request gets exactly its
        own rows, and is finished once all of them are done. A failure fails every request of the call."""
        n_features, n_components, scheme, n_bits = pieces[0][0].key
        requests = [request for request, _, _ in pieces]
        try:
            # each piece encoded on its own with its request's scale, in as few device calls as fit the bound,
            # with the same checks as a direct linear_transform
            outputs = opu.linear_transform_many(
                [request.piece(lo, hi) for request, lo, hi in pieces],
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
        for (request, lo, hi), rows in zip(pieces, outputs, strict=True):
            if lo == 0 and hi == request.rows:
                request.finish(result=np.ascontiguousarray(rows, dtype=np.float32))
                continue
            if request.out is None:
                request.out = np.empty((request.rows, n_components), dtype=np.float32)
            request.out[lo:hi] = rows[: hi - lo]
            request.next_row = hi
            if hi == request.rows:
                request.finish(result=request.out)
