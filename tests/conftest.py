"""Shared pytest setup: the --hardware option, an empty default calibration store, a service token file of the test
run's own, and opened emulated devices.

Fixtures: ``quiet_opu`` (a small noiseless emulator, deterministic: exact results), ``strict_opu`` (the same with
no retries: the first fault raises), ``named_device`` (an emulated device that outlives the Opus opened on it, as
hardware does; open it with ``sim://NAME``), ``hardware_url``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

import firmware_sim
import opu_driver
from tests.support import small_query, small_sim


def pytest_configure(config: pytest.Config) -> None:
    # opu_driver.open applies the newest matching record of the default calibration store: point that store at an
    # empty directory so that the user's own calibrations never change what the tests see.
    os.environ["OPU_CALIBRATION_DIR"] = tempfile.mkdtemp(prefix="opu-test-calibrations-")
    # Services started without a token make one in the default token file, and local clients read it there: point
    # that file into a directory of the test run's own (never the user's), inherited by the subprocesses.
    os.environ["OPU_SERVICE_TOKEN_FILE"] = os.path.join(tempfile.mkdtemp(prefix="opu-test-service-"), "service-token")
    os.environ.pop("OPU_SERVICE_TOKEN", None)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--hardware",
        action="store",
        default=None,
        metavar="URL",
        help="run hardware tests against the physical OPU at URL (e.g. usb://1209:4f50?port=/dev/ttyACM0)",
    )


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


@pytest.fixture
def quiet_opu() -> Iterator[opu_driver.Opu]:
    """A small emulated OPU with every noise source off (exact, repeatable results)."""
    with opu_driver.open(small_sim("noise=0&seed=5")) as opu:
        yield opu


@pytest.fixture
def strict_opu() -> Iterator[opu_driver.Opu]:
    """As ``quiet_opu``, with no retries: the first fault is raised (the typed errors of the reliability contract)."""
    with opu_driver.open(small_sim("noise=0&seed=5"), retries=0) as opu:
        yield opu


@pytest.fixture
def named_device() -> Iterator[firmware_sim.EmulatedDevice]:
    """A device that outlives the Opu objects opened on it, as hardware does (noiseless, a lag of 3 frames)."""
    device = firmware_sim.create_device(small_query("noise=0&seed=6&lag=3"))
    yield device
    firmware_sim.release_device(device)
