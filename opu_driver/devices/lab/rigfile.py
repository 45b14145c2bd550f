"""The rig file: which backend drives each part of a lab-built OPU, how to reach it, and how the parts are wired.

A rig file is TOML (``opu_driver.open("rig://path/to/rig.toml")``)::

    [rig]
    name = "bench OPU"            # the Opu's model name
    serial_number = "lab-0001"
    picture_time_us = 500         # the DMD's picture period, also the camera's frame time

    [dmd]
    backend = "alp"               # alp | dlpc900 | emulated | fake-alp | fake-dlpc900
    library = "alp4395.dll"       # the ALP-4.x library: a bare name, or a path
    region = [0, 0, 1024, 768]    # mirrors used (x, y, width, height); default all

    [camera]
    backend = "aravis"            # aravis | emulated
    device_id = ""                # the camera's id (empty: the first found)
    trigger_line = "Line1"        # the input the DMD's trigger-out drives
    region = [0, 0, 640, 480]     # sensor pixels the speckle covers; default all

    [light]
    backend = "cobolt"            # cobolt | manual | emulated
    port = "/dev/ttyUSB0"

    [emulator]                    # the emulated optics, when a part is emulated
    sim = "dmd=96x64&camera=64x48&cell=4&seed=0"

Every key is checked here, before anything is opened: an unknown section or key, a wrong type or a missing
required key is a :class:`~opu_driver.errors.ConfigurationError` naming the file, the key and what is allowed.
A relative ``library`` path is relative to the rig file; a bare file name (``alp4395.dll``) is looked up where the
system looks for libraries. The backends' own options are listed in
``BACKEND_OPTIONS``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["RigSpec", "PartSpec", "load_rig_file", "parse_rig", "BACKEND_OPTIONS", "MAX_RIG_FILE_BYTES"]

MAX_RIG_FILE_BYTES = 1 << 20
"""A rig file larger than this is refused before it is parsed."""

_STR, _INT, _FLOAT, _BOOL, _REGION, _TABLE = "a string", "an integer", "a number", "true or false", "region", "table"

BACKEND_OPTIONS: dict[str, dict[str, dict[str, str]]] = {
    "dmd": {
        "alp": {
            "library": _STR,
            "device_number": _INT,
            "region": _REGION,
            "synch_pulse_width_us": _INT,
            "synch_active_high": _BOOL,
            "trigger_in": _STR,
            "trigger_in_delay_us": _INT,
        },
        "dlpc900": {"serial_number": _STR, "max_upload_s": _FLOAT, "region": _REGION},
        "emulated": {"max_pictures": _INT, "min_picture_time_us": _INT, "region": _REGION},
        "fake-dlpc900": {"region": _REGION, "max_upload_s": _FLOAT},
        "fake-alp": {
            "region": _REGION,
            "synch_pulse_width_us": _INT,
            "synch_active_high": _BOOL,
            "trigger_in": _STR,
            "trigger_in_delay_us": _INT,
        },
    },
    "camera": {
        "aravis": {"device_id": _STR, "trigger_line": _STR, "n_buffers": _INT, "packet_size": _INT, "region": _REGION},
        "emulated": {
            "trigger_line": _STR,
            "n_buffers": _INT,
            "region": _REGION,
            "faults": _TABLE,
            "gain_unit": _STR,
        },
    },
    "light": {
        "cobolt": {"port": _STR, "baudrate": _INT, "max_power_mw": _FLOAT},
        "manual": {},
        "emulated": {"max_power_mw": _FLOAT},  # the serial laser's emulator, driven by the cobolt backend
    },
}
"""Per part and backend, the keys its section may hold (besides ``backend``) and their types."""

_RIG_KEYS = {"name": _STR, "serial_number": _STR, "picture_time_us": _INT}
_EMULATOR_KEYS = {"sim": _STR}


@dataclass(frozen=True)
class PartSpec:
    """One part of the rig: its backend and that backend's options (checked)."""

    backend: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def region(self) -> tuple[int, int, int, int] | None:
        region = self.options.get("region")
        return None if region is None else (int(region[0]), int(region[1]), int(region[2]), int(region[3]))


@dataclass(frozen=True)
class RigSpec:
    """A rig file, checked: the rig's identity and picture period, its three parts, and the emulated optics."""

    path: Path
    name: str
    serial_number: str
    picture_time_us: int
    dmd: PartSpec
    camera: PartSpec
    light: PartSpec
    emulator_query: str | None = None

    @property
    def emulated_parts(self) -> tuple[str, ...]:
        """The parts whose backend is an emulator (they share the emulated optics)."""
        return tuple(
            part
            for part, spec in (("dmd", self.dmd), ("camera", self.camera), ("light", self.light))
            if spec.backend in ("emulated", "fake-alp", "fake-dlpc900")
        )


