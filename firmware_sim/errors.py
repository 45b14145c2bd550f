"""The emulator's own errors: it imports nothing from the driver, whose ``sim://`` hook translates them.

Both are also standard exception types (``ValueError``, ``LookupError``), so code that uses the emulator on its own
can catch them without knowing this module.
"""

from __future__ import annotations

__all__ = ["SimError", "SimConfigError", "SimDeviceNotFoundError", "SimBuildError"]


class SimError(Exception):
    """Root of the emulator's errors; ``message`` is the text, and an error pickles with it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[type[SimError], tuple[str]]:
        return type(self), (self.message,)


class SimConfigError(SimError, ValueError):
    """Options that describe no device the emulator can be (an unknown key, a value out of range, a bad fault plan)."""


class SimDeviceNotFoundError(SimError, LookupError):
    """No in-process emulated device has that name (or it was released)."""


class SimBuildError(SimError, RuntimeError):
    """A native fake (a shared library compiled from C for the tests) could not be built: no compiler, or the
    compiler failed (its message is in the text)."""
