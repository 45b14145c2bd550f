"""lightonml's scikit-learn ``OPUMap`` on the front: ``from opu_driver.compat.projections.sklearn import OPUMap``.

A transformer for pipelines and grid searches: ``fit`` fixes the input shape, ``transform`` projects (nonlinear
camera intensities, or ``linear=True`` for x B). Needs scikit-learn (the ``train`` extra).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from ..lightonml import OPU
from ._common import MapBase

__all__ = ["OPUMap"]


class OPUMap(MapBase, BaseEstimator, TransformerMixin):
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
        self._setup(n_components, opu, ndims, n_2d_features, packed, simulated, max_n_features, verbose_level, linear)

    def transform(self, X: Any, y: Any = None) -> np.ndarray:
        """Project ``X`` (fitting on it first if the map was never fitted): a plain ndarray."""
        return np.array(self._projector(X)(X))
