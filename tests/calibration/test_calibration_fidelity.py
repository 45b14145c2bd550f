"""The fidelity routine: repeatability, linearity and SNR of linear projections, checked against the emulator."""

import math

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration.fidelity import _vectors, correlation, measure_fidelity
from opu_driver.errors import InvalidInputError
from tests.support import exact_linear_matrix, small_sim

SIM = small_sim("seed=3")
N_FEATURES, N_OUT, N_VECTORS = 64, 300, 32


def _exact_matrix(opu):
    return exact_linear_matrix(opu, N_FEATURES, N_OUT)


def _n_eff(row):
    # Neighbouring pixels share a speckle grain (2 px, as in tests/opu/test_linear.py): about 4 pixels per independent
    # sample; the laser jitter is common to a frame, which this conservative count also covers.
    return N_VECTORS * row.n_outputs / 4


def test_default_noise_meets_the_linear_bar_and_the_snr_predicts_the_correlation_with_the_truth():
    seed = 5
    with opu_driver.open(SIM) as opu:
        result = measure_fidelity(
            opu, N_FEATURES, N_OUT, schemes=("four_frame",), n_bits=(None,), n_vectors=N_VECTORS, seed=seed
        )
        row = result.row("four_frame")
        # the vectors of the first row are the first draw of the seeded generator
        a, _ = _vectors(np.random.default_rng(seed), N_VECTORS, N_FEATURES, None)
        Y = opu.linear_transform(a, N_OUT).astype(np.float64)
        exact = a @ _exact_matrix(opu)
        mask = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
    assert row.frames_per_vector == 4 and row.n_outputs == mask.sum()
    # The linear mode's fidelity bar (correlation with the exact projection >= 0.99) with the default noise. The
    # repeatability is the square of that correlation (snr / (1 + snr) versus sqrt(snr / (1 + snr))), so the bar
    # reads sqrt(repeatability) >= 0.99, i.e. repeatability >= 0.98. (The repeatability itself sits at 0.989-0.992
    # over emulator and vector seeds at MONO8: too close to 0.99 to be a bar of its own.)
    assert math.sqrt(row.repeatability) >= 0.99
    # repeatability and SNR are two readings of the same variances: r = snr / (1 + snr) up to sampling
    # (sd of r about (1 - r^2) / sqrt(n_eff); 5 sd)
    snr = row.snr
    assert row.repeatability == pytest.approx(
        snr / (1 + snr), abs=5 * (1 - row.repeatability**2) / math.sqrt(_n_eff(row))
    )
    # The SNR predicts the correlation with the truth: rho = sqrt(snr / (1 + snr)) for independent noise.
    # Tolerance: the SNR's noise variance comes from n_eff samples (relative sd sqrt(2 / n_eff)), which moves rho by
    # 0.5 (1 - rho^2) sqrt(2 / n_eff); the measured correlation has sd at most (1 - rho^2) / sqrt(n_eff); 5 sd of
    # the two together.
    measured = correlation(Y[:, mask], exact[:, mask])
    predicted = math.sqrt(snr / (1 + snr))
    sd = (1 - predicted**2) * math.sqrt(1.5 / _n_eff(row))
    assert abs(measured - predicted) < 5 * sd, (measured, predicted, sd)
    assert measured >= 0.99


def test_without_noise_repeats_are_identical_and_linearity_is_limited_by_the_adc():
    # MONO12 and a short exposure: the brightest frame (a + b + reference) stays below saturation.
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12", exposure_us=60) as opu:
        result = measure_fidelity(opu, N_FEATURES, N_OUT, n_bits=(None, 1, 2, 4, 8), n_vectors=N_VECTORS, seed=1)
        cal = opu.linear_mode.calibration(N_FEATURES, N_OUT)
    m = cal.mask
    scale = 1 / (2 * np.sqrt(cal.reference_dn[m].astype(np.float64) * cal.entry_variance))
    for row in result.rows:
        assert row.repeatability == 1.0 and row.noise_variance == 0.0 and math.isinf(row.snr_db)
        assert result.summary()[f"{row.label}:snr_db"] is None  # JSON has no infinity
    for scheme, per in (("four_frame", 4), ("two_frame", 2)):
        row = result.row(scheme)
        # ADC rounding only: each frame off by U(-1/2, 1/2) DN, `per` frames per projection, 3 projections in the
        # residual: variance 3 per / 12 DN^2, times the per-output scale. The RMS of L(a + b) is sqrt(2 S) (a and b
        # disjoint, S the variance of L(a) = the row's signal variance). 1.5x for the sample RMS.
        bound = 1.5 * math.sqrt(3 * per / 12 * float(np.mean(scale**2))) / math.sqrt(2 * row.signal_variance)
        if scheme == "four_frame":
            assert row.linearity_error < bound
        else:
            # the two-frame scheme keeps |R e+|^2 - |R e-|^2 (smaller beside its dimmed signal, still there): beyond
            # rounding, and beyond the four-frame error
            assert row.linearity_error > 5 * bound
            assert row.linearity_error > 5 * result.row("four_frame").linearity_error
        # bit planes: the quantisation error falls as the step 1 / (2^b - 1) shrinks
        errors = [result.row(scheme, b).linearity_error for b in (1, 2, 4, 8)]
        assert all(later < earlier for earlier, later in zip(errors, errors[1:], strict=False))
        # frames: 4 or 2 per ternary projection, times the planes
        assert [result.row(scheme, b).frames_per_vector for b in (None, 1, 2, 4, 8)] == [
            per,
            per,
            2 * per,
            4 * per,
            8 * per,
        ]


