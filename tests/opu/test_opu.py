"""The Opu facade end to end on the emulator: bytes through the pyusb backend and the wire codecs."""

from __future__ import annotations

import numpy as np
import pytest

import firmware_sim
import opu_driver
from opu_driver.errors import (
    ConfigurationError,
    DeviceRefusedError,
    DroppedFramesError,
    InterlockError,
    InvalidInputError,
    ProtocolError,
    UnsupportedUrlError,
)
from opu_driver.protocol import DeviceErrorCode, PacketType, Register, encode_packet
from tests.support import SMALL_SIM, small_sim
from tests.support.v1 import v1_connection, v1_link


def _exact_dn(opu, X: np.ndarray, n_components: int) -> np.ndarray:
    """Camera counts the noiseless model predicts from the emulator's ground truth."""
    gt = opu.emulator.ground_truth
    cfg = gt.config
    settings = opu.camera.settings
    bits = {"MONO8": 8, "MONO10": 10, "MONO12": 12, "MONO10P": 10, "MONO12P": 12}[settings.pixel_format.name]
    scale = (
        cfg.signal_e
        * settings.exposure_us
        / 400.0
        * opu.controller.laser_power_mw
        / 50.0
        * settings.gain
        * (2**bits - 1)
        / cfg.full_well_e
    )
    intensity = gt.expected_intensity_features(X)[:, :n_components]
    return np.clip(np.round(intensity.astype(np.float64) * scale), 0, 2**bits - 1)


def test_info_is_read_from_the_device(quiet_opu):
    info = quiet_opu.info
    cfg = quiet_opu.emulator.config
    assert (info.dmd_width, info.dmd_height) == (96, 64)
    assert (info.camera_width, info.camera_height) == (64, 48)
    assert info.serial_number == quiet_opu.emulator.serial_number
    assert info.model == cfg.model
    assert info.protocol_version == 1
    assert "MONO8" in info.pixel_formats and "MONO12P" in info.pixel_formats


def test_transform_matches_the_noiseless_physics(quiet_opu):
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, size=(40, 300), dtype=np.uint8)
    Y = quiet_opu.transform(X, 500)
    assert Y.shape == (40, 500) and Y.dtype == np.uint8
    expected = _exact_dn(quiet_opu, X, 500)
    diff = np.abs(Y.astype(np.float64) - expected)
    # float32 sums in the emulator vs complex64 in the ground truth: rounding at an ADC bin edge may differ by
    # one count, on a tiny fraction of pixels; anything more is a real error.
    assert diff.max() <= 1
    assert (diff == 0).mean() > 0.995
    assert Y.std() > 0  # not a constant


def test_one_dimensional_input_and_bool_dtype(quiet_opu):
    x = np.zeros(50, dtype=bool)
    x[::3] = True
    y = quiet_opu.transform(x, 64)
    assert y.shape == (64,)
    np.testing.assert_array_equal(y, quiet_opu.transform(x[None, :].astype(np.int64), 64)[0])


def test_twelve_bit_output_is_uint16():
    with opu_driver.open(small_sim("noise=0"), pixel_format="MONO12P") as opu:
        X = np.random.default_rng(1).integers(0, 2, size=(8, 100))
        Y = opu.transform(X, 300)
        assert Y.dtype == np.uint16
        assert np.abs(Y.astype(np.float64) - _exact_dn(opu, X, 300)).max() <= 1
        assert Y.max() > 255


