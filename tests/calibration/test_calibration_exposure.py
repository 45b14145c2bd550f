"""The exposure routine puts the brightest frame's top where the emulator's hidden optics say it should be."""

import math

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration.exposure import tune_exposure
from opu_driver.errors import AcquisitionError, InvalidInputError
from opu_driver.protocol import Register
from tests.devices.lab.support import write_rig
from tests.support import small_sim
from tests.support.v1 import v1_link

SIM = small_sim("seed=21")
N_OUT = 64 * 48
N_FEATURES = 256
FULL_SCALE = 4095  # MONO12: the ADC rounding (1 DN) is far below every tolerance here


def _expected(opu, result, quantile_of):
    """Exposure x gain that puts the top on the target, from the ground truth; quantile_of(I) gives the
    top of the noiseless all-ON intensities I (unit: mean intensity of all mirrors ON)."""
    gt = opu.emulator.ground_truth
    roi = result.roi
    intensity = gt.expected_intensity_features(np.ones((1, N_FEATURES)))[0]
    top = quantile_of(intensity)
    dark_e = float(gt.dark_pattern_e[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].mean())
    dark_e += gt.noise.dark_current_e_per_s * result.exposure_us * 1e-6
    power = opu.controller.laser_power_mw
    # top_dn = dn_per_e(gain) * (dark_e + top * signal_e_per_intensity(exposure)); both linear in their knob
    per_us = top * gt.signal_e_per_intensity(1.0, power)
    target_e = result.target_dn / gt.dn_per_electron(1.0, 12)
    return (target_e - dark_e) / per_us, target_e, dark_e, per_us


@pytest.mark.parametrize("fraction", [1e-3, 1e-2])
def test_exposure_matches_the_ground_truth(fraction):
    # grain 1: every pixel is one independent exponential value, so the sampling error of a quantile is known.
    with opu_driver.open(SIM + "&grain=1", pixel_format="MONO12") as opu:
        before = opu.camera.settings
        result = tune_exposure(opu, N_FEATURES, N_OUT, max_saturated_fraction=fraction)
        settings = opu.camera.settings
        assert (settings.exposure_us, settings.gain, settings.frame_time_us) == (
            result.exposure_us,
            result.gain,
            result.frame_time_us,
        )
        assert result.frame_time_us == before.frame_time_us and result.gain == 1.0  # enough light at gain 1
        assert result.saturated_fraction <= fraction and result.reached_target
        assert abs(result.top_dn - result.target_dn) <= 0.03 * result.target_dn
        q = 1 - fraction
        realised, *_ = _expected(opu, result, lambda i: float(np.quantile(i, q)))
        mean = None

        def law(i):
            nonlocal mean
            mean = float(i.mean())
            return -mean * math.log(1 - q)

        exponential, *_ = _expected(opu, result, law)
    # Against the realised speckle: the refinement stops within 3% of the target, the exposure is floored to
    # a whole us (< 0.5% here) and shot noise moves a top of ~3,000 e- by ~2% per frame, ~1% over 4 frames.
    assert result.exposure_us == pytest.approx(realised, rel=0.03 + 0.005 + 0.02)
    # Against the exponential law with the mean of the all-ON frame: the empirical q-quantile of N independent
    # exponentials has relative sd sqrt(q / ((1 - q) N)) / ln(1 / (1 - q)): 8.3% at q = 0.999, 3.9% at 0.99;
    # four of them plus the tolerance above.
    sd = math.sqrt(q / ((1 - q) * N_OUT)) / math.log(1 / (1 - q))
    assert result.exposure_us == pytest.approx(exponential, rel=4 * sd + 0.055)


def test_weak_light_raises_the_gain_at_the_longest_exposure():
    with opu_driver.open(SIM + "&signal_e=100", pixel_format="MONO12") as opu:
        result = tune_exposure(opu, N_FEATURES, N_OUT)
        assert result.exposure_us == opu.camera.settings.frame_time_us - 50 == 450
        assert result.gain > 1.0 and opu.camera.settings.gain == result.gain
        assert result.saturated_fraction <= 1e-3 and result.reached_target
        assert result.sweep_gain[0] == 1.0 and result.sweep_gain.max() == result.gain
        gt = opu.emulator.ground_truth
        intensity = gt.expected_intensity_features(np.ones((1, N_FEATURES)))[0]
        roi = result.roi
        dark_e = float(gt.dark_pattern_e[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].mean())
        dark_e += gt.noise.dark_current_e_per_s * 450e-6
        top_e = dark_e + float(np.quantile(intensity, 0.999)) * gt.signal_e_per_intensity(450, 50.0)
        gain = result.target_dn / (top_e * gt.dn_per_electron(1.0, 12))
    # top ~ 8,000 e- at gain 11: shot noise ~1% per frame; refinement 3%: as above.
    assert result.gain == pytest.approx(gain, rel=0.055)
    assert 5 < gain < 16  # the case really needs gain, and gain can reach it


