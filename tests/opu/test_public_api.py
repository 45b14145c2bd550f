"""The Opu's public API beyond transform: status and settings, counters, the sequence view, several batches at once.

Calibration, the service and the tools use nothing else, so each of these is checked here on its own.
"""

from __future__ import annotations

import numpy as np
import pytest

import opu_driver
from opu_driver.errors import CommunicationTimeoutError, ConfigurationError, InvalidInputError
from opu_driver.protocol import Register
from tests.support import small_sim
from tests.support.v1 import v1_link


def test_status_is_read_from_the_device_now(quiet_opu):
    status = quiet_opu.status()
    assert status.laser_on and status.shutter_open and status.interlock_ok
    assert status.laser_power_mw == pytest.approx(quiet_opu.emulator.controller.power_mw, abs=1e-3)
    assert status.camera == quiet_opu.camera_settings == quiet_opu.camera.read_settings()
    quiet_opu.controller.close_shutter()
    assert not quiet_opu.status().shutter_open  # not a cached value


def test_configure_camera_is_checked_before_anything_is_written(quiet_opu):
    before = quiet_opu.camera.read_settings()
    sent = quiet_opu.link_counters
    for bad in ({"exposure_us": 5}, {"gain": 0.5}, {"exposure_us": 1000, "frame_time_us": 900}):
        with pytest.raises(ConfigurationError):
            quiet_opu.configure_camera(**bad)
    with pytest.raises(ConfigurationError, match="pixel_format"):
        quiet_opu.configure_camera(pixel_format="MONO7")
    assert quiet_opu.camera.read_settings() == before and quiet_opu.link_counters == sent
    settings = quiet_opu.configure_camera(exposure_us=300, pixel_format="mono12")
    assert settings == quiet_opu.camera.read_settings() and settings.exposure_us == 300


def test_configure_camera_retries_a_write_that_timed_out():
    with opu_driver.open(small_sim("noise=0&seed=5"), retries=2) as opu:
        link = v1_link(opu)
        write = link.write_register
        failures = {"left": 1}

        def flaky_write(register, value):
            if int(register) == int(Register.EXPOSURE_US) and failures["left"]:
                failures["left"] -= 1
                raise CommunicationTimeoutError("injected: the exposure write timed out")
            return write(register, value)

        link.write_register = flaky_write
        retries = opu.counters.retries
        settings = opu.configure_camera(exposure_us=250)
        assert failures["left"] == 0 and opu.counters.retries == retries + 1
        assert opu.camera.read_settings() == settings and settings.exposure_us == 250
    with opu_driver.open(small_sim("noise=0&seed=5"), retries=0) as opu:
        link = v1_link(opu)
        write = link.write_register
        link.write_register = lambda register, value: (_ for _ in ()).throw(CommunicationTimeoutError("injected"))
        with pytest.raises(CommunicationTimeoutError):
            opu.configure_camera(exposure_us=250)
        link.write_register = write


def test_counters_and_link_counters_are_snapshots(quiet_opu):
    X = np.random.default_rng(1).integers(0, 2, size=(10, 20), dtype=np.uint8)
    counters, link = quiet_opu.counters, quiet_opu.link_counters
    quiet_opu.transform(X, 30)
    assert counters.frames_sent == 0 and quiet_opu.counters.frames_sent == 10  # the old snapshot did not move
    assert quiet_opu.link_counters.bytes_sent > link.bytes_sent and quiet_opu.link_counters.bytes_received > 0
    with pytest.raises(AttributeError):
        quiet_opu.counters.frames_sent = 0  # type: ignore[misc]


