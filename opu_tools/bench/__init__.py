"""``opu bench``: performance measured as ratios side by side in one run (never as timed tests).

Benchmarks:
- frames: emulated frames per second end to end through the driver (bytes both ways over the pyusb backend
  and the wire codecs) at the reference geometry, feature frames and raw frames;
- transform: ``opu.transform`` at 10,000 features -> 10,000 components, batch 1000, against a plain dense
  complex64 ``abs(X @ R) ** 2`` of the same size, with peak memory of each, and the cost of the default
  noise model on top of ``noise=0``;
- encoders: separated bit planes against a plain numpy version of the same algorithm (time, transient memory);
- linear: ``opu.linear_transform`` throughput, four-frame and two-frame schemes; fidelity to the exact B e per error
  density at the reference geometry, one range against auto-ranging (frames per vector, vectors/s);
- dfa: DFA projections per second, direct, through the in-process client and through the service with 1, 4 and
  8 client processes (opu_tools/bench/dfa.py);
- lm: one DFA feedback step of a language model (2,048 per-token error vectors of 65 entries -> 4 x 64 outputs),
  in-process and through the service, four-frame and two-frame: vectors/s, frames per step, the split of a step
  into encode, device, decode and the rest, and what a physical OPU at its frame rate would take
  (opu_tools/bench/lm.py);
- lightonml: the lightonml front's ``transform`` at 10,000 -> 10,000, batch 1000, against lightonml 1.4's own
  simulated OPU when lightonml is installed: vectors/s, setup with the first call, peak memory
  (opu_tools/bench/lightonml.py);
- dmd: host time to put one full picture into each lab DMD backend's format (ALP, DLPC900), against the shortest
  picture time.
Each figure is the median of ``repeats`` runs; the machine is shared and noisy, so compare ratios.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict

from .timing import BenchResult

__all__ = ["run_benchmarks", "BenchResult", "BENCHMARKS"]


def _frames(quick: bool, repeats: int) -> list[BenchResult]:
    from .frames import bench_frames

    return bench_frames(quick, repeats)


def _transform(quick: bool, repeats: int) -> list[BenchResult]:
    from .transform import bench_transform

    return bench_transform(quick, repeats)


def _encoders(quick: bool, repeats: int) -> list[BenchResult]:
    from .encoders import bench_encoders, bench_frame_codec

    return bench_frame_codec(quick, repeats) + bench_encoders(quick, repeats)


def _linear(quick: bool, repeats: int) -> list[BenchResult]:
    from .linear import bench_density, bench_fidelity, bench_linear

    return bench_linear(quick, repeats) + bench_fidelity(quick, repeats) + bench_density(quick, repeats)


def _dfa(quick: bool, repeats: int) -> list[BenchResult]:
    from .dfa import bench_dfa

    return bench_dfa(quick, repeats)


def _lm(quick: bool, repeats: int) -> list[BenchResult]:
    from .lm import bench_lm

    return bench_lm(quick, repeats)


def _lightonml(quick: bool, repeats: int) -> list[BenchResult]:
    from .lightonml import bench_lightonml

    return bench_lightonml(quick, repeats)


def _dmd(quick: bool, repeats: int) -> list[BenchResult]:
    from .dmd_pack import bench_dmd_pack

    return bench_dmd_pack(quick, repeats)


BENCHMARKS: dict[str, Callable[[bool, int], list[BenchResult]]] = {
    "frames": _frames,
    "transform": _transform,
    "encoders": _encoders,
    "linear": _linear,
    "dfa": _dfa,
    "lm": _lm,
    "lightonml": _lightonml,
    "dmd": _dmd,
}
"""Every benchmark by its ``--only`` name, in the order ``opu bench`` runs them (each module is imported when run)."""


def run_benchmarks(quick: bool = False, repeats: int = 5, only: str | None = None, json_path: str | None = None) -> int:
    """Run the benchmarks and print a table (the command ``opu bench``)."""
    results: list[BenchResult] = []
    for name, bench in BENCHMARKS.items():
        if only in (None, name):
            results += bench(quick, repeats)
    if quick:
        for r in results:
            if "target" in r.note:
                r.note = "(targets apply at the full sizes, without --quick)"
    width = max(len(r.name) for r in results)
    print(f"median of {repeats} runs{' (quick sizes)' if quick else ''}")
    for r in results:
        print(f"{r.name:<{width}}  {r.value:>12,.3f} {r.unit:<10} {r.note}")
    if json_path:
        with open(json_path, "w", encoding="utf-8") as fh:
            json.dump([asdict(r) for r in results], fh, indent=2)
    return 0
