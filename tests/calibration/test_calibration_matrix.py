"""The matrix estimate (digital twin of the linear mode) and the |xM|^2 check, against the emulator's truth."""

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration._checks import check_components, correlation, is_int
from opu_driver.calibration._probes import TwoReferenceLayout, hadamard_order, hadamard_rows
from opu_driver.calibration.matrix import estimate_matrix
from opu_driver.errors import InvalidInputError

# 256 features in the split layout's signal half (48 x 64 mirrors): macro-pixels of 3 x 3 mirrors. Cells of
# 2 x 2 mirrors give the signal half 24 x 32 = 768 input modes, more than 256, so the effective matrix has full
# rank (with cell=4 there would be only 192). MONO12 keeps the ADC rounding below the shot noise; an exposure of
# 250 us keeps every probe frame (half the signal + the whole reference) below full scale for this seed: the
# reference alone peaks near 1,700 DN of 4,095 and the tests check that no frame saturated.
SIM = "sim://?dmd=96x64&camera=64x48&cell=2&seed=5"
SETTINGS = {"pixel_format": "MONO12", "exposure_us": 250}
N_FEATURES, N_OUT = 256, 1024


def _dn_per_intensity(opu) -> tuple[float, float]:
    """(DN per unit of emulator intensity, DN per electron) at the current settings."""
    gt = opu.emulator.ground_truth
    s = opu.camera.settings
    dn = gt.dn_per_electron(s.gain, 12)
    return gt.signal_e_per_intensity(s.exposure_us, opu.controller.laser_power_mw) * dn, dn


def _fields(opu):
    """Ground-truth fields on the ROI with the two-reference layout loaded: (signal, A, B), pixels last."""
    assert isinstance(opu.dmd.layout, TwoReferenceLayout)  # the layout the routine left loaded
    F = opu.emulator.ground_truth.feature_matrix()[:, :N_OUT].astype(np.complex128)
    return F[:N_FEATURES], F[N_FEATURES], F[N_FEATURES + 1]


def _exact_matrix(signal, reference):
    """Re[exp(-i phi) R]: the linear mode's matrix before its unit-variance scaling (as tests/opu/test_linear.py).

    The linear mode's reference region is the union of A and B (same mirrors), so its field is F_A + F_B.
    """
    return np.real(np.conj(reference) / np.abs(reference) * signal)


