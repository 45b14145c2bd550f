"""pyserial URL handler ``opusim://<device name>``: the controller line of an in-process emulated device.

pyserial finds it because importing :mod:`firmware_sim` appends the package to
``serial.protocol_handler_packages``; ``serial.serial_for_url("opusim://sim-3", timeout=1)`` then returns
this :class:`Serial` (the line's behaviour: :mod:`firmware_sim.serial_line`).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from serial.serialutil import SerialException

from .serial_line import InProcessSerial, SerialEndpoint

__all__ = ["Serial"]


class Serial(InProcessSerial):
    """A serial port whose other end is an emulated device's controller."""

    BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
    RESET_ON_OPEN = True
    GONE = "the emulated device is gone (unplugged or released)"

    def _lookup(self, url: str) -> SerialEndpoint:
        parts = urlsplit(url)
        if parts.scheme.lower() != "opusim":
            raise SerialException(f"expected a URL like opusim://sim-1, got {url!r}")
        if parts.query:
            raise SerialException(f"opusim:// URLs take no options, got {parts.query!r}")
        name = (parts.netloc + parts.path).strip("/")
        from .errors import SimDeviceNotFoundError
        from .registry import get_device

        try:
            device = get_device(name)
        except SimDeviceNotFoundError as exc:
            raise SerialException(f"could not open port {url}: {exc}") from exc
        if not device.connected:
            raise SerialException(f"could not open port {url}: the device is unplugged")
        return device
