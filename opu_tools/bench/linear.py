"""The linear mode: throughput of linear_transform and its fidelity to the exact B e."""

from __future__ import annotations

import functools

import numpy as np

import opu_driver

from .timing import REFERENCE_QUERY, BenchResult, median_time_s

__all__ = ["bench_linear", "bench_fidelity"]


def bench_linear(quick: bool, repeats: int) -> list[BenchResult]:
    """linear_transform through the emulator, four- and two-frame schemes, 1000 features -> 4096 components."""
    batch = 32 if quick else 256
    E = np.random.default_rng(6).choice([-1, 0, 1], size=(batch, 1000), p=[0.25, 0.5, 0.25])
    results = []
    with opu_driver.open(f"sim://?seed=6&{REFERENCE_QUERY}") as opu:
        for scheme in ("four_frame", "two_frame"):
            opu.linear_transform(E[:2], 4096, scheme=scheme)  # reference calibration, once
            t = median_time_s(functools.partial(opu.linear_transform, E, 4096, scheme=scheme), repeats)
            results.append(
                BenchResult(
                    f"linear_transform {scheme}, ternary, 1000 -> 4096",
                    batch / t,
                    "vectors/s",
                    f"batch {batch}, reference geometry",
                )
            )
    return results


def bench_fidelity(quick: bool, repeats: int) -> list[BenchResult]:
    """Correlation of linear_transform with the exact B e from the emulator's ground truth (default noise)."""
    n_features, n_out = 256, 1024
    rng = np.random.default_rng(7)
    E = rng.choice([-1, 0, 1], size=(64, n_features), p=[0.2, 0.6, 0.2])
    real = rng.normal(size=(32, n_features))
    results = []
    with opu_driver.open("sim://?seed=7&dmd=320x256&camera=128x128") as opu:
        emulator = opu.emulator
        assert emulator is not None  # a sim:// device carries its emulator

        def correlation(values: np.ndarray, vectors: np.ndarray) -> float:
            mask = opu.linear_mode.calibration(n_features, n_out).mask
            F = emulator.ground_truth.feature_matrix()[:, :n_out]
            reference = F[n_features:].sum(axis=0)  # the reference's features, all on
            B = np.real(np.conj(reference) / np.abs(reference) * F[:n_features])
            return float(np.corrcoef(values[:, mask].ravel(), (vectors @ B)[:, mask].ravel())[0, 1])

        for scheme in ("four_frame", "two_frame"):
            results.append(
                BenchResult(
                    f"fidelity {scheme}, ternary, {n_features} -> {n_out}",
                    correlation(opu.linear_transform(E, n_out, scheme=scheme), E),
                    "corr",
                    "vs exact B e; four-frame target >= 0.99",
                )
            )
        for n_bits in (2, 4, 8) if quick else range(1, 9):
            results.append(
                BenchResult(
                    f"fidelity four_frame, real values, {n_bits} bit planes",
                    correlation(opu.linear_transform(real, n_out, n_bits=n_bits), real),
                    "corr",
                    "Gaussian inputs vs exact B x",
                )
            )
    return results
