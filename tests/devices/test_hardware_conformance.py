"""The device conformance suites on physical parts: ``pytest tests/devices/test_hardware_conformance.py --hardware URL``
with any URL the driver opens (``usb://...`` for a protocol-v1 OPU, ``rig://path/to/rig.toml`` for a lab-built
one). Without ``--hardware`` every test here is skipped; the same suites run in CI against each backend's
stand-in (test_v1_conformance.py, lab/test_lab_rig.py, lab/test_aravis.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opu_driver.devices import Rig, make_rig
from tests.support.conformance import CameraConformance, ControllerConformance, DmdConformance, RigConformance

pytestmark = pytest.mark.hardware


@pytest.fixture
def hardware_rig(hardware_url: str) -> Iterator[Rig]:
    rig = make_rig(hardware_url, controller_retries=2)
    rig.open()
    try:
        yield rig
    finally:
        rig.close()


class TestDmdHardware(DmdConformance):
    @pytest.fixture
    def dmd(self, hardware_rig):
        return hardware_rig.dmd


class TestCameraHardware(CameraConformance):
    @pytest.fixture
    def camera(self, hardware_rig):
        return hardware_rig.camera


class TestControllerHardware(ControllerConformance):
    @pytest.fixture
    def controller(self, hardware_rig):
        return hardware_rig.controller


class TestRigHardware(RigConformance):
    @pytest.fixture
    def rig(self, hardware_rig):
        return hardware_rig
