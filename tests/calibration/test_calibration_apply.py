"""The reference routine, and applying the newest matching calibration record when an Opu opens."""

import json
import warnings
from datetime import timedelta

import numpy as np
import pytest

import opu_driver
from opu_driver.calibration import (
    CalibrationPlan,
    CalibrationStore,
    CalibrationWarning,
    calibrate,
    measure_reference,
)
from opu_driver.calibration.store import CalibrationError, CorruptCalibrationError
from opu_driver.errors import InvalidInputError
from tests.support import small_sim

SIM = small_sim("seed=4")
N_FEATURES, N_OUT = 48, 400
PLAN = CalibrationPlan(n_features=N_FEATURES, n_components=N_OUT, dark_frames=8)


def _ternary(batch, seed=0):
    return np.random.default_rng(seed).choice([-1, 0, 1], size=(batch, N_FEATURES), p=[0.25, 0.5, 0.25])


def test_reference_recovers_the_hidden_reference_intensity():
    with opu_driver.open(SIM, pixel_format="MONO12", calibration=None) as opu:
        n_frames = 32
        result = measure_reference(opu, N_FEATURES, N_OUT, n_frames=n_frames)
        gt = opu.emulator.ground_truth
        bits = np.zeros((1, opu.linear_mode.layout(N_FEATURES).n_table_features), dtype=np.uint8)
        bits[0, N_FEATURES:] = 1  # the whole reference
        intensity = gt.expected_intensity_features(bits)[0, :N_OUT]  # the split layout is the one loaded
        settings = opu.camera.settings
        electrons = intensity * gt.signal_e_per_intensity(settings.exposure_us, opu.controller.laser_power_mw)
        dn_per_e = gt.dn_per_electron(settings.gain, 12)
        expected_dn = electrons * dn_per_e
        noise = gt.noise
        roi = result.roi
        dark_e = gt.dark_pattern_e[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].ravel()[:N_OUT]
        dark_e = dark_e + noise.dark_current_e_per_s * settings.exposure_us * 1e-6
        hot = gt.hot_pixels[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].ravel()[:N_OUT]
    c = result.calibration
    # reference_dn = mean(reference frames) - mean(dark frames). Per pixel and frame the variances (electrons^2)
    # are signal + dark + read^2 (shot noise on the whole mean, read noise) and dark + read^2, plus the ADC
    # rounding 1/12 DN^2 each; both means are over n_frames. The laser's frame-to-frame power jitter (relative sd
    # laser_jitter) is common to a frame's pixels and averages down the same way. Hot pixels (their excess has
    # its own shot noise) and pixels near full scale (clipped) are left out.
    var_e = electrons + 2 * (dark_e + noise.read_noise_e**2)
    sd_dn = np.sqrt(var_e * dn_per_e**2 + 2 / 12 + (expected_dn * noise.laser_jitter) ** 2) / np.sqrt(n_frames)
    unclipped = (expected_dn + dark_e * dn_per_e + 6 * sd_dn * np.sqrt(n_frames) < 4095) & ~hot
    assert unclipped.mean() > 0.95
    assert (np.abs(c.reference_dn - expected_dn) < 5 * sd_dn)[unclipped].all()
    # weak-reference pixels are masked: below 10% of the median reference (pixels that saturate with a probe
    # feature on top of the reference are masked too: only those well below full scale are checked)
    floor = 0.1 * np.median(expected_dn)
    clear = (np.abs(expected_dn - floor) > 6 * sd_dn) & (expected_dn < 0.8 * 4095) & ~hot
    np.testing.assert_array_equal(c.mask[clear], (expected_dn >= floor)[clear])
    summary = result.summary()
    assert summary["n_features"] == N_FEATURES and summary["roi_width"] * summary["roi_height"] >= N_OUT
    assert set(result.arrays()) == {"reference_dn", "dark_dn", "mask"}


def test_reference_bad_arguments_are_refused_before_anything_is_sent():
    with opu_driver.open(SIM, calibration=None) as opu:
        sent = opu.link_counters.bytes_sent
        for args in ((0, N_OUT), (N_FEATURES, 0), (N_FEATURES, 10**6), (N_FEATURES, N_OUT, 1), (10**6, N_OUT)):
            with pytest.raises(InvalidInputError):
                measure_reference(opu, *args)
        assert opu.link_counters.bytes_sent == sent