def test_snr_grows_then_saturates_with_bits_and_two_frame_is_less_linear():
    # A 250 us exposure keeps a + b + reference below saturation (saturated outputs are zeroed and would add to
    # the linearity error).
    with opu_driver.open(SIM.replace("seed=3", "seed=4"), pixel_format="MONO12", exposure_us=250) as opu:
        result = measure_fidelity(opu, N_FEATURES, N_OUT, n_bits=(None, 1, 2, 4, 8), n_vectors=N_VECTORS, seed=2)
    for scheme in ("four_frame", "two_frame"):
        rows = [result.row(scheme, b) for b in (1, 2, 4, 8)]
        snr_db = [r.snr_db for r in rows]
        # One bit leaves most Gaussian entries at 0 (sparse vectors, little signal over the reference's shot
        # noise); more planes fill the vector in until the noise, which grows with the weight 2^b of the top
        # plane like the signal, sets the level. The SNR's sampling sd is about 10 log10(e) sqrt(2 / n_eff) dB
        # (under 0.2 dB); 5 sd of a difference of two: "never falls by more than 1.3 dB".
        sd_db = 10 / math.log(10) * math.sqrt(2 / _n_eff(rows[0]))
        assert all(
            later > earlier - 5 * math.sqrt(2) * sd_db for earlier, later in zip(snr_db, snr_db[1:], strict=False)
        )
        assert snr_db[-1] > snr_db[0] + 3
    four, two = result.row("four_frame"), result.row("two_frame")
    # The four-frame scheme has no bias: its linearity error is the noise of three projections, residual variance
    # 3 N over var L(a + b) = 2 S + N (a, b disjoint, of about equal weight): sqrt(3 / (2 snr + 1)). Allowance 20%:
    # |a| and |b| differ by a few entries in ~21 (up to ~15% in S), the noise variance is estimated (3% sd), and
    # a + b carries more light than a, hence a little more shot noise (the error sits a few % above).
    # Two-frame: its bias |R e+|^2 - |R e-|^2 comes on top, so above what its own noise explains by more than that
    # allowance (its signal level is chosen to bring the bias down to the size of the noise, not below it).
    assert four.linearity_error == pytest.approx(math.sqrt(3 / (2 * four.snr + 1)), rel=0.2)
    assert two.linearity_error > 1.2 * math.sqrt(3 / (2 * two.snr + 1))
    assert two.linearity_error > 1.5 * four.linearity_error
    # With the three projections' noise taken off, the four-frame residual is what the 20% allowance above leaves
    # (sqrt(0.2 x 3 N) at most), and the two-frame bias stands out.
    assert four.nonlinearity <= math.sqrt(0.2) * four.linearity_error
    assert two.nonlinearity > 2 * four.nonlinearity


def test_result_summary_arrays_and_table_follow_the_shared_spec():
    with opu_driver.open(SIM) as opu:
        result = measure_fidelity(opu, 16, 64, n_bits=(None, 2), n_vectors=4, seed=0, progress=False)
    summary = result.summary()
    labels = ["four_frame/ternary", "four_frame/2bit", "two_frame/ternary", "two_frame/2bit"]
    assert summary["rows"] == ",".join(labels)
    assert (summary["n_features"], summary["n_components"], summary["n_vectors"]) == (16, 64, 4)
    for label in labels:
        for quantity in ("frames_per_vector", "repeatability", "linearity_error", "nonlinearity", "snr_db"):
            value = summary[f"{label}:{quantity}"]
            assert value is None or isinstance(value, (int, float))
    arrays = result.arrays()
    assert set(arrays) == {"frames_per_vector", "repeatability", "linearity_error", "snr_db"}
    assert all(v.shape == (4,) for v in arrays.values())
    np.testing.assert_array_equal(arrays["frames_per_vector"], [4, 8, 2, 4])
    table = result.table()
    assert all(label in table for label in labels) and "SNR" in table


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_features": 1},
        {"n_components": 0},
        {"n_components": 64 * 48 + 1},
        {"n_vectors": 1},
        {"schemes": ("three_frame",)},
        {"schemes": ()},
        {"n_bits": (0,)},
        {"n_bits": (17,)},
        {"n_bits": (None, None)},
        {"n_bits": (2.5,)},
        {"seed": -1},
        {"n_features": 96 * 64},  # no room beside the linear mode's reference region
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(kwargs):
    args = {"n_features": N_FEATURES, "n_components": N_OUT, **kwargs}
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        with pytest.raises(InvalidInputError):
            measure_fidelity(opu, args.pop("n_features"), args.pop("n_components"), **args)
        assert opu.link_counters.bytes_sent == sent
