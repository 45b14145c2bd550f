"""dfa_client: send error vectors, receive their random projections, train networks by direct feedback alignment.

    import dfa_client
    with dfa_client.connect("sim://?seed=3", n_components=1024) as projector:   # or tcp://host:port, digital://
        P = projector.project(E)        # E: (batch, n_features) errors -> float32 (batch, 1024) projections B e

The URL picks the backend: ``tcp://host:port`` or ``tcps://host:port`` (the OPU service, ``opu serve``; tcps with
TLS), ``sim://...`` or ``usb://...`` (the driver in this process, imported only then), ``digital://?seed=N`` (an
exact numpy projector with the same statistics). Remote use needs numpy and the standard library only.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .base import Projector, ProjectorInfo
from .dfa import DEFAULT_THRESHOLD, FeedbackProjection, alignment_angle, ternarize, ternary_scales
from .errors import *  # noqa: F403 - the whole error tree is part of the package's API
from .errors import UnsupportedUrlError
from .errors import __all__ as _error_names

__all__ = [
    "connect",
    "Projector",
    "ProjectorInfo",
    "FeedbackProjection",
    "ternarize",
    "ternary_scales",
    "alignment_angle",
    "DEFAULT_THRESHOLD",
    *_error_names,  # one list of error names: dfa_client.errors.__all__
]


def connect(url: str, n_components: int, **options: Any) -> Projector:
    """Open a projector for ``url`` with ``n_components`` outputs.

    Options common to every backend: ``n_features`` (else fixed by the first call), ``scheme`` ("four_frame" or
    "two_frame"), ``n_bits`` (bit planes for real-valued errors on optical backends), ``max_batch``.
    ``digital://`` also takes ``seed``; ``tcp://`` and ``tcps://`` (TLS) take ``token``, ``token_file``,
    ``ca_file`` (tcps), ``allow_cleartext``, ``timeout_s``, ``retries``, ``backoff_s`` (see
    ``dfa_client.remote.RemoteProjector``; with no token, a loopback service's token file is read);
    ``sim://``, ``usb://`` and ``rig://`` (a lab-built OPU's rig file) pass any other option to ``opu_driver.open``
    (e.g. ``pixel_format="MONO12"``).

    Raises:
        UnsupportedUrlError: a URL no backend serves.
        InvalidInputError: bad options (before anything is opened).
        ConnectionFailedError, AuthenticationError, ProtocolVersionError: the backend cannot be used.
        DeviceChangedError: (tcp) a reconnect found another device or settings behind the service.
    """
    if not isinstance(url, str):
        raise UnsupportedUrlError(f"url must be a string, got {type(url).__name__}")
    try:
        scheme = urlsplit(url).scheme
    except ValueError as exc:
        raise UnsupportedUrlError(f"{_redacted(url)!r}: not a URL ({exc})") from None
    if scheme == "digital":
        from .digital import DigitalProjector

        return DigitalProjector(url, n_components, **options)
    if scheme in ("tcp", "tcps"):
        from .remote import RemoteProjector

        return RemoteProjector(url, n_components, **options)
    if scheme in ("sim", "usb", "rig"):
        from .local import LocalProjector

        return LocalProjector(url, n_components, **options)
    raise UnsupportedUrlError(
        f"{_redacted(url)!r}: use tcp://host:port, tcps://host:port, sim://..., usb://..., rig://RIG.toml or "
        "digital://?seed=N"
    )


def _redacted(url: str) -> str:
    """The URL as it may appear in messages and logs: token values and passwords replaced by ***."""
    from .remote import redact_url

    return redact_url(url)
