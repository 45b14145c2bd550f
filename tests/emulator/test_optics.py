"""The emulator's physics: options, transmission matrix, optical path, sensor and ground truth.

Statistical tests run on small geometries with fixed seeds, so they are deterministic; each tolerance is
derived from the model's own distribution (stated next to it) with a margin of about 5 standard deviations, so
a correct model passes with certainty while a wrong scale, a wrong mapping or a lost correlation fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.config import QUERY_KEYS, SimConfig
from firmware_sim.errors import SimConfigError
from firmware_sim.ground_truth import GroundTruth
from firmware_sim.optics import OpticalPath, cell_overlaps
from firmware_sim.sensor import Sensor, dn_per_electron, signal_scale_e
from firmware_sim.transmission import Transmission, interpolation_weights, mode_grid_size

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def small_config(**overrides) -> SimConfig:
    options = dict(dmd_width=64, dmd_height=48, camera_width=64, camera_height=48, cell_mirrors=8, grain_px=1.0)
    options.update(overrides)
    return SimConfig(**options)


def cell_runs(config: SimConfig) -> np.ndarray:
    """Macro-pixel layout aligned with cells: feature j is exactly cell j (whole cells only)."""
    c, width = config.cell_mirrors, config.dmd_width
    n_cols, n_rows = width // c, config.dmd_height // c
    runs = [
        (row * n_cols + col, (row * c + line) * width + col * c, c)
        for row in range(n_rows)
        for col in range(n_cols)
        for line in range(c)
    ]
    return np.array(runs, dtype=np.uint32)


def whole_dmd_runs(config: SimConfig) -> np.ndarray:
    """One feature driving every mirror."""
    return np.array([(0, 0, config.dmd_width * config.dmd_height)], dtype=np.uint32)


def scattered_runs(config: SimConfig, n_features: int, seed: int) -> np.ndarray:
    """Runs of random lengths that cross cells and rows, features in random order, some mirrors unused."""
    rng = np.random.default_rng(seed)
    runs, mirror, total = [], 0, config.dmd_width * config.dmd_height
    while mirror < total:
        length = int(min(total - mirror, rng.integers(1, 3 * config.dmd_width // 2)))
        if rng.random() < 0.8:
            runs.append((int(rng.integers(n_features)), mirror, length))
        mirror += length
    return np.array(runs, dtype=np.uint32)


def expand(runs: np.ndarray, bits: np.ndarray, n_mirrors: int) -> np.ndarray:
    """Packed raw frames equal to the firmware's expansion of feature frames (protocol 1.3)."""
    mirrors = np.zeros((bits.shape[0], n_mirrors), dtype=np.uint8)
    for feature, first, count in runs:
        mirrors[:, first : first + count] = bits[:, feature : feature + 1]
    return np.packbits(mirrors, axis=1)


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel() - a.mean()
    b = b.ravel() - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def ks_exponential(samples: np.ndarray, mean: float) -> float:
    """Kolmogorov-Smirnov distance between the samples and an exponential law of the given mean."""
    x = np.sort(samples.astype(np.float64))
    n = x.size
    cdf = 1.0 - np.exp(-x / mean)
    return float(max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n)))


# KS critical value at significance 0.001 (asymptotic Kolmogorov distribution): D < 1.949 / sqrt(n).
KS_CRITICAL_0001 = 1.949


