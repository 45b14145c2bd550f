"""pyserial URL handler ``coboltsim://<name>``: the serial line of an emulated Cobolt laser.

pyserial finds it because importing :mod:`firmware_sim.lab.cobolt` appends ``firmware_sim.lab`` to
``serial.protocol_handler_packages`` (the line's behaviour: :mod:`firmware_sim.serial_line`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from serial.serialutil import SerialException

from ..serial_line import InProcessSerial, SerialEndpoint
from .cobolt import CoboltSimNotFoundError, get_laser

__all__ = ["Serial"]


class Serial(InProcessSerial):
    """A serial port whose other end is an emulated Cobolt laser."""

    BAUDRATES = (9600, 19200, 38400, 57600, 115200)
    GONE = "the emulated laser is gone (released)"

    def _lookup(self, url: str) -> SerialEndpoint:
        parts = urlsplit(url)
        if parts.scheme.lower() != "coboltsim" or parts.query:
            raise SerialException(f"expected a URL like coboltsim://laser-1, got {url!r}")
        name = (parts.netloc + parts.path).strip("/")
        try:
            laser = get_laser(name)
        except CoboltSimNotFoundError as exc:
            raise SerialException(f"could not open port {url}: {exc}") from exc
        if not laser.connected:
            raise SerialException(f"could not open port {url}: the laser is unplugged")
        return laser
