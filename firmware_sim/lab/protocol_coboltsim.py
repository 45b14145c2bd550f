"""pyserial URL handler ``coboltsim://<name>``: the serial line of an emulated Cobolt laser.

pyserial finds it because importing :mod:`firmware_sim.lab.cobolt` appends ``firmware_sim.lab`` to
``serial.protocol_handler_packages``. It keeps pyserial's semantics: ``read`` returns short data when the timeout
passes (``None`` blocks, ``0`` does not wait), ``write`` returns the count, and a laser that was released makes
reads and writes raise ``SerialException``, as a vanished USB serial port does.
"""

from __future__ import annotations

import numbers
import time
from typing import Any
from urllib.parse import urlsplit

from serial.serialutil import PortNotOpenError, SerialBase, SerialException, to_bytes

from .cobolt import CoboltEmulator, CoboltSimNotFoundError, get_laser

__all__ = ["Serial"]


class Serial(SerialBase):
    """A serial port whose other end is an emulated Cobolt laser."""

    BAUDRATES = (9600, 19200, 38400, 57600, 115200)
    is_open: bool  # set by SerialBase.__init__, open() and close()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._laser: CoboltEmulator | None = None
        super().__init__(*args, **kwargs)

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        parts = urlsplit(self._port)
        if parts.scheme.lower() != "coboltsim" or parts.query:
            raise SerialException(f"expected a URL like coboltsim://laser-1, got {self._port!r}")
        name = (parts.netloc + parts.path).strip("/")
        try:
            laser = get_laser(name)
        except CoboltSimNotFoundError as exc:
            raise SerialException(f"could not open port {self._port}: {exc}") from exc
        if not laser.connected:
            raise SerialException(f"could not open port {self._port}: the laser is unplugged")
        self._laser = laser
        self._reconfigure_port()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self._laser = None

    def _reconfigure_port(self) -> None:
        # Settings mean nothing to an in-process line, but keep pyserial's own validation.
        if not isinstance(self._baudrate, numbers.Integral) or not 0 < int(self._baudrate) < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")

    def _live(self) -> CoboltEmulator:
        if not self.is_open:
            raise PortNotOpenError()
        laser = self._laser
        if laser is None or not laser.connected:
            raise SerialException("the emulated laser is gone (released)")
        return laser

    @property
    def in_waiting(self) -> int:
        return self._live().serial_in_waiting()

    @property
    def out_waiting(self) -> int:
        self._live()
        return 0

    def read(self, size: int = 1) -> bytes:
        laser = self._live()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        data = bytearray()
        while len(data) < size:
            chunk = laser.serial_read(size - len(data))
            if chunk:
                data += chunk
                continue
            if not laser.connected:
                raise SerialException("the emulated laser is gone (released)")
            if deadline is None:
                laser.serial_wait(None)
                continue
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            laser.serial_wait(remaining_s)
        return bytes(data)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        payload = to_bytes(data)
        self._live().serial_write(payload)
        return len(payload)

    def flush(self) -> None:
        self._live()

    def reset_input_buffer(self) -> None:
        self._live().serial_reset_input()

    def reset_output_buffer(self) -> None:
        self._live()

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
