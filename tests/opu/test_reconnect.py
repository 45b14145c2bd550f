"""Reconnect after unplug and replug.

The emulated device is really unplugged (``EmulatedDevice.unplug``: its USB handles and serial line die, it
leaves the bus) and plugged back from another thread (``replug``: it powers up afresh, registers, layout and
laser state lost). With ``noise=0`` the emulator is deterministic, so a recovered result must equal the
fault-free one exactly: no tolerance is needed.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import firmware_sim
import opu_driver
from opu_driver.errors import ConnectionLostError, DeviceNotFoundError
from tests.support import small_query
from tests.support.v1 import v1_connection

QUERY = small_query("noise=0&seed=5")
N_COMPONENTS = 40
SETTINGS = dict(chunk_frames=8, timeout_s=2.0, calibration=None)
REPLUG_AFTER_S = 0.2
RECONNECT_TIMEOUT_S = 1.0
MARGIN_S = 1.0  # the contract: the typed error within reconnect_timeout_s plus a small margin


def _inputs() -> np.ndarray:
    rng = np.random.default_rng(11)
    return rng.integers(0, 2, size=(24, 30), dtype=np.uint8)


@pytest.fixture
def device():
    dev = firmware_sim.create_device(QUERY)
    try:
        yield dev
    finally:
        firmware_sim.release_device(dev)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    with opu_driver.open(f"sim://?{QUERY}", **SETTINGS) as opu:
        return opu.transform(_inputs(), N_COMPONENTS)


def _replug_later(device, delay_s: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay_s), device.replug()), daemon=True)
    thread.start()
    return thread


def _unplug_on_bulk_read(opu, device, call: int, replug_after_s: float | None) -> None:
    """Pull the cable just before the ``call``-th camera read of the transport: a request is in flight."""
    transport = v1_connection(opu).usb
    original = transport.bulk_read
    calls = [0]

    def bulk_read(max_bytes: int, timeout_s: float) -> bytes:
        calls[0] += 1
        if calls[0] == call:
            device.unplug()
            if replug_after_s is not None:
                _replug_later(device, replug_after_s)
        return original(max_bytes, timeout_s)

    transport.bulk_read = bulk_read


def test_unplug_mid_request_and_replug_gives_the_fault_free_result(device, reference):
    with opu_driver.open(f"sim://{device.name}", reconnect_timeout_s=5.0, **SETTINGS) as opu:
        before = device.plug_generation
        _unplug_on_bulk_read(opu, device, call=3, replug_after_s=REPLUG_AFTER_S)
        result = opu.transform(_inputs(), N_COMPONENTS)
        assert device.plug_generation == before + 1  # it really went away and came back
        np.testing.assert_array_equal(result, reference)
        assert opu.counters.reconnects == 1
        assert opu.counters.frames_missing > 0
        np.testing.assert_array_equal(opu.transform(_inputs(), N_COMPONENTS), reference)  # and it stays usable


def test_unplug_between_requests_and_replug(device, reference):
    with opu_driver.open(f"sim://{device.name}", reconnect_timeout_s=5.0, **SETTINGS) as opu:
        np.testing.assert_array_equal(opu.transform(_inputs(), N_COMPONENTS), reference)
        device.unplug()
        _replug_later(device, REPLUG_AFTER_S)
        np.testing.assert_array_equal(opu.transform(_inputs(), N_COMPONENTS), reference)
        assert opu.counters.reconnects == 1


@pytest.mark.slow
def test_unplug_without_replug_raises_in_time_and_the_next_open_works(device, reference):
    with opu_driver.open(f"sim://{device.name}", reconnect_timeout_s=RECONNECT_TIMEOUT_S, **SETTINGS) as opu:
        _unplug_on_bulk_read(opu, device, call=2, replug_after_s=None)
        start = time.monotonic()
        with pytest.raises((ConnectionLostError, DeviceNotFoundError)):
            opu.transform(_inputs(), N_COMPONENTS)
        assert time.monotonic() - start < RECONNECT_TIMEOUT_S + MARGIN_S
        assert opu.counters.reconnects == 0
    device.replug()
    with opu_driver.open(f"sim://{device.name}", **SETTINGS) as opu:
        np.testing.assert_array_equal(opu.transform(_inputs(), N_COMPONENTS), reference)


def test_reconnect_disabled_raises_at_once(device):
    with opu_driver.open(f"sim://{device.name}", reconnect_timeout_s=0, **SETTINGS) as opu:
        _unplug_on_bulk_read(opu, device, call=2, replug_after_s=REPLUG_AFTER_S)
        start = time.monotonic()
        with pytest.raises(ConnectionLostError):
            opu.transform(_inputs(), N_COMPONENTS)
        assert time.monotonic() - start < REPLUG_AFTER_S + MARGIN_S
        assert opu.counters.reconnects == 0


@pytest.mark.slow
def test_another_device_is_not_taken_for_the_unplugged_one(device):
    """Same VID:PID but another serial number on the bus: the reconnect refuses it and times out."""
    with opu_driver.open(f"sim://{device.name}", reconnect_timeout_s=RECONNECT_TIMEOUT_S, **SETTINGS) as opu:
        other = firmware_sim.create_device(QUERY.replace("seed=5", "seed=6"))
        try:
            assert other.serial_number != device.serial_number
            device.unplug()
            start = time.monotonic()
            with pytest.raises((ConnectionLostError, DeviceNotFoundError)):
                opu.transform(_inputs(), N_COMPONENTS)
            assert time.monotonic() - start < RECONNECT_TIMEOUT_S + MARGIN_S
            assert opu.counters.reconnects == 0
        finally:
            firmware_sim.release_device(other)


def test_after_a_replug_the_light_is_as_the_user_last_set_it_not_as_at_open(device):
    with opu_driver.open(f"sim://{device.name}", reconnect_timeout_s=5.0, **SETTINGS) as opu:
        opu.controller.set_laser_power_mw(20.0)
        opu.controller.laser_off()  # the user's choice: a reconnect must not switch the laser back on
        device.unplug()
        _replug_later(device, REPLUG_AFTER_S)
        y = opu.transform(_inputs(), N_COMPONENTS)
        assert opu.counters.reconnects == 1
        assert not opu.controller.laser_is_on and opu.controller.shutter_is_open
        assert opu.controller.laser_power_mw == 20.0
        assert opu.counters.dark_frames >= len(y)  # dark frames, as the user asked, not an error
        opu.controller.laser_on()
        device.unplug()
        _replug_later(device, REPLUG_AFTER_S)
        opu.transform(_inputs(), N_COMPONENTS)
        assert opu.counters.reconnects == 2 and opu.controller.laser_is_on
