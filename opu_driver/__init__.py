"""Open driver stack for optical processing units (OPUs).

``opu_driver.open(url)`` returns an :class:`Opu`; ``sim://`` URLs run the very same driver against the
built-in byte-level emulator (``firmware_sim``).
"""
from ._version import __version__
from .errors import *  # noqa: F401,F403 - the error tree is part of the public API
from .errors import __all__ as _error_names
from .opu import Opu, OpuInfo, OpuSettings, open

__all__ = ["__version__", "Opu", "OpuInfo", "OpuSettings", "open", *_error_names]
