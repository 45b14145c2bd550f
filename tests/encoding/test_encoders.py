"""Encoders and decoders: round trips, threshold rules, chunking independence, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from opu_driver.encoding import BinaryThreshold, BitPlaneEncoder, TernaryEncoder, TernaryPlanes
from opu_driver.errors import ConfigurationError, InvalidInputError

finite = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=64)


def reference_codes(x: np.ndarray, scale: float, n_bits: int) -> np.ndarray:
    """Signed integer codes by the documented formula, written independently of the encoder."""
    levels = 2**n_bits - 1
    if scale == 0:
        return np.zeros(x.shape, dtype=np.int64)
    magnitude = np.abs(x.astype(np.float64))
    factor = levels / scale
    scaled = magnitude * factor if np.isfinite(factor) else magnitude / scale * levels  # subnormal scale
    q = np.minimum(levels, np.rint(scaled))
    return (np.sign(x) * q).astype(np.int64)


# ------------------------------------------------------------------------------------------ bit planes
@settings(max_examples=60, deadline=None)
@given(
    x=hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=9), elements=finite),
    n_bits=st.integers(1, 16),
)
def test_bitplanes_round_trip_is_exact_on_the_grid(x: np.ndarray, n_bits: int) -> None:
    enc = BitPlaneEncoder(n_bits).fit(x)
    planes = enc.transform(x)
    assert planes.dtype == np.uint8 and planes.shape == (n_bits, 2) + x.shape
    assert set(np.unique(planes)) <= {0, 1}
    # Sign separation: a value never has bits in both its plus and its minus planes.
    assert not np.any(planes[:, 0].any(axis=0) & planes[:, 1].any(axis=0))
    codes = reference_codes(x, enc.scale_, n_bits)
    weights = (1 << np.arange(n_bits)).reshape(-1, 1, 1)
    got_codes = (weights * (planes[:, 0].astype(np.int64) - planes[:, 1])).sum(axis=0)
    np.testing.assert_array_equal(got_codes, codes)
    levels = 2**n_bits - 1
    expected = (codes.astype(np.float64) * (enc.scale_ / levels)).astype(np.float32)
    decoded = enc.inverse_transform(planes)
    assert decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, expected)
    # Fit data is in range: rounding to nearest leaves at most half a step, scale / L / 2, plus the float32
    # rounding of the output (relative 2**-24, absolute at most 2**-126 where float32 underflows) and float64
    # rounding of the code (negligible at 1e-12 relative).
    step = enc.scale_ / levels
    bound = step / 2 + np.abs(x) * 2.0**-23 + 1e-12 * enc.scale_ + 2.0**-126
    assert np.all(np.abs(decoded.astype(np.float64) - x) <= bound)


@settings(max_examples=30, deadline=None)
@given(
    x=hnp.arrays(
        st.sampled_from([np.uint8, np.int8, np.int16, np.uint16, np.bool_, np.int32, np.int64]),
        st.tuples(st.integers(1, 6), st.integers(1, 7)),
    ),
    n_bits=st.integers(1, 12),
)
def test_bitplanes_integer_lookup_path_matches_formula(x: np.ndarray, n_bits: int) -> None:
    enc = BitPlaneEncoder(n_bits).fit(x)
    planes = enc.transform(x)
    weights = (1 << np.arange(n_bits)).reshape(-1, 1, 1)
    got = (weights * (planes[:, 0].astype(np.int64) - planes[:, 1])).sum(axis=0)
    np.testing.assert_array_equal(got, reference_codes(x.astype(np.float64), enc.scale_, n_bits))


def test_bitplane_layout_is_lsb_first_plus_then_minus() -> None:
    enc = BitPlaneEncoder(3).fit(np.array([[7.0, -7.0]]))  # scale 7, L = 7: codes equal the values
    planes = enc.transform(np.array([[5.0, -6.0]]))
    assert planes[:, 0, 0].tolist() == [[1, 0], [0, 0], [1, 0]]  # 5 = 0b101 in the plus planes of feature 0
    assert planes[:, 1, 0].tolist() == [[0, 0], [0, 1], [0, 1]]  # 6 = 0b110 in the minus planes of feature 1


def test_bitplanes_decode_projections_by_linearity() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 11))
    enc = BitPlaneEncoder(6).fit(x)
    planes = enc.transform(x)
    matrix = rng.normal(size=(11, 4))
    projected = planes.astype(np.float64) @ matrix  # (6, 2, 5, 4): each plane projected on its own
    # Same linear map applied to the decoded x: equal up to float32 output rounding (relative ~1e-7).
    np.testing.assert_allclose(
        enc.decode(projected), enc.inverse_transform(planes).astype(np.float64) @ matrix, rtol=1e-5, atol=1e-5
    )


def test_bitplanes_clip_with_one_warning_per_call() -> None:
    enc = BitPlaneEncoder(4).fit(np.array([[1.0, -2.0]]))
    x = np.array([[5.0, -9.0], [3.0, 1.0], [-4.0, 0.5]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        planes = enc.transform(x, chunk_rows=1)
    assert len([w for w in caught if issubclass(w.category, RuntimeWarning)]) == 1
    np.testing.assert_array_equal(enc.inverse_transform(planes)[:, 0], [2.0, 2.0, -2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        enc.transform(np.array([[2.0, -1.5]]))  # in range: no warning


def test_bitplanes_zero_scale_encodes_zeros() -> None:
    enc = BitPlaneEncoder(5).fit(np.zeros((3, 4)))
    assert enc.scale_ == 0.0
    assert not enc.transform(np.zeros((2, 4))).any()
    with pytest.warns(RuntimeWarning):
        planes = enc.transform(np.ones((2, 4)))
    assert not planes.any()
    assert not enc.inverse_transform(planes).any()


def test_bitplanes_out_buffer_is_reused_and_cleared() -> None:
    enc = BitPlaneEncoder(3).fit(np.array([[-4.0, 4.0]]))
    buf = np.ones((3, 2, 2, 2), dtype=np.uint8)
    x = np.array([[1.0, 2.0], [4.0, 3.0]])
    res = enc.transform(x, out=buf)
    assert res is buf
    np.testing.assert_array_equal(buf, enc.transform(x))
    with pytest.raises(InvalidInputError):
        enc.transform(x, out=np.zeros((3, 2, 1, 2), dtype=np.uint8))


# ------------------------------------------------------------------------------------------ ternary
@settings(max_examples=50, deadline=None)
@given(x=hnp.arrays(np.float64, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=finite))
def test_ternary_planes_are_disjoint_and_follow_the_threshold(x: np.ndarray) -> None:
    enc = TernaryEncoder().fit(x)
    plus, minus = enc.transform(x)
    assert plus.dtype == minus.dtype == np.uint8
    assert not np.any(plus & minus)
    t = enc.threshold_
    np.testing.assert_array_equal(plus, x > t)
    np.testing.assert_array_equal(minus, x < -t)
    np.testing.assert_array_equal(
        enc.inverse_transform(plus, minus), (t * (plus.astype(float) - minus)).astype(np.float32)
    )


def test_ternary_threshold_rules() -> None:
    x = np.array([[-10.0, 1.0, 2.0, 3.0], [4.0, -5.0, 6.0, 0.0]])
    assert TernaryEncoder(rule="fraction_of_max", value=0.3).fit(x).threshold_ == pytest.approx(3.0)
    q = TernaryEncoder(rule="quantile", value=0.5).fit(x).threshold_
    assert q == pytest.approx(np.median(np.abs(x)))  # median of 0,1,2,3,4,5,6,10 = 3.5
    assert q == pytest.approx(3.5)
    enc = TernaryEncoder(threshold=4.5, rule="quantile", value=0.9).fit(x)  # a given threshold wins
    assert enc.threshold_ == 4.5
    plus, minus = enc.transform(x)
    assert plus.tolist() == [[0, 0, 0, 0], [0, 0, 1, 0]]
    assert minus.tolist() == [[1, 0, 0, 0], [0, 1, 0, 0]]
    # Quantile level 1.0 puts t at max|e|: nothing passes the strict comparison.
    code = TernaryEncoder(rule="quantile", value=1.0).fit(x).transform(x)
    assert not code.plus.any() and not code.minus.any()
    assert isinstance(code, TernaryPlanes)


def test_ternary_all_zero_fit_gives_zero_threshold() -> None:
    enc = TernaryEncoder().fit(np.zeros((2, 3)))
    assert enc.threshold_ == 0.0
    plus, minus = enc.transform(np.array([0.0, 2.0, -1.0]))
    assert plus.tolist() == [0, 1, 0] and minus.tolist() == [0, 0, 1]


# ------------------------------------------------------------------------------------------ binary
def test_binary_threshold() -> None:
    x = np.array([[-1.0, 0.0, 0.5], [2.0, -3.0, 0.2]])
    assert BinaryThreshold().fit(x).transform(x).tolist() == [[0, 0, 1], [1, 0, 1]]
    out = BinaryThreshold(threshold=0.3).fit(x).transform(x)
    assert out.dtype == np.uint8 and out.tolist() == [[0, 0, 1], [1, 0, 0]]


# ------------------------------------------------------------------------------------------ chunking
@pytest.mark.parametrize(
    "make",
    [
        lambda: BinaryThreshold(0.1),
        lambda: TernaryEncoder(rule="quantile", value=0.4),
        lambda: BitPlaneEncoder(7),
        lambda: BitPlaneEncoder(11),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16, np.uint8])
def test_chunking_does_not_change_the_output(make, dtype) -> None:
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(23, 13)) * 50).astype(dtype)
    enc = make().fit(x)

    def arrays(res):
        return list(res) if isinstance(res, TernaryPlanes) else [res]

    reference = arrays(enc.transform(x, chunk_rows=x.shape[0]))
    for chunk_rows in (1, 7, None, 1000):
        for got, want in zip(arrays(enc.transform(x, chunk_rows=chunk_rows)), reference, strict=True):
            np.testing.assert_array_equal(got, want)


def test_one_dimensional_input_is_one_vector() -> None:
    x = np.array([[1.0, -2.0, 3.0], [0.0, 1.0, -1.0]])
    for enc in (BinaryThreshold(), TernaryEncoder(), BitPlaneEncoder(4)):
        enc.fit(x)
        one = enc.transform(x[1])
        batch = enc.transform(x)
        if isinstance(one, TernaryPlanes):
            np.testing.assert_array_equal(one.plus, batch.plus[1])
            np.testing.assert_array_equal(one.minus, batch.minus[1])
        elif isinstance(enc, BitPlaneEncoder):
            assert one.shape == (4, 2, 3)
            np.testing.assert_array_equal(one, batch[:, :, 1])
            np.testing.assert_array_equal(enc.inverse_transform(one), enc.inverse_transform(batch)[1])
        else:
            np.testing.assert_array_equal(one, batch[1])


def test_empty_batch_gives_empty_output() -> None:
    x = np.ones((3, 5))
    empty = np.empty((0, 5))
    assert BinaryThreshold().fit(x).transform(empty).shape == (0, 5)
    code = TernaryEncoder().fit(x).transform(empty)
    assert code.plus.shape == code.minus.shape == (0, 5)
    assert BitPlaneEncoder(3).fit(x).transform(empty).shape == (3, 2, 0, 5)
    assert BinaryThreshold().fit(empty).n_features_in_ == 5


# ------------------------------------------------------------------------------------------ bad input
ENCODERS = [BinaryThreshold, TernaryEncoder, BitPlaneEncoder]


@pytest.mark.parametrize("cls", ENCODERS)
def test_transform_before_fit_is_a_configuration_error(cls) -> None:
    with pytest.raises(ConfigurationError):
        cls().transform(np.ones((2, 3)))
    assert not cls().fitted and cls().fit(np.ones((2, 3))).fitted


@pytest.mark.parametrize("cls", ENCODERS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(cls, bad) -> None:
    x = np.ones((4, 3))
    x[2, 1] = bad
    with pytest.raises(InvalidInputError):
        cls().fit(x)
    enc = cls().fit(np.ones((4, 3)))
    with pytest.raises(InvalidInputError):
        enc.transform(x, chunk_rows=1)


@pytest.mark.parametrize("cls", ENCODERS)
@pytest.mark.parametrize(
    "bad",
    [
        np.ones((2, 2, 2)),
        np.float64(1.0),
        np.array([["a", "b"]]),
        np.ones((2, 2), dtype=complex),
        np.array([[None, 1]], dtype=object),
        [[1.0, 2.0], [3.0]],
    ],
)
def test_bad_shapes_and_dtypes_are_refused(cls, bad) -> None:
    with pytest.raises(InvalidInputError):
        cls().fit(bad)
    enc = cls().fit(np.ones((2, 2)))
    with pytest.raises(InvalidInputError):
        enc.transform(bad)


@pytest.mark.parametrize("cls", ENCODERS)
def test_feature_count_must_match_fit(cls) -> None:
    enc = cls().fit(np.ones((3, 4)))
    with pytest.raises(InvalidInputError):
        enc.transform(np.ones((3, 5)))
    with pytest.raises(InvalidInputError):
        enc.transform(np.ones(3))


def test_bad_settings_are_configuration_errors() -> None:
    for kwargs in ({"n_bits": 0}, {"n_bits": 17}, {"n_bits": 2.5}):
        with pytest.raises(ConfigurationError):
            BitPlaneEncoder(**kwargs)
    for kwargs in ({"rule": "median"}, {"value": 1.5}, {"threshold": -1.0}, {"threshold": float("nan")}):
        with pytest.raises(ConfigurationError):
            TernaryEncoder(**kwargs)
    with pytest.raises(ConfigurationError):
        BinaryThreshold(1.0).fit(np.ones((1, 2))).transform(np.ones((1, 2)), chunk_rows=0)


def test_fitting_data_derived_parameters_on_an_empty_batch_is_refused() -> None:
    with pytest.raises(InvalidInputError):
        BitPlaneEncoder().fit(np.empty((0, 3)))
    with pytest.raises(InvalidInputError):
        TernaryEncoder().fit(np.empty((0, 3)))
    assert TernaryEncoder(threshold=0.5).fit(np.empty((0, 3))).threshold_ == 0.5


def test_decoders_refuse_bad_planes() -> None:
    enc = BitPlaneEncoder(3).fit(np.ones((2, 4)))
    with pytest.raises(InvalidInputError):
        enc.inverse_transform(np.full((3, 2, 1, 4), 2, dtype=np.uint8))  # not binary
    with pytest.raises(InvalidInputError):
        enc.inverse_transform(np.zeros((2, 2, 1, 4), dtype=np.uint8))  # wrong number of planes
    with pytest.raises(InvalidInputError):
        enc.decode(np.full((3, 2, 1, 4), np.nan))
    tern = TernaryEncoder(threshold=1.0).fit(np.ones((2, 4)))
    with pytest.raises(InvalidInputError):
        tern.inverse_transform(np.zeros((1, 4)), np.zeros((1, 3)))
    with pytest.raises(ConfigurationError):
        BitPlaneEncoder().decode(np.zeros((8, 2, 1)))
