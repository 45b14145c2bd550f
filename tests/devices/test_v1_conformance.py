"""The device conformance suites (tests/support/conformance.py) run on the protocol-v1 backend, and what protocol v1
adds to them (its registers, its command line).

Where each runs:
- the in-process emulator, through the pyusb backend and the pyserial ``opusim://`` handler (a rig built from a
  ``sim://`` URL, its parts opened without an Opu);
- the emulator as its own process (``opu sim``) on a real pseudo-terminal, for the controller line;
- a physical OPU, with ``--hardware URL`` (protocol v1's own tests here; the generic suites on any backend,
  a lab rig's included, in test_hardware_conformance.py).
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest

import opu_driver
from opu_driver.devices import Rig, make_rig
from opu_driver.devices.v1.controller import ScpiController
from opu_driver.errors import DeviceRefusedError
from opu_driver.protocol import DeviceErrorCode, Register, Status
from opu_driver.transport import SerialTransport
from tests.support import SMALL_SIM
from tests.support.conformance import CameraConformance, ControllerConformance, DmdConformance, RigConformance
from tests.support.v1 import v1_link


@pytest.fixture
def sim_rig() -> Iterator[Rig]:
    """An opened protocol-v1 rig on a new emulated device."""
    rig = make_rig(SMALL_SIM, controller_retries=2)
    rig.open()
    try:
        yield rig
    finally:
        assert not rig.close()


@pytest.fixture
def v1_hardware_url(hardware_url: str) -> str:
    """The --hardware URL, when it names a protocol-v1 device (the generic suites run on any backend in
    test_hardware_conformance.py)."""
    if hardware_url.startswith("rig://"):
        pytest.skip("protocol v1's own tests: the --hardware URL names a lab rig")
    return hardware_url


@pytest.fixture
def hardware_rig(v1_hardware_url: str) -> Iterator[Rig]:
    rig = make_rig(v1_hardware_url, controller_retries=2)
    rig.open()
    try:
        yield rig
    finally:
        rig.close()


class TestDmdOnTheEmulator(DmdConformance):
    @pytest.fixture
    def dmd(self, sim_rig):
        return sim_rig.dmd


class TestCameraOnTheEmulator(CameraConformance):
    @pytest.fixture
    def camera(self, sim_rig):
        return sim_rig.camera


class TestRigOnTheEmulator(RigConformance):
    @pytest.fixture
    def rig(self, sim_rig):
        return sim_rig


class ScpiConformance(ControllerConformance):
    """What protocol v1's command line adds: refused commands are queued with their code."""

    def test_unknown_command_is_refused_and_queued(self, controller: ScpiController):
        controller.errors()
        with pytest.raises(DeviceRefusedError) as info:
            controller._query("FROBNICATE 3")
        assert info.value.code == -113
        assert controller.errors() == [(-113, "Undefined header")]
        assert controller.errors() == []


class TestScpiOnTheEmulator(ScpiConformance):
    @pytest.fixture
    def controller(self, sim_rig):
        return sim_rig.controller


@pytest.fixture(scope="module")
def pty_path():
    """`opu sim` as its own process; yields the pseudo-terminal path it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "opu_tools.cli", "sim", "--query", "seed=4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        path = None
        while time.monotonic() < deadline and path is None:
            line = proc.stdout.readline()
            if not line:
                break
            found = re.search(r"(/dev/pts/\d+|/dev/ttys\d+)", line)
            path = found.group(1) if found else None
        if path is None:
            proc.kill()
            pytest.fail(f"opu sim printed no pty path: {proc.stdout.read()}")
        yield path
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


class TestScpiOverPty(ScpiConformance):
    @pytest.fixture
    def controller(self, pty_path):
        controller = ScpiController(SerialTransport(pty_path))
        controller.open()
        try:
            yield controller
        finally:
            controller.close()


@pytest.mark.hardware
class TestScpiHardware(ScpiConformance):
    @pytest.fixture
    def controller(self, hardware_rig):
        return hardware_rig.controller


class UsbDeviceConformance:
    """What the USB side of a protocol-v1 device must do (docs/protocol.md section 1), seen through an Opu."""

    def test_geometry_is_reported(self, opu):
        info = opu.info
        assert info.dmd_width > 0 and info.dmd_height > 0 and info.camera_width > 0 and info.camera_height > 0
        assert info.sequence_capacity > 0

    def test_refused_register_write_raises_typed_error_and_changes_nothing(self, opu):
        link = v1_link(opu)
        before = link.read_register(Register.EXPOSURE_US)
        with pytest.raises(DeviceRefusedError) as info:
            link.write_register(Register.EXPOSURE_US, 5)
        assert info.value.code == DeviceErrorCode.E_VALUE
        assert link.read_register(Register.EXPOSURE_US) == before
        with pytest.raises(DeviceRefusedError) as info:
            link.write_register(Register.DMD_WIDTH, 3)
        assert info.value.code == DeviceErrorCode.E_READ_ONLY
        with pytest.raises(DeviceRefusedError) as info:
            link.read_register(0x7777)
        assert info.value.code == DeviceErrorCode.E_ADDRESS

    def test_sequence_returns_one_camera_frame_per_dmd_frame(self, opu):
        X = np.random.default_rng(0).integers(0, 2, size=(9, 20), dtype=np.uint8)
        before = opu.camera.frame_count
        opu.transform(X, 30)
        assert opu.camera.frame_count - before == 9 + opu.counters.flush_frames_sent
        assert opu.counters.frames_matched == 9

    def test_last_error_clears_on_read_and_status_follows_the_controller(self, opu):
        link = v1_link(opu)
        with pytest.raises(DeviceRefusedError):
            link.write_register(Register.EXPOSURE_US, 5)  # reading LAST_ERROR for the message cleared it
        assert link.read_register(Register.LAST_ERROR) == 0
        status = Status(link.read_register(Register.STATUS))
        assert Status.LASER_ON in status and Status.SHUTTER_OPEN in status and Status.INTERLOCK_OK in status
        opu.controller.close_shutter()
        assert Status.SHUTTER_OPEN not in Status(link.read_register(Register.STATUS))

    def test_layout_table_is_reported(self, opu):
        opu.transform(np.ones((1, 37), dtype=np.uint8), 10)
        assert v1_link(opu).read_register(Register.LAYOUT_FEATURES) == 37
        assert Status.LAYOUT_LOADED in Status(v1_link(opu).read_register(Register.STATUS))


class TestUsbEmulator(UsbDeviceConformance):
    @pytest.fixture
    def opu(self):
        with opu_driver.open(SMALL_SIM) as opu:
            yield opu


@pytest.mark.hardware
class TestUsbHardware(UsbDeviceConformance):
    @pytest.fixture
    def opu(self, v1_hardware_url):
        with opu_driver.open(v1_hardware_url) as opu:
            yield opu
