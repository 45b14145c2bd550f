"""A Vialux DMD driven through the ALP-4.x API (``alp4395.dll`` and kin), loaded with cffi in ABI mode.

The declarations below are our own, written from the public description of the API: the prototypes as the
ALP-4.x API description gives them (reproduced by the public alp4-rs bindings) and the numeric values as the
ALP4lib project lists them (``src/header/header.py``, MIT licence). Vialux's ``alp.h`` is not used.

``long`` and ``unsigned long`` (``ALP_ID``) are declared as such, so cffi gives them the platform's C width:
4 bytes on Windows, 8 on 64-bit Linux. The progress struct is declared packed, as the API description packs its
structs; its members are all ``unsigned long``, so packing changes nothing on either platform.

A sequence plays once in binary uninterrupted mode (no dark phase between pictures) with a synch-out pulse per
picture, which drives the camera's trigger: on the DMD's own clock (master mode), or, with ``trigger_in``, one
picture per edge on the DMD's trigger input (slave mode: an external clock paces the pictures, each still framed by
its synch-out pulse). :meth:`AlpDmd.wait` polls the projection's progress with a deadline
instead of calling ``AlpProjWait``, which blocks without a timeout.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import cffi
import numpy as np
import numpy.typing as npt

from ...errors import (
    CommunicationTimeoutError,
    DeviceError,
    DeviceNotFoundError,
    DeviceRefusedError,
    InvalidInputError,
    LibraryLoadError,
)
from .parts import PatternDmd, PatternDmdInfo

__all__ = [
    "ALP",
    "ALP_CDEF",
    "ALP_ERRORS",
    "ALP_FUNCTIONS",
    "AlpDmd",
    "AlpProgress",
    "AlpSequenceData",
    "alp_error",
    "pack_topdown",
]

logger = logging.getLogger(__name__)


class ALP:
    """The ALP constants the driver uses, in one table.

    Values from the ALP-4.x API description as ALP4lib publishes them
    (https://github.com/wavefrontshaping/ALP4lib, ``src/header/header.py``); the same values appear in the
    alp4-rs bindings (https://github.com/UnsuccessfulLaminator/alp4-rs, ``src/alp_binding.rs``).
    """

    DEFAULT = 0
    OK = 0
    # AlpDevInquire
    DEVICE_NUMBER = 2000  # serial number
    VERSION = 2001
    AVAIL_MEMORY = 2003  # free sequence memory, in binary pictures
    DEV_DISPLAY_HEIGHT = 2057  # mirror rows
    DEV_DISPLAY_WIDTH = 2058  # mirror columns
    # AlpDevControl
    SYNCH_POLARITY = 2004
    TRIGGER_EDGE = 2005  # the trigger-in edge a slave-mode projection waits for
    LEVEL_HIGH = 2006
    LEVEL_LOW = 2007
    EDGE_FALLING = 2008
    EDGE_RISING = 2009
    # AlpSeqControl
    SEQ_REPEAT = 2100
    BIN_MODE = 2104
    BIN_NORMAL = 2105
    BIN_UNINTERRUPTED = 2106
    DATA_FORMAT = 2110
    DATA_MSB_ALIGN = 0
    DATA_BINARY_TOPDOWN = 2  # packed 1 bit per mirror, top row first, bit 7 = leftmost of 8 mirrors
    # AlpSeqInquire
    MIN_PICTURE_TIME = 2211  # µs
    # AlpProjControl / AlpProjInquireEx
    PROJ_MODE = 2300
    MASTER = 2301
    SLAVE = 2302
    PROJ_PROGRESS = 2318
    FLAG_QUEUE_IDLE = 1
    FLAG_SEQUENCE_ABORTING = 2


#: Every ALP return code the API description lists: code -> (name, meaning, the driver's error class).
ALP_ERRORS: dict[int, tuple[str, str, type[DeviceError]]] = {
    1001: ("ALP_NOT_ONLINE", "the device was not found or is not ready", DeviceNotFoundError),
    1002: ("ALP_NOT_IDLE", "the device is not idle", DeviceRefusedError),
    1003: ("ALP_NOT_AVAILABLE", "the device id is not valid", DeviceRefusedError),
    1004: ("ALP_NOT_READY", "the device is already allocated", DeviceNotFoundError),
    1005: ("ALP_PARM_INVALID", "a parameter is invalid", DeviceRefusedError),
    1006: ("ALP_ADDR_INVALID", "user data could not be accessed", DeviceRefusedError),
    1007: ("ALP_MEMORY_FULL", "the requested memory is not available", DeviceRefusedError),
    1008: ("ALP_SEQ_IN_USE", "the sequence is in use", DeviceRefusedError),
    1009: ("ALP_HALTED", "the device was stopped during a data transfer", DeviceError),
    1010: ("ALP_ERROR_INIT", "initialisation error", DeviceError),
    1011: ("ALP_ERROR_COMM", "communication error", DeviceError),
    1012: ("ALP_DEVICE_REMOVED", "the device was removed", DeviceNotFoundError),
    1013: ("ALP_NOT_CONFIGURED", "the on-board FPGA is not configured", DeviceError),
    1014: ("ALP_LOADER_VERSION", "the USB loader driver does not support this function", DeviceError),
    1018: ("ALP_ERROR_POWER_DOWN", "waking the DMD from power-float failed", DeviceError),
    1019: ("ALP_DRIVER_VERSION", "the ALP drivers are out of date", DeviceError),
    1020: ("ALP_SDRAM_INIT", "SDRAM initialisation failed", DeviceError),
    1021: ("ALP_CONFIG_MISMATCH", "configuration mismatch", DeviceError),
    1999: ("ALP_ERROR_UNKNOWN", "unknown error", DeviceError),
}

#: Our declarations of the calls used, from the public API description (not Vialux's header).
ALP_CDEF = """
typedef unsigned long ALP_ID;
typedef struct {
    ALP_ID CurrentQueueId;
    ALP_ID SequenceId;
    unsigned long nWaitingSequences;
    unsigned long nSequenceCounter;
    unsigned long nSequenceCounterUnderflow;
    unsigned long nFrameCounter;
    unsigned long nPictureTime;
    unsigned long nFramesPerSubSequence;
    unsigned long nFlags;
} tAlpProjProgress;
long AlpDevAlloc(long DeviceNum, long InitFlag, ALP_ID *DeviceIdPtr);
long AlpDevInquire(ALP_ID DeviceId, long InquireType, long *UserVarPtr);
long AlpDevControl(ALP_ID DeviceId, long ControlType, long ControlValue);
long AlpDevHalt(ALP_ID DeviceId);
long AlpDevFree(ALP_ID DeviceId);
long AlpSeqAlloc(ALP_ID DeviceId, long BitPlanes, long PicNum, ALP_ID *SequenceIdPtr);
long AlpSeqControl(ALP_ID DeviceId, ALP_ID SequenceId, long ControlType, long ControlValue);
long AlpSeqInquire(ALP_ID DeviceId, ALP_ID SequenceId, long InquireType, long *UserVarPtr);
long AlpSeqTiming(ALP_ID DeviceId, ALP_ID SequenceId, long IlluminateTime, long PictureTime, long SynchDelay,
                  long SynchPulseWidth, long TriggerInDelay);
long AlpSeqPut(ALP_ID DeviceId, ALP_ID SequenceId, long PicOffset, long PicLoad, void *UserArrayPtr);
long AlpSeqFree(ALP_ID DeviceId, ALP_ID SequenceId);
long AlpProjControl(ALP_ID DeviceId, long ControlType, long ControlValue);
long AlpProjStart(ALP_ID DeviceId, ALP_ID SequenceId);
long AlpProjWait(ALP_ID DeviceId);
long AlpProjHalt(ALP_ID DeviceId);
long AlpProjInquireEx(ALP_ID DeviceId, long InquireType, void *UserStructPtr);
"""

#: The calls the driver needs the library to export.
ALP_FUNCTIONS = (
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

_ffi_lock = threading.Lock()
_ffi: cffi.FFI | None = None


def _alp_ffi() -> cffi.FFI:
    """One FFI with our declarations, parsed once per process."""
    global _ffi
    with _ffi_lock:
        if _ffi is None:
            ffi = cffi.FFI()
            ffi.cdef(ALP_CDEF, packed=True)
            _ffi = ffi
        return _ffi


def alp_error(call: str, code: int) -> DeviceError:
    """The typed error for an ALP return code: it names the call, the code's name and what it means."""
    name, meaning, error_class = ALP_ERRORS.get(code, ("unknown ALP code", "not in the API description", DeviceError))
    return error_class(f"{call} failed: {name} ({meaning})", code)


def pack_topdown(packed: npt.NDArray[np.uint8], width: int, height: int) -> npt.NDArray[np.uint8]:
    """Convert raw frames (``numpy.packbits`` of each flattened picture) to ALP_DATA_BINARY_TOPDOWN.

    The ALP format packs each row on its own, top row first, the leftmost mirror in bit 7. When the width is a
    multiple of 8 (every Vialux DMD: 1024, 1280, 1400, 1920, 2560 mirrors) the two layouts are the same bytes and
    this is a plain copy. Otherwise each row is padded to whole bytes with zero bits (the natural
    reading of the packed format; no ALP DMD has such a width, so this is checked against the fake only).

    The result is always a new array: a caller that reuses its buffer after :meth:`AlpDmd.prepare` cannot change
    what :meth:`AlpDmd.load` sends.
    """
    n = packed.shape[0]
    row_bytes = (width + 7) // 8
    if width % 8 == 0:
        return np.array(packed[:, : row_bytes * height], dtype=np.uint8, order="C", copy=True)
    bits = np.unpackbits(packed, axis=1, count=width * height).reshape(n, height, width)
    return np.packbits(bits, axis=2).reshape(n, height * row_bytes)


@dataclass(frozen=True)
class AlpSequenceData:
    """Pictures in the device's format (from :meth:`AlpDmd.prepare`): ``pictures`` has shape
    (n, height * ceil(width / 8)), uint8, C-contiguous."""

    pictures: npt.NDArray[np.uint8]
    width: int
    height: int

    @property
    def n_pictures(self) -> int:
        return int(self.pictures.shape[0])


@dataclass(frozen=True)
class AlpProgress:
    """What ``AlpProjInquireEx(ALP_PROJ_PROGRESS)`` reported (the fields the driver reads)."""

    sequence_id: int
    sequence_counter: int  # iterations still to do
    frame_counter: int  # frames left in the current iteration
    frames_per_sub_sequence: int
    picture_time_us: int
    flags: int

    @property
    def idle(self) -> bool:
        """No sequence running or waiting."""
        return bool(self.flags & ALP.FLAG_QUEUE_IDLE)


class AlpDmd(PatternDmd):
    """A Vialux DMD through its ALP-4.x library.

    Args:
        library: path of the ALP library (``alp4395.dll`` for ALP-4.3, ``alpV42.dll`` for 4.2, ``alpD41.dll``
            for 4.1; or the fake from ``firmware_sim.lab.fake_alp.build_fake_alp``).
        device_number: which ALP device to allocate (0: the first, ``ALP_DEFAULT``).
        synch_pulse_width_us: the synch-out (camera trigger) pulse per picture; None: half the picture time.
        synch_active_high: the synch-out polarity (ALP_LEVEL_HIGH, else ALP_LEVEL_LOW).
        trigger_in: None plays on the DMD's own clock (ALP_MASTER); ``"rising"`` or ``"falling"`` makes each
            picture wait for that edge on the DMD's trigger input (ALP_SLAVE, ALP_TRIGGER_EDGE). The edges must
            come no faster than the picture time.
        trigger_in_delay_us: the delay from a trigger-in edge to its picture (AlpSeqTiming's TriggerInDelay).
        poll_interval_s: how often :meth:`wait` reads the projection's progress.
    """

    def __init__(
        self,
        library: str | os.PathLike[str],
        device_number: int = 0,
        *,
        synch_pulse_width_us: int | None = None,
        synch_active_high: bool = True,
        trigger_in: str | None = None,
        trigger_in_delay_us: int = 0,
        poll_interval_s: float = 0.0005,
    ) -> None:
        if not isinstance(device_number, int) or device_number < 0:
            raise InvalidInputError(f"device_number must be an int >= 0, got {device_number!r}")
        if synch_pulse_width_us is not None and (not isinstance(synch_pulse_width_us, int) or synch_pulse_width_us < 1):
            raise InvalidInputError(f"synch_pulse_width_us must be an int >= 1 or None, got {synch_pulse_width_us!r}")
        if trigger_in not in (None, "rising", "falling"):
            raise InvalidInputError(f"trigger_in must be None, 'rising' or 'falling', got {trigger_in!r}")
        if isinstance(trigger_in_delay_us, bool) or not isinstance(trigger_in_delay_us, int) or trigger_in_delay_us < 0:
            raise InvalidInputError(f"trigger_in_delay_us must be an int >= 0, got {trigger_in_delay_us!r}")
        if not isinstance(synch_active_high, bool):
            raise InvalidInputError(f"synch_active_high must be true or false, got {synch_active_high!r}")
        if not (isinstance(poll_interval_s, (int, float)) and math.isfinite(poll_interval_s) and poll_interval_s > 0):
            raise InvalidInputError(f"poll_interval_s must be a positive number, got {poll_interval_s!r}")
        self.library_path = os.fspath(library)
        self.device_number = device_number
        self.synch_pulse_width_us = synch_pulse_width_us
        self.synch_active_high = synch_active_high
        self.trigger_in = trigger_in
        self.trigger_in_delay_us = trigger_in_delay_us
        self.poll_interval_s = float(poll_interval_s)
        self._ffi = _alp_ffi()
        self._lib: Any = None
        self._device: int | None = None
        self._sequence: int | None = None
        self._n_loaded = 0
        self._info: PatternDmdInfo | None = None
        self._playing = False
        self._played = False  # a play was started (progress counts it)
        self._shown_at_stop: int | None = None  # pictures shown when the last play ended (finished or halted)

    # --------------------------------------------------------------------------------------------- plumbing
    def _load_library(self) -> Any:
        try:
            lib = self._ffi.dlopen(self.library_path)
        except OSError as exc:
            raise LibraryLoadError(
                f"cannot load the Vialux ALP library {self.library_path!r} ({exc}); install the ALP-4.x API from "
                "Vialux (Windows: alp4395.dll for ALP-4.3, alpV42.dll for 4.2, alpD41.dll for 4.1) and pass its path"
            ) from exc
        for name in ALP_FUNCTIONS:
            try:
                getattr(lib, name)
            except AttributeError as exc:
                raise LibraryLoadError(
                    f"{self.library_path!r} does not export {name}: it is not an ALP-4.x library"
                ) from exc
        return lib

    def _call(self, name: str, *args: Any) -> None:
        code = int(getattr(self._lib, name)(*args))
        if code != ALP.OK:
            raise alp_error(name, code)

    def _dev_inquire(self, inquire_type: int) -> int:
        value = self._ffi.new("long *")
        self._call("AlpDevInquire", self._device, inquire_type, value)
        return int(value[0])

    def _require_open(self) -> PatternDmdInfo:
        if self._info is None or self._device is None:
            raise DeviceError("the ALP device is not open (call open() first)")
        return self._info

    def _free_sequence(self) -> None:
        sequence, self._sequence, self._n_loaded = self._sequence, None, 0
        if sequence is not None:
            self._call("AlpSeqFree", self._device, sequence)

    def _read_progress(self) -> AlpProgress:
        progress = self._ffi.new("tAlpProjProgress *")
        self._call("AlpProjInquireEx", self._device, ALP.PROJ_PROGRESS, progress)
        return AlpProgress(
            sequence_id=int(progress.SequenceId),
            sequence_counter=int(progress.nSequenceCounter),
            frame_counter=int(progress.nFrameCounter),
            frames_per_sub_sequence=int(progress.nFramesPerSubSequence),
            picture_time_us=int(progress.nPictureTime),
            flags=int(progress.nFlags),
        )

    def _shown(self, progress: AlpProgress) -> int:
        """Pictures shown so far from a progress report of a running play (one iteration)."""
        shown = progress.frames_per_sub_sequence - progress.frame_counter
        return max(0, min(self._n_loaded, shown))

    # ---------------------------------------------------------------------------------------- the interface
    def open(self) -> PatternDmdInfo:
        """Load the library, allocate the device and read its geometry, serial, memory and minimum picture time."""
        if self._info is not None:
            return self._info
        self._lib = self._load_library()
        device = self._ffi.new("ALP_ID *")
        self._call("AlpDevAlloc", self.device_number, ALP.DEFAULT, device)
        self._device = int(device[0])
        try:
            self._info = self._read_info()
            polarity = ALP.LEVEL_HIGH if self.synch_active_high else ALP.LEVEL_LOW
            self._call("AlpDevControl", self._device, ALP.SYNCH_POLARITY, polarity)
            if self.trigger_in is None:
                self._call("AlpProjControl", self._device, ALP.PROJ_MODE, ALP.MASTER)
            else:
                edge = ALP.EDGE_RISING if self.trigger_in == "rising" else ALP.EDGE_FALLING
                self._call("AlpDevControl", self._device, ALP.TRIGGER_EDGE, edge)
                self._call("AlpProjControl", self._device, ALP.PROJ_MODE, ALP.SLAVE)
        except BaseException:
            self._release_after_failed_open()
            raise
        logger.info("ALP device %d open: %s", self._device, self._info)
        return self._info

    def _release_after_failed_open(self) -> None:
        device, self._device, self._info = self._device, None, None
        code = int(self._lib.AlpDevFree(device))
        if code != ALP.OK:
            logger.warning("AlpDevFree after a failed open returned %d", code)

    def _read_info(self) -> PatternDmdInfo:
        width = self._dev_inquire(ALP.DEV_DISPLAY_WIDTH)
        height = self._dev_inquire(ALP.DEV_DISPLAY_HEIGHT)
        if width < 1 or height < 1:
            raise DeviceError(f"the ALP device reports {width}x{height} mirrors")
        serial = self._dev_inquire(ALP.DEVICE_NUMBER)
        version = self._dev_inquire(ALP.VERSION)
        memory = self._dev_inquire(ALP.AVAIL_MEMORY)
        # The minimum picture time belongs to a sequence (it depends on bit depth and mode): ask a probe sequence
        # set up as load() sets up its own.
        probe = self._ffi.new("ALP_ID *")
        self._call("AlpSeqAlloc", self._device, 1, 1, probe)
        try:
            self._call("AlpSeqControl", self._device, probe[0], ALP.BIN_MODE, ALP.BIN_UNINTERRUPTED)
            value = self._ffi.new("long *")
            self._call("AlpSeqInquire", self._device, probe[0], ALP.MIN_PICTURE_TIME, value)
            min_picture_time_us = int(value[0])
        finally:
            self._call("AlpSeqFree", self._device, probe[0])
        return PatternDmdInfo(
            model=f"Vialux ALP (version {version})",
            serial_number=str(serial),
            width=width,
            height=height,
            max_pictures=memory,
            min_picture_time_us=min_picture_time_us,
            counts_progress=True,
        )

    def prepare(self, packed: npt.NDArray[np.uint8]) -> AlpSequenceData:
        """Convert raw frames, shape (n, ceil(width*height/8)), to ALP_DATA_BINARY_TOPDOWN (host work only)."""
        info = self._require_open()
        if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 2:
            raise InvalidInputError(
                f"pictures must be a 2-D uint8 array, got {type(packed).__name__} "
                f"{getattr(packed, 'dtype', '')} {getattr(packed, 'shape', '')}"
            )
        frame_bytes = (info.width * info.height + 7) // 8
        if packed.shape[0] < 1 or packed.shape[1] != frame_bytes:
            raise InvalidInputError(
                f"pictures must have shape (n >= 1, {frame_bytes}) for {info.width}x{info.height} mirrors, "
                f"got {packed.shape}"
            )
        return AlpSequenceData(pack_topdown(packed, info.width, info.height), info.width, info.height)

    def _check_load(self, prepared: Any, n_pictures: int, picture_time_us: int) -> int:
        """Check a load before any call; returns the synch pulse width (µs) to use."""
        info = self._require_open()
        if not isinstance(prepared, AlpSequenceData) or (prepared.width, prepared.height) != (info.width, info.height):
            raise InvalidInputError("load() takes what prepare() of this device returned")
        row_bytes = (info.width + 7) // 8
        pictures = prepared.pictures
        if pictures.dtype != np.uint8 or pictures.ndim != 2 or pictures.shape[1] != row_bytes * info.height:
            raise InvalidInputError(
                f"prepared pictures have shape {pictures.shape}, not (n, {row_bytes * info.height})"
            )
        if not pictures.flags.c_contiguous:
            raise InvalidInputError("prepared pictures must be C-contiguous (as prepare() returns them)")
        if not isinstance(n_pictures, (int, np.integer)) or n_pictures != prepared.n_pictures:
            raise InvalidInputError(
                f"n_pictures ({n_pictures!r}) must equal the prepared pictures ({prepared.n_pictures})"
            )
        if not 1 <= n_pictures <= info.max_pictures:
            raise DeviceRefusedError(f"{n_pictures} pictures do not fit: the device holds 1 to {info.max_pictures}")
        if not isinstance(picture_time_us, (int, np.integer)) or picture_time_us < info.min_picture_time_us:
            raise DeviceRefusedError(
                f"picture_time_us must be an int >= the device's minimum {info.min_picture_time_us}, "
                f"got {picture_time_us!r}"
            )
        pulse_us = self.synch_pulse_width_us if self.synch_pulse_width_us is not None else max(1, picture_time_us // 2)
        if pulse_us > picture_time_us:
            raise DeviceRefusedError(f"synch pulse {pulse_us} us is longer than the picture time {picture_time_us} us")
        return int(pulse_us)

    def load(self, prepared: Any, n_pictures: int, picture_time_us: int) -> None:
        """Replace the loaded sequence: allocate, set format, mode and timing, then transfer the pictures."""
        pulse_us = self._check_load(prepared, n_pictures, picture_time_us)
        if self._playing:
            self.halt()
        self._free_sequence()
        sequence_ptr = self._ffi.new("ALP_ID *")
        self._call("AlpSeqAlloc", self._device, 1, int(n_pictures), sequence_ptr)
        sequence = int(sequence_ptr[0])
        try:
            self._call("AlpSeqControl", self._device, sequence, ALP.DATA_FORMAT, ALP.DATA_BINARY_TOPDOWN)
            self._call("AlpSeqControl", self._device, sequence, ALP.BIN_MODE, ALP.BIN_UNINTERRUPTED)
            self._call("AlpSeqControl", self._device, sequence, ALP.SEQ_REPEAT, 1)
            # Illuminate ALP_DEFAULT: the whole picture time (binary uninterrupted has no dark phase).
            self._call(
                "AlpSeqTiming",
                self._device,
                sequence,
                ALP.DEFAULT,
                int(picture_time_us),
                0,
                pulse_us,
                self.trigger_in_delay_us,
            )
            pictures = prepared.pictures  # held until AlpSeqPut returns (it copies the data)
            self._call("AlpSeqPut", self._device, sequence, 0, int(n_pictures), self._ffi.from_buffer(pictures))
        except BaseException:
            code = int(self._lib.AlpSeqFree(self._device, sequence))
            if code != ALP.OK:
                logger.warning("AlpSeqFree after a failed load returned %d", code)
            raise
        self._sequence, self._n_loaded = sequence, int(n_pictures)
        self._played, self._shown_at_stop = False, None
        logger.debug("loaded %d pictures at %d us into sequence %d", n_pictures, picture_time_us, sequence)

    def play(self) -> None:
        """Start the loaded sequence once (``AlpProjStart``)."""
        self._require_open()
        if self._sequence is None:
            raise DeviceError("nothing to play: load() a sequence first")
        if self._playing and not self._read_progress().idle:
            raise DeviceError("the sequence is still playing: wait() or halt() first")
        self._call("AlpProjStart", self._device, self._sequence)
        self._playing, self._played, self._shown_at_stop = True, True, None

    def wait(self, timeout_s: float) -> None:
        """Poll the progress until the play is over; CommunicationTimeoutError after ``timeout_s``."""
        if not (isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s >= 0):
            raise InvalidInputError(f"timeout_s must be a finite number >= 0, got {timeout_s!r}")
        self._require_open()
        if not self._playing:
            return
        deadline = time.monotonic() + timeout_s
        while True:
            progress = self._read_progress()
            if progress.idle:
                self._playing, self._shown_at_stop = False, self._n_loaded
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommunicationTimeoutError(
                    f"the ALP sequence did not finish within {timeout_s} s "
                    f"({self._shown(progress)} of {self._n_loaded} pictures shown)"
                )
            time.sleep(min(self.poll_interval_s, remaining))

    def progress(self) -> int | None:
        """Pictures of the current or last play shown so far (from the progress inquiry while it runs)."""
        self._require_open()
        if not self._played:
            return 0
        if not self._playing:
            return self._shown_at_stop
        progress = self._read_progress()
        if progress.idle:  # finished on its own since the last look
            self._playing, self._shown_at_stop = False, self._n_loaded
            return self._n_loaded
        return self._shown(progress)

    def halt(self) -> None:
        """Stop the projection (``AlpProjHalt``); nothing to do when closed or stopped."""
        if self._device is None:
            return
        self._call("AlpProjHalt", self._device)
        if self._playing:
            self._playing = False
            # What the counters say after the halt: the pictures shown before it stopped.
            self._shown_at_stop = self._shown(self._read_progress())

    def close(self) -> None:
        """Halt, free the sequence and the device; idempotent. The device is forgotten even if a call fails."""
        if self._device is None:
            return
        errors: list[DeviceError] = []
        for step in (self._halt_for_close, self._free_sequence):
            try:
                step()
            except DeviceError as exc:
                errors.append(exc)
                logger.warning("closing the ALP device: %s", exc)
        device, self._device, self._info, self._playing = self._device, None, None, False
        code = int(self._lib.AlpDevFree(device))
        if code != ALP.OK:
            errors.append(alp_error("AlpDevFree", code))
        if errors:
            raise errors[0]

    def _halt_for_close(self) -> None:
        self._call("AlpProjHalt", self._device)
        self._playing = False

    def __enter__(self) -> AlpDmd:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
