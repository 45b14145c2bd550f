"""What the report reads from a record: arrays, summary numbers and the camera region of per-output vectors.

A record may come from an older driver, a hand-made script or a partial run, so every reader here is lenient:
an absent, non-numeric or all-NaN value reads as None and the panel that wanted it leaves that mark out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...validation import is_number
from ..result import CalibrationResult, region_keys
from ..store import CalibrationRecord

__all__ = ["array", "needed", "summary", "number", "roi_geometry", "as_map", "finite"]


def array(record: CalibrationRecord, name: str) -> np.ndarray | None:
    """The record's array ``name`` as a numeric ndarray, or None when absent, empty, not numeric or all NaN."""
    value = record.arrays.get(name)
    if value is None:
        return None
    result = np.asarray(value)
    if result.size == 0 or result.dtype.kind not in "biuf":
        return None
    if result.dtype.kind == "f" and not np.isfinite(result).any():
        return None
    return result


def needed(record: CalibrationRecord, name: str) -> np.ndarray:
    """The record's array ``name`` for a panel that needs it, read as :func:`array` reads it.

    A panel is drawn only when :func:`array` finds every array it needs (``panels.drawable``), so the array is
    there by construction; this only says so to the type checker.
    """
    result = array(record, name)
    assert result is not None, f"a panel was drawn without its array {name!r}"
    return result


def summary(record: CalibrationRecord, result: type[CalibrationResult] | str) -> Mapping[str, Any]:
    """The summary the record holds for a routine (its result class or its name); empty when absent."""
    routine = result if isinstance(result, str) else result.routine
    value = record.results.get(routine)
    return value if isinstance(value, Mapping) else {}


def number(values: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a summary, or None (absent, None, bool, text, NaN)."""
    value = values.get(key)
    return float(value) if is_number(value) else None  # type: ignore[arg-type]


def roi_geometry(record: CalibrationRecord, result: type[CalibrationResult], n: int) -> tuple[int, int, int]:
    """(x0, y0, width) in camera pixels of the region whose first ``n`` pixels are the routine's outputs.

    The routine's own region keys come first; then those of another routine with as many outputs (same region);
    failing both, a square-ish grid from (0, 0), which is still a faithful picture of the vector.
    """
    x_key, y_key, width_key, height_key = region_keys()
    candidates = [summary(record, result)] + [
        s for r, s in record.results.items() if r != result.routine and isinstance(s, Mapping)
    ]
    for values in candidates:
        width, height = number(values, width_key), number(values, height_key)
        if (
            width is None
            or width < 1
            or (values is not candidates[0] and (height is None or not (width * height >= n > width * (height - 1))))
        ):
            continue
        return int(number(values, x_key) or 0), int(number(values, y_key) or 0), int(width)
    return 0, 0, max(1, math.isqrt(n - 1) + 1)


def as_map(values: np.ndarray, width: int) -> np.ndarray:
    """A per-output vector as rows of ``width`` (row-major, the last row padded with NaN)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    rows = -(-flat.size // width)
    padded = np.full(rows * width, np.nan)
    padded[: flat.size] = flat
    return padded.reshape(rows, width)


def finite(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays (same length) flattened, restricted to the positions where all are finite."""
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    n = min(a.size for a in flat)
    flat = [a[:n] for a in flat]
    keep = np.logical_and.reduce([np.isfinite(a) for a in flat])
    return [a[keep] for a in flat]
