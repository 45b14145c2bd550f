"""Frames per second end to end through the driver, and the emulator's own optics per raw frame."""

from __future__ import annotations

import functools

import numpy as np

import opu_driver

from .timing import REFERENCE_QUERY, BenchResult, median_time_s

__all__ = ["bench_frames"]


def bench_frames(
    quick: bool, repeats: int, query: str = REFERENCE_QUERY, n_features: int = 1000, n_components: int = 4096
) -> list[BenchResult]:
    """Emulated device frames/s end to end through the driver (the sizes of the published optical-DFA work)."""
    n_frames = 256 if quick else 2048
    rng = np.random.default_rng(1)
    X = rng.integers(0, 2, size=(n_frames, n_features), dtype=np.uint8)
    results = []
    with opu_driver.open(f"sim://?seed=1&{query}") as opu:
        opu.transform(X[:8], n_components)  # layout upload and optics fold happen once, not per frame
        t = median_time_s(lambda: opu.transform(X, n_components), repeats)
        results.append(
            BenchResult(
                f"feature frames, {n_features} features -> {n_components} components",
                n_frames / t,
                "frames/s",
                f"{n_frames} frames per run",
            )
        )
    n_raw = 16 if quick else 64
    with opu_driver.open(f"sim://?seed=1&{query}", frame_mode="raw") as opu:
        opu.transform(X[:2], n_components)
        t = median_time_s(lambda: opu.transform(X[:n_raw], n_components), repeats)
        results.append(
            BenchResult(
                "raw frames end to end (full mirror bitmaps both expanded and sent)",
                n_raw / t,
                "frames/s",
            )
        )
    results += _bench_raw_optics(query, n_components, n_raw, repeats)
    return results


def _bench_raw_optics(query: str, n_components: int, n_frames: int, repeats: int) -> list[BenchResult]:
    """The emulator's own cost of a raw frame at several input-mode counts (same mirrors, same pixels)."""
    from firmware_sim.config import SimConfig
    from firmware_sim.optics import OpticalPath

    base = SimConfig.from_query(query)
    width = min(base.camera_width, int(np.ceil(np.sqrt(n_components))))
    height = -(-n_components // width)
    packed = np.random.default_rng(4).integers(
        0, 256, size=(n_frames, (base.dmd_width * base.dmd_height + 7) // 8), dtype=np.uint8
    )
    results = []
    for cell in (8, 16, 32):
        optics = OpticalPath(SimConfig.from_query(f"{query}&cell={cell}"))
        optics.set_roi((base.camera_width - width) // 2, (base.camera_height - height) // 2, width, height)
        optics.intensity_raw(packed[:2], None)
        t = median_time_s(functools.partial(optics.intensity_raw, packed, None), repeats)
        results.append(
            BenchResult(
                f"emulator optics per raw frame, cell {cell} = {optics.n_input_modes} input modes",
                t / n_frames * 1e3,
                "ms/frame",
                "grows with input modes, not mirrors",
            )
        )
    return results
