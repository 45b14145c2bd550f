"""lightonml's PyTorch ``OPUMap`` on the front: ``from opu_driver.compat.projections.torch import OPUMap``.

A module whose forward pass is an OPU projection; its output is detached from the autograd graph (an optical
projection has no gradient here: train with DFA, :mod:`dfa_client.torch_dfa`). Needs PyTorch (the ``torch`` extra).
"""

from __future__ import annotations

import torch
from torch import nn

from ..lightonml import OPU
from ._common import MapBase

__all__ = ["OPUMap"]


class OPUMap(MapBase, nn.Module):
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
        nn.Module.__init__(self)
        self._setup(n_components, opu, ndims, n_2d_features, packed, simulated, max_n_features, verbose_level, linear)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        """Project a batch (fitting on it first if the module was never fitted); the result is detached."""
        project = self._projector(input)
        if self.online:
            return torch.stack([project(row) for row in input]).detach()
        return project(input).detach()

    def extra_repr(self) -> str:
        return f"out_features={self.n_components}, ndims={self.ndims}, packed={self.packed}, linear={self.linear}"
