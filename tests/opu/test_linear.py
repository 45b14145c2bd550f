"""Linear projections from intensities, measured against the emulator's ground truth."""

import numpy as np
import pytest

import opu_driver
from opu_driver.errors import InvalidInputError
from opu_driver.opu.ranging import Range
from tests.support import exact_linear_matrix, small_sim

SIM = small_sim("seed=3")
N_FEATURES, N_OUT = 64, 300


def _exact_matrix(opu):
    return exact_linear_matrix(opu, N_FEATURES, N_OUT)


def _ternary(rng, batch):
    return rng.choice([-1, 0, 1], size=(batch, N_FEATURES), p=[0.2, 0.6, 0.2])


def test_four_frame_ternary_projection_matches_the_exact_matrix_with_default_noise():
    with opu_driver.open(SIM) as opu:
        E = _ternary(np.random.default_rng(0), 60)
        Y = opu.linear_transform(E, N_OUT)
        mask = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        exact = E @ _exact_matrix(opu)
        assert mask.mean() > 0.8
        # the fidelity the linear mode promises for the four-frame scheme with the default (realistic) noise
        assert np.corrcoef(Y[:, mask].ravel(), exact[:, mask].ravel())[0, 1] >= 0.99
        assert (Y[:, ~mask] == 0).all()
        # unit-variance entries: a sum of k such entries has variance k (5 sigma on the sample variance)
        k = (E != 0).sum(axis=1).mean()
        n = Y[:, mask].size / 4  # neighbouring pixels share a speckle grain (2 px): about n/4 independent
        assert abs(Y[:, mask].var() / k - 1) < 5 * np.sqrt(2 / n) + 0.05  # + the calibration's own error


def test_two_frame_scheme_and_bit_planes_are_correlated_with_the_exact_projection():
    with opu_driver.open(SIM) as opu:
        rng = np.random.default_rng(1)
        E = _ternary(rng, 40)
        two = opu.linear_transform(E, N_OUT, scheme="two_frame")
        mask = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        B = _exact_matrix(opu)
        # two frames keep |R e+|^2 - |R e-|^2: a bias that a reference as strong as the signal does not hide
        assert np.corrcoef(two[:, mask].ravel(), (E @ B)[:, mask].ravel())[0, 1] > 0.85
        real = rng.normal(size=(20, N_FEATURES))
        planes = opu.linear_transform(real, N_OUT, n_bits=6)
        assert np.corrcoef(planes[:, mask].ravel(), (real @ B)[:, mask].ravel())[0, 1] >= 0.99


def test_the_same_input_gives_the_same_projection_and_linearity_holds_without_noise():
    # A short exposure keeps the brightest frame (a + b + reference) below saturation, where linearity ends.
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12", exposure_us=100) as opu:
        rng = np.random.default_rng(2)
        a = (rng.random((20, N_FEATURES)) < 0.3).astype(np.int8)
        b = ((rng.random((20, N_FEATURES)) < 0.3) & (a == 0)).astype(np.int8)
        La, Lb, Lab = (opu.linear_transform(v, N_OUT) for v in (a, b, a + b))
        np.testing.assert_array_equal(opu.linear_transform(a, N_OUT), La)
        cal = opu.linear_mode.calibration(N_FEATURES, N_OUT)
        m = cal.mask
        # Without noise only the ADC rounding remains: 4 frames per projection, each off by U(-1/2, 1/2) DN,
        # 3 projections: sd sqrt(12 / 12) = 1 DN before the per-pixel scale 1 / (2 sqrt(ref * var)).
        scale = 1 / (2 * np.sqrt(cal.reference_dn[m] * cal.entry_variance))
        residual = (La + Lb - Lab)[:, m] / scale
        assert np.sqrt((residual**2).mean()) < 1.5