def test_frames_displayed_counts_every_frame_shown_since_open():
    X = np.random.default_rng(2).integers(0, 2, size=(40, 20), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=5&lag=2"), chunk_frames=16) as opu:
        before = opu.frames_displayed
        opu.transform(X, 30)
        counters = opu.counters
        assert opu.frames_displayed - before == counters.frames_sent + counters.flush_frames_sent
    with opu_driver.open(small_sim("noise=0&seed=5&faults=reset@2"), chunk_frames=8, retries=4) as opu:
        before = opu.frames_displayed
        opu.transform(X, 30)  # the device resets in the middle: its counter starts again from 0
        counters = opu.counters
        assert counters.resets_detected >= 1
        # Frames shown between the last read and the reset are lost with the device's count; never a jump by 2**32.
        assert 0 < opu.frames_displayed - before <= counters.frames_sent + counters.flush_frames_sent


def test_lag_frames_can_be_set_and_is_checked():
    X = np.random.default_rng(3).integers(0, 2, size=(12, 20), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=5&lag=2"), max_lag_frames=8) as opu:
        reference = opu.transform(X, 30)
        assert opu.lag_frames == 2
        for bad in (-1, 9, 2.0, True):
            with pytest.raises(InvalidInputError):
                opu.lag_frames = bad
        assert opu.lag_frames == 2
        opu.lag_frames = 5  # wrong on purpose: the ids correct it, the result is unchanged
        np.testing.assert_array_equal(opu.transform(X, 30), reference)
        assert opu.lag_frames == 2


def test_set_layout_and_what_a_frame_can_carry(quiet_opu):
    assert quiet_opu.layout_for(30).kind == "lined"
    quiet_opu.set_layout("macro", 8)
    layout = quiet_opu.layout_for(30)
    assert layout.kind == "macro" and quiet_opu.settings.macro_px == 8
    with pytest.raises(ConfigurationError):
        quiet_opu.set_layout("spiral")
    assert quiet_opu.settings.layout == "macro"  # a refused change changes nothing
    info = quiet_opu.info
    assert quiet_opu.max_features <= info.dmd_width * info.dmd_height
    assert quiet_opu.full_scale_dn == 255  # MONO8
    with opu_driver.open(small_sim("noise=0&seed=5"), frame_mode="raw") as raw:
        assert raw.max_features == info.dmd_width * info.dmd_height


def test_display_sequence_returns_every_frame_in_arrival_order_unmatched():
    pattern = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0], dtype=bool)
    X = np.repeat(pattern[:, None], 16, axis=1)
    with opu_driver.open(small_sim("noise=0&seed=5&lag=2")) as opu:
        sequence = opu.display_sequence(X, 64)
    assert sequence.pixels.shape == (len(X), 64) and sequence.pixels.dtype == np.uint8
    np.testing.assert_array_equal(sequence.camera_positions, np.arange(len(X)))  # nothing lost or reordered
    # the camera trails by two frames: exposure t shows DMD frame t - 2 (the first two show what came before)
    np.testing.assert_array_equal(sequence.shown[2:], np.arange(len(X) - 2))
    assert (sequence.shown[:2] == -1).all()
    brightness = sequence.pixels.mean(axis=1)
    shown_on = pattern[sequence.shown[2:]]
    assert brightness[2:][shown_on].min() > brightness[2:][~shown_on].max()


def test_display_sequence_refuses_what_one_sequence_cannot_hold(quiet_opu):
    capacity = min(quiet_opu.info.sequence_capacity, quiet_opu.camera.fifo_frames())
    sent = quiet_opu.link_counters.bytes_sent
    with pytest.raises(InvalidInputError, match="one sequence"):
        quiet_opu.display_sequence(np.zeros((capacity + 1, 8), dtype=np.uint8), 16)
    with pytest.raises(InvalidInputError):
        quiet_opu.display_sequence(np.zeros((4, 8), dtype=np.uint8), 16, timeout_s=0)
    assert quiet_opu.link_counters.bytes_sent >= sent
    with opu_driver.open(small_sim("noise=0&seed=5"), frame_mode="raw") as raw:
        # raw mode shows the same vectors as mirror pictures expanded on the host: one frame each, in order
        sequence = raw.display_sequence(np.eye(4, 8, dtype=np.uint8), 16)
        assert sequence.shown.tolist() == [0, 1, 2, 3] and sequence.pixels.shape == (4, 16)


def test_linear_transform_many_equals_each_batch_alone(quiet_opu):
    rng = np.random.default_rng(4)
    batches = [rng.integers(-1, 2, size=(5, 20)), rng.normal(size=(3, 20)), rng.integers(-1, 2, size=(1, 20))]
    alone = [quiet_opu.linear_transform(E, 40, n_bits=None if E.dtype.kind == "i" else 4) for E in batches]
    ternary = [batches[0], batches[2]]
    together = quiet_opu.linear_transform_many(ternary, 40)
    for got, expected in zip(together, (alone[0], alone[2]), strict=True):
        np.testing.assert_array_equal(got, expected)
    split = quiet_opu.linear_transform_many(ternary, 40, max_call_bytes=1)  # one row per device call
    for got, expected in zip(split, together, strict=True):
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(quiet_opu.linear_transform_many([batches[1]], 40, n_bits=4)[0], alone[1])
    assert quiet_opu.linear_transform_many([], 40) == []


def test_linear_transform_many_checks_every_batch_before_sending(quiet_opu):
    quiet_opu.linear_transform(np.ones((1, 20)), 40)  # the reference calibration, once
    sent = quiet_opu.link_counters.bytes_sent
    good = np.ones((2, 20))
    for batches, kwargs in [
        ([good, np.ones((2, 21))], {}),  # two widths
        ([good, np.array([[np.nan] * 20])], {}),
        ([good, np.ones(20)], {}),  # 1-D: a batch is 2-D here
        ([good], {"scheme": "three_frame"}),
        ([good], {"max_call_bytes": 0}),
    ]:
        with pytest.raises(InvalidInputError):
            quiet_opu.linear_transform_many(batches, 40, **kwargs)
    assert quiet_opu.link_counters.bytes_sent == sent


def test_numpy_integer_options_are_taken_as_python_integers(quiet_opu):
    E = np.random.default_rng(5).normal(size=(2, 20))
    np.testing.assert_array_equal(
        quiet_opu.linear_transform(E, 40, n_bits=np.int16(8)), quiet_opu.linear_transform(E, 40, n_bits=8)
    )
