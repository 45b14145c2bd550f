"""A pyusb backend that shows emulated OPUs as USB devices (docs/protocol.md 1.1-1.2).

``usb.core.find(backend=get_backend(), idVendor=0x1209)`` finds them; ``dev.read``, ``dev.write`` and
``dev.ctrl_transfer`` behave as on hardware with a libusb backend:

- descriptors of section 1.1, string descriptors through GET_DESCRIPTOR (``usb.util.get_string`` works);
- vendor requests READ_REG / WRITE_REG; a refused request raises ``usb.core.USBError`` with errno EPIPE
  (libusb's LIBUSB_ERROR_PIPE), as a stalled control pipe does;
- bulk OUT 0x01 into the firmware's packet parser; bulk IN 0x81 from its camera FIFO, filling pyusb's buffer
  in place and returning the count. An empty FIFO raises ``usb.core.USBTimeoutError`` at once: the emulated
  device is synchronous, so no frame can arrive while the caller waits;
- an unplugged (or released) device raises errno ENODEV, also on handles opened before it came back;
- the device's fault plan (firmware_sim.faults) acts here on the bulk endpoints: ``stall`` halts an endpoint
  (EPIPE on every transfer until ``clear_halt``), ``timeout`` fails a read that had data (at once, as an empty
  FIFO does: nothing is consumed), ``slow`` delays a read.
"""

from __future__ import annotations

import errno
import struct
import time
from array import array
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import usb.backend
import usb.core

from .device import EP_CAMERA_IN, EP_DMD_OUT, EmulatedDevice
from .faults import SLOW_DELAY_S

__all__ = ["EmulatorBackend", "get_backend"]

_LIBUSB_ERROR_INVALID_PARAM = -2
_LIBUSB_ERROR_NO_DEVICE = -4
_LIBUSB_ERROR_NOT_FOUND = -5
_LIBUSB_ERROR_TIMEOUT = -7
_LIBUSB_ERROR_PIPE = -9
_LIBUSB_SPEED_HIGH = 3

_REQ_READ_REG = 0x01
_REQ_WRITE_REG = 0x02
_RT_VENDOR_IN = 0xC0
_RT_VENDOR_OUT = 0x40
_RT_STANDARD_IN = 0x80
_RT_STANDARD_OUT = 0x00
_GET_STATUS, _GET_DESCRIPTOR, _GET_CONFIGURATION, _SET_CONFIGURATION = 0x00, 0x06, 0x08, 0x09
_DESC_DEVICE, _DESC_CONFIG, _DESC_STRING = 1, 2, 3
_LANGID_EN_US = 0x0409
_MAX_PACKET = 512
_CONFIGURATION_VALUE = 1


def _stall() -> usb.core.USBError:
    return usb.core.USBError("Pipe error", _LIBUSB_ERROR_PIPE, errno.EPIPE)


def _no_device() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", _LIBUSB_ERROR_NO_DEVICE, errno.ENODEV)


def _descriptor(fields: dict[str, Any]) -> SimpleNamespace:
    """A descriptor as pyusb reads it: the fields as attributes."""
    return SimpleNamespace(extra_descriptors=[], **fields)


class _Handle:
    """An open device: valid while the device stays plugged in since the open."""

    __slots__ = ("device", "generation", "configuration", "closed")

    def __init__(self, device: EmulatedDevice) -> None:
        self.device = device
        self.generation = device.plug_generation
        self.configuration = _CONFIGURATION_VALUE
        self.closed = False


def _address(device: EmulatedDevice) -> int:
    return (device.instance_number - 1) % 126 + 2  # 1 is the root hub


def _device_descriptor(device: EmulatedDevice) -> SimpleNamespace:
    ident = device.usb_identity
    port = _address(device) - 1
    return _descriptor(
        {
            "bLength": 18,
            "bDescriptorType": _DESC_DEVICE,
            "bcdUSB": 0x0200,
            "bDeviceClass": 0,
            "bDeviceSubClass": 0,
            "bDeviceProtocol": 0,
            "bMaxPacketSize0": 64,
            "idVendor": ident.vendor_id,
            "idProduct": ident.product_id,
            "bcdDevice": ident.bcd_device,
            "iManufacturer": 1,
            "iProduct": 2,
            "iSerialNumber": 3,
            "bNumConfigurations": 1,
            "address": _address(device),
            "bus": 1,
            "port_number": port,
            "port_numbers": (port,),
            "speed": _LIBUSB_SPEED_HIGH,
        }
    )


