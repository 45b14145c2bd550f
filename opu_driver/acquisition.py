"""Runs frame sequences and matches camera frames to DMD frames by id.

The camera may trail the DMD by k frames (docs/protocol.md 1.6): the exposure taken at trigger n sees the
frame displayed at trigger n - k. This runner never guesses: it matches each camera frame to the request by
the DMD frame id in its metadata, learns k from what it receives, appends k blank "flush" frames to later
sequences so that no extra round trip is needed, and flushes again when a result is still missing.

Ids start at a random point of the 32-bit id space in every session, so frames left in the device's pipeline
by an earlier session (or an interrupted request) never match a new request; they are discarded by id before
anything else is looked at. A request that fails half-way aborts the device's queue and drains the camera
stream, so the next request starts clean.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .devices.camera import Camera, Roi
from .devices.dmd import Dmd
from .devices.usb_link import UsbLink
from .errors import (
    CommunicationTimeoutError,
    ConnectionLostError,
    DeviceRefusedError,
    DeviceResetError,
    DroppedFramesError,
    ProtocolError,
)
from .protocol import MAX_FRAME_ID, CameraFrame, DeviceErrorCode, PixelFormat
from .transport import StallError

__all__ = ["SequenceRunner", "AcquisitionCounters", "Expected", "FrameSink", "RetryPolicy"]

_log = logging.getLogger(__name__)

FrameSink = Callable[[int, CameraFrame], None]
"""Receives (index of the frame in the request, its camera frame)."""

QueueFn = Callable[[int, int, int], None]
"""Queues frames [start, stop) of the request with the first DMD frame id given."""

_DRAIN_TIMEOUT_S = 0.05
_DRAIN_MAX_READS = 10_000


@dataclass
class AcquisitionCounters:
    """What the runner did, for diagnostics (``Opu.counters``).

    The fault counters say what went wrong on the way and what was done about it: ``retries`` sequences re-run
    after a fault, ``frames_resent`` frames queued again by them and ``frames_recovered`` results they
    delivered; ``requests_recovered`` requests that succeeded only thanks to a retry, ``requests_failed``
    requests that raised after a fault. ``frames_missing`` counts frames that did not arrive in an attempt
    (dropped, lost to a corrupt packet, a reset or a timeout); ``corrupt_packets``, ``timeouts``, ``stalls``,
    ``resets_detected``, ``duplicate_frames`` and ``reordered_frames`` count the faults seen; ``light_restored``
    the times the laser, shutter or power were found changed without the driver (a controller restart) and
    written back; ``reconnects`` the times the device was unplugged and reopened after it came back.
    """

    sequences: int = 0
    frames_sent: int = 0
    flush_frames_sent: int = 0
    frames_matched: int = 0
    frames_discarded: int = 0
    saturated_frames: int = 0
    dark_frames: int = 0
    recoveries: int = 0
    lag_frames: int = 0
    retries: int = 0
    frames_resent: int = 0
    frames_recovered: int = 0
    frames_missing: int = 0
    requests_recovered: int = 0
    requests_failed: int = 0
    corrupt_packets: int = 0
    timeouts: int = 0
    stalls: int = 0
    resets_detected: int = 0
    duplicate_frames: int = 0
    reordered_frames: int = 0
    light_restored: int = 0
    reconnects: int = 0


@dataclass(frozen=True)
class RetryPolicy:
    """When a failed sequence is run again (``OpuSettings.retries`` and ``retry_backoff_s``).

    A retry is safe when the fault could only lose or spoil camera frames, never change what the device
    displays: a timeout, a stall, a corrupt packet, dropped frames, frames whose metadata contradict the
    settings (a device that reset). The runner then aborts and drains (``recover``), clears halts, lets the
    caller restore the device state (layout, ROI), waits ``backoff_s * 2**(attempt-1)`` (at most
    ``max_backoff_s``), and queues only the frames whose results are still missing, with fresh ids: a late
    frame of an earlier attempt can never fill a slot. Refusals, interlock trips, lost connections and
    interrupts are never retried.

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


_RETRYABLE = (CommunicationTimeoutError, ProtocolError, DroppedFramesError, StallError, DeviceResetError)


@dataclass(frozen=True)
class Expected:
    """What every camera frame of a request must say about itself."""

    roi: Roi
    pixel_format: PixelFormat
    exposure_us: int


