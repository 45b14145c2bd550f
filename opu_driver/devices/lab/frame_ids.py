"""Frame-id arithmetic for cameras whose frame counter wraps: how many ids a gap between two buffers hides.

A GigE Vision camera numbers its frames with a 16-bit block id that wraps from 65,535 to 1 (0 is never used
after the counter starts); a USB3 Vision camera uses a 64-bit block id. Given two consecutive buffers' ids, the
number of ids the counter took in between is the number of frames lost in transport (the camera made them, the
host never got them). A trigger the camera never saw leaves no gap: that loss shows only in counts and times.
"""

from __future__ import annotations

from collections.abc import Collection

from ...errors import InvalidInputError

__all__ = ["ids_skipped_between", "next_frame_id"]


def _check_id(name: str, frame_id: int, modulus: int, skipped_ids: Collection[int]) -> None:
    if not 0 <= frame_id < modulus:
        raise InvalidInputError(f"{name} {frame_id} is outside the counter's range 0..{modulus - 1}")
    if frame_id in skipped_ids:
        raise InvalidInputError(f"{name} {frame_id} is an id the counter never takes")


def _check_counter(modulus: int, skipped_ids: Collection[int]) -> None:
    if modulus < 2:
        raise InvalidInputError(f"a frame counter's modulus must be at least 2, got {modulus}")
    if any(not 0 <= s < modulus for s in skipped_ids):
        raise InvalidInputError(f"skipped ids {sorted(skipped_ids)} must lie in 0..{modulus - 1}")
    if len(set(skipped_ids)) >= modulus - 1:
        raise InvalidInputError("a counter that skips all but one id cannot number frames")


def next_frame_id(frame_id: int, modulus: int, skipped_ids: Collection[int] = ()) -> int:
    """The id a wrapping counter takes after ``frame_id``: ``(frame_id + 1) % modulus``, past any skipped id."""
    _check_counter(modulus, skipped_ids)
    _check_id("frame id", frame_id, modulus, skipped_ids)
    following = (frame_id + 1) % modulus
    while following in skipped_ids:
        following = (following + 1) % modulus
    return following


def ids_skipped_between(previous_id: int, next_id: int, modulus: int, skipped_ids: Collection[int] = ()) -> int:
    """How many frame ids the counter took strictly between two buffers' ids: the frames lost between them.

    The counter runs forward only, so the gap is measured forward from ``previous_id``, across the wrap;
    ids in ``skipped_ids`` (GigE Vision's 0) do not count. Consecutive ids give 0. Equal ids can only mean that
    the counter went once all the way round, so they give the length of a full cycle less one.

    Raises:
        InvalidInputError: a modulus below 2, an id outside ``0 .. modulus - 1`` or one the counter never takes.
    """
    _check_counter(modulus, skipped_ids)
    _check_id("previous id", previous_id, modulus, skipped_ids)
    _check_id("next id", next_id, modulus, skipped_ids)
    forward = (next_id - previous_id) % modulus or modulus
    never_taken = sum(1 for s in set(skipped_ids) if 0 < (s - previous_id) % modulus < forward)
    return forward - 1 - never_taken
