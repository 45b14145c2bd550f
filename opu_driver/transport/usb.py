"""Bytes over USB with pyusb: vendor control requests, the DMD OUT and CAMERA IN bulk endpoints.

The backend is an argument (``backend=None`` lets pyusb pick libusb; the emulator passes its own
``usb.backend.IBackend``), so the code here is the code that drives real hardware. pyusb errors are mapped
onto the driver's error tree with their cause chained: timeouts, stalls (``StallError``: the device refused a
request and latched the reason in LAST_ERROR), unplugs (``ConnectionLostError``), and the rest.
"""

from __future__ import annotations

import array
import errno
import logging
import math
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any

import usb.core
import usb.util

from opu_driver.errors import (
    CommunicationError,
    CommunicationTimeoutError,
    ConnectionLostError,
    DeviceNotFoundError,
    InvalidInputError,
    LibraryLoadError,
    OpuError,
    StallError,
)
from opu_driver.protocol.constants import (
    BM_REQUEST_READ_REG,
    BM_REQUEST_WRITE_REG,
    EP_CAMERA_IN,
    EP_DMD_OUT,
    USB_INTERFACE,
    USB_PRODUCT_ID,
    USB_VENDOR_ID,
)

__all__ = ["StallError", "UsbTransport", "UsbDeviceInfo", "find_usb_devices", "UDEV_RULE"]

logger = logging.getLogger(__name__)

#: The udev rule shipped with the package, which gives non-root users access to the device.
UDEV_RULE = str(resources.files("opu_driver") / "data" / "99-opu.rules")
"""Where the shipped udev rule lies once installed (copy it to /etc/udev/rules.d/)."""

# libusb-1.0 error codes, for backends that leave errno unset
_LIBUSB_ACCESS = -3
_LIBUSB_NO_DEVICE = -4
_LIBUSB_NOT_FOUND = -5
_LIBUSB_PIPE = -9
_GONE_ERRNOS = frozenset({errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN})


@dataclass(frozen=True)
class UsbDeviceInfo:
    """One matching USB device as seen on the bus, for listings (``opu list``)."""

    bus: int | None
    address: int | None
    serial_number: str | None  # None when it could not be read (typically: no permission)
    product: str | None
    manufacturer: str | None
    accessible: bool
    error: str = ""


def _timeout_ms(timeout_s: float) -> int:
    """pyusb/libusb take milliseconds, and 0 means 'forever': refuse that, round up, never below 1 ms."""
    if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0):
        raise InvalidInputError(f"timeout_s must be a finite number > 0, got {timeout_s!r}")
    return max(1, math.ceil(timeout_s * 1000.0))


def _is_access_error(exc: BaseException) -> bool:
    if isinstance(exc, usb.core.USBError):
        return exc.errno == errno.EACCES or getattr(exc, "backend_error_code", None) == _LIBUSB_ACCESS
    # pyusb turns an unreadable language table into ValueError("... permission issue ...")
    return isinstance(exc, ValueError) and "langid" in str(exc)


def _is_gone_error(exc: usb.core.USBError) -> bool:
    return exc.errno in _GONE_ERRNOS or getattr(exc, "backend_error_code", None) in (
        _LIBUSB_NO_DEVICE,
        _LIBUSB_NOT_FOUND,
    )


def _map_usb_error(exc: usb.core.USBError, what: str) -> OpuError:
    """Translate a pyusb error raised while doing ``what`` into the driver's error tree."""
    if isinstance(exc, usb.core.USBTimeoutError):
        return CommunicationTimeoutError(f"{what}: timed out")
    if exc.errno == errno.EPIPE or getattr(exc, "backend_error_code", None) == _LIBUSB_PIPE:
        return StallError(f"{what}: the device stalled the pipe (request refused)")
    if _is_gone_error(exc):
        return ConnectionLostError(f"{what}: the device is gone (unplugged or reset)")
    return CommunicationError(f"{what}: USB error: {exc}")


def _read_string(dev: Any, index: int) -> str | None:
    return usb.util.get_string(dev, index) if index else None