def load_rig_file(path: str | Path) -> RigSpec:
    """Read and check a rig file. Raises ConfigurationError (the file missing, too large, not TOML, not valid)."""
    file = Path(path).expanduser()
    try:
        if not file.is_file():
            raise ConfigurationError(f"rig file {file} not found (or not a regular file)")
        size = file.stat().st_size
        if size > MAX_RIG_FILE_BYTES:
            raise ConfigurationError(f"rig file {file} is {size} bytes: more than {MAX_RIG_FILE_BYTES}")
        text = file.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read rig file {file}: {exc}") from exc
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"rig file {file} is not valid TOML: {exc}") from exc
    return parse_rig(document, file)


def _check(where: str, key: str, value: Any, kind: str) -> Any:
    ok = {
        _STR: isinstance(value, str),
        _INT: isinstance(value, int) and not isinstance(value, bool),
        _FLOAT: isinstance(value, (int, float)) and not isinstance(value, bool),
        _BOOL: isinstance(value, bool),
        _TABLE: isinstance(value, dict),
        _REGION: isinstance(value, list)
        and len(value) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
        and value[2] > 0
        and value[3] > 0,
    }[kind]
    if not ok:
        wanted = "[x, y, width, height] of non-negative integers (width, height > 0)" if kind == _REGION else kind
        raise ConfigurationError(f"{where}: {key} = {value!r} must be {wanted}")
    return float(value) if kind == _FLOAT else value


def _section(document: dict[str, Any], name: str, file: Path, required: bool = True) -> dict[str, Any]:
    section = document.get(name)
    if section is None:
        if required:
            raise ConfigurationError(f"rig file {file}: no [{name}] section")
        return {}
    if not isinstance(section, dict):
        raise ConfigurationError(f"rig file {file}: {name} must be a [{name}] table")
    return section


def _part(document: dict[str, Any], part: str, file: Path) -> PartSpec:
    section = dict(_section(document, part, file))
    where = f"rig file {file} [{part}]"
    backend = section.pop("backend", None)
    backends = BACKEND_OPTIONS[part]
    if backend not in backends:
        raise ConfigurationError(f"{where}: backend = {backend!r}; known: {', '.join(backends)}")
    allowed = backends[backend]
    options: dict[str, Any] = {}
    for key, value in section.items():
        if key not in allowed:
            known = ", ".join(["backend", *allowed]) or "backend"
            raise ConfigurationError(f"{where}: unknown key {key!r} for backend {backend!r}; known: {known}")
        options[key] = _check(where, key, value, allowed[key])
    if backend == "alp":
        if "library" not in options:
            raise ConfigurationError(f"{where}: the alp backend needs library = path of the ALP shared library")
        name = options["library"]
        library = Path(name).expanduser()
        if library.is_absolute() or "/" in name or "\\" in name:  # a path: relative ones to the rig file
            options["library"] = str(library if library.is_absolute() else file.parent / library)
        # a bare name (alp4395.dll) is left to the system's library search, as the vendor installs it
    if backend == "cobolt" and "port" not in options:
        raise ConfigurationError(f"{where}: the cobolt backend needs port = the serial port (/dev/ttyUSB0, COM3)")
    return PartSpec(backend, options)


def parse_rig(document: dict[str, Any], file: Path) -> RigSpec:
    """Check a parsed rig document (see the module's docstring)."""
    known = {"rig", "dmd", "camera", "light", "emulator"}
    for name in document:
        if name not in known:
            raise ConfigurationError(f"rig file {file}: unknown section [{name}]; known: {', '.join(sorted(known))}")
    rig = _section(document, "rig", file, required=False)
    for key, value in rig.items():
        if key not in _RIG_KEYS:
            raise ConfigurationError(f"rig file {file} [rig]: unknown key {key!r}; known: {', '.join(_RIG_KEYS)}")
        _check(f"rig file {file} [rig]", key, value, _RIG_KEYS[key])
    picture_time_us = rig.get("picture_time_us", 500)
    if not 1 <= picture_time_us <= 10_000_000:
        raise ConfigurationError(f"rig file {file} [rig]: picture_time_us = {picture_time_us} outside 1..10000000")
    spec = RigSpec(
        path=file,
        name=rig.get("name", file.stem),
        serial_number=rig.get("serial_number", ""),
        picture_time_us=picture_time_us,
        dmd=_part(document, "dmd", file),
        camera=_part(document, "camera", file),
        light=_part(document, "light", file),
    )
    emulator = _section(document, "emulator", file, required=False)
    for key, value in emulator.items():
        if key not in _EMULATOR_KEYS:
            raise ConfigurationError(f"rig file {file} [emulator]: unknown key {key!r}; known: sim")
        _check(f"rig file {file} [emulator]", key, value, _EMULATOR_KEYS[key])
    if spec.emulated_parts:
        return RigSpec(**{**spec.__dict__, "emulator_query": emulator.get("sim", "")})
    if emulator:
        raise ConfigurationError(f"rig file {file}: an [emulator] section but no emulated part")
    return spec
