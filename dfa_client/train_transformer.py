"""Transformers trained by backprop, digital DFA and optical DFA on two tasks; prints a table.

    python -m dfa_client.train_transformer --task vision --seeds 0,1,2 --out vit.json --plot vit.png
    python -m dfa_client.train_transformer --task text --seeds 0,1,2 --out lm.json --plot lm.png

Tasks:
    vision: a small vision Transformer on the 5,000-image MNIST subset (the ``train`` extra; 4,000 train / 1,000
        test images): 7x7-pixel patches are 16 tokens, the head reads all of them. The error at the
        logits (one per image) is projected to the whole output of every block (16 tokens x d_model).
    text: a small decoder-only character-level language model on Shakespeare (shipped with the package, public
        domain; 90% train, 10% validation): per-token errors over the 65 characters, each projected to every
        block's output at its own token (d_model).

Methods (as in ``python -m dfa_client.train``):
    backprop: the reference, true gradients everywhere.
    digital: DFA with real-valued errors through an exact seeded B (``digital://?seed=N``), held as a buffer.
    digital-ternary: DFA with ternarised errors through the same B (isolates the cost of ternarisation).
    optical4, optical2: DFA with ternarised errors through the OPU (``--url``; default the built-in emulator),
        four-frame (exact) and two-frame (half the frames) linear mode.

Every block's output is tapped (``DFA.attach`` with forward hooks on the unchanged model); the embedding, the
blocks' insides and the final layer norm and head learn from there as backprop would (the head gets its true
gradient). The table gives, per method, the median over ``--seeds`` of the test accuracy (vision) or the
validation loss and perplexity (text), the wall time, the DMD frames used, and DFA's alignment angle per block (the
angle between the DFA update of a block's parameters and backprop's gradient on one held-out batch). Each seed
changes the initial weights, the batches and the digital B; the optical B is the device's own.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

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
from .dfa import DEFAULT_THRESHOLD, TERNARY_RULES, FeedbackProjection, alignment_angle
from .errors import DfaError, InvalidInputError
from .torch_dfa import DFA

__all__ = [
    "TASKS",
    "METHODS",
    "DEFAULT_SIM_URL",
    "TaskSettings",
    "TransformerResult",
    "TransformerBlock",
    "VisionTransformer",
    "CharTransformer",
    "default_settings",
    "run_method",
    "run",
    "summarise",
    "format_table",
    "main",
]

_log = logging.getLogger(__name__)

TASKS = ("vision", "text")
METHODS = ("backprop", "digital", "digital-ternary", "optical4", "optical2")
DEFAULT_METHODS = ("backprop", "digital", "optical4", "optical2")
DEFAULT_SIM_URL = "sim://?dmd=96x64&camera=64x48&cell=4&exposure_us=200&seed=3"
"""The emulator the optical methods use by default: a small geometry with the reference physics (as the MLP
example's); its 3,072-pixel camera holds the vision task's 2 x 16 x 64 feedback outputs."""


# ------------------------------------------------------------------------------------------------------ models
class TransformerBlock(nn.Module):
    """A pre-norm Transformer block: x + attention(norm(x)), then + MLP(norm(x)); causal for a language model."""

    def __init__(self, d_model: int, n_heads: int, causal: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        mask = None
        if self.causal:
            n = x.shape[1]
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), diagonal=1)
        attended, _ = self.attention(h, h, h, attn_mask=mask, need_weights=False)
        x = x + attended
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """Square images (batch, side * side) -> logits (batch, n_classes): patches as tokens; the head reads every
    token (its weights are per position), so each token's output has its own path to the logits, as the per-example
    feedback to a block's whole output assumes."""

    def __init__(self, side: int, patch: int, d_model: int, depth: int, n_heads: int, n_classes: int) -> None:
        super().__init__()
        if side % patch:
            raise InvalidInputError(f"patch {patch} does not divide the image side {side}")
        self.side, self.patch = side, patch
        self.n_tokens = (side // patch) ** 2
        self.embed = nn.Linear(patch * patch, d_model)
        self.position = nn.Parameter(torch.randn(1, self.n_tokens, d_model) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, causal=False) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(self.n_tokens * d_model, n_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n, p, k = images.shape[0], self.patch, self.side // self.patch
        patches = images.reshape(n, k, p, k, p).permute(0, 1, 3, 2, 4).reshape(n, self.n_tokens, p * p)
        x = self.embed(patches) + self.position
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).flatten(1))


class CharTransformer(nn.Module):
    """Character ids (batch, sequence) -> next-character logits (batch, sequence, vocabulary), causal."""

    def __init__(self, vocabulary: int, context: int, d_model: int, depth: int, n_heads: int) -> None:
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocabulary, d_model)
        self.position = nn.Parameter(torch.randn(1, context, d_model) * 0.02)
        self.blocks = nn.ModuleList(TransformerBlock(d_model, n_heads, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocabulary)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.position[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class TaskSettings:
    """Everything a run depends on (saved with the results).

    Attributes:
        task: "vision" or "text".
        d_model, depth, n_heads: the Transformer's width, number of blocks and attention heads.
        patch: (vision) patch side in pixels.
        context: (text) characters per training window.
        batch_size: images (vision) or windows (text) per step.
        epochs: (vision) passes over the training images.
        steps, eval_every: (text) optimiser steps, and steps between validation measurements.
        lr_backprop, lr_dfa: learning rates.
        optimizer: "adam", or "sgd" (momentum 0.9).
        url: the optical projector's URL (sim://, usb://, rig:// or tcp://).
        pixel_format: camera pixel format for in-process optical backends (None: the driver's default).
        optical_bits: None sends ternarised errors to the OPU (one ternary projection each); n sends real-valued
            errors as n bit planes (n ternary projections each, n times the frames).
        threshold, rule, rescale, centre: ternarisation of the errors (see FeedbackProjection and ``ternarize``).
        feedback_seed: base seed of the digital B (plus the run's seed).
        split_seed: seed of the train/test split (vision).
        eval_windows: (text) validation windows of ``context`` characters, fixed for every run.
    """

    task: str = "vision"
    d_model: int = 64
    depth: int = 2
    n_heads: int = 4
    patch: int = 7
    context: int = 64
    batch_size: int = 64
    epochs: int = 10
    steps: int = 1000
    eval_every: int = 250
    lr_backprop: float = 1e-3
    lr_dfa: float = 1e-3
    optimizer: str = "adam"
    optical_bits: int | None = None
    url: str = DEFAULT_SIM_URL
    pixel_format: str | None = "MONO12"
    threshold: float = DEFAULT_THRESHOLD
    rule: str = "max"
    rescale: bool = True
    centre: bool = True
    feedback_seed: int = 1000
    split_seed: int = 0
    eval_windows: int = 128


def default_settings(task: str) -> TaskSettings:
    """The settings the README's table uses for ``task``."""
    if task == "vision":
        return TaskSettings(task="vision")
    if task == "text":
        # Per-token softmax errors over 65 characters: the deterministic ternary rules keep only the large entries
        # and the feedback loses what the model predicted (measured in docs/dfa.md); the unbiased stochastic rule
        # keeps it. Adam at 3e-3 for both methods (1e-3 trains slower).
        return TaskSettings(
            task="text", batch_size=8, steps=1000, eval_every=250, lr_backprop=3e-3, lr_dfa=3e-3, rule="stochastic"
        )
    raise InvalidInputError(f"unknown task {task!r}; choose one of {TASKS}")


@dataclass
class TransformerResult:
    """One training run.

    Attributes:
        task, method, seed: what was run.
        metric: test accuracy (vision, higher is better) or validation loss in nats per character (text).
        perplexity: (text) exp(validation loss); None for vision.
        curve: the metric after each epoch (vision) or every ``eval_every`` steps (text).
        frames: DMD frames the projector used (None without a device).
        vectors_projected: error vectors sent to the projector (0 for backprop, and for digital DFA, whose exact B
            is applied in torch).
        wall_s: seconds, opening the projector included.
        alignment_deg: per block, the angle between the DFA update and backprop's gradient (DFA methods).
    """

    task: str
    method: str
    seed: int
    metric: float
    perplexity: float | None
    curve: list[float]
    frames: int | None
    vectors_projected: int
    wall_s: float
    alignment_deg: list[float] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class _TextData:
    train: npt.NDArray[np.int64]
    validation: npt.NDArray[np.int64]
    vocabulary: str


def _load_text() -> _TextData:
    from .corpora import load_corpus

    text = load_corpus("shakespeare")
    vocabulary = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocabulary)) + 1, dtype=np.int64)
    lookup[[ord(c) for c in vocabulary]] = np.arange(len(vocabulary))
    ids = lookup[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)]
    cut = int(0.9 * len(ids))
    return _TextData(ids[:cut], ids[cut:], vocabulary)