@pytest.mark.slow
def test_hadamard_estimate_correlates_with_the_true_matrix_at_0_99_and_counts_its_frames():
    with opu_driver.open(SIM, **SETTINGS) as opu:
        before = opu.counters.frames_sent
        result = estimate_matrix(opu, N_FEATURES, N_OUT, seed=1)
        sent = opu.counters.frames_sent - before
        cal = opu.linear_mode.calibration(N_FEATURES, N_OUT)
        signal, a, b = _fields(opu)
        # a second estimate reuses the reference calibration: no reference frames
        again = estimate_matrix(opu, N_FEATURES, N_OUT, seed=2, nonlinear_check=False)
        frames = {n_rows: opu.linear_mode.call_frames(n_rows) for n_rows in (16, 32, 256)}
    # nothing saturated: the reference (plus dark) is below full scale, and no probe frame clipped
    assert (cal.reference_dn + cal.dark_dn).max() < 4095 and result.saturated_frames == 0
    # the frames reported are the frames sent, stage by stage
    assert result.n_frames == sent
    n = hadamard_order(N_FEATURES)
    assert result.n_probes == n == 256
    # each linear stage is one call: its rows' four frames each and the light pilots among them
    assert 4 * n < result.n_frames_probes == frames[n] < 4 * n + n // 8
    assert result.n_frames_noise == frames[16] and result.n_frames_holdout == frames[32]
    # linear mode: 32 dark, 32 reference, 2 x 32 probes, measured twice (steady light: the two agreed)
    assert result.n_frames_reference == 2 * (2 * 32 + 2 * 32)
    assert result.n_frames_nonlinear == 4 * 64 + 6 * n + 32
    assert again.n_frames_reference == 0 and again.n_frames_nonlinear == 0
    assert again.n_frames == frames[n] + frames[16] + frames[32]
    np.testing.assert_array_equal(result.mask, cal.mask)
    m = cal.mask
    exact = _exact_matrix(signal, a + b)[:, m]
    estimate = result.matrix[:, m].astype(np.float64)
    rho = np.corrcoef(estimate.ravel(), exact.ravel())[0, 1]
    assert rho >= 0.99  # the linear mode's fidelity bar
    # Derived: B = P^T Y / n gives each entry the noise s^2 / n of n outputs of variance s^2 (orthogonal P), on
    # entries of variance v (~1, the unit-variance scaling): rho = 1 / sqrt(1 + s^2 / (n v)). s^2 comes from the
    # repeated probes (16 x ~950 outputs: its relative error is a few %, 1 - rho moves by << 0.001).
    s2 = result.output_noise_variance
    v = estimate.var() - s2 / n
    assert rho == pytest.approx(1 / np.sqrt(1 + s2 / (n * v)), abs=1e-3)
    # the held-out error is what the noise explains: var(residual) = s^2 (1 + n_features / n) for +-1 vectors
    assert result.relative_error == pytest.approx(result.expected_relative_error, rel=0.1)
    assert result.holdout_correlation > 0.99
    summary = result.summary()
    for key in (
        "n_features",
        "n_components",
        "probes",
        "scheme",
        "n_frames",
        "relative_error",
        "holdout_correlation",
        "nonlinear_correlation",
        "nonlinear_relative_error",
        "roi_width",
    ):
        assert key in summary
    assert all(isinstance(v, (bool, int, float, str, type(None))) for v in summary.values())
    arrays = result.arrays()
    assert arrays["matrix"].shape == (N_FEATURES, N_OUT) and arrays["matrix"].dtype == np.float32
    assert arrays["holdout_measured"].shape == arrays["holdout_predicted"].shape == (min(20_000, 32 * int(m.sum())),)
    assert 0 < arrays["nonlinear_measured"].size <= 20_000
    assert arrays["nonlinear_measured"].shape == arrays["nonlinear_predicted"].shape


@pytest.mark.slow
def test_random_probes_reach_the_derived_correlation():
    with opu_driver.open(SIM, **SETTINGS) as opu:
        result = estimate_matrix(opu, N_FEATURES, N_OUT, probes="random", n_probes=384, seed=3, nonlinear_check=False)
        m = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        opu.linear_transform(np.eye(1, N_FEATURES), N_OUT)  # loads the linear layout for the ground truth
        probe_frames = sum(map(opu.linear_mode.call_frames, (256, 128)))  # two calls
        F = opu.emulator.ground_truth.feature_matrix()[:, :N_OUT].astype(np.complex128)
    assert result.n_frames_probes == probe_frames
    assert result.saturated_frames == 0
    exact = _exact_matrix(F[:N_FEATURES], F[N_FEATURES:].sum(axis=0))[:, m]  # the reference features, all on
    estimate = result.matrix[:, m].astype(np.float64)
    rho = np.corrcoef(estimate.ravel(), exact.ravel())[0, 1]
    # Least squares with p random +-1 probes: entry noise s^2 [(P^T P)^-1]_jj, whose mean is s^2 / (p - k - 1)
    # for k features (inverse Wishart), so 384 probes for 256 features give about twice the noise of 256
    # Hadamard probes: a lower bar, rho = 1 / sqrt(1 + s^2 / ((p - k - 1) v)).
    s2 = result.output_noise_variance
    v = estimate.var() - s2 / (384 - N_FEATURES - 1)
    expected = 1 / np.sqrt(1 + s2 / ((384 - N_FEATURES - 1) * v))
    assert rho == pytest.approx(expected, abs=2e-3)
    assert rho > 0.985
    assert result.relative_error == pytest.approx(result.expected_relative_error, rel=0.1)


