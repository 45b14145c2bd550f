"""Shared pytest setup: the --hardware option and a small emulator geometry for fast tests."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

# A small device: tests must finish in seconds on 2 cores. The reference geometry is exercised by benchmarks.
SMALL_SIM = "sim://?dmd=96x64&camera=64x48&cell=4"


def exact_linear_matrix(opu, n_features: int, n_components: int) -> np.ndarray:
    """Re[exp(-i phi) R] (n_features x n_components): the linear mode's matrix before its unit-variance scaling,
    from the emulator's ground truth. The split layout must be the one loaded (right after a linear_transform)."""
    F = opu.emulator.ground_truth.feature_matrix()[:, :n_components]
    reference_field = F[n_features]
    return np.real(np.conj(reference_field) / np.abs(reference_field) * F[:n_features])


def pytest_configure(config: pytest.Config) -> None:
    # opu_driver.open applies the newest matching record of the default calibration store: point that store at an
    # empty directory so that the user's own calibrations never change what the tests see.
    os.environ["OPU_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="opu-test-calibrations-")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--hardware", action="store", default=None, metavar="URL",
                     help="run hardware tests against the physical OPU at URL (e.g. usb://1209:4f50?port=/dev/ttyACM0)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--hardware"):
        return
    skip = pytest.mark.skip(reason="needs a physical OPU: pass --hardware URL")
    for item in items:
        if "hardware" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def hardware_url(request: pytest.FixtureRequest) -> str:
    return request.config.getoption("--hardware")
