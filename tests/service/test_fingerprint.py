"""The device fingerprint (opu_driver.service.fingerprint): what it covers, and what it says about a part it
cannot read."""

from __future__ import annotations

import logging
import re
import socket
import time
from typing import Any

import numpy as np
import pytest

import dfa_client
import opu_driver
from dfa_client import wire
from dfa_client.errors import DeviceChangedError
from dfa_client.wire import MessageType, WireLimits
from opu_driver.errors import CommunicationTimeoutError
from opu_driver.service import OpuService
from opu_driver.service.fingerprint import UNREADABLE, device_fingerprint, fingerprint_parts
from tests.support import service_token, small_sim

URL = small_sim("noise=0&seed=5")


class _LaserPowerUnanswered:
    """A controller whose laser power query goes unanswered (as on a serial line that stopped answering it);
    everything else is the real controller's."""

    def __init__(self, controller: Any) -> None:
        self._controller = controller

    @property
    def laser_power_mw(self) -> float:
        raise CommunicationTimeoutError("no answer to LASER:POWER?")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


def _welcome(svc: OpuService) -> dict[str, Any]:
    """The WELCOME header a client gets from ``svc``."""
    host, port = svc.address
    with socket.create_connection((host, port), timeout=5) as sock:
        wire.send_message(
            sock,
            MessageType.HELLO,
            0,
            {
                "protocol_version": wire.PROTOCOL_VERSION,
                "token": service_token(),
                "n_components": 10,
                "n_features": None,
                "scheme": "four_frame",
                "n_bits": None,
                "max_batch": 4,
            },
        )
        reply = wire.read_message(sock, WireLimits(), time.monotonic() + 5)
    assert reply.type is MessageType.WELCOME, reply
    return reply.header


def test_the_fingerprint_covers_every_part_that_fixes_the_matrix() -> None:
    with opu_driver.open(URL) as opu:
        parts = fingerprint_parts(opu)
        fingerprint = device_fingerprint(opu)
        with OpuService(URL, opu=opu) as svc:
            welcome = _welcome(svc)
    assert set(parts) == {
        "model",
        "serial_number",
        "firmware_version",
        "camera",
        "laser_power_mw",
        "reference_fraction",
    }  # no calibration applied at open: none to cover
    assert UNREADABLE not in parts.values()
    assert welcome["device_fingerprint"] == fingerprint and re.fullmatch("[0-9a-f]{16}", fingerprint)


def test_a_part_that_cannot_be_read_is_marked_unreadable_logged_and_changes_the_fingerprint(caplog) -> None:
    with opu_driver.open(URL) as opu:
        readable = fingerprint_parts(opu)
        full = OpuService(URL, opu=opu).start()
        host, port = full.address
        projector = dfa_client.connect(f"tcp://{host}:{port}", n_components=10, retries=4, backoff_s=0.05)
        E = np.ones((1, 20))
        projector.project(E)  # the projector keeps this service's identity
        full.stop()
        controller = opu.controller
        opu.controller = _LaserPowerUnanswered(controller)
        try:
            with caplog.at_level(logging.WARNING, logger="opu_driver.service.fingerprint"):
                parts = fingerprint_parts(opu)
                with OpuService(URL, bind=(host, port), opu=opu) as partial:
                    welcome = _welcome(partial)
                    # The same device, but its fingerprint no longer covers the laser power: the client is told,
                    # rather than taking results whose scale it can no longer vouch for.
                    with pytest.raises(DeviceChangedError, match="device_fingerprint"):
                        projector.project(E)
        finally:
            opu.controller = controller
            projector.close()
    assert parts["laser_power_mw"] == UNREADABLE != readable["laser_power_mw"]
    assert {k: v for k, v in parts.items() if k != "laser_power_mw"} == {
        k: v for k, v in readable.items() if k != "laser_power_mw"
    }  # the other parts are still read
    assert welcome["serial_number"] == readable["serial_number"]
    assert re.fullmatch("[0-9a-f]{16}", welcome["device_fingerprint"])
    warnings = [
        r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "laser_power_mw" in r.getMessage()
    ]
    assert warnings, caplog.text
    assert all("CommunicationTimeoutError" in w and UNREADABLE in w for w in warnings)
