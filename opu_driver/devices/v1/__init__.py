"""The protocol-v1 backend: the project's own OPU protocol (docs/protocol.md), spoken by its emulator.

One USB device carries the DMD and the camera on a shared link (registers, frame packets), and a serial line
carries the controller (ASCII commands). :func:`make_v1_rig` builds the rig of a ``sim://`` or ``usb://`` URL.
"""

from .camera import V1Camera
from .controller import ScpiController
from .dmd import V1Dmd
from .link import UsbLink
from .rig import V1Rig, make_v1_rig

__all__ = ["V1Camera", "ScpiController", "V1Dmd", "UsbLink", "V1Rig", "make_v1_rig"]
