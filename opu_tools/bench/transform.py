"""opu.transform against the published simulator's dense complex64 product, same sizes, same run."""

from __future__ import annotations

import gc

import numpy as np
import numpy.typing as npt

import opu_driver

from .timing import REFERENCE_QUERY, BenchResult, median_time_s, peak_bytes

__all__ = ["bench_transform"]


def bench_transform(quick: bool, repeats: int) -> list[BenchResult]:
    """transform vs the dense complex64 product, same sizes, same run."""
    n_features = n_components = 2000 if quick else 10_000
    batch = 200 if quick else 1000
    rng = np.random.default_rng(2)
    X = rng.integers(0, 2, size=(batch, n_features), dtype=np.uint8)
    results: list[BenchResult] = []

    # The published simulator's method: a dense complex64 matrix and abs(X @ R) ** 2.
    state: dict[str, npt.NDArray[np.complex64]] = {}

    def dense_setup() -> None:
        g = np.random.default_rng(3)
        R = np.empty((n_features, n_components), dtype=np.complex64)
        R.real = g.standard_normal((n_features, n_components), dtype=np.float32)
        R.imag = g.standard_normal((n_features, n_components), dtype=np.float32)
        state["R"] = R

    def dense_run() -> np.ndarray:
        return np.abs(X.astype(np.complex64) @ state["R"]) ** 2

    def dense_setup_and_run() -> None:
        dense_setup()
        dense_run()

    dense_peak = peak_bytes(dense_setup_and_run)
    dense_s = median_time_s(dense_run, repeats)
    state.clear()
    gc.collect()

    def opu_case(noise: bool) -> tuple[float, int]:
        url = f"sim://?seed=2&{REFERENCE_QUERY}&grain=1" + ("" if noise else "&noise=0")
        holder: dict[str, opu_driver.Opu] = {}

        def setup_and_run() -> None:
            opu = opu_driver.open(url)
            holder["opu"] = opu
            opu.transform(X, n_components)

        peak = peak_bytes(setup_and_run)
        opu = holder["opu"]
        try:
            seconds = median_time_s(lambda: opu.transform(X, n_components), repeats)
        finally:
            opu.close()
        return seconds, peak

    quiet_s, quiet_peak = opu_case(noise=False)
    noisy_s, _ = opu_case(noise=True)
    size = f"{n_features} -> {n_components}, batch {batch}"
    results += [
        BenchResult(f"dense complex64 abs(X @ R)**2, {size}", batch / dense_s, "vectors/s"),
        BenchResult(
            f"opu.transform on sim:// noise=0, {size}",
            batch / quiet_s,
            "vectors/s",
            "end to end through the driver: feature frames, USB backend, MONO8 camera frames",
        ),
        BenchResult("speed-up of transform (noise=0) over the dense product", dense_s / quiet_s, "x", "target >= 1.5"),
        BenchResult(
            "default noise model cost on top of noise=0", noisy_s / quiet_s - 1.0, "fraction", "target <= 0.25"
        ),
        BenchResult("peak memory, dense product (R + product)", dense_peak / 2**20, "MiB"),
        BenchResult(
            "peak memory, transform incl. setup (noise=0)",
            quiet_peak / 2**20,
            "MiB",
            "target <= 60% of the published simulator's 1.58 GB = 948 MB",
        ),
        BenchResult("peak memory ratio transform / dense", quiet_peak / dense_peak, "x"),
    ]
    return results
