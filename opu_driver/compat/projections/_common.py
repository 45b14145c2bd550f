"""What both ``OPUMap`` wrappers do the same way: build or adopt the front's OPU, and fit it for 1-D or 2-D input."""

from __future__ import annotations

import logging
from typing import Any

from ...errors import ConfigurationError
from ..lightonml import OPU, Fit

__all__ = ["opu_for_map", "fit_map", "refit_if_changed"]

logger = logging.getLogger(__name__)


def opu_for_map(
    opu: OPU | None, n_components: int, ndims: int, simulated: bool, max_n_features: int | None, verbose_level: int
) -> OPU:
    """The OPU a map projects with: ``opu`` (its n_components set to ``n_components``) or a new front OPU.

    Raises:
        ConfigurationError: ``ndims`` other than 1 or 2, before anything is opened.
    """
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


def fit_map(opu: OPU, ndims: int, X: Any, n_features: Any, packed: bool, online: bool) -> Fit:
    """``fit1d`` or ``fit2d`` on ``opu`` as ``ndims`` says; returns what the fit fixed."""
    if ndims == 1:
        opu.fit1d(X, n_features=n_features, packed=packed, online=online)
    else:
        opu.fit2d(X, n_features=n_features, packed=packed, online=online)
    assert opu.fit_settings is not None
    return opu.fit_settings


def refit_if_changed(opu: OPU, fit: Fit) -> None:
    """Fit ``opu`` again as ``fit`` says if something else (another map sharing it) fitted it since."""
    if opu.fit_settings != fit:
        shape = fit.feature_shape
        fit_map(opu, len(shape), None, shape[0] if len(shape) == 1 else shape, fit.packed, fit.online)