_CONFIG = _descriptor(
    {
        "bLength": 9,
        "bDescriptorType": _DESC_CONFIG,
        "wTotalLength": 9 + 9 + 7 + 7,
        "bNumInterfaces": 1,
        "bConfigurationValue": _CONFIGURATION_VALUE,
        "iConfiguration": 0,
        "bmAttributes": 0x80,
        "bMaxPower": 250,
    }
)
_INTERFACE = _descriptor(
    {
        "bLength": 9,
        "bDescriptorType": 4,
        "bInterfaceNumber": 0,
        "bAlternateSetting": 0,
        "bNumEndpoints": 2,
        "bInterfaceClass": 0xFF,
        "bInterfaceSubClass": 0x4F,
        "bInterfaceProtocol": 0x01,
        "iInterface": 0,
    }
)
_ENDPOINTS = tuple(
    _descriptor(
        {
            "bLength": 7,
            "bDescriptorType": 5,
            "bEndpointAddress": address,
            "bmAttributes": 0x02,
            "wMaxPacketSize": _MAX_PACKET,
            "bInterval": 0,
            "bRefresh": 0,
            "bSynchAddress": 0,
        }
    )
    for address in (EP_DMD_OUT, EP_CAMERA_IN)
)


def _device_descriptor_bytes(device: EmulatedDevice) -> bytes:
    d = _device_descriptor(device)
    return struct.pack(
        "<BBHBBBBHHHBBBB",
        d.bLength,
        d.bDescriptorType,
        d.bcdUSB,
        d.bDeviceClass,
        d.bDeviceSubClass,
        d.bDeviceProtocol,
        d.bMaxPacketSize0,
        d.idVendor,
        d.idProduct,
        d.bcdDevice,
        d.iManufacturer,
        d.iProduct,
        d.iSerialNumber,
        d.bNumConfigurations,
    )


def _config_descriptor_bytes() -> bytes:
    c, i = _CONFIG, _INTERFACE
    out = struct.pack(
        "<BBHBBBBB",
        c.bLength,
        c.bDescriptorType,
        c.wTotalLength,
        c.bNumInterfaces,
        c.bConfigurationValue,
        c.iConfiguration,
        c.bmAttributes,
        c.bMaxPower,
    )
    out += struct.pack(
        "<BBBBBBBBB",
        i.bLength,
        i.bDescriptorType,
        i.bInterfaceNumber,
        i.bAlternateSetting,
        i.bNumEndpoints,
        i.bInterfaceClass,
        i.bInterfaceSubClass,
        i.bInterfaceProtocol,
        i.iInterface,
    )
    for e in _ENDPOINTS:
        out += struct.pack(
            "<BBBBHB", e.bLength, e.bDescriptorType, e.bEndpointAddress, e.bmAttributes, e.wMaxPacketSize, e.bInterval
        )
    return out


def _string_descriptor(device: EmulatedDevice, index: int) -> bytes | None:
    if index == 0:
        return struct.pack("<BBH", 4, _DESC_STRING, _LANGID_EN_US)
    ident = device.usb_identity
    strings = {1: ident.manufacturer, 2: ident.product, 3: ident.serial_number}
    text = strings.get(index)
    if text is None:
        return None
    encoded = text.encode("utf-16-le")[:252]
    return bytes((2 + len(encoded), _DESC_STRING)) + encoded


