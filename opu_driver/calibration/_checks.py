"""Argument checks and the correlation statistic shared by the calibration routines.

Every routine refuses bad arguments before anything is sent to the device; these helpers only look at the
values (and at ``opu.info``, which the Opu reads once at open), so calling them costs no traffic.
"""
from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError

__all__ = ["is_int", "is_number", "check_components", "check_features", "check_count", "check_seed", "correlation",
           "MAX_COUNT"]

MAX_COUNT = 1 << 20
"""The most frames, vectors or probes one routine argument may ask for (about a million: minutes to hours of
device time). Larger counts are refused before anything is allocated or sent."""


def is_int(value: object, low: int | None = None) -> bool:
    """Whether ``value`` is a Python or NumPy integer (not a bool), and at least ``low`` when given."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return low is None or value >= low


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite Python or NumPy real number (not a bool)."""
    return (not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
            and math.isfinite(float(value)))


def check_components(opu, n_components: object) -> None:
    """Refuse an ``n_components`` that is not an integer within 1..(camera pixels)."""
    n_pixels = opu.info.camera_width * opu.info.camera_height
    if not is_int(n_components, 1) or n_components > n_pixels:
        raise InvalidInputError(
            f"n_components must be an integer within 1..{n_pixels} (camera pixels), got {n_components!r}"
        )


def check_features(opu, n_features: object, low: int = 1) -> None:
    """Refuse an ``n_features`` that is not an integer within low..(DMD mirrors)."""
    n_mirrors = opu.info.dmd_width * opu.info.dmd_height
    if not is_int(n_features, low) or n_features > n_mirrors:
        raise InvalidInputError(
            f"n_features must be an integer within {low}..{n_mirrors} (DMD mirrors), got {n_features!r}"
        )


def check_count(value: object, name: str, low: int) -> None:
    """Refuse a count of frames, vectors or probes that is not an integer within low..MAX_COUNT."""
    if not is_int(value, low) or value > MAX_COUNT:
        raise InvalidInputError(f"{name} must be an integer within {low}..{MAX_COUNT}, got {value!r}")


def check_seed(seed: object) -> None:
    """Refuse a seed that is neither None nor a non-negative integer."""
    if seed is not None and not is_int(seed, 0):
        raise InvalidInputError(f"seed must be None or an integer >= 0, got {seed!r}")


def correlation(x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Pearson correlation of two equally shaped arrays (flattened), exactly 1.0 for identical non-constant ones.

    NaN when there are fewer than two values or either array is constant (no correlation is defined).
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.size < 2:
        return float("nan")
    if np.array_equal(a, b):
        return 1.0 if a.std() > 0 else float("nan")
    a = a - a.mean()
    b = b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(np.clip(float(a @ b) / denominator, -1.0, 1.0)) if denominator > 0 else float("nan")