def test_a_stored_calibration_is_applied_at_open(tmp_path):
    url = SIM + "&noise=0&lag=3"
    store = CalibrationStore(tmp_path)
    E = _ternary(16)
    with opu_driver.open(url, calibration=None, exposure_us=150, pixel_format="MONO12") as opu:
        record = calibrate(opu, ["latency", "reference"], store, PLAN)
        sent = opu.counters.frames_sent
        first = opu.linear_transform(E, N_OUT)
        first_frames = opu.counters.frames_sent - sent
    assert record.path is not None and set(record.results) == {"latency", "reference"}
    # A new session of the same device, with default settings: the record's settings, lag and reference are used.
    with opu_driver.open(url, calibration=str(tmp_path)) as opu:
        applied = opu.calibration
        assert applied is not None and {"camera", "latency", "reference"} <= set(applied.applied)
        settings = opu.camera.settings
        assert (settings.exposure_us, settings.pixel_format.name) == (150, "MONO12")
        assert opu.lag_frames == 3
        sent = opu.counters.frames_sent
        again = opu.linear_transform(E, N_OUT)
        # the frames of the session that had just measured the whole reference: the stored one was used (each
        # auto-ranging range's reference is measured at its first use in both)
        assert opu.counters.frames_sent - sent == first_frames
        assert opu.linear_mode.reference_remeasured == 0
    # noise=0: the same effective matrix to the last bit
    np.testing.assert_array_equal(again, first)


def test_open_matches_the_settings_given_and_can_be_told_not_to_apply(tmp_path):
    store = CalibrationStore(tmp_path)
    with opu_driver.open(SIM, calibration=None, exposure_us=150) as opu:
        calibrate(opu, ["latency"], store, PLAN)
    with opu_driver.open(SIM, calibration=str(tmp_path), exposure_us=200) as opu:
        assert opu.calibration is None and opu.camera.settings.exposure_us == 200  # no record at 200 us
    with opu_driver.open(SIM, calibration=None) as opu:
        assert opu.calibration is None and opu.camera.settings.exposure_us == 400
    with opu_driver.open(SIM, calibration=str(tmp_path), exposure_us=150) as opu:
        assert opu.calibration is not None
    with opu_driver.open(SIM.replace("seed=4", "seed=5"), calibration=str(tmp_path)) as opu:
        assert opu.calibration is None  # another serial number


def test_the_default_store_is_used_and_old_or_foreign_firmware_records_warn(tmp_path, monkeypatch):
    monkeypatch.setenv("OPU_CALIBRATION_DIR", str(tmp_path))
    with opu_driver.open(SIM, calibration=None) as opu:
        record = calibrate(opu, ["latency"], CalibrationStore(tmp_path), PLAN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fresh record applies silently
        with opu_driver.open(SIM) as opu:
            assert opu.calibration is not None and opu.calibration.record.path == record.path
    fresh = record.path
    record.created -= timedelta(days=10)
    CalibrationStore(tmp_path).save(record)
    fresh.unlink()  # only the old record is left
    with pytest.warns(CalibrationWarning, match="days old"):
        with opu_driver.open(SIM, calibration_max_age_s=7 * 86400):
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with opu_driver.open(SIM, calibration_max_age_s=30 * 86400):
            pass
    with pytest.warns(CalibrationWarning, match="firmware 1.0.0"):
        with opu_driver.open(SIM + "&firmware=1.1.0", calibration_max_age_s=30 * 86400):
            pass


def test_corrupt_records_are_refused_when_named_and_skipped_in_a_store(tmp_path, caplog):
    with opu_driver.open(SIM, calibration=None) as opu:
        record = calibrate(opu, ["latency"], CalibrationStore(tmp_path), PLAN)
    metadata = json.loads(record.path.read_text())
    metadata["routines"]["latency"]["result"]["lag_frames"] = "x" * 5
    record.path.write_text(json.dumps(metadata)[:-20])  # truncated JSON
    with pytest.raises(CorruptCalibrationError):
        opu_driver.open(SIM, calibration=str(record.path))
    with opu_driver.open(SIM, calibration=str(tmp_path)) as opu:  # skipped with a warning in the log
        assert opu.calibration is None
    assert "skipping calibration record" in caplog.text
    with pytest.raises(CalibrationError, match="no calibration store"):
        opu_driver.open(SIM, calibration=str(tmp_path / "missing"))
    with pytest.raises(opu_driver.errors.ConfigurationError):
        opu_driver.open(SIM, calibration=3)


def test_a_named_record_of_another_device_is_refused(tmp_path):
    with opu_driver.open(SIM, calibration=None) as opu:
        record = calibrate(opu, ["latency"], CalibrationStore(tmp_path), PLAN)
    with pytest.raises(CalibrationError, match="not of"):
        opu_driver.open(SIM.replace("seed=4", "seed=6"), calibration=str(record.path))
