"""One tree of typed errors for the whole driver stack.

Every error a user can meet derives from :class:`OpuError`, so ``except OpuError`` catches them all.
Errors chain their cause (``raise ... from exc``), carry a device error code where there is one, and
pickle, so they cross process boundaries (the OPU service, multiprocessing) intact.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "OpuError",
    "InvalidInputError",
    "ConfigurationError",
    "UnsupportedUrlError",
    "DeviceError",
    "DeviceNotFoundError",
    "DeviceRefusedError",
    "InterlockError",
    "CommunicationError",
    "CommunicationTimeoutError",
    "ProtocolError",
    "CorruptPacketError",
    "StallError",
    "ConnectionLostError",
    "DeviceResetError",
    "AcquisitionError",
    "DroppedFramesError",
    "LibraryLoadError",
]


class OpuError(Exception):
    """Root of every error raised by the OPU stack.

    Args:
        message: what went wrong, in words a user can act on.
        code: the device's error code when the device reported one (protocol section 1.7 or 2), else None.
    """

    def __init__(self, message: str = "", code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    def __reduce__(self) -> tuple[type[OpuError], tuple[object, ...], dict[str, Any]]:
        # Keep subclass, message and code across pickling; the cause is restored by __setstate__.
        return (self.__class__, (self.message, self.code), {"__cause__": self.__cause__})

    def __setstate__(self, state: dict[str, Any] | None) -> None:
        # BaseException's signature allows None (no state); there is then no cause to restore.
        if state is not None:
            self.__cause__ = state.get("__cause__")

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return f"{self.message} (device code {self.code})"


class InvalidInputError(OpuError, ValueError):
    """Input refused before anything was sent: wrong shape, dtype, values, NaN/Inf, sizes beyond the device."""


class ConfigurationError(OpuError, ValueError):
    """A setting or option that the device or the driver cannot accept."""


class UnsupportedUrlError(ConfigurationError):
    """A device URL whose scheme or form is not known."""


class DeviceError(OpuError):
    """The device (or its emulator) is in a state that prevents the request."""


class DeviceNotFoundError(DeviceError):
    """No device matches the URL, or it cannot be opened (permissions, busy)."""


class DeviceRefusedError(DeviceError):
    """The device refused a request and reported an error code."""


class InterlockError(DeviceError):
    """The laser interlock is tripped: no light until it is reset."""


class CommunicationError(OpuError):
    """Bytes could not be exchanged with the device as the protocol requires."""


class CommunicationTimeoutError(CommunicationError, TimeoutError):
    """A blocking call did not complete within its timeout."""


class ProtocolError(CommunicationError):
    """Bytes arrived that break the protocol: bad CRC, bad length, unknown type, unexpected reply."""


class CorruptPacketError(ProtocolError):
    """A packet arrived damaged (bad CRC, impossible length, unknown type, cut short) and was not decoded.

    It costs the frame it carried; the acquisition re-runs that frame while retries are left.
    """


class StallError(CommunicationError):
    """The device stalled a USB pipe (EPIPE). On a control request it means a refusal (the device layer reads
    the device's latched error code and raises DeviceRefusedError); on a bulk endpoint the halt is cleared and
    the frames it cost are re-run."""


class ConnectionLostError(CommunicationError, ConnectionError):
    """The device went away (unplugged, reset, closed port)."""


class DeviceResetError(CommunicationError):
    """The device lost state the driver had given it (a reset or power cycle) in the middle of a request.

    Retried like a timeout (the state is restored first) while retries are left; raised when they are spent.
    """


class AcquisitionError(OpuError):
    """Frames could not be acquired as requested."""


class DroppedFramesError(AcquisitionError):
    """Camera frames that a request needs never arrived (dropped, or lost to a lag larger than allowed)."""

    def __init__(self, message: str = "", code: int | None = None, missing: int = 0) -> None:
        super().__init__(message, code)
        self.missing = missing

    def __reduce__(self) -> tuple[type[OpuError], tuple[object, ...], dict[str, Any]]:
        return (self.__class__, (self.message, self.code, self.missing), {"__cause__": self.__cause__})


class LibraryLoadError(OpuError, ImportError):
    """An optional native library or Python extra could not be loaded."""
