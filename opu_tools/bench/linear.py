"""The linear mode: throughput of linear_transform and its fidelity to the exact B e."""

from __future__ import annotations

import functools

import numpy as np

import opu_driver

from .timing import REFERENCE_QUERY, BenchResult, median_time_s

__all__ = ["bench_linear", "bench_fidelity", "bench_density"]

DENSITIES = (0.01, 0.04, 0.1, 0.4, 1.0)
"""Shares of nonzero entries of the ternary errors of the fidelity-per-density table."""


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


def _exact_matrix(opu: opu_driver.Opu, n_features: int, n_out: int) -> np.ndarray:
    """Re[exp(-i phi) R] of the emulator's ground truth, for the split layout loaded (the whole reference on)."""
    emulator = opu.emulator
    assert emulator is not None  # a sim:// device carries its emulator
    F = emulator.ground_truth.feature_matrix()[:, :n_out]
    reference = F[n_features:].sum(axis=0)
    return np.real(np.conj(reference) / np.abs(reference) * F[:n_features])


def _density_rows(
    opu: opu_driver.Opu, label: str, errors: dict[float, np.ndarray], real: np.ndarray
) -> list[BenchResult]:
    n_features, n_out = 1000, 4096
    linear = opu.linear_mode
    results = []
    for density, E in errors.items():
        opu.linear_transform(E, n_out)  # the references of every range, measured once
        frames, device_us = opu.counters.frames_sent, opu.device_time_us
        t = median_time_s(functools.partial(opu.linear_transform, E, n_out), 1)
        per_vector = (opu.counters.frames_sent - frames) / E.shape[0]
        device_ms = (opu.device_time_us - device_us) / E.shape[0] / 1000  # longer exposures cost device time
        Y = opu.linear_transform(E, n_out)
        mask = linear.calibration(n_features, n_out).mask
        B = _exact_matrix(opu, n_features, n_out)
        rho = float(np.corrcoef(Y[:, mask].ravel(), (E @ B)[:, mask].ravel())[0, 1])
        note = (
            f"{per_vector:.1f} frames and {device_ms:.2f} ms of device time a vector, "
            f"{len(linear.last_ranges)} ranges, {E.shape[0] / t:,.0f} vectors/s here"
        )
        results.append(BenchResult(f"fidelity {label}, density {density:.0%}", rho, "corr", note))
    Y = opu.linear_transform(real, n_out, n_bits=4)
    rho = float(np.corrcoef(Y[:, mask].ravel(), (real @ B)[:, mask].ravel())[0, 1])
    results.append(BenchResult(f"fidelity {label}, real values, 4 bit planes", rho, "corr"))
    return results


def bench_density(quick: bool, repeats: int) -> list[BenchResult]:
    """Four-frame fidelity to the exact B e per error density at the reference geometry (1000 -> 4096), one range
    against auto-ranging, MONO8 and MONO12; and what auto-ranging costs: frames per vector and vectors/s."""
    batch = 16 if quick else 64
    rng = np.random.default_rng(11)
    errors = {d: rng.choice([-1, 1], size=(batch, 1000)) * (rng.random((batch, 1000)) < d) for d in DENSITIES}
    real = rng.normal(size=(batch, 1000))
    results = []
    for pixel_format in ("MONO8",) if quick else ("MONO8", "MONO12"):
        for auto in (False, True):
            with opu_driver.open(f"sim://?seed=6&{REFERENCE_QUERY}", pixel_format=pixel_format) as opu:
                opu.linear_mode.auto_range = auto
                label = f"{pixel_format} {'auto-ranging' if auto else 'one range'}"
                results += _density_rows(opu, label, errors, real)
    return results
