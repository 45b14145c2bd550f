"""A lab-built OPU: a DMD, a camera and a light source that a lab buys, composed behind the Opu's interfaces.

:mod:`.parts` defines what each backend implements; the rig (``rig://path/to/rig.toml``) composes the parts and
ties the camera's buffers to the DMD's pictures.
"""

from .parts import (
    CameraBuffer,
    GrabSettings,
    LightSource,
    LightSourceInfo,
    PatternDmd,
    PatternDmdInfo,
    StreamCounters,
    TriggeredCamera,
    TriggeredCameraInfo,
)

__all__ = [
    "CameraBuffer",
    "GrabSettings",
    "LightSource",
    "LightSourceInfo",
    "PatternDmd",
    "PatternDmdInfo",
    "StreamCounters",
    "TriggeredCamera",
    "TriggeredCameraInfo",
]
