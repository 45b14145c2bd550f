"""lightonml 1.4.3 itself driving the emulator through :func:`opu_driver.compat.device.lightonml_device`, and side by
side with lightonml's own simulated device.

lightonml installs on current Python only without its pinned dependencies (``pip install --no-deps
lightonml==1.4.3 numexpr attrs requests "setuptools<81"``, as CI does). Without it this file is skipped; with
OPU_REQUIRE_LIGHTONML=1 (as CI sets it) a missing lightonml fails it instead.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings

import numpy as np
import pytest

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lightonml imports pkg_resources, deprecated by setuptools
        import lightonml
        from lightonml import OPU as LightonmlOPU
except ImportError:
    if os.environ.get("OPU_REQUIRE_LIGHTONML"):  # CI installs lightonml: there these tests must run
        raise
    pytest.skip("lightonml is not installed (pip install --no-deps lightonml==1.4.3 ...)", allow_module_level=True)

from opu_driver.compat.device import LightonmlDevice, lightonml_device
from opu_driver.errors import InvalidInputError
from tests.support import small_sim

N_FEATURES, N_OUT = 64, 300
EXACT = small_sim("noise=0&seed=5")


def _binary(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 2, size=shape, dtype=np.uint8)


@pytest.fixture()
def lightonml_on_the_emulator():
    device = lightonml_device(EXACT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opu = LightonmlOPU(opu_device=device, n_components=N_OUT, max_n_features=N_FEATURES)
    yield opu, device
    opu.close()


def test_lightonml_accepts_the_device_and_opens_and_closes_it(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    assert lightonml.__version__ == "1.4.3"
    assert isinstance(device, LightonmlDevice) and type(device).__name__ == "SimulatedOpuDevice"
    assert device.active and not device.opu.closed
    assert device.input_shape == (96, 64) and device.output_shape_max == (64, 48)
    opu.close()
    assert not device.active
    opu.open()
    assert device.active and not device.opu.closed


def test_fit1d_transform_and_linear_transform_are_the_drivers_projections(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    X = _binary((9, N_FEATURES), seed=1)
    opu.fit1d(X)
    Y = opu.transform(X)
    assert Y.shape == (9, N_OUT) and Y.dtype == np.uint8
    np.testing.assert_array_equal(Y, device.opu.transform(X, N_OUT))
    np.testing.assert_array_equal(opu.transform(X[3]), Y[3])  # lightonml's single-vector path
    context = Y.context
    camera = device.opu.camera_settings
    assert (context.exposure_us, context.frametime_us) == (camera.exposure_us, camera.frame_time_us)
    roi = device.opu.roi_for(N_OUT)
    assert (context.output_roi_upper, context.output_roi_shape) == ((roi.x, roi.y), (roi.width, roi.height))
    assert context.gain == 0.0  # gain factor 1 is 0 dB

    L = opu.linear_transform(X)
    assert L.shape == (9, N_OUT) and L.dtype == np.float32
    # lightonml's "variance" rescaling divides by sqrt(n_features) (its stdev is 1 for this device).
    expected = device.opu.linear_transform(X, N_OUT) / np.float32(math.sqrt(N_FEATURES))
    np.testing.assert_allclose(L, expected, rtol=1e-6, atol=1e-6)


def test_packed_and_2d_input_reach_the_device_unpacked(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    X = _binary((5, 8, 8), seed=2)
    flat = X.reshape(5, N_FEATURES)
    opu.fit2d(X)
    np.testing.assert_array_equal(opu.transform(X), device.opu.transform(flat, N_OUT))
    opu.fit1d(np.packbits(flat, axis=1), packed=True)
    np.testing.assert_array_equal(opu.transform(np.packbits(flat, axis=1)), device.opu.transform(flat, N_OUT))


def test_vectors_narrower_than_max_n_features_are_projected_as_lightonml_allows():
    device = lightonml_device(EXACT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opu = LightonmlOPU(opu_device=device, n_components=N_OUT)  # lightonml's max_n_features: 1000
    try:
        X = _binary((4, 50), seed=6)
        opu.fit1d(X)
        np.testing.assert_array_equal(opu.transform(X), device.opu.transform(X, N_OUT))
        np.testing.assert_array_equal(opu.transform(X[1]), device.opu.transform(X[1], N_OUT))
    finally:
        opu.close()


def test_camera_times_are_read_from_the_camera_and_kept_across_reopening(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    device.exposure_us = 2000  # longer than the frame time: the camera moves that too
    camera = device.opu.camera_settings
    assert camera.exposure_us == 2000 and device.frametime_us == camera.frame_time_us >= 2050
    device.opu.configure_camera(exposure_us=1500)  # changed behind the adapter's back
    assert device.exposure_us == 1500
    device.exposure_us = 2000
    assert device.opu.camera_settings.exposure_us == 2000
    opu.close()
    opu.open()
    assert device.opu.camera_settings.exposure_us == 2000 and device.exposure_us == 2000


def test_n_components_follow_lightonml_and_the_camera_bounds_them(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    opu.n_components = 1000
    opu.fit1d(n_features=N_FEATURES)
    assert opu.transform(_binary((2, N_FEATURES))).shape == (2, 1000)
    with pytest.raises(InvalidInputError, match="pixels"):
        opu.n_components = 64 * 48 + 1


def test_non_binary_input_is_refused_before_anything_is_sent(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    opu.fit1d(n_features=N_FEATURES)
    X = _binary((3, N_FEATURES))
    X[1, 5] = 2  # lightonml's simulated path passes this through as uint8
    shown = device.opu.frames_displayed
    with pytest.raises(InvalidInputError):
        opu.transform(X)
    assert device.opu.frames_displayed == shown


def test_the_device_cannot_be_pickled_and_an_output_buffer_must_hold_the_result(lightonml_on_the_emulator):
    opu, device = lightonml_on_the_emulator
    with pytest.raises(TypeError):
        pickle.dumps(device)
    device.build_random_matrix(N_FEATURES, N_OUT)
    device._linear = True
    with pytest.raises(InvalidInputError, match="cannot hold"):
        device.transform2(_binary((2, N_FEATURES)), np.empty((2, N_OUT), dtype=np.uint8))
    device._linear = False


# -- side by side with lightonml's own simulated device -------------------------------------------------------
# Every pixel its own mode (grain 1) and every mirror its own input mode (cell 1), cell-aligned macro-pixels: the
# emulator's matrix is then i.i.d. complex Gaussian, as lightonml's simulated one is. noise=0 leaves only the
# sampling of N_STAT components, which the tolerance is derived from.
STAT_URL = "sim://?dmd=96x64&camera=128x64&cell=1&grain=1&seed=7&noise=0"
N_STAT = 4096
OVERLAPS = np.arange(0, 33, 4)  # ones shared by two vectors of 32 ones each: field correlation m / 32


def _pairs() -> np.ndarray:
    rng = np.random.default_rng(1)
    rows = []
    for m in OVERLAPS:
        order = rng.permutation(N_FEATURES)
        a = np.zeros(N_FEATURES, np.uint8)
        b = np.zeros(N_FEATURES, np.uint8)
        a[order[:32]] = 1
        b[order[:m]] = 1
        b[order[32 : 64 - m]] = 1
        rows += [a, b]
    return np.array(rows)


def _pair_correlations(Y: np.ndarray) -> np.ndarray:
    Y = np.asarray(Y, dtype=np.float64)
    Y = Y[:, np.all(Y != 0, axis=0)]  # the linear mode sets outputs of a too weak reference to 0
    return np.array([np.corrcoef(Y[2 * i], Y[2 * i + 1])[0, 1] for i in range(len(OVERLAPS))])


def _sampling_sd(gamma: np.ndarray, intensity: bool, n: int, draws: int = 300) -> np.ndarray:
    """Standard deviation of the sample correlation of n pairs of circular complex Gaussian fields of correlation
    gamma (their real parts for a linear projection, |.|^2 for intensities), by drawing them."""
    rng = np.random.default_rng(0)
    sds = []
    for g in gamma:
        u = rng.normal(size=(draws, n)) + 1j * rng.normal(size=(draws, n))
        w = rng.normal(size=(draws, n)) + 1j * rng.normal(size=(draws, n))
        v = g * u + math.sqrt(max(0.0, 1 - g * g)) * w
        a, b = (np.abs(u) ** 2, np.abs(v) ** 2) if intensity else (u.real, v.real)
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        r = (a * b).sum(axis=1) / np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
        sds.append(r.std())
    return np.array(sds)


@pytest.mark.slow
def test_lightonml_simulated_and_the_adapter_agree_in_shape_dtype_context_and_statistics():
    X = _pairs()
    gamma = OVERLAPS / 32
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        simulated = LightonmlOPU(n_components=N_STAT, max_n_features=N_FEATURES, simulated=True)
        ours = LightonmlOPU(
            opu_device=lightonml_device(STAT_URL, layout="macro", macro_px=4, pixel_format="MONO12"),
            n_components=N_STAT,
            max_n_features=N_FEATURES,
        )
    for name, opu in (("lightonml", simulated), ("adapter", ours)):
        with opu:
            opu.fit1d(n_features=N_FEATURES)
            results[name] = (opu.transform(X), opu.linear_transform(X))
    (I_sim, L_sim), (I_ours, L_ours) = results["lightonml"], results["adapter"]
    assert I_sim.shape == I_ours.shape == L_sim.shape == L_ours.shape == (2 * len(OVERLAPS), N_STAT)
    assert L_sim.dtype == L_ours.dtype == np.float32
    # lightonml's simulator returns float32 intensities; a real OPU (and this device) the camera's counts.
    assert I_sim.dtype == np.float32 and I_ours.dtype == np.uint16
    for attribute in ("exposure_us", "frametime_us", "output_roi_upper", "output_roi_shape", "gain", "start", "end"):
        assert getattr(I_sim.context, attribute) is not None and getattr(I_ours.context, attribute) is not None
    assert math.prod(I_ours.context.output_roi_shape) >= N_STAT

    # Field correlation gamma gives intensity correlation gamma^2 and linear correlation gamma. Each measured
    # correlation must be within 5 sampling standard deviations of theory, and the two devices within
    # 5 sqrt(2) of each other.
    for measured_sim, measured_ours, theory, intensity in (
        (_pair_correlations(I_sim), _pair_correlations(I_ours), gamma**2, True),
        (_pair_correlations(L_sim), _pair_correlations(L_ours), gamma, False),
    ):
        sd = _sampling_sd(gamma, intensity, N_STAT) + 1e-9  # (floating-point rounding at gamma = 1, where sd = 0)
        assert np.all(np.abs(measured_sim - theory) <= 5 * sd), (measured_sim, theory)
        assert np.all(np.abs(measured_ours - theory) <= 5 * sd), (measured_ours, theory)
        assert np.all(np.abs(measured_ours - measured_sim) <= 5 * math.sqrt(2) * sd)
    # Speckle: exponential intensities, contrast (std / mean over components) 1 for every vector.
    for intensities in (I_sim, I_ours):
        values = np.asarray(intensities, dtype=np.float64)
        contrast = values.std(axis=1) / values.mean(axis=1)
        # the contrast of N exponentials has sd 1/sqrt(N) (delta method: var s = 2/N, var m = 1/N, cov = 1/N)
        assert np.all(np.abs(contrast - 1) <= 5 / math.sqrt(N_STAT))


# -- the front's encoders against lightonml's own ---------------------------------------------------------------
def _encoder_cases():
    from lightonml.encoding import base as theirs

    from opu_driver.compat import encoding as ours

    rng = np.random.default_rng(3)
    real = rng.normal(size=(7, 5)).astype(np.float32)
    positive = np.abs(real)
    return (
        [
            ("BinaryThresholdEncoder", {"threshold_enc": 0.1}, real),
            ("MultiThresholdEncoder", {"thresholds": "linspace", "n_bins": 4}, real),
            ("MultiThresholdEncoder", {"thresholds": "quantiles", "n_bins": 3, "columnwise": True}, real),
            ("SeparatedBitPlanEncoder", {"precision": 5}, real),
            ("SeparatedBitPlanEncoder", {"precision": 8}, rng.integers(-100, 100, size=(4, 6)).astype(np.int16)),
            ("ConcatenatedBitPlanEncoder", {"n_bits": 5, "starting_bit": 2}, rng.integers(0, 256, (4, 3), np.uint8)),
            (
                "ConcatenatedBitPlanEncoder",
                {"n_bits": 12, "starting_bit": 3},
                rng.integers(0, 60000, (4, 3), np.uint16),
            ),
            ("Float32Encoder", {}, real),
            ("Float32Encoder", {"sign_bit": False, "exp_bits": 3, "mantissa_bits": 4}, positive),
            ("ConcatenatedFloat32Encoder", {"exp_bits": 5, "mantissa_bits": 2}, real),
            ("SequentialBaseTwoEncoder", {"n_gray_levels": 8}, real),
            ("SequentialBaseTwoEncoder", {"n_gray_levels": 2}, positive),
        ],
        theirs,
        ours,
    )


@pytest.fixture()
def numpy_float_alias(monkeypatch):
    """lightonml's coders use ``np.float`` (removed in numpy 1.24) and ``np.quantile(interpolation=...)`` (renamed
    ``method`` in numpy 1.22, removed in 2.x): give them back to lightonml's code for the comparison."""
    monkeypatch.setattr(np, "float", float, raising=False)
    quantile = np.quantile

    def quantile_with_interpolation(*args, interpolation=None, **kwargs):
        if interpolation is not None:
            kwargs["method"] = interpolation
        return quantile(*args, **kwargs)

    monkeypatch.setattr(np, "quantile", quantile_with_interpolation)


def test_the_fronts_encoders_match_lightonmls_bit_for_bit(numpy_float_alias):
    cases, theirs, ours = _encoder_cases()
    for name, kwargs, X in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = getattr(theirs, name)(**kwargs).fit(X).transform(X)
        got = getattr(ours, name)(**kwargs).fit(X).transform(X)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=f"{name} {kwargs}")


def test_the_fronts_decoders_match_lightonmls(numpy_float_alias):
    from lightonml.encoding import base as theirs

    from opu_driver.compat import encoding as ours

    rng = np.random.default_rng(4)
    Y = rng.integers(0, 255, size=(12, 9)).astype(np.uint8)
    np.testing.assert_allclose(
        ours.ConcatenatingBitPlanDecoder(n_bits=4).transform(Y),
        theirs.ConcatenatingBitPlanDecoder(n_bits=4).transform(Y),
    )
    X = rng.normal(size=(3, 9))
    encoder = theirs.SeparatedBitPlanEncoder(precision=4)
    planes = encoder.transform(X)
    np.testing.assert_allclose(
        ours.SeparatedBitPlanDecoder(**encoder.get_params()).transform(planes),
        theirs.SeparatedBitPlanDecoder(**encoder.get_params()).transform(planes),
        rtol=1e-6,
    )
