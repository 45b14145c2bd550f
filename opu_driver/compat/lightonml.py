"""A lightonml 1.4 compatible front on the driver: scripts written for ``from lightonml import OPU`` run on an
:class:`~opu_driver.Opu` by changing the import line to ``from opu_driver.compat.lightonml import OPU``.

The front uses the Opu's public API only (``opu_driver.open``, ``Opu.transform``, ``Opu.linear_transform`` and
the Opu's settings). lightonml's silent wrong results become typed errors from :mod:`opu_driver.errors`, raised
before anything is sent: non-binary or float input to :meth:`OPU.transform`, input whose shape differs from the
fitted one, a transform before a fit. The differences from lightonml are listed in docs/lightonml.md.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import numpy as np

from .._version import __version__
from ..errors import ConfigurationError, InvalidInputError, OpuError
from ..opu import Opu
from ..session import open as open_opu
from ._arrays import like_input, to_numpy
from .device import LightonmlDevice
from .encoding import BaseTransformer, NoDecoding, NoEncoding

__all__ = ["OPU", "Fit", "OutputRescaling", "TransformContext", "ContextArray", "DEFAULT_URL", "URL_ENV"]

logger = logging.getLogger(__name__)

DEFAULT_URL = "sim://"
"""The device used when neither ``url`` nor ``$OPU_URL`` names one: the built-in emulator."""

URL_ENV = "OPU_URL"
"""The environment variable naming the default device (``usb://...``, ``rig://...``) on a machine that has one."""

OUTPUT_RESCALINGS = ("variance", "norm", "none")
"""lightonml's OutputRescaling, by name: how :meth:`OPU.linear_transform` scales B x."""

OutputRescaling = str
"""lightonml's ``OutputRescaling`` enum is accepted by member or by name; this front stores the name."""

_ROI_STRATEGIES = {"full": "lined"}
"""lightonml's input ROI strategies this front supports, and the driver layout each maps to."""


@dataclasses.dataclass(frozen=True)
class TransformContext:
    """The settings an output was computed with (lightonml's ``ContextArray.context``).

    Attributes:
        operation: "transform" or "linear_transform".
        n_features: features per input vector as fitted (a pair for ``fit2d``).
        n_components: outputs per vector.
        exposure_us, frame_time_us, gain, pixel_format: the camera settings in force.
        output_roi: the camera region (x, y, width, height) the outputs were read from.
        layout: the driver layout of the features on the DMD ("lined" for lightonml's "full" strategy).
        n_ones: mean number of ones per input vector (after encoding).
        start, end: UTC times around the device call.
        url, serial_number: which device.
    """

    operation: str
    n_features: int | tuple[int, int]
    n_components: int
    exposure_us: int | None
    frame_time_us: int | None
    gain: float | None
    pixel_format: str | None
    output_roi: tuple[int, int, int, int]
    layout: str
    n_ones: float
    start: dt.datetime
    end: dt.datetime
    url: str
    serial_number: str


class ContextArray(np.ndarray):
    """An ndarray carrying the :class:`TransformContext` it was computed with (``None`` once derived data no
    longer matches one call, e.g. after decoding)."""

    context: TransformContext | None

    def __new__(cls, array: np.ndarray, context: TransformContext | None) -> ContextArray:
        obj = np.asarray(array).view(cls)
        obj.context = context
        return obj

    def __array_finalize__(self, obj: Any) -> None:
        self.context = getattr(obj, "context", None)


@dataclasses.dataclass(frozen=True)
class Fit:
    """What ``fit1d``/``fit2d`` fixed: the feature shape (one entry after ``fit1d``, two after ``fit2d``), packing,
    and whether vectors come one at a time."""

    feature_shape: tuple[int, ...]
    packed: bool
    online: bool

    @property
    def n_features(self) -> int:
        return math.prod(self.feature_shape)


def default_url(url: str | None = None, simulated: bool = False) -> str:
    """``url`` if given, else the built-in emulator when ``simulated``, else ``$OPU_URL`` or ``sim://``."""
    if url is not None:
        return url
    return DEFAULT_URL if simulated else os.environ.get(URL_ENV, DEFAULT_URL)


def _rescaling_name(rescale: Any) -> str:
    name = getattr(rescale, "name", rescale)
    if name not in OUTPUT_RESCALINGS:
        raise ConfigurationError(f"rescale must be one of {OUTPUT_RESCALINGS}, got {rescale!r}")
    return str(name)


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise InvalidInputError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class OPU:
    """lightonml's ``OPU`` on this driver: ``fit1d``/``fit2d`` then ``transform`` (y = |xR|^2, raw camera
    intensities) or ``linear_transform`` (y = x B, float32).

    Args:
        n_components: outputs per vector (settable later as ``opu.n_components``).
        opu_device: lightonml's device object; not supported (ConfigurationError if given).
        max_n_features: the largest number of features ``fit1d``/``fit2d`` accept; None (default): the device's
            limit, as lightonml on an OPU (its simulator used 1000 to size its matrix). The device's limit
            applies in any case.
        config_file, config_override: lightonml's host configuration; refused (ConfigurationError) if set, since
            the driver reads its settings from the URL and ``opu_settings``.
        verbose_level: lightonml's deprecated verbosity; >= 0 sets this module's log level (0 warnings, 1 info,
            2 and more debug).
        input_roi_strategy: lightonml's ``InputRoiStrategy``; only ``full`` (the "lined" layout over the whole
            DMD) is supported.
        open_at_init: open the device in the constructor (default True).
        disable_pbar: accepted; the driver shows no progress bar during projections.
        simulated: True opens the built-in emulator (``sim://``) whatever the default device.
        rescale: "variance" (default; B x / sqrt(n_features)), "norm" (B x / sqrt(n_components)) or "none", or
            lightonml's ``OutputRescaling`` member; applies to ``linear_transform`` only, after decoding.
        url: the device; default ``$OPU_URL`` when set, else the built-in emulator ``sim://``.
        opu_settings: fields of :class:`~opu_driver.OpuSettings` for ``opu_driver.open`` (exposure_us,
            pixel_format, timeout_s, ...).

    Raises:
        ConfigurationError: unsupported arguments, before any device is opened.
    """

    def __init__(
        self,
        n_components: int = 200000,
        opu_device: Any = None,
        max_n_features: int | None = None,
        config_file: str = "",
        config_override: Mapping[str, Any] | None = None,
        verbose_level: int = -1,
        input_roi_strategy: Any = "full",
        open_at_init: bool | None = None,
        disable_pbar: bool = False,
        simulated: bool = False,
        rescale: Any = "variance",
        url: str | None = None,
        opu_settings: Mapping[str, Any] | None = None,
    ) -> None:
        if opu_device is not None:
            raise ConfigurationError("opu_device is not supported: name the device with url= (or $OPU_URL)")
        if config_file or config_override:
            raise ConfigurationError("config_file and config_override are not supported: use url= and opu_settings=")
        if simulated and url is not None and not url.startswith("sim://"):
            raise ConfigurationError(f"simulated=True conflicts with url={url!r}")
        strategy = str(getattr(input_roi_strategy, "name", input_roi_strategy))
        if strategy not in _ROI_STRATEGIES:
            raise ConfigurationError(f"input_roi_strategy {strategy!r} is not supported; use 'full'")
        if verbose_level >= 0:
            logger.setLevel([logging.WARNING, logging.INFO][verbose_level] if verbose_level < 2 else logging.DEBUG)
        self.rescale = rescale
        self.n_components = n_components
        self.max_n_features = max_n_features
        self.input_roi_strategy = strategy
        self.disable_pbar = disable_pbar
        self.url = default_url(url, simulated)
        self.opu_settings = dict(opu_settings or {})
        self._opu: Opu | None = None
        self._device: LightonmlDevice | None = None
        self._fit: Fit | None = None
        if open_at_init is None or open_at_init:
            self.open()

    # -- settings ---------------------------------------------------------------------------------
    @property
    def rescale(self) -> str:
        """How ``linear_transform`` scales its output: "variance", "norm" or "none"."""
        return self._rescale

    @rescale.setter
    def rescale(self, value: Any) -> None:
        self._rescale = _rescaling_name(value)

    @property
    def n_components(self) -> int:
        """Outputs per vector (checked against the camera at the next call)."""
        return self._n_components

    @n_components.setter
    def n_components(self, value: int) -> None:
        self._n_components = _positive_int(value, "n_components")

    @property
    def max_n_features(self) -> int | None:
        """The largest number of features a fit accepts: the value set, else the device's limit (None while
        closed)."""
        if self._max_n_features is not None:
            return self._max_n_features
        return None if self._opu is None or self._opu.closed else self._opu.max_features

    @max_n_features.setter
    def max_n_features(self, value: int | None) -> None:
        self._max_n_features = None if value is None else _positive_int(value, "max_n_features")

    @property
    def fit_settings(self) -> Fit | None:
        """What the last ``fit1d``/``fit2d`` fixed (None before any)."""
        return self._fit

    @property
    def max_n_components(self) -> int:
        """The most outputs per vector: the camera's pixels."""
        info = self.opu.info
        return info.camera_width * info.camera_height

    @property
    def opu(self) -> Opu:
        """The driver's :class:`~opu_driver.Opu` underneath (open)."""
        if self._opu is None or self._opu.closed:
            raise OpuError("the OPU is closed: call open() or use 'with opu:'")
        return self._opu

    @property
    def device(self) -> LightonmlDevice:
        """The device as lightonml shows it (``input_shape``, ``output_roi``, ``exposure_us``, ...); its ``opu`` is
        the driver's Opu."""
        opu = self.opu
        if self._device is None or self._device.opu is not opu:
            self._device = LightonmlDevice(opu=opu)
        self._device._n_components = self.n_components
        return self._device

    def version(self, devices: bool = False) -> str:
        """This package's version and, with ``devices``, the device's identity (lightonml's ``OPU.version``)."""
        lines = [f"opu_driver version {__version__} (lightonml 1.4 front)"]
        if devices:
            lines.append(self.device.versions())
        return "\n".join(lines)

    # -- life cycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the device (a no-op when open). Settings are checked before any device is touched."""
        if self._opu is not None and not self._opu.closed:
            return
        settings = dict(self.opu_settings)
        settings.setdefault("layout", _ROI_STRATEGIES[self.input_roi_strategy])
        self._opu = open_opu(self.url, **settings)
        logger.info("opened %s (%s)", self.url, self._opu.info.serial_number)

    def close(self) -> None:
        """Close the device (the laser goes off); ``open()`` opens it again."""
        if self._opu is not None:
            self._opu.close()
            self._opu = None
            self._device = None

    def __enter__(self) -> OPU:
        self.open()
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> OPU:
        """The same OPU: a device is shared, never copied (scikit-learn's ``clone`` deep-copies parameters)."""
        return self

    def __getstate__(self) -> dict[str, Any]:
        raise TypeError("an OPU holds a device connection and cannot be pickled")

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- fitting ----------------------------------------------------------------------------------
    def fit1d(self, X: Any = None, n_features: int | None = None, packed: bool = False, online: bool = False) -> None:
        """Fix the number of features of 1-D vectors, from ``X``'s last axis or from ``n_features``.

        Packed input (uint8, 8 features a byte, ``np.packbits`` order) has ``8 * X.shape[-1]`` features unless
        ``n_features`` says fewer. ``online`` is accepted and changes nothing (every call is one device sequence).
        """
        self._fit = self._fitted(X, n_features, packed, online, two_d=False)

    def fit2d(
        self, X: Any = None, n_features: tuple[int, int] | None = None, packed: bool = False, online: bool = False
    ) -> None:
        """Fix the shape of 2-D vectors (their last two axes), from ``X`` or ``n_features``; packed input is
        1-D per vector and needs ``n_features``."""
        self._fit = self._fitted(X, n_features, packed, online, two_d=True)

    def _fitted(self, X: Any, n_features: Any, packed: bool, online: bool, two_d: bool) -> Fit:
        shape: tuple[int, ...]
        if n_features is not None:
            if two_d:
                if len(tuple(n_features)) != 2:
                    raise InvalidInputError(f"fit2d: n_features must be a pair, got {n_features!r}")
                shape = tuple(_positive_int(n, "n_features") for n in n_features)
            else:
                shape = (_positive_int(n_features, "n_features"),)
        elif X is None:
            raise InvalidInputError("fit needs X or n_features")
        else:
            X_np = to_numpy(X)[0]
            if packed and two_d:
                raise InvalidInputError("fit2d with packed input needs n_features (the unpacked shape)")
            if X_np.ndim < (2 if two_d else 1):
                raise InvalidInputError(f"fit: input of shape {X_np.shape} has no feature axis")
            shape = tuple(X_np.shape[-2:]) if two_d else (X_np.shape[-1] * (8 if packed else 1),)
        fit = Fit(shape, bool(packed), bool(online))
        if self._max_n_features is not None and fit.n_features > self._max_n_features:
            raise InvalidInputError(f"{fit.n_features} features is more than max_n_features={self._max_n_features}")
        if self._opu is not None and not self._opu.closed and fit.n_features > self._opu.max_features:
            raise InvalidInputError(
                f"{fit.n_features} features is more than the device shows ({self._opu.max_features})"
            )
        return fit

    # -- projections ------------------------------------------------------------------------------
    def transform(self, X: Any, encoder_cls: Any = NoEncoding, decoder_cls: Any = NoDecoding) -> Any:
        """Nonlinear random projections |xR|^2 of one vector or a batch of any leading shape.

        Returns:
            a :class:`ContextArray` (uint8 for 8-bit pixel formats, else uint16) of shape
            ``X.shape[:-1] + (n_components,)`` (``[:-2]`` after ``fit2d``), decoded by ``decoder_cls``; a tensor if
            ``X`` was one.

        Raises:
            InvalidInputError: before anything is sent, for a transform before a fit, values other than 0 and 1
                (floats included, even 0.0 and 1.0), or a shape that differs from the fitted one.
        """
        return self._run(X, encoder_cls, decoder_cls, linear=False)

    def linear_transform(self, X: Any, encoder_cls: Any = NoEncoding, decoder_cls: Any = NoDecoding) -> Any:
        """Linear random projections x B (float32) through the driver's linear mode, B with unit-variance
        entries, rescaled after decoding as ``rescale`` says. Real-valued input is accepted (the driver encodes
        it in bit planes); NaN, Inf and packed input are refused (InvalidInputError)."""
        return self._run(X, encoder_cls, decoder_cls, linear=True)

    def fit_transform1d(self, X: Any, packed: bool = False) -> Any:
        """``fit1d(X, packed=packed)`` then ``transform(X)``."""
        self.fit1d(X, packed=packed)
        return self.transform(X)

    def fit_transform2d(self, X: Any, packed: bool = False, n_2d_features: tuple[int, int] | None = None) -> Any:
        """``fit2d(X, n_2d_features, packed)`` then ``transform(X)``."""
        self.fit2d(X, n_2d_features, packed)
        return self.transform(X)

    def transform1d(self, *args: Any, **kwargs: Any) -> Any:
        """Removed in lightonml 1.4; use fit1d and transform."""
        raise OpuError("transform1d is deprecated: use fit1d and transform")

    def transform2d(self, *args: Any, **kwargs: Any) -> Any:
        """Removed in lightonml 1.4; use fit2d and transform."""
        raise OpuError("transform2d is deprecated: use fit2d and transform")

    def _run(self, X: Any, encoder_cls: Any, decoder_cls: Any, linear: bool) -> Any:
        fit = self._fit
        if fit is None:
            raise InvalidInputError("call fit1d or fit2d before transform")
        if linear and fit.packed:
            raise InvalidInputError("linear_transform does not take packed input")
        opu = self.opu
        encoder = encoder_cls() if isinstance(encoder_cls, type) else encoder_cls
        X_np, was_tensor = to_numpy(encoder.transform(X))
        batch_shape, rows = self._rows(X_np, fit)
        # values other than 0 and 1 (floats included) are refused by Opu.transform before anything is sent
        start = dt.datetime.now(dt.timezone.utc)
        if linear:
            flat = opu.linear_transform(rows, self.n_components)
        else:
            flat = opu.transform(rows, self.n_components)
        end = dt.datetime.now(dt.timezone.utc)
        context = self._context(opu, fit, rows, "linear_transform" if linear else "transform", start, end)
        Y: np.ndarray = ContextArray(flat.reshape(*batch_shape, self.n_components), context)
        decoder = _decoder(decoder_cls, encoder)
        Y = np.asarray(decoder.transform(Y)) if not isinstance(decoder, NoDecoding) else Y
        if linear:
            Y = self._rescaled(Y, fit)
        return like_input(Y, was_tensor)

    def _rows(self, X: np.ndarray, fit: Fit) -> tuple[tuple[int, ...], np.ndarray]:
        """X as (rows, n_features) 0/1 values (unpacked), and the leading shape of the batch."""
        if fit.packed:
            if X.dtype != np.uint8:
                raise InvalidInputError(f"packed input must be uint8, got {X.dtype}")
            width = math.ceil(fit.n_features / 8)
            if X.ndim < 1 or X.shape[-1] != width:
                raise InvalidInputError(f"packed input must end in {width} bytes, got shape {X.shape}")
            X = np.unpackbits(X, axis=-1)[..., : fit.n_features]
            return X.shape[:-1], X.reshape(-1, fit.n_features)
        k = len(fit.feature_shape)
        if X.ndim < k or tuple(X.shape[X.ndim - k :]) != fit.feature_shape:
            raise InvalidInputError(f"input of shape {X.shape} does not end in the fitted shape {fit.feature_shape}")
        batch_shape = tuple(X.shape[: X.ndim - k])
        return batch_shape, X.reshape(-1, fit.n_features)

    def _context(
        self, opu: Opu, fit: Fit, rows: np.ndarray, operation: str, start: dt.datetime, end: dt.datetime
    ) -> TransformContext:
        camera = opu.camera_settings
        roi = opu.roi_for(self.n_components)
        shape = fit.feature_shape
        return TransformContext(
            operation=operation,
            n_features=(shape[0], shape[1]) if len(shape) == 2 else shape[0],
            n_components=self.n_components,
            exposure_us=camera.exposure_us,
            frame_time_us=camera.frame_time_us,
            gain=camera.gain,
            pixel_format=None
            if camera.pixel_format is None
            else str(getattr(camera.pixel_format, "name", camera.pixel_format)),
            output_roi=(roi.x, roi.y, roi.width, roi.height),
            layout=opu.settings.layout,
            n_ones=float(np.count_nonzero(rows)) / max(rows.shape[0], 1),
            start=start,
            end=end,
            url=self.url,
            serial_number=opu.info.serial_number,
        )

    def _rescaled(self, Y: np.ndarray, fit: Fit) -> np.ndarray:
        # The driver's B has unit-variance entries, so lightonml's stdev is 1 here.
        if self.rescale == "variance":
            return (Y / np.float32(math.sqrt(fit.n_features))).astype(np.float32, copy=False)
        if self.rescale == "norm":
            return (Y / np.float32(math.sqrt(self.n_components))).astype(np.float32, copy=False)
        return Y


def _decoder(decoder_cls: Any, encoder: Any) -> BaseTransformer:
    """The decoder: an instance as given, or the class built from the encoder's ``get_params()`` if it has one."""
    if not isinstance(decoder_cls, type):
        return decoder_cls
    params = encoder.get_params() if hasattr(encoder, "get_params") else {}
    return decoder_cls(**params)
