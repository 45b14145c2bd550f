"""``opu demo``: the main job on the built-in emulator, explained for a newcomer.

It opens a device, projects random binary vectors, and checks the output against the physics: speckle
intensities are exponentially distributed (contrast std/mean = 1), their mean grows in proportion to the
light sent (the number of features ON), and the same input gives the same output up to camera noise. Then it
trains a small network by direct feedback alignment with digital and with optical feedback (``dfa_epochs``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from opu_driver import Opu
from opu_driver import open as open_opu
from opu_driver.encoding.layouts import MacroPixelLayout
from opu_driver.errors import InvalidInputError

__all__ = ["run_demo", "speckle_statistics", "SpeckleStatistics"]


@dataclass(frozen=True)
class SpeckleStatistics:
    """What ``opu demo`` measures of ``transform``'s outputs, beside what the physics predicts.

    Attributes:
        dark_level_dn: mean output with every mirror off (camera offset and dark current).
        contrast: median over inputs of std/mean of the dark-subtracted outputs; 1 for exponential speckle.
        fractions, mean_signal_dn: mean dark-subtracted output for random inputs with that share of features on.
        proportional_dn: the least-squares line through the origin fitted to those means (proportional to light).
        pair_correlation: mean correlation over outputs of two random inputs' outputs, over ``n_pairs`` pairs.
        squared_overlap: what a complex Gaussian R predicts for it, (x1 . x2)^2 / (|x1|_1 |x2|_1), same pairs.
        repeat_correlation: correlation of the outputs of the same inputs projected twice.
        saturated_fraction: share of outputs at the pixel format's full scale.
    """

    dark_level_dn: float
    contrast: float
    fractions: tuple[float, ...]
    mean_signal_dn: tuple[float, ...]
    proportional_dn: tuple[float, ...]
    pair_correlation: float
    squared_overlap: float
    n_pairs: int
    repeat_correlation: float
    saturated_fraction: float


def speckle_statistics(
    opu: Opu,
    X: npt.NDArray[np.uint8],
    Y: npt.NDArray[np.integer],
    rng: np.random.Generator,
    fractions: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0),
    n_per_fraction: int = 64,
) -> SpeckleStatistics:
    """Measure the speckle statistics of ``Y = opu.transform(X, n_components)`` (X binary, at least 4 rows),
    projecting dark frames, inputs with a set share of features on and a re-run of X's first rows."""
    n_features, n_components = X.shape[1], Y.shape[1]
    dark = opu.transform(np.zeros((32, n_features), dtype=np.uint8), n_components).astype(np.float64)
    dark_level = float(dark.mean())
    signal = Y.astype(np.float64) - dark_level
    contrast = float(np.median(signal.std(axis=1) / signal.mean(axis=1)))
    measured: list[float] = []
    for fraction in fractions:
        Xk = np.zeros((n_per_fraction, n_features), dtype=np.uint8)
        Xk[:, : int(round(fraction * n_features))] = 1
        Xk = rng.permuted(Xk, axis=1)
        measured.append(float(opu.transform(Xk, n_components).astype(np.float64).mean()) - dark_level)
    f, m = np.array(fractions), np.array(measured)
    slope = float(f @ m / (f @ f))
    n_again = min(50, len(X))
    again = opu.transform(X[:n_again], n_components).astype(np.float64)
    repeat = float(np.corrcoef(again.ravel(), Y[:n_again].astype(np.float64).ravel())[0, 1])
    # Intensity correlation of two inputs = |field correlation|^2 = overlap^2 / (|x1| |x2|), averaged over pairs
    # because one pair's outputs are a noisy estimate.
    pairs = [(i, i + 1) for i in range(0, 2 * min(100, len(X) // 2), 2)]
    pair_corr = float(np.mean([np.corrcoef(signal[i], signal[j])[0, 1] for i, j in pairs]))
    Xf = X.astype(np.float64)
    overlap = float(np.mean([(Xf[i] @ Xf[j]) ** 2 / (Xf[i].sum() * Xf[j].sum()) for i, j in pairs]))
    return SpeckleStatistics(
        dark_level_dn=dark_level,
        contrast=contrast,
        fractions=tuple(float(v) for v in f),
        mean_signal_dn=tuple(measured),
        proportional_dn=tuple(float(v) for v in slope * f),
        pair_correlation=pair_corr,
        squared_overlap=overlap,
        n_pairs=len(pairs),
        repeat_correlation=repeat,
        saturated_fraction=float((Y == np.iinfo(Y.dtype).max).mean()),
    )


def _line(label: str, value: str, theory: str = "") -> str:
    return f"  {label:<44} {value:>14}   {theory}"


def run_demo(
    url: str = "sim://?seed=0",
    n_features: int = 1000,
    n_components: int = 1024,
    batch: int = 500,
    macro_px: int = 24,
    dfa_epochs: int = 3,
) -> int:
    """Run the demo; macro-pixels of 24 mirrors align with the emulator's default input-mode cells (8 mirrors)."""
    rng = np.random.default_rng(0)
    with open_opu(url, layout="macro") as opu:
        info = opu.info
        try:
            MacroPixelLayout(n_features, info.dmd_width, info.dmd_height, macro_px)
        except InvalidInputError:
            macro_px = MacroPixelLayout.largest_side(n_features, info.dmd_width, info.dmd_height)
        opu.set_layout("macro", macro_px)
        print(
            f"Device: {info.manufacturer} {info.model}, serial {info.serial_number}, firmware {info.firmware_version}"
        )
        print(
            f"  DMD {info.dmd_width}x{info.dmd_height} mirrors, camera {info.camera_width}x{info.camera_height} "
            f"pixels, formats {', '.join(info.pixel_formats)}"
        )
        status = opu.status()
        print(f"  laser {status.laser_power_mw:.1f} mW, medium at {status.temperature_c:.2f} C")
        print()
        print(f"Layout: {n_features} features as {macro_px}x{macro_px}-mirror macro-pixels")
        print(f"Projecting {batch} random binary vectors of {n_features} features to {n_components} outputs ...")
        X = rng.integers(0, 2, size=(batch, n_features), dtype=np.uint8)
        t0 = time.perf_counter()
        Y = opu.transform(X, n_components)
        elapsed_s = time.perf_counter() - t0
        print(f"  done in {elapsed_s:.2f} s: {batch / elapsed_s:,.0f} vectors/s, output {Y.shape} {Y.dtype}")
        print(f"  first vector, first 10 outputs: {Y[0, :10].tolist()}")
        print()

        stats = speckle_statistics(opu, X, Y, rng)
        print("Statistics against theory (y = |x R|^2 with R complex Gaussian):")
        print(_line("dark level (all mirrors off), DN", f"{stats.dark_level_dn:.2f}", "camera offset + dark current"))
        print(_line("speckle contrast std/mean over outputs", f"{stats.contrast:.3f}", "theory: 1 (exponential law)"))
        for fraction, mean, line in zip(stats.fractions, stats.mean_signal_dn, stats.proportional_dn, strict=True):
            print(
                _line(
                    f"mean signal with {fraction:.0%} features on, DN",
                    f"{mean:.2f}",
                    f"theory: {line:.2f} (proportional to light)",
                )
            )
        print(
            _line(
                "correlation of two inputs' outputs",
                f"{stats.pair_correlation:.3f}",
                f"theory: {stats.squared_overlap:.3f} (squared overlap, {stats.n_pairs} pairs)",
            )
        )
        print(
            _line(
                "repeatability: correlation of a re-run",
                f"{stats.repeat_correlation:.4f}",
                "theory: 1 minus camera noise",
            )
        )
        print(_line("saturated outputs", f"{stats.saturated_fraction:.2%}", "keep near 0 (lower exposure if not)"))
        counters = opu.counters
        print()
        print(
            f"Driver: {counters.sequences} sequences, {counters.frames_sent} frames sent, "
            f"{counters.frames_matched} matched by id, lag {opu.lag_frames} frames"
        )
    if dfa_epochs > 0:
        _dfa_demo(dfa_epochs)
    return 0


def _dfa_demo(epochs: int) -> None:
    """What the OPU is for: train a small network by direct feedback alignment, digital and optical feedback.

    The optical runs go through the DFA client to a small emulated device (an error vector has only 10 entries
    and the network 128 hidden units, so a small DMD and camera are plenty and fast).
    """
    from dfa_client.data import load_digits, make_teacher_task
    from dfa_client.train import DEFAULT_SIM_URL, RunSettings, run_method

    try:
        data = load_digits()
        source = "scikit-learn's 8x8 digits"
    except ImportError:
        data = make_teacher_task()
        source = 'a synthetic task (pip install -e ".[train]" for the digits)'
    settings = RunSettings(dataset=data.name, hidden=(64, 64), epochs=epochs, url=DEFAULT_SIM_URL)
    print()
    print(
        f"DFA training: a {data.n_inputs}-64-64-{data.n_classes} network on {source}, {epochs} epochs, "
        f"{len(data.y_train)} train / {len(data.y_test)} test images"
    )
    print(f"  {'method':<34} {'test accuracy':>13} {'frames':>9} {'wall s':>7}")
    labels = {
        "backprop": "backprop (exact gradients)",
        "digital": "DFA, digital feedback (numpy)",
        "optical4": "DFA, optical feedback, four-frame",
        "optical2": "DFA, optical feedback, two-frame",
    }
    for method, label in labels.items():
        result = run_method(method, data, settings, seed=0)
        frames = "-" if result.frames is None else f"{result.frames:,}"
        print(f"  {label:<34} {result.test_accuracy:>12.1%} {frames:>9} {result.wall_s:>7.1f}")
    print("  python -m dfa_client.train runs the full comparison on the MNIST subset (see the README).")
