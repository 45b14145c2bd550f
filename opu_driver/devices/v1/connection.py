"""The URLs of protocol-v1 devices: one string picks the emulator or the physical device.

- ``sim://?seed=3&lag=1&noise=0`` : a new in-process emulator (``firmware_sim``), options in the query
  (docs/emulator.md lists them), released when the Opu closes. It plugs in under the driver as a pyusb
  backend and a pyserial URL handler, so everything above the transports is the hardware code path.
- ``sim://NAME`` : an existing in-process emulated device (``firmware_sim.create_device``), which outlives the
  Opu as a physical device does: open it, close it, open it again.
- ``usb://[VID:PID][/SERIAL]?port=/dev/ttyACM0`` : a physical OPU by USB ids (default 1209:4f50) and serial
  number, with its controller line on ``port`` (found from the USB serial number when omitted).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from ...errors import ConfigurationError, DeviceNotFoundError, LibraryLoadError, UnsupportedUrlError
from ...protocol import USB_PRODUCT_ID, USB_VENDOR_ID
from ...transport import SerialTransport, UsbTransport, list_serial_ports

__all__ = ["Connection", "connect", "parse_url", "DeviceUrl"]

_log = logging.getLogger(__name__)

V1_SCHEMES = ("sim", "usb")


@dataclass(frozen=True)
class DeviceUrl:
    """A parsed device URL."""

    scheme: str
    vendor_id: int = USB_VENDOR_ID
    product_id: int = USB_PRODUCT_ID
    serial_number: str | None = None
    port: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    text: str = field(default="", compare=False)
    """The URL as given."""


@dataclass
class Connection:
    """The two transports of one OPU, and what to do when it is closed."""

    url: DeviceUrl
    usb: UsbTransport
    serial: SerialTransport
    emulator: Any | None = None
    _cleanup: Callable[[], None] | None = None

    def close(self) -> None:
        try:
            self.usb.close()
        finally:
            try:
                self.serial.close()
            finally:
                if self._cleanup is not None:
                    self._cleanup()
                    self._cleanup = None


def parse_url(url: str) -> DeviceUrl:
    """Parse and check a device URL; UnsupportedUrlError names what is wrong and what would work."""
    if not isinstance(url, str) or "://" not in url:
        raise UnsupportedUrlError(
            f"not a device URL: {url!r}; use sim://?seed=0 (emulator) or usb://1209:4f50?port=/dev/ttyACM0"
        )
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in V1_SCHEMES:
        raise UnsupportedUrlError(f"unknown URL scheme {parts.scheme!r} in {url!r}; known: {', '.join(V1_SCHEMES)}")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise UnsupportedUrlError(f"malformed query in {url!r}") from exc
    options = dict(pairs)
    if len(options) != len(pairs):  # a dict would keep only the last of repeated options
        raise UnsupportedUrlError(f"an option is given twice in {url!r}")
    if scheme == "sim":
        if parts.path not in ("", "/") or (parts.netloc and options):
            raise UnsupportedUrlError(
                f"use sim://?seed=3 (a new emulator, options in the query) or sim://NAME (an existing one); got {url!r}"
            )
        return DeviceUrl("sim", serial_number=parts.netloc or None, options=options, text=url)
    vendor_id, product_id = USB_VENDOR_ID, USB_PRODUCT_ID
    if parts.netloc:
        try:
            vid, pid = parts.netloc.split(":")
            if not (vid.isascii() and pid.isascii()):  # int() would take other scripts' digits
                raise ValueError(parts.netloc)
            vendor_id, product_id = int(vid, 16), int(pid, 16)
        except ValueError:
            raise UnsupportedUrlError(
                f"USB ids must be VID:PID in hex (e.g. 1209:4f50), got {parts.netloc!r}"
            ) from None
    serial_number = parts.path.strip("/") or None
    port = options.pop("port", None)
    if options:
        raise UnsupportedUrlError(f"unknown options {sorted(options)} in {url!r}; usb URLs take only port=")
    return DeviceUrl("usb", vendor_id, product_id, serial_number, port, text=url)


def connect(url: str) -> Connection:
    """Build (not yet open) the transports for ``url``."""
    parsed = parse_url(url)
    if parsed.scheme == "sim":
        return _connect_sim(parsed)
    return _connect_usb(parsed)


def _connect_sim(parsed: DeviceUrl) -> Connection:
    """The emulator hook: the only place the driver imports ``firmware_sim``, whose own errors become the driver's."""
    try:
        import firmware_sim
        from firmware_sim.config import SimConfig
        from firmware_sim.errors import SimConfigError, SimDeviceNotFoundError
        from firmware_sim.usb_backend import get_backend
    except ImportError as exc:  # pragma: no cover - firmware_sim ships with the driver
        raise LibraryLoadError("the emulator package firmware_sim is not installed") from exc
    cleanup: Callable[[], None] | None
    try:
        if parsed.serial_number is not None:  # sim://NAME: a device that lives on after this connection
            device = firmware_sim.get_device(parsed.serial_number)
            cleanup = None
        else:
            config = SimConfig.from_query(parsed.options)
            device = firmware_sim.create_device(config)
            _log.info("emulated OPU %s (serial %s) with %s", device.name, device.serial_number, config.to_query())
            cleanup = functools.partial(firmware_sim.release_device, device)
    except SimConfigError as exc:
        raise ConfigurationError(exc.message) from exc
    except SimDeviceNotFoundError as exc:
        raise DeviceNotFoundError(exc.message) from exc
    usb = UsbTransport(serial_number=device.serial_number, backend=get_backend([device]))
    serial = SerialTransport(f"opusim://{device.name}")
    return Connection(parsed, usb, serial, emulator=device, _cleanup=cleanup)


def _connect_usb(parsed: DeviceUrl) -> Connection:
    port = parsed.port
    if port is None:
        if parsed.serial_number is None:
            raise ConfigurationError(
                "give the controller port (usb://1209:4f50?port=/dev/ttyACM0) or the device serial number "
                "(usb://1209:4f50/SERIAL) so the port can be found; `opu list` shows both"
            )
        matches = [p for p in list_serial_ports() if getattr(p, "serial_number", None) == parsed.serial_number]
        if not matches:
            raise DeviceNotFoundError(
                f"no serial port belongs to OPU {parsed.serial_number}; pass ?port=... (see `opu list`)"
            )
        port = matches[0].device
    usb = UsbTransport(parsed.vendor_id, parsed.product_id, serial_number=parsed.serial_number)
    serial = SerialTransport(port)
    return Connection(parsed, usb, serial)
