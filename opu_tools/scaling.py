"""When optical DFA feedback costs less time and energy than a GPU computing the same feedback: the model of
docs/scaling.md, as code, so that its table is computed rather than typed (``python -m opu_tools.scaling``
prints it; a test checks that the page holds what this prints).

DFA's feedback for one step projects N error vectors of n_in entries to n_out outputs: B e for every vector.

- Optical: one projection costs a fixed number of frames whatever its size, as long as it fits the device
  (n_in on the DMD's signal part, n_out on the camera): f frames per vector (4 four-frame, 2 two-frame ternary;
  times the bit planes for real values), plus the light pilots (one frame per ``PILOT_EVERY`` vector frames).
  Time: N f (1 + 1/PILOT_EVERY) / frame_rate.
- GPU: 2 N n_in n_out flops at a sustained rate F, and never less than one kernel launch.
- Energy: power x time on each side (the OPU and the share of its host that decodes its frames; the GPU alone).
- Host: the host decodes every output of every vector; ``host_ns_per_output`` (measured on this project's
  2-core machine by ``opu bench --only lm`` and the linear mode's stage times, one core) says how many host cores
  keep up with the device.

Every constant of ``Assumptions`` is an assumption, stated in docs/scaling.md; change them and print again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Assumptions", "Workload", "Estimate", "estimate", "WORKLOADS", "markdown_table", "break_even_size"]

PILOT_EVERY = 60
"""Vector frames per light pilot of the linear mode (opu_driver.opu.light: one frame in 61 is a pilot)."""


@dataclass(frozen=True)
class Assumptions:
    """The device, GPU and power figures the estimates rest on (all assumptions; see docs/scaling.md).

    Attributes:
        frame_rate_hz: the OPU's frame rate (the vendor's OPU: about 1.5 kHz).
        max_inputs: DMD inputs (about 1e6 on the vendor's OPU).
        reference_fraction: share of the inputs the linear mode gives to its reference (0.5 by default).
        max_outputs: camera outputs (about 1e6).
        gpu_flops: sustained GPU rate on the feedback's matrix product, flop/s (an H100 SXM at about half its
            989 TFLOP/s dense BF16 peak).
        gpu_launch_s: the shortest time any GPU product takes (a kernel launch and its synchronisation).
        gpu_power_w: the GPU's power while it computes (an H100 SXM's 700 W board power).
        opu_power_w: the OPU's power (laser, DMD, camera, electronics).
        host_power_w: the host's share that feeds the OPU and decodes its frames.
        host_ns_per_output: host time per output of one projected vector, one core: the linear mode's decode
            (about 12 ns, measured) plus the driver's decoding of each camera pixel (about 1.2 ns per 8-bit pixel and
            frame, measured), for two frames per vector.
    """

    frame_rate_hz: float = 1500.0
    max_inputs: int = 1_000_000
    reference_fraction: float = 0.5
    max_outputs: int = 1_000_000
    gpu_flops: float = 5e14
    gpu_launch_s: float = 1e-5
    gpu_power_w: float = 700.0
    opu_power_w: float = 30.0
    host_power_w: float = 70.0
    host_ns_per_output: float = 14.4

    @property
    def signal_inputs(self) -> int:
        """Inputs left for the error vector beside the linear mode's reference."""
        return int(self.max_inputs * (1 - self.reference_fraction))


@dataclass(frozen=True)
class Workload:
    """One training step's feedback: ``tokens`` error vectors of ``vocabulary`` entries, each projected to
    ``blocks`` x ``d_model`` outputs (one d_model-wide feedback per block)."""

    d_model: int
    blocks: int
    vocabulary: int
    tokens: int
    label: str = ""

    @property
    def n_in(self) -> int:
        return self.vocabulary

    @property
    def n_out(self) -> int:
        return self.d_model * self.blocks


@dataclass(frozen=True)
class Estimate:
    """Time (s) and energy (J) of one step's feedback on each side, and the host cores the OPU needs."""

    optical_four_s: float
    optical_two_s: float
    gpu_s: float
    optical_four_j: float
    optical_two_j: float
    gpu_j: float
    host_cores_two: float


def _frames_per_vector(frames: int) -> float:
    return frames * (1 + 1 / PILOT_EVERY)


