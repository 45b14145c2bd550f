"""Open driver stack for optical processing units (OPUs).

``opu_driver.open(url)`` returns an :class:`Opu`; ``sim://`` URLs run the very same driver against the
built-in byte-level emulator (``firmware_sim``). The names exported here and by the subpackages ``errors``,
``encoding``, ``calibration`` and ``service`` are the public API.
"""

from ._version import __version__
from .errors import *  # noqa: F403 - the error tree is part of the public API
from .errors import __all__ as _error_names
from .opu import (
    FRAMES_PER_TERNARY,
    PROJECTION_SCHEMES,
    AcquisitionCounters,
    CameraSettings,
    FrameSequence,
    LinearMode,
    LinkCounters,
    Opu,
    OpuInfo,
    OpuSettings,
    OpuStatus,
    PixelFormat,
    ReferenceCalibration,
    Roi,
    TriggerMode,
)
from .session import open

__all__ = [
    "__version__",
    "open",
    "Opu",
    "OpuInfo",
    "OpuSettings",
    "OpuStatus",
    "FrameSequence",
    "AcquisitionCounters",
    "LinkCounters",
    "CameraSettings",
    "Roi",
    "PixelFormat",
    "TriggerMode",
    "LinearMode",
    "ReferenceCalibration",
    "PROJECTION_SCHEMES",
    "FRAMES_PER_TERNARY",
    *_error_names,
]
