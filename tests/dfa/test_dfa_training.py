"""DFA training helpers (dfa_client.dfa), the numpy network (dfa_client.nn), the data sets and the training CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import dfa_client
from dfa_client.dfa import FeedbackProjection, alignment_angle, ternarize, ternary_scales
from dfa_client.errors import InvalidInputError
from dfa_client.nn import MLP, TrainSettings

pytest.importorskip("sklearn", reason="the digits data set needs scikit-learn (the train or test extra)")

from dfa_client.data import load_digits
from tests.support import REPO_ROOT, small_sim

ROOT = REPO_ROOT
# A small emulator (fast) at an exposure that keeps frames below saturation; MONO12 for fine quantisation.
OPTICAL_SIM = small_sim("exposure_us=200&seed=3")


@pytest.fixture(scope="module")
def digits():
    return load_digits(seed=0)


# -- ternarisation ------------------------------------------------------------------------------------------
def test_ternarize_keeps_signs_of_entries_at_or_above_the_fraction_of_the_row_maximum():
    e = np.array(
        [[0.5, -0.2, 0.05, -0.5, 0.0, 0.15], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [-0.01, 0.002, 0.003, 0.0, 0.0, 0.0]]
    )
    codes = ternarize(e, threshold=0.3, rule="max")
    assert codes.dtype == np.int8
    # row 0: cut 0.15 (kept: 0.15 itself, the boundary is inclusive); row 1: zeros; row 2: cut 0.003 (scale-free)
    assert codes.tolist() == [[1, -1, 0, -1, 0, 1], [0, 0, 0, 0, 0, 0], [-1, 0, 1, 0, 0, 0]]
    assert ternarize(e * 1e-6, 0.3).tolist() == codes.tolist()  # the max rule is scale-free
    assert ternarize(e[0], 0.3).tolist() == codes[0].tolist()  # 1-D in, 1-D out
    assert ternarize(e, 0.1, rule="absolute").tolist() == [[1, -1, 0, -1, 0, 1], [0] * 6, [0] * 6]
    # the largest entry of a nonzero row always survives the max rule, even at threshold 1
    rng = np.random.default_rng(0)
    E = rng.standard_normal((50, 10))
    assert (np.abs(ternarize(E, 1.0)).sum(axis=1) == 1).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(threshold=0.0),
        dict(threshold=1.5),
        dict(threshold=float("nan")),
        dict(threshold=True),
        dict(rule="median"),
        dict(threshold=-1, rule="absolute"),
    ],
)
def test_ternarize_refuses_bad_rules_and_thresholds(kwargs):
    with pytest.raises(InvalidInputError):
        ternarize(np.ones((2, 3)), **kwargs)


def test_ternarize_refuses_nan_inf_and_bad_shapes():
    for bad in (np.array([[1.0, np.nan]]), np.array([[np.inf, 0.0]]), np.ones((2, 2, 2)), np.array([["a"]])):
        with pytest.raises(InvalidInputError):
            ternarize(bad)


def test_ternary_scales_are_the_least_squares_row_scale():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((20, 10))
    T = ternarize(E, 0.3)
    s = ternary_scales(E, T)
    # the residual |e - s t|^2 is smallest at s: a little off either side it grows
    for row in range(20):
        best = np.sum((E[row] - s[row] * T[row]) ** 2)
        for ds in (-1e-3, 1e-3):
            assert np.sum((E[row] - (s[row] + ds) * T[row]) ** 2) > best
    assert ternary_scales(np.zeros((1, 3)), np.zeros((1, 3), dtype=np.int8)).tolist() == [0.0]


# -- one projection, sliced and scaled ----------------------------------------------------------------------
def test_feedback_slices_one_projection_per_batch_and_scales_each_slice():
    with dfa_client.connect("digital://?seed=5", n_components=30, n_features=4) as projector:
        B = projector.matrix.astype(np.float64)
        E = np.random.default_rng(2).standard_normal((7, 4))
        feedback = FeedbackProjection(projector, [12, 18])
        parts = feedback(E)
        assert projector.vectors_projected == 7  # one call for both layers
        assert [p.shape for p in parts] == [(7, 12), (7, 18)] and all(p.dtype == np.float32 for p in parts)
        # "classes" scale: 1/sqrt(n_classes) = 1/2 on every slice
        np.testing.assert_allclose(parts[0], E @ B[:, :12] / 2, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(parts[1], E @ B[:, 12:] / 2, rtol=1e-5, atol=1e-6)
        width = FeedbackProjection(projector, [12, 18], scale="width")(E)
        np.testing.assert_allclose(width[1], E @ B[:, 12:] / math.sqrt(18), rtol=1e-5, atol=1e-6)
        given = FeedbackProjection(projector, [12, 18], scale=[1.0, 3.0])
        np.testing.assert_allclose(given(E)[1], 3 * E @ B[:, 12:], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(given.dense_matrix(), np.hstack([B[:, :12], 3 * B[:, 12:]]), rtol=1e-6)
        # a projector wider than the layers is sliced from its first output
        narrow = FeedbackProjection(projector, [5, 5])(E)
        np.testing.assert_allclose(narrow[1], E @ B[:, 5:10] / 2, rtol=1e-5, atol=1e-6)


def test_ternary_feedback_projects_the_codes_centres_and_rescales_rows():
    with dfa_client.connect("digital://?seed=6", n_components=8, n_features=5) as projector:
        B = projector.matrix.astype(np.float64)
        E = np.random.default_rng(3).standard_normal((6, 5))
        T = ternarize(E, 0.3)
        centred = T - T.mean(axis=1, keepdims=True)
        default = FeedbackProjection(projector, [8], encoding="ternary", threshold=0.3)
        np.testing.assert_allclose(
            default.project(E), ternary_scales(E, centred)[:, None] * (centred @ B) / math.sqrt(5), rtol=1e-5, atol=1e-6
        )
        assert projector.vectors_projected == 7  # the codes and the all-ones vector, in one call
        scaled = FeedbackProjection(projector, [8], encoding="ternary", centre=False).project(E)
        np.testing.assert_allclose(scaled, ternary_scales(E, T)[:, None] * (T @ B) / math.sqrt(5), rtol=1e-5, atol=1e-6)
        raw = FeedbackProjection(projector, [8], encoding="ternary", rescale=False, centre=False).project(E)
        np.testing.assert_allclose(raw, (T @ B) / math.sqrt(5), rtol=1e-5, atol=1e-6)
        assert FeedbackProjection(projector, [8], encoding="ternary").dense_matrix() is None


def test_stochastic_ternary_codes_are_an_unbiased_estimate_of_the_error():
    """A softmax-like error (one large entry, many small ones): max|e| t has mean e over draws. Over n draws an
    entry's estimate has sd sqrt(max|e| |e_k| - e_k^2) / sqrt(n): 5 sd bounds every entry. The largest entry is
    always kept, signs are the error's, and a seed repeats the draws."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal(65)
    e = np.exp(logits) / np.exp(logits).sum()
    e[7] -= 1.0
    n = 20_000
    codes = ternarize(np.tile(e, (n, 1)), rule="stochastic", rng=np.random.default_rng(1))
    assert set(np.unique(codes)) <= {-1, 0, 1} and (codes[:, 7] == -1).all()
    assert (codes * np.sign(e) >= 0).all()
    top = np.abs(e).max()
    estimate = top * codes.mean(axis=0)
    sd = np.sqrt(top * np.abs(e) - e**2) / math.sqrt(n)
    assert (np.abs(estimate - e) <= 5 * sd + 1e-12).all()
    # the deterministic rule keeps only the large entry: its estimate of the small ones is 0 (biased)
    assert (ternarize(e, 0.3) != 0).sum() == 1
    again = ternarize(np.tile(e, (3, 1)), rule="stochastic", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(again, codes[:3])


def test_stochastic_feedback_scales_each_row_by_its_largest_error():
    with dfa_client.connect("digital://?seed=6", n_components=8, n_features=5) as projector:
        B = projector.matrix.astype(np.float64)
        E = np.random.default_rng(3).standard_normal((6, 5))
        feedback = FeedbackProjection(projector, [8], encoding="ternary", rule="stochastic", centre=False, seed=4)
        T = ternarize(E, rule="stochastic", rng=np.random.default_rng(4))
        expected = np.abs(E).max(axis=1, keepdims=True) * (T @ B) / math.sqrt(5)
        np.testing.assert_allclose(feedback.project(E), expected, rtol=1e-5, atol=1e-6)


def test_feedback_refuses_bad_settings_and_bad_errors_before_sending():
    with dfa_client.connect("digital://?seed=1", n_components=10, n_features=3) as projector:
        for kwargs in (
            dict(layer_sizes=[6, 6]),
            dict(layer_sizes=[]),
            dict(layer_sizes=[0, 4]),
            dict(layer_sizes=[5], scale="fan"),
            dict(layer_sizes=[5, 5], scale=[1.0]),
            dict(layer_sizes=[5], scale=-1.0),
            dict(layer_sizes=[5], encoding="binary"),
            dict(layer_sizes=[5], encoding="ternary", threshold=2.0),
        ):
            with pytest.raises(InvalidInputError):
                FeedbackProjection(projector, **kwargs)
        feedback = FeedbackProjection(projector, [5, 5], encoding="ternary")
        for bad in (np.array([[0.1, np.nan, 0.0]]), np.ones((2, 4))):
            with pytest.raises(InvalidInputError):
                feedback(bad)
        assert projector.vectors_projected == 0


def test_seeded_feedback_is_reproducible_and_seeds_differ():
    E = np.random.default_rng(4).standard_normal((5, 10))

    def project(seed: int) -> np.ndarray:
        with dfa_client.connect(f"digital://?seed={seed}", n_components=64, n_features=10) as projector:
            return FeedbackProjection(projector, [32, 32]).project(E)

    np.testing.assert_array_equal(project(7), project(7))
    assert np.corrcoef(project(7).ravel(), project(8).ravel())[0, 1] < 0.3  # independent B: correlation ~ 0


def test_real_errors_through_bit_planes_on_the_emulator():
    """encoding="real" on an optical projector goes through its n_bits bit planes; the error shrinks with n_bits.

    noise=0 and MONO12 leave the bit planes' own quantisation: each entry is rounded to a step of
    max|e| / (2^n - 1), an error of rms step / sqrt(12), which B (unit-variance entries) carries into every
    output with the same ratio to the signal: rel = step / sqrt(12) / rms(e). We allow twice that, plus 1% for
    the camera's 12-bit rounding (measured: 0.7% at 8 bits, where the planes' share is 0.3%).
    """
    rng = np.random.default_rng(5)
    E = 0.1 * rng.standard_normal((20, 10))
    errors = {}
    for n_bits in (4, 6):
        with dfa_client.connect(
            OPTICAL_SIM + "&noise=0", n_components=48, n_features=10, n_bits=n_bits, pixel_format="MONO12"
        ) as projector:
            feedback = FeedbackProjection(projector, [32, 16], scale=1.0)
            B = feedback.project(np.eye(10))  # one-hot rows are ternary: the device's B itself, column by column
            P = feedback.project(E)
            reference = E @ B.astype(np.float64)
            errors[n_bits] = math.sqrt(((P - reference) ** 2).mean() / (reference**2).mean())
            step = np.abs(E).max() / (2**n_bits - 1)
            bound = 2 * step / math.sqrt(12) / math.sqrt((E**2).mean()) + 0.01
            assert errors[n_bits] < bound, (n_bits, errors[n_bits], bound)
    assert errors[6] < errors[4]


# -- the numpy network --------------------------------------------------------------------------------------
def test_backprop_gradients_match_finite_differences():
    rng = np.random.default_rng(6)
    net = MLP([5, 4, 3, 3], activation="tanh", seed=1, dtype=np.float64)
    X, y = rng.standard_normal((8, 5)), rng.integers(0, 3, 8)
    grads = net.backprop_gradients(X, y)
    h = 1e-6
    for layer in range(3):
        for index in [(0, 0), (1, 2), (2, 1)]:
            W = net.weights[layer]
            if index[0] >= W.shape[0] or index[1] >= W.shape[1]:
                continue
            W[index] += h
            up = net.loss(X, y)
            W[index] -= 2 * h
            down = net.loss(X, y)
            W[index] += h
            # central differences: error O(h^2) ~ 1e-12, plus rounding ~ 1e-16 / h = 1e-10
            assert abs((up - down) / (2 * h) - grads[layer].weight[index]) < 1e-7


def test_dfa_update_uses_the_projection_for_hidden_layers_and_the_true_gradient_for_the_last():
    rng = np.random.default_rng(7)
    net = MLP([6, 5, 4, 3], seed=2, dtype=np.float64)
    X, y = rng.standard_normal((9, 6)), rng.integers(0, 3, 9)
    true = net.backprop_gradients(X, y)
    with dfa_client.connect("digital://?seed=3", n_components=9, n_features=3) as projector:
        feedback = FeedbackProjection(projector, net.hidden_sizes)
        dfa = net.dfa_gradients(X, y, feedback)
        # by hand: delta_l = (B_l e) * (1 - h_l^2), dW_l = h_{l-1}^T delta_l / n
        logits = net.forward(X)
        e = net.output_error(logits, y)
        h1 = np.tanh(X @ net.weights[0] + net.biases[0])
        delta = feedback(e)[0] * (1 - h1**2)
    np.testing.assert_allclose(dfa[0].weight, X.T @ delta / 9, rtol=1e-6)
    np.testing.assert_allclose(dfa[-1].weight, true[-1].weight)
    assert not np.allclose(dfa[1].weight, true[1].weight)
    with pytest.raises(InvalidInputError):
        net.dfa_gradients(X, y, lambda e: [np.zeros((9, 5))])  # one projection for two hidden layers


def test_numpy_dfa_learns_digits_and_aligns_with_backprop(digits):
    """5 epochs of a 64-64-64-10 tanh network on the 8x8 digits (1,438 train / 359 test images).

    Measured over seeds 0-4: backprop 93-96 %, DFA 92-94 %; chance is 10 %. The bound of 80 % sits more than
    7 binomial standard deviations (sqrt(0.93 * 0.07 / 359) = 1.3 points) below DFA's worst seed, and far above
    what an update with no useful direction gives (the loss does not fall; accuracy stays near chance).
    Alignment: at initialisation B is independent of the forward weights, so the DFA and backprop updates are
    orthogonal in expectation (measured 85-96 degrees over seeds); DFA works because the forward weights come
    to align with B (measured 48-59 degrees after 5 epochs).
    """
    settings = TrainSettings(epochs=5, learning_rate=0.02, seed=0)
    with dfa_client.connect("digital://?seed=0", n_components=128, n_features=10) as projector:
        feedback = FeedbackProjection(projector, [64, 64])
        net = MLP([64, 64, 64, 10], seed=0)
        before = net.alignment(digits.X_test, digits.y_test, feedback)
        seen = []
        history = net.fit(
            digits.X_train,
            digits.y_train,
            "dfa",
            feedback,
            settings,
            digits.X_test,
            digits.y_test,
            callbacks=[seen.append],
        )
        after = net.alignment(digits.X_test, digits.y_test, feedback)
    assert seen == history and [log.epoch for log in history] == [1, 2, 3, 4, 5]
    assert history[-1].train_loss < 0.5 * history[0].train_loss
    assert history[-1].test_accuracy > 0.80
    assert all(abs(angle - 90) < 15 for angle in before), before
    assert all(angle < 75 for angle in after), after
    backprop = MLP([64, 64, 64, 10], seed=0)
    backprop.fit(digits.X_train, digits.y_train, "backprop", None, TrainSettings(epochs=5, learning_rate=0.05))
    assert backprop.accuracy(digits.X_test, digits.y_test) > 0.85


def test_fit_callbacks_can_stop_early_and_training_is_reproducible(digits):
    def train() -> MLP:
        with dfa_client.connect("digital://?seed=2", n_components=32, n_features=10) as projector:
            net = MLP([64, 16, 16, 10], seed=3)
            history = net.fit(
                digits.X_train,
                digits.y_train,
                "dfa",
                FeedbackProjection(projector, [16, 16]),
                TrainSettings(epochs=5, seed=1),
                callbacks=[lambda log: log.epoch == 2],
            )
        assert len(history) == 2
        return net

    first, second = train(), train()
    for a, b in zip(first.weights, second.weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_alignment_angle_and_bad_input():
    assert alignment_angle([1, 0], [1, 0]) == pytest.approx(0.0)
    assert alignment_angle([1, 0], [0, 3]) == pytest.approx(90.0)
    assert alignment_angle([1, 1], [-1, -1]) == pytest.approx(180.0)
    assert math.isnan(alignment_angle([0, 0], [1, 0]))
    with pytest.raises(InvalidInputError):
        alignment_angle([1, 2], [1, 2, 3])
    for sizes in ([5], [5, 0, 2], "abc"):
        with pytest.raises(InvalidInputError):
            MLP(sizes)
    with pytest.raises(InvalidInputError):
        MLP([3, 2], activation="gelu")
    net = MLP([3, 4, 2])
    with pytest.raises(InvalidInputError):
        net.forward(np.ones((2, 4)))
    with pytest.raises(InvalidInputError):
        net.fit(np.ones((2, 3)), np.array([0, 2]))  # label outside 0..1
    with pytest.raises(InvalidInputError):
        net.fit(np.ones((2, 3)), np.array([0, 1]), method="dfa")  # no feedback
    with pytest.raises(InvalidInputError):
        TrainSettings(epochs=0)


def test_digits_split_is_fixed_stratified_and_scaled(digits):
    again = load_digits(seed=0)
    np.testing.assert_array_equal(digits.X_test, again.X_test)
    assert digits.X_train.dtype == np.float32 and 0.0 <= digits.X_train.min() and digits.X_train.max() == 1.0
    assert len(digits.y_train) + len(digits.y_test) == 1797 and digits.n_classes == 10
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # 20 % of 174..183 images per class
    assert not np.array_equal(load_digits(seed=1).y_test, digits.y_test)


# -- the training example -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_training_cli_runs_end_to_end_on_digits(tmp_path):
    pytest.importorskip("matplotlib")
    out, plot = tmp_path / "results.json", tmp_path / "curves.png"
    command = [
        sys.executable,
        "-m",
        "dfa_client.train",
        "--dataset",
        "digits",
        "--epochs",
        "2",
        "--methods",
        "backprop,digital,optical4,optical2",
        "--hidden",
        "64,64",
        "--url",
        OPTICAL_SIM,
        "--out",
        str(out),
        "--plot",
        str(plot),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "| optical2 | digits |" in done.stdout
    document = json.loads(out.read_text())
    rows = {row["method"]: row for row in document["table"]}
    assert list(rows) == ["backprop", "digital", "optical4", "optical2"]
    n_train = 1438
    for method, row in rows.items():
        assert row["epochs"] == 2 and row["wall_s"] > 0
        # two epochs of a 64-64-64-10 network: measured 80-94 % (two-frame optical DFA lowest); chance is 10 %, and
        # 30 % is 12 binomial standard deviations above it on 359 test images: a smoke bound, each method learns
        assert row["test_accuracy"] > 0.3, (method, row)
    assert rows["backprop"]["frames"] is None and rows["digital"]["frames"] is None
    # every batch of 32 sends its codes (all nonzero) and the all-ones vector that centres them: 4 frames each in
    # the four-frame scheme, 2 in the two-frame one, and the light pilots among them, plus the same reference
    # calibration for both; the last batch of an epoch has 1438 % 32 = 30 codes
    n_vectors = 2 * (n_train + math.ceil(n_train / 32))
    with dfa_client.connect(OPTICAL_SIM, n_components=128, n_features=10, pixel_format="MONO12") as projector:
        projector.project(np.ones((1, 10), dtype=np.float32))  # the ROI for 128 outputs sets the sequence room

        def batch_frames(scheme: str) -> int:
            call_frames = projector.opu.linear_mode.call_frames
            return 2 * ((n_train // 32) * call_frames(33, scheme) + call_frames(n_train % 32 + 1, scheme))

        four, two = batch_frames("four_frame"), batch_frames("two_frame")
    assert four - two > 2 * n_vectors
    # the reference calibration: 32 dark, 32 reference and 2 x 10 single-feature frames, measured twice
    calibration = 2 * (2 * 32 + 2 * 10)
    assert rows["optical4"]["frames"] == four + calibration
    # the two-frame scheme dims the signal of bright codes: each signal level it uses is checked once (16 frames of the
    # whole signal, 16 dark and 16 dimmed ones), and a batch whose codes take two levels is two device calls (with a
    # light pilot each): more than its rows' frames, and still fewer than the four-frame scheme's
    assert two + calibration <= rows["optical2"]["frames"] < four + calibration - n_vectors
    assert rows["optical2"]["frames"] > two
    runs = {run["method"]: run for run in document["runs"]}
    assert runs["optical4"]["vectors_projected"] == n_vectors and len(runs["optical4"]["alignment_deg"]) == 2
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_cli_refuses_unknown_methods():
    done = subprocess.run(
        [sys.executable, "-m", "dfa_client.train", "--methods", "backprop,magic"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "magic" in done.stderr


def test_helpers_import_only_numpy_and_the_standard_library():
    """The helpers, the network and the CLI module load and train with the driver, torch and the data packages
    blocked (imports of them fail), and none of them gets imported."""
    script = textwrap.dedent("""
        import sys
        BLOCKED = ("opu_driver", "firmware_sim", "torch", "sklearn", "mlxtend", "matplotlib")
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import numpy as np
        import dfa_client, dfa_client.dfa, dfa_client.nn, dfa_client.data, dfa_client.train
        with dfa_client.connect("digital://?seed=1", n_components=8, n_features=3) as p:
            net = dfa_client.nn.MLP([4, 4, 4, 3])
            feedback = dfa_client.dfa.FeedbackProjection(p, [4, 4], encoding="ternary")
            net.fit(np.ones((6, 4)), np.array([0, 1, 2, 0, 1, 2]), "dfa", feedback)
        try:
            dfa_client.data.load_digits()
        except ImportError as exc:
            assert "train" in str(exc)
        else:
            raise AssertionError("load_digits worked without scikit-learn")
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not loaded, loaded
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_a_full_batch_of_ternary_errors_is_projected_with_its_centring_row():
    import dfa_client
    from dfa_client import FeedbackProjection

    with dfa_client.connect("digital://?seed=3", n_components=12, max_batch=8) as projector:
        feedback = FeedbackProjection(projector, [6, 6], encoding="ternary")
        E = np.random.default_rng(0).normal(size=(8, 4))
        full = feedback.project(E)  # 8 codes + the all-ones row exceed max_batch: two calls
        assert full.shape == (8, 12)
        np.testing.assert_allclose(full[:4], feedback.project(E[:4]), rtol=1e-5, atol=1e-6)
