"""The USB link of a protocol-v1 device, shared by its DMD and camera: registers, packets out, packets in.

It turns transport-level stalls into the device's own error codes (LAST_ERROR), and keeps one incremental
parser for the camera stream so that no byte is lost between calls.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from ...errors import (
    CommunicationError,
    CommunicationTimeoutError,
    DeviceRefusedError,
    InvalidInputError,
    ProtocolError,
)
from ...protocol import (
    CONTROL_TIMEOUT_S,
    EP_CAMERA_IN,
    EP_DMD_OUT,
    REQ_READ_REG,
    REQ_WRITE_REG,
    CameraFrame,
    DeviceErrorCode,
    PacketFault,
    PacketParser,
    PacketType,
    Register,
    bulk_write_timeout_s,
)
from ...transport import StallError, UsbTransport
from ..camera import DamagedFrame
from ..rig import LinkCounters

__all__ = ["UsbLink", "LinkSettings"]

_log = logging.getLogger(__name__)

_READ_CHUNK_BYTES = 1 << 20
_DRAIN_LIMIT_S = 2.0


@dataclass(frozen=True)
class LinkSettings:
    """Timeouts of the USB link, in seconds (docs/protocol.md section 3)."""

    control_timeout_s: float = CONTROL_TIMEOUT_S


class UsbLink:
    """Registers and packets over one :class:`UsbTransport`."""

    def __init__(self, transport: UsbTransport, settings: LinkSettings | None = None) -> None:
        self.transport = transport
        self.settings = settings or LinkSettings()
        self._parser = PacketParser(accept=frozenset({PacketType.CAMERA_FRAME}))
        self._pending: deque[CameraFrame | PacketFault] = deque()
        self.faults: deque[PacketFault] = deque(maxlen=64)  # the latest corrupt packets, for diagnostics
        self.bytes_sent = 0
        self.bytes_received = 0
        self.packet_faults = 0  # corrupt packets received (CRC, length, type), all time
        self.halts_cleared = 0

    # -- registers ---------------------------------------------------------------------------------
    def read_register(self, register: Register | int) -> int:
        """Read a 32-bit register; a refused read raises DeviceRefusedError with the device's code."""
        try:
            data = self.transport.control_read(
                REQ_READ_REG, int(register), 0, 4, timeout_s=self.settings.control_timeout_s
            )
        except StallError as exc:
            raise self._refusal(f"reading register {_name(register)}") from exc
        if len(data) != 4:
            raise ProtocolError(f"register {_name(register)}: expected 4 bytes, got {len(data)}")
        return int.from_bytes(bytes(data), "little")

    def write_register(self, register: Register | int, value: int) -> None:
        """Write a 32-bit register; a refused write raises DeviceRefusedError and changes nothing."""
        value = int(value)
        if not 0 <= value <= 0xFFFFFFFF:
            raise InvalidInputError(f"register value {value} does not fit 32 bits")
        _log.debug("write %s = %d", _name(register), value)
        try:
            self.transport.control_write(
                REQ_WRITE_REG,
                int(register),
                0,
                value.to_bytes(4, "little"),
                timeout_s=self.settings.control_timeout_s,
            )
        except StallError as exc:
            raise self._refusal(f"writing {value} to register {_name(register)}") from exc

    def _refusal(self, what: str) -> DeviceRefusedError:
        try:
            code = self.read_last_error()
        except Exception:  # the refusal itself is what matters; a second failure must not mask it
            code = None
        meaning = DeviceErrorCode.describe(code) if code else "no reason latched"
        return DeviceRefusedError(f"device refused {what}: {meaning}", code)

    def read_last_error(self) -> int:
        data = self.transport.control_read(
            REQ_READ_REG, int(Register.LAST_ERROR), 0, 4, timeout_s=self.settings.control_timeout_s
        )
        return int.from_bytes(bytes(data), "little")

    # -- packets -----------------------------------------------------------------------------------
    def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send packets on the DMD OUT endpoint, with a timeout that grows with the size."""
        timeout_s = bulk_write_timeout_s(len(data))
        sent = self.transport.bulk_write(data, timeout_s=timeout_s)
        if sent != len(data):
            raise ProtocolError(f"short bulk write: {sent} of {len(data)} bytes")
        self.bytes_sent += sent

    def receive_frames(self, n_frames: int, timeout_s: float) -> Iterator[CameraFrame | DamagedFrame]:
        """Yield camera frames as they arrive until ``n_frames`` were yielded or ``timeout_s`` passes.

        Raises CommunicationTimeoutError (with the count still missing) when the deadline passes first.
        A corrupt packet is recorded in ``faults`` and yielded as a :class:`DamagedFrame` in its place: it is never
        decoded as data, and the parser resynchronises on the next packet.
        """
        deadline = time.monotonic() + timeout_s
        remaining = n_frames
        while remaining > 0:
            while self._pending and remaining > 0:
                item = self._pending.popleft()
                remaining -= 1
                if isinstance(item, CameraFrame):
                    yield item
                else:  # never decoded as data: the frame is lost, and the rest of the stream read on
                    self.faults.append(item)
                    self.packet_faults += 1
                    yield DamagedFrame(str(item.to_error()))
            if remaining == 0:
                return
            left_s = deadline - time.monotonic()
            message = f"{remaining} of {n_frames} camera frames did not arrive within {timeout_s:.3g} s"
            if left_s <= 0:
                raise CommunicationTimeoutError(message)
            try:
                chunk = self.transport.bulk_read(_READ_CHUNK_BYTES, timeout_s=left_s)
            except CommunicationTimeoutError as exc:
                raise CommunicationTimeoutError(message) from exc
            self.bytes_received += len(chunk)
            for parsed in self._parser.feed(chunk):
                # The parser accepts camera frames only: a packet of any other type comes back as a PacketFault.
                assert isinstance(parsed, (CameraFrame, PacketFault))
                self._pending.append(parsed)

    def drain(self, timeout_s: float, max_reads: int) -> int:
        """Discard the IN stream until a read times out (or ``max_reads`` reads); forget partial packets.

        Used after a failed or interrupted request, so that its frames cannot be taken for the next one's.
        """
        discarded = 0
        deadline = time.monotonic() + _DRAIN_LIMIT_S
        for _ in range(max_reads):
            if time.monotonic() > deadline:
                _log.warning("the camera endpoint kept streaming for %.1f s while draining", _DRAIN_LIMIT_S)
                break
            try:
                chunk = self.transport.bulk_read(_READ_CHUNK_BYTES, timeout_s=timeout_s)
            except StallError:
                if not self._clear_halt(EP_CAMERA_IN):
                    break
                continue
            except CommunicationError:
                break
            if not chunk:
                break
            discarded += len(chunk)
        self.reset_stream()
        if discarded:
            _log.info("drained %d stale bytes from the camera endpoint", discarded)
        return discarded

    @property
    def counters(self) -> LinkCounters:
        """Bytes and faults of this link so far (a snapshot)."""
        return LinkCounters(self.bytes_sent, self.bytes_received, self.packet_faults, self.halts_cleared)

    def clear_halts(self) -> None:
        """Clear both bulk endpoints' halts (after a stall, or to be sure before a retry); never raises."""
        for endpoint in (EP_DMD_OUT, EP_CAMERA_IN):
            self._clear_halt(endpoint)

    def _clear_halt(self, endpoint: int) -> bool:
        try:
            self.transport.clear_halt(endpoint)
        except Exception as exc:  # a device that is gone: the caller's own error says so
            _log.warning("could not clear the halt of endpoint %#04x: %s", endpoint, exc)
            return False
        self.halts_cleared += 1
        return True

    def reconnect(self, timeout_s: float) -> None:
        """Reopen the transport on the same device after an unplug and replug; forget the old stream.

        Raises ConnectionLostError when the device is not back within ``timeout_s``.
        """
        self.transport.reopen(timeout_s)
        self.reset_stream()

    def reset_stream(self) -> None:
        """Forget any partial packet (after an abort or a reset)."""
        self._parser = PacketParser(accept=frozenset({PacketType.CAMERA_FRAME}))
        self._pending.clear()


def _name(register: Register | int) -> str:
    try:
        return Register(register).name
    except ValueError:
        return f"0x{int(register):04X}"