def estimate(work: Workload, a: Assumptions = Assumptions()) -> Estimate:
    """The step's feedback on a physical OPU (four- and two-frame ternary) and on the GPU.

    Raises:
        ValueError: a projection larger than the device (it would need several frames per part, and distinct
            matrices for each piece: more devices or DMD positions; see docs/scaling.md).
    """
    if work.n_in > a.signal_inputs or work.n_out > a.max_outputs:
        raise ValueError(f"{work.n_in} -> {work.n_out} exceeds one frame ({a.signal_inputs} -> {a.max_outputs})")
    four = work.tokens * _frames_per_vector(4) / a.frame_rate_hz
    two = work.tokens * _frames_per_vector(2) / a.frame_rate_hz
    gpu = max(2.0 * work.tokens * work.n_in * work.n_out / a.gpu_flops, a.gpu_launch_s)
    optical_w = a.opu_power_w + a.host_power_w
    host_s = work.tokens * work.n_out * a.host_ns_per_output * 1e-9
    return Estimate(four, two, gpu, optical_w * four, optical_w * two, a.gpu_power_w * gpu, host_s / two)


def break_even_size(frames: int, a: Assumptions = Assumptions(), energy: bool = False) -> float:
    """The n_in x n_out above which a projection costs the OPU less time (or energy) than the GPU:
    f (1 + 1/PILOT_EVERY) F / (2 R), times the power ratio for energy. The number of vectors cancels."""
    size = _frames_per_vector(frames) * a.gpu_flops / (2.0 * a.frame_rate_hz)
    return size * (a.opu_power_w + a.host_power_w) / a.gpu_power_w if energy else size


WORKLOADS = (
    Workload(d_model=64, blocks=4, vocabulary=65, tokens=32 * 64),
    Workload(d_model=512, blocks=8, vocabulary=32_768, tokens=1 << 19),
    Workload(d_model=1024, blocks=24, vocabulary=50_257, tokens=1 << 19),
    Workload(d_model=2048, blocks=24, vocabulary=32_768, tokens=1 << 19),
    Workload(d_model=4096, blocks=32, vocabulary=128_256, tokens=1 << 19),
    Workload(d_model=8192, blocks=80, vocabulary=128_256, tokens=1 << 19),
    Workload(d_model=16_384, blocks=60, vocabulary=262_144, tokens=1 << 19),
    Workload(d_model=15_625, blocks=64, vocabulary=500_000, tokens=1 << 19, label="the whole device"),
)
"""The worked table: the benchmark's character model, then d_model 512 to 16,384 with vocabularies of 32k to
256k, 2^19 tokens a step (256 sequences of 2,048), then a projection as large as the device takes in one frame."""


def _seconds(value: float) -> str:
    if value < 1e-3:
        return f"{value * 1e6:.0f} us"
    if value < 1:
        return f"{value * 1e3:.3g} ms"
    return f"{value:.3g} s" if value < 100 else f"{value:,.0f} s"


def _joules(value: float) -> str:
    if value < 1:
        return f"{value:.2g} J"
    return f"{value:.0f} J" if value < 1e3 else f"{value / 1e3:,.3g} kJ"


def _ratio(value: float) -> str:
    return f"{value:.2g}" if value >= 0.01 else _size(value)


def _size(value: float) -> str:
    """A number as 1.7e10."""
    exponent = math.floor(math.log10(value))
    return f"{value / 10**exponent:.2g}e{exponent}"


def markdown_table(a: Assumptions = Assumptions(), workloads: tuple[Workload, ...] = WORKLOADS) -> str:
    """The worked table of docs/scaling.md, one row per workload."""
    lines = [
        "| d_model x blocks, vocabulary | tokens/step | n_in x n_out | OPU four-frame | OPU two-frame | GPU "
        "| GPU time / OPU time (two-frame) | energy OPU two-frame | energy GPU | host cores for the OPU (two-frame) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in workloads:
        e = estimate(w, a)
        model = f"{w.d_model:,} x {w.blocks}, {w.vocabulary:,}" + (f" ({w.label})" if w.label else "")
        lines.append(
            f"| {model} | {w.tokens:,} | {_size(w.n_in * w.n_out)} "
            f"| {_seconds(e.optical_four_s)} | {_seconds(e.optical_two_s)} | {_seconds(e.gpu_s)} "
            f"| {_ratio(e.gpu_s / e.optical_two_s)} | {_joules(e.optical_two_j)} | {_joules(e.gpu_j)} "
            f"| {math.ceil(e.host_cores_two)} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    a = Assumptions()
    print(markdown_table(a))
    for frames in (4, 2):
        print(
            f"break-even n_in x n_out, {frames} frames per vector: time {break_even_size(frames, a):.3g}, "
            f"energy {break_even_size(frames, a, energy=True):.3g}"
        )