@pytest.mark.parametrize("lag", [1, 3])
def test_lag_is_learned_and_results_match_no_lag(lag):
    X = np.random.default_rng(2).integers(0, 2, size=(30, 64), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=9")) as opu:
        reference = opu.transform(X, 200)
    with opu_driver.open(small_sim(f"noise=0&seed=9&lag={lag}"), chunk_frames=8) as opu:
        lagged = opu.transform(X, 200)
        assert opu.lag_frames == lag
        # after learning the lag, each chunk appends exactly `lag` flush frames and needs one sequence
        before = opu.counters.sequences
        opu.transform(X[:8], 200)
        assert opu.counters.sequences == before + 1
    np.testing.assert_array_equal(lagged, reference)


def test_chunking_does_not_change_results():
    X = np.random.default_rng(3).integers(0, 2, size=(50, 80), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=1")) as opu:
        whole = opu.transform(X, 100)
    with opu_driver.open(small_sim("noise=0&seed=1"), chunk_frames=7) as opu:
        chunked = opu.transform(X, 100)
        assert opu.counters.sequences == 8  # ceil(50 / 7)
    np.testing.assert_array_equal(whole, chunked)


def test_same_seed_reproduces_bytes_with_noise_and_different_seeds_differ():
    X = np.random.default_rng(4).integers(0, 2, size=(20, 120), dtype=np.uint8)
    outs = []
    for seed in (11, 11, 12):
        with opu_driver.open(small_sim(f"seed={seed}")) as opu:
            outs.append(opu.transform(X, 400))
    np.testing.assert_array_equal(outs[0], outs[1])
    a, c = outs[0].astype(np.float64).ravel(), outs[2].astype(np.float64).ravel()
    # Independent speckle: |corr| within 5 sigma of 0. Neighbouring pixels share a grain (grain 2 px in the
    # default emulator), so only about n / grain^2 samples are independent: sigma = grain / sqrt(n).
    assert abs(np.corrcoef(a, c)[0, 1]) < 5 * 2.0 / np.sqrt(a.size)


@pytest.mark.parametrize("layout", ["lined", "macro"])
def test_raw_frames_equal_feature_frames(layout):
    X = np.random.default_rng(5).integers(0, 2, size=(12, 40), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=2"), layout=layout) as opu:
        features = opu.transform(X, 256)
    with opu_driver.open(small_sim("noise=0&seed=2"), layout=layout, frame_mode="raw") as opu:
        raw = opu.transform(X, 256)
    # same light on the same mirrors; only float32 summation order differs (one count at a bin edge at most)
    assert np.abs(features.astype(int) - raw.astype(int)).max() <= 1
    assert (features == raw).mean() > 0.995


def test_empty_batch_sends_nothing(quiet_opu):
    sent = quiet_opu.link_counters.bytes_sent
    out = quiet_opu.transform(np.zeros((0, 10), dtype=np.uint8), 20)
    assert out.shape == (0, 20)
    assert quiet_opu.link_counters.bytes_sent == sent


BAD_INPUTS = [
    (np.array([[0.0, 1.0]]), "dtype"),
    (np.array([[0, 2, 1]]), "binary"),
    (np.array([[0, -1, 1]]), "binary"),
    (np.array([[np.nan, 1.0]]), "dtype"),
    (np.zeros((2, 3, 4), dtype=np.uint8), "shape"),
    (np.zeros((2, 0), dtype=np.uint8), "zero features"),
    (np.zeros((1, 96 * 64 + 1), dtype=np.uint8), "exceed"),
    (np.array([["a", "b"]]), "dtype"),
    (np.zeros((1, 3), dtype="m8[s]"), "dtype"),
    (np.ma.masked_array(np.zeros((1, 3), dtype=np.uint8), mask=[[0, 1, 0]]), "masked"),
    ([[0, 1], [1]], "array-like|dtype|shape"),
]


@pytest.mark.parametrize("X,match", BAD_INPUTS)
def test_bad_input_is_refused_before_anything_is_sent(quiet_opu, X, match):
    sent = quiet_opu.link_counters.bytes_sent
    frames = quiet_opu.dmd.frame_count
    camera = quiet_opu.camera.read_settings()
    layout_features = v1_link(quiet_opu).read_register(Register.LAYOUT_FEATURES)
    with pytest.raises(InvalidInputError, match=match):
        quiet_opu.transform(X, 10)
    assert quiet_opu.link_counters.bytes_sent == sent
    assert quiet_opu.dmd.frame_count == frames
    assert quiet_opu.camera.read_settings() == camera
    assert v1_link(quiet_opu).read_register(Register.LAYOUT_FEATURES) == layout_features


@pytest.mark.parametrize("n_components", [0, -1, 64 * 48 + 1, 2.5, True, "10"])
def test_bad_n_components_is_refused(quiet_opu, n_components):
    sent = quiet_opu.link_counters.bytes_sent
    with pytest.raises(InvalidInputError):
        quiet_opu.transform(np.zeros((1, 5), dtype=np.uint8), n_components)
    assert quiet_opu.link_counters.bytes_sent == sent


@pytest.mark.parametrize(
    "url",
    [
        "http://x",
        "sim:/",
        "nonsense",
        "sim://host/path",
        "usb://zz:11?port=/dev/null",
        "usb://1209:4f50?colour=red",
        42,
        "sim://name?seed=1",
    ],
)
def test_unknown_or_malformed_urls_are_refused(url):
    with pytest.raises(UnsupportedUrlError):
        opu_driver.open(url)


def test_bad_settings_and_emulator_options_are_refused():
    with pytest.raises(ConfigurationError):
        opu_driver.open(SMALL_SIM, layout="spiral")
    with pytest.raises(ConfigurationError):
        opu_driver.open(SMALL_SIM, no_such_setting=1)
    with pytest.raises(ConfigurationError):
        opu_driver.open("sim://?seed=1&warp=9")
    with pytest.raises(ConfigurationError):
        opu_driver.open("sim://?lag=-2")


def test_closing_switches_the_laser_off_and_is_idempotent():
    opu = opu_driver.open(SMALL_SIM)
    controller = opu.controller
    assert controller.laser_is_on and controller.shutter_is_open
    emulator = opu.emulator
    opu.close()
    opu.close()
    assert opu.closed
    assert not emulator.light_on
    with pytest.raises(opu_driver.OpuError):
        opu.transform(np.zeros((1, 4), dtype=np.uint8), 4)


def test_laser_off_gives_dark_frames_at_the_dark_level():
    with opu_driver.open(small_sim("seed=3"), laser_on=False, pixel_format="MONO12") as opu:
        X = np.ones((16, 200), dtype=np.uint8)
        dark = opu.transform(X, 400).astype(np.float64)
        assert opu.counters.dark_frames == 16
        gt = opu.emulator.ground_truth
        roi = opu.camera.settings.roi
        noise = gt.noise
        exposure_s = opu.camera.settings.exposure_us * 1e-6
        pattern = gt.dark_pattern_e[roi.y : roi.y + roi.height, roi.x : roi.x + roi.width].ravel()[:400]
        mean_e = pattern + noise.dark_current_e_per_s * exposure_s
        dn_per_e = gt.dn_per_electron(opu.camera.settings.gain, 12)
        # Per pixel: shot + read noise, sd = sqrt(mean_e + read^2) electrons; averaged over 16 frames and 400
        # pixels, then 5 sigma; plus half a count for the ADC rounding of a mean.
        sd_dn = np.sqrt(mean_e.mean() + noise.read_noise_e**2) * dn_per_e / np.sqrt(dark.size)
        assert abs(dark.mean() - mean_e.mean() * dn_per_e) < 5 * sd_dn + 0.5


def test_n_components_can_use_the_whole_sensor(quiet_opu):
    y = quiet_opu.transform(np.ones((1, 10), dtype=np.uint8), 64 * 48)
    assert y.shape == (1, 64 * 48)
    assert quiet_opu.camera.settings.roi == opu_driver.opu.Roi(0, 0, 64, 48)


def test_features_beyond_a_layout_table_are_refused_before_sending():
    with opu_driver.open("sim://?dmd=1100x1000&camera=32x32&noise=0") as opu:
        sent = opu.link_counters.bytes_sent
        with pytest.raises(InvalidInputError, match="layout table"):
            opu.transform(np.zeros((1, 1_048_577), dtype=np.uint8), 8)
        assert opu.link_counters.bytes_sent == sent


@pytest.mark.parametrize(
    "setting",
    [
        {"exposure_us": 400.7},
        {"exposure_us": 5},
        {"chunk_frames": 2.5},
        {"timeout_s": float("inf")},
        {"max_lag_frames": True},
        {"frame_time_us": 2**33},
        {"gain": float("nan")},
        {"pixel_format": 8},
    ],
)
def test_settings_of_the_wrong_type_or_range_are_refused_at_open(setting):
    with pytest.raises(ConfigurationError):
        opu_driver.open(SMALL_SIM, **setting)


# -- sessions, interruptions and faults ------------------------------------------------------------------


def test_reopening_a_device_with_lag_gives_correct_results(named_device):
    X = np.random.default_rng(7).integers(0, 2, size=(8, 50), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=6")) as opu:
        reference = opu.transform(X, 100)
    for _ in range(3):  # each session leaves frames in the device's lag pipeline for the next one
        with opu_driver.open(f"sim://{named_device.name}") as opu:
            np.testing.assert_array_equal(opu.transform(X, 100), reference)
            np.testing.assert_array_equal(opu.transform(X[:3], 100), reference[:3])


def test_an_interrupted_transform_leaves_the_next_one_correct(named_device, monkeypatch):
    X = np.random.default_rng(8).integers(0, 2, size=(12, 50), dtype=np.uint8)
    with opu_driver.open(f"sim://{named_device.name}", chunk_frames=5) as opu:
        reference = opu.transform(X, 100)
        real_decode = opu_driver.opu.facade.decode_pixels
        calls = {"n": 0}

        def interrupted(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
            return real_decode(*args, **kwargs)

        monkeypatch.setattr(opu_driver.opu.facade, "decode_pixels", interrupted)
        with pytest.raises(KeyboardInterrupt):
            opu.transform(X, 100)
        monkeypatch.setattr(opu_driver.opu.facade, "decode_pixels", real_decode)
        assert opu.counters.recoveries == 1
        # the recovery aborted the queue and drained the camera stream
        assert opu.dmd.queued_frames == 0
        assert named_device.debug_counters["in_fifo_bytes"] == 0
        np.testing.assert_array_equal(opu.transform(X, 100), reference)
        np.testing.assert_array_equal(opu.transform(X[:7], 100), reference[:7])


def test_interlock_trip_is_an_interlock_error_not_dark_data():
    with opu_driver.open(small_sim("seed=2")) as opu:
        X = np.ones((4, 30), dtype=np.uint8)
        before = opu.transform(X, 50).astype(np.float64)
        opu.emulator.trip_interlock()
        with pytest.raises(InterlockError):
            opu.transform(X, 50)
        opu.emulator.clear_interlock_cause()
        opu.controller.reset_interlock()
        opu.controller.laser_on()
        dark_frames = opu.counters.dark_frames
        after = opu.transform(X, 50).astype(np.float64)
        assert opu.counters.dark_frames == dark_frames  # lit again
        # same speckle as before the trip, up to camera noise
        assert np.corrcoef(before.ravel(), after.ravel())[0, 1] > 0.9


def test_a_layout_cleared_behind_the_drivers_back_is_reloaded(quiet_opu):
    X = np.ones((3, 20), dtype=np.uint8)
    good = quiet_opu.transform(X, 40)
    v1_link(quiet_opu).write_register(Register.SEQ_CONTROL, 3)  # CLEAR_LAYOUT, as a device reset would
    np.testing.assert_array_equal(quiet_opu.transform(X, 40), good)


def test_frames_the_device_refuses_are_reported_with_its_code_before_start():
    X = np.ones((30, 20), dtype=np.uint8)
    frame_bytes = 96 * 64 // 8
    # The device's memory for raw frames holds 10 of them, a limit no register tells the driver: it learns of
    # it when the device refuses frames of a sequence while they are queued.
    url = small_sim(f"noise=0&seed=5&raw_queue_bytes={10 * frame_bytes}")
    with opu_driver.open(url, frame_mode="raw") as opu:
        opu.transform(X[:2], 40)
        frames_before = opu.dmd.frame_count
        with pytest.raises(DeviceRefusedError) as info:
            opu.transform(X, 40)
        assert info.value.code == DeviceErrorCode.E_SEQ_FULL
        assert opu.dmd.frame_count == frames_before  # nothing was displayed
        assert opu.dmd.queued_frames == 0  # and the recovery emptied the queue


def test_a_corrupt_camera_packet_is_a_protocol_error_and_the_next_call_recovers(strict_opu):
    X = np.ones((3, 20), dtype=np.uint8)
    good = strict_opu.transform(X, 40)
    packet = bytearray(encode_packet(PacketType.CAMERA_FRAME, bytes(60)))
    packet[20] ^= 0xFF  # payload byte: its CRC no longer matches
    strict_opu.emulator.inject_in_bytes(bytes(packet))
    with pytest.raises(ProtocolError, match="corrupt"):
        strict_opu.transform(X, 40)
    np.testing.assert_array_equal(strict_opu.transform(X, 40), good)


def test_with_the_default_retries_a_corrupt_packet_costs_only_its_frame(quiet_opu):
    X = np.ones((3, 20), dtype=np.uint8)
    good = quiet_opu.transform(X, 40)
    sent = quiet_opu.counters.frames_sent
    packet = bytearray(encode_packet(PacketType.CAMERA_FRAME, bytes(60)))
    packet[20] ^= 0xFF
    quiet_opu.emulator.inject_in_bytes(bytes(packet))
    np.testing.assert_array_equal(quiet_opu.transform(X, 40), good)
    counters = quiet_opu.counters
    # the damaged packet was read past (it was no frame of this call): no retry, no frame shown twice
    assert counters.corrupt_packets == 1 and counters.retries == 0 and counters.frames_sent - sent == 3


def test_an_opu_dropped_without_close_releases_its_emulator():
    import gc

    opu = opu_driver.open(SMALL_SIM)
    name = opu.emulator.name
    del opu
    gc.collect()
    assert name not in [d.name for d in firmware_sim.list_devices()]


def test_frames_dropped_by_a_full_device_fifo_raise_dropped_frames_error(strict_opu):
    X = np.ones((5, 20), dtype=np.uint8)
    good = strict_opu.transform(X, 40)
    # Bytes nobody reads fill the camera FIFO (as when a host stalls): the next frames cannot fit.
    fifo_bytes = strict_opu.camera.fifo_bytes
    strict_opu.emulator.inject_in_bytes(bytes(fifo_bytes))
    with pytest.raises(DroppedFramesError) as info:
        strict_opu.transform(X, 40)
    assert info.value.missing == 5
    # the junk was drained by the recovery: the device works again
    np.testing.assert_array_equal(strict_opu.transform(X, 40), good)


def test_with_the_default_retries_a_full_fifo_is_drained_and_the_frames_resent(quiet_opu):
    X = np.ones((5, 20), dtype=np.uint8)
    good = quiet_opu.transform(X, 40)
    quiet_opu.emulator.inject_in_bytes(bytes(quiet_opu.camera.fifo_bytes))
    np.testing.assert_array_equal(quiet_opu.transform(X, 40), good)
    assert quiet_opu.counters.frames_resent >= 5 and quiet_opu.counters.requests_recovered == 1


def test_saturation_is_counted_and_warned_about(caplog):
    with opu_driver.open(small_sim("signal_e=100000")) as opu:
        with caplog.at_level("WARNING", logger="opu_driver.opu"):
            opu.transform(np.ones((3, 20), dtype=np.uint8), 100)
        assert opu.counters.saturated_frames == 3
    assert "saturated" in caplog.text


def test_exact_traffic_of_a_repeated_transform(quiet_opu):
    """Same sizes again: no layout, no camera writes; only the frames, one START, and reads."""
    from firmware_sim import wire

    X = np.random.default_rng(9).integers(0, 2, size=(6, 20), dtype=np.uint8)
    quiet_opu.transform(X, 40)
    usb = v1_connection(quiet_opu).usb
    writes, bulk = [], bytearray()
    real_control_write, real_bulk_write = usb.control_write, usb.bulk_write

    def control_write(request, value, index, data, timeout_s):
        writes.append((request, value, bytes(data)))
        return real_control_write(request, value, index, data, timeout_s)

    def bulk_write(data, timeout_s):
        bulk.extend(data)
        return real_bulk_write(data, timeout_s)

    usb.control_write, usb.bulk_write = control_write, bulk_write
    quiet_opu.transform(X, 40)
    usb.control_write, usb.bulk_write = real_control_write, real_bulk_write

    assert writes == [(0x02, int(Register.SEQ_CONTROL), (1).to_bytes(4, "little"))]  # START, nothing else
    packets = wire.PacketStream().feed(bytes(bulk))  # decoded by the firmware's own codec
    assert [p.packet_type for p in packets] == [wire.PacketType.FEATURE_FRAME] * 6
    for row, envelope in zip(X, packets, strict=True):
        payload = bytes(envelope.payload)
        assert int.from_bytes(payload[4:8], "little") == 20
        np.testing.assert_array_equal(np.unpackbits(np.frombuffer(payload[8:], np.uint8))[:20], row)


def test_sessions_start_their_frame_ids_at_different_places(named_device):
    firsts = []
    for _ in range(2):
        with opu_driver.open(f"sim://{named_device.name}") as opu:
            firsts.append(opu._runner.reserve_ids(0))
    assert firsts[0] != firsts[1]  # random 31-bit starts: equal with probability 2**-31


def test_frames_left_queued_by_an_earlier_session_do_not_reach_the_next(named_device):
    X = np.random.default_rng(10).integers(0, 2, size=(5, 50), dtype=np.uint8)
    with opu_driver.open(f"sim://{named_device.name}") as opu:
        reference = opu.transform(X, 100)
        opu.dmd.queue_feature_frames(7, np.packbits(np.ones((70, 50), dtype=bool), axis=1))
    with opu_driver.open(f"sim://{named_device.name}") as opu:
        np.testing.assert_array_equal(opu.transform(X, 100), reference)
        assert opu.lag_frames == 3


def test_a_stale_camera_frame_in_the_stream_costs_no_extra_sequence(quiet_opu):
    X = np.ones((4, 20), dtype=np.uint8)
    good = quiet_opu.transform(X, 40)
    emulator = quiet_opu.emulator
    emulator.inject_in_bytes(_stale_frame(quiet_opu))
    sequences = quiet_opu.counters.sequences
    np.testing.assert_array_equal(quiet_opu.transform(X, 40), good)
    assert quiet_opu.counters.sequences == sequences + 1


def _stale_frame(opu) -> bytes:
    from opu_driver.protocol import CameraFrame, encode_camera_frame

    roi = opu.camera.settings.roi
    count = opu.camera.frame_count
    return encode_camera_frame(
        CameraFrame(
            camera_frame_id=count - 1,
            dmd_frame_id=12345,
            timestamp_us=0,
            exposure_us=400,
            roi_x=roi.x,
            roi_y=roi.y,
            roi_w=roi.width,
            roi_h=roi.height,
            pixel_format=1,
            flags=0,
            pixels=bytes(roi.n_pixels),
        )
    )


def test_a_sensor_narrower_than_tall_still_fits_every_n_components():
    with opu_driver.open("sim://?dmd=32x32&camera=8x200&noise=0") as opu:
        assert opu.transform(np.ones((1, 4), dtype=np.uint8), 100).shape == (1, 100)
        assert opu.transform(np.ones((1, 4), dtype=np.uint8), 1600).shape == (1, 1600)


def test_a_camera_fifo_smaller_than_the_lag_still_works():
    X = np.random.default_rng(11).integers(0, 2, size=(9, 30), dtype=np.uint8)
    with opu_driver.open(small_sim("noise=0&seed=4")) as opu:
        reference = opu.transform(X, 200)
    packet = 16 + 32 + 200 + 4
    url = small_sim(f"noise=0&seed=4&lag=8&in_fifo_bytes={6 * packet}")
    with opu_driver.open(url) as opu:
        assert opu.camera.fifo_bytes == 6 * packet
        for _ in range(2):
            np.testing.assert_array_equal(opu.transform(X, 200), reference)
