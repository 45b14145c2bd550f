"""The dark routine recovers the emulator's hidden dark parameters."""

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration.dark import measure_dark
from opu_driver.errors import InvalidInputError
from tests.support import small_sim

# 12-bit output so that the dark level (about 9 DN) is not lost to the ADC rounding; 1% hot pixels so a
# 3,000-pixel region holds about 30 of them.
SIM = small_sim("seed=12&hot=0.01")
N_OUT = 64 * 48
N_FRAMES = 64


@pytest.mark.parametrize("method", ["shutter", "laser_off"])
def test_dark_recovers_level_pattern_noise_and_hot_pixels(method):
    with opu_driver.open(SIM, pixel_format="MONO12") as opu:
        result = measure_dark(opu, N_OUT, n_frames=N_FRAMES, method=method)
        assert opu.controller.shutter_is_open and opu.controller.laser_is_on  # light restored
        gt = opu.emulator.ground_truth
        settings = opu.camera.settings
        roi = result.roi
        noise = gt.noise
        dn_per_e = gt.dn_per_electron(settings.gain, 12)
        exposure_s = settings.exposure_us * 1e-6
        dark_e = gt.dark_pattern_e[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].ravel()
        mean_e = dark_e + noise.dark_current_e_per_s * exposure_s
        hot = gt.hot_pixels[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].ravel()
        mean_e = mean_e + hot * noise.hot_pixel_e * settings.exposure_us / 400.0
        expected_dn = mean_e * dn_per_e
    # Temporal sd per pixel: sqrt(shot + read^2) electrons, plus the ADC's 1/12 DN^2.
    temporal_dn = np.sqrt((mean_e + noise.read_noise_e**2) * dn_per_e**2 + 1 / 12)
    # each pixel's mean within 5 sigma of its N_FRAMES-frame average
    assert (np.abs(result.mean_dn - expected_dn) < 5 * temporal_dn / np.sqrt(N_FRAMES) + 1e-3).all()
    np.testing.assert_array_equal(result.hot_pixels, hot)
    # read noise: median of per-pixel sample sds, each with relative error 1/sqrt(2 (n - 1)); over ~3,000
    # pixels the median is far tighter than 5%
    assert result.read_noise_dn == pytest.approx(np.median(temporal_dn[~hot]), rel=0.05)
    pattern_dn = np.std(dark_e[~hot] * dn_per_e)
    assert result.fixed_pattern_dn == pytest.approx(pattern_dn, rel=0.1)


def test_bad_arguments_are_refused_before_anything_happens():
    with opu_driver.open(SIM) as opu:
        sent = opu.link_counters.bytes_sent
        for kwargs in ({"method": "lid"}, {"n_frames": 1}, {"hot_sigma": 0}):
            with pytest.raises(InvalidInputError):
                measure_dark(opu, N_OUT, **kwargs)
        assert opu.link_counters.bytes_sent == sent and opu.controller.shutter_is_open


def test_opu_calibrate_dark_prints_json_and_saves_a_record(tmp_path, capsys):
    import json

    from opu_driver.calibration import CalibrationStore
    from opu_tools.cli import main

    url = "sim://?dmd=96x64&camera=32x24&seed=13"
    assert (
        main(
            [
                "calibrate",
                "dark",
                "--url",
                url,
                "--out",
                str(tmp_path),
                "--frames",
                "8",
                "--pixel-format",
                "MONO12",
                "--json",
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    dark = printed["results"]["dark"]
    assert dark["n_frames"] == 8 and dark["roi_width"] * dark["roi_height"] == 32 * 24
    assert printed["settings"]["pixel_format"] == "MONO12"
    record = CalibrationStore(tmp_path).latest("SIM-00000013")
    assert record is not None and record.results["dark"]["level_dn"] == dark["level_dn"]
    assert record.arrays["dark/mean_dn"].shape == (32 * 24,)
