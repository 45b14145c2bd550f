"""``opu demo``: the main job on the built-in emulator, explained for a newcomer.

It opens a device, projects random binary vectors, and checks the output against the physics: speckle
intensities are exponentially distributed (contrast std/mean = 1), their mean grows in proportion to the
light sent (the number of features ON), and the same input gives the same output up to camera noise. Then it
trains a small network by direct feedback alignment with digital and with optical feedback (``dfa_epochs``).
"""

from __future__ import annotations

import time

import numpy as np

from opu_driver import open as open_opu
from opu_driver.encoding.layouts import MacroPixelLayout
from opu_driver.errors import InvalidInputError

__all__ = ["run_demo"]


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

        dark = opu.transform(np.zeros((32, n_features), dtype=np.uint8), n_components).astype(np.float64)
        dark_level = dark.mean()
        signal = Y.astype(np.float64) - dark_level
        contrast = float(np.median(signal.std(axis=1) / signal.mean(axis=1)))
        fractions = np.array([0.25, 0.5, 1.0])
        measured: list[float] = []
        for fraction in fractions:
            Xk = np.zeros((64, n_features), dtype=np.uint8)
            Xk[:, : int(fraction * n_features)] = 1
            Xk = rng.permuted(Xk, axis=1)
            measured.append(opu.transform(Xk, n_components).astype(np.float64).mean() - dark_level)
        means = np.array(measured)
        again = opu.transform(X[:50], n_components).astype(np.float64)
        repeat_corr = float(np.corrcoef(again.ravel(), Y[:50].astype(np.float64).ravel())[0, 1])
        saturated = float((Y == np.iinfo(Y.dtype).max).mean())
        # Intensity correlation of two inputs = |field correlation|^2 = overlap^2 / (|x1| |x2|), averaged
        # over 100 pairs because one pair of 1024 correlated speckle pixels is a noisy estimate.
        pairs = [(i, i + 1) for i in range(0, 2 * min(100, batch // 2), 2)]
        pair_corr = float(np.mean([np.corrcoef(signal[i], signal[j])[0, 1] for i, j in pairs]))
        Xf = X.astype(np.float64)
        field_corr_sq = float(np.mean([(Xf[i] @ Xf[j]) ** 2 / (Xf[i].sum() * Xf[j].sum()) for i, j in pairs]))

        print("Statistics against theory (y = |x R|^2 with R complex Gaussian):")
        print(_line("dark level (all mirrors off), DN", f"{dark_level:.2f}", "camera offset + dark current"))
        print(_line("speckle contrast std/mean over outputs", f"{contrast:.3f}", "theory: 1 (exponential law)"))
        for fraction, mean in zip(fractions, means, strict=True):
            print(
                _line(
                    f"mean signal with {fraction:.0%} features on, DN",
                    f"{mean:.2f}",
                    f"theory: {fraction / fractions[-1] * means[-1]:.2f} (proportional to light)",
                )
            )
        print(
            _line(
                "correlation of two inputs' outputs",
                f"{pair_corr:.3f}",
                f"theory: {field_corr_sq:.3f} (squared overlap, {len(pairs)} pairs)",
            )
        )
        print(_line("repeatability: correlation of a re-run", f"{repeat_corr:.4f}", "theory: 1 minus camera noise"))
        print(_line("saturated outputs", f"{saturated:.2%}", "keep near 0 (lower exposure if not)"))
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
