"""Runs frame sequences and matches camera frames to DMD frames by id.

The camera may trail the DMD by k frames (docs/protocol.md 1.6): the exposure taken at trigger n sees the
frame displayed at trigger n - k. This runner never guesses: it matches each camera frame to the request by
the DMD frame id in its metadata, learns k from what it receives, appends k blank "flush" frames to later
sequences so that no extra round trip is needed, and flushes again when a result is still missing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .devices.camera import Camera, Roi
from .devices.dmd import Dmd
from .errors import DroppedFramesError, ProtocolError
from .protocol import BLANK_FRAME_ID, CameraFrame, PixelFormat

__all__ = ["SequenceRunner", "AcquisitionCounters", "FrameSink"]

_log = logging.getLogger(__name__)

_ID_SPACE = 0xFFFFFFFF  # ids 0 .. 0xFFFFFFFE; 0xFFFFFFFF means "blank DMD"

FrameSink = Callable[[int, CameraFrame], None]
"""Receives (index of the frame in the request, its camera frame)."""

QueueFn = Callable[[int, int, int], None]
"""Queues frames [start, stop) of the request with the first DMD frame id given."""


@dataclass
class AcquisitionCounters:
    """What the runner did, for diagnostics (``Opu.counters``)."""

    sequences: int = 0
    frames_sent: int = 0
    flush_frames_sent: int = 0
    frames_matched: int = 0
    frames_discarded: int = 0
    lag_frames: int = 0


class SequenceRunner:
    """Queues, triggers and collects one chunk of frames at a time."""

    def __init__(self, dmd: Dmd, camera: Camera, timeout_s: float = 5.0, max_lag_frames: int = 64) -> None:
        self._dmd = dmd
        self._camera = camera
        self.timeout_s = timeout_s
        self.max_lag_frames = max_lag_frames
        self.counters = AcquisitionCounters()
        self._next_id = 0

    @property
    def lag_frames(self) -> int:
        """DMD-to-camera lag learned from the frame ids (0 until seen otherwise)."""
        return self.counters.lag_frames

    def _reserve_ids(self, count: int) -> int:
        if self._next_id + count >= _ID_SPACE:
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
        expected_roi: Roi,
        expected_format: PixelFormat,
    ) -> None:
        """Display ``n_frames`` frames queued by ``queue`` and hand each camera frame to ``sink``.

        ``queue_blank(first_id, count)`` queues blank flush frames. Raises DroppedFramesError when some frames
        never arrive, ProtocolError when a frame's metadata contradicts the camera settings, and
        CommunicationTimeoutError when the device stops answering.
        """
        flush = min(self.lag_frames, self.max_lag_frames)
        first_id = self._reserve_ids(n_frames + self.max_lag_frames + flush)
        next_flush_id = first_id + n_frames
        done = np.zeros(n_frames, dtype=bool)
        n_done = 0
        camera_first = self._camera.frame_count

        queue(0, n_frames, first_id)
        if flush:
            queue_blank(next_flush_id, flush)
            next_flush_id += flush
        to_read = n_frames + flush
        self.counters.frames_sent += n_frames
        self.counters.flush_frames_sent += flush
        flushed = flush
        while True:
            self._dmd.start()
            self.counters.sequences += 1
            timeout_s = self.timeout_s + to_read * self._camera.settings.frame_time_us * 1e-6
            for frame in self._camera.read_frames(to_read, timeout_s):
                self._check(frame, expected_roi, expected_format)
                index = (frame.dmd_frame_id - first_id) & 0xFFFFFFFF
                if frame.dmd_frame_id == BLANK_FRAME_ID or index >= n_frames or done[index]:
                    self.counters.frames_discarded += 1
                    continue
                lag = ((frame.camera_frame_id - camera_first) & 0xFFFFFFFF) - index
                if lag != self.counters.lag_frames:
                    if lag < 0 or lag > self.max_lag_frames:
                        raise ProtocolError(f"camera frame for DMD frame {index} arrived at an impossible lag {lag}")
                    _log.info("DMD-to-camera lag is %d frames", lag)
                    self.counters.lag_frames = lag
                sink(index, frame)
                done[index] = True
                n_done += 1
            if n_done == n_frames:
                self.counters.frames_matched += n_frames
                return
            missing = n_frames - n_done
            # The missing frames are the last ones, still in the camera pipeline: flush them out. With the
            # lag known, exactly enough blanks; otherwise as many as are missing, up to max_lag_frames.
            more = self.lag_frames - flushed if self.lag_frames > flushed else missing
            more = min(more, self.max_lag_frames - flushed)
            if more <= 0:
                first_missing = int(np.flatnonzero(~done)[0])
                raise DroppedFramesError(
                    f"{missing} of {n_frames} camera frames never arrived (first missing: frame {first_missing}; "
                    f"lag allowed up to {self.max_lag_frames} frames); the device counts "
                    f"{self._camera.dropped_frames} dropped frames",
                    missing=missing,
                )
            queue_blank(next_flush_id, more)
            next_flush_id += more
            flushed += more
            self.counters.flush_frames_sent += more
            to_read = more

    @staticmethod
    def _check(frame: CameraFrame, roi: Roi, pixel_format: PixelFormat) -> None:
        if (frame.roi_x, frame.roi_y, frame.roi_w, frame.roi_h) != (roi.x, roi.y, roi.width, roi.height):
            raise ProtocolError(
                f"camera frame {frame.camera_frame_id} has ROI {frame.roi_x},{frame.roi_y},{frame.roi_w}x"
                f"{frame.roi_h}, expected {roi}"
            )
        if frame.pixel_format != pixel_format:
            raise ProtocolError(
                f"camera frame {frame.camera_frame_id} has pixel format {frame.pixel_format}, expected {pixel_format!r}"
            )
