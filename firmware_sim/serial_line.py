"""A pyserial port whose other end is an in-process emulator: the line behind ``opusim://`` and ``coboltsim://``.

pyserial's semantics are kept: ``read`` returns short data when the timeout passes (``timeout=None`` blocks, ``0``
does not wait), ``write`` returns the count, and an emulator that was unplugged or released makes reads and writes
raise ``SerialException``, as a vanished USB serial port does. A URL scheme subclasses :class:`InProcessSerial`
and says how its URL names an emulator (:meth:`InProcessSerial._lookup`).
"""

from __future__ import annotations

import numbers
import time
from abc import abstractmethod
from typing import Any, Protocol

from serial.serialutil import PortNotOpenError, SerialBase, SerialException, to_bytes

__all__ = ["InProcessSerial", "SerialEndpoint"]


class SerialEndpoint(Protocol):
    """The emulator's side of the line."""

    @property
    def connected(self) -> bool: ...

    @property
    def serial_in_waiting(self) -> int: ...

    def serial_read(self, size: int, /) -> bytes: ...

    def serial_write(self, data: bytes, /) -> object: ...

    def serial_wait(self, timeout_s: float | None, /) -> object: ...

    def serial_reset_input(self) -> None: ...


class InProcessSerial(SerialBase):
    """A serial port wired to an in-process emulator."""

    is_open: bool  # set by SerialBase.__init__, open() and close()
    RESET_ON_OPEN = False
    """Drop what the emulator had ready to send before the port opened (a real port starts empty)."""
    GONE = "the emulator is gone (unplugged or released)"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._endpoint: SerialEndpoint | None = None
        super().__init__(*args, **kwargs)

    @abstractmethod
    def _lookup(self, url: str) -> SerialEndpoint:
        """The emulator a URL names; SerialException for a bad URL or one that names none (or an unplugged one)."""

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self._endpoint = self._lookup(self._port)
        self._reconfigure_port()
        self.is_open = True
        if self.RESET_ON_OPEN:
            self.reset_input_buffer()

    def close(self) -> None:
        self.is_open = False
        self._endpoint = None

    def _reconfigure_port(self) -> None:
        # Settings mean nothing to an in-process line, but keep pyserial's own validation.
        if not isinstance(self._baudrate, numbers.Integral) or not 0 < int(self._baudrate) < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")

    def _live(self) -> SerialEndpoint:
        if not self.is_open:
            raise PortNotOpenError()
        endpoint = self._endpoint
        if endpoint is None or not endpoint.connected:
            raise SerialException(self.GONE)
        return endpoint

    @property
    def in_waiting(self) -> int:
        return self._live().serial_in_waiting

    @property
    def out_waiting(self) -> int:
        self._live()
        return 0

    def read(self, size: int = 1) -> bytes:
        endpoint = self._live()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        data = bytearray()
        while len(data) < size:
            chunk = endpoint.serial_read(size - len(data))
            if chunk:
                data += chunk
                continue
            if not endpoint.connected:
                raise SerialException(self.GONE)
            if deadline is None:
                endpoint.serial_wait(None)
                continue
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                break
            endpoint.serial_wait(remaining_s)
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
