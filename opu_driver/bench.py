"""``opu bench``: performance measured as ratios side by side in one run (never as timed tests).

Benchmarks:
- frames: emulated frames per second end to end through the driver (bytes both ways over the pyusb backend
  and the wire codecs) at the reference geometry, feature frames and raw frames;
- transform: ``opu.transform`` at 10,000 features -> 10,000 components, batch 1000, against a plain dense
  complex64 ``abs(X @ R) ** 2`` of the same size, with peak memory of each, and the cost of the default
  noise model on top of ``noise=0``.
Each figure is the median of ``repeats`` runs; the machine is shared and noisy, so compare ratios.
"""
from __future__ import annotations

import gc
import json
import logging
import statistics
import time
import tracemalloc
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np

from .opu import open as open_opu

__all__ = ["run_benchmarks", "BenchResult"]

_log = logging.getLogger(__name__)

REFERENCE_QUERY = "dmd=1140x912&camera=2048x1088"


@dataclass
class BenchResult:
    name: str
    value: float
    unit: str
    note: str = ""


def _median_time_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory traced while ``fn`` runs (numpy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def bench_frames(
    quick: bool, repeats: int, query: str = REFERENCE_QUERY, n_features: int = 1000, n_components: int = 4096
) -> list[BenchResult]:
    """Emulated device frames/s end to end through the driver (the sizes of the published optical-DFA work)."""
    n_frames = 256 if quick else 2048
    rng = np.random.default_rng(1)
    X = rng.integers(0, 2, size=(n_frames, n_features), dtype=np.uint8)
    results = []
    with open_opu(f"sim://?seed=1&{query}") as opu:
        opu.transform(X[:8], n_components)  # layout upload and optics fold happen once, not per frame
        t = _median_time_s(lambda: opu.transform(X, n_components), repeats)
        results.append(BenchResult(
            f"feature frames, {n_features} features -> {n_components} components", n_frames / t, "frames/s",
            f"{n_frames} frames per run",
        ))
    n_raw = 16 if quick else 64
    with open_opu(f"sim://?seed=1&{query}", frame_mode="raw") as opu:
        opu.transform(X[:2], n_components)
        t = _median_time_s(lambda: opu.transform(X[:n_raw], n_components), repeats)
        results.append(BenchResult(
            "raw frames end to end (full mirror bitmaps both expanded and sent)", n_raw / t, "frames/s",
        ))
    results += _bench_raw_optics(query, n_components, n_raw, repeats)
    return results


def _bench_raw_optics(query: str, n_components: int, n_frames: int, repeats: int) -> list[BenchResult]:
    """The emulator's own cost of a raw frame at several input-mode counts (same mirrors, same pixels)."""
    from firmware_sim.config import SimConfig
    from firmware_sim.optics import OpticalBench

    base = SimConfig.from_query(query)
    width = min(base.camera_width, int(np.ceil(np.sqrt(n_components))))
    height = -(-n_components // width)
    packed = np.random.default_rng(4).integers(
        0, 256, size=(n_frames, (base.dmd_width * base.dmd_height + 7) // 8), dtype=np.uint8
    )
    results = []
    for cell in (8, 16, 32):
        bench = OpticalBench(SimConfig.from_query(f"{query}&cell={cell}"))
        bench.set_roi((base.camera_width - width) // 2, (base.camera_height - height) // 2, width, height)
        bench.intensity_raw(packed[:2], None)
        t = _median_time_s(lambda: bench.intensity_raw(packed, None), repeats)
        results.append(BenchResult(
            f"emulator optics per raw frame, cell {cell} = {bench.n_input_modes} input modes",
            t / n_frames * 1e3, "ms/frame", "grows with input modes, not mirrors",
        ))
    return results


def bench_transform(quick: bool, repeats: int) -> list[BenchResult]:
    """transform vs the dense complex64 product, same sizes, same run."""
    n_features = n_components = 2000 if quick else 10_000
    batch = 200 if quick else 1000
    rng = np.random.default_rng(2)
    X = rng.integers(0, 2, size=(batch, n_features), dtype=np.uint8)
    results: list[BenchResult] = []

    # The published simulator's method: a dense complex64 matrix and abs(X @ R) ** 2.
    state: dict[str, object] = {}

    def dense_setup() -> None:
        g = np.random.default_rng(3)
        R = np.empty((n_features, n_components), dtype=np.complex64)
        R.real = g.standard_normal((n_features, n_components), dtype=np.float32)
        R.imag = g.standard_normal((n_features, n_components), dtype=np.float32)
        state["R"] = R

    def dense_run() -> np.ndarray:
        return np.abs(X.astype(np.complex64) @ state["R"]) ** 2

    dense_peak = _peak_bytes(lambda: (dense_setup(), dense_run()))
    dense_s = _median_time_s(dense_run, repeats)
    state.clear()
    gc.collect()

    def opu_case(noise: bool) -> tuple[float, int]:
        url = f"sim://?seed=2&{REFERENCE_QUERY}&grain=1" + ("" if noise else "&noise=0")
        holder: dict[str, object] = {}

        def setup_and_run() -> None:
            opu = open_opu(url)
            holder["opu"] = opu
            opu.transform(X, n_components)

        peak = _peak_bytes(setup_and_run)
        opu = holder["opu"]
        try:
            seconds = _median_time_s(lambda: opu.transform(X, n_components), repeats)
        finally:
            opu.close()
        return seconds, peak

    quiet_s, quiet_peak = opu_case(noise=False)
    noisy_s, _ = opu_case(noise=True)
    size = f"{n_features} -> {n_components}, batch {batch}"
    results += [
        BenchResult(f"dense complex64 abs(X @ R)**2, {size}", batch / dense_s, "vectors/s"),
        BenchResult(f"opu.transform on sim:// noise=0, {size}", batch / quiet_s, "vectors/s",
                    "end to end through the driver: feature frames, USB backend, MONO8 camera frames"),
        BenchResult("speed-up of transform (noise=0) over the dense product", dense_s / quiet_s, "x", "target >= 1.5"),
        BenchResult("default noise model cost on top of noise=0", noisy_s / quiet_s - 1.0, "fraction",
                    "target <= 0.25"),
        BenchResult("peak memory, dense product (R + product)", dense_peak / 2**20, "MiB"),
        BenchResult("peak memory, transform incl. setup (noise=0)", quiet_peak / 2**20, "MiB",
                    "target <= 60% of the published simulator's 1.58 GB = 948 MB"),
        BenchResult("peak memory ratio transform / dense", quiet_peak / dense_peak, "x"),
    ]
    return results


def run_benchmarks(quick: bool = False, repeats: int = 5, only: str | None = None, json_path: str | None = None) -> int:
    """Run the benchmarks and print a table (the command ``opu bench``)."""
    results: list[BenchResult] = []
    if only in (None, "frames"):
        results += bench_frames(quick, repeats)
    if only in (None, "transform"):
        results += bench_transform(quick, repeats)
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
