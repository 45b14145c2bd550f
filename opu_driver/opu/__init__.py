"""The Opu: the facade users and everything above it drive (settings, projections, linear mode, recovery).

Calibration, the service and the tools import from here (and from ``opu_driver.errors``, ``opu_driver.encoding``,
``opu_driver.validation``) only: the names below are the Opu's public API, data types of the parts included.
"""

from ..acquisition import AcquisitionCounters
from ..devices import CameraSettings, LinkCounters, Roi, TriggerMode
from ..protocol import PixelFormat
from .facade import MAX_RESULT_BYTES, FrameSequence, Opu, OpuInfo, OpuStatus
from .linear import (
    DEFAULT_MAX_CALL_BYTES,
    FRAMES_PER_TERNARY,
    PROJECTION_SCHEMES,
    LinearMode,
    ReferenceCalibration,
    StageTimes,
    call_bytes,
)
from .settings import FRAME_MODES, OpuSettings

__all__ = [
    "Opu",
    "OpuInfo",
    "OpuSettings",
    "OpuStatus",
    "FrameSequence",
    "FRAME_MODES",
    "MAX_RESULT_BYTES",
    "LinearMode",
    "ReferenceCalibration",
    "StageTimes",
    "PROJECTION_SCHEMES",
    "FRAMES_PER_TERNARY",
    "call_bytes",
    "DEFAULT_MAX_CALL_BYTES",
    "AcquisitionCounters",
    "LinkCounters",
    "CameraSettings",
    "Roi",
    "PixelFormat",
    "TriggerMode",
]
