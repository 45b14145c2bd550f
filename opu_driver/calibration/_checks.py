"""Argument checks, the correlation statistic and the output-directory probe shared by the calibration routines.

Every routine refuses bad arguments before anything is sent to the device; these helpers only look at the
values (and at ``opu.info``, which the Opu reads once at open), so calling them costs no traffic. They add the
device's limits to the checks of :mod:`opu_driver.validation`.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import InvalidInputError
from ..opu import Opu
from ..validation import check_int, is_int

__all__ = [
    "check_components",
    "check_features",
    "check_count",
    "check_seed",
    "correlation",
    "directory_problem",
    "MAX_COUNT",
]

MAX_COUNT = 1 << 20
"""The most frames, vectors or probes one routine argument may ask for (about a million: minutes to hours of
device time). Larger counts are refused before anything is allocated or sent."""


def check_components(opu: Opu, n_components: object) -> int:
    """``n_components`` as an int; InvalidInputError unless it is an integer within 1..(camera pixels)."""
    n_pixels = opu.info.camera_width * opu.info.camera_height
    if not is_int(n_components, 1, n_pixels):
        raise InvalidInputError(
            f"n_components must be an integer within 1..{n_pixels} (camera pixels), got {n_components!r}"
        )
    return int(n_components)  # type: ignore[call-overload]


def check_features(opu: Opu, n_features: object, low: int = 1) -> int:
    """``n_features`` as an int; InvalidInputError unless it is an integer within low..(DMD mirrors)."""
    n_mirrors = opu.info.dmd_width * opu.info.dmd_height
    if not is_int(n_features, low, n_mirrors):
        raise InvalidInputError(
            f"n_features must be an integer within {low}..{n_mirrors} (DMD mirrors), got {n_features!r}"
        )
    return int(n_features)  # type: ignore[call-overload]


def check_count(value: object, name: str, low: int) -> int:
    """A count of frames, vectors or probes as an int; InvalidInputError unless it is within low..MAX_COUNT."""
    return check_int(value, name, low=low, high=MAX_COUNT)


def check_seed(seed: object) -> int | None:
    """The seed (None or an int); InvalidInputError unless it is None or an integer >= 0."""
    if seed is not None and not is_int(seed, 0):
        raise InvalidInputError(f"seed must be None or an integer >= 0, got {seed!r}")
    return None if seed is None else int(seed)  # type: ignore[call-overload]


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


def directory_problem(directory: str | os.PathLike[str], *, create: bool = False) -> str | None:
    """Why files cannot be written in ``directory``, in words, or None when they can.

    Checked by creating (and at once removing) a temporary file there, so permissions, read-only file systems and
    access control lists all count, as they would for the real write. With ``create``, a missing directory is fine
    when its nearest existing ancestor is a directory that can be written (the writer creates the rest).
    Used to refuse an output path before hours of calibration rather than after.
    """
    directory = Path(directory)
    probe = directory
    while create and not os.path.lexists(probe) and probe.parent != probe:
        probe = probe.parent
    if not probe.exists():
        return f"{directory} does not exist"
    if not probe.is_dir():
        return f"{probe} is not a directory"
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        return f"cannot write in {probe}: {exc.strerror or exc}"
    return None
