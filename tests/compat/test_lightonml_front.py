"""The lightonml 1.4 compatible front against the small emulator: shapes, context, equality with the driver,
linear fidelity, typed errors before anything is sent, and the encoders' round trips."""

import numpy as np
import pytest

from opu_driver.compat.encoding import (
    BinaryThresholdEncoder,
    ConcatenatedBitPlanEncoder,
    ConcatenatedFloat32Encoder,
    Float32Encoder,
    MultiThresholdEncoder,
    SeparatedBitPlanDecoder,
    SeparatedBitPlanEncoder,
    SequentialBaseTwoEncoder,
)
from opu_driver.compat.lightonml import OPU, ContextArray
from opu_driver.errors import ConfigurationError, InvalidInputError, OpuError
from tests.support import exact_linear_matrix, small_sim

N_FEATURES, N_OUT = 64, 300
EXACT = small_sim("noise=0&seed=5")


@pytest.fixture(scope="module")
def opu():
    with OPU(n_components=N_OUT, url=EXACT) as front:
        yield front


def _binary(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 2, size=shape, dtype=np.uint8)


@pytest.mark.parametrize("shape", [(N_FEATURES,), (5, N_FEATURES), (2, 3, N_FEATURES)])
def test_transform_keeps_the_leading_shape_and_the_camera_dtype(opu, shape):
    X = _binary(shape)
    opu.fit1d(X)
    Y = opu.transform(X)
    assert isinstance(Y, ContextArray)
    assert Y.shape == shape[:-1] + (N_OUT,)
    assert Y.dtype == np.uint8


def test_fit2d_flattens_the_last_two_axes_as_the_driver_sees_them(opu):
    X = _binary((3, 8, 8), seed=1)
    opu.fit2d(X)
    Y = opu.transform(X)
    assert Y.shape == (3, N_OUT)
    assert Y.context.n_features == (8, 8)
    np.testing.assert_array_equal(Y, opu.opu.transform(X.reshape(3, 64), N_OUT))


def test_fit1d_then_transform_equals_the_driver_transform_on_the_same_device(opu):
    X = _binary((7, N_FEATURES), seed=2)
    opu.fit1d(n_features=N_FEATURES)
    np.testing.assert_array_equal(opu.transform(X), opu.opu.transform(X, N_OUT))
    np.testing.assert_array_equal(opu.transform(X.astype(bool)), opu.opu.transform(X, N_OUT))


def test_packed_input_is_unpacked_as_np_packbits(opu):
    X = _binary((4, N_FEATURES), seed=3)
    opu.fit1d(np.packbits(X, axis=-1), packed=True)
    np.testing.assert_array_equal(opu.transform(np.packbits(X, axis=-1)), opu.opu.transform(X, N_OUT))


def test_the_context_holds_the_settings_the_output_was_computed_with(opu):
    X = _binary((4, N_FEATURES), seed=4)
    opu.fit1d(X)
    context = opu.transform(X).context
    camera = opu.opu.camera_settings
    assert context.operation == "transform"
    assert (context.n_features, context.n_components) == (N_FEATURES, N_OUT)
    assert (context.exposure_us, context.frame_time_us) == (camera.exposure_us, camera.frame_time_us)
    assert context.pixel_format == "MONO8" and context.layout == "lined"
    roi = opu.opu.roi_for(N_OUT)
    assert context.output_roi == (roi.x, roi.y, roi.width, roi.height)
    assert context.n_ones == pytest.approx(X.sum(axis=1).mean())
    assert context.start <= context.end
    assert context.serial_number == opu.opu.info.serial_number


def test_n_components_is_settable_and_checked(opu):
    X = _binary((2, N_FEATURES))
    opu.fit1d(X)
    opu.n_components = 50
    try:
        assert opu.transform(X).shape == (2, 50)
    finally:
        opu.n_components = N_OUT
    with pytest.raises(InvalidInputError):
        opu.n_components = 0


def test_linear_transform_correlates_with_the_emulators_exact_matrix():
    with OPU(n_components=N_OUT, url=small_sim("seed=3"), rescale="none") as front:
        E = np.random.default_rng(0).choice([-1, 0, 1], size=(40, N_FEATURES), p=[0.2, 0.6, 0.2])
        front.fit1d(E)
        Y = front.linear_transform(E)
        assert Y.dtype == np.float32 and Y.shape == (40, N_OUT)
        assert Y.context.operation == "linear_transform"
        mask = front.opu.linear_mode.calibration(N_FEATURES, N_OUT).mask
        exact = E @ exact_linear_matrix(front.opu, N_FEATURES, N_OUT)
        assert np.corrcoef(Y[:, mask].ravel(), exact[:, mask].ravel())[0, 1] >= 0.99