# ============================================================================================ config
class TestConfig:
    def test_defaults_are_the_reference_device(self) -> None:
        config = SimConfig()
        assert (config.dmd_width, config.dmd_height, config.camera_width, config.camera_height) == (
            1140,
            912,
            2048,
            1088,
        )
        assert (config.exposure_us, config.frame_time_us, config.cell_mirrors, config.lag_frames) == (400, 500, 8, 0)
        assert config.noise is True and math.isinf(config.drift_tau_s)
        assert config.serial_number == "SIM-00000000"
        assert SimConfig(seed=3).serial_number == "SIM-00000003"
        assert SimConfig(seed=3, serial_number="LAB-7").serial_number == "LAB-7"

    @pytest.mark.parametrize(
        "query", ["seed=3&lag=1&noise=0", "?seed=3&lag=1&noise=false", {"seed": "3", "lag": "1", "noise": "0"}]
    )
    def test_from_query_reads_the_driver_url(self, query) -> None:
        config = SimConfig.from_query(query)
        assert (config.seed, config.lag_frames, config.noise) == (3, 1, False)
        assert config.serial_number == "SIM-00000003"

    def test_from_query_reads_every_key(self) -> None:
        config = SimConfig.from_query(
            "seed=9&dmd=64x48&camera=40x30&cell=4&grain=2.5&lag=2&noise=true&exposure_us=300&frame_time_us=900"
            "&gain=2&power_mw=20&drift_s=1.5&dark_e=7&read_noise_e=3&hot=0.01&jitter=0.1&signal_e=1000"
            "&full_well_e=5000&model=OPU-X&serial=ABC"
        )
        assert (config.dmd_width, config.dmd_height, config.camera_width, config.camera_height) == (64, 48, 40, 30)
        assert (config.cell_mirrors, config.grain_px, config.lag_frames, config.exposure_us) == (4, 2.5, 2, 300)
        assert (config.frame_time_us, config.gain, config.laser_power_mw, config.drift_tau_s) == (900, 2.0, 20.0, 1.5)
        assert (config.dark_offset_e, config.read_noise_e, config.hot_pixel_fraction) == (7.0, 3.0, 0.01)
        assert (config.laser_jitter, config.signal_e, config.full_well_e) == (0.1, 1000.0, 5000.0)
        assert (config.model, config.serial_number) == ("OPU-X", "ABC")

    @pytest.mark.parametrize(
        ("query", "key"),
        [
            ("colour=red", "colour"),
            ("seed=-1", "seed"),
            ("seed=abc", "seed"),
            ("lag=65", "lag"),
            ("lag=-1", "lag"),
            ("grain=0.5", "grain"),
            ("grain=nan", "grain"),
            ("cell=0", "cell"),
            ("dmd=0x48", "dmd"),
            ("dmd=64", "dmd"),
            ("camera=64x0", "camera"),
            ("noise=2", "noise"),
            ("drift_s=0", "drift_s"),
            ("power_mw=500", "power_mw"),
            ("exposure_us=5", "exposure_us"),
            ("model=a%2Cb", "model"),
            ("seed=1&seed=2", "seed"),
        ],
    )
    def test_from_query_refuses_bad_options_naming_the_key(self, query: str, key: str) -> None:
        with pytest.raises(SimConfigError) as info:
            SimConfig.from_query(query)
        assert repr(key) in str(info.value)

    def test_constructor_validates_too(self) -> None:
        with pytest.raises(SimConfigError, match="lag_frames"):
            SimConfig(lag_frames=100)
        with pytest.raises(SimConfigError, match="frame_time_us"):
            SimConfig(exposure_us=1000, frame_time_us=500)

    @FAST
    @given(
        seed=st.integers(0, 2**40),
        width=st.integers(16, 3000),
        height=st.integers(16, 3000),
        cell=st.integers(1, 16),
        grain=st.floats(1.0, 20.0),
        lag=st.integers(0, 64),
        noise=st.booleans(),
        exposure=st.integers(10, 10_000),
        drift=st.one_of(st.just(math.inf), st.floats(1e-3, 1e6)),
        power=st.floats(0.0, 100.0),
        model=st.text(
            st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters=","), min_size=1, max_size=20
        ),
    )
    def test_to_query_inverts_from_query(
        self, seed, width, height, cell, grain, lag, noise, exposure, drift, power, model
    ) -> None:
        config = SimConfig(
            seed=seed,
            dmd_width=width,
            dmd_height=height,
            cell_mirrors=cell,
            grain_px=grain,
            lag_frames=lag,
            noise=noise,
            exposure_us=exposure,
            frame_time_us=exposure + 77,
            drift_tau_s=drift,
            laser_power_mw=power,
            model=model,
            firmware_version=(2, 3, 4),
            hot_pixel_e=12.5,
            seq_capacity_frames=17,
            raw_queue_bytes=999,
            in_fifo_bytes=5000,
        )
        assert SimConfig.from_query(config.to_query()) == config

    def test_describe_lists_every_key(self) -> None:
        rows = SimConfig.describe()
        keys = [key for key, _, _ in rows]
        assert keys == [entry.key for entry in QUERY_KEYS]
        for key in (
            "seed",
            "dmd",
            "camera",
            "cell",
            "grain",
            "lag",
            "noise",
            "exposure_us",
            "frame_time_us",
            "gain",
            "power_mw",
            "drift_s",
            "dark_e",
            "read_noise_e",
            "hot",
            "jitter",
            "signal_e",
            "full_well_e",
            "model",
            "serial",
            "seq_capacity_frames",
            "raw_queue_bytes",
            "in_fifo_bytes",
        ):
            assert key in keys
        assert dict((key, default) for key, _, default in rows)["dmd"] == "1140x912"


