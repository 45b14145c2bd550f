"""lightonml's scikit-learn ``OPUMap`` on the front: ``from opu_driver.compat.projections.sklearn import OPUMap``.

A transformer for pipelines and grid searches: ``fit`` fixes the input shape, ``transform`` projects (nonlinear
camera intensities, or ``linear=True`` for x B). Needs scikit-learn (the ``train`` extra).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..lightonml import OPU, Fit
from ._common import fit_map, opu_for_map, refit_if_changed

__all__ = ["OPUMap"]

logger = logging.getLogger(__name__)


class OPUMap(BaseEstimator, TransformerMixin):
    """Random features from an OPU as a scikit-learn transformer (lightonml 1.4's ``OPUMap``).

    Args:
        n_components: outputs per vector.
        opu: a front :class:`~opu_driver.compat.lightonml.OPU` to use; None opens one (``$OPU_URL`` or ``sim://``).
        ndims: 1 (vectors) or 2 (2-D inputs, fitted with ``fit2d``).
        n_2d_features: the unpacked 2-D shape of packed input when ``ndims`` is 2.
        packed: input is bit-packed (``np.packbits`` order).
        simulated: open the built-in emulator when ``opu`` is None.
        max_n_features: the front's ``max_n_features`` (None: the device's limit).
        verbose_level: the front's ``verbose_level``.
        linear: project with ``linear_transform`` instead of ``transform``.

    Raises:
        ConfigurationError: ``ndims`` other than 1 or 2.
    """

    def __init__(
        self,
        n_components: int,
        opu: OPU | None = None,
        ndims: int = 1,
        n_2d_features: tuple[int, int] | None = None,
        packed: bool = False,
        simulated: bool = False,
        max_n_features: int | None = None,
        verbose_level: int = -1,
        linear: bool = False,
    ) -> None:
        self.opu = opu_for_map(opu, n_components, ndims, simulated, max_n_features, verbose_level)
        self._n_components = int(n_components)
        self.ndims = ndims
        self.n_2d_features = n_2d_features
        self.packed = packed
        self.simulated = simulated
        self.linear = linear
        self.max_n_features = max_n_features
        self.verbose_level = verbose_level
        self._fit: Fit | None = None

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` ran (``transform``/``forward`` fits on their input otherwise)."""
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
    ) -> OPUMap:
        """Fix the input shape from ``X`` or ``n_features`` (``n_2d_features`` for packed 2-D input); ``packed``
        defaults to the map's."""
        packed = self.packed if packed is None else packed
        if n_features is None and packed and self.ndims == 2:
            n_features = self.n_2d_features
        self._fit = fit_map(self.opu, self.ndims, X, n_features, packed, online)
        return self

    def transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Project ``X`` (fitting on it first if the map was never fitted): a plain ndarray."""
        if self._fit is None:
            logger.info("OPUMap was not fitted: fitting on the input")
            self.fit(X)
        else:
            refit_if_changed(self.opu, self._fit)
        self.opu.n_components = self._n_components
        project = self.opu.linear_transform if self.linear else self.opu.transform
        return np.array(project(X))

    def open(self) -> None:
        self.opu.open()

    def close(self) -> None:
        self.opu.close()

    def __enter__(self) -> OPUMap:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
