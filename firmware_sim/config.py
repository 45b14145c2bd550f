"""Every option of the emulated OPU, in one frozen dataclass, and its URL-query form.

The driver opens the emulator with a URL such as ``sim://?seed=3&lag=1&noise=0``; the query's options map
onto :class:`SimConfig` fields through :meth:`SimConfig.from_query`. A config is validated when it is built,
so a bad option is refused with a :class:`~firmware_sim.errors.SimConfigError` that names the key before
any device exists.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

from .errors import SimConfigError
from .faults import ALL_FAULT_KINDS, FaultPlan

__all__ = ["SimConfig", "QUERY_KEYS"]

logger = logging.getLogger(__name__)

_MAX_LAG_FRAMES = 64
_MAX_CAMERA_SIDE = 65535  # ROI fields are u16 on the wire
_MAX_DMD_MIRRORS = 2**32  # mirror indices are u32 on the wire
_MAX_ID_CHARS = 64
_MAX_U32 = 0xFFFFFFFF  # SEQ_CAPACITY and IN_FIFO_BYTES are 32-bit registers


def _ascii(text: str) -> str:
    """The stripped text, refused (ValueError) unless it is ASCII: Python's int() and float() accept other
    scripts' digits ("１", "٣"), which no URL a person types should mean."""
    stripped = text.strip()
    if not stripped.isascii():
        raise ValueError(text)
    return stripped


def _parse_int(text: str) -> int:
    return int(_ascii(text), 10)


def _parse_float(text: str) -> float:
    return float(_ascii(text))


def _parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in ("1", "true"):
        return True
    if word in ("0", "false"):
        return False
    raise ValueError(text)


def _parse_size(text: str) -> tuple[int, int]:
    width_text, sep, height_text = text.strip().lower().partition("x")
    if not sep:
        raise ValueError(text)
    return _parse_int(width_text), _parse_int(height_text)


def _parse_version(text: str) -> tuple[int, int, int]:
    parts = text.strip().split(".")
    if len(parts) != 3:
        raise ValueError(text)
    major, minor, patch = (_parse_int(part) for part in parts)
    return major, minor, patch


def _format_float(value: float) -> str:
    # repr() round-trips floats exactly; "inf" parses back through float().
    return repr(float(value))


@dataclass(frozen=True)
class _QueryKey:
    """One URL-query option: the fields it sets, how to parse it, what it means."""

    key: str
    fields: tuple[str, ...]
    parse: Callable[[str], Any]
    allowed: str
    meaning: str