# ====================================================================================== transmission
class TestTransmission:
    def test_same_seed_same_bytes(self) -> None:
        first = Transmission(7, 3000, 30, 20).block(slice(None), np.arange(600))
        second = Transmission(7, 3000, 30, 20).block(slice(None), np.arange(600))
        assert first.dtype == np.complex64 and first.shape == (3000, 600)
        assert first.tobytes() == second.tobytes()

    @pytest.mark.parametrize(("other_seed", "other_purpose"), [(8, 0), (7, 1), (2**40 + 7, 0)])
    def test_other_seed_or_purpose_is_independent(self, other_seed: int, other_purpose: int) -> None:
        base = Transmission(7, 2000, 16, 16).block(slice(None), np.arange(256)).ravel()
        other = Transmission(other_seed, 2000, 16, 16, purpose=other_purpose).block(slice(None), np.arange(256)).ravel()
        # |normalised complex correlation|^2 of independent circular Gaussians is exponential with mean 1/n:
        # exceeding (4/sqrt(n))^2 has probability exp(-16).
        coherence = abs(np.vdot(base, other)) / math.sqrt(np.vdot(base, base).real * np.vdot(other, other).real)
        assert coherence < 4 / math.sqrt(base.size)

    def test_entries_are_circular_gaussian_with_power_one_over_inputs(self) -> None:
        n_inputs = 1500
        values = Transmission(3, n_inputs, 24, 24).block(slice(None), np.arange(576)).ravel().astype(np.complex128)
        n = values.size
        power = np.abs(values) ** 2 * n_inputs
        # |R|^2 n_inputs is exponential(1): its mean has std 1/sqrt(n).
        assert abs(power.mean() - 1) < 5 / math.sqrt(n)
        # Circularity: E[R^2] = 0, and R^2 n_inputs has E|.|^2 = 2, so its mean has std sqrt(2/n).
        assert abs((values**2).mean() * n_inputs) < 5 * math.sqrt(2 / n)
        # Real and imaginary parts carry half the power each: var(Re^2 - Im^2) n^2 = 2 for unit power.
        assert abs(((values.real**2 - values.imag**2) * n_inputs).mean()) < 5 * math.sqrt(2 / n)
        assert ks_exponential(power, 1.0) < KS_CRITICAL_0001 / math.sqrt(n)

    @FAST
    @given(
        rows=st.lists(st.integers(0, 2099), min_size=1, max_size=30),
        modes=st.lists(st.tuples(st.integers(0, 18), st.integers(0, 10)), min_size=1, max_size=30),
    )
    @pytest.mark.slow
    def test_any_sub_block_matches_the_full_matrix(self, rows, modes) -> None:
        # 3 input blocks (the last partial) x 3 x 2 output tiles (the last partial).
        transmission = Transmission(11, 2100, 19, 11)
        full = FULL_BLOCK_CACHE.setdefault("m", transmission.block(slice(None), np.arange(19 * 11)))
        flat = np.array([v * 19 + u for u, v in modes])
        assert np.array_equal(transmission.block(np.array(rows), flat), full[np.ix_(rows, flat)])

    def test_values_do_not_depend_on_the_output_grid(self) -> None:
        small = Transmission(5, 1200, 13, 9)
        large = Transmission(5, 1200, 70, 55)
        us, vs = np.meshgrid(np.arange(13), np.arange(9))
        flat_small = (vs * 13 + us).ravel()
        flat_large = (vs * 70 + us).ravel()
        inputs = np.array([0, 1, 1023, 1024, 1199])
        assert np.array_equal(small.block(inputs, flat_small), large.block(inputs, flat_large))

    def test_out_of_range_is_refused(self) -> None:
        transmission = Transmission(5, 100, 10, 10)
        with pytest.raises(IndexError):
            transmission.block(np.array([100]), np.array([0]))
        with pytest.raises(IndexError):
            transmission.block(np.array([0]), np.array([100]))

    def test_interpolation_weights_are_normalised(self) -> None:
        left, w0, w1 = interpolation_weights(np.arange(50), 2.5)
        assert np.allclose(w0.astype(np.float64) ** 2 + w1.astype(np.float64) ** 2, 1, atol=1e-6)
        assert np.array_equal(left, np.floor(np.arange(50) / 2.5))
        left, w0, w1 = interpolation_weights(np.arange(50), 1.0)
        assert np.array_equal(left, np.arange(50)) and np.all(w0 == 1) and np.all(w1 == 0)
        assert mode_grid_size(2048, 2.0) == 1025 and mode_grid_size(64, 1.0) == 65


FULL_BLOCK_CACHE: dict[str, np.ndarray] = {}


