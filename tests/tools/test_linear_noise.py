"""The linear mode's noise model (opu_tools.linear_noise): the shape docs/linear-noise.md relies on."""

from opu_tools.linear_noise import LinearNoiseModel, predict_fidelity

DENSITIES = (0.01, 0.04, 0.1, 0.4)


def test_one_range_is_photon_limited_at_sparse_densities_and_auto_ranging_lifts_it():
    one = [predict_fidelity(d, 8, auto=False) for d in DENSITIES]
    auto = [predict_fidelity(d, 8, auto=True) for d in DENSITIES]
    assert one == sorted(one) and one[0] < 0.95  # a 1% error's own light limits it
    assert all(a >= o for a, o in zip(auto, one, strict=True)) and min(auto) > 0.99


def test_auto_ranging_picks_a_weak_reference_and_a_long_exposure_for_sparse_vectors():
    model = LinearNoiseModel()
    sparse, dense = model.auto_range(10), model.auto_range(1000)
    assert sparse[0] < dense[0] and sparse[1] > dense[1] >= 0.5
    assert sparse[1] <= model.max_factor
