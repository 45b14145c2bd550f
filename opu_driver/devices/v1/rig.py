"""A protocol-v1 OPU as a rig: one USB device (DMD and camera on a shared link) and a controller on a serial line."""

from __future__ import annotations

import logging
import weakref

from ...errors import ProtocolError
from ...protocol import PROTOCOL_VERSION, Register
from ..rig import LinkCounters, Rig, RigInfo
from .camera import V1Camera
from .connection import Connection, connect
from .controller import DEFAULT_MAX_RETRIES, ScpiController
from .dmd import V1Dmd
from .link import UsbLink

__all__ = ["V1Rig", "make_v1_rig"]

_log = logging.getLogger(__name__)


class V1Rig(Rig):
    """The parts of a protocol-v1 device over its two transports (docs/protocol.md)."""

    def __init__(self, connection: Connection, controller_retries: int = DEFAULT_MAX_RETRIES) -> None:
        self._connection = connection
        self._link = UsbLink(connection.usb)
        controller = ScpiController(connection.serial, max_retries=controller_retries)
        super().__init__(
            V1Dmd(self._link), V1Camera(self._link), controller, connection.url.text, emulator=connection.emulator
        )
        # A rig dropped without close() still releases its device (and an emulator's memory).
        self._finalizer = weakref.finalize(self, connection.close)

    @property
    def link(self) -> UsbLink:
        """The USB link the DMD and the camera share (registers and packets; for diagnostics and tests)."""
        return self._link

    @property
    def connection(self) -> Connection:
        """The two transports."""
        return self._connection

    def _do_open(self) -> RigInfo:
        self._connection.usb.open()
        version = self._link.read_register(Register.PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"device speaks protocol version {version}; this driver knows version {PROTOCOL_VERSION}"
            )
        return RigInfo(protocol_version=version)

    def _do_check_parts(self) -> None:
        usb_serial = self._connection.usb.serial_number
        controller_serial = self.controller.identity.serial_number
        if usb_serial and controller_serial != usb_serial:
            raise ProtocolError(f"USB device {usb_serial} and controller {controller_serial} are not the same OPU")

    def _do_release(self) -> None:
        self._finalizer()  # closes the connection once

    def _do_clear_link_faults(self) -> None:
        self._link.clear_halts()

    def _do_link_counters(self) -> LinkCounters:
        return self._link.counters

    def _do_reconnect(self, timeout_s: float) -> None:
        self._link.reconnect(timeout_s)
        version = self._link.read_register(Register.PROTOCOL_VERSION)
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"device speaks protocol version {version} after reconnecting; expected {PROTOCOL_VERSION}"
            )
        dmd, camera = self.dmd.geometry, self.camera.geometry
        read = self._link.read_register
        geometry = (
            read(Register.DMD_WIDTH),
            read(Register.DMD_HEIGHT),
            read(Register.CAM_WIDTH),
            read(Register.CAM_HEIGHT),
        )
        if geometry != (dmd.width, dmd.height, camera.width, camera.height):
            raise ProtocolError(f"the device that came back has geometry {geometry}, not the one opened")
        # The controller's serial line died with the cable: reopen it and read its identity again.
        serial_number = self.controller.identity.serial_number
        self._connection.serial.close()
        self.controller.mark_lost()  # its line is gone; nothing can be sent to close it
        self.controller.open()
        if self.controller.identity.serial_number != serial_number:
            raise ProtocolError(
                f"controller {self.controller.identity.serial_number} answered after reconnecting, not {serial_number}"
            )


def make_v1_rig(url: str, controller_retries: int = DEFAULT_MAX_RETRIES) -> V1Rig:
    """Build (not open) the rig of a ``sim://`` or ``usb://`` URL."""
    return V1Rig(connect(url), controller_retries)
