"""How the Opu drives the device (:class:`OpuSettings`), checked when built, before any device is touched."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from ..acquisition import RetryPolicy
from ..devices import CameraSettings
from ..encoding.layouts import LAYOUT_KINDS
from ..errors import ConfigurationError
from ..protocol import PixelFormat
from ..validation import Validated, setting

__all__ = ["OpuSettings", "FRAME_MODES"]

FRAME_MODES = ("feature", "raw")


@dataclass(frozen=True)
class OpuSettings(Validated):
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
        retries: how many times an operation that lost or spoiled camera frames (timeout, stall, corrupt packet,
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
            set them) and re-runs the missing frames; counted in ``counters.reconnects``. 0 disables: the loss
            raises ConnectionLostError at once.
    """

    layout: str = setting("lined", kind="choice", choices=LAYOUT_KINDS)
    macro_px: int | None = setting(None, kind="int", low=1, optional=True)
    frame_mode: str = setting("feature", kind="choice", choices=FRAME_MODES)
    exposure_us: int | None = setting(None, kind="int", low=10, high=1_000_000, optional=True)
    frame_time_us: int | None = setting(None, kind="int", low=60, high=0xFFFFFFFF, optional=True)
    gain: float | None = setting(None, kind="number", optional=True)
    pixel_format: str | None = setting(None)
    laser_power_mw: float | None = setting(None, kind="number", optional=True)
    laser_on: bool = setting(True, kind="bool")
    chunk_frames: int | None = setting(None, kind="int", low=1, optional=True)
    timeout_s: float = setting(5.0, kind="number", low=0, low_open=True)
    max_lag_frames: int = setting(64, kind="int", low=0, high=1024)
    calibration: str | os.PathLike[str] | None = setting("auto")
    calibration_max_age_s: float = setting(7 * 86400.0, kind="number", low=0, low_open=True)
    drift_check: bool = setting(True, kind="bool")
    retries: int = setting(2, kind="int", low=0, high=100)
    retry_backoff_s: float = setting(0.01, kind="number", low=0, high=10)
    reconnect_timeout_s: float = setting(5.0, kind="number", low=0, high=600)

    def _check(self) -> None:
        if self.pixel_format is not None and (
            not isinstance(self.pixel_format, str) or self.pixel_format.upper() not in PixelFormat.__members__
        ):
            raise ConfigurationError(
                f"pixel_format={self.pixel_format!r}; choose one of {list(PixelFormat.__members__)}"
            )
        if self.calibration is not None and not isinstance(self.calibration, (str, os.PathLike)):
            raise ConfigurationError(f"calibration must be 'auto', a path or None, got {self.calibration!r}")

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> OpuSettings:
        """Settings from keyword options; ConfigurationError names an unknown one and lists the known."""
        try:
            return cls(**options)
        except TypeError as exc:
            known = sorted(cls.__dataclass_fields__)
            raise ConfigurationError(f"unknown setting: {exc}; known settings: {', '.join(known)}") from None

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(
            retries=self.retries, backoff_s=self.retry_backoff_s, reconnect_timeout_s=self.reconnect_timeout_s
        )

    def explicit_record_settings(self) -> dict[str, Any]:
        """The settings given explicitly, as a calibration record stores them (the keys a record must match)."""
        given = {
            "exposure_us": self.exposure_us,
            "frame_time_us": self.frame_time_us,
            "gain": self.gain,
            "pixel_format": self.pixel_format.upper() if self.pixel_format else None,
            "laser_power_mw": self.laser_power_mw,
        }
        return {key: value for key, value in given.items() if value is not None}

    def camera_settings(self) -> CameraSettings:
        """The camera settings given explicitly (None fields keep the device's values)."""
        return CameraSettings(
            exposure_us=self.exposure_us,
            frame_time_us=self.frame_time_us,
            gain=self.gain,
            pixel_format=PixelFormat[self.pixel_format.upper()] if self.pixel_format else None,
        )