class EmulatorBackend(usb.backend.IBackend):
    """pyusb backend over emulated devices: a fixed list, or (devices=None) every registered device."""

    def __init__(self, devices: Iterable[EmulatedDevice] | None = None) -> None:
        super().__init__()
        self._devices = None if devices is None else list(devices)

    def _candidates(self) -> list[EmulatedDevice]:
        if self._devices is not None:
            return self._devices
        from .registry import list_devices

        return list_devices()

    # -- enumeration and descriptors ---------------------------------------------------------------
    def enumerate_devices(self) -> list[EmulatedDevice]:
        return [d for d in self._candidates() if d.connected]

    def get_parent(self, dev: EmulatedDevice) -> None:
        return None

    def get_device_descriptor(self, dev: EmulatedDevice) -> SimpleNamespace:
        return _device_descriptor(dev)

    def get_configuration_descriptor(self, dev: EmulatedDevice, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        return _CONFIG

    def get_interface_descriptor(self, dev: EmulatedDevice, intf: int, alt: int, config: int) -> SimpleNamespace:
        if config != 0:
            raise IndexError(f"Invalid configuration index {config}")
        if intf != 0:
            raise IndexError(f"Invalid interface index {intf}")
        if alt != 0:
            raise IndexError(f"Invalid alternate setting index {alt}")
        return _INTERFACE

    def get_endpoint_descriptor(
        self, dev: EmulatedDevice, ep: int, intf: int, alt: int, config: int
    ) -> SimpleNamespace:
        self.get_interface_descriptor(dev, intf, alt, config)
        if not 0 <= ep < len(_ENDPOINTS):
            raise IndexError(f"Invalid endpoint index {ep}")
        return _ENDPOINTS[ep]

    # -- handles -----------------------------------------------------------------------------------
    def open_device(self, dev: EmulatedDevice) -> _Handle:
        if not dev.connected:
            raise _no_device()
        return _Handle(dev)

    def close_device(self, dev_handle: _Handle) -> None:
        dev_handle.closed = True

    @staticmethod
    def _device(dev_handle: _Handle) -> EmulatedDevice:
        device = dev_handle.device
        if dev_handle.closed or not device.connected or dev_handle.generation != device.plug_generation:
            raise _no_device()
        return device

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._device(dev_handle)
        if config_value not in (0, _CONFIGURATION_VALUE):
            raise usb.core.USBError("Entity not found", _LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)
        dev_handle.configuration = config_value

    def get_configuration(self, dev_handle: _Handle) -> int:
        self._device(dev_handle)
        return dev_handle.configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._device(dev_handle)
        if intf != 0 or altsetting != 0:
            raise usb.core.USBError("Entity not found", _LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._device(dev_handle)
        if intf != 0:
            raise usb.core.USBError("Entity not found", _LIBUSB_ERROR_NOT_FOUND, errno.ENOENT)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        self._device(dev_handle)

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        self._device(dev_handle).faults.clear_halt(ep)

    def reset_device(self, dev_handle: _Handle) -> None:
        self._device(dev_handle).reset()

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        self._device(dev_handle)
        return False

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        self._device(dev_handle)

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        self._device(dev_handle)

    # -- transfers ---------------------------------------------------------------------------------
    def bulk_write(self, dev_handle: _Handle, ep: int, intf: int, data: array, timeout: int) -> int:
        device = self._device(dev_handle)
        if ep != EP_DMD_OUT:
            raise usb.core.USBError("Invalid parameter", _LIBUSB_ERROR_INVALID_PARAM, errno.EINVAL)
        faults = device.faults
        if faults.active:
            if faults.is_halted(ep):
                raise _stall()
            if len(data) and faults.fire("stall"):
                faults.halt(ep)
                raise _stall()
        return device.usb_bulk_write(EP_DMD_OUT, memoryview(data).cast("B"))  # pyusb's array("B"): its bytes

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array, timeout: int) -> int:
        device = self._device(dev_handle)
        if ep != EP_CAMERA_IN:
            raise usb.core.USBError("Invalid parameter", _LIBUSB_ERROR_INVALID_PARAM, errno.EINVAL)
        target = memoryview(buff).cast("B")
        faults = device.faults
        if faults.active:
            if faults.is_halted(ep):
                raise _stall()
            if device.in_fifo_bytes:
                if faults.fire("stall"):
                    faults.halt(ep)
                    raise _stall()
                if faults.fire("timeout"):
                    raise usb.core.USBTimeoutError("Operation timed out", _LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT)
                if faults.fire("slow"):
                    time.sleep(SLOW_DELAY_S)
        data = device.usb_bulk_read(EP_CAMERA_IN, len(target))
        if not data:
            raise usb.core.USBTimeoutError("Operation timed out", _LIBUSB_ERROR_TIMEOUT, errno.ETIMEDOUT)
        target[: len(data)] = data
        return len(data)

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array,
        timeout: int,
    ) -> int:
        device = self._device(dev_handle)
        buffer = memoryview(data).cast("B")
        if bmRequestType == _RT_VENDOR_IN and bRequest == _REQ_READ_REG:
            value = device.usb_ctrl_read_register(wValue, length=len(buffer))
            if value is None:
                raise _stall()
            buffer[:4] = value.to_bytes(4, "little")
            return 4
        if bmRequestType == _RT_VENDOR_OUT and bRequest == _REQ_WRITE_REG:
            value = int.from_bytes(bytes(buffer[:4]), "little")
            if not device.usb_ctrl_write_register(wValue, value, length=len(buffer)):
                raise _stall()
            return len(buffer)
        if bmRequestType == _RT_STANDARD_IN:
            reply = self._standard_in(device, dev_handle, bRequest, wValue)
            if reply is None:
                raise _stall()
            count = min(len(reply), len(buffer))
            buffer[:count] = reply[:count]
            return count
        if bmRequestType == _RT_STANDARD_OUT and bRequest == _SET_CONFIGURATION:
            self.set_configuration(dev_handle, wValue)
            return 0
        raise _stall()

    @staticmethod
    def _standard_in(device: EmulatedDevice, dev_handle: _Handle, request: int, value: int) -> bytes | None:
        if request == _GET_DESCRIPTOR:
            kind, index = value >> 8, value & 0xFF
            if kind == _DESC_DEVICE:
                return _device_descriptor_bytes(device)
            if kind == _DESC_CONFIG and index == 0:
                return _config_descriptor_bytes()
            if kind == _DESC_STRING:
                return _string_descriptor(device, index)
            return None
        if request == _GET_STATUS:
            return b"\x00\x00"
        if request == _GET_CONFIGURATION:
            return bytes((dev_handle.configuration,))
        return None


def get_backend(devices: Iterable[EmulatedDevice] | None = None) -> EmulatorBackend:
    """A backend for ``usb.core.find(backend=...)``: the given devices, or every registered one (None)."""
    return EmulatorBackend(devices)