def test_without_noise_the_estimate_is_exact_up_to_the_adc_rounding():
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12", exposure_us=200) as opu:
        result = estimate_matrix(opu, N_FEATURES, N_OUT, seed=4, nonlinear_check=False)
        cal = opu.linear_mode.calibration(N_FEATURES, N_OUT)
        g, _ = _dn_per_intensity(opu)
        opu.linear_transform(np.eye(1, N_FEATURES), N_OUT)
        F = opu.emulator.ground_truth.feature_matrix()[:, :N_OUT].astype(np.complex128)
    assert result.saturated_frames == 0
    m = cal.mask
    # The linear mode outputs y_DN * scale, scale = 1 / (2 sqrt(reference_dn * entry_variance)); the
    # four-frame difference y_DN of a probe is exactly 2 g Re[conj(F_ref) p F_sig] up to four roundings of
    # U(-1/2, 1/2) DN (variance 4 / 12). B = P^T Y / n averages n of them: each entry is off by sd
    # sqrt(1 / (3 n)) = 0.036 DN. The reference itself is only rounded once (identical frames), which cancels
    # here because the test divides by the same reference_dn the linear mode used.
    scale = 1.0 / (2.0 * np.sqrt(cal.reference_dn[m].astype(np.float64) * cal.entry_variance))
    estimate_dn = result.matrix[:, m] / scale
    exact_dn = 2 * g * np.real(np.conj(F[N_FEATURES:].sum(axis=0)) * F[:N_FEATURES])[:, m]
    n = hadamard_order(N_FEATURES)
    rms = np.sqrt(np.mean((estimate_dn - exact_dn) ** 2))
    # float32 outputs add ~1e-7 relative: negligible. 1.1 x: the rms of ~240,000 entries is within 1% of sd.
    assert rms < 1.1 * np.sqrt(1 / (3 * n))
    assert rms > 0.5 * np.sqrt(1 / (3 * n))  # the rounding is really there: the comparison is not vacuous
    assert result.output_noise_variance == 0  # noise=0: a repeated probe gives the same counts


def _nonlinear_expectation(opu, result, X, noise: bool):
    """Predicted variances of the check, from the noise model (see the derivation in the test below)."""
    signal, a, b = _fields(opu)
    g, dn = _dn_per_intensity(opu)
    gt = opu.emulator.ground_truth
    k = result.field_mask
    n = hadamard_order(N_FEATURES)
    if noise:
        p = gt.noise
        t_s = opu.camera.settings.exposure_us * 1e-6
        floor = dn**2 * (p.dark_offset_e + p.dark_current_e_per_s * t_s + p.read_noise_e**2) + 1 / 12

        def var(intensity_dn):  # shot noise, dark and read noise, ADC rounding, laser jitter (DN^2)
            return dn * intensity_dn + floor + (p.laser_jitter * intensity_dn) ** 2
    else:

        def var(intensity_dn):
            return np.full_like(intensity_dn, 1 / 12)

    ia, ib = g * np.abs(a[k]) ** 2, g * np.abs(b[k]) ** 2
    half = 0.5 * g * (np.abs(signal[:, k]) ** 2).sum(axis=0)  # a probe's p+ (or p-): half the features
    cos_d = np.real(np.conj(a[k]) * b[k]) / np.abs(a[k]) / np.abs(b[k])
    var_re = (2 * var(ia + half) + 2 * var(half)) / (4 * ia * n)
    var_ub = (2 * var(ib + half) + 2 * var(half)) / (4 * ib * n)
    var_im = (var_ub + cos_d**2 * var_re) / (1 - cos_d**2)
    truth = g * np.abs(X @ signal[:, k]) ** 2
    ones = X.sum(axis=1, keepdims=True)
    entry = var_re + var_im
    var_pred = 2 * truth * ones * entry + (ones * entry) ** 2  # 2 Re[conj(t) delta] and |delta|^2
    # The reference means (64 frames each of dark, A, B, A + B; rounding 1/12 DN^2 each) err once per pixel:
    # a relative error e of a quadrature's scale moves that quadrature of every x M' by e, the intensity by
    # ~2 e x (its half of it). cos D errs by sd_c / (2 |a| |b|), which moves Im by (1/sin D + |cos D|/sin^2 D).
    mean_var = [
        var(np.zeros_like(ia)) / 64 + 1 / 12,
        var(ia) / 64 + 1 / 12,
        var(ib) / 64 + 1 / 12,
        var(g * np.abs(a[k] + b[k]) ** 2) / 64 + 1 / 12,
    ]
    sin_d = np.sqrt(1 - cos_d**2)
    e_im = np.sqrt(sum(mean_var)) / (2 * np.sqrt(ia * ib)) * (1 / sin_d + np.abs(cos_d) / sin_d**2)
    e_re = np.sqrt(mean_var[0] + mean_var[1]) / (2 * ia)
    e_b = np.sqrt(mean_var[0] + mean_var[2]) / (2 * ib) / sin_d
    var_pred = var_pred + 4 * truth**2 * (e_re**2 + e_im**2 + e_b**2) / 2
    var_meas = var(truth) * (1 + 1 / 64)  # the frame, and the mean of 64 dark frames subtracted
    return truth, var_pred, var_meas


