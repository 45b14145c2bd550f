"""The drift monitor: flags the emulator's drift, follows the predicted decorrelation, stays quiet without drift."""

import math

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration._checks import correlation
from opu_driver.calibration.drift import DriftMonitor, check_drift, measure_drift
from opu_driver.errors import InvalidInputError
from tests.support import SMALL_SIM

SIM = SMALL_SIM
N_FEATURES, N_OUT, N_PROBES = 64, 300, 16
# MONO12 and 250 us: the brightest frames stay below saturation, so the noise is the camera's only.
OPTIONS = {"pixel_format": "MONO12", "exposure_us": 250}


def _blank(opu, n_frames):
    opu.transform(np.zeros((n_frames, 1), dtype=np.uint8), 1)


def _sampling_sd(rho, n_outputs):
    # sd of a sample correlation, at most (1 - rho^2) / sqrt(n_eff); neighbouring pixels share a speckle grain
    # (2 px): about 4 outputs per independent sample.
    return (1 - rho**2) / math.sqrt(N_PROBES * n_outputs / 4)


@pytest.mark.slow
def test_drift_is_flagged_and_the_correlation_follows_the_drift_model():
    seed = 5
    drift_s = 2.0
    with opu_driver.open(f"{SIM}&seed={seed}&drift_s={drift_s}", **OPTIONS) as opu:
        # cos(theta) = exp(-t / drift_s): theta moves fastest near t = 0 (theta ~ sqrt(2 t / drift_s)). 2,800 frames
        # (1.4 s) first put the baseline where theta moves slowly, so the medium barely changes between the
        # baseline's two repeats (16 ms apart: 0.005 rad) and the noise floor is the camera's.
        _blank(opu, 2800)
        monitor = DriftMonitor(opu, N_FEATURES, N_OUT, n_probes=N_PROBES, seed=seed)
        monitor.baseline()
        for _ in range(10):
            _blank(opu, 500)  # 0.25 s of device time
            monitor.check()
        result = monitor.result()
        gt = opu.emulator.ground_truth
        mask = opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        t_b = result.baseline_device_time_us

        def fields(time_us):
            return gt.feature_matrix(time_us=time_us)[:, :N_OUT][:, mask]

        F_b, F_0, F_1 = fields(t_b), fields(0.0), fields(math.inf)  # R(t_b), R0 and R1 (cos theta = 0 at t = inf)
        probes = result.probes.astype(np.float32)
        # Frame times (500 us apart), from the end of the baseline call backwards: the probes' two repeats
        # (4 N_PROBES frames each; t_b is their middle, each repeat's middle 2 N_PROBES frames from it), and before
        # them the reference refresh: 2 x 32 dark/reference frames + 2 x 32 single-feature probes, its
        # reference-only frames (32..63) centred 80 frames before the refresh ends.
        frame_us = 500
        repeat_us = 2 * N_PROBES * frame_us
        reference_us = t_b - 4 * N_PROBES * frame_us - 80 * frame_us
        u_c = np.abs(fields(reference_us)[N_FEATURES:].sum(axis=0))  # the reference features, all on

        def noise_free(F):
            # what the four-frame scheme returns with R = F and the reference measured at the refresh:
            # 2 Re[conj(R r) R e] / (2 |R_c r|) (up to one common scale)
            return np.real(np.conj(F[N_FEATURES:].sum(axis=0)) * (probes @ F[:N_FEATURES])) / u_c

        baseline_signal = (noise_free(fields(t_b - repeat_us / 2)) + noise_free(fields(t_b + repeat_us / 2))) / 2
        exact = [correlation(noise_free(fields(t_b + t * 1e6)), baseline_signal) for t in result.times_s]
        cos_b, sin_b = gt.drift_mix(t_b)
        theta_b = math.atan2(sin_b, cos_b)
        u_b = F_b[N_FEATURES:].sum(axis=0)
        # the part of the reference field the baseline lacks
        u_new = F_1[N_FEATURES:].sum(axis=0) * cos_b - F_0[N_FEATURES:].sum(axis=0) * sin_b
        K = float(np.mean(np.abs(u_new) ** 2 / np.abs(u_b) ** 2))

    assert result.needs_recalibration and monitor.needs_recalibration
    assert result.correlations[-1] < result.threshold - 0.1  # well below, within 5,000 frames
    assert result.summary()["needs_recalibration"] is True
    rho_c = result.expected_correlation
    sd = _sampling_sd(rho_c, mask.sum())
    for t, measured, exact_corr in zip(result.times_s, result.correlations, exact, strict=True):
        # The camera noise lowers a correlation by a factor between 1 (noise negligible) and rho_c (the noise-to-
        # signal ratio of the baseline: the reference's shot noise grows with |R_t r|^2 like the signal, the read
        # noise does not), so the measurement lies between exact * rho_c and exact, give or take 5 sampling sd.
        assert exact_corr * rho_c - 5 * sd <= measured <= exact_corr + 5 * sd, (t, measured, exact_corr)
        # The drift model itself: R_t = R_b cos(d) + R' sin(d), d = theta_t - theta_b, R' independent. With the
        # stale reference u_b the pooled correlation is cos^2 d / sqrt(cos^2 d + K sin^2 d), K = mean |u'|^2/|u_b|^2
        # (not plain cos d). Over 16 probes x ~70 independent grains it holds to the sampling sd of a correlation
        # at the exact value, (1 - rho^2) / sqrt(n_eff); 5 sd.
        cos_t, sin_t = gt.drift_mix(t_b + t * 1e6)
        d = math.atan2(sin_t, cos_t) - theta_b
        model = math.cos(d) ** 2 / math.sqrt(math.cos(d) ** 2 + K * math.sin(d) ** 2)
        assert abs(model - exact_corr) < 5 * _sampling_sd(exact_corr, mask.sum()) + 1e-3, (t, model, exact_corr)
        # the stale reference makes it worse than the medium alone
        assert measured < math.cos(d) * rho_c + 5 * sd


