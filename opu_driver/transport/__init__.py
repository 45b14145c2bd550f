"""Bytes to and from the device: pyusb for the USB interface, pyserial for the controller line.

Transports move bytes and map library errors onto the driver's error tree; they know nothing of registers
or packets beyond the endpoint numbers and request types of the protocol.
"""

from opu_driver.transport.serial_line import SerialPortInfo, SerialTransport, list_serial_ports
from opu_driver.transport.usb import UDEV_RULE, StallError, UsbDeviceInfo, UsbTransport, find_usb_devices

__all__ = [
    "SerialPortInfo",
    "SerialTransport",
    "StallError",
    "UDEV_RULE",
    "UsbDeviceInfo",
    "UsbTransport",
    "find_usb_devices",
    "list_serial_ports",
]
