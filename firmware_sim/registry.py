"""In-process emulated devices by name, so that URLs (``opusim://sim-3``) and backends can find them.

A device lives here from :func:`create_device` until :func:`release_device`, which also unplugs it: handles
and serial ports still open on it then fail the way they do when hardware is pulled out.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from .config import SimConfig
from .device import EmulatedDevice
from .errors import SimConfigError, SimDeviceNotFoundError

__all__ = ["create_device", "get_device", "release_device", "list_devices"]

_log = logging.getLogger(__name__)
_devices: dict[str, EmulatedDevice] = {}
_lock = threading.Lock()


def create_device(config: Any = None, *, name: str | None = None, **overrides: Any) -> EmulatedDevice:
    """Build an emulated device and register it under a unique name (default ``sim-<n>``).

    Args:
        config: a SimConfig, or a URL query (``"seed=3&lag=1"`` or a mapping) for ``SimConfig.from_query``;
            None for the defaults.
        name: the name to register; SimConfigError when it is taken.
        overrides: passed to EmulatedDevice (``optics=``, ``sensor=`` stand-ins for tests).
    """
    if config is None or isinstance(config, (str, Mapping)):
        config = SimConfig() if config is None else SimConfig.from_query(config)
    if name is not None:
        with _lock:
            if name in _devices:
                raise SimConfigError(f"an emulated device named {name!r} already exists")
    device = EmulatedDevice(config, name=name, **overrides)
    with _lock:
        if device.name in _devices:
            raise SimConfigError(f"an emulated device named {device.name!r} already exists")
        _devices[device.name] = device
    _log.debug("registered %s", device.name)
    return device


def get_device(name: str) -> EmulatedDevice:
    """The registered device of that name; SimDeviceNotFoundError names the ones that exist."""
    with _lock:
        device = _devices.get(name)
        known = sorted(_devices)
    if device is None:
        raise SimDeviceNotFoundError(f"no emulated device named {name!r}; registered: {known or 'none'}")
    return device


def release_device(device: EmulatedDevice | str) -> None:
    """Unregister and unplug a device (by object or name); releasing an unknown one does nothing."""
    name = device if isinstance(device, str) else device.name
    with _lock:
        found = _devices.pop(name, None)
    if found is not None:
        found.unplug()
        _log.debug("released %s", name)


def list_devices() -> list[EmulatedDevice]:
    """The registered devices, oldest first."""
    with _lock:
        return list(_devices.values())