def test_without_gain_the_top_stays_below_the_target():
    with opu_driver.open(SIM + "&signal_e=100", pixel_format="MONO12") as opu:
        result = tune_exposure(opu, N_FEATURES, N_OUT, allow_gain=False)
        assert (result.exposure_us, result.gain) == (450, 1.0)
        assert not result.reached_target and result.top_dn < 0.5 * result.target_dn


def test_a_longer_exposure_limit_raises_the_frame_time():
    with opu_driver.open(SIM + "&signal_e=200", pixel_format="MONO12") as opu:
        result = tune_exposure(opu, N_FEATURES, N_OUT, max_exposure_us=4000, allow_gain=False)
        assert result.gain == 1.0 and 450 < result.exposure_us < 4000
        assert result.frame_time_us == opu.camera.settings.frame_time_us == result.exposure_us + 50


def test_bad_arguments_are_refused_before_anything_is_sent():
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        other = opu_driver.encoding.layouts.make_layout("lined", 10, 32, 32)
        for args, kwargs in (
            ((0, N_OUT), {}),
            ((N_FEATURES, 0), {}),
            ((N_FEATURES, 10**9), {}),
            ((N_FEATURES, N_OUT), {"max_saturated_fraction": 0}),
            ((N_FEATURES, N_OUT), {"max_saturated_fraction": 0.5}),
            ((N_FEATURES, N_OUT), {"target_fraction": 1.5}),
            ((N_FEATURES, N_OUT), {"target_fraction": float("nan")}),
            ((N_FEATURES, N_OUT), {"max_exposure_us": 5}),
            ((N_FEATURES, N_OUT), {"max_exposure_us": 100.5}),
            ((N_FEATURES, N_OUT), {"n_frames": 0}),
            ((N_FEATURES, N_OUT), {"layout": "lined"}),
            ((10, N_OUT), {"layout": other}),
            ((11, N_OUT), {"layout": opu_driver.encoding.layouts.make_layout("lined", 10, 96, 64)}),
        ):
            with pytest.raises(InvalidInputError):
                tune_exposure(opu, *args, **kwargs)
        assert opu.link_counters.bytes_sent == sent


@pytest.mark.parametrize("how", ["laser_off", "no_signal"])
def test_no_light_raises_and_restores_the_camera(how):
    url = SIM + ("&signal_e=0" if how == "no_signal" else "")
    with opu_driver.open(url, pixel_format="MONO12", exposure_us=300, frame_time_us=700, gain=2.0) as opu:
        if how == "laser_off":
            opu.controller.laser_off()
        before = opu.camera.settings
        with pytest.raises(AcquisitionError, match="no light"):
            tune_exposure(opu, N_FEATURES, N_OUT, max_exposure_us=2000)
        after = opu.camera.settings
        assert (after.exposure_us, after.gain, after.frame_time_us) == (300, 2.0, 700)
        assert (before.exposure_us, before.gain, before.frame_time_us) == (300, 2.0, 700)
        read = v1_link(opu).read_register  # the device itself, not the driver's cache
        assert (read(Register.EXPOSURE_US), read(Register.GAIN_MILLI), read(Register.FRAME_TIME_US)) == (300, 2000, 700)


def test_weak_light_on_a_lab_camera_raises_its_gain_in_its_own_unit(tmp_path):
    """The same optics behind a camera whose gain is a factor and one whose gain is in dB (a GenICam ``Gain``):
    both reach the target at the longest exposure with the same linear gain, written in each camera's unit.
    Each lands within the refinement's 3% of the target with ~1% shot noise per frame (as above): the two
    factors agree within 8%."""
    sim = "dmd=96x64&camera=64x48&cell=4&seed=5&signal_e=100"
    factors = {}
    for unit in ("factor", "dB"):
        camera = f'backend = "emulated"\ngain_unit = "{unit}"'
        rig = write_rig(tmp_path, sim=sim, camera=camera, name=f"{unit}.toml")
        with opu_driver.open(f"rig://{rig}", pixel_format="MONO12") as opu:
            assert opu.camera.geometry.gain_unit == unit
            result = tune_exposure(opu, 256, 64 * 48)
            assert opu.camera.settings.gain == result.gain and result.reached_target
            assert abs(result.top_dn - result.target_dn) <= 0.03 * result.target_dn
            assert result.exposure_us == result.frame_time_us - 50  # the longest exposure, then gain
        factors[unit] = 10 ** (result.gain / 20) if unit == "dB" else result.gain
        assert result.sweep_gain[0] == 1.0 and result.sweep_gain.max() == pytest.approx(factors[unit], rel=1e-3)
    assert 2 < factors["factor"] < 16
    assert factors["dB"] == pytest.approx(factors["factor"], rel=0.08)