# The model's options first, then five extras so that to_query() is a true inverse for every field, then the
# firmware's memory sizes (tests shrink them to reach their limits quickly) and the faults.
QUERY_KEYS: tuple[_QueryKey, ...] = (
    _QueryKey(
        "seed",
        ("seed",),
        _parse_int,
        "an integer >= 0",
        "seed of the transmission matrix, dark pattern and noise",
    ),
    _QueryKey(
        "dmd",
        ("dmd_width", "dmd_height"),
        _parse_size,
        "WIDTHxHEIGHT, positive integers",
        "DMD geometry in mirrors",
    ),
    _QueryKey(
        "camera",
        ("camera_width", "camera_height"),
        _parse_size,
        "WIDTHxHEIGHT, 1..65535",
        "sensor geometry in pixels",
    ),
    _QueryKey("cell", ("cell_mirrors",), _parse_int, "an integer >= 1", "side of an input-mode cell, in mirrors"),
    _QueryKey("grain", ("grain_px",), _parse_float, "a number >= 1.0", "speckle grain: output-mode spacing in pixels"),
    _QueryKey("lag", ("lag_frames",), _parse_int, f"an integer 0..{_MAX_LAG_FRAMES}", "DMD-to-camera lag in frames"),
    _QueryKey("noise", ("noise",), _parse_bool, "0, 1, false or true", "0 turns every noise source off"),
    _QueryKey("exposure_us", ("exposure_us",), _parse_int, "an integer 10..1000000", "initial exposure, microseconds"),
    _QueryKey(
        "frame_time_us",
        ("frame_time_us",),
        _parse_int,
        "an integer >= exposure_us + 50",
        "initial frame period, microseconds",
    ),
    _QueryKey("gain", ("gain",), _parse_float, "a number 1.0..16.0", "initial analogue gain"),
    _QueryKey(
        "power_mw",
        ("laser_power_mw",),
        _parse_float,
        "a number 0..laser_power_max_mw",
        "initial laser power setpoint, mW",
    ),
    _QueryKey(
        "drift_s",
        ("drift_tau_s",),
        _parse_float,
        "a number > 0, or inf",
        "decorrelation time of the medium, device seconds",
    ),
    _QueryKey("dark_e", ("dark_offset_e",), _parse_float, "a number >= 0", "fixed dark offset, electrons"),
    _QueryKey("read_noise_e", ("read_noise_e",), _parse_float, "a number >= 0", "read noise, electrons rms"),
    _QueryKey("hot", ("hot_pixel_fraction",), _parse_float, "a number 0..1", "fraction of hot pixels"),
    _QueryKey(
        "jitter",
        ("laser_jitter",),
        _parse_float,
        "a number 0..<1",
        "relative rms of laser power, frame to frame",
    ),
    _QueryKey(
        "signal_e",
        ("signal_e",),
        _parse_float,
        "a number >= 0",
        "mean electrons per pixel, all mirrors ON, 400 us, 50 mW",
    ),
    _QueryKey("full_well_e", ("full_well_e",), _parse_float, "a number > 0", "electrons at ADC full scale, gain 1"),
    _QueryKey(
        "model",
        ("model",),
        str,
        "printable ASCII without ',', 1..64 characters",
        "model name reported by the device",
    ),
    _QueryKey(
        "serial",
        ("serial_number",),
        str,
        "printable ASCII without ',', up to 64 characters",
        "serial number (empty: SIM-<seed>)",
    ),
    _QueryKey(
        "dark_current_e_s",
        ("dark_current_e_per_s",),
        _parse_float,
        "a number >= 0",
        "dark current, electrons per second",
    ),
    _QueryKey(
        "dark_pattern_e",
        ("dark_pattern_e",),
        _parse_float,
        "a number >= 0",
        "rms of the fixed per-pixel dark pattern, electrons",
    ),
    _QueryKey("hot_e", ("hot_pixel_e",), _parse_float, "a number >= 0", "extra electrons of a hot pixel at 400 us"),
    _QueryKey(
        "power_max_mw",
        ("laser_power_max_mw",),
        _parse_float,
        "a number > 0",
        "largest laser power setpoint, mW",
    ),
    _QueryKey(
        "firmware",
        ("firmware_version",),
        _parse_version,
        "MAJOR.MINOR.PATCH, major/minor 0..99, patch 0..255",
        "firmware version",
    ),
    _QueryKey(
        "seq_capacity_frames",
        ("seq_capacity_frames",),
        _parse_int,
        f"an integer 1..{_MAX_U32}",
        "frames the sequence memory holds (register SEQ_CAPACITY)",
    ),
    _QueryKey(
        "raw_queue_bytes",
        ("raw_queue_bytes",),
        _parse_int,
        "an integer >= 1",
        "bytes of mirror bits that queued raw frames may take (beyond: E_SEQ_FULL)",
    ),
    _QueryKey(
        "in_fifo_bytes",
        ("in_fifo_bytes",),
        _parse_int,
        f"an integer 1..{_MAX_U32}",
        "capacity of the camera frame FIFO in bytes (register IN_FIFO_BYTES)",
    ),
    _QueryKey(
        "faults",
        ("faults",),
        str,
        "comma-separated NAME:RATE, a probability per event, or NAME@K, at the K-th event",
        "faults to inject, drawn from the seed: " + ", ".join(ALL_FAULT_KINDS),
    ),
)

_KEYS_BY_NAME: dict[str, _QueryKey] = {entry.key: entry for entry in QUERY_KEYS}


