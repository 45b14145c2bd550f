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

import dataclasses
import functools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..devices import Camera, Dmd, Roi
from ..errors import CommunicationTimeoutError, DeviceRefusedError, DroppedFramesError, InvalidInputError, ProtocolError
from ..protocol import MAX_FRAME_ID, CameraFrame, DeviceErrorCode, PixelFormat
from .counters import AcquisitionCounters, new_tally
from .retry import RetryPolicy, run_with_retries

__all__ = ["SequenceRunner", "Expected", "FrameSink", "check_frame"]

_log = logging.getLogger(__name__)

FrameSink = Callable[[int, CameraFrame], None]
"""Receives (index of the frame in the request, its camera frame)."""

QueueFn = Callable[[int, int, int], None]
"""Queues frames [start, stop) of the request with the first DMD frame id given."""

_DRAIN_TIMEOUT_S = 0.05
_DRAIN_MAX_READS = 10_000


@dataclass(frozen=True)
class Expected:
    """What every camera frame of a request must say about itself."""

    roi: Roi
    pixel_format: PixelFormat
    exposure_us: int


@dataclass
class _Attempt:
    """The state of one attempt: which request frames it runs, under which ids, and what has come back."""

    todo: np.ndarray
    done: np.ndarray
    first_id: int
    camera_first: int
    dropped_before: int
    n_done: int = 0
    seen_positions: set[int] = field(default_factory=set)
    last_position: int = -1


