"""The hot loops of the data path, in C through cffi, with a numpy fallback that gives identical results.

Kernels:
    encode_frames: feature bits -> packed raw DMD frames through a layout's runs of mirrors.
    combine_four / combine_two: the differential combination of frames of the linear mode.

The C library is compiled at first use into a per-user cache (see opu_driver.native.build). Without a compiler,
or when the build fails, one warning is logged and the numpy versions (opu_driver.native.fallback) run instead;
``backend()`` says which. ``OPU_NATIVE=0`` forces numpy; ``OPU_NATIVE=1`` makes a failed build an error.
Inputs are checked in Python before any C code runs.
"""

from __future__ import annotations

import logging
import os
import threading
from types import ModuleType

import numpy as np
import numpy.typing as npt

from ..errors import LibraryLoadError
from . import fallback
from .checks import RunTable, as_table, check_bits, check_combine

__all__ = [
    "RunTable",
    "backend",
    "encode_frames",
    "combine_four",
    "combine_two",
]

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_state: dict[str, ModuleType | None | bool] = {"tried": False, "module": None}


def _native() -> ModuleType | None:
    """The compiled module, or None for the numpy path (decided once per process)."""
    if _state["tried"]:
        return _state["module"]  # type: ignore[return-value]
    with _lock:
        if not _state["tried"]:
            _state["module"] = _load()
            _state["tried"] = True
    return _state["module"]  # type: ignore[return-value]


def _load() -> ModuleType | None:
    choice = os.environ.get("OPU_NATIVE", "").strip()
    if choice == "0":
        logger.info("OPU_NATIVE=0: using the numpy data path")
        return None
    try:
        from . import build

        return build.load()
    except Exception as exc:  # no compiler, no cffi, a compile or load error: all mean "use numpy"
        if choice == "1":
            raise LibraryLoadError(f"OPU_NATIVE=1 but the native kernels could not be built: {exc}") from exc
        logger.warning("native kernels unavailable (%s: %s); using the numpy data path", type(exc).__name__, exc)
        return None


def backend() -> str:
    """ "native" when the C kernels are in use, "numpy" for the fallback."""
    return "native" if _native() is not None else "numpy"


def encode_frames(bits: npt.ArrayLike, runs: RunTable | npt.ArrayLike, n_mirrors: int) -> npt.NDArray[np.uint8]:
    """Packed raw mirror frames for binary feature frames.

    Args:
        bits: (n, n_features) uint8 or bool feature frames; a nonzero value turns the feature's mirrors ON.
        runs: the layout's (M, 3) runs (feature, first_mirror, n_mirrors), or a RunTable built once from them
            (``layout.run_table``): faster, because the checks and planning are not repeated.
        n_mirrors: mirrors in a frame (width * height).

    Returns:
        uint8 (n, ceil(n_mirrors / 8)): mirror i is bit 7 - i % 8 of byte i // 8; unused mirrors and padding 0.

    Raises:
        InvalidInputError: wrong dtype or shape, runs outside the frame, overlapping runs, a feature the bits
            do not have.
    """
    mod = _native()
    if mod is None:
        return fallback.encode_frames(bits, runs, n_mirrors)
    table = as_table(runs, n_mirrors)
    arr = check_bits(bits, table)
    out = np.empty((arr.shape[0], table.frame_bytes), dtype=np.uint8)
    if arr.shape[0] == 0:
        return out
    ffi, lib = mod.ffi, mod.lib
    draw, ops = table.draw_runs, table.copy_ops
    lib.opu_encode_frames(
        ffi.from_buffer("uint8_t[]", arr),
        arr.shape[0],
        arr.shape[1],
        ffi.from_buffer("uint32_t[]", draw) if draw.size else ffi.NULL,
        draw.shape[0],
        ffi.from_buffer("uint32_t[]", ops) if ops.size else ffi.NULL,
        ops.shape[0],
        table.frame_bytes,
        ffi.from_buffer("uint8_t[]", out),
    )
    return out


def _combine(name: str, n_parts: int, frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    mod = _native()
    if mod is None:
        return getattr(fallback, name)(frames, scale)
    f, s = check_combine(frames, scale, n_parts)
    out = np.empty((f.shape[0], f.shape[2]), dtype=np.float32)
    if out.size:
        ffi, lib = mod.ffi, mod.lib
        getattr(lib, "opu_" + name)(
            ffi.from_buffer("float[]", f),
            f.shape[0],
            f.shape[2],
            ffi.from_buffer("float[]", s),
            ffi.from_buffer("float[]", out),
        )
    return out


def combine_four(frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """((f0 - f1) - (f2 - f3)) * scale in float32: frames float32 (n, 4, m), scale float32 (m,) -> (n, m)."""
    return _combine("combine_four", 4, frames, scale)


def combine_two(frames: npt.ArrayLike, scale: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(f0 - f1) * scale in float32: frames float32 (n, 2, m), scale float32 (m,) -> (n, m)."""
    return _combine("combine_two", 2, frames, scale)
