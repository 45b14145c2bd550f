"""A lab-built OPU as a rig: ``rig://path/to/rig.toml`` builds the parts its file names and wires them.

The backends are imported when a rig file names them, so a lab without Aravis (or without an ALP library) can
still run a rig that does not use them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ...errors import ConfigurationError, ConnectionLostError, InvalidInputError
from ..controller import Identity
from ..rig import LinkCounters, Rig, RigInfo
from .adapters import LabCamera, LabController, LabDmd, MatchCounters, Wiring
from .parts import LightSource, PatternDmd, TriggeredCamera
from .rigfile import RigSpec, load_rig_file

__all__ = ["LabRig", "make_lab_rig", "rig_file_path", "LAB_PROTOCOL_VERSION"]

_log = logging.getLogger(__name__)

LAB_PROTOCOL_VERSION = 0
"""What a lab rig reports as its protocol version: its parts speak their own protocols, not the OPU's."""


class LabRig(Rig):
    """The parts of a lab-built OPU, wired by the DMD's trigger-out to the camera's trigger line."""

    def __init__(
        self,
        spec: RigSpec,
        dmd: PatternDmd,
        camera: TriggeredCamera,
        light: LightSource,
        url: str,
        world: Any | None = None,
        wiring: Wiring | None = None,
    ) -> None:
        self.spec = spec
        self.on_release: Callable[[], None] | None = None
        self.wiring = wiring or Wiring(spec.picture_time_us)
        self.dmd_part, self.camera_part, self.light_part = dmd, camera, light
        lab_dmd = LabDmd(dmd, self.wiring, region=spec.dmd.region)
        lab_camera = LabCamera(
            camera,
            self.wiring,
            trigger_line=spec.camera.options.get("trigger_line", "Line1"),
            region=spec.camera.region,
            min_picture_time_us=lambda: lab_dmd.info.min_picture_time_us if lab_dmd.info else 0,
        )
        # a rig has no firmware of its own: it runs on this driver, whose version it reports
        identity = Identity("lab-built", spec.name, spec.serial_number or spec.name, _driver_version())
        controller = LabController(light, identity)
        super().__init__(lab_dmd, lab_camera, controller, url, emulator=world)

        def light_on() -> bool:
            wanted = controller.wanted
            return bool(wanted.laser_on) and wanted.shutter_open is not False

        self.wiring.light_on = light_on

    @property
    def match_counters(self) -> MatchCounters:
        """What the frame matching met so far (plays given up, buffers lost, triggers missed)."""
        return self.wiring.counters

    def _do_open(self) -> RigInfo:
        return RigInfo(protocol_version=LAB_PROTOCOL_VERSION)

    def _do_release(self) -> None:
        # each part released its own device when it closed; an emulated part also leaves its registry
        if self.on_release is not None:
            release, self.on_release = self.on_release, None
            release()

    def _do_clear_link_faults(self) -> None:
        pass  # the parts have no shared link; each backend clears its own faults where they happen

    def _do_reconnect(self, timeout_s: float) -> None:
        raise ConnectionLostError("a lab rig does not reconnect its parts on its own: open it again")

    def _do_link_counters(self) -> LinkCounters:
        dmd, camera = self.dmd, self.camera
        assert isinstance(dmd, LabDmd) and isinstance(camera, LabCamera)
        return LinkCounters(
            bytes_sent=dmd.bytes_loaded,
            bytes_received=camera.bytes_received,
            packet_faults=self.wiring.counters.incomplete,
        )


def _driver_version() -> str:
    try:
        version = importlib.metadata.version("opu-driver")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"
    return ".".join((version.split(".") + ["0", "0"])[:3])


def rig_file_path(url: str) -> Path:
    """The rig file a ``rig://`` URL names (``rig:///abs/path.toml``, ``rig://relative/path.toml``)."""
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigurationError(f"{url!r}: a rig URL takes no options; put them in the rig file")
    path = unquote(parts.netloc + parts.path)
    if not path:
        raise ConfigurationError(f"{url!r} names no rig file: use rig://path/to/rig.toml")
    return Path(path)


def _build_dmd(spec: RigSpec, world: Any | None, wiring: Wiring) -> PatternDmd:
    options = {k: v for k, v in spec.dmd.options.items() if k != "region"}
    backend = spec.dmd.backend
    if backend == "alp":
        from .alp import AlpDmd

        return AlpDmd(options.pop("library"), **options)
    if backend == "fake-alp":
        from .emulated import fake_alp_dmd

        return fake_alp_dmd(world, lambda: wiring.picture_time_us, **options)
    if backend == "fake-dlpc900":
        from .emulated import fake_dlpc900_dmd

        return fake_dlpc900_dmd(world, lambda: wiring.picture_time_us, **options)
    if backend == "dlpc900":
        from .dlpc900 import Dlpc900Dmd

        return Dlpc900Dmd(**options)
    from .emulated import EmulatedDmdPart

    return EmulatedDmdPart(world, **options)


def _build_camera(spec: RigSpec, world: Any | None) -> TriggeredCamera:
    options = {k: v for k, v in spec.camera.options.items() if k not in ("region", "trigger_line")}
    if spec.camera.backend == "aravis":
        from .aravis import AravisCamera

        return AravisCamera(**options)
    from .emulated import EmulatedCameraPart

    return EmulatedCameraPart(world, **options)


def _build_light(spec: RigSpec, world: Any | None) -> tuple[LightSource, Any]:
    """The light source, and what releases it beyond its own close (an emulator's registration), or None."""
    options = dict(spec.light.options)
    if spec.light.backend == "cobolt":
        from .cobolt import CoboltLaser

        return CoboltLaser(options.pop("port"), **options), None
    if spec.light.backend == "manual":
        from .manual_light import ManualLight

        return ManualLight(), None
    from .emulated import emulated_laser

    return emulated_laser(world, **options)


@contextlib.contextmanager
def _naming(spec: RigSpec, section: str) -> Iterator[None]:
    """A part's refusal of its options (InvalidInputError) as a ConfigurationError naming the file and section."""
    try:
        yield
    except InvalidInputError as exc:
        raise ConfigurationError(f"rig file {spec.path} [{section}]: {exc}") from exc


def make_lab_rig(url: str, controller_retries: int = 0) -> LabRig:
    """Build (not open) the rig a ``rig://path/to/rig.toml`` URL names; ConfigurationError for a bad file."""
    spec = load_rig_file(rig_file_path(url))
    world = None
    if spec.emulated_parts:
        from .emulated import make_world

        world = make_world(spec.emulator_query or "")
    _log.info(
        "rig %s from %s: DMD %s, camera %s, light %s",
        spec.name,
        spec.path,
        spec.dmd.backend,
        spec.camera.backend,
        spec.light.backend,
    )
    wiring = Wiring(spec.picture_time_us)
    with _naming(spec, "light"):
        light, release_light = _build_light(spec, world)
    with _naming(spec, "dmd"):
        dmd = _build_dmd(spec, world, wiring)
    with _naming(spec, "camera"):
        camera = _build_camera(spec, world)
    rig = LabRig(spec, dmd, camera, light, url, world, wiring)
    rig.on_release = release_light
    return rig