@pytest.mark.parametrize(
    ("rescale", "divisor"), [("variance", np.sqrt(N_FEATURES)), ("norm", np.sqrt(N_OUT)), ("none", 1)]
)
def test_linear_transform_rescales_as_lightonml_with_unit_variance_entries(opu, rescale, divisor):
    E = np.random.default_rng(1).choice([-1, 0, 1], size=(2, 5, N_FEATURES))
    opu.fit1d(n_features=N_FEATURES)
    opu.rescale = rescale
    try:
        Y = opu.linear_transform(E)
    finally:
        opu.rescale = "variance"
    assert Y.shape == (2, 5, N_OUT)
    expected = opu.opu.linear_transform(E.reshape(10, N_FEATURES), N_OUT).reshape(2, 5, N_OUT) / divisor
    np.testing.assert_allclose(Y, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "X",
    [
        np.full((2, N_FEATURES), 0.5),  # lightonml cast it to uint8 zeros
        np.ones((2, N_FEATURES)),  # floats, even 0.0 and 1.0
        np.full((2, N_FEATURES), 2, dtype=np.uint8),  # lightonml showed 2 as a lit mirror
        np.zeros((2, N_FEATURES + 1), dtype=np.uint8),  # not the fitted shape
    ],
)
def test_bad_input_is_refused_before_anything_is_sent(opu, X):
    opu.fit1d(n_features=N_FEATURES)
    shown = opu.opu.frames_displayed
    with pytest.raises(InvalidInputError):
        opu.transform(X)
    assert opu.opu.frames_displayed == shown


def test_transform_before_fit_and_too_many_features_are_refused():
    with OPU(n_components=N_OUT, url=EXACT, max_n_features=32) as front:
        with pytest.raises(InvalidInputError, match="fit"):
            front.transform(_binary((N_FEATURES,)))
        with pytest.raises(InvalidInputError, match="max_n_features"):
            front.fit1d(n_features=N_FEATURES)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"opu_device": object()},
        {"config_file": "opu.json"},
        {"config_override": {"a": 1}},
        {"rescale": "cube"},
        {"input_roi_strategy": "small"},
        {"simulated": True, "url": "usb://1209:4f50"},
    ],
)
def test_unsupported_constructor_arguments_raise_configuration_errors_without_opening(kwargs):
    with pytest.raises(ConfigurationError):
        OPU(**kwargs)


def test_open_at_init_false_opens_later_and_close_is_idempotent():
    front = OPU(n_components=N_OUT, url=EXACT, open_at_init=False)
    with pytest.raises(OpuError, match="closed"):
        _ = front.opu
    with front:
        assert not front.opu.closed
    front.close()


def test_the_encoder_and_decoder_of_bit_planes_run_through_transform(opu):
    X = np.random.default_rng(5).normal(size=(6, N_FEATURES))
    opu.fit1d(n_features=N_FEATURES)
    Y = opu.transform(X, SeparatedBitPlanEncoder(precision=4), SeparatedBitPlanDecoder)
    assert Y.shape == (6, N_OUT) and Y.dtype == np.float32


def test_threshold_encoders_give_binary_codes():
    X = np.random.default_rng(6).normal(size=(10, 5))
    bits = BinaryThresholdEncoder().fit(X).transform(X)
    assert bits.dtype == np.uint8 and set(np.unique(bits)) <= {0, 1}
    np.testing.assert_array_equal(bits, X > np.median(X, axis=0))
    codes = MultiThresholdEncoder(n_bins=4).fit(X).transform(X)
    assert codes.shape == (10, 15)
    # a thermometer code: exceeding a higher threshold implies exceeding the lower ones
    assert (codes[:, 5:10] <= codes[:, :5]).all() and (codes[:, 10:] <= codes[:, 5:10]).all()
    with pytest.raises(InvalidInputError):
        BinaryThresholdEncoder().transform(X)


