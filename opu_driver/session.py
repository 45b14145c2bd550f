"""Opening an OPU: a URL becomes a rig, the rig an open Opu, and a stored calibration is applied to it.

This is the one place that composes the layers: the device factory below the Opu, the Opu itself, and the
calibration store above it (``open`` applies the newest matching record unless told otherwise).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from .calibration.apply import apply_record, find_record
from .devices import make_rig
from .opu import Opu, OpuSettings

__all__ = ["open"]

_log = logging.getLogger(__name__)

MAX_CONTROLLER_RETRIES = 2
"""The controller line's own retries follow ``retries`` (0: no retry anywhere) but at most this, so that one serial
exchange ends within about 3.3 s: controller calls are outside a request's deadline."""


def open(url: str = "sim://", **settings: Any) -> Opu:
    """Open the OPU at ``url`` and return a ready :class:`Opu` (laser on, shutter open, calibration applied).

    Args:
        url: ``sim://?seed=3&lag=1&noise=0`` for the built-in emulator, or
            ``usb://1209:4f50[/SERIAL]?port=/dev/ttyACM0`` for a physical device, or ``rig://path/to/rig.toml``
            for a lab-built OPU (its parts named in the rig file; see docs/rig.md).
        **settings: fields of :class:`OpuSettings` (layout, frame_mode, exposure_us, pixel_format, ...).

    Raises:
        UnsupportedUrlError, ConfigurationError: bad URL or settings, before touching any device.
        DeviceNotFoundError, CommunicationError: the device cannot be reached.
        CalibrationError: a calibration record named explicitly cannot be used.
    """
    opu_settings = OpuSettings.from_options(settings)
    rig = make_rig(url, controller_retries=min(opu_settings.retries, MAX_CONTROLLER_RETRIES))
    if "frame_mode" not in settings and not rig.dmd.supports_feature_frames:
        # a DMD without layout tables (a lab rig's) shows mirror pictures the host expands
        opu_settings = dataclasses.replace(opu_settings, frame_mode="raw")
    opu = Opu.from_rig(rig, opu_settings)
    try:
        if opu_settings.calibration is not None:
            opu.calibration = _apply_stored_calibration(opu, opu_settings)
    except BaseException:
        opu.close()
        raise
    return opu


def _apply_stored_calibration(opu: Opu, settings: OpuSettings) -> Any:
    """The newest record of the store ``settings.calibration`` that matches the device and the settings given,
    applied; None when no record matches."""
    assert settings.calibration is not None
    explicit = settings.explicit_record_settings()
    record = find_record(opu, settings.calibration, explicit)
    if record is None:
        _log.info("no stored calibration of %s matches; opening uncalibrated", opu.info.serial_number)
        return None
    return apply_record(
        opu,
        record,
        explicit=explicit,
        drift_check=settings.drift_check,
        max_age_s=float(settings.calibration_max_age_s),
    )
