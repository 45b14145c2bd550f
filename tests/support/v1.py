"""White-box access to the protocol-v1 parts under an Opu, for tests that read or write device registers directly
(the Opu's own API never needs them)."""

from __future__ import annotations

from opu_driver import Opu
from opu_driver.devices.v1 import UsbLink, V1Rig
from opu_driver.devices.v1.connection import Connection

__all__ = ["v1_link", "v1_connection"]


def _rig(opu: Opu) -> V1Rig:
    rig = opu._rig
    assert isinstance(rig, V1Rig), f"not a protocol-v1 rig: {type(rig).__name__}"
    return rig


def v1_link(opu: Opu) -> UsbLink:
    """The USB link (registers and packets) the DMD and the camera of ``opu`` share."""
    return _rig(opu).link


def v1_connection(opu: Opu) -> Connection:
    """The two transports (USB and serial) of ``opu``."""
    return _rig(opu).connection
