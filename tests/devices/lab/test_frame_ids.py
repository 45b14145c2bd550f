"""The frame-id gap arithmetic, checked against a counter that is simply stepped forward id by id."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opu_driver.devices.lab.frame_ids import ids_skipped_between, next_frame_id
from opu_driver.errors import InvalidInputError


def _stepped(start: int, steps: int, modulus: int, skipped: frozenset[int]) -> int:
    """The id a counter holds ``steps`` frames after ``start``, walked one id at a time."""
    frame_id = start
    for _ in range(steps):
        frame_id = (frame_id + 1) % modulus
        while frame_id in skipped:
            frame_id = (frame_id + 1) % modulus
    return frame_id


@st.composite
def _counters(draw: st.DrawFn) -> tuple[int, frozenset[int], int]:
    modulus = draw(st.sampled_from([1 << 16, 1 << 16, 2, 3, 7, 256]) | st.integers(2, 5000))
    skipped = draw(st.frozensets(st.integers(0, modulus - 1), max_size=min(4, modulus - 2)))
    start = draw(st.integers(0, modulus - 1).filter(lambda i: i not in skipped))
    return modulus, skipped, start


@given(_counters(), st.integers(0, 700))
def test_the_gap_is_the_number_of_frames_the_counter_took_in_between(
    counter: tuple[int, frozenset[int], int], lost: int
) -> None:
    modulus, skipped, start = counter
    cycle = modulus - len(skipped)
    lost %= cycle  # a gap of a whole cycle or more cannot be told from a shorter one
    following = _stepped(start, lost + 1, modulus, skipped)
    assert ids_skipped_between(start, following, modulus, skipped) == lost


@given(st.integers(65_000, 65_535), st.integers(0, 1000))
def test_gige_vision_block_ids_across_the_wrap(start: int, lost: int) -> None:
    following = _stepped(start, lost + 1, 1 << 16, frozenset({0}))
    assert ids_skipped_between(start, following, 1 << 16, (0,)) == lost


def test_gige_vision_wrap_from_65535_to_1_loses_nothing() -> None:
    assert next_frame_id(65535, 1 << 16, (0,)) == 1
    assert ids_skipped_between(65535, 1, 1 << 16, (0,)) == 0
    assert ids_skipped_between(65534, 1, 1 << 16, (0,)) == 1
    assert ids_skipped_between(65535, 2, 1 << 16, (0,)) == 1


def test_a_counter_without_skipped_ids_wraps_to_0() -> None:
    assert ids_skipped_between(255, 0, 256) == 0
    assert ids_skipped_between(255, 1, 256) == 1


def test_a_repeated_id_is_a_whole_cycle() -> None:
    assert ids_skipped_between(7, 7, 1 << 16, (0,)) == 65534


@pytest.mark.parametrize(
    ("previous", "following", "modulus", "skipped"),
    [(0, 1, 1 << 16, (0,)), (1, 65536, 1 << 16, (0,)), (-1, 3, 256, ()), (1, 2, 1, ()), (1, 2, 256, (300,))],
)
def test_ids_the_counter_cannot_take_are_refused(
    previous: int, following: int, modulus: int, skipped: tuple[int, ...]
) -> None:
    with pytest.raises(InvalidInputError):
        ids_skipped_between(previous, following, modulus, skipped)
