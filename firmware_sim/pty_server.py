"""Serve an emulated device's controller line on a real pseudo-terminal (``opu sim``).

A :class:`PtyServer` opens a pty pair in raw mode and moves bytes between its master side and the device's
serial methods in a background thread; any program (the driver, pyserial, a terminal emulator) can open the
slave path it returns, e.g. ``/dev/pts/5``, as it would open ``/dev/ttyACM0``. :func:`main` is the entry
point of the ``opu sim`` command: it builds a device from emulator options, prints the pty path and the
device identity, and serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import select
import signal
import sys
import threading
import tty
from collections.abc import Sequence
from typing import Any

__all__ = ["PtyServer", "main"]

_log = logging.getLogger(__name__)

_READ_CHUNK = 4096
_STOP_TIMEOUT_S = 5.0  # how long stop() waits for the serving thread
_POLL_S = 0.05


class PtyServer:
    """Bridges a pseudo-terminal and one device's controller line.

    Use ``start()`` / ``stop()`` or a ``with`` block; ``path`` is the slave device to open.
    """

    def __init__(self, device: Any, *, poll_s: float = _POLL_S) -> None:
        self.device = device
        self.poll_s = poll_s
        self.path: str | None = None
        self._master = -1
        self._slave = -1
        self._wake_r = -1
        self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> str:
        """Open the pty and start serving; returns the slave path (e.g. ``/dev/pts/5``)."""
        if self._thread is not None:
            raise RuntimeError("the pty server is already running")
        self._master, self._slave = os.openpty()
        # Raw: no echo, no line editing, no CR/LF translation; bytes pass exactly as the protocol defines them.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self._wake_r, self._wake_w = os.pipe()
        self.path = os.ttyname(self._slave)
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name=f"pty-{self.device.name}", daemon=True)
        self._thread.start()
        _log.info("controller line of %s on %s", self.device.name, self.path)
        return self.path

    def stop(self) -> None:
        """Stop serving and close the pty (idempotent)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping = True
            os.write(self._wake_w, b"x")
            thread.join(_STOP_TIMEOUT_S)
            if thread.is_alive():  # stuck in a device call: closing its descriptors below ends its select
                _log.warning(
                    "the pty server's thread did not stop within %.0f s; closing its descriptors", _STOP_TIMEOUT_S
                )
        for name in ("_master", "_slave", "_wake_r", "_wake_w"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> PtyServer:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _serve(self) -> None:
        pending = bytearray()  # replies the client has not taken yet (the pty buffer is full)
        while not self._stopping:
            writers = [self._master] if pending else []
            try:
                readable, writable, _ = select.select([self._master, self._wake_r], writers, [], self.poll_s)
            except OSError as exc:  # fds closed under us: stopping
                _log.debug("pty select failed: %s", exc)
                return
            if self._wake_r in readable:
                return
            if self._master in readable:
                try:
                    data = os.read(self._master, _READ_CHUNK)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EIO):
                        raise
                    data = b""
                if data:
                    self.device.serial_write(data)
            pending += self.device.serial_read(1 << 16)
            if pending and (writable or self._master not in writers):
                try:
                    written = os.write(self._master, pending)
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EIO):
                        raise
                    written = 0
                del pending[:written]


def main(argv: Sequence[str] | None = None) -> int:
    """``opu sim``: run an emulated OPU whose controller line is a pseudo-terminal.

    Prints ``pty: <path>`` and ``identity: <*IDN? reply>`` on stdout, then serves until SIGINT/SIGTERM.
    Returns the exit status (0 on a clean stop, 2 for bad options).
    """
    parser = argparse.ArgumentParser(
        prog="opu sim",
        description="Run an emulated OPU; its controller line is served on a pseudo-terminal. "
        "The USB side is in-process only (sim:// URLs).",
    )
    parser.add_argument(
        "--url-query",
        "--query",
        dest="query",
        default="",
        help="emulator options as a URL query, e.g. 'seed=3&lag=1&noise=0'",
    )
    parser.add_argument("--name", default=None, help="in-process device name (default sim-<n>)")
    args = parser.parse_args(argv)

    from .errors import SimConfigError
    from .registry import create_device, release_device

    try:
        device = create_device(args.query.lstrip("?"), name=args.name)
    except SimConfigError as exc:
        print(f"opu sim: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with PtyServer(device) as server:
            print(f"pty: {server.path}", flush=True)
            print(f"identity: {device.controller.identity}", flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        release_device(device)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