@pytest.mark.slow
@pytest.mark.parametrize("noise", [False, True])
def test_nonlinear_check_predicts_binary_intensities(noise):
    url = SIM if noise else SIM + "&noise=0"
    with opu_driver.open(url, **SETTINGS) as opu:
        result = estimate_matrix(opu, N_FEATURES, N_OUT, seed=6, n_holdout=64)
        X = (np.random.default_rng(7).random((64, N_FEATURES)) < 0.5).astype(np.float64)
        truth, var_pred, var_meas = _nonlinear_expectation(opu, result, X, noise)
    k = result.field_mask
    # Pixels with weak references, |sin D| < 0.25 (~16% for a uniform phase D) or a reference measurement too
    # imprecise for a 10% field error (mostly small |sin D|, and with noise more of them) are dropped.
    assert 0.5 < k.mean() < 0.9
    # Derivation. A +-1 probe's six frames give d_A = 2|a| Re[t] plus the noise of four frames, two near
    # |a|^2 + S and two near S (S: intensity of half the signal features); the Hadamard inverse averages n of
    # them, so Re of an entry of M' has variance var(d_A) / (4 |a|^2 n), likewise u_B, and
    # Im = (u_B - u_A cos D) / sin D has (var_B + cos^2 D var_A) / sin^2 D. A binary x with K ones sums K
    # independent entry errors delta (orthogonal inverse): |t + delta|^2 - |t|^2 = 2 Re[conj(t) delta] +
    # |delta|^2, of variance ~ 2 |t|^2 K (var_re + var_im) for phases spread uniformly, + (K (var_re+var_im))^2.
    # The measurement adds the camera's variance at that intensity (and the dark mean's, 1/16 of it at 0).
    pred = result.predict_intensity(X)[:, k].astype(np.float64)
    v_truth = truth.var()
    rho_truth = np.corrcoef(pred.ravel(), truth.ravel())[0, 1]
    expected_truth = 1 / np.sqrt(1 + var_pred.mean() / v_truth)
    expected_check = v_truth / np.sqrt((v_truth + var_meas.mean()) * (v_truth + var_pred.mean()))
    # The model averages over the phase of t and treats every rounding as an independent U(-1/2, 1/2): it gets
    # 1 - rho within a factor ~1.9 (measured: noise 0.024 vs 0.020, no noise 0.0004 vs 0.0008), so the band is a
    # factor 2 either way. A real mistake (a wrong reference scale, the sign of cos D, a lost conjugation) gives a
    # 1 - rho ten to a thousand times larger; the sampling error of rho over ~40,000 points is negligible.
    assert (1 - expected_truth) / 2 < 1 - rho_truth < 2 * (1 - expected_truth)
    assert (1 - expected_check) / 2 < 1 - result.nonlinear_correlation < 2 * (1 - expected_check)
    if noise:
        assert result.nonlinear_correlation > 0.95
    else:
        assert result.nonlinear_correlation > 0.999 and rho_truth > 0.999
        # without noise |x M'|^2 is g |x F|^2 up to the rounding's propagated error, a few DN on ~500 DN
        assert np.sqrt(np.mean((pred - truth) ** 2)) < 3 * np.sqrt(var_pred.mean())