def _enumerate(vendor_id: int, product_id: int, backend: Any) -> list:
    try:
        return list(usb.core.find(find_all=True, idVendor=vendor_id, idProduct=product_id, backend=backend))
    except usb.core.NoBackendError as exc:
        raise LibraryLoadError(
            "no USB backend: install libusb-1.0 (Debian/Ubuntu: apt install libusb-1.0-0). "
            "Without hardware, use the emulator (sim:// URLs)."
        ) from exc
    except usb.core.USBError as exc:
        raise _map_usb_error(exc, "enumerating USB devices") from exc


def find_usb_devices(
    vendor_id: int = USB_VENDOR_ID, product_id: int = USB_PRODUCT_ID, backend: Any = None
) -> list[UsbDeviceInfo]:
    """List the devices with these ids, reading their strings where permissions allow.

    A device whose strings cannot be read is listed with ``accessible=False`` and the reason in ``error``,
    never skipped: a user who sees "not accessible" knows the device is there and what to fix.
    """
    found = []
    for dev in _enumerate(vendor_id, product_id, backend):
        try:
            serial = _read_string(dev, dev.iSerialNumber)
            product = _read_string(dev, dev.iProduct)
            manufacturer = _read_string(dev, dev.iManufacturer)
            found.append(UsbDeviceInfo(dev.bus, dev.address, serial, product, manufacturer, True, ""))
        except (usb.core.USBError, ValueError) as exc:
            reason = (
                f"access denied; install the udev rule {UDEV_RULE}"
                if _is_access_error(exc)
                else f"cannot read descriptors: {exc}"
            )
            found.append(UsbDeviceInfo(dev.bus, dev.address, None, None, None, False, reason))
        finally:
            usb.util.dispose_resources(dev)
    return found