def _windows(
    ids: npt.NDArray[np.int64], starts: npt.NDArray[np.int64], context: int
) -> tuple[torch.Tensor, torch.Tensor]:
    index = starts[:, None] + np.arange(context + 1)
    chunk = torch.from_numpy(ids[index])
    return chunk[:, :-1], chunk[:, 1:]


# ------------------------------------------------------------------------------------------------- training
def _projector(method: str, settings: TaskSettings, n_features: int, n_components: int, seed: int) -> Projector:
    import dfa_client

    if method in ("digital", "digital-ternary"):
        url = f"digital://?seed={settings.feedback_seed + seed}"
        return dfa_client.connect(url, n_components=n_components, n_features=n_features)
    scheme = "four_frame" if method == "optical4" else "two_frame"
    options: dict[str, Any] = {"n_bits": settings.optical_bits} if settings.optical_bits else {}
    if settings.pixel_format and not settings.url.startswith(("tcp://", "tcps://")):
        options["pixel_format"] = settings.pixel_format
    return dfa_client.connect(settings.url, n_components=n_components, n_features=n_features, scheme=scheme, **options)


class _Task:
    """One task's model, batches, loss and evaluation."""

    def __init__(self, settings: TaskSettings, seed: int) -> None:
        self.settings = settings
        self.rng = np.random.default_rng(seed)
        s = settings
        if s.task == "vision":
            from .data import load_mnist_subset

            data = load_mnist_subset(seed=s.split_seed)
            self.X_train, self.y_train = torch.from_numpy(data.X_train), torch.from_numpy(data.y_train)
            self.X_test, self.y_test = torch.from_numpy(data.X_test), torch.from_numpy(data.y_test)
            self.n_classes = data.n_classes
            self.model: nn.Module = VisionTransformer(28, s.patch, s.d_model, s.depth, s.n_heads, self.n_classes)
            self.tap_width = (28 // s.patch) ** 2 * s.d_model  # per-image error -> a block's whole output
        else:
            text = _load_text()
            self.text = text
            self.n_classes = len(text.vocabulary)
            self.model = CharTransformer(self.n_classes, s.context, s.d_model, s.depth, s.n_heads)
            self.tap_width = s.d_model  # per-token error -> a block's output at that token
            last = len(text.validation) - s.context - 1
            fixed = np.random.default_rng(12345).integers(0, last, s.eval_windows)  # the same for every run
            self.validation = _windows(text.validation, fixed, s.context)

    def loss(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.model(inputs)
        return nn.functional.cross_entropy(logits.reshape(-1, self.n_classes), targets.reshape(-1))

    def batches(self, round_index: int) -> Sequence[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of one epoch (vision) or of the steps until the next evaluation (text: ``eval_every``, fewer
        in the last round when ``steps`` is not a multiple)."""
        s = self.settings
        if s.task == "vision":
            order = torch.from_numpy(self.rng.permutation(len(self.y_train)))
            return [
                (self.X_train[order[i : i + s.batch_size]], self.y_train[order[i : i + s.batch_size]])
                for i in range(0, len(order), s.batch_size)
            ]
        last = len(self.text.train) - s.context - 1
        n_steps = min(s.eval_every, s.steps - round_index * s.eval_every)
        starts = [self.rng.integers(0, last, s.batch_size) for _ in range(n_steps)]
        return [_windows(self.text.train, chosen, s.context) for chosen in starts]

    def rounds(self) -> int:
        s = self.settings
        return s.epochs if s.task == "vision" else -(-s.steps // s.eval_every)

    @torch.no_grad()
    def evaluate(self) -> float:
        """Test accuracy (vision) or validation loss in nats per character (text)."""
        self.model.eval()
        try:
            if self.settings.task == "vision":
                predicted = torch.cat([self.model(x).argmax(1) for x in self.X_test.split(500)])
                return float((predicted == self.y_test).float().mean())
            inputs, targets = self.validation
            pieces = zip(inputs.split(64), targets.split(64), strict=True)
            return float(sum(self.loss(x, y) * len(x) for x, y in pieces) / len(inputs))
        finally:
            self.model.train()

    def held_out_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.settings.task == "vision":
            return self.X_test[:256], self.y_test[:256]
        inputs, targets = self.validation
        return inputs[:16], targets[:16]


def _block_gradients(task: _Task, batch: tuple[torch.Tensor, torch.Tensor]) -> list[npt.NDArray[np.float64]]:
    model = task.model
    model.zero_grad()
    task.loss(*batch).backward()
    blocks = model.get_submodule("blocks")
    grads = []
    for block in blocks.children():
        parts = [p.grad.detach().reshape(-1) for p in block.parameters() if p.grad is not None]
        grads.append(torch.cat(parts).double().numpy())
    model.zero_grad()
    return grads


def run_method(method: str, settings: TaskSettings, seed: int = 0) -> TransformerResult:
    """Train one Transformer on ``settings.task`` by ``method`` and measure it."""
    if method not in METHODS:
        raise InvalidInputError(f"method={method!r}; choose from {METHODS}")
    if settings.task not in TASKS:
        raise InvalidInputError(f"task={settings.task!r}; choose from {TASKS}")
    if settings.optimizer not in ("adam", "sgd"):
        raise InvalidInputError(f"optimizer={settings.optimizer!r}; choose 'adam' or 'sgd'")
    start = time.perf_counter()
    torch.manual_seed(seed)
    task = _Task(settings, seed)
    dfa = method != "backprop"
    lr = settings.lr_dfa if dfa else settings.lr_backprop
    if settings.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(task.model.parameters(), lr=lr, momentum=0.9)
    else:
        optimizer = torch.optim.Adam(task.model.parameters(), lr=lr)
    curve: list[float] = []
    frames: int | None = None
    vectors = 0
    alignment: list[float] = []

    def train() -> None:
        for round_index in range(task.rounds()):
            for inputs, targets in task.batches(round_index):
                optimizer.zero_grad()
                task.loss(inputs, targets).backward()
                optimizer.step()
            curve.append(task.evaluate())
            _log.info("%s %s seed %d: %s after round %d", settings.task, method, seed, curve[-1], len(curve))

    if not dfa:
        train()
        wall_s = time.perf_counter() - start
    else:
        depth = settings.depth
        n_components = depth * task.tap_width
        optical = method.startswith("optical")
        with _projector(method, settings, task.n_classes, n_components, seed) as projector:
            feedback = FeedbackProjection(
                projector,
                [task.tap_width] * depth,
                encoding="real" if method == "digital" or (optical and settings.optical_bits) else "ternary",
                threshold=settings.threshold,
                rule=settings.rule,
                rescale=settings.rescale,
                centre=settings.centre,
                seed=settings.feedback_seed + seed,
            )
            attachment = DFA(feedback).attach(task.model, [f"blocks.{i}" for i in range(depth)], "head")
            train()
            frames, vectors = feedback.frames_sent, projector.vectors_projected
            wall_s = time.perf_counter() - start
            # A diagnostic after training (not counted in frames or time): DFA's updates against backprop's.
            held_out = task.held_out_batch()
            updates = _block_gradients(task, held_out)
            attachment.remove()
            gradients = _block_gradients(task, held_out)
            alignment = [round(alignment_angle(u, g), 2) for u, g in zip(updates, gradients, strict=True)]
    metric = curve[-1]
    perplexity = math.exp(metric) if settings.task == "text" else None
    return TransformerResult(settings.task, method, seed, metric, perplexity, curve, frames, vectors, wall_s, alignment)


def run(
    settings: TaskSettings,
    methods: Sequence[str],
    seeds: Sequence[int],
    progress: Callable[[TransformerResult], object] | None = None,
) -> list[TransformerResult]:
    """Every method for every seed."""
    return run_grid(methods, seeds, lambda method, seed: run_method(method, settings, seed), progress)


def summarise(results: Sequence[TransformerResult]) -> list[dict[str, Any]]:
    """One row per (task, method): medians over seeds of the metric, frames, wall time and alignment angles."""
    rows = []
    for (task, method), group in group_runs(results, lambda r: (r.task, r.method)).items():
        frames = [r.frames for r in group if r.frames is not None]
        metric = statistics.median(r.metric for r in group)
        angles = [r.alignment_deg for r in group if r.alignment_deg]
        rows.append(
            {
                "task": task,
                "method": method,
                "metric": metric,
                "metrics": [r.metric for r in group],
                "perplexity": math.exp(metric) if task == "text" else None,
                "frames": int(statistics.median(frames)) if frames else None,
                "wall_s": statistics.median(r.wall_s for r in group),
                "alignment_deg": [statistics.median(a[i] for a in angles) for i in range(len(angles[0]))]
                if angles
                else [],
                "seeds": [r.seed for r in group],
            }
        )
    return rows


def format_table(summary: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of ``summarise`` rows."""
    text = bool(summary) and summary[0]["task"] == "text"
    metric = "validation loss (nats/char) | perplexity |" if text else "test accuracy (%) |"
    lines = [
        f"| method | {metric} per seed | frames | wall (s) | alignment per block (deg) |",
        "| --- | ---: | ---: | --- | ---: | ---: | --- |" if text else "| --- | ---: | --- | ---: | ---: | --- |",
    ]
    for row in summary:
        frames = "-" if row["frames"] is None else f"{row['frames']:,}"
        angles = " / ".join(f"{a:.0f}" for a in row["alignment_deg"]) or "-"
        if text:
            seeds = " ".join(f"{m:.3f}" for m in row["metrics"])
            values = f"{row['metric']:.3f} | {row['perplexity']:.2f} | {seeds}"
        else:
            seeds = " ".join(f"{100 * m:.1f}" for m in row["metrics"])
            values = f"{100 * row['metric']:.1f} | {seeds}"
        lines.append(f"| {row['method']} | {values} | {frames} | {row['wall_s']:.0f} | {angles} |")
    return "\n".join(lines)


def plot_curves(results: Sequence[TransformerResult], settings: TaskSettings, path: Path) -> None:
    """The metric against epoch (vision) or step (text), one line per run (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError('--plot needs matplotlib: pip install -e ".[plot]"') from exc
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    colours: dict[str, str] = {}
    for result in results:
        first = result.method not in colours
        colour = colours.setdefault(result.method, f"C{len(colours)}")
        rounds = np.arange(1, len(result.curve) + 1)
        if settings.task == "vision":
            ax.plot(rounds, 100 * np.asarray(result.curve), color=colour, label=result.method if first else None)
        else:
            ax.plot(rounds * settings.eval_every, result.curve, color=colour, label=result.method if first else None)
    if settings.task == "vision":
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title("vision Transformer on MNIST: backprop vs DFA (digital and optical)")
    else:
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss (nats/char)")
        ax.set_title("character-level Transformer on Shakespeare: backprop vs DFA")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ command line
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dfa_client.train_transformer",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--task", choices=TASKS, default="vision")
    parser.add_argument(
        "--methods",
        type=choice_list(METHODS),
        default=list(DEFAULT_METHODS),
        help=f"from {','.join(METHODS)} (default {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--threshold", type=float, default=None, help="ternarisation threshold (fraction of max|e|)")
    parser.add_argument(
        "--rule",
        choices=TERNARY_RULES,
        default=None,
        help="ternarisation rule (default: max for vision, stochastic for text)",
    )
    parser.add_argument("--seeds", type=int_list, default=[0], help="comma-separated seeds; the table shows medians")
    parser.add_argument("--epochs", type=int, default=None, help="(vision) epochs (default 10)")
    parser.add_argument("--steps", type=int, default=None, help="(text) optimiser steps (default 1000)")
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr-backprop", type=float, default=None)
    parser.add_argument("--lr-dfa", type=float, default=None)
    parser.add_argument("--url", default=None, help="optical projector URL (sim://, usb://, rig://, tcp://)")
    add_output_arguments(parser, "log progress")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status."""
    args = build_parser().parse_args(argv)
    configure_logging(args.verbose)
    settings = default_settings(args.task)
    changes = {
        "epochs": args.epochs,
        "steps": args.steps,
        "d_model": args.d_model,
        "depth": args.depth,
        "batch_size": args.batch_size,
        "lr_backprop": args.lr_backprop,
        "lr_dfa": args.lr_dfa,
        "url": args.url,
        "threshold": args.threshold,
        "rule": args.rule,
    }
    settings = replace(settings, **{k: v for k, v in changes.items() if v is not None})
    for name in ("epochs", "steps", "d_model", "depth", "batch_size"):
        if getattr(settings, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1", file=sys.stderr)
            return 2

    def progress(result: TransformerResult) -> None:
        frames = "" if result.frames is None else f", {result.frames:,} frames"
        value = f"{100 * result.metric:5.1f} %" if result.task == "vision" else f"loss {result.metric:.3f}"
        print(f"  {result.method:<9} seed {result.seed}: {value}{frames}, {result.wall_s:.0f} s", flush=True)

    print(f"training the {args.task} Transformer with {', '.join(args.methods)} (seeds {args.seeds})")
    started = time.perf_counter()
    try:
        results = run(settings, args.methods, args.seeds, progress)
    except (DfaError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = summarise(results)
    print(format_table(summary))
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.out is not None:
        command = "python -m dfa_client.train_transformer " + " ".join(sys.argv[1:] if argv is None else argv)
        write_results(args.out, command, settings, {"torch": torch.__version__}, summary, results)
        print(f"wrote {args.out}")
    if args.plot is not None:
        plot_curves(results, settings, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
