"""Train a 2-hidden-layer perceptron on handwritten digits by backprop, digital DFA and optical DFA; print a table.

    python -m dfa_client.train --dataset mnist --methods backprop,digital,optical4,optical2 --epochs 20 \\
        --seeds 0,1,2 --out results.json --plot curves.png

Methods:
    backprop: the reference, true gradients everywhere.
    digital: DFA with real-valued errors through an exact seeded numpy B (``digital://?seed=N``).
    digital-ternary: DFA with ternarised errors through the same B (isolates the cost of ternarisation).
    optical4, optical2: DFA with ternarised errors through the OPU (``--url``; default the built-in emulator),
        linear mode with the four-frame (exact) and two-frame (biased, half the frames) schemes.

The default emulator (``DEFAULT_SIM_URL``) is a small geometry with the reference physics; why, is in docs/dfa.md.

The table: method, dataset, test accuracy (median over ``--seeds``; each seed changes the initial weights, the
shuffling and the digital B; the optical B is the device's), epochs, DMD frames used (from the projector,
reference calibration included; "-" for methods that use no device), wall time. The JSON file holds every run,
with learning curves and the final alignment angles between the DFA and backprop updates.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._cli import (
    add_output_arguments,
    choice_list,
    configure_logging,
    group_runs,
    int_list,
    run_grid,
    write_results,
)
from .base import Projector
from .data import Dataset
from .dfa import DEFAULT_THRESHOLD, FeedbackProjection
from .errors import DfaError, InvalidInputError
from .nn import MLP, EpochLog, TrainSettings

__all__ = ["METHODS", "DEFAULT_SIM_URL", "RunSettings", "MethodResult", "run_method", "run", "format_table", "main"]

_log = logging.getLogger(__name__)

METHODS = ("backprop", "digital", "digital-ternary", "optical4", "optical2")
DEFAULT_METHODS = ("backprop", "digital", "optical4", "optical2")
DEFAULT_SIM_URL = "sim://?dmd=96x64&camera=64x48&cell=4&exposure_us=200&seed=3"
ALIGNMENT_SAMPLES = 500


@dataclass(frozen=True)
class RunSettings:
    """Everything a run depends on (saved with the results).

    Attributes:
        dataset: "mnist" or "digits".
        hidden: hidden layer widths.
        activation: hidden activation ("tanh", "relu", "sigmoid").
        epochs, batch_size, momentum: SGD settings.
        lr_backprop, lr_dfa: learning rates (DFA's feedback has the "classes" scale, see FeedbackProjection).
        url: the optical projector's URL (sim://, usb:// or tcp://).
        pixel_format: camera pixel format for in-process optical backends (None: the driver's default).
        threshold: the ternarisation threshold (fraction of max|e| per vector).
        rescale: multiply each projected ternary code by its error's least-squares scale (see ternary_scales).
        centre: remove each ternary code's mean through the projection of the all-ones vector (FeedbackProjection).
        feedback_seed: base seed of the digital B (plus the run's seed).
        split_seed: seed of the train/test split.
    """

    dataset: str = "mnist"
    hidden: tuple[int, ...] = (256, 256)
    activation: str = "tanh"
    epochs: int = 20
    batch_size: int = 32
    momentum: float = 0.9
    lr_backprop: float = 0.05
    lr_dfa: float = 0.02
    url: str = DEFAULT_SIM_URL
    pixel_format: str | None = "MONO12"
    threshold: float = DEFAULT_THRESHOLD
    rescale: bool = True
    centre: bool = True
    feedback_seed: int = 1000
    split_seed: int = 0


@dataclass
class MethodResult:
    """One training run.

    Attributes:
        method, dataset, seed: what was run.
        test_accuracy: after the last epoch.
        epochs: epochs run.
        frames: DMD frames the projector used (None without a device).
        vectors_projected: error vectors sent to the projector (0 for backprop).
        wall_s: seconds, opening the projector included.
        curve: test accuracy after each epoch.
        alignment_deg: final angle between DFA and backprop updates per hidden layer (DFA methods).
    """

    method: str
    dataset: str
    seed: int
    test_accuracy: float
    epochs: int
    frames: int | None
    vectors_projected: int
    wall_s: float
    curve: list[float] = field(default_factory=list)
    alignment_deg: list[float] = field(default_factory=list)


def _projector(method: str, settings: RunSettings, n_classes: int, seed: int) -> Projector:
    import dfa_client

    n_components = sum(settings.hidden)
    if method in ("digital", "digital-ternary"):
        return dfa_client.connect(
            f"digital://?seed={settings.feedback_seed + seed}", n_components=n_components, n_features=n_classes
        )
    scheme = "four_frame" if method == "optical4" else "two_frame"
    options: dict[str, Any] = {}
    if settings.pixel_format and not settings.url.startswith("tcp://"):
        options["pixel_format"] = settings.pixel_format
    return dfa_client.connect(settings.url, n_components=n_components, n_features=n_classes, scheme=scheme, **options)


def _test_curve(history: Sequence[EpochLog]) -> list[float]:
    """The test accuracy after each epoch of a ``fit`` that was given a test set (so every epoch has one)."""
    curve = [log.test_accuracy for log in history if log.test_accuracy is not None]
    if not curve or len(curve) != len(history):
        raise AssertionError(f"fit was given a test set, yet logged {history!r}")
    return curve


def run_method(method: str, data: Dataset, settings: RunSettings, seed: int = 0) -> MethodResult:
    """Train one network by ``method`` on ``data`` (a dfa_client.data.Dataset) and measure it."""
    if method not in METHODS:
        raise InvalidInputError(f"method={method!r}; choose from {METHODS}")
    start = time.perf_counter()
    net = MLP([data.n_inputs, *settings.hidden, data.n_classes], activation=settings.activation, seed=seed)
    dfa = method != "backprop"
    train = TrainSettings(
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.lr_dfa if dfa else settings.lr_backprop,
        momentum=settings.momentum,
        seed=seed,
    )
    if not dfa:
        history = net.fit(
            data.X_train, data.y_train, "backprop", settings=train, X_test=data.X_test, y_test=data.y_test
        )
        curve = _test_curve(history)
        return MethodResult(
            method, data.name, seed, curve[-1], len(history), None, 0, time.perf_counter() - start, curve
        )
    with _projector(method, settings, data.n_classes, seed) as projector:
        encoding = "real" if method == "digital" else "ternary"
        feedback = FeedbackProjection(
            projector,
            settings.hidden,
            encoding=encoding,
            threshold=settings.threshold,
            rescale=settings.rescale,
            centre=settings.centre,
        )
        history = net.fit(
            data.X_train, data.y_train, "dfa", feedback, settings=train, X_test=data.X_test, y_test=data.y_test
        )
        frames = feedback.frames_sent
        vectors = projector.vectors_projected
        wall_s = time.perf_counter() - start
        # A diagnostic after training (not counted in frames or time): how far the DFA updates are from backprop's.
        alignment = net.alignment(data.X_test[:ALIGNMENT_SAMPLES], data.y_test[:ALIGNMENT_SAMPLES], feedback)
    curve = _test_curve(history)
    return MethodResult(
        method,
        data.name,
        seed,
        curve[-1],
        len(history),
        frames,
        vectors,
        wall_s,
        curve,
        [round(a, 2) for a in alignment],
    )


def run(
    settings: RunSettings,
    methods: Sequence[str],
    seeds: Sequence[int],
    progress: Callable[[MethodResult], object] | None = None,
) -> list[MethodResult]:
    """Every method for every seed, on one split of ``settings.dataset``."""
    from .data import load_dataset

    data = load_dataset(settings.dataset, seed=settings.split_seed)
    return run_grid(methods, seeds, lambda method, seed: run_method(method, data, settings, seed), progress)


def summarise(results: Sequence[MethodResult]) -> list[dict[str, Any]]:
    """One row per (method, dataset): median accuracy, frames and wall time over seeds, and every accuracy."""
    summary = []
    for (method, dataset), group in group_runs(results, lambda r: (r.method, r.dataset)).items():
        frames = [r.frames for r in group if r.frames is not None]
        summary.append(
            {
                "method": method,
                "dataset": dataset,
                "test_accuracy": statistics.median(r.test_accuracy for r in group),
                "accuracies": [r.test_accuracy for r in group],
                "epochs": statistics.median(r.epochs for r in group),
                "frames": int(statistics.median(frames)) if frames else None,
                "wall_s": statistics.median(r.wall_s for r in group),
                "seeds": [r.seed for r in group],
            }
        )
    return summary


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A plain-text (Markdown) table of ``summarise`` rows."""
    lines = [
        "| method | dataset | test accuracy (%) | per seed | epochs | frames | wall (s) |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: |",
    ]
    for row in summary:
        frames = "-" if row["frames"] is None else f"{row['frames']:,}"
        seeds = " ".join(f"{100 * a:.1f}" for a in row["accuracies"])
        lines.append(
            f"| {row['method']} | {row['dataset']} | {100 * row['test_accuracy']:.1f} | {seeds} | "
            f"{row['epochs']:g} | {frames} | {row['wall_s']:.1f} |"
        )
    return "\n".join(lines)


def plot_curves(results: Sequence[MethodResult], path: Path) -> None:
    """Test accuracy against epoch, one line per run (needs matplotlib: the ``plot`` extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('--plot needs matplotlib: pip install -e ".[plot]"') from exc
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours: dict[str, str] = {}
    for result in results:
        colour = colours.setdefault(result.method, f"C{len(colours)}")
        label = result.method if sum(r.method == result.method for r in results[: results.index(result)]) == 0 else None
        epochs = np.arange(1, len(result.curve) + 1)
        ax.plot(epochs, 100 * np.asarray(result.curve), color=colour, label=label, alpha=0.8)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{results[0].dataset}: backprop vs DFA (digital and optical)" if results else "")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    defaults = RunSettings()
    parser = argparse.ArgumentParser(
        prog="python -m dfa_client.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dataset", choices=("mnist", "digits"), default=defaults.dataset)
    parser.add_argument(
        "--methods",
        type=choice_list(METHODS),
        default=list(DEFAULT_METHODS),
        help=f"comma-separated, from {','.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds; the table shows medians")
    parser.add_argument(
        "--hidden", type=int_list, default=list(defaults.hidden), help="hidden widths (default 256,256)"
    )
    parser.add_argument("--activation", choices=("tanh", "relu", "sigmoid"), default=defaults.activation)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr-backprop", type=float, default=defaults.lr_backprop)
    parser.add_argument("--lr-dfa", type=float, default=defaults.lr_dfa)
    parser.add_argument(
        "--threshold",
        type=float,
        default=defaults.threshold,
        help="ternarisation threshold, a fraction of max|e| per error vector",
    )
    parser.add_argument(
        "--no-rescale", action="store_true", help="send ternary codes without their per-vector scale (for comparison)"
    )
    parser.add_argument(
        "--no-centre", action="store_true", help="send ternary codes without removing their mean (for comparison)"
    )
    parser.add_argument("--url", default=defaults.url, help="optical projector URL (sim://, usb://, tcp://)")
    parser.add_argument(
        "--pixel-format",
        default=defaults.pixel_format,
        help="camera pixel format for sim:// and usb:// (default MONO12)",
    )
    add_output_arguments(parser, "log driver warnings and progress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = RunSettings(
            dataset=args.dataset,
            hidden=tuple(args.hidden),
            activation=args.activation,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr_backprop=args.lr_backprop,
            lr_dfa=args.lr_dfa,
            url=args.url,
            pixel_format=args.pixel_format or None,
            threshold=args.threshold,
            rescale=not args.no_rescale,
            centre=not args.no_centre,
        )
        TrainSettings(epochs=settings.epochs, batch_size=settings.batch_size, learning_rate=settings.lr_dfa)
        TrainSettings(learning_rate=settings.lr_backprop)

        def progress(result: MethodResult) -> None:
            frames = "" if result.frames is None else f", {result.frames:,} frames"
            print(
                f"  {result.method:<15} seed {result.seed}: {100 * result.test_accuracy:5.1f} % after "
                f"{result.epochs} epochs{frames}, {result.wall_s:.1f} s",
                flush=True,
            )

        print(f"training {args.dataset} with {', '.join(args.methods)} (seeds {args.seeds}, {args.epochs} epochs)")
        started = time.perf_counter()
        results = run(settings, args.methods, args.seeds, progress)
    except (DfaError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results)
    table = format_table(summary)
    print(table)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out is not None:
        command = "python -m dfa_client.train " + " ".join(sys.argv[1:] if argv is None else argv)
        write_results(args.out, command, settings, {"numpy": np.__version__}, summary, results, _json_default)
        print(f"wrote {args.out}")
    if args.plot is not None:
        plot_curves(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _json_default(value: object) -> object:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return None if not math.isfinite(value) else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


if __name__ == "__main__":
    sys.exit(main())