# ============================================================================================ layout
@FAST
@given(
    width=st.integers(1, 40),
    height=st.integers(1, 30),
    cell=st.integers(1, 9),
    n_features=st.integers(1, 12),
    seed=st.integers(0, 2**32 - 1),
)
def test_cell_overlaps_match_a_mirror_by_mirror_count(width, height, cell, n_features, seed) -> None:
    rng = np.random.default_rng(seed)
    total = width * height
    runs, mirror = [], 0
    while mirror < total:
        length = int(rng.integers(1, max(2, 2 * width)))
        length = min(length, total - mirror)
        if rng.random() < 0.7:
            runs.append((int(rng.integers(n_features)), mirror, length))
        mirror += length
    runs = np.array(runs, dtype=np.int64).reshape(-1, 3)
    rng.shuffle(runs)
    n_cell_cols = -(-width // cell)
    n_cells = n_cell_cols * -(-height // cell)
    expected = np.zeros((n_features, n_cells), dtype=np.int64)
    for feature, first, count in runs:
        for index in range(first, first + count):
            row, col = divmod(index, width)
            expected[feature, (row // cell) * n_cell_cols + col // cell] += 1
    features, cells, counts = cell_overlaps(runs, width, height, cell)
    got = np.zeros_like(expected)
    got[features, cells] = counts
    assert np.array_equal(got, expected)
    assert np.all(counts > 0)
    assert np.all(np.diff(features * n_cells + cells) > 0)  # sorted and unique


# ============================================================================== optics: optical path
class TestSpeckle:
    @pytest.mark.parametrize("grain", [1.0, 2.5])
    @pytest.mark.parametrize("k_on", [1, 6, 40])
    def test_intensity_is_exponential_with_mean_k_over_cells(self, grain: float, k_on: int) -> None:
        config = small_config(seed=21, camera_width=128, camera_height=96, grain_px=grain)
        optics = OpticalPath(config)
        optics.set_layout(48, cell_runs(config))  # 8 x 6 cells of 8 x 8 mirrors, one feature each
        bits = np.zeros((1, 48), dtype=np.uint8)
        bits[0, np.random.default_rng(k_on).choice(48, k_on, replace=False)] = 1
        intensity = optics.intensity_features(bits, np.zeros(1))[0].astype(np.float64)
        mean = k_on / optics.n_input_modes  # k cells of unit amplitude, E|R|^2 = 1 / n_cells each
        # Independent samples: pixels with grain 1; with a larger grain, about one per output mode.
        n_independent = intensity.size / grain**2
        # Exponential: the sample mean has relative std 1/sqrt(n), the contrast std/mean has std 1/sqrt(n).
        assert abs(intensity.mean() / mean - 1) < 5 / math.sqrt(n_independent)
        assert abs(intensity.std() / intensity.mean() - 1) < 5 / math.sqrt(n_independent)
        assert ks_exponential(intensity, mean) < KS_CRITICAL_0001 / math.sqrt(n_independent)

    def test_all_mirrors_on_has_mean_one_even_with_partial_cells(self) -> None:
        config = small_config(seed=4, dmd_width=61, dmd_height=45, camera_width=160, camera_height=100)
        optics = OpticalPath(config)
        assert optics.field_scale > 1  # partial edge cells pass less light; the scale restores the unit
        optics.set_layout(1, whole_dmd_runs(config))
        intensity = optics.intensity_features(np.ones((1, 1), np.uint8), None)[0]
        assert abs(intensity.mean() - 1) < 5 / math.sqrt(intensity.size)

    def test_grain_one_pixels_are_uncorrelated(self) -> None:
        config = small_config(seed=5, camera_width=128, camera_height=96)
        optics = OpticalPath(config)
        optics.set_layout(1, whole_dmd_runs(config))
        image = optics.intensity_features(np.ones((1, 1), np.uint8), None)[0].reshape(96, 128)
        # Sample correlation of independent pairs has std ~ 1/sqrt(n pairs).
        horizontal = correlation(image[:, :-1], image[:, 1:])
        vertical = correlation(image[:-1, :], image[1:, :])
        assert abs(horizontal) < 5 / math.sqrt(image[:, 1:].size)
        assert abs(vertical) < 5 / math.sqrt(image[1:, :].size)

    def test_larger_grain_correlates_neighbours_as_the_interpolation_predicts(self) -> None:
        grain = 4.0
        config = small_config(seed=6, camera_width=192, camera_height=96, grain_px=grain)
        optics = OpticalPath(config)
        optics.set_layout(1, whole_dmd_runs(config))
        image = optics.intensity_features(np.ones((1, 1), np.uint8), None)[0].reshape(96, 192)
        # For unit-variance complex Gaussian fields, corr(|E1|^2, |E2|^2) = |E[E1 E2*]|^2 = rho^2, with rho the
        # overlap of the two pixels' normalised interpolation weights along x.
        left, w0, w1 = interpolation_weights(np.arange(192), grain)
        weights = np.zeros((192, mode_grid_size(192, grain)))
        weights[np.arange(192), left] += w0
        weights[np.arange(192), left + 1] += w1
        rho = np.sum(weights[:-1] * weights[1:], axis=1)
        expected = float(np.mean(rho**2))
        measured = correlation(image[:, :-1], image[:, 1:])
        n_modes = image.size / grain**2  # independent samples: about one per output mode
        assert abs(measured - expected) < 5 / math.sqrt(n_modes)
        assert measured > 0.5


class TestOpticalPath:
    def test_features_match_the_ground_truth(self) -> None:
        config = small_config(seed=8, dmd_width=60, dmd_height=44, camera_width=70, camera_height=50, grain_px=2.5)
        optics = OpticalPath(config)
        optics.set_roi(5, 7, 41, 23)
        runs = scattered_runs(config, 29, seed=1)
        optics.set_layout(29, runs)
        bits = (np.random.default_rng(2).random((12, 29)) < 0.5).astype(np.uint8)
        got = optics.intensity_features(bits, None)
        expected = optics.ground_truth.expected_intensity_features(bits)
        # float32 sums over at most n_cells terms: relative error ~1e-6; a wrong mapping or weight is O(1).
        assert got.shape == (12, 41 * 23) and got.dtype == np.float32
        assert np.abs(got - expected).max() < 1e-4 * expected.mean()

    def test_switching_back_to_a_recent_layout_reuses_its_fold_and_gives_the_same_intensities(self) -> None:
        # A driver that alternates layouts finds the earlier one folded already: the same intensities bit for bit,
        # and the same as a fresh emulator's; a new ROI folds afresh.
        config = small_config(seed=8, dmd_width=60, dmd_height=44, camera_width=70, camera_height=50, grain_px=2.5)
        layouts = [(29, scattered_runs(config, 29, seed=1)), (17, scattered_runs(config, 17, seed=2))]
        bits = {n: (np.random.default_rng(n).random((6, n)) < 0.5).astype(np.uint8) for n, _ in layouts}
        fresh = {}
        for n, runs in layouts:
            alone = OpticalPath(config)
            alone.set_layout(n, runs)
            fresh[n] = alone.intensity_features(bits[n], None)
        optics = OpticalPath(config)
        for n, runs in layouts + layouts:
            optics.set_layout(n, runs)
            np.testing.assert_array_equal(optics.intensity_features(bits[n], None), fresh[n])
        folded = optics._folded
        optics.set_layout(*layouts[0])
        optics.set_layout(*layouts[1])
        assert optics._folded is folded  # kept, not folded again
        optics.set_roi(5, 7, 41, 23)
        expected = optics.ground_truth.expected_intensity_features(bits[17])
        assert np.abs(optics.intensity_features(bits[17], None) - expected).max() < 1e-4 * expected.mean()

    @pytest.mark.parametrize("grain", [1.0, 2.5])
    def test_raw_frame_equals_expanded_feature_frame(self, grain: float) -> None:
        config = small_config(seed=9, dmd_width=60, dmd_height=44, camera_width=50, camera_height=40, grain_px=grain)
        optics = OpticalPath(config)
        optics.set_roi(3, 4, 37, 29)
        runs = scattered_runs(config, 23, seed=3)
        optics.set_layout(23, runs)
        bits = (np.random.default_rng(4).random((9, 23)) < 0.4).astype(np.uint8)
        from_features = optics.intensity_features(bits, None)
        from_raw = optics.intensity_raw(expand(runs, bits, 60 * 44), None)
        # Same physics through two float32 paths (sparse fold vs dense product): ~1e-6 relative.
        assert np.abs(from_raw - from_features).max() < 1e-4 * from_features.mean()

    def test_cell_amplitudes_match_the_ground_truth(self) -> None:
        config = small_config(dmd_width=37, dmd_height=29, cell_mirrors=5)
        optics = OpticalPath(config)
        mirrors = (np.random.default_rng(5).random((4, 37 * 29)) < 0.5).astype(np.uint8)
        got = optics.cell_amplitudes(np.packbits(mirrors, axis=1))
        assert np.allclose(got, optics.ground_truth.cell_amplitudes(mirrors), rtol=2e-7, atol=0)  # 1 ulp

    def test_a_pixel_sees_the_same_field_whatever_the_roi_or_sensor_size(self) -> None:
        config = small_config(seed=10, grain_px=2.5, camera_width=80, camera_height=60)
        larger = small_config(seed=10, grain_px=2.5, camera_width=150, camera_height=90)
        pixels = np.array([[20, 30], [21, 30], [50, 11], [79, 59]])
        reference = OpticalPath(config).ground_truth.transmission(None, pixels)
        assert np.array_equal(OpticalPath(larger).ground_truth.transmission(None, pixels), reference)

        runs = scattered_runs(config, 11, seed=6)
        bits = (np.random.default_rng(7).random((5, 11)) < 0.5).astype(np.uint8)
        images = []
        for camera, roi in ((config, (10, 20, 60, 30)), (config, (18, 25, 5, 8)), (larger, (0, 0, 150, 90))):
            optics = OpticalPath(camera)
            optics.set_roi(*roi)
            optics.set_layout(11, runs)
            x, y, w, h = roi
            images.append((roi, optics.intensity_features(bits, None).reshape(5, h, w)))
        (x0, y0, _, _), first = images[0]
        for (x, y, _, _), image in images[1:]:
            # pixels (18..22, 25..32) lie in every ROI
            a = first[:, 25 - y0 : 33 - y0, 18 - x0 : 23 - x0]
            b = image[:, 25 - y : 33 - y, 18 - x : 23 - x]
            assert np.abs(a - b).max() < 1e-4 * first.mean()

    def test_results_do_not_depend_on_batching(self) -> None:
        config = small_config(seed=12, grain_px=2.0, drift_tau_s=0.05)
        optics = OpticalPath(config)
        optics.set_roi(4, 4, 40, 30)
        runs = scattered_runs(config, 17, seed=8)
        optics.set_layout(17, runs)
        bits = (np.random.default_rng(9).random((11, 17)) < 0.5).astype(np.uint8)
        times = np.arange(11) * 500.0
        packed = expand(runs, bits, 64 * 48)
        whole = optics.intensity_features(bits, times)
        whole_raw = optics.intensity_raw(packed, times)
        for size in (1, 2, 5):
            parts = [optics.intensity_features(bits[i : i + size], times[i : i + size]) for i in range(0, 11, size)]
            assert np.concatenate(parts).tobytes() == whole.tobytes()
            parts = [optics.intensity_raw(packed[i : i + size], times[i : i + size]) for i in range(0, 11, size)]
            assert np.concatenate(parts).tobytes() == whole_raw.tobytes()

    @pytest.mark.parametrize("n_features", [9, 200])
    def test_streamed_fold_cells_and_uncached_raw_agree_with_cached(self, n_features: int) -> None:
        # Without a cached fold, 9 features (fewer than the 48 cells) refold per batch; 200 features go through the
        # cell amplitudes. Both, and the same mirrors sent as raw frames without a cached transmission, must give
        # what the cached fold gives.
        config = small_config(seed=13, grain_px=1.5, drift_tau_s=0.01)
        runs = scattered_runs(config, n_features, seed=10)
        bits = (np.random.default_rng(11).random((6, n_features)) < 0.5).astype(np.uint8)
        times = np.arange(6) * 1000.0
        results = []
        for cache_bytes in (2**30, 0):
            optics = OpticalPath(config, fold_cache_bytes=cache_bytes, raw_cache_bytes=cache_bytes)
            optics.set_roi(2, 3, 50, 33)
            optics.set_layout(n_features, runs)
            results.append(
                (optics.intensity_features(bits, times), optics.intensity_raw(expand(runs, bits, 64 * 48), times))
            )
        cached = results[0][0]
        for other in (results[0][1], *results[1]):
            assert np.abs(cached - other).max() < 1e-4 * cached.mean()

    def test_dark_frames_and_unused_features(self) -> None:
        config = small_config(seed=14)
        optics = OpticalPath(config)
        runs = np.array([(0, 0, 100), (2, 500, 64)], dtype=np.uint32)  # feature 1 drives no mirror
        optics.set_layout(3, runs)
        assert np.array_equal(optics.intensity_features(np.array([[0, 1, 0]]), None), np.zeros((1, 64 * 48)))
        assert np.array_equal(optics.intensity_raw(np.zeros((2, 64 * 48 // 8), np.uint8), None), np.zeros((2, 64 * 48)))
        assert np.array_equal(optics.intensity_blank(3), np.zeros((3, 64 * 48), np.float32))
        assert optics.intensity_features(np.array([[1, 0, 0]]), None).mean() > 0

    def test_bad_calls_are_refused(self) -> None:
        optics = OpticalPath(small_config())
        with pytest.raises(RuntimeError):
            optics.intensity_features(np.zeros((1, 3)), None)
        with pytest.raises(ValueError):
            optics.set_roi(60, 0, 10, 10)
        with pytest.raises(ValueError):
            optics.set_layout(2, np.array([(2, 0, 5)]))
        optics.set_layout(2, np.array([(1, 0, 5)]))
        with pytest.raises(ValueError):
            optics.intensity_features(np.zeros((1, 3)), None)
        with pytest.raises(ValueError):
            optics.intensity_raw(np.zeros((1, 10), np.uint8), None)
        optics.clear_layout()
        with pytest.raises(RuntimeError):
            optics.intensity_features(np.zeros((1, 2)), None)


class TestDrift:
    def test_transmission_correlation_decays_as_exp_minus_t_over_tau(self) -> None:
        tau_s = 0.02
        config = small_config(seed=15, drift_tau_s=tau_s, grain_px=1.0)
        truth = OpticalPath(config).ground_truth
        at_rest = truth.transmission(roi=(0, 0, 40, 30)).ravel()
        for time_us in (0.0, 5_000.0, 20_000.0, 60_000.0):
            moved = truth.transmission(roi=(0, 0, 40, 30), time_us=time_us).ravel()
            measured = np.vdot(at_rest, moved).real / np.vdot(at_rest, at_rest).real
            # R(t) = c R0 + s R1 with R1 independent of R0: the estimate is c + s * noise of std 1/sqrt(2n).
            assert abs(measured - math.exp(-time_us * 1e-6 / tau_s)) < 5 / math.sqrt(at_rest.size)
            # The power is preserved: c^2 + s^2 = 1.
            assert abs(np.vdot(moved, moved).real / np.vdot(at_rest, at_rest).real - 1) < 5 * math.sqrt(
                2 / at_rest.size
            )

    @pytest.mark.slow
    def test_optical_path_intensities_decorrelate_like_the_field_squared(self) -> None:
        tau_s = 0.01
        config = small_config(seed=16, drift_tau_s=tau_s, camera_width=96, camera_height=64)
        optics = OpticalPath(config)
        optics.set_layout(1, whole_dmd_runs(config))
        times = np.array([0.0, 3_000.0, 10_000.0, 50_000.0])
        frames = optics.intensity_features(np.ones((4, 1), np.uint8), times)
        raw = optics.intensity_raw(np.full((4, 64 * 48 // 8), 255, np.uint8), times)
        for index, time_us in enumerate(times):
            expected = math.exp(-2 * time_us * 1e-6 / tau_s)  # speckle intensity correlation = |field corr|^2
            assert abs(correlation(frames[0], frames[index]) - expected) < 5 / math.sqrt(frames.shape[1])
        assert np.abs(raw - frames).max() < 1e-4 * frames.mean()
        expected = optics.ground_truth.expected_intensity_features(np.ones((1, 1)), 10_000.0)[0]
        assert np.abs(frames[2] - expected).max() < 1e-4 * expected.mean()

    def test_no_drift_ignores_time(self) -> None:
        config = small_config(seed=17)
        optics = OpticalPath(config)
        optics.set_layout(1, whole_dmd_runs(config))
        frames = optics.intensity_features(np.ones((2, 1), np.uint8), np.array([0.0, 1e12]))
        assert frames[0].tobytes() == frames[1].tobytes()


# ============================================================================================ sensor
class TestSensor:
    def test_noise_off_is_exact_rounding_of_the_signal(self) -> None:
        config = small_config(noise=False)
        sensor = Sensor(config)
        intensity = np.random.default_rng(1).exponential(0.5, (6, 64 * 48)).astype(np.float32)
        intensity[0, :10] = 100.0  # saturates
        kwargs = dict(roi=(0, 0, 64, 48), exposure_us=300, gain=2.0, laser_power_mw=40.0, light_on=True, bits=10)
        counts = sensor.capture(intensity, frame_indices=np.arange(6), **kwargs)
        scale = signal_scale_e(config, 300, 40.0) * dn_per_electron(config, 2.0, 10)
        ideal = np.clip(intensity.astype(np.float64) * scale, 0, 1023)
        assert counts.dtype == np.uint16 and counts.shape == (6, 64 * 48)
        # Exact rounding up to float32 representation of the product (|error| < 1e-4 DN at these levels).
        assert np.all(np.abs(counts - ideal) <= 0.5 + 1e-4)
        assert np.all(counts[0, :10] == 1023)
        assert np.array_equal(sensor.capture(intensity, frame_indices=np.arange(100, 106), **kwargs), counts)
        kwargs["light_on"] = False
        assert not sensor.capture(intensity, frame_indices=np.arange(6), **kwargs).any()
        assert not OpticalPath(config).ground_truth.dark_pattern_e.any()

    def test_dark_frames_average_to_pattern_plus_dark_current(self) -> None:
        config = small_config(seed=18, hot_pixel_fraction=0.02, hot_pixel_e=150.0, camera_width=96, camera_height=64)
        sensor = Sensor(config)
        roi, n_frames, exposure_us, gain, bits = (10, 5, 48, 20), 200, 800, 16.0, 12
        counts = sensor.capture(
            np.full((n_frames, 48 * 20), 5.0, np.float32),
            roi=roi,
            frame_indices=np.arange(n_frames),
            exposure_us=exposure_us,
            gain=gain,
            laser_power_mw=50.0,
            light_on=False,
            bits=bits,
        )
        truth = OpticalPath(config).ground_truth
        hot = truth.hot_pixels[5:25, 10:58].ravel()
        assert 0 < hot.sum() < hot.size / 10
        expected_e = (
            truth.dark_pattern_e[5:25, 10:58].ravel().astype(np.float64)
            + config.dark_current_e_per_s * exposure_us * 1e-6
            + hot * config.hot_pixel_e * exposure_us / 400
        )
        measured_e = counts.mean(axis=0) / dn_per_electron(config, gain, bits)
        # Per pixel: shot (Poisson, variance = mean) and read noise; the mean of n frames has std
        # sqrt(mean + read^2) / sqrt(n). At 6.6 DN per electron the ADC rounding is negligible.
        bound = 5 * np.sqrt(expected_e + config.read_noise_e**2) / math.sqrt(n_frames)
        assert np.all(np.abs(measured_e - expected_e) < bound)
        # Over all pixels the same bound shrinks by sqrt(n_px): it resolves the 1.6 e- of dark current.
        pooled = 5 * math.sqrt(np.mean(expected_e + config.read_noise_e**2) / (n_frames * expected_e.size))
        assert abs(np.mean(measured_e - expected_e)) < pooled
        # The per-pixel variance matches too: pooled over pixels, the relative std of the estimate is
        # sqrt(2 / ((n - 1) n_px)) ~ 0.3 %, plus Poisson excess kurtosis: 3 % is > 5 sigma.
        variance_e = counts.var(axis=0, ddof=1) / dn_per_electron(config, gain, bits) ** 2
        expected_variance = expected_e + config.read_noise_e**2
        assert abs(variance_e.mean() / expected_variance.mean() - 1) < 0.03
        # A fixed pattern: it does not average away and it is the ground truth's.
        assert correlation(measured_e[~hot], expected_e[~hot]) > 0.9

    def test_bright_frames_have_shot_noise_and_jitter(self) -> None:
        config = small_config(seed=19, laser_jitter=0.0, hot_pixel_fraction=0.0)
        sensor = Sensor(config)
        n_frames, intensity = 300, 0.5
        kwargs = dict(roi=(0, 0, 32, 16), exposure_us=400, gain=1.0, laser_power_mw=50.0, light_on=True, bits=12)
        counts = sensor.capture(
            np.full((n_frames, 512), intensity, np.float32), frame_indices=np.arange(n_frames), **kwargs
        )
        to_dn = dn_per_electron(config, 1.0, 12)
        signal_e = intensity * config.signal_e
        dark = sensor.dark_mean_e((0, 0, 32, 16), 400).astype(np.float64)
        mean_e = signal_e + dark
        # Gaussian branch of the shot noise (mean >> 30 e-): variance = mean + read^2 (+ 1/12 DN^2 rounding).
        measured_var = counts.var(axis=0, ddof=1).mean() / to_dn**2
        expected_var = (mean_e + config.read_noise_e**2).mean() + 1 / 12 / to_dn**2
        assert abs(measured_var / expected_var - 1) < 5 * math.sqrt(2 / ((n_frames - 1) * 512))
        assert abs(counts.mean() / to_dn - mean_e.mean()) < 5 * math.sqrt(expected_var / counts.size)

        jittery = Sensor(small_config(seed=19, laser_jitter=0.05, hot_pixel_fraction=0.0))
        counts = jittery.capture(
            np.full((n_frames, 512), intensity, np.float32), frame_indices=np.arange(n_frames), **kwargs
        )
        frame_means = counts.mean(axis=1) / to_dn - dark.mean()
        # Frame to frame, the signal scales by 1 + 0.05 N(0, 1); shot noise adds sqrt(mean/512) per frame mean.
        spread = frame_means.std(ddof=1) / signal_e
        expected_spread = math.sqrt(0.05**2 + mean_e.mean() / 512 / signal_e**2)
        assert abs(spread / expected_spread - 1) < 5 / math.sqrt(2 * (n_frames - 1))

    def test_noise_is_reproducible_per_frame_number_whatever_the_batching(self) -> None:
        sensor = Sensor(small_config(seed=20))
        intensity = np.random.default_rng(2).exponential(0.3, (10, 300)).astype(np.float32)
        kwargs = dict(roi=(1, 2, 30, 10), exposure_us=400, gain=1.0, laser_power_mw=50.0, light_on=True, bits=8)
        whole = sensor.capture(intensity, frame_indices=np.arange(40, 50), **kwargs)
        parts = [
            sensor.capture(intensity[i : i + 3], frame_indices=np.arange(40 + i, min(50, 43 + i)), **kwargs)
            for i in range(0, 10, 3)
        ]
        assert np.concatenate(parts).tobytes() == whole.tobytes()
        assert (
            Sensor(small_config(seed=20)).capture(intensity, frame_indices=np.arange(40, 50), **kwargs).tobytes()
            == whole.tobytes()
        )
        assert not np.array_equal(sensor.capture(intensity, frame_indices=np.arange(50, 60), **kwargs), whole)
        assert not np.array_equal(
            Sensor(small_config(seed=21)).capture(intensity, frame_indices=np.arange(40, 50), **kwargs), whole
        )

    def test_dark_pattern_is_fixed_per_absolute_pixel(self) -> None:
        sensor = Sensor(small_config(seed=22))
        whole = sensor.dark_mean_e((0, 0, 64, 48), 400).reshape(48, 64)
        part = sensor.dark_mean_e((10, 20, 7, 5), 400).reshape(5, 7)
        assert np.array_equal(part, whole[20:25, 10:17])
        assert np.array_equal(Sensor(small_config(seed=22)).dark_pattern_e, sensor.dark_pattern_e)
        assert not np.array_equal(Sensor(small_config(seed=23)).dark_pattern_e, sensor.dark_pattern_e)

    def test_bad_arguments_are_refused(self) -> None:
        sensor = Sensor(small_config())
        kwargs = dict(exposure_us=400, gain=1.0, laser_power_mw=50.0, light_on=True, bits=8)
        with pytest.raises(ValueError):
            sensor.capture(np.zeros((1, 10), np.float32), roi=(0, 0, 5, 3), frame_indices=[0], **kwargs)
        with pytest.raises(ValueError):
            sensor.capture(np.zeros((1, 15), np.float32), roi=(60, 0, 5, 3), frame_indices=[0], **kwargs)
        with pytest.raises(ValueError):
            sensor.capture(np.zeros((1, 15), np.float32), roi=(0, 0, 5, 3), frame_indices=[-1], **kwargs)


# ====================================================================================== ground truth
def test_ground_truth_exposes_the_hidden_parameters() -> None:
    config = small_config(seed=24, lag_frames=3, grain_px=2.0, dmd_width=60, dmd_height=44)
    optics = OpticalPath(config)
    truth = optics.ground_truth
    assert isinstance(truth, GroundTruth)
    assert truth.config is config and truth.lag_frames == 3 and truth.grain_px == 2.0
    assert truth.cell_grid_shape == (6, 8) and truth.n_input_modes == 48
    assert truth.mode_grid_shape == (mode_grid_size(48, 2.0), mode_grid_size(64, 2.0))
    assert truth.noise.read_noise_e == config.read_noise_e and truth.noise.enabled
    assert truth.dark_pattern_e.shape == (48, 64) and truth.dark_pattern_e.dtype == np.float32
    assert truth.hot_pixels.shape == (48, 64) and truth.hot_pixels.dtype == bool
    optics.set_roi(2, 3, 10, 7)
    optics.set_layout(2, np.array([(0, 0, 120), (1, 300, 50)], dtype=np.uint32))
    matrix = truth.feature_matrix()
    assert matrix.shape == (2, 70) and matrix.dtype == np.complex64
    assert truth.transmission().shape == (48, 70)
    expected = np.abs(matrix[0] + matrix[1]) ** 2
    assert np.allclose(truth.expected_intensity_features(np.array([[1, 1]]))[0], expected, rtol=1e-5)
