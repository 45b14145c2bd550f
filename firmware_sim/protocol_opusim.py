"""pyserial URL handler ``opusim://<device name>``: the controller line of an in-process emulated device.

pyserial finds it because importing :mod:`firmware_sim` appends the package to
``serial.protocol_handler_packages``; ``serial.serial_for_url("opusim://sim-3", timeout=1)`` then returns
this :class:`Serial`. It keeps pyserial's semantics: ``read`` returns short data when the timeout passes
(``timeout=None`` blocks, ``0`` does not wait), ``write`` returns the count; a device that was unplugged or
released makes reads and writes raise ``SerialException``, as a vanished USB serial port does.
"""

from __future__ import annotations

import numbers
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from serial.serialutil import PortNotOpenError, SerialBase, SerialException, to_bytes

if TYPE_CHECKING:
    from .device import EmulatedDevice

__all__ = ["Serial"]


class Serial(SerialBase):
    """A serial port whose other end is an emulated device's controller."""

    BAUDRATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 921600)
    is_open: bool  # set by SerialBase.__init__, open() and close()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._device: EmulatedDevice | None = None
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self._device = self._lookup(self._port)
        self._reconfigure_port()
        self.is_open = True
        self.reset_input_buffer()

    @staticmethod
    def _lookup(url: str) -> EmulatedDevice:
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

    def close(self) -> None:
        self.is_open = False
        self._device = None

    def _reconfigure_port(self) -> None:
        # Settings mean nothing to an in-process line, but keep pyserial's own validation.
        if not isinstance(self._baudrate, numbers.Integral) or not 0 < int(self._baudrate) < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")

    def _live_device(self) -> EmulatedDevice:
        if not self.is_open:
            raise PortNotOpenError()
        device = self._device
        if device is None or not device.connected:
            raise SerialException("the emulated device is gone (unplugged or released)")
        return device

    @property
    def in_waiting(self) -> int:
        return self._live_device().serial_in_waiting

    @property
    def out_waiting(self) -> int:
        self._live_device()
        return 0

    def read(self, size: int = 1) -> bytes:
        device = self._live_device()
        timeout_s = self._timeout
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        data = bytearray()
        while len(data) < size:
            chunk = device.serial_read(size - len(data))
            if chunk:
                data += chunk
                continue
            if not device.connected:
                raise SerialException("the emulated device is gone (unplugged or released)")
            if deadline is None:
                device.serial_wait(None)
                continue
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            device.serial_wait(remaining_s)
        return bytes(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        device = self._live_device()
        payload = to_bytes(data)
        device.serial_write(payload)
        return len(payload)

    def flush(self) -> None:
        self._live_device()

    def reset_input_buffer(self) -> None:
        self._live_device().serial_reset_input()

    def reset_output_buffer(self) -> None:
        self._live_device()

    def _update_break_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True
