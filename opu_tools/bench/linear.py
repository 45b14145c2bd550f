"""The linear mode: throughput of linear_transform and its fidelity to the exact B e."""

from __future__ import annotations

import functools
from dataclasses import dataclass

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

        def correlation(values: np.ndarray, vectors: np.ndarray) -> float:
            return _fidelity(opu, values, vectors)

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
    """Re[exp(-i phi) R] of the emulator's ground truth, for the linear mode's split layout (the whole signal and
    the whole reference)."""
    emulator = opu.emulator
    assert emulator is not None  # a sim:// device carries its emulator
    F = emulator.ground_truth.feature_matrix(runs=opu.linear_mode.layout(n_features).runs)[:, :n_out]
    reference = F[n_features:].sum(axis=0)
    return np.real(np.conj(reference) / np.abs(reference) * F[:n_features])


def _fidelity(opu: opu_driver.Opu, Y: np.ndarray, vectors: np.ndarray) -> float:
    """Correlation of linear projections Y of ``vectors`` with the exact ones, over the outputs the linear mode uses."""
    n_features, n_out = vectors.shape[1], Y.shape[1]
    mask = opu.linear_mode.calibration(n_features, n_out).mask
    B = _exact_matrix(opu, n_features, n_out)
    return float(np.corrcoef(Y[:, mask].ravel(), (vectors @ B)[:, mask].ravel())[0, 1])


@dataclass(frozen=True)
class _DensityRun:
    """One configuration's measurements at one error density."""

    label: str
    density: float
    fidelity: float
    frames_per_vector: float
    device_ms: float
    vectors_per_s: float
    ranges: int


def _density_runs(opu: opu_driver.Opu, label: str, scheme: str, errors: dict[float, np.ndarray]) -> list[_DensityRun]:
    n_out = 4096
    linear = opu.linear_mode
    runs = []
    for density, E in errors.items():
        opu.linear_transform(E, n_out, scheme=scheme)  # the references of every range, measured once
        frames, device_us = opu.counters.frames_sent, opu.device_time_us
        t = median_time_s(functools.partial(opu.linear_transform, E, n_out, scheme=scheme), 1)
        per_vector = (opu.counters.frames_sent - frames) / E.shape[0]
        device_ms = (opu.device_time_us - device_us) / E.shape[0] / 1000  # longer exposures cost device time
        rho = _fidelity(opu, opu.linear_transform(E, n_out, scheme=scheme), E)
        runs.append(_DensityRun(label, density, rho, per_vector, device_ms, E.shape[0] / t, len(linear.last_ranges)))
    return runs


def _real_row(opu: opu_driver.Opu, label: str, real: np.ndarray) -> BenchResult:
    rho = _fidelity(opu, opu.linear_transform(real, 4096, n_bits=4), real)
    return BenchResult(f"fidelity {label}, real values, 4 bit planes", rho, "corr")


_DENSITY_SCHEMES = (
    ("four-frame one range", "four_frame", False),
    ("four-frame auto-ranging", "four_frame", True),
    ("two-frame", "two_frame", False),
    ("two-frame auto-ranging", "two_frame", True),
)
"""The configurations of the fidelity-per-density table: (label, scheme, auto-ranging)."""
TARGET_FIDELITY = 0.99


def bench_density(quick: bool, repeats: int) -> list[BenchResult]:
    """Fidelity to the exact B e per error density at the reference geometry (1000 -> 4096), MONO8 and MONO12, for
    the four-frame scheme with one range and auto-ranged and the two-frame scheme (its signal level chosen) with and
    without auto-ranging; with frames per vector, device time and vectors/s of each. Then, per density, the
    cheapest configuration (least device time a vector) that measured fidelity 0.99 or more."""
    batch = 16 if quick else 64
    rng = np.random.default_rng(11)
    errors = {d: rng.choice([-1, 1], size=(batch, 1000)) * (rng.random((batch, 1000)) < d) for d in DENSITIES}
    real = rng.normal(size=(batch, 1000))
    results = []
    for pixel_format in ("MONO8",) if quick else ("MONO8", "MONO12"):
        runs: list[_DensityRun] = []
        for name, scheme, auto in _DENSITY_SCHEMES:
            with opu_driver.open(f"sim://?seed=6&{REFERENCE_QUERY}", pixel_format=pixel_format) as opu:
                opu.linear_mode.auto_range = auto
                label = f"{pixel_format} {name}"
                runs += _density_runs(opu, label, scheme, errors)
                if scheme == "four_frame":
                    results.append(_real_row(opu, label, real))
        for run in runs:
            note = (
                f"{run.frames_per_vector:.1f} frames and {run.device_ms:.2f} ms of device time a vector, "
                f"{run.ranges} ranges, {run.vectors_per_s:,.0f} vectors/s here"
            )
            results.append(BenchResult(f"fidelity {run.label}, density {run.density:.0%}", run.fidelity, "corr", note))
        for density in DENSITIES:
            good = [run for run in runs if run.density == density and run.fidelity >= TARGET_FIDELITY]
            name = f"{pixel_format} at fidelity {TARGET_FIDELITY}, density {density:.0%}"
            if not good:
                results.append(BenchResult(name, 0.0, "vectors/s", "no configuration measured reached it"))
                continue
            best = min(good, key=lambda run: run.device_ms)
            results.append(
                BenchResult(
                    name,
                    best.vectors_per_s,
                    "vectors/s",
                    f"{best.label.removeprefix(pixel_format + ' ')}: {best.frames_per_vector:.1f} frames a projection, "
                    f"{best.device_ms:.2f} ms of device time, fidelity {best.fidelity:.3f}",
                )
            )
    return results
