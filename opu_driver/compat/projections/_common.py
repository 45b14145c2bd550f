"""What both ``OPUMap`` wrappers share: building or adopting the front's OPU, fitting it for 1-D or 2-D input, and
projecting with the map's own shape and size even when maps share one OPU."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ...errors import ConfigurationError
from ..lightonml import OPU, Fit

__all__ = ["MapBase"]

logger = logging.getLogger(__name__)


def _opu_for_map(
    opu: OPU | None, n_components: int, ndims: int, simulated: bool, max_n_features: int | None, verbose_level: int
) -> OPU:
    """The OPU a map projects with: ``opu`` (its n_components set to ``n_components``) or a new front OPU."""
    if ndims not in (1, 2):
        raise ConfigurationError(f"ndims must be 1 or 2, got {ndims!r}")
    if opu is None:
        return OPU(
            n_components=n_components, max_n_features=max_n_features, simulated=simulated, verbose_level=verbose_level
        )
    if simulated and not str(opu.url).startswith("sim://"):
        logger.warning("simulated=True with an OPU on %s: the OPU given is used", opu.url)
    opu.n_components = n_components
    return opu


def _fit_opu(opu: OPU, ndims: int, X: Any, n_features: Any, packed: bool, online: bool) -> Fit:
    """``fit1d`` or ``fit2d`` on ``opu`` as ``ndims`` says; returns what the fit fixed."""
    if ndims == 1:
        opu.fit1d(X, n_features=n_features, packed=packed, online=online)
    else:
        opu.fit2d(X, n_features=n_features, packed=packed, online=online)
    assert opu.fit_settings is not None
    return opu.fit_settings


class MapBase:
    """The state and behaviour of lightonml's ``OPUMap`` (both flavours); the subclasses add their library's
    interface (a scikit-learn transformer, a PyTorch module) and call :meth:`_setup` from ``__init__``.

    Raises (from ``_setup``):
        ConfigurationError: ``ndims`` other than 1 or 2, before any device is opened.
    """

    opu: OPU
    ndims: int
    n_2d_features: tuple[int, int] | None
    packed: bool
    simulated: bool
    linear: bool
    max_n_features: int | None
    verbose_level: int
    online: bool

    def _setup(
        self,
        n_components: int,
        opu: OPU | None,
        ndims: int,
        n_2d_features: tuple[int, int] | None,
        packed: bool,
        simulated: bool,
        max_n_features: int | None,
        verbose_level: int,
        linear: bool,
    ) -> None:
        self.opu = _opu_for_map(opu, n_components, ndims, simulated, max_n_features, verbose_level)
        self._n_components = int(n_components)
        self.ndims = ndims
        self.n_2d_features = n_2d_features
        self.packed = packed
        self.simulated = simulated
        self.linear = linear
        self.max_n_features = max_n_features
        self.verbose_level = verbose_level
        self.online = False
        self._fit: Fit | None = None

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` ran (a projection fits on its input otherwise)."""
        return self._fit is not None

    @property
    def n_components(self) -> int:
        """This map's outputs per vector (set on the OPU before each projection: maps may share one)."""
        return self._n_components

    @n_components.setter
    def n_components(self, value: int) -> None:
        self.opu.n_components = value  # checked there
        self._n_components = int(value)

    def fit(
        self, X: Any = None, y: Any = None, n_features: Any = None, packed: bool | None = None, online: bool = False
    ) -> Any:
        """Fix the input shape from ``X`` or ``n_features`` (``n_2d_features`` for packed 2-D input); ``packed``
        defaults to the map's; ``online`` makes a projection go row by row. Returns the map."""
        packed = self.packed if packed is None else packed
        if n_features is None and packed and self.ndims == 2:
            n_features = self.n_2d_features
        self.online = bool(online)
        self._fit = _fit_opu(self.opu, self.ndims, X, n_features, packed, self.online)
        return self

    def _projector(self, X: Any) -> Callable[[Any], Any]:
        """The OPU's transform or linear_transform, with the OPU fitted and sized as this map says (fitting on
        ``X`` first if the map never was)."""
        if self._fit is None:
            logger.info("OPUMap was not fitted: fitting on the input")
            self.fit(X)
        elif self.opu.fit_settings != self._fit:  # another map sharing the OPU fitted it since
            shape = self._fit.feature_shape
            n_features = shape[0] if len(shape) == 1 else shape
            _fit_opu(self.opu, len(shape), None, n_features, self._fit.packed, self._fit.online)
        self.opu.n_components = self._n_components
        return self.opu.linear_transform if self.linear else self.opu.transform

    def open(self) -> None:
        self.opu.open()

    def close(self) -> None:
        self.opu.close()

    def __enter__(self) -> Any:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