def test_auto_ranging_projects_sparse_and_dense_vectors_through_one_matrix():
    # One nonzero entry to all of them: the vectors go to different reference levels and exposures, and each row
    # must still be E @ B with the same B. Without noise only the ADC rounding and the few outputs zeroed for
    # saturation remain: every row correlates with the exact projection at 0.99 or more.
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12") as opu:
        opu.linear_mode.auto_range = True
        rng = np.random.default_rng(8)
        density = np.repeat([0.05, 0.15, 0.3, 0.6, 1.0], 6)[:, None]
        E = (rng.random((30, N_FEATURES)) < density) * rng.choice([-1, 1], size=(30, N_FEATURES))
        E[np.abs(E).sum(axis=1) == 0, 0] = 1
        Y = opu.linear_transform(E, N_OUT)
        linear = opu.linear_mode
        levels = {where.level for where, _ in linear.last_ranges}
        assert len(linear.last_ranges) >= 3 and min(levels) < linear.layout(N_FEATURES).reference_levels
        exact = E @ _exact_matrix(opu)
        kept = linear.calibration(N_FEATURES, N_OUT).mask
        for row in range(30):
            use = kept & (Y[row] != 0)
            assert np.corrcoef(Y[row, use], exact[row, use])[0, 1] >= 0.99, row
        # and the same scale: each row's least-squares gain against the exact projection is the same
        gains = (Y[:, kept] * exact[:, kept]).sum(axis=1) / (exact[:, kept] ** 2).sum(axis=1)
        assert gains.std() / gains.mean() < 0.02
        # the same again after the caller halves the exposure (ranges start from the camera's present exposure)
        opu.configure_camera(exposure_us=200)
        Y2 = opu.linear_transform(E, N_OUT)
        kept2 = kept & linear.calibration(N_FEATURES, N_OUT).mask
        gains2 = (Y2[:, kept2] * exact[:, kept2]).sum(axis=1) / (exact[:, kept2] ** 2).sum(axis=1)
        assert gains2.std() / gains2.mean() < 0.02


