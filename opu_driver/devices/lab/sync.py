"""Which picture each camera buffer saw, for a DMD that sends no frame ids: the frame-level matching of a lab rig.

The DMD's trigger-out drives the camera's frame trigger, so the k-th picture of a play makes the k-th exposure.
Nothing in a buffer names its picture, so the position of each buffer in the play is inferred from three
independent clues, and any buffer whose position they do not pin down is given up (its pictures count as lost,
and the frame-level recovery shows them again):

- the camera's own frame ids: a gap of g ids is g buffers lost in transport (their triggers happened); a buffer
  whose id could not be read (negative) is one of those;
- the device timestamps against the DMD's picture period: a gap of k periods is k pictures, so k minus the ids
  stepped over is the number of triggers the camera missed (no buffer, no id);
- the count: the pictures the DMD reports shown (its progress counter, where it has one) must equal the positions
  accounted for.

The one thing none of these can place is a loss at the edges of a play that leaves no later buffer behind: a
trigger missed before the first buffer (the camera's ids and clock then simply start one picture later) or
buffers lost after the last one. The two look the same (fewer positions than pictures), so when the positions
accounted for fall short of the pictures shown, every buffer of the play is given up: a shift by one would
attribute every result to the wrong picture. This costs one re-run of the play on such a fault, never a wrong row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .frame_ids import ids_skipped_between
from .parts import CameraBuffer

__all__ = ["id_step", "PlayMatch", "match_play", "TIMING_TOLERANCE"]

TIMING_TOLERANCE = 0.25
"""How far (in picture periods) a gap between two buffers may sit from a whole number of periods: beyond it
the timing is not that of the DMD's clock (a trigger from elsewhere, a wrong period) and the play is given up."""


def id_step(previous: int, current: int, modulus: int, skipped: Sequence[int] = ()) -> int:
    """How many ids ``current`` lies after ``previous`` on a counter that wraps at ``modulus`` and never takes
    the ids in ``skipped`` (1 for the next id; 0 for the same id). InvalidInputError (a ValueError) for an id the
    counter cannot take."""
    if previous == current:
        return 0
    return ids_skipped_between(previous, current, modulus, skipped) + 1


@dataclass(frozen=True)
class PlayMatch:
    """The outcome of matching one play's buffers to its pictures.

    Attributes:
        positions: (position of the picture in the play, buffer) for every buffer whose picture is known,
            damaged ones included (the caller skips their pixels).
        transport_lost: buffers the camera made but the host never got (id gaps).
        triggers_missed: pictures the camera took no exposure of (time gaps beyond the id gaps).
        given_up: why every buffer of the play was given up ("" when the positions are sure).
        last_id: the frame id of the last buffer when the positions are sure: the next play's ids continue from
            it. None when the play was given up: frames lost at its end may have taken ids, so the next play must
            not count ids from it (its first frame is then placed by time and count alone).
        extra: buffers beyond the play's pictures (a trigger from elsewhere): the play is given up.
    """

    positions: list[tuple[int, CameraBuffer]] = field(default_factory=list)
    transport_lost: int = 0
    triggers_missed: int = 0
    given_up: str = ""
    last_id: int | None = None
    extra: int = 0

    @property
    def sure(self) -> bool:
        return not self.given_up


def match_play(
    buffers: Iterable[CameraBuffer],
    n_pictures: int,
    period_ticks: float,
    *,
    modulus: int,
    skipped: Sequence[int] = (),
    previous_id: int | None = None,
    shown: int | None = None,
) -> PlayMatch:
    """Place each buffer of one play (in arrival order) at its picture.

    Args:
        buffers: what the camera delivered for this play, in order.
        n_pictures: pictures in the play.
        period_ticks: the DMD's picture period in ticks of the camera's timestamp clock.
        modulus, skipped: the camera's frame-id counter (``TriggeredCameraInfo``).
        previous_id: the id of the last buffer of the previous play on this stream (its ids continue), or None
            when unknown (the first play after the stream started).
        shown: pictures the DMD reports shown (its progress counter), or None where it cannot tell (then all).
    """
    if n_pictures < 0 or not period_ticks > 0:
        raise ValueError(f"bad play: {n_pictures} pictures, period {period_ticks} ticks")
    expected = n_pictures if shown is None else shown
    placed: list[tuple[int, CameraBuffer]] = []
    transport_lost = missed = 0
    position = -1
    last: CameraBuffer | None = None
    last_id = previous_id
    for buffer in buffers:
        if buffer.frame_id >= modulus or (buffer.frame_id >= 0 and buffer.frame_id in skipped):
            return PlayMatch(given_up=f"frame id {buffer.frame_id} is one the camera's counter never takes")
        if buffer.frame_id < 0:
            # A buffer whose id the camera library could not read (its first packet lost): it took an id, so its
            # neighbours' ids show the gap it leaves, and its picture counts as lost there.
            continue
        if last is None:
            # The first buffer: ids continuing from the previous play place buffers lost before it.
            lost_before = 0 if previous_id is None else id_step(previous_id, buffer.frame_id, modulus, skipped) - 1
            if lost_before < 0:
                return PlayMatch(given_up="a frame id repeated the previous play's last one")
            transport_lost += lost_before
            position = lost_before
        else:
            ids = id_step(last.frame_id, buffer.frame_id, modulus, skipped)
            periods = (buffer.device_time_ns - last.device_time_ns) / period_ticks
            whole = round(periods)
            if ids < 1:
                return PlayMatch(given_up=f"frame id {buffer.frame_id} did not advance")
            if whole < 1 or abs(periods - whole) > TIMING_TOLERANCE or math.isnan(periods):
                return PlayMatch(
                    given_up=f"a gap of {periods:.2f} picture periods between frames {last.frame_id} and "
                    f"{buffer.frame_id} is not the DMD's clock",
                )
            if whole < ids:
                return PlayMatch(
                    given_up=f"{ids} frame ids in {whole} picture periods: more exposures than triggers",
                )
            transport_lost += ids - 1
            missed += whole - ids
            position += whole
        placed.append((position, buffer))
        last = buffer
        last_id = buffer.frame_id
    accounted = position + 1
    if accounted > expected:
        return PlayMatch(given_up=f"{accounted} exposures for {expected} pictures shown", extra=accounted - expected)
    if accounted < expected:
        return PlayMatch(
            transport_lost=transport_lost,
            triggers_missed=missed,
            given_up=f"{expected - accounted} of {expected} pictures unaccounted for at the edges of the play "
            "(a trigger missed before the first frame, or frames lost after the last, cannot be told apart)",
        )
    return PlayMatch(placed, transport_lost, missed, "", last_id)
