"""Byte-level emulator of an OPU: the device's firmware and optics.

It sits under the driver at the lowest level only: a pyusb backend for the USB device and a pyserial URL
handler (``opusim://``) for the controller line, or a real pseudo-terminal when run as its own process
(``opu sim``). The driver code above those is the code that drives hardware.

Importing the package registers it with pyserial, so ``serial.serial_for_url("opusim://<device name>")``
opens the controller line of an in-process device (see :mod:`firmware_sim.protocol_opusim`).
"""

from __future__ import annotations

from typing import Any

import serial as _serial

__all__ = ["SimConfig", "EmulatedDevice", "create_device", "get_device", "release_device", "list_devices"]

# pyserial imports <package>.protocol_<scheme> for URLs; this makes "opusim://" resolve to our handler.
if __name__ not in _serial.protocol_handler_packages:
    _serial.protocol_handler_packages.append(__name__)

_LAZY = {
    "SimConfig": ("config", "SimConfig"),
    "EmulatedDevice": ("device", "EmulatedDevice"),
    "create_device": ("registry", "create_device"),
    "get_device": ("registry", "get_device"),
    "release_device": ("registry", "release_device"),
    "list_devices": ("registry", "list_devices"),
}


def __getattr__(name: str) -> Any:
    # Imported on first use: keeps `import firmware_sim` light and free of import cycles.
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    import importlib

    value = getattr(importlib.import_module(f".{module_name}", __name__), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))