def test_hadamard_rows_are_orthogonal_and_the_layout_splits_the_reference():
    P = hadamard_rows(np.arange(256), 200, np.random.default_rng(0).choice([-1, 1], 200))
    np.testing.assert_array_equal(P.T.astype(np.int64) @ P, 256 * np.eye(200, dtype=np.int64))
    assert hadamard_order(200) == 256 and hadamard_order(256) == 256 and hadamard_order(1) == 1
    layout = TwoReferenceLayout(N_FEATURES, 96, 64)
    counts = layout.mirrors_per_feature()
    assert layout.n_table_features == N_FEATURES + 2 and counts[-1] == counts[-2] == 48 * 32
    from opu_driver.encoding.layouts import SplitLayout

    split = SplitLayout(N_FEATURES, 96, 64)
    # same signal mirrors as the linear mode's layout; A and B together are its reference region
    np.testing.assert_array_equal(layout.mirror_feature_map() < N_FEATURES, split.mirror_feature_map() < N_FEATURES)
    np.testing.assert_array_equal(np.minimum(layout.mirror_feature_map(), N_FEATURES), split.mirror_feature_map())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"probes": "sobol"},
        {"scheme": "three_frame"},
        {"probes": "hadamard", "n_probes": 300},
        {"probes": "random", "n_probes": 50},  # fewer probes than the 64 features
        {"n_holdout": 0},
        {"n_repeats": 0},
        {"seed": -1},
        {"nonlinear_check": "yes"},
        {"n_features": 0},
        {"n_features": 96 * 64},  # no room beside the reference region
        {"n_components": 0},
        {"n_components": 64 * 48 + 1},
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(kwargs):
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        frames = opu.counters.frames_sent
        args = {"n_features": 64, "n_components": 100, **kwargs}
        with pytest.raises(InvalidInputError):
            estimate_matrix(opu, args.pop("n_features"), args.pop("n_components"), **args)
        assert opu.link_counters.bytes_sent == sent and opu.counters.frames_sent == frames


def test_shared_checks_and_correlation_behave_as_the_copies_they_replace():
    # matrix.py used np.corrcoef (NaN for a constant array or fewer than two values); the shared function
    # computes the same Pearson correlation (to rounding: ~1e-16 relative) and gives exactly 1 for identical
    # arrays, as fidelity and drift need.
    rng = np.random.default_rng(0)
    a = rng.standard_normal((40, 30))
    b = 0.7 * a + rng.standard_normal((40, 30))
    assert correlation(a, b) == pytest.approx(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]), abs=1e-12)
    assert correlation(a, a) == 1.0 and correlation(a, -a) == pytest.approx(-1.0, abs=1e-12)
    assert np.isnan(correlation(np.ones(5), a[0, :5])) and np.isnan(correlation(a[:1, :1], b[:1, :1]))
    assert is_int(3) and is_int(np.int64(3), 3) and not is_int(2, 3)
    assert not is_int(True) and not is_int(3.0) and not is_int(None, 0)
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        check_components(opu, 64 * 48)
        check_components(opu, np.int32(1))
        for bad in (0, 64 * 48 + 1, 2.0, True, "10"):
            with pytest.raises(InvalidInputError, match="n_components"):
                check_components(opu, bad)
        assert opu.link_counters.bytes_sent == sent
