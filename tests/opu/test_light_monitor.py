"""The linear mode's light monitor: pilot frames among a call's frames, and what it does when they move.

The emulator's ``light`` fault makes one sequence 20% dimmer, which saturates nothing, so only the values show
it: without the monitor those vectors come back 20% too small, silently. With noise=0 the emulator is
deterministic and the fault-free result is a device of the same seed without faults, so "exact" is bit for bit.
The no-false-alarm test runs with the camera's noise: a pilot's level then spreads by the laser's jitter and the
shot noise of its sum over outputs (0.5% on this small camera, measured in docs/reliability.md), ten times
below the 5% at which the monitor acts, so a single re-run there is a defect, not bad luck.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

import opu_driver
from opu_driver.errors import AcquisitionError
from opu_driver.opu.light import MIN_SHIFT, PilotPlan
from tests.support import small_sim

BASE = small_sim("noise=0&seed=5")
N_FEATURES, N_COMPONENTS = 20, 40
SETTINGS = dict(timeout_s=2.0, calibration=None, retries=3)


def _errors(seed: int, batch: int = 64, kind: str = "ternary") -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "real":
        return rng.normal(size=(batch, N_FEATURES)).astype(np.float32)
    E = ((rng.random((batch, N_FEATURES)) < 0.3) * rng.choice([-1.0, 1.0], size=(batch, N_FEATURES))).astype(np.float32)
    E[np.abs(E).sum(axis=1) == 0, 0] = 1.0
    return E


@pytest.fixture(scope="module")
def fault_free():
    """Results without faults, by (chunk_frames, scheme, kind): the monitor must hand back exactly these."""
    results = {}
    for chunk in (None, 16):
        with opu_driver.open(BASE, chunk_frames=chunk, **SETTINGS) as opu:
            for scheme in ("four_frame", "two_frame"):
                for kind in ("ternary", "real"):
                    E = _errors(1, kind=kind)
                    results[chunk, scheme, kind] = opu.linear_transform(E, N_COMPONENTS, scheme=scheme)
    return results


@pytest.mark.parametrize("kind", ["ternary", "real"])
@pytest.mark.parametrize("scheme", ["four_frame", "two_frame"])
@pytest.mark.parametrize(("chunk", "plan"), [(None, "light@1"), (16, "light@2,light@5,light@9")])
def test_vectors_projected_under_moved_light_are_projected_again_and_exact(fault_free, chunk, plan, scheme, kind):
    E = _errors(1, kind=kind)
    with opu_driver.open(BASE, chunk_frames=chunk, **SETTINGS) as opu:
        # the references of every range these vectors use, measured before the faults (a fault during a reference
        # measurement is met by that measurement's own steadiness check, not by the pilots)
        opu.linear_transform(E, N_COMPONENTS, scheme=scheme)
        opu.emulator.set_faults(plan)
        y = opu.linear_transform(E, N_COMPONENTS, scheme=scheme)
        injected = opu.emulator.fault_counts["injected"]["light"]
        assert injected == plan.count("@")
        np.testing.assert_array_equal(y, fault_free[chunk, scheme, kind])
        assert opu.linear_mode.light_reruns >= 1 and opu.linear_mode.reference_remeasured == 0


def test_without_the_monitor_the_light_fault_would_spoil_the_result(fault_free):
    # The fault is real: the same dim sequence, projected with the pilots' verdict ignored, comes back wrong.
    E = _errors(1)
    with opu_driver.open(BASE, **SETTINGS) as opu:
        opu.linear_transform(E[:4], N_COMPONENTS)
        opu.emulator.set_faults("light@1")
        linear = opu.linear_mode
        calibration = linear.calibration(N_FEATURES, N_COMPONENTS)
        plus, minus = (E > 0).astype(np.uint8), (E < 0).astype(np.uint8)
        projected, _, levels = linear._project_rows(plus, minus, N_COMPONENTS, "four_frame", calibration)
    assert np.abs(levels - (1 - 0.2)).max() < 0.01  # the pilots read the x0.8 light
    wrong = np.abs(projected - fault_free[None, "four_frame", "ternary"]).max(axis=1)
    assert (wrong > 0.05 * np.abs(fault_free[None, "four_frame", "ternary"]).max()).all()


def test_a_light_changed_for_good_is_met_by_measuring_the_reference_again(caplog):
    E = _errors(2)
    with opu_driver.open(BASE, **SETTINGS) as opu:
        opu.linear_transform(E, N_COMPONENTS)
        opu.emulator.set_faults("light:1")  # every sequence from now on: the laser lost a fifth of its power
        with caplog.at_level(logging.WARNING):
            y = opu.linear_transform(E, N_COMPONENTS)
        assert opu.linear_mode.reference_remeasured == 1  # the whole reference; the ranges measured against it anew
        assert any("measuring the reference again" in r.getMessage() for r in caplog.records)
        reruns = opu.linear_mode.light_reruns
        np.testing.assert_array_equal(opu.linear_transform(E, N_COMPONENTS), y)  # steady again: nothing re-run
        assert opu.linear_mode.light_reruns == reruns and opu.linear_mode.reference_remeasured == 1
    # The result is the one of a device calibrated under the dimmer light from the start, to the last bit.
    with opu_driver.open(BASE, **SETTINGS) as opu:
        opu.emulator.set_faults("light:1")
        np.testing.assert_array_equal(opu.linear_transform(E, N_COMPONENTS), y)
        assert opu.linear_mode.light_reruns == 0


@pytest.mark.parametrize("plan", ["light@1", "light@2"])
def test_a_glitch_while_the_reference_is_measured_is_measured_again(fault_free, plan, caplog):
    # The reference is measured twice, as two device calls (two sequences), and kept when both agree: a dim
    # first or second measurement is measured again, so the scale of every later call is the fault-free one.
    with opu_driver.open(BASE, **SETTINGS) as opu:
        opu.emulator.set_faults(plan)
        with caplog.at_level(logging.WARNING):
            y = opu.linear_transform(_errors(1), N_COMPONENTS)
        assert opu.emulator.fault_counts["injected"]["light"] == 1
        assert any("between two measurements of the linear-mode reference" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(y, fault_free[None, "four_frame", "ternary"])


def test_light_that_keeps_moving_is_a_typed_error_never_a_wrong_result(fault_free):
    # Every other sequence dim for a long while: neither the reference nor a re-run can settle.
    plan = ",".join(f"light@{k}" for k in range(1, 200, 2))
    with opu_driver.open(BASE, chunk_frames=16, **SETTINGS) as opu:
        opu.linear_transform(_errors(1)[:4], N_COMPONENTS)
        opu.emulator.set_faults(plan)
        with pytest.raises(AcquisitionError, match="kept moving"):
            opu.linear_transform(_errors(1), N_COMPONENTS, refresh_reference=True)


@pytest.mark.parametrize("kind", ["ternary", "real"])
def test_steady_noisy_light_is_never_taken_for_moved_light(kind):
    with opu_driver.open(small_sim("seed=7"), calibration=None) as opu:
        for seed in range(6):
            for batch in (3, 64, 300):
                opu.linear_transform(_errors(seed, batch, kind), N_COMPONENTS)
            opu.linear_transform(_errors(seed, 64, kind), N_COMPONENTS, scheme="two_frame")
        assert opu.linear_mode.light_reruns == 0 and opu.linear_mode.reference_remeasured == 0


@pytest.mark.parametrize("per_vector", [2, 4])
@pytest.mark.parametrize("max_gap", [1, 5, 8, 64, 1024])
@pytest.mark.parametrize("n_vectors", [1, 2, 15, 16, 17, 300])
def test_pilots_leave_no_stretch_of_a_sequence_without_one(n_vectors, per_vector, max_gap):
    plan = PilotPlan(n_vectors, per_vector, max_gap)
    assert plan.total_frames == n_vectors * per_vector + plan.n_pilots == plan.vector_rows.size + plan.n_pilots
    shown = np.zeros(plan.total_frames, dtype=bool)
    shown[plan.pilot_rows] = True
    assert shown[0] and shown[-1]
    # No run of frames between two pilots longer than a sequence may be (a vector's frames are never split).
    gaps = np.diff(plan.pilot_rows) - 1
    assert gaps.max() <= max(max_gap - 1, per_vector)
    # Each vector is judged by the two pilots around its frames: a pilot off by more than MIN_SHIFT flags it.
    levels = np.ones(plan.n_pilots)
    levels[plan.n_pilots // 2] = 1 - 2 * MIN_SHIFT
    judged = plan.vector_levels(levels)
    rows = plan.vector_rows.reshape(n_vectors, per_vector)
    pilot = plan.pilot_rows[plan.n_pilots // 2]
    next_to_it = (rows[:, 0] > plan.pilot_rows[max(plan.n_pilots // 2 - 1, 0)]) & (
        rows[:, -1] < plan.pilot_rows[min(plan.n_pilots // 2 + 1, plan.n_pilots - 1)]
    )
    assert ((judged != 1) == next_to_it).all() and pilot in plan.pilot_rows
    for budget in (per_vector * 3, 100, 5000):
        fits = PilotPlan.most_vectors(budget, per_vector, max_gap)
        assert PilotPlan(fits, per_vector, max_gap).total_frames <= budget or fits == 1
        assert PilotPlan(fits + 1, per_vector, max_gap).total_frames > budget
