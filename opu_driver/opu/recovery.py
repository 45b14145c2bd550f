"""Putting a device back the way the Opu left it: after an unplug, after a reset, and when frames come back dark.

These run inside the retry engine (:func:`~opu_driver.acquisition.run_with_retries`): ``reconnect`` when the
connection was lost, ``restore`` before an attempt that follows a fault, ``check_dark`` when a frame arrives dark.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..devices import Rig
from ..encoding.layouts import Layout
from ..errors import AcquisitionError, DeviceResetError, InterlockError

__all__ = ["Recovery"]

_log = logging.getLogger(__name__)


class Recovery:
    """Reconnect, restore and dark-frame checks for one rig; counts in the acquisition's tally.

    Args:
        rig: the parts.
        tally: the acquisition's counters (``resets_detected``, ``light_restored``).
        reconnect_timeout_s: how long a reconnect waits for the device to come back.
        feature_mode: whether requests use the device's layout table (then a lost table is loaded again).
    """

    def __init__(self, rig: Rig, tally: Any, reconnect_timeout_s: float, feature_mode: bool) -> None:
        self._rig = rig
        self._tally = tally
        self._reconnect_timeout_s = reconnect_timeout_s
        self._feature_mode = feature_mode
        self._dark_checked = False

    def reconnect(self) -> None:
        """After an unplug: wait for the same device to come back, reopen it, check it, put the light back.

        The rig reopens the device and checks its identity and geometry (another OPU is refused). The device
        powered up afresh, so the laser, shutter and power are set again as the driver last set them (a user's
        ``laser_off()`` stays off); camera settings and the layout are put back by :meth:`restore`, which runs
        next.

        Raises:
            ConnectionLostError: the device did not come back within ``reconnect_timeout_s``.
            DeviceNotFoundError: a line could not be opened again.
            ProtocolError: a different device answered.
        """
        timeout_s = self._reconnect_timeout_s
        _log.warning("the USB device is gone: waiting up to %.3g s for it to be plugged back", timeout_s)
        self._rig.reconnect(timeout_s)
        self._rig.controller.restore()  # the light path as the driver last set it, not as it was at open
        identity = self._rig.controller.identity
        _log.info("reconnected to %s %s", identity.model, identity.serial_number)

    def restore(self, layout: Layout) -> None:
        """Before a retry: put back what a device reset loses (camera registers, the layout table, the light).

        The camera settings are read back from the device and compared with what the driver set; the layout is
        checked against the device's table; the laser, shutter and power through the controller's queries (a
        power cycle restarts the controller too: the laser comes back off). Only what differs is written again;
        a tripped interlock is left alone (the request then raises InterlockError).
        """
        camera, dmd = self._rig.camera, self._rig.dmd
        # What the driver wants is kept apart from what it last read, so a restore that fails half-way is
        # tried again before the next request instead of being forgotten.
        wanted = camera.wanted_settings
        actual = camera.read_settings()
        if actual != wanted:
            self._tally.resets_detected += 1
            _log.warning("the device lost its camera settings (a reset?): it has %s; writing %s again", actual, wanted)
            camera.restore(actual)  # written from what the device holds, in an order it accepts
        if self._feature_mode and not dmd.layout_is_loaded(layout):
            _log.warning("the device lost its layout table (a reset?): loading it again")
            dmd.load_layout(layout)
        if self._rig.controller.restore():
            self._tally.light_restored += 1

    def restorer(self, layout: Layout) -> Callable[[], None]:
        """:meth:`restore` for this layout, as the retry engine calls it."""
        return lambda: self.restore(layout)

    def start_request(self) -> None:
        """A new request: its first dark frame is checked again."""
        self._dark_checked = False

    def check_dark(self) -> None:
        """A dark frame: fine if the user switched the light off, an error if the device did it.

        The controller's ``wanted`` light state tells the two apart: a laser or shutter that is off or closed
        although the driver last switched it on or open means the device restarted (a power cycle). That is a
        DeviceResetError, which the runner retries after :meth:`restore` has put the light back.
        """
        if self._dark_checked:
            return
        controller = self._rig.controller
        if not controller.interlock_ok:
            self._dark_checked = True
            controller.note_interlock_trip()  # never switched back on without the user
            raise InterlockError(
                "the laser interlock tripped: frames are dark; clear its cause, then "
                "opu.controller.reset_interlock() and opu.controller.laser_on()"
            )
        if controller.light_differs():
            raise DeviceResetError(
                "camera frames are dark and the laser or shutter is off although this driver "
                "last switched it on: the device restarted, or it was switched off outside this "
                "driver (front panel, a stuck shutter)"
            )
        self._dark_checked = True
        if controller.laser_is_on and controller.shutter_is_open:
            raise AcquisitionError("camera frames are dark although the laser is on and the shutter open")
        _log.info("frames are dark: the laser is off or the shutter closed")
