"""The projector contract every backend honours, and the input checks they share.

A projector turns error vectors e (batch, n_features) into real projections B e: float32 (batch, n_components),
where B (n_features x n_components) is fixed for the projector's life and has independent, zero-mean,
unit-variance entries. Ternary errors (-1, 0, 1) are projected as they are; other real values are projected
exactly by the digital backend and through ``n_bits`` bit planes by optical ones. Zero vectors give zeros.
``n_features`` is fixed by the ``n_features`` option or by the first call.
"""

from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt

from .errors import InvalidInputError, ProjectorClosedError

__all__ = ["Projector", "ProjectorInfo", "PROJECTION_SCHEMES", "DEFAULT_MAX_BATCH", "check_options", "check_errors"]

PROJECTION_SCHEMES = ("four_frame", "two_frame")
DEFAULT_MAX_BATCH = 65_536
MAX_FEATURES = 1 << 20
MAX_COMPONENTS = 1 << 22


@dataclass(frozen=True)
class ProjectorInfo:
    """What a projector is: its backend, sizes and options.

    Attributes:
        backend: "digital", "local" (in-process driver) or "remote" (the OPU service).
        url: the URL it was opened with (a token, if any, removed).
        n_features: the error width (None until fixed by the first call).
        n_components: outputs per vector.
        scheme, n_bits: how optical backends project (see opu_driver's linear mode).
        max_batch: the largest batch one call takes.
        details: backend specifics (device serial and model, service version, seed...).
    """

    backend: str
    url: str
    n_features: int | None
    n_components: int
    scheme: str
    n_bits: int | None
    max_batch: int
    details: dict[str, Any] = field(default_factory=dict)


def _is_int(value: object) -> TypeGuard[int | np.integer[Any]]:
    """An integer option: a Python or numpy integer, not a bool."""
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_options(n_components: object, n_features: object, scheme: object, n_bits: object, max_batch: object) -> None:
    """Refuse bad projector options with InvalidInputError (before any connection is made)."""
    if not _is_int(n_components) or not 1 <= n_components <= MAX_COMPONENTS:
        raise InvalidInputError(f"n_components must be an integer within 1..{MAX_COMPONENTS}, got {n_components!r}")
    if n_features is not None and (not _is_int(n_features) or not 1 <= n_features <= MAX_FEATURES):
        raise InvalidInputError(f"n_features must be None or an integer within 1..{MAX_FEATURES}, got {n_features!r}")
    if scheme not in PROJECTION_SCHEMES:
        raise InvalidInputError(f"scheme={scheme!r}; choose one of {PROJECTION_SCHEMES}")
    if n_bits is not None and (not _is_int(n_bits) or not 1 <= n_bits <= 16):
        raise InvalidInputError(f"n_bits must be None or an integer within 1..16, got {n_bits!r}")
    if not _is_int(max_batch) or max_batch < 1:
        raise InvalidInputError(f"max_batch must be a positive integer, got {max_batch!r}")


