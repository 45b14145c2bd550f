"""The emulated parts of a lab rig: the driver's one door into :mod:`firmware_sim.lab`.

An emulated rig is the lab rig with its parts replaced by emulators that share one emulated optical path
(:class:`firmware_sim.lab.world.LabWorld`): the DMD's pictures, through the same scattering medium and sensor
model as the protocol-v1 emulator, become the triggered camera's exposures. The DMD can be the fake ALP library
(driven by the real :class:`~opu_driver.devices.lab.alp.AlpDmd` through cffi) or a plain emulated DMD; the camera
is emulated (the GenICam camera's behaviour: 16-bit ids that wrap, device timestamps, bounded buffers, faults); the
laser is the serial laser's emulator driven by the real serial backend.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import numpy.typing as npt

from ...errors import ConfigurationError, DeviceRefusedError, UnsupportedUrlError
from ...protocol import PixelFormat
from .parts import (
    CameraBuffer,
    GrabSettings,
    LightSource,
    PatternDmd,
    PatternDmdInfo,
    StreamCounters,
    TriggeredCamera,
    TriggeredCameraInfo,
)

__all__ = [
    "EmulatedWorld",
    "EmulatedDmdPart",
    "EmulatedCameraPart",
    "emulated_laser",
    "fake_alp_dmd",
    "fake_dlpc900_dmd",
    "make_world",
]

_FORMATS = {PixelFormat.MONO8: "Mono8", PixelFormat.MONO10: "Mono10", PixelFormat.MONO12: "Mono12"}


def make_world(query: str) -> Any:
    """The emulated optics of a rig (``[emulator] sim = "dmd=96x64&..."``, the ``sim://`` URL's options)."""
    from firmware_sim.config import SimConfig
    from firmware_sim.errors import SimError
    from firmware_sim.lab.world import LabWorld

    try:
        config = SimConfig.from_query(query)
    except SimError as exc:
        raise UnsupportedUrlError(f"[emulator] sim = {query!r}: {exc}") from exc
    return LabWorld(config)


EmulatedWorld = Any
"""A :class:`firmware_sim.lab.world.LabWorld` (typed loosely: the driver does not import the emulator eagerly)."""


def _refused(exc: Exception) -> DeviceRefusedError:
    return DeviceRefusedError(str(exc))


class EmulatedDmdPart(PatternDmd):
    """The plain emulated DMD of the world (no library): it shows pictures on the world's clock."""

    def __init__(self, world: EmulatedWorld, *, max_pictures: int = 4096, min_picture_time_us: int = 100) -> None:
        from firmware_sim.lab.world import EmulatedPatternDmd

        self._dmd = EmulatedPatternDmd(world, max_pictures=max_pictures, min_picture_time_us=min_picture_time_us)
        self._n = 0

    def open(self) -> PatternDmdInfo:
        d = self._dmd
        return PatternDmdInfo(
            "emulated DMD",
            d.serial_number,
            d.width,
            d.height,
            d.max_pictures,
            d.min_picture_time_us,
            counts_progress=True,
        )

    def prepare(self, packed: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
        return np.ascontiguousarray(packed, dtype=np.uint8)

    def load(self, prepared: Any, n_pictures: int, picture_time_us: int) -> None:
        from firmware_sim.errors import SimError

        try:
            self._dmd.load(prepared, picture_time_us)
        except SimError as exc:
            raise _refused(exc) from exc
        self._n = n_pictures

    def play(self) -> None:
        self._dmd.play()

    def wait(self, timeout_s: float) -> None:
        pass  # the emulated play is over when play() returns

    def progress(self) -> int | None:
        return self._dmd.shown

    def halt(self) -> None:
        self._dmd.halt()

    def close(self) -> None:
        self._dmd.halt()


class EmulatedCameraPart(TriggeredCamera):
    """The world's emulated GenICam-like camera, wired to the DMD's trigger-out on Line1."""

    def __init__(
        self,
        world: EmulatedWorld,
        *,
        n_buffers: int = 256,
        faults: dict[str, float] | None = None,
        gain_unit: str = "factor",
    ) -> None:
        from firmware_sim.errors import SimError
        from firmware_sim.lab.world import CameraFaults, EmulatedCamera

        try:
            camera_faults = CameraFaults(**(faults or {}))
        except (SimError, TypeError) as exc:
            raise ConfigurationError(f"[camera] faults: {exc}") from exc
        if gain_unit not in ("factor", "dB"):
            raise ConfigurationError(f"[camera] gain_unit must be 'factor' or 'dB', got {gain_unit!r}")
        self.camera = EmulatedCamera(world, max_buffers=n_buffers, faults=camera_faults, gain_db=gain_unit == "dB")
        world.add_camera(self.camera)

    def open(self) -> TriggeredCameraInfo:
        c = self.camera
        return TriggeredCameraInfo(
            "emulated camera",
            c.serial_number,
            c.width,
            c.height,
            tuple(_FORMATS),
            frame_id_modulus=1 << 16,
            skipped_ids=(0,),
            timestamp_tick_ns=1.0,
            max_buffers=c.max_buffers,
            gain_range=c.gain_range,
            gain_unit="dB" if c.gain_db else "factor",
        )

    def configure(self, settings: GrabSettings) -> GrabSettings:
        from firmware_sim.errors import SimError

        if settings.pixel_format not in _FORMATS:
            raise ConfigurationError(f"pixel format {settings.pixel_format!r} not supported by the emulated camera")
        try:
            self.camera.configure(
                (settings.x, settings.y, settings.width, settings.height),
                settings.exposure_us,
                settings.gain,
                _FORMATS[settings.pixel_format],
                settings.trigger_line,
            )
        except SimError as exc:
            raise ConfigurationError(str(exc)) from exc
        return self.read_settings()

    def read_settings(self) -> GrabSettings:
        c = self.camera
        fmt = {name: code for code, name in _FORMATS.items()}[c.pixel_format]
        x, y, w, h = c.roi
        return GrabSettings(x, y, w, h, c.exposure_us, c.gain, fmt, c.trigger_line)

    def start(self) -> None:
        self.camera.start()

    def read(self, timeout_s: float) -> CameraBuffer | None:
        item = self.camera.read(timeout_s)
        if item is None:
            return None
        return CameraBuffer(
            item["frame_id"],
            item["device_time_ns"],
            time.monotonic_ns(),
            item["complete"],
            item["pixels"],
            "" if item["complete"] else "packets missing",
        )

    def stop(self) -> None:
        self.camera.stop()

    def counters(self) -> StreamCounters:
        c = self.camera.counters
        return StreamCounters(
            completed=c.delivered - c.incomplete, failures=c.incomplete, missing_frames=c.transport_lost
        )

    def close(self) -> None:
        self.camera.stop()


def emulated_laser(world: EmulatedWorld, *, max_power_mw: float = 100.0) -> tuple[LightSource, Any]:
    """The serial laser's emulator on a ``coboltsim://`` line, driven by the real :class:`CoboltLaser` backend,
    and wired to the world's optics (the light reaches the camera while it emits, at its output power).

    Returns the backend and a function that unregisters the emulated laser (call it when the rig is released).
    """
    import itertools

    from firmware_sim.lab.cobolt import CoboltSimConfig, create_laser, release_laser

    from .cobolt import CoboltLaser

    for number in itertools.count():
        name = f"lab-{id(world):x}-{number}"
        try:
            laser = create_laser(name, CoboltSimConfig(max_power_mw=float(max_power_mw)))
        except ValueError:
            continue
        break
    laser.set_power_w = min(float(world.config.laser_power_mw), float(max_power_mw)) / 1000.0
    world.light = lambda: (laser.on, laser.output_power_w * 1000.0)
    return CoboltLaser(f"coboltsim://{name}"), lambda: release_laser(name)


def fake_dlpc900_dmd(world: EmulatedWorld, picture_time_us: Any, **options: Any) -> PatternDmd:
    """The real :class:`Dlpc900Dmd` backend on the byte-level emulator of the controller (through pyusb's backend
    interface), its patterns shown to the world's optics. ``picture_time_us()`` is the rig's picture period."""
    from firmware_sim.lab.dlpc900 import Dlpc900Backend, Dlpc900Emulator

    from .dlpc900 import Dlpc900Dmd

    config = world.config
    emulator = Dlpc900Emulator(config.dmd_width, config.dmd_height, serial_number=f"EMU-DLPC900-{config.seed}")
    emulator.on_display(lambda packed, index, time_us: world.display(packed, index, picture_time_us(), time_us))
    return Dlpc900Dmd(backend=Dlpc900Backend([emulator]), geometry=(config.dmd_width, config.dmd_height), **options)


def fake_alp_dmd(world: EmulatedWorld, picture_time_us: Any, **options: Any) -> PatternDmd:
    """The real :class:`AlpDmd` backend on the fake ALP library (compiled from C with gcc on first use, cached),
    its pictures shown to the world's optics. The fake is one library image per process: one such rig at a time."""
    from firmware_sim.errors import SimError
    from firmware_sim.lab.fake_alp import FakeAlpLibrary, build_fake_alp

    from ...errors import LibraryLoadError
    from .alp import AlpDmd

    try:
        path = build_fake_alp()
    except SimError as exc:
        raise LibraryLoadError(f"cannot build the fake ALP library (it needs gcc): {exc}") from exc
    fake = FakeAlpLibrary(path)
    fake.reset()
    config = world.config
    fake.configure(config.dmd_width, config.dmd_height, serial=10_000 + config.seed)
    fake.on_display(lambda packed, index, time_us: world.display(packed, index, picture_time_us(), time_us))
    world.fake_alp = fake  # the display hook lives as long as the world
    if options.get("trigger_in") is None:
        return AlpDmd(path, **options)

    class GeneratorPacedAlpDmd(AlpDmd):
        """In slave mode, with the emulated rig's signal generator on the DMD's trigger input: from each play's
        start it sends one edge per picture time, so every loaded picture is shown, one per edge."""

        def play(self) -> None:
            super().play()
            fake.trigger_in(self._n_loaded)

    return GeneratorPacedAlpDmd(path, **options)
