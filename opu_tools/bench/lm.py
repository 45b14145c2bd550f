"""``opu bench --only lm``: one DFA feedback step of a language model, in-process and through the service.

A character-level Transformer trained by DFA projects one error vector per token: a step sends batch x sequence
vectors (32 x 64 = 2,048) of vocabulary size (65 characters), each projected to n_blocks x d_model outputs
(4 x 64 = 256: one d_model slice per block). The step here is what the client does for it: ``FeedbackProjection``
with ternary codes (centred through one more, all-ones vector, and rescaled), one projector call per step, on
per-token softmax errors (softmax of random logits minus the one-hot target).

Side by side in one run, on one emulated device at the reference geometry (default noise, a 200 us exposure so
that no linear-mode frame saturates), for the four-frame and the two-frame scheme:

- in-process: ``dfa_client.connect("sim://...")`` on the Opu of this process;
- service: an ``OpuService`` with its default limits, in a thread of this process, serving that same Opu on
  loopback, and one client (``tcp://``) in this process;
- and, for scale, the same step on ``digital://`` (the exact B e as a numpy product on this CPU).

Each of ``repeats`` rounds runs the four cases once in turn (the shared machine's speed drifts; ratios are taken per
round, then their median); every figure is a median over the rounds.

The split of a step's time:

- encode: the client's ternarisation and stacking (from the step's start to its projector call) plus the linear
  mode's encode stage (ternary rows into DMD frames, light pilots placed: ``Opu.linear_mode.stage_times``);
- device: the linear mode's device stage (``Opu.acquire``: frames shown, camera values read back);
- decode: the linear mode's decode stage (pilot levels, frames combined into projections) plus the client's
  centring, rescaling and scaling (from the projector's return to the step's end);
- other: the rest of the projector call: input checks and copies; for the service also the wire format, the
  loopback socket and the service's queue.

On the emulator the device stage is host work as well: the emulator's optics run in this process, next to the
driver's own handling of every frame. A physical OPU's device time is its frames over its frame rate: the
"physical OPU" rows divide the frames of a step by ``PHYSICAL_FRAME_RATE_HZ`` and compare that with the host work
measured here (encode + decode + other), to show which of the two bounds a step. The "pipelining bound" rows say
what overlapping all host work with the device could gain at most: (device + host) / max(device, host).
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from .timing import REFERENCE_QUERY, BenchResult, median_time_s

if TYPE_CHECKING:
    from dfa_client import FeedbackProjection, Projector
    from opu_driver import Opu

__all__ = ["bench_lm", "LmShape", "PHYSICAL_FRAME_RATE_HZ", "LM_SHAPE", "QUICK_LM_SHAPE"]

PHYSICAL_FRAME_RATE_HZ = 1500.0
"""Frame rate assumed for a physical OPU: about 1.5 kHz for the vendor's device (an assumption, see
docs/scaling.md)."""

SCHEMES = ("four_frame", "two_frame")
_FRAMES_PER_VECTOR = {"four_frame": 4, "two_frame": 2}


@dataclass(frozen=True)
class LmShape:
    """The sizes of one language-model DFA step: tokens = batch x sequence error vectors of ``vocabulary``
    entries, each projected to ``n_blocks`` x ``d_model`` outputs."""

    batch: int
    sequence: int
    vocabulary: int
    n_blocks: int
    d_model: int

    @property
    def tokens(self) -> int:
        return self.batch * self.sequence

    @property
    def n_components(self) -> int:
        return self.n_blocks * self.d_model

    @property
    def label(self) -> str:
        return f"{self.batch}x{self.sequence} tokens, {self.vocabulary} -> {self.n_blocks}x{self.d_model}"


LM_SHAPE = LmShape(batch=32, sequence=64, vocabulary=65, n_blocks=4, d_model=64)
"""A character-level model: batch 32, 64-character context, 65 characters, 4 blocks of width 64."""
QUICK_LM_SHAPE = LmShape(batch=4, sequence=16, vocabulary=65, n_blocks=4, d_model=64)
"""The same model with 64 tokens a step (``--quick``)."""


class _TimedProjector:
    """A projector seen through a stopwatch: forwards everything, and records when its last ``project`` call
    started and returned, so that a step's client-side work before and after the call can be told apart."""

    def __init__(self, projector: Projector) -> None:
        self._projector = projector
        self.started = self.returned = 0.0

    def project(self, errors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        self.started = time.perf_counter()
        try:
            return self._projector.project(errors)
        finally:
            self.returned = time.perf_counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._projector, name)


