"""lightonml's PyTorch ``OPUMap`` on the front: ``from opu_driver.compat.projections.torch import OPUMap``.

A module whose forward pass is an OPU projection; its output is detached from the autograd graph (an optical
projection has no gradient here: train with DFA, :mod:`dfa_client.torch_dfa`). Needs PyTorch (the ``torch`` extra).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from ..lightonml import OPU, Fit
from ._common import fit_map, opu_for_map, refit_if_changed

__all__ = ["OPUMap"]

logger = logging.getLogger(__name__)


class OPUMap(nn.Module):
    """Random features from an OPU as a PyTorch module (lightonml 1.4's ``OPUMap``); arguments as the scikit-learn
    map's (:class:`opu_driver.compat.projections.sklearn.OPUMap`).

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
        super().__init__()
        self.opu = opu_for_map(opu, n_components, ndims, simulated, max_n_features, verbose_level)
        self._n_components = int(n_components)
        self.ndims = ndims
        self.n_2d_features = n_2d_features
        self.packed = packed
        self.simulated = simulated
        self.linear = linear
        self.max_n_features = max_n_features
        self._fit: Fit | None = None
        self.online = False

    @property
    def fitted(self) -> bool:
        """Whether ``fit`` ran (``transform``/``forward`` fits on their input otherwise)."""
        return self._fit is not None

    @property
    def n_components(self) -> int:
        """This module's outputs per vector (set on the OPU before each projection: modules may share one)."""
        return self._n_components

    def fit(
        self, X: Any = None, y: Any = None, n_features: Any = None, packed: bool | None = None, online: bool = False
    ) -> None:
        """Fix the input shape from ``X`` or ``n_features``; ``online`` makes ``forward`` project row by row."""
        packed = self.packed if packed is None else packed
        if n_features is None and packed and self.ndims == 2:
            n_features = self.n_2d_features
        self.online = bool(online)
        self._fit = fit_map(self.opu, self.ndims, X, n_features, packed, self.online)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Project a batch (fitting on it first if the module was never fitted); the result is detached."""
        if self._fit is None:
            logger.info("OPUMap was not fitted: fitting on the first batch")
            self.fit(input)
        else:
            refit_if_changed(self.opu, self._fit)
        self.opu.n_components = self._n_components
        project = self.opu.linear_transform if self.linear else self.opu.transform
        if self.online:
            return torch.stack([project(row) for row in input]).detach()
        return project(input).detach()

    def extra_repr(self) -> str:
        return f"out_features={self.n_components}, ndims={self.ndims}, packed={self.packed}, linear={self.linear}"

    def open(self) -> None:
        self.opu.open()

    def close(self) -> None:
        self.opu.close()

    def __enter__(self) -> OPUMap:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