class SequenceRunner:
    """Queues, triggers and collects one chunk of frames at a time, re-running lost frames as ``policy`` allows.

    ``clear_link_faults`` (optional) clears what a fault left on the link the DMD and camera share (stalled
    endpoints); it is part of every recovery.
    """

    def __init__(
        self,
        dmd: Dmd,
        camera: Camera,
        timeout_s: float = 5.0,
        max_lag_frames: int = 64,
        policy: RetryPolicy | None = None,
        clear_link_faults: Callable[[], None] | None = None,
    ) -> None:
        self._dmd = dmd
        self._camera = camera
        self._clear_link_faults = clear_link_faults
        self.timeout_s = timeout_s
        self.max_lag_frames = max_lag_frames
        self.policy = policy or RetryPolicy()
        self.tally = new_tally()
        self._lag_frames = 0
        self._next_id = secrets.randbelow(MAX_FRAME_ID // 2)

    @property
    def counters(self) -> AcquisitionCounters:
        """What the runner did so far (a snapshot)."""
        return AcquisitionCounters(**dataclasses.asdict(self.tally))

    @property
    def lag_frames(self) -> int:
        """DMD-to-camera lag in frames: learned from the frame ids (0 until seen otherwise), or set."""
        return self._lag_frames

    @lag_frames.setter
    def lag_frames(self, lag_frames: int) -> None:
        if (
            isinstance(lag_frames, bool)
            or not isinstance(lag_frames, (int, np.integer))
            or not 0 <= lag_frames <= self.max_lag_frames
        ):
            raise InvalidInputError(
                f"lag_frames must be an integer within 0..{self.max_lag_frames}, got {lag_frames!r}"
            )
        self._lag_frames = int(lag_frames)

    def reserve_ids(self, count: int) -> int:
        """``count`` consecutive frame ids never used before in this session; returns the first."""
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
        Retries go through :func:`~opu_driver.acquisition.retry.run_with_retries`.

        The whole call, retries and backoff included, ends within ``timeout_s`` plus the display time of every
        attempt's frames plus the backoff waits. Raises DeviceRefusedError when the device refuses the frames,
        DroppedFramesError when frames never arrive, ProtocolError for a corrupt packet or metadata that
        contradict the camera settings, StallError when an endpoint stalls, CommunicationTimeoutError when the
        device stops answering: at once when ``policy.retries`` is 0, else once the retries are spent. After any
        failure (including KeyboardInterrupt) the device queue is aborted and the camera stream drained.
        """
        done = np.zeros(n_frames, dtype=bool)
        policy = self.policy
        frame_time_s = self._frame_time_us() * 1e-6
        budget_s = self.timeout_s + (1 + policy.retries) * (n_frames + self.max_lag_frames) * frame_time_s
        budget_s += policy.total_wait_s()
        if reconnect is not None and policy.reconnect_timeout_s > 0:
            budget_s += policy.retries * policy.reconnect_timeout_s
        deadline = time.monotonic() + budget_s
        attempts = {"count": 0, "last": 0}

        def attempt() -> bool:
            todo = np.flatnonzero(~done)
            attempts["count"] += 1
            attempts["last"] = len(todo)
            self._run(todo, queue, queue_blank, sink, expected, capacity, done, deadline)
            return True

        finished = run_with_retries(
            policy,
            attempt,
            tally=self.tally,
            recover=self.recover,
            restore=restore,
            reconnect=reconnect,
            deadline=deadline,
            complete=lambda: bool(done.all()),
            missing=lambda: n_frames - int(done.sum()),
            what="the sequence",
        )
        if finished and attempts["count"] > 1:
            self.tally.frames_recovered += attempts["last"]

    def recover(self, count: bool = True) -> None:
        """Clear halted endpoints, abort the device's queue and drain stale camera frames; never raises.

        ``count`` False leaves ``recoveries`` alone (the clean-up when a session opens is not a recovery).
        """
        if count:
            self.tally.recoveries += 1
        if self._clear_link_faults is not None:
            self._clear_link_faults()
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
        self,
        todo: np.ndarray,
        queue: QueueFn,
        queue_blank: Callable[[int, int], None],
        sink: FrameSink,
        expected: Expected,
        capacity: int,
        done: np.ndarray,
        request_deadline: float,
    ) -> None:
        """One attempt: the frames ``todo`` (request indices, ascending) get ids first_id + k, k their position."""
        n_frames = len(todo)
        if n_frames > capacity:
            raise ValueError(f"{n_frames} frames exceed the {capacity} one sequence holds")  # caller's bug
        flush = max(0, min(self._lag_frames, self.max_lag_frames, capacity - n_frames))
        attempt = _Attempt(
            todo,
            done,
            self.reserve_ids(n_frames + self.max_lag_frames + flush),
            self._camera.frame_count,
            self._camera.dropped_frames,
        )
        next_flush_id = attempt.first_id + n_frames
        # Runs of consecutive indices are queued with one call each (the first attempt: exactly one).
        breaks = np.flatnonzero(np.diff(todo) != 1) + 1
        run_starts = np.concatenate(([0], breaks)).astype(np.int64)
        run_ends = np.concatenate((breaks, [n_frames])).astype(np.int64)

        def queue_main_and_flush() -> None:
            for lo, hi in zip(run_starts.tolist(), run_ends.tolist(), strict=True):
                queue(int(todo[lo]), int(todo[hi - 1]) + 1, attempt.first_id + lo)
            if flush:
                queue_blank(next_flush_id, flush)

        self._queue_checked(queue_main_and_flush, n_frames + flush)
        next_flush_id += flush
        to_read = n_frames + flush
        self.tally.frames_sent += n_frames
        self.tally.flush_frames_sent += flush
        flushed = flush
        while True:
            self._dmd.start()
            self.tally.sequences += 1
            self._read_sequence(attempt, to_read, request_deadline, expected, sink)
            if attempt.n_done == n_frames:
                self.tally.frames_matched += n_frames
                return
            more = self._flush_needed(attempt, flushed, capacity)
            self._queue_checked(functools.partial(queue_blank, next_flush_id, more), more)
            next_flush_id += more
            flushed += more
            self.tally.flush_frames_sent += more
            to_read = more

    def _frame_time_us(self) -> int:
        """The camera's frame time; an open camera's settings are complete (read at open, merged on configure)."""
        frame_time_us = self._camera.settings.frame_time_us
        assert frame_time_us is not None
        return frame_time_us

    def _read_sequence(
        self, attempt: _Attempt, to_read: int, request_deadline: float, expected: Expected, sink: FrameSink
    ) -> None:
        """Read the ``to_read`` camera frames of a started sequence, handing each result to ``sink``."""
        timeout_s = self.timeout_s + to_read * self._frame_time_us() * 1e-6
        deadline = min(time.monotonic() + timeout_s, request_deadline)
        try:
            while to_read:
                left_s = max(deadline - time.monotonic(), 1e-3)
                for frame in self._camera.read_frames(to_read, left_s):
                    counted, index = self._place(frame, attempt)
                    to_read -= counted
                    if index is None:
                        continue
                    check_frame(frame, expected)
                    self.tally.dark_frames += frame.dark
                    self.tally.saturated_frames += frame.saturated
                    sink(index, frame)
                    attempt.done[index] = True
                    attempt.n_done += 1
        except CommunicationTimeoutError as exc:
            dropped = self._camera.dropped_frames - attempt.dropped_before
            if dropped:
                n_frames = len(attempt.todo)
                raise DroppedFramesError(
                    f"the device dropped {dropped} camera frames (its FIFO overflowed); "
                    f"{n_frames - attempt.n_done} of {n_frames} results are missing",
                    missing=n_frames - attempt.n_done,
                ) from exc
            raise

    def _place(self, frame: CameraFrame, attempt: _Attempt) -> tuple[int, int | None]:
        """Where a camera frame belongs: (1 if it is one of the exposures this sequence waits for, else 0;
        the request index its result fills, or None when it is no result of this attempt). Learns the lag."""
        position = (frame.camera_frame_id - attempt.camera_first) & 0xFFFFFFFF
        if position >= 0x80000000:
            # Captured before this request's first trigger: not one of the frames we wait for.
            self.tally.frames_discarded += 1
            return 0, None
        if position in attempt.seen_positions:
            # The same exposure sent twice: it was counted when it first came.
            self.tally.duplicate_frames += 1
            return 0, None
        attempt.seen_positions.add(position)
        if position < attempt.last_position:
            self.tally.reordered_frames += 1
        attempt.last_position = max(attempt.last_position, position)
        k = (frame.dmd_frame_id - attempt.first_id) & 0xFFFFFFFF
        if k >= len(attempt.todo) or attempt.done[attempt.todo[k]]:
            # Blank, flush, or from an earlier request or attempt: never data for this one.
            self.tally.frames_discarded += 1
            return 1, None
        index = int(attempt.todo[k])
        lag = position - k
        if lag != self._lag_frames:
            if lag < 0 or lag > self.max_lag_frames:
                raise ProtocolError(f"camera frame for DMD frame {index} arrived at an impossible lag {lag}")
            _log.info("DMD-to-camera lag is %d frames", lag)
            self._lag_frames = lag
        return 1, index

    def _flush_needed(self, attempt: _Attempt, flushed: int, capacity: int) -> int:
        """Blank frames to queue so the missing results leave the camera pipeline; DroppedFramesError when no
        more flushing can bring them."""
        n_frames = len(attempt.todo)
        missing = n_frames - attempt.n_done
        # The missing frames are the last ones, still in the camera pipeline: flush them out. With the
        # lag known, exactly enough blanks; otherwise as many as are missing, up to max_lag_frames.
        more = self._lag_frames - flushed if self._lag_frames > flushed else missing
        more = min(more, self.max_lag_frames - flushed, capacity)
        if more <= 0:
            first_missing = int(attempt.todo[np.flatnonzero(~attempt.done[attempt.todo])[0]])
            raise DroppedFramesError(
                f"{missing} of {n_frames} camera frames never arrived (first missing: frame {first_missing}; "
                f"lag allowed up to {self.max_lag_frames} frames); the device counts "
                f"{self._camera.dropped_frames - attempt.dropped_before} dropped frames",
                missing=missing,
            )
        return more


def check_frame(frame: CameraFrame, expected: Expected) -> None:
    """ProtocolError when a camera frame's metadata contradict the settings it was taken under (a reset)."""
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
