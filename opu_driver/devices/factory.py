"""Device URLs to rigs: the scheme of a URL picks the backend that builds the rig.

A backend registers its schemes in ``_BACKENDS`` (a scheme and a function that builds the rig, imported when
used); adding a kind of OPU is one backend package and one entry here.
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from ..errors import UnsupportedUrlError
from .rig import Rig

__all__ = ["make_rig", "URL_SCHEMES"]

_BACKENDS: dict[str, str] = {
    "sim": "opu_driver.devices.v1.rig:make_v1_rig",  # the built-in emulator of a protocol-v1 device
    "usb": "opu_driver.devices.v1.rig:make_v1_rig",  # a protocol-v1 device on USB and a serial line
    "rig": "opu_driver.devices.lab.rig:make_lab_rig",  # a lab-built OPU: parts named in a rig file
}

URL_SCHEMES: tuple[str, ...] = tuple(_BACKENDS)
"""The URL schemes ``opu_driver.open`` knows."""


def make_rig(url: str, *, controller_retries: int) -> Rig:
    """Build (not yet open) the rig that ``url`` names.

    Raises:
        UnsupportedUrlError: not a URL, or a scheme no backend knows (before anything is touched).
        ConfigurationError, DeviceNotFoundError: the backend's own checks of the URL.
    """
    if not isinstance(url, str) or "://" not in url:
        raise UnsupportedUrlError(
            f"not a device URL: {url!r}; use sim://?seed=0 (emulator) or usb://1209:4f50?port=/dev/ttyACM0"
        )
    scheme = urlsplit(url).scheme.lower()
    target = _BACKENDS.get(scheme)
    if target is None:
        raise UnsupportedUrlError(f"unknown URL scheme {scheme!r} in {url!r}; known: {', '.join(URL_SCHEMES)}")
    module_name, _, function_name = target.partition(":")
    build = getattr(importlib.import_module(module_name), function_name)
    rig: Rig = build(url, controller_retries=controller_retries)
    return rig
