"""Conformance suites of the device interfaces, written once against :mod:`opu_driver.devices`.

Every backend runs them: a test module subclasses each suite and provides fixtures that yield OPENED parts of its
rig (``dmd``, ``camera``, ``controller``; ``rig`` for the suite of the parts together). The suites use the
interfaces' public methods only, so a new backend (a DMD through a vendor library, a GenICam camera, a laser on a
serial line) proves itself by passing them, against its own stand-in and on hardware with ``--hardware URL``.
"""

from __future__ import annotations

import math
import re
import time

import numpy as np
import pytest

from opu_driver.devices import Camera, CameraSettings, Controller, Dmd, Rig, Roi, TriggerMode
from opu_driver.encoding.layouts import make_layout
from opu_driver.errors import CommunicationTimeoutError, ConfigurationError, DeviceError, InvalidInputError

__all__ = ["DmdConformance", "CameraConformance", "ControllerConformance", "RigConformance"]

_FLUSH_FRAMES = 8  # blank frames after the ones checked: room for a camera lag of up to 8 frames
TIMEOUT_MARGIN_S = 1.0
"""A blocking call must return within its timeout plus this (scheduling on a loaded machine)."""


class DmdConformance:
    """What every DMD backend must do."""

    def test_geometry_and_capacity(self, dmd: Dmd) -> None:
        geometry = dmd.geometry
        assert geometry.width > 0 and geometry.height > 0
        assert geometry.frame_bytes == -(-geometry.width * geometry.height // 8)
        assert dmd.sequence_capacity >= 1

    def test_a_layout_is_loaded_cleared_and_one_for_another_dmd_refused(self, dmd: Dmd) -> None:
        geometry = dmd.geometry
        layout = make_layout("lined", 20, geometry.width, geometry.height)
        if not dmd.supports_feature_frames:
            # a DMD that shows mirror pictures only refuses tables and feature frames, whatever they are
            with pytest.raises(DeviceError):
                dmd.load_layout(layout)
            assert dmd.layout is None and not dmd.layout_is_loaded(layout)
            return
        dmd.load_layout(layout)
        assert dmd.layout is layout and dmd.layout_is_loaded(layout)
        other = make_layout("lined", 20, geometry.width + 8, geometry.height)
        with pytest.raises(InvalidInputError):
            dmd.load_layout(other)
        assert dmd.layout_is_loaded(layout)  # the refusal changed nothing
        dmd.clear_layout()
        assert dmd.layout is None and not dmd.layout_is_loaded(layout)

    def test_frames_of_the_wrong_shape_or_without_a_layout_are_refused_before_sending(self, dmd: Dmd) -> None:
        dmd.abort()
        dmd.clear_layout()
        with pytest.raises(DeviceError):
            dmd.queue_feature_frames(0, np.zeros((1, 3), dtype=np.uint8))
        with pytest.raises(InvalidInputError):
            dmd.queue_raw_frames(0, np.zeros((1, dmd.geometry.frame_bytes + 1), dtype=np.uint8))
        assert dmd.queued_frames == 0

    def test_queued_frames_are_counted_and_abort_drops_them(self, dmd: Dmd) -> None:
        geometry = dmd.geometry
        dmd.abort()
        dmd.queue_raw_frames(100, np.zeros((3, geometry.frame_bytes), dtype=np.uint8))
        if dmd.supports_feature_frames:
            layout = make_layout("lined", 16, geometry.width, geometry.height)
            dmd.load_layout(layout)
            dmd.queue_feature_frames(103, np.packbits(np.ones((2, 16), dtype=bool), axis=1))
        else:
            dmd.queue_raw_frames(103, np.ones((2, geometry.frame_bytes), dtype=np.uint8))
        assert dmd.queued_frames == 5
        dmd.abort()
        assert dmd.queued_frames == 0

    def test_last_error_reads_as_zero_when_nothing_failed(self, dmd: Dmd) -> None:
        dmd.last_error()  # reading clears whatever an earlier test left
        assert dmd.last_error() == 0

    def test_the_clock_and_the_frame_counter_never_go_back(self, dmd: Dmd) -> None:
        time_before, frames_before = dmd.device_time_us, dmd.frame_count
        assert dmd.device_time_us >= time_before and dmd.frame_count >= frames_before

    def test_a_closed_dmd_refuses_to_work(self, dmd: Dmd) -> None:
        dmd.close()
        try:
            with pytest.raises(DeviceError):
                dmd.start()
            with pytest.raises(DeviceError):
                dmd.geometry
        finally:
            dmd.open()


class CameraConformance:
    """What every camera backend must do."""

    def test_geometry_formats_and_complete_settings(self, camera: Camera) -> None:
        geometry = camera.geometry
        assert geometry.width > 0 and geometry.height > 0 and geometry.pixel_formats
        settings = camera.settings
        assert None not in (
            settings.exposure_us,
            settings.frame_time_us,
            settings.gain,
            settings.pixel_format,
            settings.roi,
        )
        assert camera.fifo_frames() >= 1

    def test_settings_round_trip_through_the_device(self, camera: Camera) -> None:
        geometry = camera.geometry
        roi = Roi(1, 2, min(10, geometry.width - 1), min(7, geometry.height - 2))
        new = camera.configure(CameraSettings(exposure_us=300, roi=roi, pixel_format=geometry.pixel_formats[-1]))
        assert camera.read_settings() == new == camera.settings == camera.wanted_settings
        assert new.exposure_us == 300 and new.roi == roi

    def test_a_longer_exposure_keeps_the_frame_time_legal(self, camera: Camera) -> None:
        settings = camera.configure(CameraSettings(exposure_us=5_000))
        assert settings.frame_time_us is not None and settings.frame_time_us >= 5_000
        assert camera.read_settings() == settings

    @pytest.mark.parametrize(
        "bad",
        [
            lambda g: CameraSettings(exposure_us=g.exposure_range_us[0] - 1),
            lambda g: CameraSettings(exposure_us=g.exposure_range_us[1] + 1),
            lambda g: CameraSettings(gain=g.gain_range[0] - 0.5),
            lambda g: CameraSettings(exposure_us=1000, frame_time_us=1000),
            lambda g: CameraSettings(roi=Roi(0, 0, 0, 1)),
        ],
        ids=["short-exposure", "long-exposure", "low-gain", "frame-shorter-than-exposure", "empty-roi"],
    )
    def test_bad_settings_are_refused_before_anything_is_written(self, camera: Camera, bad) -> None:
        before = camera.read_settings()
        with pytest.raises(ConfigurationError):
            camera.configure(bad(camera.geometry))
        assert camera.read_settings() == before == camera.settings

    def test_a_region_outside_the_sensor_is_refused(self, camera: Camera) -> None:
        geometry = camera.geometry
        before = camera.read_settings()
        with pytest.raises(ConfigurationError):
            camera.configure(CameraSettings(roi=Roi(geometry.width - 2, 0, 4, 1)))
        assert camera.read_settings() == before

    def test_restore_writes_the_wanted_settings_again(self, camera: Camera) -> None:
        wanted = camera.configure(CameraSettings(exposure_us=250))
        camera.restore()
        assert camera.read_settings() == wanted

    def test_reading_frames_that_never_come_times_out_in_time(self, camera: Camera) -> None:
        camera.drain(0.05, 1000)
        started = time.monotonic()
        with pytest.raises(CommunicationTimeoutError):
            list(camera.read_frames(1, 0.2))
        assert time.monotonic() - started < 0.2 + TIMEOUT_MARGIN_S
        assert camera.drain(0.05, 1000) >= 0  # never raises


class ControllerConformance:
    """What every controller of the light path must do."""

    def test_identity(self, controller: Controller) -> None:
        ident = controller.identity
        assert ident.manufacturer and ident.model and ident.serial_number
        assert re.fullmatch(r"\d+\.\d+\.\d+", ident.firmware_version)

    def test_laser_and_shutter_round_trip_and_are_recorded_as_wanted(self, controller: Controller) -> None:
        controller.laser_on()
        assert controller.laser_is_on and controller.wanted.laser_on is True
        controller.laser_off()
        assert not controller.laser_is_on and controller.wanted.laser_on is False
        controller.open_shutter()
        assert controller.shutter_is_open and controller.wanted.shutter_open is True
        controller.close_shutter()
        assert not controller.shutter_is_open and controller.wanted.shutter_open is False

    def test_power_set_get_and_out_of_range_refused_before_sending(self, controller: Controller) -> None:
        if controller.laser_power_max_mw == 0.0:  # no power control (a light switched by hand): any power refused
            wanted = controller.wanted.power_mw
            with pytest.raises(ConfigurationError):
                controller.set_laser_power_mw(12.5)
            assert controller.wanted.power_mw == wanted
            return
        controller.set_laser_power_mw(12.5)
        assert controller.laser_power_mw == pytest.approx(12.5, abs=1e-3)
        assert controller.wanted.power_mw == 12.5
        with pytest.raises(ConfigurationError):
            controller.set_laser_power_mw(controller.laser_power_max_mw * 2)
        assert controller.laser_power_mw == pytest.approx(12.5, abs=1e-3)

    def test_temperature_and_interlock(self, controller: Controller) -> None:
        temperature_c = controller.temperature_c  # NaN where the light path has no thermometer
        assert math.isnan(temperature_c) or 0.0 < temperature_c < 80.0
        assert controller.interlock_ok

    def test_trigger_mode_round_trip(self, controller: Controller) -> None:
        for mode in (TriggerMode.SOFTWARE, TriggerMode.INTERNAL):
            before = controller.trigger_mode
            try:
                controller.set_trigger_mode(mode)
            except ConfigurationError:  # a mode the rig cannot run (a lab DMD plays on its own clock): unchanged
                assert mode is not TriggerMode.INTERNAL and controller.trigger_mode is before
                continue
            assert controller.trigger_mode is mode
        with pytest.raises(ConfigurationError):
            controller.set_trigger_mode("SOMETIMES")

    def test_reset_turns_the_light_off_and_is_not_undone_by_a_restore(self, controller: Controller) -> None:
        controller.laser_on()
        controller.open_shutter()
        controller.reset()
        assert not controller.laser_is_on and not controller.shutter_is_open
        assert controller.trigger_mode is TriggerMode.INTERNAL
        assert not controller.restore() and not controller.laser_is_on

    def test_restore_puts_back_what_the_driver_set(self, controller: Controller) -> None:
        controller.laser_on()
        controller.open_shutter()
        assert not controller.light_differs() and not controller.restore()
        controller.note_interlock_trip()  # the laser went off without the driver: never switched back on
        assert controller.wanted.laser_on is False

    def test_errors_drain_the_queue(self, controller: Controller) -> None:
        controller.errors()
        assert controller.errors() == []

    def test_a_closed_controller_refuses_to_work(self, controller: Controller) -> None:
        controller.close()
        try:
            with pytest.raises(DeviceError):
                controller.laser_on()
        finally:
            controller.open()


class RigConformance:
    """What the parts of a rig must do together: every displayed frame comes back once, with its metadata."""

    def test_each_displayed_frame_comes_back_once_with_its_metadata(self, rig: Rig) -> None:
        dmd, camera = rig.dmd, rig.camera
        geometry = dmd.geometry
        settings = camera.configure(CameraSettings(roi=Roi(0, 0, 6, 5)))
        dmd.abort()
        camera.drain(0.05, 1000)
        frames_before = dmd.frame_count
        n_frames = 3 + _FLUSH_FRAMES
        if dmd.supports_feature_frames:
            dmd.load_layout(make_layout("lined", 16, geometry.width, geometry.height))
            bits = np.zeros((n_frames, 16), dtype=bool)
            bits[:3] = True
            dmd.queue_feature_frames(1234, np.packbits(bits, axis=1))
        else:
            mirrors = np.zeros((n_frames, geometry.frame_bytes), dtype=np.uint8)
            mirrors[:3] = 0xFF
            dmd.queue_raw_frames(1234, mirrors)
        dmd.start()
        arrived = list(camera.read_frames(n_frames, timeout_s=5.0))
        frames = [f for f in arrived if 1234 <= f.dmd_frame_id < 1237]  # a camera lag shifts them, up to the flush
        assert [f.dmd_frame_id for f in frames] == [1234, 1235, 1236]
        assert [f.camera_frame_id - frames[0].camera_frame_id for f in frames] == [0, 1, 2]
        assert dmd.frame_count - frames_before == n_frames
        for frame in frames:
            roi = settings.roi
            assert roi is not None
            assert (frame.roi_x, frame.roi_y, frame.roi_w, frame.roi_h) == (roi.x, roi.y, roi.width, roi.height)
            assert frame.exposure_us == settings.exposure_us and frame.pixel_format == settings.pixel_format
        assert frames[1].timestamp_us - frames[0].timestamp_us == settings.frame_time_us

    def test_the_link_counts_what_crossed_it(self, rig: Rig) -> None:
        before = rig.link_counters
        rig.dmd.abort()
        rig.camera.drain(0.05, 1000)
        rig.dmd.queue_raw_frames(7, np.zeros((2, rig.dmd.geometry.frame_bytes), dtype=np.uint8))
        rig.dmd.start()
        arrived = list(rig.camera.read_frames(2, timeout_s=5.0))
        rig.dmd.abort()
        after = rig.link_counters
        assert after.bytes_sent > before.bytes_sent and arrived
        assert after.bytes_received > before.bytes_received
        rig.clear_link_faults()  # never raises