def check_errors(
    errors: npt.ArrayLike, n_features: int | None, max_batch: int, *, keep_float32: bool = False
) -> tuple[npt.NDArray[Any], bool]:
    """Return errors as a C-contiguous float64 (batch, n_features) array and whether the input was 1-D.

    ``keep_float32``: float32 errors stay float32 (what projectors send and hold: half the bytes of float64; every
    backend projects a float32 value exactly as the same value in float64), other dtypes become float64.

    Raises:
        InvalidInputError: not a real numeric array, NaN or Inf, not 1-D or 2-D, zero width, a width other than
            ``n_features`` (when fixed), or a batch above ``max_batch``.
    """
    if isinstance(errors, np.ma.MaskedArray):
        raise InvalidInputError("errors is a masked array: fill or drop the masked entries first")
    try:
        array = np.asarray(errors)
    except Exception as exc:  # ragged lists and the like
        raise InvalidInputError(f"errors is not array-like: {exc}") from None
    if array.dtype.kind not in "biuf":
        raise InvalidInputError(f"errors must be real numbers, got dtype {array.dtype}")
    squeeze = array.ndim == 1
    if squeeze:
        array = array[None, :]
    if array.ndim != 2:
        raise InvalidInputError(f"errors must have shape (batch, n_features) or (n_features,), got {array.shape}")
    if array.shape[1] == 0:
        raise InvalidInputError("errors have zero features")
    if n_features is not None and array.shape[1] != n_features:
        raise InvalidInputError(f"errors have {array.shape[1]} features; this projector takes {n_features}")
    if array.shape[1] > MAX_FEATURES:
        raise InvalidInputError(f"{array.shape[1]} features exceed the limit of {MAX_FEATURES}")
    if array.shape[0] > max_batch:
        raise InvalidInputError(f"a batch of {array.shape[0]} exceeds max_batch={max_batch}; split it")
    array = np.ascontiguousarray(array, dtype=np.float32 if keep_float32 and array.dtype == np.float32 else np.float64)
    if not np.isfinite(array).all():
        raise InvalidInputError("errors contain NaN or Inf")
    return array, squeeze


class Projector(ABC):
    """Projects error vectors; use as a context manager or call close(). Thread-safe: calls are serialised."""

    backend = "abstract"

    def __init__(
        self,
        url: str,
        n_components: int,
        *,
        n_features: int | None = None,
        scheme: str = "four_frame",
        n_bits: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> None:
        check_options(n_components, n_features, scheme, n_bits, max_batch)
        self.url = url
        self.n_components = int(n_components)
        self.n_features = None if n_features is None else int(n_features)
        self.scheme = scheme
        self.n_bits = None if n_bits is None else int(n_bits)
        self.max_batch = int(max_batch)
        self.vectors_projected = 0
        self._closed = False
        self._lock = threading.Lock()

    # -- the contract --------------------------------------------------------------------------------------
    def project(self, errors: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Real projections B e of error vectors: float32 (batch, n_components), or (n_components,) for 1-D e.

        Raises:
            InvalidInputError: bad errors (nothing is sent).
            ProjectorClosedError: after close().
            ConnectionFailedError, RequestTimeoutError, ServiceError: the backend failed (see each backend).
        """
        with self._lock:
            if self._closed:
                raise ProjectorClosedError("this projector is closed")
            E, squeeze = check_errors(errors, self.n_features, self.max_batch, keep_float32=True)
            if self.n_features is None:
                self._fix_features(E.shape[1])
            if E.shape[0] == 0:
                out = np.zeros((0, self.n_components), dtype=np.float32)
            else:
                out = self._project(E)
                if out.shape != (E.shape[0], self.n_components) or out.dtype != np.float32:
                    raise AssertionError(f"backend returned {out.shape} {out.dtype}")  # a backend bug, never data
            self.vectors_projected += E.shape[0]
            return out[0] if squeeze else out

    def _fix_features(self, n_features: int) -> None:
        """Called once, before the first projection, when n_features was not given."""
        self.n_features = n_features

    @abstractmethod
    def _project(self, E: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        """Project validated float64 or float32 (batch >= 1, n_features) errors; return float32 (batch,
        n_components)."""

    @property
    @abstractmethod
    def info(self) -> ProjectorInfo:
        """What this projector is."""

    # -- lifecycle -----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the backend (device, connection). Safe to call twice."""
        with self._lock:
            if not self._closed:
                self._closed = True
                self._close()

    def _close(self) -> None:  # noqa: B027 - an optional hook, not an abstract method: most backends hold nothing
        """Release what the backend holds; called once, by the first close(). The default holds nothing."""

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Projector:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.url!r}, n_components={self.n_components}, "
            f"n_features={self.n_features}, scheme={self.scheme!r}{', closed' if self._closed else ''})"
        )


def finite_float(value: object, name: str) -> float:
    """A finite positive float option, or InvalidInputError."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not (math.isfinite(value) and value > 0)
    ):
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)
