"""The in-process backend: ``sim://...`` (the built-in emulator), ``usb://...`` (a physical OPU) and ``rig://...``
(a lab-built one).

It drives the device through ``opu_driver`` (imported only when this backend is used) and its linear mode:
``project`` is ``Opu.linear_transform``. Driver errors are re-raised as the client's through the one mapping of
``dfa_client.errors`` (the tcp backend uses it too, so the same failure is the same class on both), the driver's
error chained.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .base import Projector, ProjectorInfo
from .errors import InvalidInputError, error_from_kinds, kind_chain

if TYPE_CHECKING:  # the driver is imported at run time only when this backend is used
    from opu_driver import Opu

__all__ = ["LocalProjector", "LOCAL_SCHEMES"]

LOCAL_SCHEMES = ("sim", "usb", "rig")


@contextlib.contextmanager
def driver_errors() -> Iterator[None]:
    """Re-raise opu_driver errors as DFA client errors (:func:`~dfa_client.errors.error_from_kinds` of the
    error's class and bases, the original chained as the cause)."""
    from opu_driver import errors as driver

    try:
        yield
    except driver.OpuError as exc:
        raise error_from_kinds(kind_chain(exc, driver.OpuError), str(exc)) from exc


class LocalProjector(Projector):
    """Projections from an Opu opened in this process.

    Args:
        url: an opu_driver URL (``sim://?seed=3``, ``usb://1209:4f50?port=/dev/ttyACM0``).
        n_components, n_features, scheme, n_bits, max_batch: the projector options.
        opu: an already open Opu to use instead of opening ``url`` (it is not closed by close()).
        **opu_settings: opu_driver.open settings (pixel_format, exposure_us, calibration, ...).
    """

    backend = "local"

    def __init__(
        self,
        url: str,
        n_components: int,
        *,
        n_features: int | None = None,
        scheme: str = "four_frame",
        n_bits: int | None = None,
        max_batch: int = 65_536,
        opu: Opu | None = None,
        **opu_settings: Any,
    ) -> None:
        super().__init__(url, n_components, n_features=n_features, scheme=scheme, n_bits=n_bits, max_batch=max_batch)
        import opu_driver

        self._owns_opu = opu is None
        with driver_errors():
            self.opu: Opu = opu_driver.open(url, **opu_settings) if opu is None else opu
            n_pixels = self.opu.info.camera_width * self.opu.info.camera_height
        if self.n_components > n_pixels:
            self.close()
            raise InvalidInputError(f"n_components={self.n_components} exceeds the camera's {n_pixels} pixels")

    def _project(self, E: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float32]:
        with driver_errors():
            return self.opu.linear_transform(E, self.n_components, scheme=self.scheme, n_bits=self.n_bits)

    @property
    def frames_sent(self) -> int:
        """Frames the device displayed for this Opu's projections (driver counters)."""
        return self.opu.counters.frames_sent

    def _close(self) -> None:
        if self._owns_opu:
            self.opu.close()

    @property
    def info(self) -> ProjectorInfo:
        info = self.opu.info
        return ProjectorInfo(
            "local",
            self.url,
            self.n_features,
            self.n_components,
            self.scheme,
            self.n_bits,
            self.max_batch,
            {"model": info.model, "serial_number": info.serial_number, "firmware_version": info.firmware_version},
        )
