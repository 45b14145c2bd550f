"""Runs frame sequences and matches camera frames to DMD frames by id.

The camera may trail the DMD by k frames (docs/protocol.md 1.6): the exposure taken at trigger n sees the
frame displayed at trigger n - k. This runner never guesses: it matches each camera frame to the request by
the DMD frame id in its metadata, learns k from what it receives, appends k blank "flush" frames to later
sequences so that no extra round trip is needed, and flushes again when a result is still missing.

Ids start at a random point of the 32-bit id space in every session, so frames left in the device's pipeline
by an earlier session (or an interrupted request) never match a new request; they are discarded by id before
anything else is looked at. A request that fails half-way aborts the device's queue and drains the camera
stream, so the next request starts clean.

A frame lost on the way costs that frame only: a damaged packet (bad CRC, cut short) or a frame that never
arrives (dropped, swallowed by a cut packet) leaves a gap in the camera's frame positions; the runner keeps
reading the rest of the sequence, learns from the camera's own frame counter when every exposure has been made,
and shows the lost frames again, with fresh ids, in a further sequence of the same attempt, for as long as each
round brings results. A timeout, a stall or a reset still ends the attempt: the retry engine aborts, drains,
restores and runs what is missing.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..devices import Camera, DamagedFrame, Dmd, Roi
from ..errors import (
    CommunicationError,
    CommunicationTimeoutError,
    CorruptPacketError,
    DeviceRefusedError,
    DeviceResetError,
    DroppedFramesError,
    InvalidInputError,
    ProtocolError,
    StallError,
)
from ..protocol import MAX_FRAME_ID, CameraFrame, DeviceErrorCode, PixelFormat
from .counters import AcquisitionCounters, new_tally
from .retry import CLEARED_IN_A_ROW, RetryPolicy, count_fault, run_with_retries

__all__ = ["SequenceRunner", "Expected", "FrameSink", "check_frame"]

_log = logging.getLogger(__name__)

FrameSink = Callable[[int, CameraFrame], None]
"""Receives (index of the frame in the request, its camera frame)."""

QueueFn = Callable[[np.ndarray, int], None]
"""Queues the frames of the request at the given indices (ascending), with consecutive DMD frame ids from the first
id given: one transfer, however scattered the indices."""

_DRAIN_TIMEOUT_S = 0.05
_DRAIN_MAX_READS = 10_000
_QUIET_MIN_S = 0.01  # a read that waits this long (or _QUIET_FRAMES frame times) without data: ask the camera
_QUIET_FRAMES = 10
_QUIET_WINDOWS = 1  # quiet time, in read windows, after the last exposure before what is missing counts as lost
_POLL_S = 0.002  # the look for stragglers once every exposure is accounted for


@dataclass(frozen=True)
class Expected:
    """What every camera frame of a request must say about itself."""

    roi: Roi
    pixel_format: PixelFormat
    exposure_us: int


@dataclass
class _Attempt:
    """One attempt at a chunk of request frames: every frame it queued (by DMD frame id, in display order), what
    came back, and what the camera said about the exposures."""

    done: np.ndarray
    camera_first: int
    dmd_first: int
    dropped_before: int
    shown: dict[int, tuple[int, int]] = field(default_factory=dict)
    """DMD frame id -> (display order in this attempt, request index; -1 for a blank flush frame)."""
    latest: dict[int, int] = field(default_factory=dict)
    """Request index -> display order of its latest showing."""
    n_shown: int = 0
    blanks_since_data: int = 0
    n_done: int = 0
    damaged: list[str] = field(default_factory=list)
    seen_positions: set[int] = field(default_factory=set)
    last_position: int = -1

    def show(self, first_id: int, indices: np.ndarray) -> None:
        """Record request frames queued with ids first_id, first_id + 1, ... (-1: blank frames)."""
        for offset, index in enumerate(indices.tolist()):
            self.shown[first_id + offset] = (self.n_shown, index)
            if index >= 0:
                self.latest[index] = self.n_shown
            self.n_shown += 1
        if indices.size and indices[0] >= 0:
            self.blanks_since_data = 0
        else:
            self.blanks_since_data += int(indices.size)

    def positions_seen(self) -> int:
        """Exposures of this attempt that reached the host (damaged ones and duplicates not counted)."""
        return sum(1 for p in self.seen_positions if p < self.n_shown)

    def unaccounted(self) -> int:
        """Exposures of this attempt neither seen nor arrived damaged: still on the way, or lost without a trace."""
        return self.n_shown - self.positions_seen() - len(self.damaged)


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
            progress=lambda: int(done.sum()),
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

    def _clear_stall(self, exc: StallError, stalls: int, where: str) -> int:
        """A stalled pipe met within an attempt: cleared, counted, and the attempt goes on (the count of stalls in a
        row, for the caller's next one). Raises the stall when ``retries`` is 0, when nothing can clear it, or
        when ``CLEARED_IN_A_ROW`` came with nothing done between: then the attempt ends and the retry engine
        takes over (a pipe that stalls again at once is no passing fault)."""
        if self.policy.retries == 0 or self._clear_link_faults is None or stalls + 1 >= CLEARED_IN_A_ROW:
            raise exc
        count_fault(self.tally, exc)
        self._clear_link_faults()
        _log.info("the pipe stalled %s (%s): cleared, going on", where, exc)
        return stalls + 1

    def _queue_checked(self, queue_some: Callable[[], None], count: int) -> None:
        """Queue frames and verify the device took them all, before anything is displayed.

        A stall while queueing (nothing is displayed before the start) is cleared, the device's queue emptied and
        the frames queued again: the DMD's queue counter says what it holds, so nothing is shown twice."""
        stalls = 0
        while True:
            before = self._dmd.queued_frames
            if before:
                _log.warning("%d frames were queued on the device by someone else: aborting them", before)
                self._dmd.abort()
                before = self._dmd.queued_frames
            try:
                queue_some()
                break
            except StallError as exc:
                stalls = self._clear_stall(exc, stalls, "while queueing frames")
                self._dmd.abort()  # what the stalled transfer left queued, if anything: queued again whole
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
        """One attempt at the request frames ``todo`` (ascending): show them, read what comes back, flush the lag,
        and show again what was lost on the way while each round brings results."""
        if len(todo) > capacity:
            raise ValueError(f"{len(todo)} frames exceed the {capacity} one sequence holds")  # caller's bug
        attempt = _Attempt(done, self._camera.frame_count, self._dmd.frame_count, self._camera.dropped_frames)
        pending = todo
        flush = max(0, min(self._lag_frames, self.max_lag_frames, capacity - len(pending)))
        while True:
            before = attempt.n_done
            self._show(attempt, pending, flush, queue, queue_blank)
            self._read_sequence(attempt, request_deadline, expected, sink)
            missing = todo[~done[todo]]
            if missing.size == 0:
                self.tally.frames_matched += len(todo)
                return
            waiting, lost = self._classify(attempt, missing)
            if waiting.size:  # still in the camera's pipeline: blank frames bring them out
                pending, flush = missing[:0], self._flush_needed(attempt, waiting, capacity)
                continue
            self.tally.frames_missing += int(lost.size)
            if self.policy.retries == 0 or attempt.n_done == before:
                raise self._loss_error(attempt, lost, len(todo))
            # Lost on the way (damaged, dropped, swallowed by a cut packet): shown again, with fresh ids.
            _log.info("%d of %d frames were lost on the way; showing them again", lost.size, len(todo))
            self.tally.frames_resent += int(lost.size)
            pending = lost
            flush = max(0, min(self._lag_frames, self.max_lag_frames, capacity - len(pending)))

    def _show(
        self,
        attempt: _Attempt,
        pending: np.ndarray,
        flush: int,
        queue: QueueFn,
        queue_blank: Callable[[int, int], None],
    ) -> None:
        """Queue the request frames ``pending`` (in one call, however scattered) and ``flush`` blank frames, with fresh
        ids, check the device took them all, and start the sequence."""
        first_id = self.reserve_ids(len(pending) + flush)

        def queue_frames_and_blanks() -> None:
            if len(pending):
                queue(pending, first_id)
            if flush:
                queue_blank(first_id + len(pending), flush)

        self._queue_checked(queue_frames_and_blanks, len(pending) + flush)
        attempt.show(first_id, pending)
        attempt.show(first_id + len(pending), np.full(flush, -1, dtype=np.int64))
        self.tally.frames_sent += len(pending)
        self.tally.flush_frames_sent += flush
        self._dmd.start()
        self.tally.sequences += 1

    def _frame_time_us(self) -> int:
        """The camera's frame time; an open camera's settings are complete (read at open, merged on configure)."""
        frame_time_us = self._camera.settings.frame_time_us
        assert frame_time_us is not None
        return frame_time_us

    def _read_sequence(self, attempt: _Attempt, request_deadline: float, expected: Expected, sink: FrameSink) -> None:
        """Read the camera frames of the exposures made so far in this attempt, handing each result to ``sink``.

        Reading ends when every exposure has reached the host (whole or damaged), or when the camera's own counter
        says every exposure was made and no data came for a read window: what has not come then was lost on the way
        (dropped, or swallowed by a packet cut short). A read that fails at once, as a USB timeout with nothing to
        read does, is not quiet time.
        A damaged frame is counted and skipped (with ``retries=0`` it raises CorruptPacketError at once).
        """
        frame_time_s = self._frame_time_us() * 1e-6
        deadline = min(time.monotonic() + self.timeout_s + attempt.unaccounted() * frame_time_s, request_deadline)
        window_s = max(_QUIET_MIN_S, _QUIET_FRAMES * frame_time_s)
        last_data = time.monotonic()
        stalls = 0
        while (remaining := attempt.n_shown - attempt.positions_seen()) > 0:
            left_s = deadline - time.monotonic()
            if left_s <= 0:
                raise self._timeout(attempt)
            # Every exposure accounted for (some damaged): only a short look for what may still be on its way.
            accounted = attempt.unaccounted() <= 0
            try:
                for item in self._camera.read_frames(remaining, min(_POLL_S if accounted else window_s, left_s)):
                    last_data, stalls = time.monotonic(), 0
                    self._take(item, attempt, expected, sink)
                continue
            except StallError as exc:
                # The camera's frames wait in its buffer: clear the pipe and read on. A packet cut by the stall
                # is a damaged or lost frame, shown again like any other.
                stalls = self._clear_stall(exc, stalls, "while reading frames")
                continue
            except CommunicationTimeoutError:
                if time.monotonic() >= deadline:
                    raise self._timeout(attempt) from None
            if accounted:
                return
            # A read came back empty: has the camera made every exposure of the attempt?
            captured = self._check_not_reset(attempt)
            if captured >= attempt.n_shown and time.monotonic() - last_data >= _QUIET_WINDOWS * window_s:
                return  # every exposure was made and the stream stayed quiet: what has not come was lost on the way

    def _check_not_reset(self, attempt: _Attempt) -> int:
        """The exposures the camera made in this attempt; DeviceResetError when the device's counters say it lost
        the sequence: a counter went back, or the DMD holds nothing more to show although fewer frames were
        displayed than queued."""
        displayed = (self._dmd.frame_count - attempt.dmd_first) & 0xFFFFFFFF
        captured = (self._camera.frame_count - attempt.camera_first) & 0xFFFFFFFF
        went_back = max(displayed, captured) > attempt.n_shown + self.max_lag_frames
        if went_back:
            raise DeviceResetError(
                "the device's frame counters went back since the sequence started (DMD "
                f"{self._dmd.frame_count}, camera {self._camera.frame_count}): it reset"
            )
        if displayed < attempt.n_shown and self._dmd.queued_frames == 0:
            raise DeviceResetError(
                f"the device lost the sequence ({displayed} of {attempt.n_shown} frames displayed, {captured} "
                "exposures counted, nothing left queued): it reset"
            )
        return captured

    def _take(self, item: CameraFrame | DamagedFrame, attempt: _Attempt, expected: Expected, sink: FrameSink) -> None:
        """Place one item of the camera stream: a result for ``sink``, or a frame to count and drop."""
        if isinstance(item, DamagedFrame):
            self.tally.corrupt_packets += 1
            if self.policy.retries == 0:
                raise CorruptPacketError(item.detail)
            attempt.damaged.append(item.detail)
            return
        index = self._place(item, attempt)
        if index is None:
            return
        check_frame(item, expected)
        self.tally.dark_frames += item.dark
        self.tally.saturated_frames += item.saturated
        sink(index, item)
        attempt.done[index] = True
        attempt.n_done += 1

    def _timeout(self, attempt: _Attempt) -> CommunicationError | DroppedFramesError:
        """The error of a sequence whose frames stopped coming: dropped frames when the FIFO overflowed."""
        missing = int((~attempt.done[list(attempt.latest)]).sum())
        message = f"{missing} results still missing when the camera stream stopped"
        dropped = self._camera.dropped_frames - attempt.dropped_before
        if dropped:
            return DroppedFramesError(
                f"the device dropped {dropped} camera frames (its FIFO overflowed); {message}", missing=missing
            )
        return CommunicationTimeoutError(f"{message} (within {self.timeout_s:.3g} s plus the frames' time)")

    def _place(self, frame: CameraFrame, attempt: _Attempt) -> int | None:
        """The request index a camera frame's result fills, or None when it is no result of this attempt (a frame
        of an earlier request, a duplicate, a blank). Learns the lag."""
        position = (frame.camera_frame_id - attempt.camera_first) & 0xFFFFFFFF
        if position >= 0x80000000:
            # Captured before this request's first trigger: not one of the frames we wait for.
            self.tally.frames_discarded += 1
            return None
        if position in attempt.seen_positions:
            # The same exposure sent twice: it was counted when it first came.
            self.tally.duplicate_frames += 1
            return None
        attempt.seen_positions.add(position)
        if position < attempt.last_position:
            self.tally.reordered_frames += 1
        attempt.last_position = max(attempt.last_position, position)
        order, index = attempt.shown.get(frame.dmd_frame_id, (-1, -1))
        if index < 0 or attempt.done[index] or attempt.latest.get(index) != order:
            # Blank, flush, from an earlier request or attempt, or an earlier showing: never data for this one.
            self.tally.frames_discarded += 1
            return None
        lag = position - order
        if lag != self._lag_frames:
            if lag < 0 or lag > self.max_lag_frames:
                raise ProtocolError(f"camera frame for DMD frame {index} arrived at an impossible lag {lag}")
            _log.info("DMD-to-camera lag is %d frames", lag)
            self._lag_frames = lag
        return index

    def _classify(self, attempt: _Attempt, missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Split the missing results into (still in the camera's pipeline, lost on the way).

        When every exposure of the attempt reached the host, nothing was lost: what is missing waits for more
        exposures (the lag). Otherwise a result whose exposure (its display order plus the lag) was already made
        was lost; the others wait.
        """
        if attempt.positions_seen() >= attempt.n_shown:  # every exposure arrived whole: nothing was lost
            return missing, missing[:0]
        exposed = np.array([attempt.latest[int(i)] + self._lag_frames < attempt.n_shown for i in missing], dtype=bool)
        return missing[~exposed], missing[exposed]

    def _flush_needed(self, attempt: _Attempt, waiting: np.ndarray, capacity: int) -> int:
        """Blank frames to queue so the results still in the camera's pipeline come out; DroppedFramesError when no
        more flushing may bring them (the lag allowed is exhausted)."""
        flushed = attempt.blanks_since_data
        if self._lag_frames > flushed:  # the lag is known: exactly enough blanks
            more = self._lag_frames - flushed
        else:  # not known: as many as are missing, up to the largest lag allowed
            more = len(waiting)
        more = min(more, self.max_lag_frames - flushed, capacity)
        if more <= 0:
            raise DroppedFramesError(
                f"{len(waiting)} camera frames never arrived (first missing: frame {int(waiting[0])}; lag allowed up "
                f"to {self.max_lag_frames} frames); the device counts "
                f"{self._camera.dropped_frames - attempt.dropped_before} dropped frames",
                missing=len(waiting),
            )
        return more

    def _loss_error(
        self, attempt: _Attempt, lost: np.ndarray, n_frames: int
    ) -> CommunicationError | DroppedFramesError:
        """The error of frames lost on the way that are not shown again (no retries, or no progress)."""
        if attempt.damaged:
            return CorruptPacketError(
                f"{len(attempt.damaged)} camera packets arrived damaged and {lost.size} of {n_frames} results are "
                f"missing; the first: {attempt.damaged[0]}"
            )
        return DroppedFramesError(
            f"{lost.size} of {n_frames} camera frames never arrived (first missing: frame {int(lost[0])}); the "
            f"device counts {self._camera.dropped_frames - attempt.dropped_before} dropped frames",
            missing=int(lost.size),
        )


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