@dataclass(frozen=True)
class _Step:
    """One measured step: its wall time, its split (seconds), the frames and device calls it took."""

    step_s: float
    encode_s: float
    device_s: float
    decode_s: float
    other_s: float
    frames: int
    device_calls: int

    @property
    def host_s(self) -> float:
        """Everything but the device stage."""
        return self.encode_s + self.decode_s + self.other_s


def token_errors(shape: LmShape, seed: int = 0) -> npt.NDArray[np.float64]:
    """Per-token output errors of a language model, (tokens, vocabulary): softmax(logits) - onehot(target), with
    standard normal logits and uniform targets."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(shape.tokens, shape.vocabulary))
    errors = np.exp(logits - logits.max(axis=1, keepdims=True))
    errors /= errors.sum(axis=1, keepdims=True)
    errors[np.arange(shape.tokens), rng.integers(0, shape.vocabulary, shape.tokens)] -= 1.0
    return errors


def _run_step(feedback: FeedbackProjection, timed: _TimedProjector, opu: Opu, E: npt.NDArray[Any]) -> _Step:
    """One feedback step through ``feedback`` (whose projector is ``timed``), split by the stage times of the
    Opu that serves it (in this process, whichever path the request takes)."""
    linear = opu.linear_mode
    gc.collect()
    times_before, frames_before = linear.stage_times, opu.counters.frames_sent
    start = time.perf_counter()
    feedback.project(E)
    end = time.perf_counter()
    spent = linear.stage_times - times_before
    stages = spent.encode_s + spent.device_s + spent.decode_s
    return _Step(
        step_s=end - start,
        encode_s=(timed.started - start) + spent.encode_s,
        device_s=spent.device_s,
        decode_s=spent.decode_s + (end - timed.returned),
        other_s=(timed.returned - timed.started) - stages,
        frames=opu.counters.frames_sent - frames_before,
        device_calls=spent.device_calls,
    )


def _median(steps: list[_Step], field: str) -> float:
    return float(statistics.median(getattr(s, field) for s in steps))


def _calls(count: int) -> str:
    return f"{count} device call{'' if count == 1 else 's'}"


def _split_rows(label: str, path: str, steps: list[_Step]) -> list[BenchResult]:
    step_s = _median(steps, "step_s")
    rows = []
    for stage in ("encode", "device", "decode", "other"):
        value = _median(steps, f"{stage}_s")
        rows.append(BenchResult(f"{label}, {path}: {stage}", 1e3 * value, "ms", f"{100 * value / step_s:.1f}% of step"))
    return rows


def _scheme_rows(
    shape: LmShape, scheme: str, local: list[_Step], service: list[_Step], rate_hz: float, query: str
) -> list[BenchResult]:
    """The rows of one scheme (see the module docstring)."""
    label = f"LM step {shape.label}, {scheme.replace('_', '-')}"
    local_s, service_s = _median(local, "step_s"), _median(service, "step_s")
    frames = int(_median(local, "frames"))
    vectors = shape.tokens + 1  # the all-ones vector that centres the codes goes in the same call
    per = _FRAMES_PER_VECTOR[scheme]
    ratio = statistics.median(a.step_s / b.step_s for a, b in zip(local, service, strict=True))
    local_calls, service_calls = int(_median(local, "device_calls")), int(_median(service, "device_calls"))
    rows = [
        BenchResult(
            f"{label}, in-process",
            shape.tokens / local_s,
            "vectors/s",
            f"step {1e3 * local_s:.0f} ms, {_calls(local_calls)}; emulator {query}",
        ),
        BenchResult(
            f"{label}, service",
            shape.tokens / service_s,
            "vectors/s",
            f"{ratio:.2f}x in-process; step {1e3 * service_s:.0f} ms, {_calls(service_calls)}"
            + (" (the service's device_call_s splits a request)" if service_calls > 1 else ""),
        ),
        BenchResult(
            f"{label}, frames per step",
            frames,
            "frames",
            f"{vectors} vectors x {per} + {frames - vectors * per} light pilots; service "
            f"{int(_median(service, 'frames'))}",
        ),
    ]
    rows += _split_rows(label, "in-process", local)
    rows += _split_rows(label, "service", service)
    device_s = frames / rate_hz
    host_s = _median(local, "host_s")
    emulator_device_s = _median(local, "device_s")
    bound = "device-bound" if device_s > host_s else "host-bound"
    rows.append(
        BenchResult(
            f"{label}, physical OPU at {rate_hz / 1e3:g} kHz",
            device_s,
            "s/step",
            f"{shape.tokens / device_s:,.0f} vectors/s; host work {1e3 * host_s:.1f} ms/step "
            f"({100 * host_s / device_s:.2g}% of it): {bound}; the emulator's device stage "
            f"{frames / emulator_device_s:,.0f} frames/s",
        )
    )
    rows.append(
        BenchResult(
            f"{label}, pipelining bound",
            (emulator_device_s + host_s) / max(emulator_device_s, host_s),
            "x",
            f"in-process on the emulator, host work fully overlapped with the device; at "
            f"{rate_hz / 1e3:g} kHz {(device_s + host_s) / max(device_s, host_s):.4f}x",
        )
    )
    return rows


def bench_lm(
    quick: bool,
    repeats: int,
    *,
    query: str = REFERENCE_QUERY,
    shape: LmShape | None = None,
    rate_hz: float = PHYSICAL_FRAME_RATE_HZ,
) -> list[BenchResult]:
    """The language-model step table (see the module docstring); ``query`` and ``shape`` shrink it for a smoke
    test."""
    import dfa_client
    import opu_driver
    from opu_driver.service import OpuService

    shape = shape or (QUICK_LM_SHAPE if quick else LM_SHAPE)
    rounds = 1 if quick else repeats
    # an exposure that keeps the brightest linear-mode frames below full scale, as calibration would choose
    sim = f"sim://?seed=8&{query}&exposure_us=200"
    E = token_errors(shape)
    blocks = [shape.d_model] * shape.n_blocks
    steps: dict[tuple[str, str], list[_Step]] = {(s, p): [] for s in SCHEMES for p in ("local", "service")}
    with opu_driver.open(sim) as opu, OpuService(sim, token="", opu=opu) as service:
        host, port = service.address
        cases: dict[tuple[str, str], tuple[FeedbackProjection, _TimedProjector]] = {}
        projectors: list[Projector] = []
        try:
            for scheme in SCHEMES:
                for path, url, options in (
                    ("local", sim, {"opu": opu}),
                    ("service", f"tcp://{host}:{port}", {"token": ""}),
                ):
                    projector = dfa_client.connect(
                        url, shape.n_components, n_features=shape.vocabulary, scheme=scheme, **options
                    )
                    projectors.append(projector)
                    timed = _TimedProjector(projector)
                    feedback = dfa_client.FeedbackProjection(cast("Projector", timed), blocks, encoding="ternary")
                    feedback.project(E)  # the reference calibration (once), the connection, first-call costs
                    cases[scheme, path] = (feedback, timed)
            digital = dfa_client.connect("digital://?seed=8", shape.n_components, n_features=shape.vocabulary)
            projectors.append(digital)
            exact = dfa_client.FeedbackProjection(digital, blocks, encoding="ternary")
            exact.project(E)
            digital_s: list[float] = []
            for _ in range(rounds):
                for key, (feedback, timed) in cases.items():
                    steps[key].append(_run_step(feedback, timed, opu, E))
                digital_s.append(median_time_s(functools.partial(exact.project, E), 1))
        finally:
            for projector in projectors:
                projector.close()
    results: list[BenchResult] = []
    for scheme in SCHEMES:
        results += _scheme_rows(shape, scheme, steps[scheme, "local"], steps[scheme, "service"], rate_hz, query)
    four = steps[SCHEMES[0], "local"]
    results.append(
        BenchResult(
            f"LM step {shape.label}, digital:// (exact B e in numpy on this CPU)",
            shape.tokens / statistics.median(digital_s),
            "vectors/s",
            f"step {1e3 * statistics.median(digital_s):.1f} ms, "
            f"{statistics.median(a.step_s / b for a, b in zip(four, digital_s, strict=True)):.0f}x faster than the "
            "four-frame emulator in-process",
        )
    )
    return results
