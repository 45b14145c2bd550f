"""The retry engine's budget: what counts against ``retries`` and what does not.

The engine is pure control flow (an attempt, a recovery, counters), so it is driven here by scripted attempts;
the same rules end to end, on the emulator, are in test_faults.py. The budget is for attempts that failed in a
way the driver cannot explain: neither bringing results back, nor ending in a fault it identified and cleared.
"""

from __future__ import annotations

import pytest

from opu_driver.acquisition.counters import new_tally
from opu_driver.acquisition.retry import CLEARED_IN_A_ROW, RetryPolicy, run_with_retries
from opu_driver.errors import DeviceResetError, DroppedFramesError, StallError


def _run(script: list[Exception | None], retries: int, progress_after: set[int] = frozenset()):
    """Run attempts that raise the scripted faults in turn (None: succeed); attempts whose number is in
    ``progress_after`` bring one result before failing. Returns (result, attempts made, tally)."""
    tally = new_tally()
    state = {"attempts": 0, "results": 0}

    def attempt() -> str:
        n = state["attempts"]
        state["attempts"] += 1
        if n in progress_after:
            state["results"] += 1
        fault = script[min(n, len(script) - 1)]
        if fault is not None:
            raise fault
        return "done"

    result = run_with_retries(
        RetryPolicy(retries=retries, backoff_s=0.0),
        attempt,
        tally=tally,
        recover=lambda: None,
        progress=lambda: state["results"],
    )
    return result, state["attempts"], tally


def test_stalls_fewer_than_a_row_do_not_use_the_budget():
    stall = StallError("stalled")
    result, attempts, tally = _run([stall] * (CLEARED_IN_A_ROW - 1) + [None], retries=1)
    assert result == "done" and attempts == CLEARED_IN_A_ROW and tally.stalls == CLEARED_IN_A_ROW - 1
    assert tally.retries == CLEARED_IN_A_ROW - 1 and tally.requests_failed == 0


def test_a_pipe_that_keeps_stalling_uses_the_budget_then_raises():
    with pytest.raises(StallError):
        _run([StallError("stalled")], retries=2)
    _, attempts, _ = _run([StallError("stalled")] * (CLEARED_IN_A_ROW - 1 + 2) + [None], retries=2)
    assert attempts == CLEARED_IN_A_ROW - 1 + 2 + 1  # two stalls free, two counted, then success


def test_without_retries_the_first_stall_raises():
    with pytest.raises(StallError):
        _run([StallError("stalled"), None], retries=0)


def test_a_device_reset_is_cleared_like_a_stall_and_a_row_of_them_counts():
    stall, reset = StallError("stalled"), DeviceResetError("reset")
    result, attempts, _ = _run([reset, stall, None], retries=0 + 1)
    assert result == "done" and attempts == 3  # both cleared: the one retry is still unused
    with pytest.raises(DeviceResetError):
        _run([reset] * (CLEARED_IN_A_ROW + 1) + [None], retries=1)


def test_other_faults_count_and_break_the_row():
    stall, dropped = StallError("stalled"), DroppedFramesError("dropped")
    # stall (free), dropped (counted: 1 of 1), stall, stall (free again: the row was broken), then success
    result, attempts, _ = _run([stall, dropped, stall, stall, None], retries=1)
    assert result == "done" and attempts == 5
    with pytest.raises(DroppedFramesError):
        _run([dropped, stall, dropped, None], retries=1)


def test_attempts_that_brought_results_do_not_use_the_budget():
    dropped = DroppedFramesError("dropped")
    result, attempts, tally = _run([dropped] * 5 + [None], retries=1, progress_after={0, 1, 2, 3})
    assert result == "done" and attempts == 6 and tally.retries == 5
    with pytest.raises(DroppedFramesError):
        _run([dropped] * 5 + [None], retries=1, progress_after={0, 1})
