"""Shared timing helpers of the benchmarks: medians of repeated runs, traced peak memory, one result row."""

from __future__ import annotations

import gc
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["BenchResult", "REFERENCE_QUERY", "median_time_s", "peak_bytes"]

REFERENCE_QUERY = "dmd=1140x912&camera=2048x1088"
"""The emulator at the reference geometry (the published hardware's DMD and camera)."""


@dataclass
class BenchResult:
    """One printed row: what was measured, its value and unit, and a note (targets, the comparison)."""

    name: str
    value: float
    unit: str
    note: str = ""


def median_time_s(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``, garbage collected before each."""
    times = []
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory traced while ``fn`` runs (numpy reports its buffers to tracemalloc)."""
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
