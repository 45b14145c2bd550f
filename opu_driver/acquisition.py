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
from .errors import (
    CommunicationTimeoutError,
    DeviceRefusedError,
    DroppedFramesError,
    ProtocolError,
)
from .protocol import MAX_FRAME_ID, CameraFrame, DeviceErrorCode, PixelFormat

__all__ = ["SequenceRunner", "AcquisitionCounters", "Expected", "FrameSink"]

_log = logging.getLogger(__name__)

FrameSink = Callable[[int, CameraFrame], None]
"""Receives (index of the frame in the request, its camera frame)."""

QueueFn = Callable[[int, int, int], None]
"""Queues frames [start, stop) of the request with the first DMD frame id given."""

_DRAIN_TIMEOUT_S = 0.05
_DRAIN_MAX_READS = 10_000


@dataclass
class AcquisitionCounters:
    """What the runner did, for diagnostics (``Opu.counters``)."""

    sequences: int = 0
    frames_sent: int = 0
    flush_frames_sent: int = 0
    frames_matched: int = 0
    frames_discarded: int = 0
    saturated_frames: int = 0
    dark_frames: int = 0
    recoveries: int = 0
    lag_frames: int = 0


@dataclass(frozen=True)
class Expected:
    """What every camera frame of a request must say about itself."""

    roi: Roi
    pixel_format: PixelFormat
    exposure_us: int


class SequenceRunner:
    """Queues, triggers and collects one chunk of frames at a time."""

    def __init__(self, dmd: Dmd, camera: Camera, timeout_s: float = 5.0, max_lag_frames: int = 64) -> None:
        self._dmd = dmd
        self._camera = camera
        self.timeout_s = timeout_s
        self.max_lag_frames = max_lag_frames
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
    ) -> None:
        """Display ``n_frames`` frames queued by ``queue`` and hand each camera frame to ``sink``.

        ``queue_blank(first_id, count)`` queues blank flush frames. ``capacity`` is the most frames one sequence
        may hold (sequence memory and camera FIFO); flushing is split over several sequences when needed.
        Raises DeviceRefusedError when the device refuses the frames, DroppedFramesError when frames never arrive, ProtocolError when a frame's metadata
        contradicts the camera settings, CommunicationTimeoutError when the device stops answering. After any
        failure (including KeyboardInterrupt) the device queue is aborted and the camera stream drained.
        """
        try:
            self._run(n_frames, queue, queue_blank, sink, expected, capacity)
        except BaseException:
            self.recover()
            raise

    def recover(self) -> None:
        """Abort the device's queue and drain stale camera frames; never raises."""
        self.counters.recoveries += 1
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
        self, n_frames: int, queue: QueueFn, queue_blank, sink: FrameSink, expected: Expected, capacity: int
    ) -> None:
        if n_frames > capacity:
            raise ValueError(f"{n_frames} frames exceed the {capacity} one sequence holds")  # caller's bug
        flush = max(0, min(self.lag_frames, self.max_lag_frames, capacity - n_frames))
        first_id = self._reserve_ids(n_frames + self.max_lag_frames + flush)
        next_flush_id = first_id + n_frames
        done = np.zeros(n_frames, dtype=bool)
        n_done = 0
        camera_first = self._camera.frame_count
        dropped_before = self._camera.dropped_frames

        def queue_main_and_flush() -> None:
            queue(0, n_frames, first_id)
            if flush:
                queue_blank(next_flush_id, flush)

        self._queue_checked(queue_main_and_flush, n_frames + flush)
        next_flush_id += flush
        to_read = n_frames + flush
        self.counters.frames_sent += n_frames
        self.counters.flush_frames_sent += flush
        flushed = flush
        while True:
            self._dmd.start()
            self.counters.sequences += 1
            timeout_s = self.timeout_s + to_read * self._camera.settings.frame_time_us * 1e-6
            deadline = time.monotonic() + timeout_s
            try:
                while to_read:
                    left_s = max(deadline - time.monotonic(), 1e-3)
                    for frame in self._camera.read_frames(to_read, left_s):
                        if (frame.camera_frame_id - camera_first) & 0xFFFFFFFF >= 0x80000000:
                            # Captured before this request's first trigger: not one of the frames we wait for.
                            self.counters.frames_discarded += 1
                            continue
                        to_read -= 1
                        index = (frame.dmd_frame_id - first_id) & 0xFFFFFFFF
                        if index >= n_frames or done[index]:
                            # Blank, flush, or from an earlier request: never data for this one.
                            self.counters.frames_discarded += 1
                            continue
                        self._check(frame, expected)
                        lag = ((frame.camera_frame_id - camera_first) & 0xFFFFFFFF) - index
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
                first_missing = int(np.flatnonzero(~done)[0])
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

