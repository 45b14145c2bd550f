"""The errors of the DFA client: one tree, so training code can catch what it can act on.

The client imports only numpy and the standard library, so it has its own tree. Every backend turns a driver
failure into the same class of this tree through one table (:func:`error_from_kinds`): the in-process backend
with the driver's exception's class and bases, the tcp backend with the names the service sends in its ERROR
(``kind`` and ``kinds``), so ``CommunicationTimeoutError`` is ``DeviceTimeoutError`` from ``sim://`` and from
``tcp://`` alike.
"""

from __future__ import annotations

from collections.abc import Sequence

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
    "DeviceError",
    "DeviceTimeoutError",
    "DeviceUnavailableError",
    "RequestTooLargeError",
    "ServiceBusyError",
    "DataParallelError",
    "FeedbackMismatchError",
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


class DeviceError(ServiceError):
    """The device failed this request after the driver's own retries (a fault, the interlock, a reset...).

    ``kind`` is the driver's error class name (``"InterlockError"``, ``"CorruptPacketError"``...); the same failure
    gives the same class and kind from every backend. The projector stays usable: the next request is served as
    usual."""


class DeviceTimeoutError(DeviceError, RequestTimeoutError):
    """The device did not answer within the driver's timeout, after its retries (``kind`` "CommunicationTimeoutError"
    or a subclass's name). Also a :class:`RequestTimeoutError`."""


class DeviceUnavailableError(DeviceError, ConnectionFailedError):
    """The device cannot be found or went away and did not come back (``kind`` "DeviceNotFoundError",
    "ConnectionLostError"...). Also a :class:`ConnectionFailedError`."""


class RequestTooLargeError(InvalidInputError, ServiceError):
    """A request larger than the service accepts: its payload (``max_message_bytes``), its result (batch x
    n_components x 4 bytes above ``max_result_bytes``) or both together above the service's whole memory budget
    (``max_total_bytes``). Refused from its header, before any work: split the batch."""


class ServiceBusyError(ServiceError):
    """The service holds as much memory for its clients as it may (``max_total_bytes``) and this request found no
    room within its wait: nothing was computed; retry later or send smaller batches."""


class DataParallelError(InvalidInputError):
    """A data-parallel run set up wrongly (``dfa_client.distributed``): no process group, a batch that does not
    split into equal shards, processes that hold different parameters. Raised before any gradient is combined."""


class FeedbackMismatchError(DataParallelError):
    """The processes of a data-parallel run do not project through the same feedback: another device, another
    random matrix (other device settings, another seed) or other projection options. Their updates would not
    average to one network's DFA update, so training must not start; every process raises it."""


_CLIENT_ERRORS: dict[str, type[DfaError]] = {
    # the service's own ERROR kinds
    "AuthenticationError": AuthenticationError,
    "ProtocolVersionError": ProtocolVersionError,
    "RequestTimeoutError": RequestTimeoutError,
    "RequestTooLarge": RequestTooLargeError,
    "MessageTooLarge": RequestTooLargeError,
    "ServiceBusy": ServiceBusyError,
    # the driver's error classes, matched along a class's bases (most specific first)
    "InvalidInputError": InvalidInputError,
    "ConfigurationError": InvalidInputError,
    "CommunicationTimeoutError": DeviceTimeoutError,
    "DeviceNotFoundError": DeviceUnavailableError,
    "ConnectionLostError": DeviceUnavailableError,
    "OpuError": DeviceError,
}
"""ERROR kinds and driver error class names -> the client error raised for them (the one mapping)."""


def error_from_kinds(kinds: Sequence[str], message: str) -> DfaError:
    """The client error for a failure named by ``kinds``: its class name first, then its bases' (a driver error's
    ``type(exc).__mro__`` names up to ``OpuError``, or a service ERROR's ``kind`` and ``kinds``).

    The first name the table knows picks the class; an unknown failure is a :class:`ServiceError`. Subclasses of
    :class:`ServiceError` get ``kinds[0]`` (the most specific name) as their ``kind``.
    """
    kind = kinds[0] if kinds else "ServiceError"
    cls: type[DfaError] = ServiceError
    for name in kinds:
        found = _CLIENT_ERRORS.get(name)
        if found is not None:
            cls = found
            break
    if issubclass(cls, ServiceError):
        return cls(message, kind)
    return cls(message)


def kind_chain(exc: BaseException, root: type[BaseException]) -> list[str]:
    """The names of ``exc``'s class and of its bases that derive from ``root`` (most specific first): what the
    service sends as an ERROR's ``kinds`` and what :func:`error_from_kinds` reads."""
    return [cls.__name__ for cls in type(exc).__mro__ if isinstance(cls, type) and issubclass(cls, root)]