def test_the_other_encoders_give_what_their_codes_mean_and_refuse_what_they_cannot_encode():
    levels = np.array([[0.0, 1.0], [3.0, 7.0]])
    unary = SequentialBaseTwoEncoder(n_gray_levels=8).fit(levels).transform(levels)
    assert unary.shape == (2, 14)
    np.testing.assert_array_equal(unary.reshape(2, 2, 7).sum(axis=2), levels)  # as many ones as the level
    values = np.array([[5, 200]], dtype=np.uint8)
    bits = ConcatenatedBitPlanEncoder(n_bits=8).transform(values)
    np.testing.assert_array_equal(bits, np.unpackbits(values, axis=1))
    floats = np.array([[1.5, -2.0]], dtype=np.float32)
    planes = Float32Encoder().transform(floats)
    assert planes.shape == (32, 2)
    np.testing.assert_array_equal(planes[0], [0, 1])  # the sign bits
    np.testing.assert_array_equal(ConcatenatedFloat32Encoder().transform(floats)[0, 32:33], [1])
    with pytest.raises(InvalidInputError):
        SequentialBaseTwoEncoder().transform(levels)  # before fit
    with pytest.raises(InvalidInputError):
        ConcatenatedBitPlanEncoder().transform(floats)  # lightonml read the float's bytes
    with pytest.raises(InvalidInputError):
        ConcatenatedBitPlanEncoder(n_bits=6, starting_bit=4).transform(values)
    with pytest.raises(InvalidInputError):
        Float32Encoder().transform(values)
    with pytest.raises(ConfigurationError):
        SequentialBaseTwoEncoder(n_gray_levels=12)
    with pytest.raises(ConfigurationError):
        Float32Encoder(exp_bits=9)


@pytest.mark.parametrize("X", [np.random.default_rng(7).normal(size=(4, 9)), np.arange(-8, 10).reshape(2, 9)])
@pytest.mark.parametrize("precision", [1, 4, 8])
def test_bit_planes_round_trip_through_an_exact_linear_map(X, precision):
    encoder = SeparatedBitPlanEncoder(precision)
    planes = encoder.transform(X)
    M = np.random.default_rng(8).normal(size=(9, 11))
    decoded = SeparatedBitPlanDecoder(**encoder.get_params()).transform(planes.astype(np.float32) @ M)
    # quantisation to 2^p - 1 levels per sign: the error of each entry is at most half a level
    step = np.abs(X).max() / (2**precision - 1)
    assert np.abs(decoded - X @ M).max() <= step / 2 * np.abs(M).sum(axis=0).max() + 1e-4


def test_tensors_come_back_as_tensors(opu):
    torch = pytest.importorskip("torch")
    X = torch.from_numpy(_binary((3, N_FEATURES), seed=9))
    opu.fit1d(X)
    Y = opu.transform(X)
    assert isinstance(Y, torch.Tensor) and tuple(Y.shape) == (3, N_OUT)


def test_the_calls_of_lightonmls_input_output_example_at_small_sizes():
    # The example's sequence (docs/lightonml.md runs the example itself): OPU() defaults but a small device.
    rng = np.random.default_rng(11)

    def random_bin(shape):
        return rng.integers(0, 2, size=shape, dtype=bool)

    with OPU(n_components=N_OUT, url=small_sim("seed=11")) as opu:
        assert opu.max_n_features == 96 * 64  # the device's limit, as lightonml on an OPU
        inp_1d = random_bin((20, 100))
        assert opu.fit_transform1d(inp_1d).shape == (20, N_OUT)
        opu.fit1d(inp_1d)
        assert opu.transform(random_bin((20, 100))).shape == (20, N_OUT)
        assert opu.linear_transform(inp_1d).shape == (20, N_OUT)
        opu.fit1d(n_features=100)
        assert opu.fit_transform1d(inp_1d[0]).shape == (N_OUT,)
        inp_2d = random_bin((20, 13, 10))
        assert opu.fit_transform2d(inp_2d).shape == (20, N_OUT)
        assert opu.fit_transform1d(random_bin((3, 4, 300))).shape == (3, 4, N_OUT)
        assert opu.fit_transform1d(np.packbits(inp_1d, axis=1), packed=True).shape == (20, N_OUT)
        packed_2d = np.packbits(inp_2d.reshape(20, -1), axis=1)
        assert opu.fit_transform2d(packed_2d, packed=True, n_2d_features=(13, 10)).shape == (20, N_OUT)
        input_shape = tuple(opu.device.input_shape)  # the whole DMD, one feature per mirror
        assert input_shape == (96, 64)
        assert opu.fit_transform1d(np.reshape(random_bin(input_shape), -1)).shape == (N_OUT,)
        assert opu.fit_transform2d(random_bin((3,) + input_shape)).shape == (3, N_OUT)
        opu.fit2d(n_features=(5, 5), online=True)
        for _ in range(3):
            assert opu.transform(random_bin((5, 5))).shape == (N_OUT,)
