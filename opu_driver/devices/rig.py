"""A rig: the parts of one OPU composed (a DMD, a camera, a controller for the light), opened and closed together.

The :class:`~opu_driver.Opu` drives a rig through the part interfaces only (:class:`Dmd`, :class:`Camera`,
:class:`Controller`) plus the few things that concern the whole rig, which are here: opening the parts in order,
closing them safely, clearing faults of the link they share, coming back after an unplug, and counting the bytes
that crossed the link. A backend (protocol v1: one USB device and one serial line) subclasses :class:`Rig` and
writes its hooks.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from .camera import Camera
from .controller import Controller
from .dmd import Dmd

__all__ = ["Rig", "RigInfo", "LinkCounters"]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkCounters:
    """What crossed the data link of a rig since it was built (a snapshot).

    Attributes:
        bytes_sent: bytes of frames and tables sent to the DMD.
        bytes_received: bytes of camera data received.
        packet_faults: corrupt packets received (never decoded as data).
        halts_cleared: stalled endpoints cleared.
    """

    bytes_sent: int = 0
    bytes_received: int = 0
    packet_faults: int = 0
    halts_cleared: int = 0


@dataclass(frozen=True)
class RigInfo:
    """What the rig says about itself as a whole, read when it opens."""

    protocol_version: int


class Rig(ABC):
    """The parts of one OPU and what concerns them together.

    Attributes:
        dmd, camera, controller: the parts, built (not yet opened) by the backend.
        url: the device URL the rig was made from.
        emulator: the in-process emulated device behind a ``sim://`` URL (its ground truth is for tests), else
            None.
    """

    def __init__(self, dmd: Dmd, camera: Camera, controller: Controller, url: str, emulator: Any | None = None) -> None:
        self.dmd = dmd
        self.camera = camera
        self.controller = controller
        self.url = url
        self.emulator = emulator
        self._info: RigInfo | None = None

    @property
    def info(self) -> RigInfo:
        """What :meth:`open` read (the protocol version)."""
        if self._info is None:
            raise RuntimeError("the rig is not open")
        return self._info

    def open(self) -> None:
        """Open the link, check the device speaks a protocol this driver knows, then open the parts in order."""
        self._info = self._do_open()
        self.dmd.open()
        self.camera.open()
        self.controller.open()
        self._do_check_parts()

    def close(self) -> list[BaseException]:
        """Switch the light off and close every part, then release the links; never raises.

        Returns the errors met on the way (a part that fails to close does not stop the others), for the caller
        to report.
        """
        errors: list[BaseException] = []
        for part in (self.controller, self.dmd, self.camera):
            try:
                part.close()
            except Exception as exc:  # keep closing the rest
                errors.append(exc)
        try:
            self._do_release()
        except Exception as exc:
            errors.append(exc)
        return errors

    def clear_link_faults(self) -> None:
        """Clear what a fault left on the link the parts share (stalled endpoints); never raises."""
        self._do_clear_link_faults()

    def reconnect(self, timeout_s: float) -> None:
        """After an unplug: wait up to ``timeout_s`` for the same device, reopen its links and check it is the one
        opened (identity and geometry). The caller restores the parts' settings afterwards.

        Raises:
            ConnectionLostError: the device did not come back in time.
            DeviceNotFoundError: a link could not be opened again.
            ProtocolError: a different device answered.
        """
        self._do_reconnect(timeout_s)

    @property
    def link_counters(self) -> LinkCounters:
        """Bytes and faults of the rig's data link so far."""
        return self._do_link_counters()

    # -- hooks ----------------------------------------------------------------------------------------
    @abstractmethod
    def _do_open(self) -> RigInfo:
        """Hook: open the links the parts share and check the protocol version."""

    def _do_check_parts(self) -> None:  # noqa: B027 - an optional hook: most rigs have nothing to check
        """Hook: check that the opened parts belong together (one OPU); default: nothing to check."""

    @abstractmethod
    def _do_release(self) -> None:
        """Hook: close the links (after the parts are closed); idempotent."""

    @abstractmethod
    def _do_clear_link_faults(self) -> None:
        """Hook: clear stalled endpoints or the like; never raises."""

    @abstractmethod
    def _do_reconnect(self, timeout_s: float) -> None:
        """Hook: reopen the same device after an unplug and check it is the one opened."""

    @abstractmethod
    def _do_link_counters(self) -> LinkCounters:
        """Hook: the counters of the data link."""