class UsbTransport:
    """One OPU's USB interface: register requests on endpoint 0, packets on the bulk endpoints.

    Args:
        vendor_id, product_id: USB ids to match (the protocol's by default).
        serial_number: pick this device when several are connected; None accepts a single device.
        backend: a pyusb backend (``usb.backend.IBackend``); None lets pyusb choose libusb.

    Every transfer takes ``timeout_s``: nothing waits forever. ``bulk_read`` reuses one buffer and is meant
    for one reader thread; the other methods may be called from any thread.
    """

    def __init__(
        self,
        vendor_id: int = USB_VENDOR_ID,
        product_id: int = USB_PRODUCT_ID,
        serial_number: str | None = None,
        backend: Any = None,
    ) -> None:
        self.vendor_id = vendor_id
        self.product_id = product_id
        self._wanted_serial = serial_number
        self._backend = backend
        self._dev: Any = None
        self._manufacturer: str | None = None
        self._product: str | None = None
        self._serial_number: str | None = serial_number
        self._bcd_device: int | None = None
        self._read_buffer = array.array("B")
        self._read_lock = threading.Lock()

    # -------------------------------------------------------------------------------- open / close

    @property
    def is_open(self) -> bool:
        return self._dev is not None

    def open(self) -> None:
        """Find the device, set its configuration and claim interface 0.

        Raises:
            DeviceNotFoundError: no matching device, several and no serial number given, no permission
                (with the udev rule to install), or the interface is busy.
            LibraryLoadError: pyusb found no libusb on this machine.
        """
        if self._dev is not None:
            return
        ids = f"{self.vendor_id:04x}:{self.product_id:04x}"
        candidates = []
        denied = []
        for dev in _enumerate(self.vendor_id, self.product_id, self._backend):
            try:
                serial = _read_string(dev, dev.iSerialNumber)
            except (usb.core.USBError, ValueError) as exc:
                usb.util.dispose_resources(dev)
                if _is_access_error(exc):
                    denied.append(f"bus {dev.bus} address {dev.address}")
                    continue
                raise DeviceNotFoundError(
                    f"USB device {ids} at bus {dev.bus} address {dev.address}: cannot read its serial number: {exc}"
                ) from exc
            if self._wanted_serial is None or serial == self._wanted_serial:
                candidates.append((dev, serial))
            else:
                usb.util.dispose_resources(dev)
        if not candidates:
            raise DeviceNotFoundError(self._not_found_message(ids, denied))
        if len(candidates) > 1:
            serials = ", ".join(str(s) for _, s in candidates)
            for dev, _ in candidates:
                usb.util.dispose_resources(dev)
            raise DeviceNotFoundError(
                f"{len(candidates)} OPUs found ({ids}, serial numbers {serials}): say which one with its serial "
                "number (usb://1209:4f50/<serial>)"
            )
        dev, serial = candidates[0]
        try:
            dev.set_configuration()
            usb.util.claim_interface(dev, USB_INTERFACE)
            self._manufacturer = _read_string(dev, dev.iManufacturer)
            self._product = _read_string(dev, dev.iProduct)
        except (usb.core.USBError, ValueError) as exc:
            usb.util.dispose_resources(dev)
            if _is_access_error(exc):
                raise DeviceNotFoundError(self._access_message(ids, serial)) from exc
            if isinstance(exc, usb.core.USBError) and exc.errno == errno.EBUSY:
                raise DeviceNotFoundError(f"OPU {serial} ({ids}) is busy: another program holds its interface") from exc
            raise DeviceNotFoundError(f"cannot open OPU {serial} ({ids}): {exc}") from exc
        self._serial_number = serial
        self._bcd_device = int(dev.bcdDevice)
        self._dev = dev
        logger.info(
            "opened USB device %s serial %s (%s, bcdDevice %#06x)", ids, serial, self._product, self._bcd_device
        )

    def reopen(self, timeout_s: float, poll_s: float = 0.05) -> None:
        """Open the same device again after it was unplugged and plugged back (or reset), waiting for it.

        Only the device opened before qualifies: the same VID:PID and the same serial number (pinned at the
        first open even when none was asked for), so another OPU plugged in meanwhile is never taken for it.
        The old handle is released first. The bus is polled every ``poll_s`` until ``timeout_s`` passes.

        Raises:
            ConnectionLostError: the device did not come back within ``timeout_s``.
            InvalidInputError: a timeout that is not a finite number > 0.
        """
        _timeout_ms(timeout_s)  # validates
        self.close()
        if self._serial_number is not None:
            self._wanted_serial = self._serial_number
        ids = f"{self.vendor_id:04x}:{self.product_id:04x}"
        deadline = time.monotonic() + timeout_s
        attempts = 0
        while True:
            attempts += 1
            try:
                self.open()
            except (DeviceNotFoundError, ConnectionLostError) as exc:
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise ConnectionLostError(
                        f"USB device {ids} serial {self._wanted_serial} did not come back within {timeout_s:.3g} s "
                        f"({attempts} attempts): {exc}"
                    ) from exc
                time.sleep(min(poll_s, left_s))
                continue
            logger.info("reopened USB device %s serial %s after %d attempts", ids, self._serial_number, attempts)
            return

    def _not_found_message(self, ids: str, denied: list[str]) -> str:
        which = f" with serial number {self._wanted_serial}" if self._wanted_serial else ""
        message = f"no OPU{which} found on USB ({ids})"
        if denied:
            message += (
                f"; {len(denied)} device(s) could not be read (access denied at {', '.join(denied)}). "
                + self._udev_hint()
            )
        return message

    def _access_message(self, ids: str, serial: str | None) -> str:
        return f"access denied to OPU {serial} ({ids}). " + self._udev_hint()

    @staticmethod
    def _udev_hint() -> str:
        return (
            f"Install the udev rule shipped with the driver ({UDEV_RULE}): sudo cp it to /etc/udev/rules.d/, "
            "run sudo udevadm control --reload && sudo udevadm trigger, then re-plug the device"
        )

    def close(self) -> None:
        """Release the interface and the device handle; safe to call twice or after an unplug."""
        dev, self._dev = self._dev, None
        if dev is None:
            return
        try:
            usb.util.release_interface(dev, USB_INTERFACE)
        except usb.core.USBError as exc:  # already gone: nothing left to release
            logger.debug("release_interface failed on close: %s", exc)
        try:
            usb.util.dispose_resources(dev)
        except usb.core.USBError as exc:
            logger.debug("dispose_resources failed on close: %s", exc)

    def __enter__(self) -> UsbTransport:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -------------------------------------------------------------------------------- descriptors

    @property
    def manufacturer(self) -> str | None:
        """iManufacturer string, read at open."""
        return self._manufacturer

    @property
    def product(self) -> str | None:
        """iProduct string (the model), read at open."""
        return self._product

    @property
    def serial_number(self) -> str | None:
        """iSerialNumber string, read at open (the requested one before)."""
        return self._serial_number

    @property
    def bcd_device(self) -> int | None:
        """bcdDevice: firmware version as BCD major.minor (0x0100 for 1.0)."""
        return self._bcd_device

    # -------------------------------------------------------------------------------- transfers

    def _device(self, what: str) -> Any:
        dev = self._dev
        if dev is None:
            raise ConnectionLostError(f"{what}: the USB transport is not open")
        return dev

    def control_read(self, request: int, value: int, index: int, length: int, timeout_s: float) -> bytes:
        """Vendor device-to-host control request (bmRequestType 0xC0); returns the bytes the device sent."""
        ms = _timeout_ms(timeout_s)
        dev = self._device("control read")
        try:
            data = dev.ctrl_transfer(BM_REQUEST_READ_REG, request, value, index, length, timeout=ms)
        except usb.core.USBError as exc:
            raise _map_usb_error(exc, f"control read request {request:#04x} wValue {value:#06x}") from exc
        return bytes(data)

    def control_write(
        self, request: int, value: int, index: int, data: bytes | bytearray | memoryview, timeout_s: float
    ) -> int:
        """Vendor host-to-device control request (bmRequestType 0x40); returns the bytes written."""
        ms = _timeout_ms(timeout_s)
        dev = self._device("control write")
        try:
            return int(dev.ctrl_transfer(BM_REQUEST_WRITE_REG, request, value, index, bytes(data), timeout=ms))
        except usb.core.USBError as exc:
            raise _map_usb_error(exc, f"control write request {request:#04x} wValue {value:#06x}") from exc

    def bulk_write(self, data: bytes | bytearray | memoryview | array.array, timeout_s: float) -> int:
        """Send bytes on the DMD OUT endpoint (0x01); returns the count written.

        Raises:
            CommunicationError: the device took fewer bytes than given (a partial packet would desynchronise
                its parser until the next magic).
        """
        ms = _timeout_ms(timeout_s)
        dev = self._device("bulk write")
        if isinstance(data, array.array) and data.typecode == "B":
            buffer = data  # pyusb sends an array('B') as is; anything else it would copy into one anyway
        else:
            buffer = array.array("B")
            buffer.frombytes(data)
        try:
            written = int(dev.write(EP_DMD_OUT, buffer, timeout=ms))
        except usb.core.USBError as exc:
            raise _map_usb_error(exc, f"bulk write of {len(buffer)} bytes") from exc
        if written != len(buffer):
            raise CommunicationError(f"bulk write: the device took {written} of {len(buffer)} bytes")
        return written

    def clear_halt(self, endpoint: int) -> None:
        """Clear a stalled (halted) bulk endpoint, as the host must before the endpoint works again.

        Harmless on an endpoint that is not halted. Raises ConnectionLostError when the device is gone.
        """
        dev = self._device("clear halt")
        try:
            dev.clear_halt(endpoint)
        except usb.core.USBError as exc:
            raise _map_usb_error(exc, f"clearing the halt of endpoint {endpoint:#04x}") from exc
        logger.debug("cleared the halt of endpoint %#04x", endpoint)

    def bulk_read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Read up to ``max_bytes`` from the CAMERA IN endpoint (0x81); returns what arrived (maybe empty).

        One preallocated buffer is reused while max_bytes stays the same, so a read loop allocates only the
        bytes it returns.
        """
        if max_bytes < 1:
            raise InvalidInputError(f"max_bytes must be >= 1, got {max_bytes}")
        ms = _timeout_ms(timeout_s)
        dev = self._device("bulk read")
        with self._read_lock:
            if len(self._read_buffer) != max_bytes:
                self._read_buffer = array.array("B", bytes(max_bytes))
            try:
                n = int(dev.read(EP_CAMERA_IN, self._read_buffer, timeout=ms))
            except usb.core.USBError as exc:
                raise _map_usb_error(exc, f"bulk read of up to {max_bytes} bytes") from exc
            return memoryview(self._read_buffer)[:n].tobytes()
