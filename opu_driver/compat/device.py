"""lightonml 1.4's device interface on an :class:`~opu_driver.Opu`, so that lightonml itself drives this driver.

lightonml's ``OPU`` talks to a device object (``opu.device``): it opens and closes it, reads its input and output
geometry and its frame and exposure times, and hands it batches of binary vectors (``transform2``) or single
vectors (``transform_single``). :class:`LightonmlDevice` is that object for any device this driver opens (the
emulator, a USB OPU, a lab-built rig); the lightonml front returns one as ``OPU.device``.

lightonml accepts a device only if its class is named ``SimulatedOpuDevice`` or ``OpuDevice``. A device named
``OpuDevice`` makes lightonml load the vendor's closed ``lightonopu`` package and its host configuration files, so
:func:`lightonml_device` returns a :class:`LightonmlDevice` whose class is a subclass of lightonml's own
``SimulatedOpuDevice``: lightonml then runs its device-independent path (it flattens and unpacks the input and
passes 0/1 uint8 rows) and every projection is made by this driver on the device behind the URL. Nothing is
simulated unless the URL names the emulator.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import InvalidInputError, OpuError
from ..opu import Opu
from ..session import open as open_opu

__all__ = ["LightonmlDevice", "lightonml_device"]

logger = logging.getLogger(__name__)


class LightonmlDevice:
    """An Opu behind the attributes and methods lightonml 1.4's ``OPU`` uses on its device.

    Args:
        url: the device to open (``sim://``, ``usb://...``, ``rig://...``); opened now, as lightonml's hardware
            device connects when it is built. Exclusive with ``opu``.
        opu: an open Opu to wrap instead (it is not closed by :meth:`close`; the owner closes it).
        opu_settings: fields of :class:`~opu_driver.OpuSettings` for opening ``url``.

    ``active`` is lightonml's flag: False until :meth:`open`. Projections need it True.

    Raises:
        ConfigurationError, CommunicationError: as ``opu_driver.open`` for ``url``.
    """

    def __init__(
        self, url: str | None = None, *, opu: Opu | None = None, opu_settings: Mapping[str, Any] | None = None
    ) -> None:
        if (url is None) == (opu is None):
            raise OpuError("give either url or opu")
        self.url = url
        self._settings = dict(opu_settings or {})
        self._owned = opu is None
        self._opu: Opu | None = opu if opu is not None else open_opu(str(url), **self._settings)
        self.active = not self._owned
        self._linear = False  # set by lightonml's runner before each call: linear_transform or transform
        self._n_features: int | None = None
        self._n_components = 1
        self._remember(self._opu)

    def _remember(self, opu: Opu) -> None:
        """Keep what lightonml reads while the device is closed: geometry and camera times."""
        info = opu.info
        self._input_shape = (info.dmd_width, info.dmd_height)
        self._output_shape_max = (info.camera_width, info.camera_height)
        self._max_features = opu.max_features
        self._refresh_camera_times(opu.camera_settings)
        self._dtype = np.dtype(np.uint8) if opu.full_scale_dn <= 255 else np.dtype(np.uint16)

    # -- the driver underneath --------------------------------------------------------------------------
    @property
    def opu(self) -> Opu:
        """The driver's Opu (open)."""
        if self._opu is None or self._opu.closed:
            raise OpuError("the device is closed: call open()")
        return self._opu

    # -- life cycle (lightonml: open, close, reserve, acquiring) ----------------------------------------
    def open(self) -> None:
        """Open the device (again, after :meth:`close`) and mark it active."""
        if self._opu is None or self._opu.closed:
            if not self._owned:
                raise OpuError("the wrapped Opu was closed by its owner")
            self._opu = open_opu(str(self.url), **self._settings)
            self._remember(self._opu)
        self.active = True

    def close(self) -> None:
        """Mark the device inactive; a device opened from a URL is closed (the laser goes off)."""
        self.active = False
        if self._owned and self._opu is not None:
            self._opu.close()
            self._opu = None

    def __enter__(self) -> LightonmlDevice:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reserve(self, n_images: int) -> None:
        """lightonml reserves camera buffers here; the driver sizes its sequences itself."""

    @contextmanager
    def acquiring(self, *args: Any, **kwargs: Any) -> Iterator[None]:
        """lightonml's acquisition block; each projection here is already one device sequence."""
        yield

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("a LightonmlDevice holds a device connection and cannot be pickled")

    def versions(self) -> str:
        """The device's identity, as lightonml's ``OPU.version(devices=True)`` prints it."""
        info = self.opu.info
        return f"{info.manufacturer} {info.model} {info.serial_number}, firmware {info.firmware_version}"

    # -- geometry -------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int]:
        """The DMD in mirrors, (width, height): lightonml's cartesian order."""
        return self._input_shape

    @property
    def nb_features(self) -> int | None:
        """Features per vector since the last :meth:`build_random_matrix` (None before)."""
        return self._n_features

    @property
    def input_size(self) -> int | None:
        """Bytes of one bit-packed vector."""
        return None if self._n_features is None else math.ceil(self._n_features / 8)

    @property
    def output_shape_max(self) -> tuple[int, int]:
        """The camera in pixels, (width, height)."""
        return self._output_shape_max

    @property
    def output_roi(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The camera region of the current n_components, ((x, y), (width, height))."""
        roi = self.opu.roi_for(self._n_components)
        return (roi.x, roi.y), (roi.width, roi.height)

    @property
    def output_shape(self) -> tuple[int, int]:
        return self.output_roi[1]

    @property
    def output_roi_strategy(self) -> None:
        """The driver places the region itself (:meth:`~opu_driver.Opu.roi_for`)."""
        return None

    @property
    def output_roi_increment(self) -> int:
        return 1

    @property
    def output_dtype(self) -> np.dtype:
        """float32 for a linear transform, else the camera's: uint8 (8-bit pixel formats) or uint16."""
        if self._linear:
            return np.dtype(np.float32)
        if self._opu is not None and not self._opu.closed:
            self._dtype = np.dtype(np.uint8) if self._opu.full_scale_dn <= 255 else np.dtype(np.uint16)
        return self._dtype

    @property
    def acq_state(self) -> None:
        """No online acquisition mode: lightonml then sends single vectors through :meth:`transform_single`."""
        return None

    # -- camera times ---------------------------------------------------------------------------------
    @property
    def exposure_us(self) -> int:
        """The camera's exposure (read from the device while open); setting it configures the camera."""
        self._refresh_camera_times()
        return self._exposure_us

    @exposure_us.setter
    def exposure_us(self, value: float) -> None:
        self._set_camera_time("exposure_us", int(value))

    @property
    def frametime_us(self) -> int:
        """The camera's frame period (read from the device while open); setting it configures the camera."""
        self._refresh_camera_times()
        return self._frame_time_us

    @frametime_us.setter
    def frametime_us(self, value: float) -> None:
        self._set_camera_time("frame_time_us", int(value))

    def _refresh_camera_times(self, settings: Any = None) -> None:
        if settings is None:
            if self._opu is None or self._opu.closed:
                return
            settings = self._opu.camera_settings
        self._exposure_us = int(settings.exposure_us or 0)
        self._frame_time_us = int(settings.frame_time_us or 0)

    @property
    def output_readout_us(self) -> int:
        """lightonml keeps the frame time above max(readout, exposure) + 50 us; the camera's limit is exposure + 50."""
        return self._exposure_us

    @property
    def gain_dB(self) -> float:
        """The camera gain in dB (a raw gain is reported as is)."""
        gain = float(self.opu.camera_settings.gain or 1.0)
        unit = self.opu.camera.geometry.gain_unit
        return 20.0 * math.log10(gain) if unit == "factor" else gain

    def _set_camera_time(self, name: str, value: int) -> None:
        """Configure the camera now if open (the camera may move the other time too) and keep the value for the
        next open."""
        if self._opu is not None and not self._opu.closed:
            if name == "exposure_us":
                settings = self._opu.configure_camera(exposure_us=value)
            else:
                settings = self._opu.configure_camera(frame_time_us=value)
            self._refresh_camera_times(settings)
        else:
            setattr(self, "_exposure_us" if name == "exposure_us" else "_frame_time_us", value)
        if self._owned:
            self._settings[name] = value

    # -- projections ----------------------------------------------------------------------------------
    def build_random_matrix(self, n_features: int, n_components: int, seed: int = 0) -> None:
        """lightonml sizes its simulated matrix here; the optics' matrix is fixed, so this only records the sizes.

        Raises:
            InvalidInputError: more features than the device shows, or more components than the camera has.
        """
        width, height = self._output_shape_max
        if not 0 < int(n_features) <= self._max_features:
            raise InvalidInputError(f"n_features={n_features}: this device takes 1 to {self._max_features}")
        if not 0 < int(n_components) <= width * height:
            raise InvalidInputError(f"n_components={n_components}: the camera has {width * height} pixels")
        self._n_features, self._n_components = int(n_features), int(n_components)

    @property
    def random_matrix(self) -> None:
        """Unknown: the medium is physical (``opu_driver.calibration.estimate_matrix`` measures a digital twin)."""
        return None

    def transform1(self, X: np.ndarray) -> np.ndarray:
        """Project a batch (n, n_features) of 0/1 values: |xR|^2 camera counts, or x B (float32) when linear.

        Rows may be narrower than the ``n_features`` of :meth:`build_random_matrix` (lightonml's
        ``max_n_features``), as with lightonml's simulated device.

        Raises:
            OpuError: the device is not open.
            InvalidInputError: values other than 0 and 1, or rows wider than ``n_features``.
        """
        if not self.active:
            raise OpuError("the device is not active: open it first")
        X = np.asarray(X)
        if X.ndim != 2 or (self._n_features is not None and X.shape[1] > self._n_features):
            raise InvalidInputError(f"expected rows of at most {self._n_features} features, got shape {X.shape}")
        if self._linear:
            return self.opu.linear_transform(X, self._n_components)
        return self.opu.transform(X, self._n_components)

    def transform2(self, X: np.ndarray, Y: np.ndarray, batch_index: int | None = None) -> None:
        """Project a batch into lightonml's preallocated ``Y`` (n, n_components).

        Raises:
            InvalidInputError: ``Y``'s shape or dtype cannot hold the result exactly (nothing is written).
        """
        result = self.transform1(X)
        if Y.shape != result.shape or not np.can_cast(result.dtype, Y.dtype, "safe"):
            raise InvalidInputError(f"output buffer {Y.dtype} {Y.shape} cannot hold {result.dtype} {result.shape}")
        Y[...] = result

    def transform_single(self, X: np.ndarray) -> np.ndarray:
        """Project one vector (n_features,) or (1, n_features)."""
        X = np.asarray(X)
        if X.ndim == 2 and X.shape[0] != 1:
            raise InvalidInputError(f"transform_single takes one vector, got shape {X.shape}")
        return self.transform1(X.reshape(1, -1))[0]


@functools.cache
def _lightonml_class() -> type[LightonmlDevice]:
    from lightonml.internal.simulated_device import SimulatedOpuDevice as LightonmlSimulated

    # lightonml checks the class name, then takes its device-independent path for subclasses of this class.
    return type("SimulatedOpuDevice", (LightonmlDevice, LightonmlSimulated), {"__module__": __name__})


def lightonml_device(url: str | None = None, **opu_settings: Any) -> LightonmlDevice:
    """A device that lightonml 1.4 accepts as ``OPU(opu_device=...)``, projecting on this driver's ``url``.

    ``url`` defaults as the front's does (``$OPU_URL``, else ``sim://``); ``opu_settings`` are fields of
    :class:`~opu_driver.OpuSettings`. Needs lightonml installed (ImportError otherwise).
    """
    from .lightonml import default_url

    return _lightonml_class()(default_url(url), opu_settings=opu_settings)
