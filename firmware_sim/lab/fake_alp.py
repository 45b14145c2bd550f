"""A fake Vialux ALP-4.x library: built from ``fake_alp.c`` with gcc, loaded by the driver as if it were Vialux's.

:func:`build_fake_alp` compiles the C source once into a per-user cache (named by the source's hash) and returns
the path of the shared library; a driver's ``AlpDmd(path)`` then loads it as it would load ``alp4395.dll``.
:class:`FakeAlpLibrary` loads the same path with its own cffi declarations of the fake-only exports: the dynamic
loader hands both the same library image, so the emulator side (geometry, fault injection, the display hook)
acts on the state the driver's calls see.

What the fake proves and what it does not: the driver's call order, argument marshalling (``long`` widths,
pointers, the progress struct), the picture bytes and the error codes; not the real device's timing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cffi
import numpy as np
import numpy.typing as npt

from ..errors import SimBuildError, SimConfigError

__all__ = [
    "COMPILE_FLAGS",
    "FAKE_FUNCTIONS",
    "DisplayCallback",
    "FakeAlpLibrary",
    "SequenceSettings",
    "build_fake_alp",
    "default_cache_dir",
    "fake_alp_source",
]

logger = logging.getLogger(__name__)

COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror")

#: The ALP calls the fake exports (and counts).
FAKE_FUNCTIONS = (
    "AlpDevAlloc",
    "AlpDevInquire",
    "AlpDevControl",
    "AlpDevHalt",
    "AlpDevFree",
    "AlpSeqAlloc",
    "AlpSeqControl",
    "AlpSeqInquire",
    "AlpSeqTiming",
    "AlpSeqPut",
    "AlpSeqFree",
    "AlpProjControl",
    "AlpProjStart",
    "AlpProjWait",
    "AlpProjHalt",
    "AlpProjInquireEx",
)

# The fake-only exports, as fake_alp.c defines them (the ALP calls themselves are the driver's business).
_CDEF = """
typedef unsigned long ALP_ID;
typedef void (*fake_display_hook)(const unsigned char *packed, long n_bytes, long width, long height, long index,
                                  long long time_us, void *user);
