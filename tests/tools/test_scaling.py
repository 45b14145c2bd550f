"""The scaling model of docs/scaling.md: its break-evens are where its two sides meet."""

import pytest

from opu_tools.scaling import Assumptions, Workload, break_even_size, estimate


@pytest.mark.parametrize("tokens", [1, 2048, 1 << 19])
def test_at_the_break_even_size_both_sides_take_the_same_time_and_energy(tokens):
    a = Assumptions()
    for energy in (False, True):
        size = break_even_size(2, a, energy=energy)
        e = estimate(Workload(d_model=1, blocks=1_000_000, vocabulary=round(size / 1e6), tokens=tokens), a)
        optical, gpu = (e.optical_two_j, e.gpu_j) if energy else (e.optical_two_s, e.gpu_s)
        assert gpu == pytest.approx(optical, rel=1e-5)


def test_the_optical_time_does_not_depend_on_the_projection_size():
    small = estimate(Workload(d_model=64, blocks=4, vocabulary=65, tokens=2048))
    large = estimate(Workload(d_model=16_384, blocks=60, vocabulary=262_144, tokens=2048))
    assert small.optical_four_s == large.optical_four_s == pytest.approx(2 * small.optical_two_s)
    assert large.gpu_s > small.gpu_s


def test_a_projection_larger_than_one_frame_is_refused():
    with pytest.raises(ValueError, match="exceeds one frame"):
        estimate(Workload(d_model=16_384, blocks=126, vocabulary=128_256, tokens=1))
    with pytest.raises(ValueError, match="exceeds one frame"):
        estimate(Workload(d_model=1, blocks=1, vocabulary=500_001, tokens=1))
