"""The lightonml front's ``transform`` against lightonml 1.4's own simulated OPU, same sizes, same run.

Both sides run lightonml's call sequence: build the OPU, ``fit1d(n_features=...)``, ``transform(X)``. lightonml
builds a dense complex64 matrix when the OPU is made and projects with ``abs(X @ R) ** 2``; the front projects on
the emulator at the reference geometry (default noise, MONO8 camera frames) through the whole driver. lightonml is
optional here: without it the front's figures are printed alone.
"""

from __future__ import annotations

import gc
import logging
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .timing import REFERENCE_QUERY, BenchResult, median_time_s, peak_bytes

__all__ = ["bench_lightonml"]

_INSTALL = 'pip install --no-deps lightonml==1.4.3 numexpr attrs requests "setuptools<81"'


def _lightonml_opu() -> Callable[..., Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lightonml import OPU
    except ImportError:
        return None
    return OPU


def _measure(make: Callable[[], Any], X: np.ndarray, n_features: int, repeats: int) -> tuple[float, float, int]:
    """(setup + first transform s, median transform s, peak traced bytes of setup + first transform)."""
    holder: dict[str, Any] = {}

    def setup_and_first() -> None:
        opu = make()
        opu.fit1d(n_features=n_features)
        opu.transform(X)
        holder["opu"] = opu

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        peak = peak_bytes(setup_and_first)
        first_s = time.perf_counter() - t0
        try:
            steady_s = median_time_s(lambda: holder["opu"].transform(X), repeats)
        finally:
            holder.pop("opu").close()
    gc.collect()
    return first_s, steady_s, peak


def _fidelity(front_opu: Callable[..., Any], X: np.ndarray, n: int) -> float:
    """Correlation of the front's outputs with the same emulated device's noiseless outputs (same seed)."""
    outputs = []
    for noise in ("", "&noise=0"):
        with front_opu(n_components=n, url=f"sim://?seed=4&{REFERENCE_QUERY}{noise}") as opu:
            opu.fit1d(n_features=n)
            outputs.append(np.asarray(opu.transform(X), dtype=np.float64).ravel())
    return float(np.corrcoef(outputs[0], outputs[1])[0, 1])


def bench_lightonml(quick: bool, repeats: int) -> list[BenchResult]:
    """Front vs lightonml's simulated OPU: transform speed (first call with setup, then steady), peak memory, and
    the front's fidelity to its noiseless device."""
    from opu_driver.compat.lightonml import OPU as FrontOPU

    n = 2000 if quick else 10_000
    batch = 200 if quick else 1000
    X = np.random.default_rng(4).integers(0, 2, size=(batch, n), dtype=np.uint8)
    size = f"{n} -> {n}, batch {batch}"
    logging.getLogger("firmware_sim").setLevel(logging.ERROR)

    front = _measure(lambda: FrontOPU(n_components=n, url=f"sim://?seed=4&{REFERENCE_QUERY}"), X, n, max(1, repeats))
    results = [
        BenchResult(f"front OPU.transform, {size}", batch / front[1], "vectors/s", "emulator, reference geometry"),
        BenchResult(
            "front transform fidelity",
            _fidelity(FrontOPU, X, n),
            "corr",
            "against the same device without noise (lightonml's simulator: 1, it has no noise model)",
        ),
        BenchResult("front setup + first transform", front[0], "s", "open, fit1d, emulator's fold"),
        BenchResult("front peak memory, setup + first transform", front[2] / 2**20, "MiB"),
    ]
    lightonml_opu = _lightonml_opu()
    if lightonml_opu is None:
        results.append(BenchResult("lightonml not installed: no comparison", 0.0, "", _INSTALL))
        return results
    simulated = _measure(lambda: lightonml_opu(n_components=n, max_n_features=n, simulated=True), X, n, max(1, repeats))
    results += [
        BenchResult(f"lightonml simulated OPU.transform, {size}", batch / simulated[1], "vectors/s"),
        BenchResult("lightonml setup + first transform", simulated[0], "s", "its dense complex64 matrix"),
        BenchResult("lightonml peak memory, setup + first transform", simulated[2] / 2**20, "MiB"),
        BenchResult("speed-up of the front's transform over lightonml's", simulated[1] / front[1], "x", "target >= 1"),
        BenchResult("speed-up of the front's setup + first transform", simulated[0] / front[0], "x"),
        BenchResult("peak memory ratio front / lightonml", front[2] / simulated[2], "x", "target < 1"),
    ]
    return results
