"""What the OPU service reads of its device, once at start: the identity and geometry that HELLO is checked
against and WELCOME announces (:class:`ServedDevice`), and the fingerprint of what fixes the served random matrix
(:func:`device_fingerprint`), which clients compare across reconnects.

These are the service's only reads of the Opu's state (the device thread alone makes its device calls, in
``scheduler``), all through the Opu's public API.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..encoding.layouts import SplitLayout
from ..errors import InvalidInputError
from ..opu import Opu

__all__ = ["ServedDevice", "read_served_device", "device_fingerprint", "fingerprint_parts", "UNREADABLE"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedDevice:
    """The served device as read at start (the service never reads these again while it runs).

    Attributes:
        model, serial_number, firmware_version: its identity (announced in WELCOME).
        camera_pixels: camera width x height, the most n_components a client may ask for.
        dmd_width, dmd_height: the DMD's size in mirrors, which bounds n_features.
        reference_fraction: the linear mode's share of the DMD kept for its reference.
        frame_time_us: the camera's frame time (one DMD frame's device time), None when it cannot be read.
        fingerprint: :func:`device_fingerprint` of the device at start.
    """

    model: str
    serial_number: str
    firmware_version: str
    camera_pixels: int
    dmd_width: int
    dmd_height: int
    reference_fraction: float
    frame_time_us: int | None
    fingerprint: str

    def features_problem(self, n_features: int) -> str | None:
        """Why ``n_features`` cannot be projected (it must fit on the DMD beside the linear mode's reference),
        or None when it can."""
        try:
            SplitLayout(n_features, self.dmd_width, self.dmd_height, reference_fraction=self.reference_fraction)
        except InvalidInputError as exc:
            return str(exc)
        return None


def read_served_device(opu: Opu) -> ServedDevice:
    """Read what the service needs of ``opu`` once, at start.

    Raises:
        whatever reading the identity or the linear mode's reference fraction raises (the service cannot serve
        without them); the frame time (None) and the fingerprint's other parts (:data:`UNREADABLE`) never raise.
    """
    info = opu.info
    reference_fraction = float(opu.linear_mode.reference_fraction)
    return ServedDevice(
        model=info.model,
        serial_number=info.serial_number,
        firmware_version=info.firmware_version,
        camera_pixels=info.camera_width * info.camera_height,
        dmd_width=info.dmd_width,
        dmd_height=info.dmd_height,
        reference_fraction=reference_fraction,
        frame_time_us=_frame_time_us(opu),
        fingerprint=device_fingerprint(opu),
    )


def _frame_time_us(opu: Opu) -> int | None:
    """The camera's frame time (one DMD frame's device time), or None when unknown."""
    with contextlib.suppress(Exception):
        value = opu.camera_settings.frame_time_us
        return int(value) if value is not None else None
    return None


UNREADABLE = "unreadable"
"""What :func:`fingerprint_parts` records for a part it could not read (no real value of any part is this string)."""


def fingerprint_parts(opu: Opu) -> dict[str, Any]:
    """What the fingerprint covers, part by part: the device identity (``model``, ``serial_number``,
    ``firmware_version``), the camera settings (``camera``: exposure, frame time, gain, pixel format), the laser
    power (``laser_power_mw``), the linear mode's reference fraction (``reference_fraction``) and the calibration
    record applied at open (``calibration``: its file, date and applied parts; absent when none was applied).

    A part that cannot be read is recorded as :data:`UNREADABLE` and a warning names it, rather than being left
    out unnoticed: the fingerprint then cannot tell a change of that part, and whoever runs the service should know.

    Raises:
        whatever reading the identity raises (the service cannot serve a device it cannot identify).
    """
    info = opu.info
    parts: dict[str, Any] = {
        "model": info.model,
        "serial_number": info.serial_number,
        "firmware_version": info.firmware_version,
    }
    parts["camera"] = _read_part("camera", _camera_settings, opu)
    parts["laser_power_mw"] = _read_part("laser_power_mw", lambda opu: opu.laser_power_mw, opu)
    parts["reference_fraction"] = _read_part(
        "reference_fraction", lambda opu: float(opu.linear_mode.reference_fraction), opu
    )
    calibration = _read_part("calibration", _applied_calibration, opu)
    if calibration is not None:
        parts["calibration"] = calibration
    return parts


def device_fingerprint(opu: Opu) -> str:
    """A short hash (16 hex digits) of :func:`fingerprint_parts`: what fixes the served random matrix B and its
    scale. Clients compare it across reconnects (with model, serial number and firmware) and refuse results from a
    service whose fingerprint changed.

    The linear mode's per-size reference calibration is measured by the service after start and is not part of
    it: it re-measures the same device under the same settings, so B is the same up to measurement noise."""
    text = json.dumps(fingerprint_parts(opu), sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _read_part(name: str, read: Callable[[Any], Any], opu: Opu) -> Any:
    """``read(opu)``, or :data:`UNREADABLE` with a warning when it raises (whatever the reason: a fingerprint
    with a part marked unreadable is still served, and the warning says what it no longer covers)."""
    try:
        return read(opu)
    except Exception as exc:
        _log.warning(
            "device fingerprint: %s cannot be read (%s: %s); it is recorded as %r, so clients cannot "
            "tell a change of it across reconnects",
            name,
            type(exc).__name__,
            exc,
            UNREADABLE,
        )
        return UNREADABLE


def _camera_settings(opu: Opu) -> list[Any]:
    camera = opu.camera_settings
    pixel_format = getattr(camera.pixel_format, "name", camera.pixel_format)
    return [camera.exposure_us, camera.frame_time_us, camera.gain, str(pixel_format)]


def _applied_calibration(opu: Opu) -> list[Any] | None:
    """The calibration record applied at open (file, date, applied parts), None when none was applied."""
    applied = opu.calibration
    if applied is None:
        return None
    record = applied.record
    return [str(record.path), record.created.isoformat(), list(applied.applied)]
