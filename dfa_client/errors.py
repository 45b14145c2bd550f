"""The errors of the DFA client: one tree, so training code can catch what it can act on.

The client imports only numpy and the standard library, so it has its own tree; the in-process backend
re-raises the driver's errors as these, with the driver's error chained as the cause.
"""

from __future__ import annotations

__all__ = [
    "DfaError",
    "InvalidInputError",
    "UnsupportedUrlError",
    "ConnectionFailedError",
    "RequestTimeoutError",
    "AuthenticationError",
    "ProtocolVersionError",
    "ServiceError",
    "ProjectorClosedError",
    "ProtocolError",
    "DeviceChangedError",
]


class DfaError(Exception):
    """Base of every error the DFA client raises."""


class InvalidInputError(DfaError, ValueError):
    """Errors or options the projector refuses (NaN, Inf, wrong width, too large a batch): nothing was sent."""


class UnsupportedUrlError(DfaError, ValueError):
    """A URL whose scheme or form no backend serves."""


class ConnectionFailedError(DfaError, ConnectionError):
    """The service (or device) cannot be reached, or the connection was lost and bounded retries did not help."""


class RequestTimeoutError(DfaError, TimeoutError):
    """No answer within the request's timeout."""


class AuthenticationError(DfaError):
    """The service refused the token."""


class ProtocolVersionError(DfaError):
    """Client and service speak incompatible protocol versions."""


class ServiceError(DfaError):
    """The service (or the device behind it) reported an error for this request.

    Attributes:
        kind: the error's type name on the service side (e.g. "InterlockError").
    """

    def __init__(self, message: str, kind: str = "ServiceError") -> None:
        super().__init__(message)
        self.kind = kind

    def __reduce__(self) -> tuple[type[ServiceError], tuple[str, str]]:
        return (type(self), (self.args[0] if self.args else "", self.kind))


class ProjectorClosedError(DfaError):
    """The projector was closed."""


class ProtocolError(DfaError):
    """A message that breaks the service's format: bad magic, unknown type, bad header or payload, unexpected
    reply (``dfa_client.wire`` raises it; defined here so that callers can catch it from the error tree)."""


class DeviceChangedError(DfaError):
    """After a reconnect the service serves another device, or the same one under settings that change its random
    matrix (its WELCOME identity differs from the first one's): results would not be comparable, so none is
    returned. Open a new projector to use the new device."""
