"""The DMD sequencer: the OUT stream, sequence memory, the layout table, triggers, frame ids, device time.

Packets from the DMD OUT endpoint are parsed here (docs/protocol.md 1.3-1.4): frames are queued in sequence
memory (bounded by ``seq_capacity_frames``, and raw frames also by ``raw_queue_bytes`` of mirror bits), a
layout table replaces the current one. A refused packet is counted and its error code handed back for
LAST_ERROR; nothing raises across the wire.

Showing frames (protocol 1.6): in trigger mode INT (and EXT, which an emulator has no input for), START
displays the whole queue at once; in trigger mode SOFT each SOFT_TRIGGER displays the next frame, and START
only marks the sequence running. Every displayed frame triggers one exposure, of the frame shown
``lag_frames`` triggers earlier (the lag pipeline starts full of blank frames), which the capture turns into
a camera frame. Device time advances by the frame time per frame shown, never with the wall clock.

A layout table may change while frames that used the old one are still queued or in the lag pipeline:
those frames are first converted to raw mirror frames, so the camera sees what the DMD really showed.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from . import wire
from .capture import Capture
from .config import SimConfig
from .controller import ControllerLine
from .dmd import DmdGeometry, Frame, FrameKind, LayoutTable, blank_frame
from .faults import LIGHT_FACTOR, SATURATE_FACTOR, FaultInjector
from .wire import ErrorCode

__all__ = ["SeqControl", "Sequencer"]

_log = logging.getLogger(__name__)

# Feature frames converted to mirror bitmaps this many at a time (bounds memory at large DMDs).
_EXPAND_CHUNK_FRAMES = 32


class SeqControl(IntEnum):
    """Values of the SEQ_CONTROL register (section 1.2)."""

    START = 1
    ABORT = 2
    CLEAR_LAYOUT = 3


class Sequencer:
    """Sequence memory and the frames shown on the DMD.

    Args:
        config: the emulator options (``lag_frames``, ``seq_capacity_frames``, ``raw_queue_bytes``).
        dmd: the mirror geometry.
        layout: the layout table, which this sequencer loads and clears.
        capture: the camera that every displayed frame triggers.
        controller: the controller line (trigger mode; the interlock an injected fault trips).
        faults: the device's fault injector (faults drawn at sequence start).
        optics: the optics model, told of every layout change.
        reset_usb_side: restarts the whole USB side (an injected ``reset`` fault in mid-sequence).
        name: the device's name, for the log.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        dmd: DmdGeometry,
        layout: LayoutTable,
        capture: Capture,
        controller: ControllerLine,
        faults: FaultInjector,
        optics: Any,
        reset_usb_side: Callable[[], None],
        name: str,
    ) -> None:
        self.capacity_frames = int(config.seq_capacity_frames)
        self.raw_budget_bytes = int(config.raw_queue_bytes)
        self.lag_frames = int(config.lag_frames)
        self._dmd = dmd
        self._layout = layout
        self._capture = capture
        self._controller = controller
        self._faults = faults
        self._optics = optics
        self._reset_usb_side = reset_usb_side
        self._name = name
        self.parser = wire.PacketStream()
        self.counters = {"type_errors": 0, "length_errors": 0, "refused_packets": 0}
        # The medium's own clock (drift): it follows the frames shown, like device time, but a reset or a
        # replug restarts the device's counters, not the physics, so this one is never set back.
        self.medium_time_us = 0
        self.reset()

    def reset(self) -> None:
        """Power-on state: empty memory, blank lag pipeline, no layout, device time and frame count at 0."""
        self.running = False
        self.device_time_us = 0
        self.frame_count = 0
        self._queue: deque[Frame] = deque()
        self._queued_raw_bytes = 0
        self._history: deque[Frame] = deque(blank_frame() for _ in range(self.lag_frames))
        self._layout.clear()
        self._optics.clear_layout()
        self.parser.reset()

    @property
    def queued(self) -> int:
        """Frames waiting in sequence memory."""
        return len(self._queue)

    def abort(self) -> None:
        """Drop the queue and stop a running sequence (always accepted)."""
        self._queue.clear()
        self._queued_raw_bytes = 0
        self.running = False

    # -- the OUT stream ----------------------------------------------------------------------------
    def receive(self, data: bytes | bytearray | memoryview) -> list[ErrorCode]:
        """Bytes from the DMD OUT endpoint; returns the codes of the packets refused, in order (for LAST_ERROR)."""
        refused: list[ErrorCode] = []
        for item in self.parser.feed(data):
            if isinstance(item, wire.StreamFault):
                self._refuse(refused, item.code, item.detail)
            else:
                self._handle_envelope(item, refused)
        return refused

    def _refuse(self, refused: list[ErrorCode], code: ErrorCode, detail: str) -> None:
        refused.append(code)
        self.counters["refused_packets"] += 1
        if code == ErrorCode.E_TYPE:
            self.counters["type_errors"] += 1
        elif code == ErrorCode.E_LENGTH:
            self.counters["length_errors"] += 1
        _log.debug("%s: packet refused, %s: %s", self._name, code.name, detail)

    def _handle_envelope(self, envelope: wire.Envelope, refused: list[ErrorCode]) -> None:
        packet = wire.decode_out_packet(envelope, self._dmd.frame_bytes)
        if isinstance(packet, wire.StreamFault):
            self._refuse(refused, packet.code, packet.detail)
        elif isinstance(packet, wire.RawFramePacket):
            frame_bytes = self._dmd.frame_bytes
            if len(self._queue) >= self.capacity_frames or self._queued_raw_bytes + frame_bytes > self.raw_budget_bytes:
                self._refuse(refused, ErrorCode.E_SEQ_FULL, f"raw frame {packet.dmd_frame_id}")
                return
            self._queue.append(Frame(FrameKind.RAW, packet.dmd_frame_id, packet.payload, 8, frame_bytes))
            self._queued_raw_bytes += frame_bytes
        elif isinstance(packet, wire.FeatureFramePacket):
            if not self._layout.loaded:
                self._refuse(refused, ErrorCode.E_NO_LAYOUT, f"feature frame {packet.dmd_frame_id}")
            elif packet.n_features != self._layout.n_features:
                self._refuse(
                    refused, ErrorCode.E_FEATURES, f"{packet.n_features} features, table has {self._layout.n_features}"
                )
            elif len(self._queue) >= self.capacity_frames:
                self._refuse(refused, ErrorCode.E_SEQ_FULL, f"feature frame {packet.dmd_frame_id}")
            else:
                self._queue.append(Frame(FrameKind.FEATURE, packet.dmd_frame_id, packet.payload, 8))
        else:
            self._handle_layout(packet, refused)

    # -- the layout table --------------------------------------------------------------------------
    def _handle_layout(self, packet: wire.LayoutPacket, refused: list[ErrorCode]) -> None:
        if self.running:
            self._refuse(refused, ErrorCode.E_BUSY, "LAYOUT while a sequence runs")
            return
        problem = self._layout.problem(packet.n_features, packet.runs)
        if problem:
            self._refuse(refused, ErrorCode.E_LAYOUT, problem)
            return
        runs = packet.runs[np.argsort(packet.runs[:, 1], kind="stable")] if len(packet.runs) else packet.runs
        self._set_layout(packet.n_features, runs)

    def _set_layout(self, n_features: int, runs: npt.NDArray[np.uint32] | None) -> None:
        """Load a validated table (None: clear it); frames shown or queued under the old one keep its mirrors."""
        if runs is not None and self._layout.is_loaded_as(n_features, runs):
            return
        self._materialize_feature_frames()
        if runs is None:
            self._layout.clear()
            self._optics.clear_layout()
        else:
            self._layout.load(n_features, runs)
            self._optics.set_layout(n_features, self._layout.runs)
        _log.debug(
            "%s: layout %s", self._name, "cleared" if runs is None else f"{n_features} features, {len(runs)} runs"
        )

    def _materialize_feature_frames(self) -> None:
        frames = [f for f in itertools.chain(self._history, self._queue) if f.kind == FrameKind.FEATURE]
        for start in range(0, len(frames), _EXPAND_CHUNK_FRAMES):
            chunk = frames[start : start + _EXPAND_CHUNK_FRAMES]
            packed = self._layout.expand(self._layout.feature_bits(chunk))
            for frame, row in zip(chunk, packed, strict=True):
                frame.kind, frame.data, frame.offset = FrameKind.RAW, row.tobytes(), 0

    # -- SEQ_CONTROL and SOFT_TRIGGER --------------------------------------------------------------
    def control(self, value: int) -> ErrorCode:
        """A write of SEQ_CONTROL: START, ABORT or CLEAR_LAYOUT; the code to latch (E_NONE: accepted)."""
        if value == SeqControl.ABORT:
            self.abort()
            return ErrorCode.E_NONE
        if value == SeqControl.START:
            return self._start()
        if value == SeqControl.CLEAR_LAYOUT:
            if self.running:
                return ErrorCode.E_BUSY
            self._set_layout(0, None)
            return ErrorCode.E_NONE
        return ErrorCode.E_VALUE

    def _start(self) -> ErrorCode:
        if self.running:
            return ErrorCode.E_BUSY
        if not self._queue:
            return ErrorCode.E_EMPTY
        if self._controller.trigger_mode == "SOFT":
            self.running = True
            return ErrorCode.E_NONE
        if not self._faults.active:
            self._run_queue()
            return ErrorCode.E_NONE
        # Every sequence-start fault is drawn at every start (own streams: one never moves another).
        reset, interlock, saturate, light, restart = (
            self._faults.fire(kind) for kind in ("reset", "interlock", "saturate", "light", "restart")
        )
        if restart:
            self._controller.power_on()  # the laser side restarted: the sequence runs in the dark
        self._capture.light_factor = SATURATE_FACTOR if saturate else LIGHT_FACTOR if light else 1.0
        try:
            if reset:
                self._reset_mid_sequence()
            elif interlock:
                self._interlock_mid_sequence()
            else:
                self._run_queue()
        finally:
            self._capture.light_factor = 1.0
        return ErrorCode.E_NONE

    def soft_trigger(self, value: int) -> ErrorCode:
        """A write of SOFT_TRIGGER: in trigger mode SOFT, show the next queued frame."""
        if value != 1:
            return ErrorCode.E_VALUE
        if self._controller.trigger_mode != "SOFT" or not self._queue:
            return ErrorCode.E_TRIGGER
        frame = self._queue.popleft()
        self._queued_raw_bytes -= frame.budget_bytes
        self._show([frame])
        if not self._queue:
            self.running = False
        return ErrorCode.E_NONE

    # -- sequences ---------------------------------------------------------------------------------
    def _run_queue(self) -> None:
        frames = list(self._queue)
        self._queue.clear()
        self._queued_raw_bytes = 0
        self._show(frames)

    def _reset_mid_sequence(self) -> None:
        """Injected fault: the first half of the queue is shown and sent, then the USB side resets."""
        frames = list(self._queue)
        shown = frames[: len(frames) // 2]
        if shown:
            self._show(shown)
        _log.info("%s: injected reset after %d of %d frames", self._name, len(shown), len(frames))
        self._reset_usb_side()

    def _interlock_mid_sequence(self) -> None:
        """Injected fault: the first half of the queue is lit, then the interlock trips and the rest is dark."""
        frames = list(self._queue)
        self._queue.clear()
        self._queued_raw_bytes = 0
        half = len(frames) // 2
        if half:
            self._show(frames[:half])
        _log.info("%s: injected interlock trip after %d of %d frames", self._name, half, len(frames))
        self._controller.trip_interlock()
        self._show(frames[half:])

    def _show(self, frames: list[Frame]) -> None:
        """Display frames in order, one exposure each; device time advances by a frame time per frame."""
        seen = self._display(frames)
        self._capture.expose(seen, self.device_time_us, self.medium_time_us)
        elapsed_us = len(seen) * self._capture.settings.frame_time_us
        self.device_time_us += elapsed_us
        self.medium_time_us += elapsed_us

    def _display(self, frames: list[Frame]) -> list[Frame]:
        """Show frames on the DMD in order; return what each exposure sees (the frame ``lag`` triggers earlier)."""
        self.frame_count += len(frames)
        if self.lag_frames == 0:
            return frames
        pipeline = list(self._history) + frames
        self._history = deque(pipeline[len(frames) :])
        return pipeline[: len(frames)]