class SequenceRunner:
    """Queues, triggers and collects one chunk of frames at a time, re-running lost frames as ``policy`` allows.

    ``link`` (optional) is the USB link under the camera: the runner clears halted endpoints through it and
    counts the corrupt packets its parser reports.
    """

    def __init__(self, dmd: Dmd, camera: Camera, timeout_s: float = 5.0, max_lag_frames: int = 64,
                 policy: RetryPolicy | None = None, link: UsbLink | None = None) -> None:
        self._dmd = dmd
        self._camera = camera
        self._link = link
        self.timeout_s = timeout_s
        self.max_lag_frames = max_lag_frames
        self.policy = policy or RetryPolicy()
        self.counters = AcquisitionCounters()
        self._next_id = secrets.randbelow(MAX_FRAME_ID // 2)

    @property
    def lag_frames(self) -> int:
        """DMD-to-camera lag learned from the frame ids (0 until seen otherwise)."""
        return self.counters.lag_frames

    def _reserve_ids(self, count: int) -> int:
        if self._next_id + count > MAX_FRAME_ID:
            self._next_id = 0
        first = self._next_id
        self._next_id += count
        return first

    def run(
        self,
        n_frames: int,
        queue: QueueFn,
        queue_blank: Callable[[int, int], None],
        sink: FrameSink,
        expected: Expected,
        capacity: int,
        restore: Callable[[], None] | None = None,
        reconnect: Callable[[], None] | None = None,
    ) -> None:
        """Display ``n_frames`` frames queued by ``queue`` and hand each camera frame to ``sink``, exactly once.

        ``queue_blank(first_id, count)`` queues blank flush frames. ``capacity`` is the most frames one sequence
        may hold (sequence memory and camera FIFO); flushing is split over several sequences when needed.
        ``restore()`` is called before a retry to put back device state a reset may have lost (layout, ROI).
        ``reconnect()`` is called when the connection was lost (the device unplugged) and a retry is left, with
        ``policy.reconnect_timeout_s`` > 0: it must reopen the same device within that time or raise
        ConnectionLostError (or DeviceNotFoundError); the missing frames are then re-run after ``restore()``.

        The whole call, retries and backoff included, ends within ``timeout_s`` plus the display time of every
        attempt's frames plus the backoff waits. Raises DeviceRefusedError when the device refuses the frames,
        DroppedFramesError when frames never arrive, ProtocolError for a corrupt packet or metadata that
        contradict the camera settings, StallError when an endpoint stalls, CommunicationTimeoutError when the
        device stops answering: at once when ``policy.retries`` is 0, else once the retries are spent. After any
        failure (including KeyboardInterrupt) the device queue is aborted and the camera stream drained.
        """
        done = np.zeros(n_frames, dtype=bool)
        policy = self.policy
        frame_time_s = self._camera.settings.frame_time_us * 1e-6
        budget_s = self.timeout_s + (1 + policy.retries) * (n_frames + self.max_lag_frames) * frame_time_s
        budget_s += sum(policy.wait_s(k) for k in range(1, policy.retries + 1))
        can_reconnect = reconnect is not None and policy.reconnect_timeout_s > 0
        if can_reconnect:
            budget_s += policy.retries * policy.reconnect_timeout_s
        deadline = time.monotonic() + budget_s
        attempt = 0
        needs_restore = False
        try:
            while True:
                todo = np.flatnonzero(~done)
                try:
                    if needs_restore and restore is not None:
                        # part of the attempt: a fault while restoring is retried like one in the sequence
                        restore()
                    needs_restore = False
                    self._run(todo, queue, queue_blank, sink, expected, capacity, done, deadline)
                except ConnectionLostError as exc:
                    if not can_reconnect or attempt >= policy.retries:
                        raise
                    assert reconnect is not None
                    attempt += 1
                    missing = n_frames - int(done.sum())
                    self.counters.frames_missing += missing
                    _log.warning("connection lost (%s); waiting up to %.3g s for the device to come back, then "
                                 "re-running the %d of %d frames still missing (retry %d of %d)", exc,
                                 policy.reconnect_timeout_s, missing, n_frames, attempt, policy.retries)
                    reconnect()  # raises ConnectionLostError or DeviceNotFoundError when it does not come back
                    self.counters.reconnects += 1
                    self.counters.retries += 1
                    _log.info("reconnected to the device; restoring its state")
                    self.recover()
                    if done.all():  # only flush frames were lost: put the state back and the request is done
                        if restore is not None:
                            restore()
                        self.counters.requests_recovered += 1
                        return
                    needs_restore = True
                    self.counters.frames_resent += missing
                    continue
                except _RETRYABLE as exc:
                    self._count_fault(exc, n_frames - int(done.sum()))
                    if done.all():
                        # Only blank flush frames were lost: every result is in. Clean up, and done.
                        _log.info("%s after every result arrived (%s): recovering without a retry",
                                  type(exc).__name__, exc)
                        self.recover()
                        self._restore_quietly(restore, exc)  # it may have been a reset: leave the device ready
                        self.counters.requests_recovered += 1
                        return
                    wait_s = policy.wait_s(attempt + 1)
                    if attempt >= policy.retries or time.monotonic() + wait_s >= deadline:
                        raise
                    attempt += 1
                    missing = n_frames - int(done.sum())
                    self.counters.retries += 1
                    _log.warning("retry %d of %d after %s: %s; re-running the %d of %d frames still missing",
                                 attempt, policy.retries, type(exc).__name__, exc, missing, n_frames)
                    self.recover()
                    time.sleep(wait_s)
                    needs_restore = True
                    self.counters.frames_resent += missing
                    continue
                if attempt:
                    self.counters.requests_recovered += 1
                    self.counters.frames_recovered += len(todo)
                    _log.info("recovered %d frames after %d retries", len(todo), attempt)
                return
        except BaseException as exc:
            self.recover()
            if isinstance(exc, _RETRYABLE):
                self.counters.requests_failed += 1
                # The fault may have been a reset: leave the device as the next request expects it.
                self._restore_quietly(restore, exc)
            raise

    @staticmethod
    def _restore_quietly(restore: Callable[[], None] | None, cause: BaseException) -> None:
        """Put the device state back after a fault; a failure is logged (the next request checks again)."""
        if restore is None:
            return
        try:
            restore()
        except Exception as restore_exc:
            _log.warning("could not restore the device state after %s: %s", type(cause).__name__, restore_exc)

    def _count_fault(self, exc: BaseException, missing: int) -> None:
        counters = self.counters
        counters.frames_missing += missing
        if isinstance(exc, CommunicationTimeoutError):
            counters.timeouts += 1
        elif isinstance(exc, StallError):
            counters.stalls += 1
        elif isinstance(exc, ProtocolError) and "corrupt packet" in exc.message:
            counters.corrupt_packets += 1

    def recover(self) -> None:
        """Clear halted endpoints, abort the device's queue and drain stale camera frames; never raises."""
        self.counters.recoveries += 1
        if self._link is not None:
            self._link.clear_halts()
        try:
            self._dmd.abort()
        except Exception as exc:  # the device may be gone; the caller sees the original error
            _log.warning("abort after a failed request failed: %s", exc)
        self._camera.drain(_DRAIN_TIMEOUT_S, _DRAIN_MAX_READS)

    def _queue_checked(self, queue_some: Callable[[], None], count: int) -> None:
        """Queue frames and verify the device took them all, before anything is displayed."""
        before = self._dmd.queued_frames
        if before:
            _log.warning("%d frames were queued on the device by someone else: aborting them", before)
            self._dmd.abort()
            before = self._dmd.queued_frames
        queue_some()
        after = self._dmd.queued_frames
        if after - before != count:
            code = self._dmd.last_error()
            raise DeviceRefusedError(
                f"device queued {after - before} of {count} frames: {DeviceErrorCode.describe(code)}", code or None
            )

    def _run(
        self, todo: np.ndarray, queue: QueueFn, queue_blank, sink: FrameSink, expected: Expected, capacity: int,
        done: np.ndarray, request_deadline: float,
    ) -> None:
        """One attempt: the frames ``todo`` (request indices, ascending) get ids first_id + k, k their position."""
        n_frames = len(todo)
        if n_frames > capacity:
            raise ValueError(f"{n_frames} frames exceed the {capacity} one sequence holds")  # caller's bug
        flush = max(0, min(self.lag_frames, self.max_lag_frames, capacity - n_frames))
        first_id = self._reserve_ids(n_frames + self.max_lag_frames + flush)
        next_flush_id = first_id + n_frames
        n_done = 0
        camera_first = self._camera.frame_count
        dropped_before = self._camera.dropped_frames
        # Runs of consecutive indices are queued with one call each (the first attempt: exactly one).
        breaks = np.flatnonzero(np.diff(todo) != 1) + 1
        run_starts = np.concatenate(([0], breaks)).astype(np.int64)
        run_ends = np.concatenate((breaks, [n_frames])).astype(np.int64)

        def queue_main_and_flush() -> None:
            for lo, hi in zip(run_starts.tolist(), run_ends.tolist()):
                queue(int(todo[lo]), int(todo[hi - 1]) + 1, first_id + lo)
            if flush:
                queue_blank(next_flush_id, flush)

        self._queue_checked(queue_main_and_flush, n_frames + flush)
        next_flush_id += flush
        to_read = n_frames + flush
        self.counters.frames_sent += n_frames
        self.counters.flush_frames_sent += flush
        flushed = flush
        seen_camera_ids: set[int] = set()
        last_camera_id = -1
        while True:
            self._dmd.start()
            self.counters.sequences += 1
            timeout_s = self.timeout_s + to_read * self._camera.settings.frame_time_us * 1e-6
            deadline = min(time.monotonic() + timeout_s, request_deadline)
            try:
                while to_read:
                    left_s = max(deadline - time.monotonic(), 1e-3)
                    for frame in self._camera.read_frames(to_read, left_s):
                        position = (frame.camera_frame_id - camera_first) & 0xFFFFFFFF
                        if position >= 0x80000000:
                            # Captured before this request's first trigger: not one of the frames we wait for.
                            self.counters.frames_discarded += 1
                            continue
                        if position in seen_camera_ids:
                            # The same exposure sent twice: it was counted when it first came.
                            self.counters.duplicate_frames += 1
                            continue
                        seen_camera_ids.add(position)
                        if position < last_camera_id:
                            self.counters.reordered_frames += 1
                        last_camera_id = max(last_camera_id, position)
                        to_read -= 1
                        k = (frame.dmd_frame_id - first_id) & 0xFFFFFFFF
                        if k >= n_frames or done[todo[k]]:
                            # Blank, flush, or from an earlier request or attempt: never data for this one.
                            self.counters.frames_discarded += 1
                            continue
                        index = int(todo[k])
                        self._check(frame, expected)
                        lag = position - k
                        if lag != self.counters.lag_frames:
                            if lag < 0 or lag > self.max_lag_frames:
                                raise ProtocolError(
                                    f"camera frame for DMD frame {index} arrived at an impossible lag {lag}"
                                )
                            _log.info("DMD-to-camera lag is %d frames", lag)
                            self.counters.lag_frames = lag
                        if frame.dark:
                            self.counters.dark_frames += 1
                        if frame.saturated:
                            self.counters.saturated_frames += 1
                        sink(index, frame)
                        done[index] = True
                        n_done += 1
            except CommunicationTimeoutError as exc:
                dropped = self._camera.dropped_frames - dropped_before
                if dropped:
                    raise DroppedFramesError(
                        f"the device dropped {dropped} camera frames (its FIFO overflowed); "
                        f"{n_frames - n_done} of {n_frames} results are missing",
                        missing=n_frames - n_done,
                    ) from exc
                raise
            if n_done == n_frames:
                self.counters.frames_matched += n_frames
                return
            missing = n_frames - n_done
            # The missing frames are the last ones, still in the camera pipeline: flush them out. With the
            # lag known, exactly enough blanks; otherwise as many as are missing, up to max_lag_frames.
            more = self.lag_frames - flushed if self.lag_frames > flushed else missing
            more = min(more, self.max_lag_frames - flushed, capacity)
            if more <= 0:
                first_missing = int(todo[np.flatnonzero(~done[todo])[0]])
                raise DroppedFramesError(
                    f"{missing} of {n_frames} camera frames never arrived (first missing: frame {first_missing}; "
                    f"lag allowed up to {self.max_lag_frames} frames); the device counts "
                    f"{self._camera.dropped_frames - dropped_before} dropped frames",
                    missing=missing,
                )
            self._queue_checked(lambda: queue_blank(next_flush_id, more), more)
            next_flush_id += more
            flushed += more
            self.counters.flush_frames_sent += more
            to_read = more

    @staticmethod
    def _check(frame: CameraFrame, expected: Expected) -> None:
        roi = expected.roi
        if (frame.roi_x, frame.roi_y, frame.roi_w, frame.roi_h) != (roi.x, roi.y, roi.width, roi.height):
            raise ProtocolError(
                f"camera frame {frame.camera_frame_id} has ROI {frame.roi_x},{frame.roi_y},{frame.roi_w}x"
                f"{frame.roi_h}, expected {roi}"
            )
        if frame.pixel_format != expected.pixel_format:
            raise ProtocolError(
                f"camera frame {frame.camera_frame_id} has pixel format {frame.pixel_format}, "
                f"expected {expected.pixel_format!r}"
            )
        if frame.exposure_us != expected.exposure_us:
            raise ProtocolError(
                f"camera frame {frame.camera_frame_id} was exposed {frame.exposure_us} us, "
                f"expected {expected.exposure_us} us"
            )

