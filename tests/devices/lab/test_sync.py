"""The frame matching of a lab rig: every buffer placed at its picture, or the play given up; never a shift."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opu_driver.devices.lab import CameraBuffer
from opu_driver.devices.lab.sync import id_step, match_play

MODULUS, SKIPPED = 1 << 16, (0,)
PERIOD_NS = 500_000


def _next_id(frame_id: int) -> int:
    return frame_id % (MODULUS - 1) + 1  # 65535 -> 1, as GigE Vision block ids


def _simulate(n, first_id, start_ns, missed, lost, jitter_ns=0, rng=None):
    """The buffers a camera delivers for a play of n pictures: triggers in ``missed`` make no exposure (no id),
    exposures at pictures in ``lost`` take an id but never arrive. Returns (buffers, picture of each buffer)."""
    buffers, pictures, frame_id = [], [], first_id
    for picture in range(n):
        if picture in missed:
            continue
        if picture not in lost:
            jitter = 0 if rng is None else int(rng.integers(-jitter_ns, jitter_ns + 1))
            buffers.append(CameraBuffer(frame_id, start_ns + picture * PERIOD_NS + jitter, 0, True, None))
            pictures.append(picture)
        frame_id = _next_id(frame_id)
    return buffers, pictures


def test_id_steps_wrap_and_skip_the_reserved_id():
    assert id_step(65534, 65535, MODULUS, SKIPPED) == 1
    assert id_step(65535, 1, MODULUS, SKIPPED) == 1  # the wrap skips 0
    assert id_step(65534, 2, MODULUS, SKIPPED) == 3
    assert id_step(10, 10, MODULUS, SKIPPED) == 0
    assert id_step(5, 7, 256) == 2 and id_step(255, 0, 256) == 1
    with pytest.raises(ValueError):
        id_step(MODULUS, 1, MODULUS)


@settings(max_examples=500, deadline=None)
@given(
    n=st.integers(1, 60),
    first_id=st.integers(1, MODULUS - 1),
    missed=st.sets(st.integers(0, 59), max_size=5),
    lost=st.sets(st.integers(0, 59), max_size=5),
    previous_known=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_every_placed_buffer_is_at_its_picture_and_only_edge_losses_give_up(
    n, first_id, missed, lost, previous_known, seed
):
    missed = {m for m in missed if m < n}
    lost = {p for p in lost if p < n} - missed
    rng = np.random.default_rng(seed)
    buffers, truth = _simulate(n, first_id, 10**9, missed, lost, jitter_ns=PERIOD_NS // 10, rng=rng)
    previous = None
    if previous_known:
        previous = (first_id - 2) % (MODULUS - 1) + 1  # the id before first_id on the wrapping counter
    match = match_play(buffers, n, PERIOD_NS, modulus=MODULUS, skipped=SKIPPED, previous_id=previous)
    if match.sure:
        # never a wrong position: each placed buffer sits at the picture it really saw
        assert [position for position, _ in match.positions] == truth
        assert match.transport_lost == len(lost) and match.triggers_missed == len(missed)
        assert match.last_id == buffers[-1].frame_id
    else:
        assert match.last_id is None and match.positions == []
    # what decides: a loss the buffers after it (or the ids before it) cannot place
    absent = missed | lost
    leading = []  # the pictures absent from the start of the play on
    while len(leading) < n and len(leading) in absent:
        leading.append(len(leading))
    # ids place leading buffers lost in transport (when the previous play's last id is known), never a missed trigger
    ambiguous_start = bool(leading) and (not previous_known or any(p in missed for p in leading))
    ambiguous_end = n - 1 in absent  # nothing after a trailing loss places it
    ambiguous = ambiguous_start or ambiguous_end
    assert match.sure == (not ambiguous and bool(buffers))


def test_a_gap_off_the_dmd_clock_or_a_repeated_id_gives_the_play_up():
    buffers, _ = _simulate(5, 100, 0, set(), set())
    late = [*buffers[:2], CameraBuffer(102, buffers[2].device_time_ns + PERIOD_NS // 2, 0, True, None), *buffers[3:]]
    assert "not the DMD's clock" in match_play(late, 5, PERIOD_NS, modulus=MODULUS).given_up
    repeated = [*buffers[:2], CameraBuffer(101, buffers[2].device_time_ns, 0, True, None)]
    assert "did not advance" in match_play(repeated, 5, PERIOD_NS, modulus=MODULUS).given_up
    extra, _ = _simulate(6, 100, 0, set(), set())
    assert match_play(extra, 5, PERIOD_NS, modulus=MODULUS).extra == 1
    # more ids than periods: exposures the DMD did not trigger
    crowded = [buffers[0], CameraBuffer(103, buffers[1].device_time_ns, 0, True, None)]
    assert "more exposures than triggers" in match_play(crowded, 5, PERIOD_NS, modulus=MODULUS).given_up


def test_the_dmd_progress_counter_bounds_the_count():
    buffers, _ = _simulate(8, 7, 0, set(), set())
    assert match_play(buffers[:6], 8, PERIOD_NS, modulus=MODULUS, shown=6).sure  # the DMD stopped after 6
    assert not match_play(buffers[:6], 8, PERIOD_NS, modulus=MODULUS).sure


def test_a_buffer_whose_id_could_not_be_read_counts_as_lost_in_its_gap():
    buffers, _ = _simulate(6, 500, 0, set(), set())
    unknown = CameraBuffer(-1, -1, 0, False, None, "leader lost: id unknown")
    match = match_play([*buffers[:2], unknown, *buffers[3:]], 6, PERIOD_NS, modulus=MODULUS, skipped=SKIPPED)
    assert match.sure and [p for p, _ in match.positions] == [0, 1, 3, 4, 5] and match.transport_lost == 1
    at_the_end = match_play([*buffers[:5], unknown], 6, PERIOD_NS, modulus=MODULUS, skipped=SKIPPED)
    assert not at_the_end.sure