void FakeAlp_Reset(void);
long FakeAlp_Configure(long width, long height, long serial, long min_picture_time_us, long memory_pictures);
void FakeAlp_SetIdBase(ALP_ID base);
void FakeAlp_SetDisplayHook(fake_display_hook hook, void *user);
long FakeAlp_FailNext(const char *function_name, long code);
void FakeAlp_SetDeviceMissing(int missing);
void FakeAlp_SetStallAfter(long pictures);
long FakeAlp_CallCount(const char *function_name);
long long FakeAlp_VirtualTimeUs(void);
long FakeAlp_PicturesShown(void);
int FakeAlp_DeviceAllocated(void);
long FakeAlp_SequenceCount(void);
long FakeAlp_SequenceSettings(ALP_ID SequenceId, long *out10);
ALP_ID FakeAlp_LastStartedSequence(void);
long FakeAlp_SynchPolarity(void);
long FakeAlp_ProjMode(void);
long FakeAlp_TriggerIn(long n_edges);
long FakeAlp_TriggerEdge(void);
"""

#: What a display callback receives: the picture as the driver's raw frame (uint8, ``ceil(w*h/8)`` bytes,
#: ``numpy.packbits`` of the row-major flattened picture), its index in the sequence, and the virtual time (µs).
DisplayCallback = Callable[[npt.NDArray[np.uint8], int, int], None]


def fake_alp_source() -> bytes:
    """The C source of the fake (``fake_alp.c`` beside this module)."""
    return Path(__file__).with_name("fake_alp.c").read_bytes()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/opu-driver/fake-alp`` (``~/.cache/opu-driver/fake-alp`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "opu-driver" / "fake-alp"


def _library_suffix() -> str:
    if sys.platform == "win32":
        return ".dll"
    return ".dylib" if sys.platform == "darwin" else ".so"


def build_fake_alp(cache_dir: Path | None = None) -> Path:
    """Compile the fake ALP library (once per source) and return its path.

    The library is named by a hash of the C source and the flags, so a changed source gets a new build and a
    stale one is never loaded. gcc writes into a private temporary file in the cache folder, which is then
    renamed into place (atomic): parallel builds both succeed and no one loads a half-written file.

    Raises:
        SimBuildError: gcc is not installed (Debian: ``apt-get install gcc``) or failed to compile the source.
    """
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    source = fake_alp_source()
    key = hashlib.sha256(source + "\0".join(COMPILE_FLAGS).encode()).hexdigest()[:16]
    target = folder / f"fake_alp-{key}{_library_suffix()}"
    if target.exists():
        return target
    compiler = shutil.which("gcc")
    if compiler is None:
        raise SimBuildError(
            "cannot build the fake ALP library: gcc was not found on PATH (Debian: apt-get install gcc)"
        )
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=folder) as tmp:
        c_file = Path(tmp) / "fake_alp.c"
        c_file.write_bytes(source)
        staged = Path(tmp) / target.name
        result = subprocess.run(
            [compiler, *COMPILE_FLAGS, "-o", str(staged), str(c_file)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise SimBuildError(f"gcc failed to build the fake ALP library ({result.returncode}):\n{result.stderr}")
        os.replace(staged, target)  # atomic: readers see no file or the whole file
    logger.info("built the fake ALP library into %s", target)
    return target


@dataclass(frozen=True)
class SequenceSettings:
    """A sequence's settings as the fake holds them (what the driver's calls set); times in microseconds."""

    bitplanes: int
    picnum: int
    data_format: int
    bin_mode: int
    repeat: int
    illuminate_us: int
    picture_us: int
    synch_delay_us: int
    synch_pulse_us: int
    trigger_delay_us: int


class FakeAlpLibrary:
    """The emulator's side of the fake ALP library at ``path`` (from :func:`build_fake_alp`).

    One library image holds one emulated device, shared by every loader of that path in this process; construct
    this, :meth:`reset` and :meth:`configure` before the driver opens the device.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._ffi = cffi.FFI()
        self._ffi.cdef(_CDEF)
        self._lib: Any = self._ffi.dlopen(str(self.path))
        self._hook: Any = None  # the cffi callback: kept alive while the library may call it
        self._callback: DisplayCallback | None = None
        self.callback_errors: list[BaseException] = []

    # ------------------------------------------------------------------------------------------ configuration
    def reset(self) -> None:
        """Back to the defaults: no device allocated, counters zero, no faults, no display callback."""
        self._lib.FakeAlp_Reset()
        self._hook = None
        self._callback = None
        self.callback_errors.clear()

    def configure(
        self,
        width: int = 1024,
        height: int = 768,
        serial: int = 12345,
        min_picture_time_us: int = 100,
        memory_pictures: int = 4096,
    ) -> None:
        """Set what the emulated device is (only while no device is allocated).

        Raises:
            SimConfigError: a value out of range (sizes 1..16384, a positive time and memory) or a device allocated.
        """
        code = self._lib.FakeAlp_Configure(width, height, serial, min_picture_time_us, memory_pictures)
        if code != 0:
            raise SimConfigError(
                f"the fake ALP refused the configuration {width}x{height}, serial {serial}, "
                f"min picture time {min_picture_time_us} us, memory {memory_pictures} pictures (code {code})"
            )

    def set_id_base(self, base: int) -> None:
        """Make the ids it hands out start above ``base`` (ids wider than 32 bits test the callers' types)."""
        self._lib.FakeAlp_SetIdBase(base)

    def on_display(self, callback: DisplayCallback | None) -> None:
        """Call ``callback(picture, index, time_us)`` for each picture shown (None: stop).

        ``picture`` is a fresh uint8 array in the driver's raw-frame layout (``numpy.packbits`` of the row-major
        flattened picture, ``ceil(width*height/8)`` bytes), made from the mirrors' state the fake decoded from the
        data the driver loaded. An exception in the callback is kept in :attr:`callback_errors`.
        """
        if callback is None:
            self._lib.FakeAlp_SetDisplayHook(self._ffi.NULL, self._ffi.NULL)
            self._hook = None
            self._callback = None
            return

        def hook(packed: Any, n_bytes: int, width: int, height: int, index: int, time_us: int, user: Any) -> None:
            try:
                picture = np.frombuffer(self._ffi.buffer(packed, n_bytes), dtype=np.uint8).copy()
                callback(picture, int(index), int(time_us))
            except BaseException as exc:  # it cannot cross the C frames: keep it for the test
                self.callback_errors.append(exc)

        self._callback = callback
        self._hook = self._ffi.callback("fake_display_hook", hook)
        self._lib.FakeAlp_SetDisplayHook(self._hook, self._ffi.NULL)

    # ---------------------------------------------------------------------------------------------- faults
    def fail_next(self, function_name: str, code: int) -> None:
        """Make the next call of ``function_name`` (an ALP call, e.g. ``"AlpSeqPut"``) return ``code``."""
        if self._lib.FakeAlp_FailNext(function_name.encode(), code) != 0:
            raise SimConfigError(f"the fake ALP has no function {function_name!r}; it has {', '.join(FAKE_FUNCTIONS)}")

    def set_device_missing(self, missing: bool) -> None:
        """While True, AlpDevAlloc answers ALP_NOT_ONLINE (1001), as with no device connected."""
        self._lib.FakeAlp_SetDeviceMissing(1 if missing else 0)

    def stall_after(self, pictures: int | None) -> None:
        """Make projections stop after ``pictures`` pictures and stay active until halted (None: they finish)."""
        self._lib.FakeAlp_SetStallAfter(-1 if pictures is None else pictures)

    # -------------------------------------------------------------------------------------------- readings
    def call_count(self, function_name: str) -> int:
        """How often the ALP call ``function_name`` was made since the last reset."""
        count = int(self._lib.FakeAlp_CallCount(function_name.encode()))
        if count < 0:
            raise SimConfigError(f"the fake ALP has no function {function_name!r}")
        return count

    def call_counts(self) -> dict[str, int]:
        """Every ALP call's count since the last reset."""
        return {name: self.call_count(name) for name in FAKE_FUNCTIONS}

    def virtual_time_us(self) -> int:
        """The fake's clock: the sum of the picture times of every picture shown since the last reset."""
        return int(self._lib.FakeAlp_VirtualTimeUs())

    def pictures_shown(self) -> int:
        """Pictures shown since the last reset."""
        return int(self._lib.FakeAlp_PicturesShown())

    def device_allocated(self) -> bool:
        """Whether a device is allocated now."""
        return bool(self._lib.FakeAlp_DeviceAllocated())

    def sequence_count(self) -> int:
        """Sequences allocated now."""
        return int(self._lib.FakeAlp_SequenceCount())

    def last_started_sequence(self) -> int:
        """The id of the sequence of the last AlpProjStart (0 if none)."""
        return int(self._lib.FakeAlp_LastStartedSequence())

    def sequence_settings(self, sequence_id: int) -> SequenceSettings:
        """What the fake holds for an allocated sequence. Raises SimConfigError for an unknown id."""
        out = self._ffi.new("long[10]")
        if self._lib.FakeAlp_SequenceSettings(sequence_id, out) != 0:
            raise SimConfigError(f"the fake ALP has no sequence {sequence_id}")
        return SequenceSettings(*(int(v) for v in out))

    def synch_polarity(self) -> int:
        """The device's synch-out polarity (ALP_LEVEL_HIGH 2006 or ALP_LEVEL_LOW 2007)."""
        return int(self._lib.FakeAlp_SynchPolarity())

    def projection_mode(self) -> int:
        """ALP_MASTER (2301) or ALP_SLAVE (2302)."""
        return int(self._lib.FakeAlp_ProjMode())

    def trigger_edge(self) -> int:
        """The trigger-in edge a slave projection waits for (ALP_EDGE_FALLING 2008 or ALP_EDGE_RISING 2009)."""
        return int(self._lib.FakeAlp_TriggerEdge())

    def trigger_in(self, n_edges: int) -> int:
        """Send ``n_edges`` edges to the DMD's trigger input; a slave-mode projection shows one picture per edge.
        Returns the pictures shown (0 in master mode or when nothing plays)."""
        return int(self._lib.FakeAlp_TriggerIn(int(n_edges)))
