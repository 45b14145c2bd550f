"""Device conformance suite: written once against the driver's device classes, run on every implementation.

- the in-process emulator through the pyusb backend and the pyserial ``opusim://`` handler;
- the emulator as its own process (``opu sim``) on a real pseudo-terminal, for the controller line;
- a physical OPU, with ``--hardware URL``.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import opu_driver
from opu_driver.devices.camera import CameraSettings, Roi
from opu_driver.devices.controller import TriggerMode
from opu_driver.devices.v1.controller import ScpiController
from opu_driver.errors import ConfigurationError, DeviceRefusedError
from opu_driver.protocol import DeviceErrorCode, Register, Status
from opu_driver.transport import SerialTransport

from tests.support import SMALL_SIM
from tests.support.v1 import v1_link


class ControllerConformance:
    """What every controller line must do (docs/protocol.md section 2)."""

    def test_identity(self, controller: ScpiController):
        ident = controller.identity
        assert ident.manufacturer and ident.model and ident.serial_number
        assert re.fullmatch(r"\d+\.\d+\.\d+", ident.firmware_version)

    def test_laser_and_shutter_round_trip(self, controller: ScpiController):
        controller.laser_on()
        assert controller.laser_is_on
        controller.laser_off()
        assert not controller.laser_is_on
        controller.open_shutter()
        assert controller.shutter_is_open
        controller.close_shutter()
        assert not controller.shutter_is_open

    def test_power_set_get_and_out_of_range_refused_before_sending(self, controller: ScpiController):
        controller.set_laser_power_mw(12.5)
        assert controller.laser_power_mw == pytest.approx(12.5, abs=1e-3)
        with pytest.raises(ConfigurationError):
            controller.set_laser_power_mw(controller.laser_power_max_mw * 2)
        assert controller.laser_power_mw == pytest.approx(12.5, abs=1e-3)

    def test_temperature_and_interlock(self, controller: ScpiController):
        assert 0.0 < controller.temperature_c < 80.0
        assert controller.interlock_ok

    def test_trigger_mode_round_trip(self, controller: ScpiController):
        for mode in (TriggerMode.SOFTWARE, TriggerMode.INTERNAL):
            controller.set_trigger_mode(mode)
            assert controller.trigger_mode is mode

    def test_unknown_command_is_refused_and_queued(self, controller: ScpiController):
        controller.errors()
        with pytest.raises(DeviceRefusedError) as info:
            controller._query("FROBNICATE 3")
        assert info.value.code == -113
        assert controller.errors() == [(-113, "Undefined header")]
        assert controller.errors() == []

    def test_reset_turns_the_laser_off(self, controller: ScpiController):
        controller.laser_on()
        controller.reset()
        assert not controller.laser_is_on
        assert controller.trigger_mode is TriggerMode.INTERNAL


class TestControllerInProcess(ControllerConformance):
    @pytest.fixture
    def controller(self):
        with opu_driver.open(SMALL_SIM, laser_on=False) as opu:
            yield opu.controller


@pytest.fixture(scope="module")
def pty_path():
    """`opu sim` as its own process; yields the pseudo-terminal path it prints."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "opu_tools.cli", "sim", "--query", "seed=4"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
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


class TestControllerOverPty(ControllerConformance):
    @pytest.fixture
    def controller(self, pty_path):
        controller = ScpiController(SerialTransport(pty_path))
        controller.open()
        try:
            yield controller
        finally:
            controller.close()


@pytest.mark.hardware
class TestControllerHardware(ControllerConformance):
    @pytest.fixture
    def controller(self, hardware_url):
        with opu_driver.open(hardware_url, laser_on=False) as opu:
            yield opu.controller


class UsbDeviceConformance:
    """What the USB side must do (docs/protocol.md section 1)."""

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

    def test_camera_settings_round_trip(self, opu):
        camera = opu.camera
        new = camera.configure(CameraSettings(exposure_us=300, roi=Roi(2, 3, 10, 7)))
        assert camera.read_settings() == new

    def test_sequence_returns_one_camera_frame_per_dmd_frame(self, opu):
        X = np.random.default_rng(0).integers(0, 2, size=(9, 20), dtype=np.uint8)
        before = opu.camera.frame_count
        opu.transform(X, 30)
        assert opu.camera.frame_count - before == 9 + opu.counters.flush_frames_sent
        assert opu.counters.frames_matched == 9

    def test_camera_frames_carry_their_metadata(self, opu):
        opu.transform(np.ones((1, 16), dtype=np.uint8), 30)  # loads the layout and sets the ROI
        packed = np.packbits(np.ones((2, 16), dtype=bool), axis=1)
        opu.dmd.queue_feature_frames(1234, packed)
        opu.dmd.start()
        frames = list(opu.camera.read_frames(2 + opu.lag_frames, timeout_s=5.0))
        settings = opu.camera.settings
        ours = [f for f in frames if f.dmd_frame_id in (1234, 1235)]
        assert [f.dmd_frame_id for f in ours] == [1234, 1235][: len(ours)] and ours
        for frame in ours:
            assert (frame.roi_x, frame.roi_y, frame.roi_w, frame.roi_h) == (
                settings.roi.x, settings.roi.y, settings.roi.width, settings.roi.height)
            assert frame.exposure_us == settings.exposure_us and frame.pixel_format == settings.pixel_format
            assert not frame.dark
        assert frames[1].camera_frame_id == frames[0].camera_frame_id + 1
        assert frames[1].timestamp_us - frames[0].timestamp_us == settings.frame_time_us

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
    def opu(self, hardware_url):
        with opu_driver.open(hardware_url) as opu:
            yield opu
