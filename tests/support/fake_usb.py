"""A minimal scripted pyusb backend for exact-traffic tests of the USB transport.

It exposes FakeUsbDevice objects as USB devices with the descriptors of docs/protocol.md 1.1, records every
call that reaches the backend (control requests, bulk transfers, configuration and interface calls) in
``backend.log``, and can be scripted to stall, time out, fail or vanish, raising exactly what the libusb-1.0
backend of pyusb raises in those cases. It has no optics and no firmware: register reads answer from a dict.
"""

from __future__ import annotations

import array
import errno
from collections import deque
from dataclasses import dataclass, field
from types import SimpleNamespace

import usb.backend
import usb.core

VENDOR_ID = 0x1209
PRODUCT_ID = 0x4F50
LANGID_EN_US = 0x0409
_STR_MANUFACTURER, _STR_PRODUCT, _STR_SERIAL = 1, 2, 3
_GET_DESCRIPTOR = 0x06
_DESC_STRING = 0x03
_READ_REG, _WRITE_REG = 0x01, 0x02


def _usb_error(kind: str) -> usb.core.USBError:
    """The exception libusb1's pyusb backend raises for each fault kind (message, libusb code, errno)."""
    if kind == "timeout":
        return usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)
    if kind == "stall":
        return usb.core.USBError("Pipe error", -9, errno.EPIPE)
    if kind == "unplug":
        return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)
    if kind == "access":
        return usb.core.USBError("Access denied (insufficient permissions)", -3, errno.EACCES)
    if kind == "busy":
        return usb.core.USBError("Resource busy", -6, errno.EBUSY)
    if kind == "io":
        return usb.core.USBError("Input/Output Error", -1, errno.EIO)
    raise ValueError(f"unknown fault kind {kind!r}")


@dataclass
class Transfer:
    """One call that reached the backend."""

    kind: str  # ctrl, bulk_write, bulk_read, set_configuration, claim_interface, release_interface, open, close
    serial: str = ""
    endpoint: int | None = None
    bmRequestType: int | None = None
    bRequest: int | None = None
    wValue: int | None = None
    wIndex: int | None = None
    data: bytes = b""  # bytes sent (OUT) or returned (IN)
    length: int | None = None  # bytes asked for (IN)
    timeout_ms: int | None = None
    buffer_id: int | None = None  # id() of the caller's buffer (bulk_read), to check buffer reuse
    value: int | None = None  # configuration or interface number


@dataclass
class FakeUsbDevice:
    """One fake device: descriptors, registers, bulk data, and scripted faults."""

    serial: str = "FAKE-0001"
    product: str = "OPU-1"
    manufacturer: str = "OPU Open Stack"
    vendor_id: int = VENDOR_ID
    product_id: int = PRODUCT_ID
    bcd_device: int = 0x0100
    bus: int = 1
    address: int = 1
    registers: dict[int, int] = field(default_factory=dict)
    read_only: set[int] = field(default_factory=set)
    bulk_in: bytearray = field(default_factory=bytearray)  # what the device sends on 0x81
    bulk_out: bytearray = field(default_factory=bytearray)  # what it received on 0x01
    max_bulk_write: int | None = None  # accept at most this many bytes per write (a short write)
    access_denied: bool = False
    plugged: bool = True
    faults: deque = field(default_factory=deque)  # (operation, kind): next matching operation fails
    configuration: int = 0

    def fail_next(self, operation: str, kind: str, times: int = 1) -> None:
        """Make the next ``times`` operations of a kind fail.

        operation: "ctrl" (vendor requests only), "bulk_write", "bulk_read", "set_configuration",
            "claim_interface" or "any". kind: "stall", "timeout", "unplug", "io", "busy", "access".
        """
        for _ in range(times):
            self.faults.append((operation, kind))

    def _take_fault(self, operation: str) -> None:
        if not self.plugged:
            raise _usb_error("unplug")
        for i, (op, kind) in enumerate(self.faults):
            if op in (operation, "any"):
                del self.faults[i]
                if kind == "unplug":
                    self.plugged = False
                raise _usb_error(kind)

    def string(self, index: int) -> str | None:
        return {_STR_MANUFACTURER: self.manufacturer, _STR_PRODUCT: self.product, _STR_SERIAL: self.serial}.get(index)