def test_auto_ranging_sees_a_light_change_before_it_measures_a_new_range():
    # A range's reference is measured against the whole one: a light that changed since then must be seen first
    # (else the change would pass into that range's scale unseen): the result is a device calibrated under it.
    dense = np.tile([1, -1], (4, N_FEATURES // 2)).astype(np.int8)
    sparse = np.zeros((6, N_FEATURES), dtype=np.int8)
    sparse[:, 0], sparse[:, 3] = 1, -1
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12") as opu:
        opu.linear_mode.auto_range = True
        opu.linear_transform(dense, N_OUT)  # the whole reference, and the range of dense vectors
        opu.emulator.set_faults("light:1")  # a fifth less light from now on
        y = opu.linear_transform(sparse, N_OUT)
        assert opu.linear_mode.reference_remeasured == 1
        assert {where.level for where, _ in opu.linear_mode.last_ranges} != {8}  # a weaker reference was used
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12") as fresh:
        fresh.linear_mode.auto_range = True
        fresh.emulator.set_faults("light:1")
        np.testing.assert_allclose(y, fresh.linear_transform(sparse, N_OUT), rtol=1e-4, atol=1e-4)


def test_a_refused_range_sends_its_vectors_to_the_whole_reference(monkeypatch):
    # Whatever range is refused (here every range but the settings' own), the call completes, through the whole
    # reference at the settings' exposure, which needs no range of its own.
    E = _ternary(np.random.default_rng(9), 12)
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12") as opu:
        expected = opu.linear_transform(E, N_OUT)  # one range
        linear = opu.linear_mode
        linear.auto_range = True
        monkeypatch.setattr(linear, "_measure_range", lambda *args: None)
        for scheme in ("four_frame", "two_frame"):
            opu.linear_transform(E, N_OUT, scheme=scheme)
            # (rows planned there at first and rows of refused ranges may take a device call each)
            assert {(where.level, where.factor) for where, _ in linear.last_ranges} == {(8, 1.0)}
        np.testing.assert_array_equal(opu.linear_transform(E, N_OUT), expected)


def test_effective_matrix_entries_are_zero_mean_unit_variance_gaussian():
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12") as opu:
        B = opu.linear_transform(np.eye(N_FEATURES, dtype=np.int8), N_OUT)
        m = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        entries = B[:, m].ravel().astype(np.float64)
    n_eff = entries.size / 4  # grain 2: about four pixels per independent speckle grain
    assert abs(entries.mean()) < 5 / np.sqrt(n_eff)
    assert abs(entries.var() - 1) < 5 * np.sqrt(2 / n_eff) + 0.05
    kurtosis = ((entries - entries.mean()) ** 4).mean() / entries.var() ** 2
    assert abs(kurtosis - 3) < 5 * np.sqrt(24 / n_eff)
    # Kolmogorov-Smirnov against N(0, 1) after standardising; 1.95 / sqrt(n) is the 0.1% critical value.
    from math import erf

    z = np.sort((entries - entries.mean()) / entries.std())
    cdf = 0.5 * (1 + np.vectorize(erf)(z / np.sqrt(2)))
    ecdf = np.arange(1, z.size + 1) / z.size
    assert np.max(np.maximum(ecdf - cdf, cdf - (ecdf - 1 / z.size))) < 1.95 / np.sqrt(n_eff)
    # independent columns: correlations between features are 0 within 5 / sqrt(n_eff per column)
    corr = np.corrcoef(B[:, m])
    off_diagonal = corr[~np.eye(corr.shape[0], dtype=bool)]
    assert np.abs(off_diagonal).max() < 5 / np.sqrt(m.sum() / 4)


def test_zero_vectors_give_zeros_without_using_the_device():
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        out = opu.linear_transform(np.zeros((5, N_FEATURES)), N_OUT)
        assert out.shape == (5, N_OUT) and out.dtype == np.float32 and not out.any()
        assert opu.link_counters.bytes_sent == sent


def test_stage_times_count_each_device_call_and_its_host_work():
    with opu_driver.open(SIM) as opu:
        E = _ternary(np.random.default_rng(4), 20)
        linear = opu.linear_mode
        opu.linear_transform(E, N_OUT)  # the references are measured here and not counted
        opu.linear_transform(E, N_OUT, n_bits=2)
        before = linear.stage_times
        calls = 0
        for kwargs in ({}, {"n_bits": 2}):  # ternary, then real-valued: bit planes encoded and decoded
            opu.linear_transform(E, N_OUT, **kwargs)
            calls += len(linear.last_ranges)  # one device call per range (reference level and exposure) used
        spent = linear.stage_times - before
        assert spent.device_calls == calls >= 2
        assert spent.encode_s > 0 and spent.device_s > 0 and spent.decode_s > 0
        opu.linear_transform(np.zeros((3, N_FEATURES)), N_OUT)  # nothing sent: no device call
        assert (linear.stage_times - before).device_calls == calls


@pytest.mark.parametrize(
    "E,kwargs",
    [
        (np.array([[np.nan, 1.0]]), {}),
        (np.array([[np.inf, 1.0]]), {}),
        (np.zeros((2, 3, 4)), {}),
        (np.array([["a", "b"]]), {}),
        (np.zeros((1, 4)), {"scheme": "three_frame"}),
        (np.zeros((1, 4)), {"n_bits": 0}),
        (np.zeros((1, 96 * 64)), {}),  # no room beside the reference region
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(E, kwargs):
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        with pytest.raises(InvalidInputError):
            opu.linear_transform(E, N_OUT, **kwargs)
        assert opu.link_counters.bytes_sent == sent


def test_outputs_from_saturated_frames_are_zeroed_and_reported(caplog):
    with opu_driver.open(SIM, pixel_format="MONO12", exposure_us=1500) as opu:
        E = np.ones((10, N_FEATURES), dtype=np.int8)  # every feature on: the brightest frames
        with caplog.at_level("WARNING", logger="opu_driver.opu.linear"):
            Y = opu.linear_transform(E, N_OUT)
        mask = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        exact = E @ _exact_matrix(opu)
        assert opu.linear_mode.saturated_outputs > 0 and "saturated" in caplog.text
        kept = mask & (Y != 0).all(axis=0)
        # what is returned is right; what could not be measured is 0, not wrong
        assert np.corrcoef(Y[:, kept].ravel(), exact[:, kept].ravel())[0, 1] >= 0.99


def test_saturation_warning_uses_the_formats_full_scale(caplog):
    with opu_driver.open(SIM, pixel_format="MONO12", exposure_us=3000) as opu:
        with caplog.at_level("WARNING", logger="opu_driver.opu"):
            opu.transform(np.ones((4, 200), dtype=np.uint8), 300)
    assert "saturated" in caplog.text


def _dense(rng, batch, n_features):
    return rng.choice(np.array([-1, 1], dtype=np.int8), size=(batch, n_features))


def test_two_frame_dims_the_signal_of_dense_vectors_through_the_same_matrix(monkeypatch):
    # 48 features leave row-aligned features (8 rows high) beside the reference: signal levels can dim them. A dense
    # +-1 error lights as much signal as there is reference; its two-frame error term |R e+|^2 - |R e-|^2 is then as
    # large as the interference term. Dimmed to m/8, that term falls by (m/8)^2 against the interference's m/8.
    n_features = 48
    E = _dense(np.random.default_rng(1), 40, n_features)
    with opu_driver.open(SIM + "&noise=0", pixel_format="MONO12") as opu:
        linear = opu.linear_mode
        assert linear.layout(n_features).rows_aligned
        four = opu.linear_transform(E, N_OUT)
        two = opu.linear_transform(E, N_OUT, scheme="two_frame")
        ((where, count),) = linear.last_ranges
        assert where.level == 8 and where.signal_level < 8 and where.factor == 1.0 and count == 40
        assert linear._signal_levels[(linear.calibration(n_features, N_OUT).key, where.signal_level)]
        monkeypatch.setattr(linear, "_signal_level_holds", lambda *args: False)  # no signal level usable
        linear._signal_levels.clear()  # (the one used above was found to hold)
        whole = opu.linear_transform(E, N_OUT, scheme="two_frame")
        assert [where for where, _ in linear.last_ranges] == [Range(8, 8, 1.0)]
        exact = E @ exact_linear_matrix(opu, n_features, N_OUT)
        mask = linear.calibration(n_features, N_OUT).mask
        F = opu.emulator.ground_truth.feature_matrix(runs=linear.layout(n_features).runs)[:, :N_OUT]
        reference = F[n_features:].sum(axis=0)

    def fidelity(Y):
        return np.corrcoef(Y[:, mask].ravel(), exact[:, mask].ravel())[0, 1]

    # Without noise the four-frame scheme is exact but for the ADC and saturated outputs; the dimmed two-frame
    # scheme is left with its smaller error term, the whole one with its whole error term.
    assert fidelity(four) >= 0.98 and fidelity(two) >= 0.98 > fidelity(whole) + 0.03
    # B has the same scale whatever the signal level. The two-frame error term of a +-1 vector is not independent
    # of its signal (b- = c - b+, with c the field of all features: |b+|^2 - |b-|^2 = 2 Re[conj(c) b+] - |c|^2), so
    # over a few hundred outputs it moves the least-squares gain against the exact projection by chance; the noiseless
    # two-frame outputs of the ground truth at the same signal amplitude s give that gain, and the measured one must
    # match it to 1% (the ADC rounding), over the outputs neither scheme zeroed.
    both = mask & (four != 0).all(axis=0) & (two != 0).all(axis=0) & (whole != 0).all(axis=0)

    def gain(Y):
        return (Y[:, both] * exact[:, both]).sum() / (exact[:, both] ** 2).sum()

    def ideal_gain(s):
        b_plus, b_minus = s * ((E > 0) @ F[:n_features]), s * ((E < 0) @ F[:n_features])
        y = (np.abs(reference + b_plus) ** 2 - np.abs(reference + b_minus) ** 2) / (2 * s * np.abs(reference))
        return (y[:, both] * exact[:, both]).sum() / (exact[:, both] ** 2).sum()

    assert gain(two) / gain(four) == pytest.approx(ideal_gain(where.signal_level / 8), rel=0.01)
    assert gain(whole) / gain(four) == pytest.approx(ideal_gain(1.0), rel=0.01)
