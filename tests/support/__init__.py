"""Helpers shared by the tests: emulator URLs, paths of the checked-in files, ground-truth matrices."""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = [
    "SMALL_QUERY",
    "SMALL_SIM",
    "small_query",
    "small_sim",
    "TESTS_DIR",
    "REPO_ROOT",
    "DOCS_DIR",
    "GOLDEN_DIR",
    "exact_linear_matrix",
    "service_token",
]

SMALL_QUERY = "dmd=96x64&camera=64x48&cell=4"
"""The options of a small emulated device: tests must finish in seconds on 2 cores (benchmarks use the reference
geometry)."""

SMALL_SIM = f"sim://?{SMALL_QUERY}"
"""A new small emulated device, as a URL."""


def small_query(extra: str = "") -> str:
    """The small device's options followed by ``extra`` (``"noise=0&seed=5"``), for ``firmware_sim.create_device``."""
    return f"{SMALL_QUERY}&{extra}" if extra else SMALL_QUERY


def small_sim(extra: str = "") -> str:
    """The URL of a new small emulated device with the options ``extra`` added (``"noise=0&seed=5"``)."""
    return f"sim://?{small_query(extra)}"


TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
DOCS_DIR = REPO_ROOT / "docs"
GOLDEN_DIR = TESTS_DIR / "golden"


def exact_linear_matrix(opu, n_features: int, n_components: int) -> np.ndarray:
    """Re[exp(-i phi) R] (n_features x n_components): the linear mode's matrix before its unit-variance scaling,
    from the emulator's ground truth, for the linear mode's split layout with its whole signal."""
    runs = opu.linear_mode.layout(n_features).runs
    F = opu.emulator.ground_truth.feature_matrix(runs=runs)[:, :n_components]
    reference_field = F[n_features:].sum(axis=0)  # the reference's features, all on
    return np.real(np.conj(reference_field) / np.abs(reference_field) * F[:n_features])


def service_token() -> str | None:
    """The token in the default service token file (conftest points it into the test run's own directory): what a
    hand-written client presents to a service started without a token. None before any service made it."""
    from dfa_client.security import default_token_path, read_token_file

    return read_token_file(default_token_path())