class FakeUsbBackend(usb.backend.IBackend):
    """pyusb backend over a list of FakeUsbDevice; ``log`` holds every call in order."""

    def __init__(self, *devices: FakeUsbDevice) -> None:
        super().__init__()
        self.devices = list(devices)
        self.log: list[Transfer] = []

    # -- helpers for tests
    def vendor_requests(self) -> list[Transfer]:
        """Control transfers of vendor type (registers), without the standard descriptor reads."""
        return [t for t in self.log if t.kind == "ctrl" and (t.bmRequestType & 0x60) == 0x40]

    def of_kind(self, kind: str) -> list[Transfer]:
        return [t for t in self.log if t.kind == kind]

    # -- enumeration and descriptors
    def enumerate_devices(self):
        return iter([d for d in self.devices if d.plugged])

    def get_parent(self, dev):
        return None

    def get_device_descriptor(self, dev: FakeUsbDevice):
        return SimpleNamespace(
            bLength=18,
            bDescriptorType=1,
            bcdUSB=0x0200,
            bDeviceClass=0,
            bDeviceSubClass=0,
            bDeviceProtocol=0,
            bMaxPacketSize0=64,
            idVendor=dev.vendor_id,
            idProduct=dev.product_id,
            bcdDevice=dev.bcd_device,
            iManufacturer=_STR_MANUFACTURER,
            iProduct=_STR_PRODUCT,
            iSerialNumber=_STR_SERIAL,
            bNumConfigurations=1,
            address=dev.address,
            bus=dev.bus,
            port_number=1,
            port_numbers=(1,),
            speed=3,
        )

    def get_configuration_descriptor(self, dev, config):
        if config != 0:
            raise IndexError("one configuration")
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=2,
            wTotalLength=32,
            bNumInterfaces=1,
            bConfigurationValue=1,
            iConfiguration=0,
            bmAttributes=0x80,
            bMaxPower=250,
            extra_descriptors=[],
        )

    def get_interface_descriptor(self, dev, intf, alt, config):
        if (intf, alt, config) != (0, 0, 0):
            raise IndexError("one interface, one alternate setting")
        return SimpleNamespace(
            bLength=9,
            bDescriptorType=4,
            bInterfaceNumber=0,
            bAlternateSetting=0,
            bNumEndpoints=2,
            bInterfaceClass=0xFF,
            bInterfaceSubClass=0x4F,
            bInterfaceProtocol=0x01,
            iInterface=0,
            extra_descriptors=[],
        )

    def get_endpoint_descriptor(self, dev, ep, intf, alt, config):
        if ep not in (0, 1):
            raise IndexError("two endpoints")
        return SimpleNamespace(
            bLength=7,
            bDescriptorType=5,
            bEndpointAddress=(0x01, 0x81)[ep],
            bmAttributes=0x02,
            wMaxPacketSize=512,
            bInterval=0,
            bRefresh=0,
            bSynchAddress=0,
            extra_descriptors=[],
        )

    # -- handles
    def open_device(self, dev: FakeUsbDevice):
        self.log.append(Transfer("open", dev.serial))
        if not dev.plugged:
            raise _usb_error("unplug")
        if dev.access_denied:
            raise _usb_error("access")
        return dev

    def close_device(self, handle: FakeUsbDevice) -> None:
        self.log.append(Transfer("close", handle.serial))

    def set_configuration(self, handle: FakeUsbDevice, config_value: int) -> None:
        self.log.append(Transfer("set_configuration", handle.serial, value=config_value))
        handle._take_fault("set_configuration")
        handle.configuration = config_value

    def get_configuration(self, handle: FakeUsbDevice) -> int:
        return handle.configuration

    def set_interface_altsetting(self, handle, intf, altsetting) -> None:
        self.log.append(Transfer("set_interface_altsetting", handle.serial, value=intf))

    def claim_interface(self, handle: FakeUsbDevice, intf: int) -> None:
        self.log.append(Transfer("claim_interface", handle.serial, value=intf))
        handle._take_fault("claim_interface")

    def release_interface(self, handle: FakeUsbDevice, intf: int) -> None:
        self.log.append(Transfer("release_interface", handle.serial, value=intf))
        if not handle.plugged:
            raise _usb_error("unplug")

    # -- transfers
    def ctrl_transfer(self, handle: FakeUsbDevice, bmRequestType, bRequest, wValue, wIndex, data, timeout):
        record = Transfer(
            "ctrl",
            handle.serial,
            bmRequestType=bmRequestType,
            bRequest=bRequest,
            wValue=wValue,
            wIndex=wIndex,
            timeout_ms=timeout,
        )
        self.log.append(record)
        device_to_host = bool(bmRequestType & 0x80)
        if device_to_host:
            record.length = len(data)
        else:
            record.data = bytes(data)
        if (bmRequestType & 0x60) == 0x00:  # standard request: only string descriptors are needed
            if not handle.plugged:
                raise _usb_error("unplug")
            return self._standard(handle, bRequest, wValue, wIndex, data)
        handle._take_fault("ctrl")
        if bmRequestType == 0xC0 and bRequest == _READ_REG:
            value = handle.registers.get(wValue)
            if value is None or len(data) != 4:
                raise _usb_error("stall")
            reply = value.to_bytes(4, "little")
            data[:4] = array.array("B", reply)
            record.data = reply
            return 4
        if bmRequestType == 0x40 and bRequest == _WRITE_REG:
            if wValue not in handle.registers or wValue in handle.read_only or len(data) != 4:
                raise _usb_error("stall")
            handle.registers[wValue] = int.from_bytes(bytes(data), "little")
            return 4
        raise _usb_error("stall")

    def _standard(self, handle: FakeUsbDevice, bRequest, wValue, wIndex, data) -> int:
        if bRequest != _GET_DESCRIPTOR or (wValue >> 8) != _DESC_STRING:
            raise _usb_error("stall")
        index = wValue & 0xFF
        if index == 0:
            desc = bytes([4, _DESC_STRING]) + LANGID_EN_US.to_bytes(2, "little")
        else:
            text = handle.string(index)
            if text is None or wIndex != LANGID_EN_US:
                raise _usb_error("stall")
            body = text.encode("utf-16-le")
            desc = bytes([2 + len(body), _DESC_STRING]) + body
        n = min(len(desc), len(data))
        data[:n] = array.array("B", desc[:n])
        return n

    def bulk_write(self, handle: FakeUsbDevice, ep, intf, data, timeout):
        record = Transfer("bulk_write", handle.serial, endpoint=ep, data=bytes(data), timeout_ms=timeout)
        self.log.append(record)
        handle._take_fault("bulk_write")
        accepted = len(data) if handle.max_bulk_write is None else min(len(data), handle.max_bulk_write)
        handle.bulk_out += bytes(data[:accepted])
        return accepted

    def bulk_read(self, handle: FakeUsbDevice, ep, intf, buff, timeout):
        record = Transfer(
            "bulk_read", handle.serial, endpoint=ep, length=len(buff), timeout_ms=timeout, buffer_id=id(buff)
        )
        self.log.append(record)
        handle._take_fault("bulk_read")
        if not handle.bulk_in:
            raise _usb_error("timeout")  # a real device with nothing to send lets the transfer time out
        n = min(len(buff), len(handle.bulk_in))
        buff[:n] = array.array("B", bytes(handle.bulk_in[:n]))
        del handle.bulk_in[:n]
        record.data = bytes(buff[:n])
        return n

    def clear_halt(self, handle, ep) -> None:
        self.log.append(Transfer("clear_halt", handle.serial, endpoint=ep))
