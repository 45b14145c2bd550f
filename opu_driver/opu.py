"""The Opu facade: open a device by URL, project binary data, read status, close safely.

    with opu_driver.open("sim://?seed=3") as opu:
        print(opu.info)
        Y = opu.transform(X, n_components=1000)   # X: (batch, n_features) of 0/1 -> raw camera intensities
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
import weakref
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from .acquisition import AcquisitionCounters, Expected, RetryPolicy, SequenceRunner
from .connection import Connection, connect
from .devices.camera import Camera, CameraSettings, Roi
from .devices.controller import DEFAULT_MAX_RETRIES, Controller
from .devices.dmd import Dmd
from .devices.usb_link import UsbLink
from .transport.usb import StallError
from .encoding.layouts import LAYOUT_KINDS, Layout, make_layout
from .errors import (
    AcquisitionError,
    CommunicationTimeoutError,
    ConfigurationError,
    ConnectionLostError,
    DeviceResetError,
    InterlockError,
    InvalidInputError,
    OpuError,
    ProtocolError,
)
from .protocol import MAX_FEATURES, PixelFormat, Register, bits_per_pixel, decode_pixels, output_dtype

__all__ = ["Opu", "OpuInfo", "OpuSettings", "open"]

_log = logging.getLogger(__name__)

FRAME_MODES = ("feature", "raw")
_FEATURE_CHUNK_FRAMES = 1024
_SATURATION_WARNING = 1e-3  # speckle is exponential: a few saturated pixels are normal, many are not
_RAW_CHUNK_FRAMES = 32  # a raw frame is 129,960 bytes at the reference geometry, plus its expansion
MAX_RESULT_BYTES = 1 << 33
"""The largest result one call returns (8 GiB): a larger batch is refused from its shape, before anything is
allocated or sent (a broadcast view can declare 10**9 rows for free); split it into several calls."""


@dataclass(frozen=True)
class OpuSettings:
    """How the Opu drives the device. ``None`` keeps the device's own value.

    Attributes:
        layout: "lined" (features spread over the whole mirror array) or "macro" (square macro-pixels).
        macro_px: side of a macro-pixel in mirrors for layout "macro"; None picks the largest that fits.
        frame_mode: "feature" (layout table uploaded once, n_features bits per frame) or "raw" (full mirror
            bitmaps, 129,960 bytes per frame at the reference geometry).
        exposure_us, frame_time_us, gain, pixel_format: camera settings.
        laser_power_mw: laser setpoint; laser_on: switch the laser on and open the shutter at open.
        chunk_frames: frames per sequence (memory stays bounded whatever the batch); None = as many as the
            device's sequence memory and camera FIFO hold, at most 1024.
        timeout_s: margin on top of the expected sequence duration for every blocking wait.
        max_lag_frames: the largest DMD-to-camera lag the driver will flush through before giving up.
        calibration: "auto" applies the newest matching record of the default calibration store at open; a path
            names a store directory or one record's JSON file; None opens uncalibrated. See
            :mod:`opu_driver.calibration.apply`.
        calibration_max_age_s: a record older than this is applied with a CalibrationWarning.
        drift_check: at open, re-project the record's drift probes and warn when they no longer match.
        retries: how many times a sequence that lost or spoiled camera frames (timeout, stall, corrupt packet,
            dropped frames, device reset) is run again for the frames still missing, after abort, drain and a
            check that the device still holds the layout, camera settings and light path; 0 raises the first
            such fault. The controller's serial exchanges that are safe to repeat get as many retries, at most 2
            (switching the light off at close always gets 2). The default, 2, lets a long run ride out a
            transient fault; every retry is counted and logged.
            See :class:`~opu_driver.acquisition.RetryPolicy` and docs/reliability.md.
        retry_backoff_s: wait before the first retry, doubled for each further one (at most 0.5 s).
        reconnect_timeout_s: when the USB device is unplugged during or between requests, a request with
            retries left waits this long for it to be plugged back (the same VID:PID and serial number), reopens
            it, restores its state (camera settings, layout, and the laser, shutter and power as the driver last
            set them: ``controller.wanted``) and re-runs the missing frames; counted in ``counters.reconnects``. 0 disables: the loss raises ConnectionLostError at once.
    """

    layout: str = "lined"
    macro_px: int | None = None
    frame_mode: str = "feature"
    exposure_us: int | None = None
    frame_time_us: int | None = None
    gain: float | None = None
    pixel_format: str | None = None
    laser_power_mw: float | None = None
    laser_on: bool = True
    chunk_frames: int | None = None
    timeout_s: float = 5.0
    max_lag_frames: int = 64
    calibration: str | os.PathLike[str] | None = "auto"
    calibration_max_age_s: float = 7 * 86400.0
    drift_check: bool = True
    retries: int = 2
    retry_backoff_s: float = 0.01
    reconnect_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        for name in ("exposure_us", "frame_time_us", "chunk_frames", "macro_px"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))):
                raise ConfigurationError(f"{name} must be an integer, got {value!r}")
        if isinstance(self.max_lag_frames, bool) or not isinstance(self.max_lag_frames, (int, np.integer)):
            raise ConfigurationError(f"max_lag_frames must be an integer, got {self.max_lag_frames!r}")
        for name in ("gain", "laser_power_mw", "timeout_s"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer))
                                      or not math.isfinite(value)):
                raise ConfigurationError(f"{name} must be a finite number, got {value!r}")
        if self.exposure_us is not None and not 10 <= self.exposure_us <= 1_000_000:
            raise ConfigurationError(f"exposure_us={self.exposure_us} outside 10..1000000")
        if self.frame_time_us is not None and not 60 <= self.frame_time_us <= 0xFFFFFFFF:
            raise ConfigurationError(f"frame_time_us={self.frame_time_us} outside 60..{0xFFFFFFFF}")
        if self.layout not in LAYOUT_KINDS:
            raise ConfigurationError(f"layout={self.layout!r}; choose one of {sorted(LAYOUT_KINDS)}")
        if self.frame_mode not in FRAME_MODES:
            raise ConfigurationError(f"frame_mode={self.frame_mode!r}; choose one of {FRAME_MODES}")
        if self.pixel_format is not None and (
            not isinstance(self.pixel_format, str) or self.pixel_format.upper() not in PixelFormat.__members__
        ):
            raise ConfigurationError(
                f"pixel_format={self.pixel_format!r}; choose one of {list(PixelFormat.__members__)}"
            )
        if self.chunk_frames is not None and self.chunk_frames < 1:
            raise ConfigurationError("chunk_frames must be >= 1")
        if not self.timeout_s > 0:
            raise ConfigurationError("timeout_s must be > 0")
        if not 0 <= self.max_lag_frames <= 1024:
            raise ConfigurationError("max_lag_frames must be within 0..1024")
        if self.calibration is not None and not isinstance(self.calibration, (str, os.PathLike)):
            raise ConfigurationError(f"calibration must be 'auto', a path or None, got {self.calibration!r}")
        if isinstance(self.calibration_max_age_s, bool) or not isinstance(
                self.calibration_max_age_s, (int, float, np.integer, np.floating)) or not self.calibration_max_age_s > 0:
            raise ConfigurationError(f"calibration_max_age_s must be a number > 0, got {self.calibration_max_age_s!r}")
        if not isinstance(self.drift_check, bool):
            raise ConfigurationError(f"drift_check must be True or False, got {self.drift_check!r}")
        if isinstance(self.retries, bool) or not isinstance(self.retries, (int, np.integer)) \
                or not 0 <= self.retries <= 100:
            raise ConfigurationError(f"retries must be an integer within 0..100, got {self.retries!r}")
        if isinstance(self.retry_backoff_s, bool) or not isinstance(
                self.retry_backoff_s, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(self.retry_backoff_s) and 0 <= self.retry_backoff_s <= 10):
            raise ConfigurationError(f"retry_backoff_s must be a number within 0..10, got {self.retry_backoff_s!r}")
        if isinstance(self.reconnect_timeout_s, bool) or not isinstance(
                self.reconnect_timeout_s, (int, float, np.integer, np.floating)) \
                or not (math.isfinite(self.reconnect_timeout_s) and 0 <= self.reconnect_timeout_s <= 600):
            raise ConfigurationError(
                f"reconnect_timeout_s must be a number within 0..600, got {self.reconnect_timeout_s!r}")

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(retries=int(self.retries), backoff_s=float(self.retry_backoff_s),
                           reconnect_timeout_s=float(self.reconnect_timeout_s))

    def explicit_record_settings(self) -> dict[str, Any]:
        """The settings given explicitly, as a calibration record stores them (the keys a record must match)."""
        given = {"exposure_us": self.exposure_us, "frame_time_us": self.frame_time_us, "gain": self.gain,
                 "pixel_format": self.pixel_format.upper() if self.pixel_format else None,
                 "laser_power_mw": self.laser_power_mw}
        return {key: value for key, value in given.items() if value is not None}

    def camera_settings(self) -> CameraSettings:
        return CameraSettings(
            exposure_us=self.exposure_us,
            frame_time_us=self.frame_time_us,
            gain=self.gain,
            pixel_format=PixelFormat[self.pixel_format.upper()] if self.pixel_format else None,
        )


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


@dataclass
class _Plan:
    """The layout and ROI a transform uses; reused while the sizes stay the same."""

    layout: Layout
    roi: Roi
    n_components: int


class Opu:
    """An open OPU. Use :func:`open` to make one; close it (or use ``with``) to switch the laser off."""

    def __init__(self, connection: Connection, settings: OpuSettings) -> None:
        self._connection = connection
        self.settings = settings
        self._lock = threading.RLock()
        self._link = UsbLink(connection.usb)
        self.dmd = Dmd(self._link)
        self.camera = Camera(self._link)
        # The serial line's own retries follow the setting (retries=0: no retry anywhere), at most the default,
        # so one exchange stays within 3.3 s: controller calls are outside the sequence deadline.
        self.controller = Controller(connection.serial, max_retries=min(int(settings.retries), DEFAULT_MAX_RETRIES))
        self._runner: SequenceRunner | None = None
        self._plan: _Plan | None = None
        self._info: OpuInfo | None = None
        self._closed = True
        self._dark_checked = False
        self._linear = None
        self._calibration = None
        # An Opu dropped without close() still releases its device (and an emulator's memory).
        self._finalizer = weakref.finalize(self, connection.close)

    # -- lifecycle ----------------------------------------------------------------------------------
    def _open(self) -> None:
        try:
            self._connection.usb.open()
            version = self._link.read_register(Register.PROTOCOL_VERSION)
            if version != 1:
                raise ProtocolError(f"device speaks protocol version {version}; this driver knows version 1")
            self.dmd.open()
            self.camera.open()
            self.controller.open()
            self._closed = False
            self._info = self._read_info(version)
            self.camera.configure(self.settings.camera_settings())
            if self.settings.laser_power_mw is not None:
                self.controller.set_laser_power_mw(self.settings.laser_power_mw)
            if self.settings.laser_on:
                self.controller.laser_on()
                self.controller.open_shutter()
            self._runner = SequenceRunner(self.dmd, self.camera, self.settings.timeout_s, self.settings.max_lag_frames,
                                          policy=self.settings.retry_policy(), link=self._link)
            self._runner.recover()  # frames an earlier session left queued or unread must not reach this one
            self._runner.counters.recoveries = 0
            if self.settings.calibration is not None:
                self._apply_calibration()
        except BaseException:
            self.close()
            raise
        _log.info("opened %s %s (firmware %s)", self._info.model, self._info.serial_number, self._info.firmware_version)

    def _apply_calibration(self) -> None:
        from .calibration.apply import apply_record, find_record

        explicit = self.settings.explicit_record_settings()
        record = find_record(self, self.settings.calibration, explicit)
        if record is None:
            _log.info("no stored calibration of %s matches; opening uncalibrated", self.info.serial_number)
            return
        self._calibration = apply_record(self, record, explicit=explicit, drift_check=self.settings.drift_check,
                                         max_age_s=float(self.settings.calibration_max_age_s))

    @property
    def calibration(self):
        """The calibration applied at open (:class:`~opu_driver.calibration.apply.AppliedCalibration`), or None."""
        return self._calibration

    def _read_info(self, protocol_version: int) -> OpuInfo:
        identity = self.controller.identity
        usb = self._connection.usb
        if usb.serial_number and identity.serial_number != usb.serial_number:
            raise ProtocolError(
                f"USB device {usb.serial_number} and controller {identity.serial_number} are not the same OPU"
            )
        camera = self.camera.geometry
        return OpuInfo(
            manufacturer=identity.manufacturer,
            model=identity.model,
            serial_number=identity.serial_number,
            firmware_version=identity.firmware_version,
            protocol_version=protocol_version,
            dmd_width=self.dmd.geometry.width,
            dmd_height=self.dmd.geometry.height,
            camera_width=camera.width,
            camera_height=camera.height,
            pixel_formats=tuple(fmt.name for fmt in camera.pixel_formats),
            sequence_capacity=self.dmd.sequence_capacity,
        )

    def close(self) -> None:
        """Laser off, shutter closed, devices released. Safe to call twice."""
        with self._lock:
            summary = not self._closed
            errors: list[BaseException] = []
            for part in (self.controller, self.dmd, self.camera):
                try:
                    part.close()
                except Exception as exc:  # keep closing the rest; report the first failure
                    errors.append(exc)
            try:
                self._finalizer()  # closes the connection once
            except Exception as exc:
                errors.append(exc)
            self._closed = True
            if summary:
                try:
                    self._log_fault_summary()
                except Exception as exc:  # diagnostics must never make close fail
                    errors.append(exc)
            if errors:
                # Closing must not raise (it runs in __exit__ and finally blocks); say what went wrong.
                _log.warning("errors while closing: %s", errors)

    def __enter__(self) -> "Opu":
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

    @property
    def counters(self) -> AcquisitionCounters:
        """Sequences, frames sent and matched, discarded frames, learned lag, faults seen, retries, recoveries.

        The controller's serial exchanges count their own retries and garbled replies in
        ``opu.controller.counters``. A summary of both is logged at close when anything went wrong.
        """
        self._require_open()
        assert self._runner is not None
        return self._runner.counters

    def _log_fault_summary(self) -> None:
        """One INFO line at close with every non-zero fault counter of the session (none when all went well)."""
        if self._runner is None:
            return
        names = ("retries", "frames_resent", "requests_recovered", "requests_failed", "timeouts", "stalls",
                 "corrupt_packets", "resets_detected", "light_restored", "duplicate_frames", "reordered_frames",
                 "reconnects")
        counters = self._runner.counters
        parts = [f"{name} {getattr(counters, name)}" for name in names if getattr(counters, name)]
        serial = self.controller.counters
        parts += [f"serial {name} {getattr(serial, name)}" for name in ("retries", "garbled_replies", "timeouts",
                                                                      "requests_failed") if getattr(serial, name)]
        if parts:
            _log.info("faults met this session: %s", ", ".join(parts))

    @property
    def emulator(self) -> Any | None:
        """The in-process emulated device for ``sim://`` URLs (ground truth for tests), else None."""
        return self._connection.emulator

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
            dtype = output_dtype(self.camera.settings.pixel_format)
            X2, squeeze = self._validate_input(X, n_components * np.dtype(dtype).itemsize)
            batch, n_features = X2.shape
            out = np.empty((batch, n_components), dtype=dtype)
            if batch:
                self._prepare(self._layout_for(n_features), n_components)
                self._project(X2, out)
            return out[0] if squeeze else out

    def linear_transform(
        self, E: npt.ArrayLike, n_components: int, scheme: str = "four_frame", n_bits: int | None = None,
        refresh_reference: bool = False,
    ) -> np.ndarray:
        """Real linear projections B e of error vectors, float32 (batch, n_components).

        Ternary E (values -1, 0, 1) is projected directly; other real values through ``n_bits`` separated bit
        planes per sign (default 8). ``scheme`` is "four_frame" (exact) or "two_frame" (strong reference,
        half the frames, a small bias). B has unit-variance entries and is the same for every call with the same
        sizes and settings (it is fixed by the optics and the reference calibration, which is measured once and
        again when ``refresh_reference`` is True). All-zero vectors give zeros without using the device. See
        opu_driver/linear.py for the physics and docs on the scale.

        Raises:
            InvalidInputError: before anything is sent, for NaN or Inf, a wrong shape or dtype, a bad scheme or
                n_bits, or a signal that does not fit beside the reference.
            AcquisitionError: the reference measurement found no usable light (laser off, shutter closed,
                exposure too low).
            CommunicationError, InterlockError: as for :meth:`transform`.
        """
        from .linear import PROJECTION_SCHEMES

        with self._lock:
            self._require_open()
            if scheme not in PROJECTION_SCHEMES:
                raise InvalidInputError(f"scheme={scheme!r}; choose one of {PROJECTION_SCHEMES}")
            if n_bits is not None and (isinstance(n_bits, bool) or not isinstance(n_bits, (int, np.integer))
                                       or not 1 <= n_bits <= 16):
                raise InvalidInputError(f"n_bits must be an integer within 1..16, got {n_bits!r}")
            try:
                E = np.asarray(E) if not isinstance(E, np.ma.MaskedArray) else None
            except (ValueError, TypeError):  # ragged lists and the like
                E = None
            if E is None or E.dtype.kind not in "biuf":
                raise InvalidInputError("E must be a real-valued numeric array")
            squeeze = E.ndim == 1
            E2 = E[None, :] if squeeze else E
            if E2.ndim != 2 or E2.shape[1] == 0:
                raise InvalidInputError(f"E must have shape (batch, n_features), got {E.shape}")
            n_components = self._validate_components(n_components)
            _check_result_bytes(E2.shape[0], n_components * 4)
            if E2.dtype.kind == "f" and not np.isfinite(E2).all():
                raise InvalidInputError("E contains NaN or Inf")
            self._linear = self.linear_mode
            self._linear.layout(E2.shape[1])  # refuses a signal that does not fit beside the reference
            if refresh_reference:
                self._linear.calibration(E2.shape[1], n_components, refresh=True)
            out = self._linear.project(E2, n_components, scheme, n_bits)
            return out[0] if squeeze else out

    @property
    def linear_mode(self):
        """The :class:`~opu_driver.linear.LinearMode` behind ``linear_transform`` (its reference calibrations)."""
        from .linear import LinearMode

        if self._linear is None:
            self._linear = LinearMode(self)
        return self._linear

    def acquire(self, bits: npt.ArrayLike, layout: Layout, n_components: int) -> np.ndarray:
        """Raw intensities of binary feature frames displayed through a layout of the caller's choice.

        ``transform`` lays features out as the settings say; calibration routines (the linear mode's
        reference, the matrix estimate's two references) need their own layouts, for example a
        :class:`~opu_driver.encoding.layouts.SplitLayout`. ``bits`` is (batch, layout.n_table_features).

        Raises:
            InvalidInputError: before anything is sent, for a layout made for another DMD, frames whose width is
                not the layout's table width, non-binary values, or n_components beyond the camera.
        """
        with self._lock:
            self._require_open()
            if not isinstance(layout, Layout):
                raise InvalidInputError(f"layout must be a Layout, got {type(layout).__name__}")
            if (layout.dmd_width, layout.dmd_height) != (self.info.dmd_width, self.info.dmd_height):
                raise InvalidInputError(
                    f"the layout is for a {layout.dmd_width}x{layout.dmd_height} DMD; this one is "
                    f"{self.info.dmd_width}x{self.info.dmd_height}"
                )
            n_components = self._validate_components(n_components)
            dtype = output_dtype(self.camera.settings.pixel_format)
            bits2, _ = self._validate_input(bits, n_components * np.dtype(dtype).itemsize)
            if bits2.shape[1] != layout.n_table_features:
                raise InvalidInputError(
                    f"frames have {bits2.shape[1]} features; the layout's table has {layout.n_table_features}"
                )
            out = np.empty((bits2.shape[0], n_components), dtype=dtype)
            if bits2.shape[0]:
                self._prepare(layout, n_components)
                self._project(bits2, out)
            return out

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
                part = X[start:start + step]
                if ((part != 0) & (part != 1)).any():
                    bad = part[(part != 0) & (part != 1)][0]
                    raise InvalidInputError(f"X must be binary (0 or 1); found the value {bad!r}")
        return X, squeeze

    def _validate_components(self, n_components: int) -> int:
        if isinstance(n_components, bool) or not isinstance(n_components, (int, np.integer)):
            raise InvalidInputError(f"n_components must be an integer, got {n_components!r}")
        n_pixels = self.info.camera_width * self.info.camera_height
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

    def _layout_for(self, n_features: int) -> Layout:
        """The layout of the settings for n_features (reused while the size stays the same); only computes."""
        plan = self._plan
        if plan is not None and plan.layout.n_features == n_features and plan.layout.kind == self.settings.layout:
            return plan.layout
        layout_options = {"macro_px": self.settings.macro_px} if self.settings.layout == "macro" else {}
        return make_layout(
            self.settings.layout, n_features, self.info.dmd_width, self.info.dmd_height, **layout_options
        )

    def _prepare(self, layout: Layout, n_components: int) -> None:
        """Upload the layout and set the ROI when they change; nothing is sent when they do not.

        Both writes are idempotent, so a timeout or a stalled endpoint during them is retried like a sequence
        (``settings.retries``): halts cleared, queue aborted, camera drained, then the writes again. When the
        retries run out the halts are still cleared, so the next request starts clean.
        """
        roi = self.roi_for(n_components)
        policy = self.settings.retry_policy()
        assert self._runner is not None
        # Everything above only computed; from here on the device is written.
        reconnected = False
        for attempt in range(policy.retries + 1):
            try:
                if reconnected:
                    self._restore_device_state(layout)  # the device came back powered up afresh
                    reconnected = False
                if self.camera.settings != self.camera.wanted_settings:
                    # an earlier write or restore failed half-way: put back what the driver wants first
                    _log.warning("camera settings differ from the wanted ones after a failed write: writing again")
                    self.camera.restore()
                if self.camera.settings.roi != roi:
                    self.camera.configure(CameraSettings(roi=roi))
                if self.settings.frame_mode == "feature" and not self.dmd.layout_is_loaded(layout):
                    self.dmd.load_layout(layout)
                break
            except ConnectionLostError as exc:
                # unplugged between requests: wait for the same device to come back, as a sequence would
                if attempt == policy.retries or policy.reconnect_timeout_s <= 0:
                    raise
                _log.warning("connection lost while loading the layout or region (%s); reconnecting", exc)
                self._reconnect()
                self._runner.counters.reconnects += 1
                self._runner.counters.retries += 1
                self._runner.recover()
                reconnected = True
            except (StallError, CommunicationTimeoutError) as exc:
                self._runner.recover()
                if attempt == policy.retries:
                    raise
                self._runner.counters.retries += 1
                _log.warning("%s while loading the layout or region; retrying (%d of %d)", type(exc).__name__,
                             attempt + 1, policy.retries)
                time.sleep(policy.wait_s(attempt + 1))
        self._plan = _Plan(layout, roi, n_components)

    def _reconnect(self) -> None:
        """After an unplug: wait for the same device to come back, reopen both lines and check it is the same OPU.

        The USB transport reopens the device with the serial number it had (another OPU is refused); the
        protocol version, DMD and camera geometry and the controller's identity are read again and must match
        what was read at open. The device powered up afresh, so the laser, shutter and power are set again as the
        driver last set them (``controller.wanted``: a user's ``laser_off()`` stays off); camera settings and the
        layout are put back by :meth:`_restore_device_state`, which the runner calls next.

        Raises:
            ConnectionLostError: the device did not come back within ``settings.reconnect_timeout_s``.
            DeviceNotFoundError: the controller line could not be opened again.
            ProtocolError: a different device answered.
        """
        timeout_s = float(self.settings.reconnect_timeout_s)
        _log.warning("the USB device is gone: waiting up to %.3g s for it to be plugged back", timeout_s)
        self._link.reconnect(timeout_s)
        version = self._link.read_register(Register.PROTOCOL_VERSION)
        if version != 1:
            raise ProtocolError(f"device speaks protocol version {version} after reconnecting; expected 1")
        info = self._info
        assert info is not None
        geometry = (self._link.read_register(Register.DMD_WIDTH), self._link.read_register(Register.DMD_HEIGHT),
                    self._link.read_register(Register.CAM_WIDTH), self._link.read_register(Register.CAM_HEIGHT))
        if geometry != (info.dmd_width, info.dmd_height, info.camera_width, info.camera_height):
            raise ProtocolError(f"the device that came back has geometry {geometry}, not the one opened")
        # The controller's serial line died with the cable: reopen it and read its identity again.
        self._connection.serial.close()
        self.controller.mark_lost()  # its line is gone; nothing can be sent to close it
        self.controller.open()
        if self.controller.identity.serial_number != info.serial_number:
            raise ProtocolError(f"controller {self.controller.identity.serial_number} answered after reconnecting, "
                                f"not {info.serial_number}")
        self.controller.restore()  # the light path as the driver last set it, not as it was at open
        _log.info("reconnected to %s %s", info.model, info.serial_number)

    def _restore_device_state(self, layout: Layout) -> None:
        """Before a retry: put back what a device reset loses (camera registers, the layout table, the light).

        The camera settings are read back from the device and compared with what the driver set; the layout is
        checked through LAYOUT_FEATURES; the laser, shutter and power through the controller's queries (a power
        cycle restarts the controller too: the laser comes back off). Only what differs is written again; a
        tripped interlock is left alone (the request then raises InterlockError).
        """
        assert self._runner is not None
        # What the driver wants is kept apart from what it last read, so a restore that fails half-way is
        # tried again before the next request instead of being forgotten.
        wanted = self.camera.wanted_settings
        actual = self.camera._read_settings()
        if actual != wanted:
            self._runner.counters.resets_detected += 1
            _log.warning("the device lost its camera settings (a reset?): it has %s; writing %s again", actual, wanted)
            self.camera.restore(actual)  # written from what the device holds, in an order it accepts
        if self.settings.frame_mode == "feature" and not self.dmd.layout_is_loaded(layout):
            _log.warning("the device lost its layout table (a reset?): loading it again")
            self.dmd.load_layout(layout)
        if self.controller.restore():
            self._runner.counters.light_restored += 1

    def _check_dark(self) -> None:
        """A dark frame: fine if the user switched the light off, an error if the device did it.

        The controller's ``wanted`` light state tells the two apart: a laser or shutter that is off or closed
        although the driver last switched it on or open means the device restarted (a power cycle). That is a
        DeviceResetError, which the runner retries after :meth:`_restore_device_state` has put the light back.
        """
        if self._dark_checked:
            return
        if not self.controller.interlock_ok:
            self._dark_checked = True
            self.controller.wanted.laser_on = False  # a trip: never switched back on without the user
            raise InterlockError("the laser interlock tripped: frames are dark; clear its cause, then "
                                 "opu.controller.reset_interlock() and opu.controller.laser_on()")
        if self.controller.light_differs():
            raise DeviceResetError("camera frames are dark and the laser or shutter is off although this driver "
                                   "last switched it on: the device restarted, or it was switched off outside this "
                                   "driver (front panel, a stuck shutter)")
        self._dark_checked = True
        if self.controller.laser_is_on and self.controller.shutter_is_open:
            raise AcquisitionError("camera frames are dark although the laser is on and the shutter open")
        _log.info("frames are dark: the laser is off or the shutter closed")

    def _sequence_capacity(self) -> int:
        """Frames one sequence may hold: the sequence memory and the camera FIFO must both take them."""
        fifo_frames = self.camera.fifo_bytes // self.camera.frame_packet_bytes()
        return max(1, min(self.dmd.sequence_capacity, fifo_frames))

    def _chunk_frames(self, capacity: int) -> int:
        """Frames per request: what the user asked, leaving room in a sequence for the lag's flush frames."""
        assert self._runner is not None
        limit = _RAW_CHUNK_FRAMES if self.settings.frame_mode == "raw" else _FEATURE_CHUNK_FRAMES
        wanted = self.settings.chunk_frames or limit
        return max(1, min(wanted, capacity - self._runner.lag_frames))

    def _project(self, X: np.ndarray, out: np.ndarray) -> None:
        assert self._plan is not None and self._runner is not None
        plan = self._plan
        n_components = plan.n_components
        pixel_format = self.camera.settings.pixel_format
        n_pixels = plan.roi.n_pixels
        feature_mode = self.settings.frame_mode == "feature"
        send = self.dmd.queue_feature_frames if feature_mode else self.dmd.queue_raw_frames
        layout = plan.layout
        capacity = self._sequence_capacity()
        settings = self.camera.settings
        expected = Expected(plan.roi, pixel_format, settings.exposure_us)
        saturated_before = self._runner.counters.saturated_frames
        self._dark_checked = False

        start = 0
        while start < X.shape[0]:
            block = X[start:start + self._chunk_frames(capacity)]
            if feature_mode:
                packed = np.packbits(block.astype(np.bool_, copy=False), axis=1)
            else:
                packed = layout.expand(block)

            def queue(lo: int, hi: int, first_id: int, packed=packed) -> None:
                send(first_id, packed[lo:hi])

            def queue_blank(first_id: int, count: int, width=packed.shape[1]) -> None:
                send(first_id, np.zeros((count, width), dtype=np.uint8))

            def sink(index: int, frame, offset=start) -> None:
                if frame.dark:
                    self._check_dark()
                pixels = decode_pixels(pixel_format, frame.pixels, n_pixels)
                out[offset + index] = pixels[:n_components]

            self._runner.run(block.shape[0], queue, queue_blank, sink, expected, capacity,
                             restore=lambda: self._restore_device_state(layout), reconnect=self._reconnect)
            start += block.shape[0]
        if self._runner.counters.saturated_frames > saturated_before:
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


def open(url: str = "sim://", **settings: Any) -> Opu:  # noqa: A001 - mirrors builtins.open on purpose
    """Open the OPU at ``url`` and return a ready :class:`Opu` (laser on, shutter open).

    Args:
        url: ``sim://?seed=3&lag=1&noise=0`` for the built-in emulator, or
            ``usb://1209:4f50[/SERIAL]?port=/dev/ttyACM0`` for a physical device.
        **settings: fields of :class:`OpuSettings` (layout, frame_mode, exposure_us, pixel_format, ...).

    Raises:
        UnsupportedUrlError, ConfigurationError: bad URL or settings, before touching any device.
        DeviceNotFoundError, CommunicationError: the device cannot be reached.
    """
    try:
        opu_settings = OpuSettings(**settings)
    except TypeError as exc:
        known = sorted(OpuSettings.__dataclass_fields__)
        raise ConfigurationError(f"unknown setting: {exc}; known settings: {', '.join(known)}") from None
    connection = connect(url)
    opu = Opu(connection, opu_settings)
    opu._open()
    return opu
