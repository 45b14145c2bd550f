"""The Opu facade: project binary data, real linear projections, status, settings, close safely.

    with opu_driver.open("sim://?seed=3") as opu:
        print(opu.info)
        Y = opu.transform(X, n_components=1000)   # X: (batch, n_features) of 0/1 -> raw camera intensities

An Opu drives a :class:`~opu_driver.devices.Rig` through the part interfaces only (DMD, camera, controller);
the retries go through the one retry engine (:func:`~opu_driver.acquisition.run_with_retries`) and the recovery
steps live in :mod:`opu_driver.opu.recovery`. Everything calibration, the service and the tools need is a
public method or property here.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..acquisition import AcquisitionCounters, Expected, SequenceRunner, check_frame, run_with_retries
from ..devices import CameraSettings, DamagedFrame, LinkCounters, Rig, Roi, TriggerMode
from ..encoding.layouts import Layout, make_layout
from ..errors import ConfigurationError, InvalidInputError, OpuError
from ..protocol import MAX_FEATURES, PixelFormat, bits_per_pixel, decode_pixels, output_dtype
from ..validation import check_int, check_number, is_int
from .recovery import Recovery
from .settings import OpuSettings

if TYPE_CHECKING:
    from .linear import LinearMode

__all__ = ["Opu", "OpuInfo", "OpuStatus", "FrameSequence", "MAX_RESULT_BYTES"]

_log = logging.getLogger(__name__)

_FEATURE_CHUNK_FRAMES = 1024
_SATURATION_WARNING = 1e-3  # speckle is exponential: a few saturated pixels are normal, many are not
_RAW_CHUNK_FRAMES = 32  # a raw frame is 129,960 bytes at the reference geometry, plus its expansion
_MIN_CHUNK_FRAMES = 64  # the shortest sequence the loss-based choice goes down to
_DRAIN_TIMEOUT_S = 0.05
_DRAIN_MAX_READS = 10_000
_COUNTER_WRAP = 1 << 32
MAX_RESULT_BYTES = 1 << 33
"""The largest result one call returns (8 GiB): a larger batch is refused from its shape, before anything is
allocated or sent (a broadcast view can declare 10**9 rows for free); split it into several calls."""


@dataclass(frozen=True)
class OpuInfo:
    """What the device says about itself, read at open."""

    manufacturer: str
    model: str
    serial_number: str
    firmware_version: str
    protocol_version: int
    dmd_width: int
    dmd_height: int
    camera_width: int
    camera_height: int
    pixel_formats: tuple[str, ...]
    sequence_capacity: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class OpuStatus:
    """The state of the light path and the camera, read from the device now (``Opu.status()``)."""

    laser_on: bool
    laser_power_mw: float
    shutter_open: bool
    interlock_ok: bool
    temperature_c: float
    trigger_mode: TriggerMode
    camera: CameraSettings


@dataclass(frozen=True)
class FrameSequence:
    """The camera frames of one displayed sequence, in arrival order (``Opu.display_sequence``).

    Attributes:
        camera_positions: each frame's place by the camera's own counter, counted from the first exposure of the
            sequence (a duplicated frame repeats a place, a lost one leaves a gap).
        shown: the index of the DMD frame each camera frame says it was exposed under (from its metadata), or -1
            when it names no frame of the sequence.
        pixels: (frames read, n_components) pixel values, uint8 for 8-bit formats, else uint16.
    """

    camera_positions: npt.NDArray[np.int64]
    shown: npt.NDArray[np.int64]
    pixels: np.ndarray


@dataclass
class _Plan:
    """The layout and ROI a transform uses; reused while the sizes stay the same."""

    layout: Layout
    roi: Roi
    n_components: int


class Opu:
    """An open OPU. Use :func:`opu_driver.open` to make one; close it (or use ``with``) to switch the laser off.

    Attributes:
        dmd, camera, controller: the parts (interfaces of :mod:`opu_driver.devices`). The controller is there for
            the light path (``laser_on``, ``laser_off``, ``reset_interlock``, ...); projections go through the
            Opu's own methods, which hold its lock, retry and restore.
        settings: the :class:`OpuSettings` it was opened with.
        calibration: the calibration record applied at open
            (:class:`~opu_driver.calibration.apply.AppliedCalibration`), or None.
    """

    def __init__(self, rig: Rig, settings: OpuSettings) -> None:
        self._rig = rig
        self.settings = settings
        self._lock = threading.RLock()
        self.dmd = rig.dmd
        self.camera = rig.camera
        self.controller = rig.controller
        self._runner = SequenceRunner(
            self.dmd,
            self.camera,
            settings.timeout_s,
            settings.max_lag_frames,
            policy=settings.retry_policy(),
            clear_link_faults=rig.clear_link_faults,
        )
        self._recovery = Recovery(
            rig, self._runner.tally, settings.reconnect_timeout_s, feature_mode=settings.frame_mode == "feature"
        )
        self._plan: _Plan | None = None
        self._info: OpuInfo | None = None
        self._closed = True
        self._linear: LinearMode | None = None
        self.calibration: Any = None
        self._frames_seen = 0  # DMD frames displayed since open, beyond the 32-bit counter
        self._frame_count_at: tuple[int, int] | None = None  # (counter value, resets and reconnects) last read

    # -- lifecycle ----------------------------------------------------------------------------------
    @classmethod
    def from_rig(cls, rig: Rig, settings: OpuSettings) -> Opu:
        """Open ``rig`` and return a ready Opu (settings applied, laser on and shutter open unless told
        otherwise). :func:`opu_driver.open` builds the rig from a URL and applies a stored calibration."""
        opu = cls(rig, settings)
        opu._open()
        return opu

    def _open(self) -> None:
        """Open the rig, apply the settings, switch the light on; closes everything again on any failure."""
        try:
            self._rig.open()
            self._closed = False
            if self.settings.frame_mode == "feature" and not self.dmd.supports_feature_frames:
                raise ConfigurationError(
                    f"{type(self.dmd).__name__} cannot expand feature frames through a layout "
                    "table: open with frame_mode='raw'"
                )
            self._info = self._read_info()
            self.camera.configure(self.settings.camera_settings())
            if self.settings.laser_power_mw is not None:
                self.controller.set_laser_power_mw(self.settings.laser_power_mw)
            if self.settings.laser_on:
                self.controller.laser_on()
                self.controller.open_shutter()
            # frames an earlier session left queued or unread must not reach this one (not a recovery)
            self._runner.recover(count=False)
        except BaseException:
            self.close()
            raise
        _log.info("opened %s %s (firmware %s)", self.info.model, self.info.serial_number, self.info.firmware_version)

    def _read_info(self) -> OpuInfo:
        identity = self.controller.identity
        camera = self.camera.geometry
        return OpuInfo(
            manufacturer=identity.manufacturer,
            model=identity.model,
            serial_number=identity.serial_number,
            firmware_version=identity.firmware_version,
            protocol_version=self._rig.info.protocol_version,
            dmd_width=self.dmd.geometry.width,
            dmd_height=self.dmd.geometry.height,
            camera_width=camera.width,
            camera_height=camera.height,
            pixel_formats=tuple(fmt.name for fmt in camera.pixel_formats),
            sequence_capacity=self.dmd.sequence_capacity,
        )

    def close(self) -> None:
        """Laser off, shutter closed, devices released. Safe to call twice; never raises (problems are logged)."""
        with self._lock:
            summary = not self._closed
            errors = self._rig.close()
            self._closed = True
            if summary:
                try:
                    self._log_fault_summary()
                except Exception as exc:  # diagnostics must never make close fail
                    errors.append(exc)
            if errors:
                # Closing must not raise (it runs in __exit__ and finally blocks); say what went wrong.
                _log.warning("errors while closing: %s", errors)

    def __enter__(self) -> Opu:
        self._require_open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def _require_open(self) -> None:
        if self._closed:
            raise OpuError("this Opu is closed")

    # -- status -------------------------------------------------------------------------------------
    @property
    def info(self) -> OpuInfo:
        """Model, serial number, firmware, geometry and pixel formats, as read from the device."""
        self._require_open()
        assert self._info is not None
        return self._info

    def status(self) -> OpuStatus:
        """The light path and camera settings as the device has them now (reads the controller)."""
        with self._lock:
            self._require_open()
            controller = self.controller
            return OpuStatus(
                laser_on=controller.laser_is_on,
                laser_power_mw=controller.laser_power_mw,
                shutter_open=controller.shutter_is_open,
                interlock_ok=controller.interlock_ok,
                temperature_c=controller.temperature_c,
                trigger_mode=controller.trigger_mode,
                camera=self.camera.settings,
            )

    @property
    def counters(self) -> AcquisitionCounters:
        """Sequences, frames sent and matched, discarded frames, faults seen, retries, recoveries (a snapshot).

        The controller's exchanges count their own retries and garbled replies in ``opu.controller.counters``.
        A summary of both is logged at close when anything went wrong.
        """
        self._require_open()
        return self._runner.counters

    @property
    def link_counters(self) -> LinkCounters:
        """Bytes sent to and received from the device so far, corrupt packets and cleared halts (a snapshot)."""
        return self._rig.link_counters

    @property
    def lag_frames(self) -> int:
        """The DMD-to-camera lag in frames the acquisition works with (learned from frame ids, or set)."""
        return self._runner.lag_frames

    @lag_frames.setter
    def lag_frames(self, lag_frames: int) -> None:
        """Start from a known lag (a calibration's); InvalidInputError outside 0..settings.max_lag_frames."""
        with self._lock:
            self._runner.lag_frames = lag_frames

    @property
    def camera_settings(self) -> CameraSettings:
        """The camera settings as last written or read (no traffic)."""
        self._require_open()
        return self.camera.settings

    @property
    def full_scale_dn(self) -> int:
        """The largest pixel value of the current pixel format (2^bits - 1)."""
        pixel_format = self.camera_settings.pixel_format
        assert pixel_format is not None
        return (1 << bits_per_pixel(pixel_format)) - 1

    @property
    def max_features(self) -> int:
        """The most features one frame may carry: a layout table's limit in frame_mode "feature", the DMD's
        mirrors in frame_mode "raw" (a table or layout of more is refused before anything is sent)."""
        n_mirrors = self.info.dmd_width * self.info.dmd_height
        return min(MAX_FEATURES, n_mirrors) if self.settings.frame_mode == "feature" else n_mirrors

    @property
    def laser_power_mw(self) -> float:
        """The laser setpoint, read from the controller."""
        self._require_open()
        return self.controller.laser_power_mw

    def set_laser_power_mw(self, power_mw: float) -> None:
        """Set the laser power; ConfigurationError outside the laser's range (nothing is sent)."""
        with self._lock:
            self._require_open()
            self.controller.set_laser_power_mw(power_mw)

    @property
    def device_time_us(self) -> int:
        """The device clock in microseconds (it follows displayed frames, not the wall clock)."""
        with self._lock:
            self._require_open()
            return self.dmd.device_time_us

    @property
    def frames_displayed(self) -> int:
        """DMD frames displayed since this Opu opened, counted without the 32-bit counter's wrap.

        The device's counter restarts from 0 when it resets; a reset the driver detected (or a reconnect) is taken
        into account, so the count never jumps by 2^32, but the frames shown between the last read and the reset
        are not counted. Read it at least once every 2^32 frames.
        """
        with self._lock:
            self._require_open()
            now = self.dmd.frame_count
            tally = self._runner.tally
            restarts = tally.resets_detected + tally.reconnects
            if self._frame_count_at is not None:
                before, restarts_before = self._frame_count_at
                self._frames_seen += now if restarts != restarts_before else (now - before) % _COUNTER_WRAP
            self._frame_count_at = (now, restarts)
            return self._frames_seen

    def _log_fault_summary(self) -> None:
        """One INFO line at close with every non-zero fault counter of the session (none when all went well)."""
        parts = [f"{name} {value}" for name, value in self._runner.counters.faults().items()]
        serial = self.controller.counters
        parts += [
            f"serial {name} {getattr(serial, name)}"
            for name in ("retries", "garbled_replies", "timeouts", "requests_failed")
            if getattr(serial, name)
        ]
        if parts:
            _log.info("faults met this session: %s", ", ".join(parts))

    @property
    def frame_matching(self) -> Any | None:
        """What the frame matching of a rig whose DMD sends no frame ids met so far (a lab rig's
        :class:`~opu_driver.devices.lab.adapters.MatchCounters`: plays, plays given up, frames lost in transport,
        triggers missed, damaged frames); None for a device whose camera frames name their DMD frame."""
        return getattr(self._rig, "match_counters", None)

    @property
    def emulator(self) -> Any | None:
        """The in-process emulated device for ``sim://`` URLs (ground truth for tests), else None."""
        return self._rig.emulator

    # -- settings -----------------------------------------------------------------------------------
    def configure_camera(
        self,
        *,
        exposure_us: int | None = None,
        frame_time_us: int | None = None,
        gain: float | None = None,
        pixel_format: PixelFormat | str | None = None,
    ) -> CameraSettings:
        """Change camera settings (None keeps a value), retried on a transient fault like a projection.

        Returns the settings now in force. The linear mode's reference is measured again for new settings.

        Raises:
            ConfigurationError: settings the camera cannot take (before anything is written).
        """
        if isinstance(pixel_format, str):
            if pixel_format.upper() not in PixelFormat.__members__:
                raise ConfigurationError(
                    f"pixel_format={pixel_format!r}; choose one of {list(PixelFormat.__members__)}"
                )
            pixel_format = PixelFormat[pixel_format.upper()]
        wanted = CameraSettings(
            exposure_us=exposure_us, frame_time_us=frame_time_us, gain=gain, pixel_format=pixel_format
        )
        with self._lock:
            self._require_open()
            self.camera.validate(wanted)  # refused before anything is sent
            result = run_with_retries(
                self.settings.retry_policy(),
                lambda: self.camera.configure(wanted),
                tally=self._runner.tally,
                recover=self._runner.recover,
                what="configuring the camera",
            )
            assert result is not None
            return result

    def set_layout(self, layout: str, macro_px: int | None = None) -> None:
        """Lay features out differently from now on ("lined", or "macro" with macro-pixels of ``macro_px``
        mirrors; None picks the largest that fits). The new table is uploaded by the next request.

        Raises:
            ConfigurationError: an unknown layout or a bad macro_px (nothing changes).
        """
        with self._lock:
            self._require_open()
            self.settings = replace(self.settings, layout=layout, macro_px=macro_px)

    # -- projection ---------------------------------------------------------------------------------
    def transform(self, X: npt.ArrayLike, n_components: int) -> np.ndarray:
        """Project binary vectors optically and return the raw camera intensities.

        Args:
            X: (batch, n_features) or (n_features,) array of 0/1 values, bool or integer dtype.
            n_components: outputs per vector: the first n_components pixels of the camera ROI, row-major.

        Returns:
            (batch, n_components) array (or (n_components,) for 1-D X), uint8 for MONO8 else uint16.

        Raises:
            InvalidInputError: before anything is sent, for non-binary values, float input, NaN, wrong shape,
                more features than mirrors, or n_components beyond the camera.
        """
        with self._lock:
            self._require_open()
            n_components = self._validate_components(n_components)
            X2, squeeze = self._validate_input(X, n_components * self._output_itemsize())
            out = self._acquire(X2, self._layout_for(X2.shape[1]), n_components, warn_saturated=True)
            return out[0] if squeeze else out

    def linear_transform(
        self,
        E: npt.ArrayLike,
        n_components: int,
        scheme: str = "four_frame",
        n_bits: int | None = None,
        refresh_reference: bool = False,
    ) -> np.ndarray:
        """Real linear projections B e of error vectors, float32 (batch, n_components).

        Ternary E (values -1, 0, 1) is projected directly; other real values through ``n_bits`` separated bit
        planes per sign (default 8). ``scheme`` is "four_frame" (exact) or "two_frame" (strong reference,
        half the frames, a small bias). B has unit-variance entries and is the same for every call with the same
        sizes and settings (it is fixed by the optics and the reference calibration, which is measured once and
        again when ``refresh_reference`` is True). All-zero vectors give zeros without using the device. See
        :mod:`opu_driver.opu.linear` for the physics and the scale.

        Raises:
            InvalidInputError: before anything is sent, for NaN or Inf, a wrong shape or dtype, a bad scheme or
                n_bits, or a signal that does not fit beside the reference.
            AcquisitionError: the reference measurement found no usable light (laser off, shutter closed,
                exposure too low).
            CommunicationError, InterlockError: as for :meth:`transform`.
        """
        with self._lock:
            self._require_open()
            n_bits, _ = self._check_linear_options(scheme, n_bits, None)
            E2, squeeze = self._as_error_batch(E)
            n_components = self._validate_components(n_components)
            _check_result_bytes(E2.shape[0], n_components * 4)
            self._check_values(E2)
            out = self._project_linear([E2], n_components, scheme, n_bits, refresh_reference, None)[0]
            return out[0] if squeeze else out

    def linear_transform_many(
        self,
        batches: Sequence[npt.ArrayLike],
        n_components: int,
        scheme: str = "four_frame",
        n_bits: int | None = None,
        *,
        refresh_reference: bool = False,
        max_call_bytes: int | None = None,
    ) -> list[np.ndarray]:
        """:meth:`linear_transform` of several 2-D batches of the same width, in as few device calls as fit.

        Each result equals the batch's own ``linear_transform`` (each batch's bit planes are scaled on that batch
        alone, and a row depends only on its own frames), so requests of several callers can share device calls
        (the OPU service does). ``max_call_bytes`` bounds one call's working memory (see
        :func:`~opu_driver.opu.linear.call_bytes`). Every batch is checked before anything is sent.
        """
        with self._lock:
            self._require_open()
            n_bits, max_call_bytes = self._check_linear_options(scheme, n_bits, max_call_bytes)
            n_components = self._validate_components(n_components)
            checked = []
            for E in batches:
                E2, squeeze = self._as_error_batch(E)
                if squeeze:
                    raise InvalidInputError(f"each batch must have shape (batch, n_features), got {E2.shape[1:]}")
                checked.append(E2)
            widths = {E2.shape[1] for E2 in checked}
            if len(widths) > 1:
                raise InvalidInputError(f"every batch must have the same number of features, got {sorted(widths)}")
            _check_result_bytes(sum(E2.shape[0] for E2 in checked), n_components * 4)
            for E2 in checked:
                self._check_values(E2)
            return self._project_linear(checked, n_components, scheme, n_bits, refresh_reference, max_call_bytes)

    @staticmethod
    def _check_linear_options(
        scheme: str, n_bits: int | None, max_call_bytes: int | None
    ) -> tuple[int | None, int | None]:
        """The options checked, as Python ints (a NumPy integer such as ``np.int16(8)`` would overflow later)."""
        from .linear import PROJECTION_SCHEMES

        if scheme not in PROJECTION_SCHEMES:
            raise InvalidInputError(f"scheme={scheme!r}; choose one of {PROJECTION_SCHEMES}")
        if n_bits is not None:
            n_bits = check_int(n_bits, "n_bits", low=1, high=16)
        if max_call_bytes is not None:
            max_call_bytes = check_int(max_call_bytes, "max_call_bytes", low=1)
        return n_bits, max_call_bytes

    def _project_linear(
        self,
        batches: list[np.ndarray],
        n_components: int,
        scheme: str,
        n_bits: int | None,
        refresh_reference: bool,
        max_call_bytes: int | None,
    ) -> list[np.ndarray]:
        """The linear mode's projection of checked batches (all of one width)."""
        if not batches:
            return []
        linear = self.linear_mode
        n_features = batches[0].shape[1]
        linear.layout(n_features)  # refuses a signal that does not fit beside the reference
        if refresh_reference:
            linear.calibration(n_features, n_components, refresh=True)
        return linear.project_many(batches, n_components, scheme, n_bits, max_call_bytes)

    @staticmethod
    def _as_error_batch(E: npt.ArrayLike) -> tuple[np.ndarray, bool]:
        """E as a real 2-D array, and whether it was 1-D; InvalidInputError otherwise (finiteness is checked later)."""
        try:
            array = np.asarray(E) if not isinstance(E, np.ma.MaskedArray) else None
        except Exception:  # ragged lists, an object whose __array__ raises, and the like
            array = None
        if array is None or array.dtype.kind not in "biuf":
            raise InvalidInputError("E must be a real-valued numeric array")
        squeeze = array.ndim == 1
        E2 = array[None, :] if squeeze else array
        if E2.ndim != 2 or E2.shape[1] == 0:
            raise InvalidInputError(f"E must have shape (batch, n_features), got {array.shape}")
        return E2, squeeze

    @staticmethod
    def _check_values(E2: np.ndarray) -> None:
        """InvalidInputError for NaN or Inf, or values so large that their projections would overflow float32
        (called after the size checks: a huge broadcast view is never scanned)."""
        if E2.dtype.kind == "f" and not np.isfinite(E2).all():
            raise InvalidInputError("E contains NaN or Inf")
        if E2.size == 0:
            return
        # An output sums n_features terms of |B| |e| with unit-variance B (|B| < 8 in practice): keep that finite.
        largest = float(np.abs(E2).max())
        limit = float(np.finfo(np.float32).max) / (8.0 * E2.shape[1])
        if largest > limit:
            raise InvalidInputError(
                f"E holds values up to {largest:g}: their projections over {E2.shape[1]} features would overflow "
                f"float32 (values up to about {limit:.3g} are safe); scale E down"
            )

    @property
    def linear_mode(self) -> LinearMode:
        """The :class:`~opu_driver.opu.linear.LinearMode` behind ``linear_transform`` (its reference
        calibrations)."""
        from .linear import LinearMode

        if self._linear is None:
            self._linear = LinearMode(self)
        return self._linear

    def acquire(
        self, bits: npt.ArrayLike, layout: Layout, n_components: int, *, warn_saturated: bool = True
    ) -> np.ndarray:
        """Raw intensities of binary feature frames displayed through a layout of the caller's choice.

        ``transform`` lays features out as the settings say; calibration routines (the linear mode's
        reference, the matrix estimate's two references) need their own layouts, for example a
        :class:`~opu_driver.encoding.layouts.SplitLayout`. ``bits`` is (batch, layout.n_table_features).
        ``warn_saturated`` False: the caller measures saturation itself (an exposure sweep saturates on
        purpose), so no warning is logged; ``counters.saturated_frames`` still counts.

        Raises:
            InvalidInputError: before anything is sent, for a layout made for another DMD, frames whose width is
                not the layout's table width, non-binary values, or n_components beyond the camera.
        """
        with self._lock:
            self._require_open()
            self._check_layout(layout)
            n_components = self._validate_components(n_components)
            bits2, _ = self._validate_input(bits, n_components * self._output_itemsize())
            if bits2.shape[1] != layout.n_table_features:
                raise InvalidInputError(
                    f"frames have {bits2.shape[1]} features; the layout's table has {layout.n_table_features}"
                )
            return self._acquire(bits2, layout, n_components, warn_saturated=warn_saturated)

    def display_sequence(self, X: npt.ArrayLike, n_components: int, timeout_s: float = 5.0) -> FrameSequence:
        """Display binary vectors as ONE sequence through the transform's layout and return every camera frame
        that arrives, in arrival order, with where the camera's counter and the frame metadata place it.

        Nothing is matched by frame id and nothing is retried: this is for measuring the frame pipeline itself
        (the latency calibration compares what the light shows with what the metadata says). The batch must fit
        one sequence (``info.sequence_capacity`` and the camera buffer). Frames that never arrive leave their
        places empty; a timeout raises CommunicationTimeoutError after ``timeout_s`` plus the sequence's display
        time, and the device is left clean for the next request. The device's camera settings, layout table and
        light are checked (and restored) first; a frame exposed under other settings raises ProtocolError; a damaged
        frame is counted (``counters.corrupt_packets``) and leaves its place empty.

        Raises:
            InvalidInputError: before anything is sent, as for :meth:`transform`, or a batch larger than one
                sequence holds.
        """
        with self._lock:
            self._require_open()
            n_components = self._validate_components(n_components)
            X2, _ = self._validate_input(X, n_components * self._output_itemsize())
            timeout_s = check_number(timeout_s, "timeout_s", low=0, low_open=True)
            layout = self._layout_for(X2.shape[1])
            self._prepare(layout, n_components)
            capacity = self._sequence_capacity()
            if X2.shape[0] > capacity:
                raise InvalidInputError(f"{X2.shape[0]} frames exceed the {capacity} one sequence holds")
            camera_settings = self.camera.settings
            roi, pixel_format = camera_settings.roi, camera_settings.pixel_format
            exposure_us, frame_time_us = camera_settings.exposure_us, camera_settings.frame_time_us
            # An open camera's settings are complete: read from the device at open, merged on every configure.
            assert roi is not None and pixel_format is not None
            assert exposure_us is not None and frame_time_us is not None
            n_pixels = self.roi_for(n_components).n_pixels
            expected = Expected(roi, pixel_format, exposure_us)
            first_id = self._runner.reserve_ids(len(X2))
            positions: list[int] = []
            shown: list[int] = []
            rows: list[np.ndarray] = []
            try:
                # What a reset may have lost is checked on the device itself (one sequence, no retry to repair it).
                self._recovery.restore(layout)
                self.dmd.abort()
                self.camera.drain(_DRAIN_TIMEOUT_S, _DRAIN_MAX_READS)
                camera_first = self.camera.frame_count
                if self.settings.frame_mode == "feature":
                    self.dmd.queue_feature_frames(first_id, np.packbits(X2.astype(np.bool_, copy=False), axis=1))
                else:  # mirror pictures expanded on the host, as transform does in raw mode
                    self.dmd.queue_raw_frames(first_id, layout.expand(X2))
                self.dmd.start()
                wait_s = timeout_s + len(X2) * frame_time_us * 1e-6
                for frame in self.camera.read_frames(len(X2), wait_s):
                    if isinstance(frame, DamagedFrame):  # lost: its place stays empty
                        self._runner.tally.corrupt_packets += 1
                        continue
                    check_frame(frame, expected)  # a frame of other settings is a typed error, never decoded
                    positions.append((frame.camera_frame_id - camera_first) % _COUNTER_WRAP)
                    index = (frame.dmd_frame_id - first_id) % _COUNTER_WRAP
                    shown.append(index if index < len(X2) else -1)
                    rows.append(decode_pixels(pixel_format, frame.pixels, n_pixels)[:n_components])
            except BaseException:
                self._runner.recover()
                raise
            dtype = output_dtype(pixel_format)
            pixels = np.stack(rows).astype(dtype, copy=False) if rows else np.zeros((0, n_components), dtype)
            return FrameSequence(np.array(positions, dtype=np.int64), np.array(shown, dtype=np.int64), pixels)

    # -- checks -------------------------------------------------------------------------------------
    def _output_itemsize(self) -> int:
        pixel_format = self.camera.settings.pixel_format
        assert pixel_format is not None
        return int(np.dtype(output_dtype(pixel_format)).itemsize)

    def _check_layout(self, layout: Layout) -> None:
        if not isinstance(layout, Layout):
            raise InvalidInputError(f"layout must be a Layout, got {type(layout).__name__}")
        if (layout.dmd_width, layout.dmd_height) != (self.info.dmd_width, self.info.dmd_height):
            raise InvalidInputError(
                f"the layout is for a {layout.dmd_width}x{layout.dmd_height} DMD; this one is "
                f"{self.info.dmd_width}x{self.info.dmd_height}"
            )

    def _validate_input(self, X: npt.ArrayLike, row_bytes: int = 0) -> tuple[np.ndarray, bool]:
        """X as a 2-D binary array and whether it was 1-D; ``row_bytes`` (the result's bytes per row) bounds the
        batch by MAX_RESULT_BYTES before the values are looked at."""
        if isinstance(X, np.ma.MaskedArray):
            raise InvalidInputError("X is a masked array: fill or drop the masked entries first")
        if not isinstance(X, np.ndarray):
            try:
                X = np.asarray(X)
            except Exception as exc:
                raise InvalidInputError(f"X is not array-like: {type(X).__name__}") from exc
        if X.dtype.kind not in "biu":
            raise InvalidInputError(
                f"X must hold 0/1 values as bool or integers, got dtype {X.dtype}; threshold real-valued data "
                "first (for example X > 0)"
            )
        squeeze = X.ndim == 1
        if squeeze:
            X = X[None, :]
        if X.ndim != 2:
            raise InvalidInputError(f"X must have shape (batch, n_features), got {X.shape}")
        if X.shape[1] == 0:
            raise InvalidInputError("X has zero features")
        n_mirrors = self.info.dmd_width * self.info.dmd_height
        if X.shape[1] > n_mirrors:
            raise InvalidInputError(f"{X.shape[1]} features exceed the {n_mirrors} mirrors of the DMD")
        if self.settings.frame_mode == "feature" and X.shape[1] > MAX_FEATURES:
            raise InvalidInputError(
                f"{X.shape[1]} features exceed the {MAX_FEATURES} a layout table holds; use frame_mode='raw'"
            )
        _check_result_bytes(X.shape[0], row_bytes)
        if X.dtype != np.bool_:
            # Chunked so that checking a huge batch does not double its memory.
            step = max(1, (1 << 24) // max(1, X.shape[1]))
            for start in range(0, X.shape[0], step):
                part = X[start : start + step]
                if ((part != 0) & (part != 1)).any():
                    bad = part[(part != 0) & (part != 1)][0]
                    raise InvalidInputError(f"X must be binary (0 or 1); found the value {bad!r}")
        return X, squeeze

    def _validate_components(self, n_components: int) -> int:
        n_pixels = self.info.camera_width * self.info.camera_height
        if not is_int(n_components):
            raise InvalidInputError(f"n_components must be an integer, got {n_components!r}")
        if not 1 <= n_components <= n_pixels:
            raise InvalidInputError(f"n_components={n_components} outside 1..{n_pixels} (camera pixels)")
        return int(n_components)

    def roi_for(self, n_components: int) -> Roi:
        """The centred, nearly square camera region whose first n_components pixels are the outputs.

        Raises:
            InvalidInputError: n_components not an integer within 1..(camera pixels).
        """
        n_components = self._validate_components(n_components)
        cam_w, cam_h = self.info.camera_width, self.info.camera_height
        height = min(cam_h, math.isqrt(n_components - 1) + 1)
        width = -(-n_components // height)
        if width > cam_w:  # a sensor narrower than tall: fill its width, then take the rows needed
            width = cam_w
            height = -(-n_components // width)  # <= cam_h because n_components <= cam_w * cam_h
        return Roi((cam_w - width) // 2, (cam_h - height) // 2, width, height)

    def layout_for(self, n_features: int) -> Layout:
        """The layout ``transform`` uses for n_features under the settings (``layout``, ``macro_px``)."""
        with self._lock:
            self._require_open()
            check_int(n_features, "n_features", low=1, high=self.info.dmd_width * self.info.dmd_height)
            return self._layout_for(int(n_features))

    def _layout_for(self, n_features: int) -> Layout:
        """The layout of the settings for n_features (reused while the size stays the same); only computes."""
        plan = self._plan
        if plan is not None and plan.layout.n_features == n_features and plan.layout.kind == self.settings.layout:
            return plan.layout
        layout_options = {"macro_px": self.settings.macro_px} if self.settings.layout == "macro" else {}
        return make_layout(
            self.settings.layout, n_features, self.info.dmd_width, self.info.dmd_height, **layout_options
        )

    # -- the device work ----------------------------------------------------------------------------
    def _acquire(self, X: np.ndarray, layout: Layout, n_components: int, warn_saturated: bool) -> np.ndarray:
        """Prepare the device for this layout and region, then project every row of X into a new array."""
        pixel_format = self.camera.settings.pixel_format
        assert pixel_format is not None
        out = np.empty((X.shape[0], n_components), dtype=output_dtype(pixel_format))
        if X.shape[0]:
            self._prepare(layout, n_components)
            self._project(X, out, warn_saturated)
        return out

    def _prepare(self, layout: Layout, n_components: int) -> None:
        """Upload the layout and set the ROI when they change; nothing is sent when they do not.

        Both writes are idempotent, so a timeout or a stalled endpoint during them is retried like a sequence
        (``settings.retries``, through the one retry engine): halts cleared, queue aborted, camera drained, then
        the writes again; after an unplug the device is reconnected and its state restored first.
        """
        roi = self.roi_for(n_components)
        reconnected = {"pending": False}

        def reconnect() -> None:
            self._recovery.reconnect()
            reconnected["pending"] = True

        def attempt() -> None:
            # Everything above only computed; from here on the device is written.
            if reconnected["pending"]:
                self._recovery.restore(layout)  # the device came back powered up afresh
                reconnected["pending"] = False
            if self.camera.settings != self.camera.wanted_settings:
                # an earlier write or restore failed half-way: put back what the driver wants first
                _log.warning("camera settings differ from the wanted ones after a failed write: writing again")
                self.camera.restore()
            if self.camera.settings.roi != roi:
                self.camera.configure(CameraSettings(roi=roi))
            if self.settings.frame_mode == "feature" and not self.dmd.layout_is_loaded(layout):
                self.dmd.load_layout(layout)

        run_with_retries(
            self.settings.retry_policy(),
            attempt,
            tally=self._runner.tally,
            recover=self._runner.recover,
            reconnect=reconnect,
            what="loading the layout or region",
        )
        self._plan = _Plan(layout, roi, n_components)

    def _sequence_capacity(self) -> int:
        """Frames one sequence may hold: the sequence memory and the camera's buffer must both take them."""
        return max(1, min(self.dmd.sequence_capacity, self.camera.fifo_frames()))

    def _chunk_frames(self, capacity: int) -> int:
        """Frames per sequence: what the user asked (``chunk_frames``), else chosen from the loss measured so far;
        always leaving room in a sequence for the lag's flush frames.

        Frames lost one by one cost only themselves whatever the sequence's length. What ends a sequence (a
        timeout, a stall, a reset: a re-run of the attempt) costs a drain and a restore each time, so the default
        length is cut to keep such faults to about one in four sequences: ``0.25 / rate``, the rate being re-runs
        per frame sent so far in this session, between 64 frames and the default (1024 feature frames, 32 raw).
        """
        limit = _RAW_CHUNK_FRAMES if self.settings.frame_mode == "raw" else _FEATURE_CHUNK_FRAMES
        if self.settings.chunk_frames:
            wanted = self.settings.chunk_frames
        else:
            tally = self._runner.tally
            rate = tally.retries / tally.frames_sent if tally.frames_sent else 0.0
            wanted = limit if rate <= 0 else max(min(limit, _MIN_CHUNK_FRAMES), min(limit, int(0.25 / rate)))
        return max(1, min(wanted, capacity - self._runner.lag_frames))

    def _shortest_sequence_frames(self) -> int:
        """The fewest frames a sequence of the coming calls may hold, whatever loss they meet (the linear mode's
        light pilots go at most this far apart, so that every sequence shows one)."""
        capacity = self._sequence_capacity()
        limit = _RAW_CHUNK_FRAMES if self.settings.frame_mode == "raw" else _FEATURE_CHUNK_FRAMES
        wanted = self.settings.chunk_frames or min(limit, _MIN_CHUNK_FRAMES)
        return max(1, min(wanted, capacity - self._runner.lag_frames))

    def _project(self, X: np.ndarray, out: np.ndarray, warn_saturated: bool) -> None:
        assert self._plan is not None
        plan = self._plan
        n_components = plan.n_components
        settings = self.camera.settings
        pixel_format = settings.pixel_format
        assert pixel_format is not None and settings.exposure_us is not None
        n_pixels = plan.roi.n_pixels
        feature_mode = self.settings.frame_mode == "feature"
        send = self.dmd.queue_feature_frames if feature_mode else self.dmd.queue_raw_frames
        layout = plan.layout
        capacity = self._sequence_capacity()
        expected = Expected(plan.roi, pixel_format, settings.exposure_us)
        saturated_before = self._runner.tally.saturated_frames
        self._recovery.start_request()
        restore = self._recovery.restorer(layout)

        start = 0
        while start < X.shape[0]:
            block = X[start : start + self._chunk_frames(capacity)]
            if feature_mode:
                packed = np.packbits(block.astype(np.bool_, copy=False), axis=1)
            else:
                packed = layout.expand(block)

            def queue(indices: np.ndarray, first_id: int, packed: np.ndarray = packed) -> None:
                # a run of consecutive indices is a view; scattered ones (frames shown again) are gathered
                lo, hi = int(indices[0]), int(indices[-1]) + 1
                send(first_id, packed[lo:hi] if hi - lo == len(indices) else packed[indices])

            def queue_blank(first_id: int, count: int, width: int = packed.shape[1]) -> None:
                send(first_id, np.zeros((count, width), dtype=np.uint8))

            def sink(index: int, frame: Any, offset: int = start) -> None:
                if frame.dark:
                    self._recovery.check_dark()
                pixels = decode_pixels(pixel_format, frame.pixels, n_pixels)
                out[offset + index] = pixels[:n_components]

            self._runner.run(
                block.shape[0],
                queue,
                queue_blank,
                sink,
                expected,
                capacity,
                restore=restore,
                reconnect=self._recovery.reconnect,
            )
            start += block.shape[0]
        if warn_saturated and self._runner.tally.saturated_frames > saturated_before:
            full_scale = (1 << bits_per_pixel(pixel_format)) - 1
            fraction = np.count_nonzero(out >= full_scale) / out.size
            if fraction > _SATURATION_WARNING:
                _log.warning(
                    "%.2f%% of the outputs are saturated: lower exposure_us, gain or laser power", 100 * fraction
                )


def _check_result_bytes(batch: int, row_bytes: int) -> None:
    """Refuse a batch whose result would exceed MAX_RESULT_BYTES (from the shape alone: nothing is allocated)."""
    if batch * row_bytes > MAX_RESULT_BYTES:
        raise InvalidInputError(
            f"a batch of {batch} would give a result of {batch * row_bytes} bytes, above the limit of "
            f"{MAX_RESULT_BYTES}; split it into smaller calls"
        )
