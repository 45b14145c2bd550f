"""Finding connected OPUs: USB devices matched with their controller serial ports (``opu list``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...protocol import USB_PRODUCT_ID, USB_VENDOR_ID
from ...transport import UDEV_RULE, find_usb_devices, list_serial_ports

__all__ = ["FoundDevice", "find_devices", "describe_devices", "udev_rule_path"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundDevice:
    """One OPU seen on the bus, with the URL that opens it."""

    bus: int | None
    address: int | None
    serial_number: str | None
    product: str | None
    port: str | None
    accessible: bool
    problem: str

    @property
    def url(self) -> str:
        ids = f"{USB_VENDOR_ID:04x}:{USB_PRODUCT_ID:04x}"
        path = f"/{self.serial_number}" if self.serial_number else ""
        query = f"?port={self.port}" if self.port else ""
        return f"usb://{ids}{path}{query}"


def udev_rule_path() -> str:
    """Where the shipped udev rule lies (install it to give users access without root)."""
    return UDEV_RULE


def find_devices(backend=None) -> list[FoundDevice]:
    """OPUs on USB, each matched to the serial port whose USB serial number is the same."""
    ports = {}
    for port in list_serial_ports():
        serial_number = getattr(port, "serial_number", None)
        if serial_number:
            ports[serial_number] = port.device
    found = []
    for dev in find_usb_devices(backend=backend):
        found.append(
            FoundDevice(
                bus=dev.bus,
                address=dev.address,
                serial_number=dev.serial_number,
                product=dev.product,
                port=ports.get(dev.serial_number) if dev.serial_number else None,
                accessible=dev.accessible,
                problem=dev.error,
            )
        )
    return found


def describe_devices(backend=None) -> str:
    """Human-readable list, with what to do when access is denied or the port is missing."""
    try:
        devices = find_devices(backend)
    except Exception as exc:  # no libusb on this machine, for example
        return f"cannot scan USB: {exc}"
    if not devices:
        return (
            "no OPU found on USB (looking for 1209:4f50).\n"
            "Without hardware, use the built-in emulator: opu info sim://   or   opu demo"
        )
    lines = []
    for dev in devices:
        where = f"bus {dev.bus} address {dev.address}"
        if not dev.accessible:
            lines.append(
                f"{where}: OPU present but not accessible ({dev.problem}).\n"
                f"  Install the udev rule: sudo cp {udev_rule_path()} /etc/udev/rules.d/ && "
                "sudo udevadm control --reload && sudo udevadm trigger; then re-plug the device."
            )
            continue
        port = dev.port or "no controller port found (pass ?port=/dev/ttyACMn)"
        lines.append(f"{dev.product or 'OPU'} serial {dev.serial_number} at {where}, controller {port}\n  {dev.url}")
    return "\n".join(lines)