@dataclass(frozen=True)
class SimConfig:
    """Every option of the emulated device (geometry, optics, camera physics, identity, memory sizes).

    Defaults are the reference geometry of docs/emulator.md. ``noise=False`` turns every noise source off (shot
    and read noise, dark current and pattern, hot pixels, laser jitter); drift is not noise and stays. An empty
    ``serial_number`` becomes ``SIM-<seed:08d>`` at construction (so ``dataclasses.replace(cfg, seed=...)``
    keeps the old serial unless ``serial_number=""`` is passed too).

    Raises:
        SimConfigError: for any value outside its allowed range, naming the field.
    """

    seed: int = 0
    dmd_width: int = 1140
    dmd_height: int = 912
    camera_width: int = 2048
    camera_height: int = 1088
    cell_mirrors: int = 8
    grain_px: float = 2.0
    lag_frames: int = 0
    noise: bool = True
    exposure_us: int = 400
    frame_time_us: int = 500
    gain: float = 1.0
    laser_power_mw: float = 50.0
    laser_power_max_mw: float = 100.0
    drift_tau_s: float = math.inf
    full_well_e: float = 10000.0
    signal_e: float = 2500.0
    dark_current_e_per_s: float = 2000.0
    dark_pattern_e: float = 4.0
    dark_offset_e: float = 20.0
    read_noise_e: float = 6.0
    hot_pixel_fraction: float = 1e-4
    hot_pixel_e: float = 3000.0
    laser_jitter: float = 0.002
    model: str = "OPU-1"
    serial_number: str = ""
    firmware_version: tuple[int, int, int] = (1, 0, 0)
    seq_capacity_frames: int = 4096
    raw_queue_bytes: int = 256 * 2**20
    in_fifo_bytes: int = 64 * 2**20
    faults: str = ""

    def __post_init__(self) -> None:
        self._validate()
        if self.serial_number == "":
            object.__setattr__(self, "serial_number", f"SIM-{self.seed:08d}")

    # ----------------------------------------------------------------------------------------- validation
    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _check_int(self, name: str, low: int | None = None, high: int | None = None) -> int:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
            raise SimConfigError(f"{name} must be an integer, got {value!r}")
        value = int(value)
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise SimConfigError(f"{name} must be in {bounds}, got {value}")
        self._set(name, value)
        return value

    def _check_float(
        self,
        name: str,
        low: float,
        high: float = math.inf,
        *,
        low_open: bool = False,
        high_open: bool = False,
        allow_inf: bool = False,
    ) -> float:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SimConfigError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if math.isnan(value) or (math.isinf(value) and not allow_inf):
            raise SimConfigError(f"{name} must be a finite number, got {value!r}")
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            bounds = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
            raise SimConfigError(f"{name} must be in {bounds}, got {value}")
        self._set(name, value)
        return value

    def _check_text(self, name: str, *, allow_empty: bool) -> None:
        value = getattr(self, name)
        if not isinstance(value, str):
            raise SimConfigError(f"{name} must be a string, got {value!r}")
        printable = all(32 <= ord(char) < 127 for char in value)
        if (not value and not allow_empty) or len(value) > _MAX_ID_CHARS or not printable or "," in value:
            raise SimConfigError(
                f"{name} must be printable ASCII without ',' and at most {_MAX_ID_CHARS} characters, got {value!r}"
            )

    def _validate(self) -> None:
        self._check_int("seed", 0, 2**64 - 1)
        width = self._check_int("dmd_width", 1, _MAX_CAMERA_SIDE)
        height = self._check_int("dmd_height", 1, _MAX_CAMERA_SIDE)
        if width * height > _MAX_DMD_MIRRORS:
            raise SimConfigError(f"dmd_width x dmd_height must be at most 2**32 mirrors, got {width}x{height}")
        self._check_int("camera_width", 1, _MAX_CAMERA_SIDE)
        self._check_int("camera_height", 1, _MAX_CAMERA_SIDE)
        cell = self._check_int("cell_mirrors", 1)
        if cell > max(width, height):
            raise SimConfigError(
                f"a DMD of {width}x{height} mirrors is smaller than one input-mode cell of {cell}x{cell} mirrors "
                f"(cell_mirrors={cell}): give a larger DMD or a smaller cell"
            )
        self._check_float("grain_px", 1.0)
        self._check_int("lag_frames", 0, _MAX_LAG_FRAMES)
        if not isinstance(self.noise, bool):
            raise SimConfigError(f"noise must be a bool, got {self.noise!r}")
        exposure_us = self._check_int("exposure_us", 10, 1_000_000)
        self._check_int("frame_time_us", exposure_us + 50)
        self._check_float("gain", 1.0, 16.0)
        power_max_mw = self._check_float("laser_power_max_mw", 0.0, low_open=True)
        self._check_float("laser_power_mw", 0.0, power_max_mw)
        self._check_float("drift_tau_s", 0.0, low_open=True, allow_inf=True)
        self._check_float("full_well_e", 0.0, low_open=True)
        self._check_float("signal_e", 0.0)
        self._check_float("dark_current_e_per_s", 0.0)
        self._check_float("dark_pattern_e", 0.0)
        self._check_float("dark_offset_e", 0.0)
        self._check_float("read_noise_e", 0.0)
        self._check_float("hot_pixel_fraction", 0.0, 1.0)
        self._check_float("hot_pixel_e", 0.0)
        self._check_float("laser_jitter", 0.0, 1.0, high_open=True)
        self._check_text("model", allow_empty=False)
        self._check_text("serial_number", allow_empty=True)
        version = self.firmware_version
        if (
            not isinstance(version, tuple)
            or len(version) != 3
            or not all(isinstance(part, int) and not isinstance(part, bool) for part in version)
            or not (0 <= version[0] <= 99 and 0 <= version[1] <= 99 and 0 <= version[2] <= 255)
        ):
            raise SimConfigError(
                f"firmware_version must be (major, minor, patch) with major/minor 0..99 (BCD in bcdDevice) "
                f"and patch 0..255, got {version!r}"
            )
        self._check_int("seq_capacity_frames", 1, _MAX_U32)
        self._check_int("raw_queue_bytes", 1)
        self._check_int("in_fifo_bytes", 1, _MAX_U32)
        # A FaultPlan or its text; kept as the canonical text so that configs stay hashable and to_query() exact.
        self._set("faults", str(FaultPlan.parse(self.faults)))

    @property
    def fault_plan(self) -> FaultPlan:
        """The faults to inject (:class:`~firmware_sim.faults.FaultPlan`; empty: none)."""
        return FaultPlan.parse(self.faults)

    # ------------------------------------------------------------------------------------------ queries
    @classmethod
    def from_query(cls, query: str | Mapping[str, str]) -> SimConfig:
        """Build a config from URL query options (``"seed=3&lag=1&noise=0"`` or a mapping of strings).

        Raises:
            SimConfigError: for an unknown or repeated key, a value that does not parse, or a value out of
                range; the message names the key and its allowed values.
        """
        if isinstance(query, str):
            text = query[1:] if query.startswith("?") else query
            try:
                pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
            except ValueError as exc:
                raise SimConfigError(f"malformed emulator options {query!r}: {exc}") from exc
        else:
            pairs = [(str(key), value if isinstance(value, str) else str(value)) for key, value in query.items()]
        values: dict[str, Any] = {}
        seen: set[str] = set()
        for raw_key, text in pairs:
            key = raw_key.strip().lower()
            entry = _KEYS_BY_NAME.get(key)
            if entry is None:
                known = ", ".join(sorted(_KEYS_BY_NAME))
                raise SimConfigError(f"unknown emulator option {raw_key!r}; known options: {known}")
            if key in seen:
                raise SimConfigError(f"emulator option {key!r} given twice")
            seen.add(key)
            try:
                parsed = entry.parse(text)
            except (ValueError, TypeError) as exc:
                raise SimConfigError(
                    f"bad value {text!r} for emulator option {key!r}: expected {entry.allowed}"
                ) from exc
            if len(entry.fields) == 1:
                values[entry.fields[0]] = parsed
            else:
                values.update(zip(entry.fields, parsed, strict=True))
        try:
            config = cls(**values)
        except SimConfigError as exc:
            # Re-word the field name as the query key the user typed.
            raise SimConfigError(_query_message(exc.message)) from exc
        logger.debug("emulator options %s -> %s", dict(pairs), config)
        return config

    def to_query(self) -> str:
        """The URL query that :meth:`from_query` turns back into this config (only non-default options)."""
        default = SimConfig(seed=self.seed)
        parts: list[str] = []
        for entry in QUERY_KEYS:
            values = tuple(getattr(self, name) for name in entry.fields)
            if values == tuple(getattr(default, name) for name in entry.fields) and entry.key != "seed":
                continue
            if entry.key == "seed" and self.seed == 0:
                continue
            parts.append(f"{entry.key}={quote(_format_value(entry.key, values), safe='.:-_')}")
        return "&".join(parts)

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(query key, meaning, default) for every option, in a stable order, for docs and CLI help."""
        default = cls()
        rows = []
        for entry in QUERY_KEYS:
            if entry.key == "serial":
                default_text = "SIM-<seed, 8 digits>"
            elif entry.key == "faults":
                default_text = "none"
            else:
                default_text = _format_value(entry.key, tuple(getattr(default, name) for name in entry.fields))
            rows.append((entry.key, f"{entry.meaning} ({entry.allowed})", default_text))
        return rows


def _format_value(key: str, values: tuple[Any, ...]) -> str:
    if key in ("dmd", "camera"):
        return f"{values[0]}x{values[1]}"
    if key == "firmware":
        return ".".join(str(part) for part in values[0])
    (value,) = values
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return _format_float(value)
    return str(value)


def _query_message(message: str) -> str:
    """Name the query key rather than the dataclass field in a validation message."""
    for entry in QUERY_KEYS:
        for name in entry.fields:
            if message.startswith(name + " ") and name != entry.key:
                return f"emulator option {entry.key!r} ({name}){message[len(name) :]}; allowed: {entry.allowed}"
            if message.startswith(name + " "):
                return f"emulator option {entry.key!r}{message[len(name) :]}; allowed: {entry.allowed}"
    return message


def _field_names() -> set[str]:
    return {field.name for field in dataclasses.fields(SimConfig)}


# Every dataclass field must be reachable from a query key, or to_query() would not be an inverse.
_missing_fields = _field_names() - {name for entry in QUERY_KEYS for name in entry.fields}
if _missing_fields:  # pragma: no cover - guards edits to this module
    raise RuntimeError(f"SimConfig fields without a query key: {sorted(_missing_fields)}")
