"""Shared pytest setup: the --hardware option and an empty default calibration store."""
from __future__ import annotations

import os
import tempfile

import pytest


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
