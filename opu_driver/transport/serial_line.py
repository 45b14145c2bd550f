"""The controller's serial line with pyserial: one command line out, one reply line back, within a deadline.

Ports are opened with ``serial.serial_for_url``, so a real port (``/dev/ttyACM0``, ``COM3``), pyserial's own
URLs (``loop://``) and the emulator's ``opusim://`` handler all go through the same code.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import serial
import serial.tools.list_ports

from opu_driver.errors import (
    CommunicationTimeoutError,
    ConnectionLostError,
    DeviceNotFoundError,
    InvalidInputError,
    OpuError,
    UnsupportedUrlError,
)
from opu_driver.protocol.scpi import MAX_REPLY_LINE_BYTES, LineReader
from opu_driver.transport.usb import UDEV_RULE

__all__ = ["SerialTransport", "SerialPortInfo", "list_serial_ports"]

logger = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 256


@dataclass(frozen=True)
class SerialPortInfo:
    """One serial port of the system, with the USB identity of its adapter when it has one."""

    device: str
    description: str
    vid: int | None
    pid: int | None
    serial_number: str | None
    manufacturer: str | None
    product: str | None


def list_serial_ports(vendor_id: int | None = None, product_id: int | None = None) -> list[SerialPortInfo]:
    """Serial ports of this machine (optionally only those of a USB vendor/product id), for ``opu list``."""
    ports = []
    for info in serial.tools.list_ports.comports():
        if vendor_id is not None and info.vid != vendor_id:
            continue
        if product_id is not None and info.pid != product_id:
            continue
        ports.append(
            SerialPortInfo(
                device=info.device,
                description=info.description,
                vid=info.vid,
                pid=info.pid,
                serial_number=info.serial_number,
                manufacturer=info.manufacturer,
                product=info.product,
            )
        )
    return ports


def _check_timeout(timeout_s: float) -> float:
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise InvalidInputError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    return float(timeout_s)


def _encode_line(line: str | bytes) -> bytes:
    """The bytes to send for one command line: printable ASCII plus one ``\\n``."""
    try:
        raw = line.encode("ascii") if isinstance(line, str) else bytes(line)
    except UnicodeEncodeError:
        raise InvalidInputError(f"command line {line!r} must be printable ASCII") from None
    if raw.endswith(b"\n"):
        raw = raw[:-1]
    if any(b < 0x20 or b > 0x7E for b in raw):
        raise InvalidInputError(f"command line {line!r} must be printable ASCII without line breaks")
    return raw + b"\n"


class SerialTransport:
    """A line-oriented link to the controller.

    Args:
        url: a port name or pyserial URL (``/dev/ttyACM0``, ``loop://``, ``opusim://<device>``).
        baudrate: line speed (ignored by USB CDC-ACM and by the emulator).
        timeout_s: default deadline for one reply.
    """

    def __init__(self, url: str, baudrate: int = 115200, timeout_s: float = 1.0) -> None:
        self.url = url
        self.baudrate = baudrate
        self.timeout_s = _check_timeout(timeout_s)
        self._port: Any = None
        self._reader = LineReader(MAX_REPLY_LINE_BYTES)
        self._lock = threading.Lock()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    def open(self) -> None:
        """Open the port.

        Raises:
            UnsupportedUrlError: a URL scheme that no pyserial handler knows.
            DeviceNotFoundError: the port does not exist or cannot be opened (permissions, busy).
        """
        if self._port is not None:
            return
        try:
            port = serial.serial_for_url(
                self.url, baudrate=self.baudrate, timeout=self.timeout_s, write_timeout=self.timeout_s
            )
        except ValueError as exc:
            raise UnsupportedUrlError(f"cannot open serial URL {self.url!r}: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            raise DeviceNotFoundError(
                f"cannot open the controller port {self.url!r}: {exc}. Check that the device is connected and "
                f"that you may use the port (on Linux: the udev rule {UDEV_RULE}, or the "
                "dialout group)"
            ) from exc
        self._port = port
        self._reader.clear()
        logger.info("opened controller port %s", self.url)

    def close(self) -> None:
        """Close the port; safe to call twice or after the port vanished."""
        port, self._port = self._port, None
        if port is None:
            return
        try:
            port.close()
        except (serial.SerialException, OSError) as exc:
            logger.debug("closing %s failed: %s", self.url, exc)

    def __enter__(self) -> SerialTransport:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def query(self, line: str | bytes, timeout_s: float | None = None) -> str:
        """Send one command line and return the one reply line (without its line end).

        Stale input (a late reply to an earlier command, garbage) is discarded before sending, so the line
        returned answers this command.

        Raises:
            CommunicationTimeoutError: no complete reply line by the deadline (the message shows any part).
            ConnectionLostError: the port is closed or went away.
            ProtocolError: a reply line longer than 4096 bytes.
            InvalidInputError: the command is not printable ASCII or holds a line break.
        """
        data = _encode_line(line)
        timeout_s = self.timeout_s if timeout_s is None else _check_timeout(timeout_s)
        with self._lock:
            port = self._port
            if port is None:
                raise ConnectionLostError(f"controller port {self.url!r} is not open")
            deadline = time.monotonic() + timeout_s
            try:
                port.reset_input_buffer()
                self._reader.clear()
                if port.write_timeout != timeout_s:
                    port.write_timeout = timeout_s
                port.write(data)
                port.flush()
                return self._read_line(port, deadline, data, timeout_s)
            except OpuError:
                raise  # ours already (timeouts and lost connections are OSErrors too: keep them as they are)
            except serial.SerialTimeoutException as exc:
                raise CommunicationTimeoutError(
                    f"controller {self.url}: writing {data!r} did not finish within {timeout_s:.3g} s"
                ) from exc
            except (serial.SerialException, OSError) as exc:
                raise ConnectionLostError(f"controller port {self.url!r} failed: {exc}") from exc

    def discard_input(self, quiet_s: float = 0.005, max_s: float = 0.1) -> int:
        """Read and drop what the device sends until nothing arrived for ``quiet_s`` (or ``max_s`` passed).

        Used before a command is sent again after a garbled or missing reply: the rest of a garbled line, or a
        late reply to the failed attempt, is drained here instead of being read as the answer to the retry.
        Returns the number of bytes dropped.

        Raises:
            ConnectionLostError: the port is closed or went away.
        """
        if not (isinstance(quiet_s, (int, float)) and math.isfinite(quiet_s) and quiet_s >= 0):
            raise InvalidInputError(f"quiet_s must be a finite number >= 0, got {quiet_s!r}")
        if not (isinstance(max_s, (int, float)) and math.isfinite(max_s) and max_s >= 0):
            raise InvalidInputError(f"max_s must be a finite number >= 0, got {max_s!r}")
        with self._lock:
            port = self._port
            if port is None:
                raise ConnectionLostError(f"controller port {self.url!r} is not open")
            self._reader.clear()
            dropped = 0
            deadline = time.monotonic() + max_s
            try:
                while True:
                    remaining_s = deadline - time.monotonic()
                    if remaining_s <= 0:
                        break  # a line that never goes quiet: the query that follows flushes it again
                    waiting = port.in_waiting
                    if waiting:
                        port.timeout = remaining_s
                        dropped += len(port.read(min(waiting, _READ_CHUNK_BYTES)))
                        continue
                    # Wait up to the quiet period for one more byte: none means the line is quiet.
                    port.timeout = min(quiet_s, remaining_s)
                    chunk = port.read(1)
                    if not chunk:
                        break
                    dropped += len(chunk)
            except (serial.SerialException, OSError) as exc:
                raise ConnectionLostError(f"controller port {self.url!r} failed: {exc}") from exc
            if dropped:
                logger.debug("controller %s: dropped %d bytes of stale input", self.url, dropped)
            return dropped

    def _read_line(self, port: Any, deadline: float, sent: bytes, timeout_s: float) -> str:
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                partial = self._reader.partial
                detail = f" (partial reply {partial!r})" if partial else ""
                self._reader.clear()
                raise CommunicationTimeoutError(
                    f"controller {self.url}: no reply to {sent.strip()!r} within {timeout_s:.3g} s{detail}"
                )
            if port.timeout != remaining_s:
                port.timeout = remaining_s
            waiting = port.in_waiting
            chunk = port.read(min(max(1, waiting), _READ_CHUNK_BYTES))
            if not chunk:
                continue  # the read timed out; the deadline check above decides
            lines = self._reader.feed(chunk)  # ProtocolError on an overlong line propagates
            if lines:
                if len(lines) > 1:
                    logger.warning(
                        "controller %s sent %d lines to %r; using the first", self.url, len(lines), sent.strip()
                    )
                self._reader.clear()
                return lines[0]
