"""Build the C kernels with cffi (API mode) into a per-user cache, once, at first use.

The compiled library lives in ``$XDG_CACHE_HOME/opu_driver`` (or ``~/.cache/opu_driver``; ``OPU_NATIVE_CACHE``
overrides it), named by a hash of the C source, the Python version, the platform and the cffi version, so a
changed source or interpreter gets its own build and a stale one is never loaded. The build happens in a
private temporary folder and the finished library is moved into place with an atomic rename: two processes that
build at the same time both succeed, and neither ever loads a half-written file.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import platform
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

__all__ = ["CDEF", "cache_dir", "kernel_source", "library_path", "load", "module_name"]

logger = logging.getLogger(__name__)

CDEF = """
void opu_encode_frames(const uint8_t *bits, uint64_t n_frames, uint64_t n_features,
                       const uint32_t *runs, uint64_t n_runs, const uint32_t *ops, uint64_t n_ops,
                       uint64_t frame_bytes, uint8_t *out);
void opu_combine_four(const float *frames, uint64_t n, uint64_t m, const float *scale, float *out);
void opu_combine_two(const float *frames, uint64_t n, uint64_t m, const float *scale, float *out);
"""

# -ffp-contract=off: no fused multiply-add, so float32 results match numpy's bit for bit.
COMPILE_ARGS = ["-O3", "-ffp-contract=off", "-fno-fast-math"]


def kernel_source() -> str:
    """The C source of the kernels (kernels.c beside this module)."""
    return (Path(__file__).with_name("kernels.c")).read_text(encoding="utf-8")


def cache_dir() -> Path:
    """Per-user folder of compiled kernels."""
    override = os.environ.get("OPU_NATIVE_CACHE")
    if override:
        return Path(override)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "opu_driver"


def module_name() -> str:
    """Extension module name, unique to this source, interpreter, platform and cffi version."""
    import cffi

    key = "\0".join(
        [
            kernel_source(),
            CDEF,
            " ".join(COMPILE_ARGS),
            sys.version,
            platform.platform(),
            platform.machine(),
            sysconfig.get_config_var("EXT_SUFFIX") or "",
            cffi.__version__,
        ]
    )
    return "_opu_kernels_" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


def library_path() -> Path:
    """Where the compiled library for this source and interpreter is (or will be) cached."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return cache_dir() / (module_name() + suffix)


def _compile(target: Path) -> None:
    import cffi

    target.parent.mkdir(parents=True, exist_ok=True)
    name = module_name()
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(name, kernel_source(), extra_compile_args=COMPILE_ARGS)
    with tempfile.TemporaryDirectory(prefix="build-", dir=target.parent) as tmp:
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        staged = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copyfile(built, staged)
        os.replace(staged, target)  # atomic on POSIX and Windows: readers see no file or the whole file
    logger.info("built native kernels into %s", target)


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(module_name(), path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load() -> ModuleType:
    """Return the compiled cffi module (with ``ffi`` and ``lib``), building it first when not cached.

    Raises whatever the build raised (no compiler, no cffi, a compile error): the caller decides whether that
    is a warning (fall back to numpy) or an error.
    """
    path = library_path()
    if not path.exists():
        _compile(path)
    return _import(path)