def test_without_drift_no_check_is_flagged_and_checks_match_the_expected_correlation():
    with opu_driver.open(f"{SIM}&seed=7", **OPTIONS) as opu:
        result = measure_drift(opu, N_FEATURES, N_OUT, n_checks=40, frames_between=100, n_probes=N_PROBES, seed=2)
    assert not result.needs_recalibration
    assert (result.correlations >= result.threshold).all()
    # the checks scatter around rho_c = r0 sqrt(2 / (1 + r0)) (5 sampling sd; the mean of 40 is far tighter)
    sd = _sampling_sd(result.expected_correlation, N_OUT)
    assert abs(result.correlations.mean() - result.expected_correlation) < 5 * sd
    assert result.threshold < result.expected_correlation < 1
    assert result.baseline_repeatability**2 == pytest.approx(
        result.expected_correlation**2 * (1 + result.baseline_repeatability) / 2
    )
    # times: device seconds since the baseline, 100 blank frames + 64 probe frames at 500 us apart
    np.testing.assert_allclose(np.diff(result.times_s), (100 + 4 * N_PROBES) * 500e-6, rtol=0.05)
    summary, arrays = result.summary(), result.arrays()
    assert summary["n_probes"] == N_PROBES and summary["scheme"] == "four_frame" and summary["n_checks"] == 40
    assert summary["last_correlation"] == pytest.approx(result.correlations[-1], abs=1e-6)
    assert arrays["probes"].dtype == np.int8 and arrays["probes"].shape == (N_PROBES, N_FEATURES)
    assert arrays["baseline"].dtype == np.float32 and arrays["baseline"].shape == (N_PROBES, N_OUT)
    assert arrays["times_s"].shape == arrays["correlations"].shape == (40,)


def test_noise_free_device_gives_exact_repeats_and_a_capped_threshold():
    with opu_driver.open(f"{SIM}&seed=7&noise=0", pixel_format="MONO12", exposure_us=60) as opu:
        result = measure_drift(opu, N_FEATURES, N_OUT, n_checks=3, frames_between=10, n_probes=8, seed=1)
    assert result.baseline_repeatability == 1.0 and (result.correlations == 1.0).all()
    assert result.threshold == pytest.approx(0.999)


