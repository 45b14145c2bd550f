"""The device seam: what the Opu drives, whatever the hardware.

Interfaces (template methods: the shared checks, locking and logging are written once; a backend writes the
``_do_*`` hooks): :class:`Dmd`, :class:`Camera`, :class:`Controller`, composed in a :class:`Rig`. Backends:
:mod:`opu_driver.devices.v1` (the project's protocol v1, on USB and a serial line, and its emulator).
:func:`make_rig` builds the rig a URL names. See docs/architecture.md for how to add a backend.
"""

from .base import Device
from .camera import MIN_FRAME_GAP_US, Camera, CameraGeometry, CameraSettings, DamagedFrame, Roi
from .controller import Controller, ControllerCounters, Identity, LightState, TriggerMode
from .dmd import Dmd, DmdGeometry
from .factory import URL_SCHEMES, make_rig
from .rig import LinkCounters, Rig, RigInfo

__all__ = [
    "Device",
    "Dmd",
    "DmdGeometry",
    "Camera",
    "CameraGeometry",
    "CameraSettings",
    "DamagedFrame",
    "Roi",
    "MIN_FRAME_GAP_US",
    "Controller",
    "ControllerCounters",
    "Identity",
    "LightState",
    "TriggerMode",
    "Rig",
    "RigInfo",
    "LinkCounters",
    "make_rig",
    "URL_SCHEMES",
]