def test_step_checks_at_the_chosen_interval_and_a_stored_record_resumes():
    with opu_driver.open(f"{SIM}&seed=8&drift_s=1", **OPTIONS) as opu:
        monitor = DriftMonitor(opu, N_FEATURES, N_OUT, n_probes=8, interval_steps=5, seed=0)
        assert monitor.step() is None and monitor.threshold is not None  # the first call takes the baseline
        samples = [monitor.step() for _ in range(12)]
        assert [i for i, s in enumerate(samples) if s is not None] == [4, 9]
        assert len(monitor.history) == 2
        stored = monitor.result()
        # the open-time check: stored probes, baseline and threshold; drift goes on meanwhile
        _blank(opu, 3000)
        sample = check_drift(
            opu, stored.probes, stored.baseline, stored.threshold, baseline_time_us=stored.baseline_device_time_us
        )
        assert sample.drifted and sample.time_s > 1.5
        assert math.isnan(check_drift(opu, stored.probes, stored.baseline, stored.threshold).time_s)
        resumed = DriftMonitor.from_arrays(opu, stored.probes, stored.baseline, stored.threshold, "four_frame")
        assert not resumed.needs_recalibration
        assert resumed.check().drifted and resumed.needs_recalibration
        # a new baseline clears the verdict
        resumed.baseline()
        assert not resumed.needs_recalibration and resumed.history == ()


@pytest.mark.parametrize(
    "make",
    [
        lambda opu: DriftMonitor(opu, 0, N_OUT),
        lambda opu: DriftMonitor(opu, N_FEATURES, 64 * 48 + 1),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT, n_probes=2),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT, scheme="three_frame"),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT, threshold=1.5),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT, threshold=float("nan")),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT, interval_steps=0),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT, seed=-1),
        lambda opu: DriftMonitor(opu, 96 * 64, N_OUT).baseline(),  # no room beside the reference region
        lambda opu: measure_drift(opu, N_FEATURES, N_OUT, n_checks=0),
        lambda opu: measure_drift(opu, N_FEATURES, N_OUT, frames_between=-1),
        lambda opu: DriftMonitor(opu, N_FEATURES, N_OUT).result(),  # no baseline yet
        lambda opu: check_drift(opu, np.full((4, 8), 2), np.ones((4, N_OUT)), 0.9),
        lambda opu: check_drift(opu, np.ones((4, 8)), np.ones((3, N_OUT)), 0.9),
        lambda opu: check_drift(opu, np.ones((4, 8)), np.full((4, N_OUT), np.nan), 0.9),
        lambda opu: check_drift(opu, np.ones((4, 8)), np.ones((4, N_OUT)), 0.9, scheme="one_frame"),
        lambda opu: DriftMonitor.from_arrays(opu, np.zeros((4, 8)), np.ones((4, N_OUT)), 0.9, "four_frame"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_sent(make):
    with opu_driver.open(f"{SIM}&seed=1") as opu:
        sent = opu.link_counters.bytes_sent
        with pytest.raises(InvalidInputError):
            make(opu)
        assert opu.link_counters.bytes_sent == sent


def test_a_device_reset_after_the_baseline_gives_unknown_times_not_wrong_ones(caplog):
    # A reset sets the device clock back to 0. The driver notices it at the next request (the camera lost its
    # settings) and restores the device; the monitor must not report the restarted clock as time since baseline.
    with opu_driver.open(f"{SIM}&seed=2", calibration=None, **OPTIONS) as opu:
        monitor = DriftMonitor(opu, N_FEATURES, N_OUT, n_probes=N_PROBES, seed=2)
        monitor.baseline()
        _blank(opu, 100)
        before = monitor.check()
        assert before.time_s > 0 and not before.drifted
        opu.emulator.reset()
        with caplog.at_level("WARNING", logger="opu_driver.calibration.drift"):
            after = monitor.check()
            later = monitor.check()
        assert opu.counters.resets_detected >= 1
        assert math.isnan(after.time_s) and math.isnan(later.time_s)
        assert not after.drifted  # the medium did not change: the correlation is unaffected
        assert sum("device clock was reset" in r.getMessage() for r in caplog.records) == 1  # warned once
        assert np.isnan(monitor.result().times_s[1:]).all() and monitor.result().times_s[0] > 0


def test_a_controller_restart_alone_keeps_the_times(caplog):
    # Only the controller restarts (laser off): the light is restored, the device clock runs on, times stay known.
    with opu_driver.open(f"{SIM}&seed=2", calibration=None, **OPTIONS) as opu:
        monitor = DriftMonitor(opu, N_FEATURES, N_OUT, n_probes=N_PROBES, seed=2)
        monitor.baseline()
        first = monitor.check()
        opu.emulator.controller.power_on()
        with caplog.at_level("WARNING", logger="opu_driver.calibration.drift"):
            second = monitor.check()
        assert opu.counters.light_restored == 1 and opu.counters.resets_detected == 0
        assert second.time_s > first.time_s > 0 and not second.drifted
        assert not any("device clock was reset" in r.getMessage() for r in caplog.records)
