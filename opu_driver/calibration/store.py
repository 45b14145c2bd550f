"""The calibration store: versioned, atomically written calibration records on disk.

A record is two files in one directory, named by device serial and the UTC time of the calibration:

* ``<serial>_<YYYYmmddTHHMMSS.ffffff>Z.json`` -- the metadata: format version, device identity, settings,
  creation time, each routine's scalar results and the names of its arrays, and the sha256 of the arrays file;
* ``<same stem>.<sha256 prefix>.npz`` -- the arrays (names like ``"dark/mean_dn"``), never pickled.

The JSON file is the commit point. Both files are written under temporary names, fsynced and renamed with
``os.replace``, the arrays first and the JSON last: a crash before the JSON rename leaves no record (only
ignorable leftovers), a crash after it leaves a complete one. Because the arrays file name carries its own
checksum, overwriting a record never touches the arrays the old JSON points to until the new JSON is in place,
so a reader sees either the old record or the new one, whole.

A JSON whose arrays file is missing, whose checksum does not match, or whose content disagrees with the
metadata is corrupt; :meth:`CalibrationStore.load` refuses it with a typed error and
:meth:`CalibrationStore.latest` skips it with a warning, so one bad file does not block opening a device.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import secrets
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from opu_driver.errors import ConfigurationError
from opu_driver.validation import is_int

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CalibrationError",
    "CorruptCalibrationError",
    "CalibrationVersionError",
    "CalibrationRecord",
    "CalibrationStore",
]

_log = logging.getLogger(__name__)

FORMAT_NAME = "opu-calibration"
FORMAT_VERSION = 1

_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
_TIME_PATTERN = r"\d{8}T\d{6}\.\d{6}Z"
_JSON_NAME = re.compile(rf"^(?P<serial>.+)_(?P<time>{_TIME_PATTERN})\.json$")
_ARRAY_NAME = re.compile(r"^[A-Za-z0-9_.\-]+/[A-Za-z0-9_.\-]+$")
_SERIAL_SAFE = re.compile(r"[A-Za-z0-9.\-]")
_TEMP_PREFIX = "."
_SHA_PREFIX_CHARS = 16


class CalibrationError(ConfigurationError):
    """A calibration record that cannot be written or used as it stands."""


class CorruptCalibrationError(CalibrationError):
    """A calibration record whose files are unreadable, truncated, inconsistent or fail their checksum."""


class CalibrationVersionError(CalibrationError):
    """A calibration record written in a format version this driver does not read."""


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(eq=False)
class CalibrationRecord:
    """One calibration of one device under one set of settings.

    Attributes:
        model, serial_number, firmware_version: the device identity the calibration belongs to.
        settings: the acquisition settings it was taken under (JSON values: exposure_us, gain, ...).
        created: when it was taken, timezone-aware (stored in UTC).
        results: routine name -> that routine's scalar results (bool, int, float, str or None).
        arrays: ``"<routine>/<name>"`` -> array; the routine must have an entry in ``results``.
        path: the JSON file the record was loaded from or saved to; None for a record not yet stored.
    """

    model: str
    serial_number: str
    firmware_version: str
    settings: dict[str, Any] = field(default_factory=dict)
    created: datetime = field(default_factory=_utc_now)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    path: Path | None = None

    def age_s(self, now: datetime | None = None) -> float:
        """Seconds since the calibration was taken (``now`` defaults to the current UTC time)."""
        now = _utc_now() if now is None else now
        return (now - self.created).total_seconds()


def _json_value(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON types (numpy scalars and tuples converted), or refuse it."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_json_value(v, where) for v in value]
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            raise CalibrationError(f"{where}: mapping keys must be strings")
        return {k: _json_value(v, where) for k, v in value.items()}
    raise CalibrationError(f"{where}: {type(value).__name__} is not a JSON value")


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise CalibrationError(f"{where}: results hold scalars only (got {type(value).__name__}); store arrays in arrays")


def _check_utc(created: datetime, where: str) -> datetime:
    if not isinstance(created, datetime) or created.tzinfo is None or created.utcoffset() is None:
        raise CalibrationError(f"{where}: created must be a timezone-aware datetime")
    return created.astimezone(timezone.utc)


def _serial_component(serial_number: str) -> str:
    """The serial as it appears in file names: safe characters kept, anything else escaped as ``_XX``.

    '_' itself is escaped so the name splits unambiguously and distinct serials get distinct names.
    """
    if not isinstance(serial_number, str) or not serial_number:
        raise CalibrationError("serial_number must be a non-empty string")
    return "".join(c if _SERIAL_SAFE.match(c) else "".join(f"_{b:02X}" for b in c.encode()) for c in serial_number)


def _stem(serial_number: str, created: datetime) -> str:
    return f"{_serial_component(serial_number)}_{created.astimezone(timezone.utc).strftime(_TIME_FORMAT)}"


def _corrupt(path: Path, what: str) -> CorruptCalibrationError:
    """The error for a record whose JSON at ``path`` is malformed in ``what``."""
    return CorruptCalibrationError(f"{path}: {what}")


def _fsync_directory(directory: Path) -> None:
    # Makes the renames durable; not possible on every platform (Windows), where it is skipped.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_atomically(target: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``target``, fsync it and rename it over ``target``."""
    temp = target.with_name(f"{_TEMP_PREFIX}{target.name}.{secrets.token_hex(6)}.tmp")
    try:
        with open(temp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


class CalibrationStore:
    """A directory of calibration records (see the module docstring for the layout and guarantees).

    Args:
        directory: where records live; created on the first save.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"CalibrationStore({str(self.directory)!r})"

    # -- writing ---------------------------------------------------------------------------------------

    def save(self, record: CalibrationRecord) -> Path:
        """Store ``record`` atomically and return the path of its JSON file.

        Saving a record with the same serial and creation time as a stored one replaces it atomically.

        Raises:
            CalibrationError: the record cannot be stored as it stands (non-JSON settings, non-scalar
                results, badly named or object-dtype arrays, naive creation time).
        """
        metadata, npz_bytes = self._encode(record)
        self.directory.mkdir(parents=True, exist_ok=True)
        stem = _stem(record.serial_number, record.created)
        json_path = self.directory / f"{stem}.json"
        npz_name = metadata["arrays_file"]
        previous_npz = self._arrays_file_of(json_path)

        _write_atomically(self.directory / npz_name, npz_bytes)
        _fsync_directory(self.directory)
        # The commit point: before this rename the record does not exist (or the old one still does).
        _write_atomically(json_path, json.dumps(metadata, indent=2, sort_keys=True).encode("utf-8") + b"\n")
        _fsync_directory(self.directory)

        if previous_npz is not None and previous_npz != npz_name:
            with contextlib.suppress(OSError):
                (self.directory / previous_npz).unlink()
        record.path = json_path
        _log.info("saved calibration of %s %s to %s", record.model, record.serial_number, json_path)
        return json_path

    def _arrays_file_of(self, json_path: Path) -> str | None:
        """The arrays file an existing JSON points to, if it is readable enough to say; else None."""
        try:
            name = json.loads(json_path.read_text(encoding="utf-8")).get("arrays_file")
        except (OSError, ValueError, AttributeError):
            return None
        return name if isinstance(name, str) and self._is_plain_name(name) else None

    @staticmethod
    def _is_plain_name(name: str) -> bool:
        return bool(name) and Path(name).name == name and name not in (".", "..") and "\\" not in name

    def _encode(self, record: CalibrationRecord) -> tuple[dict[str, Any], bytes]:
        created = _check_utc(record.created, "record")
        identity = {}
        for key in ("model", "serial_number", "firmware_version"):
            value = getattr(record, key)
            if not isinstance(value, str):
                raise CalibrationError(f"record: {key} must be a string, not {type(value).__name__}")
            identity[key] = value
        _serial_component(record.serial_number)
        settings = _json_value(dict(record.settings), "settings")

        routines: dict[str, dict[str, Any]] = {}
        for routine, scalars in record.results.items():
            if not isinstance(routine, str) or not re.fullmatch(r"[A-Za-z0-9_.\-]+", routine):
                raise CalibrationError(f"results: routine name {routine!r} must be letters, digits, '_', '.', '-'")
            if not isinstance(scalars, Mapping):
                raise CalibrationError(f"results[{routine!r}] must be a mapping of scalars")
            routines[routine] = {
                "result": {str(k): _scalar(v, f"results[{routine!r}][{k!r}]") for k, v in scalars.items()},
                "arrays": [],
            }

        index: dict[str, dict[str, Any]] = {}
        arrays: dict[str, np.ndarray] = {}
        for name, value in record.arrays.items():
            if not isinstance(name, str) or not _ARRAY_NAME.match(name):
                raise CalibrationError(f"arrays: name {name!r} must read '<routine>/<name>'")
            routine = name.split("/", 1)[0]
            if routine not in routines:
                raise CalibrationError(f"arrays: {name!r} belongs to routine {routine!r}, which has no results entry")
            array = np.asarray(value)
            if array.dtype.hasobject:
                raise CalibrationError(f"arrays: {name!r} has an object dtype, which would need pickle")
            arrays[name] = array
            routines[routine]["arrays"].append(name)
            index[name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
        for entry in routines.values():
            entry["arrays"].sort()

        buffer = io.BytesIO()
        # Object arrays were refused above; allow_pickle=False says so to NumPy as well (and, named, it keeps
        # the type checker from matching the array names against that keyword).
        np.savez_compressed(buffer, allow_pickle=False, **arrays)
        npz_bytes = buffer.getvalue()
        digest = hashlib.sha256(npz_bytes).hexdigest()
        metadata = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "device": identity,
            "settings": settings,
            "created": created.isoformat(),
            "routines": routines,
            "arrays": index,
            "arrays_file": f"{_stem(record.serial_number, created)}.{digest[:_SHA_PREFIX_CHARS]}.npz",
            "arrays_sha256": digest,
        }
        try:
            json.dumps(metadata, allow_nan=True)
        except (TypeError, ValueError) as exc:  # pragma: no cover - the checks above should make this unreachable
            raise CalibrationError(f"record is not JSON-serialisable: {exc}") from exc
        return metadata, npz_bytes

    # -- reading ---------------------------------------------------------------------------------------

    def list(self, serial_number: str | None = None) -> builtins.list[Path]:
        """JSON paths of the stored records (of one device when ``serial_number`` is given), oldest first.

        Temporary leftovers of interrupted writes and arrays files without their JSON are not records.
        """
        if not self.directory.is_dir():
            return []
        wanted = None if serial_number is None else _serial_component(serial_number)
        found = []
        for path in self.directory.iterdir():
            if path.name.startswith(_TEMP_PREFIX) or not path.is_file():
                continue
            match = _JSON_NAME.match(path.name)
            if match is None or (wanted is not None and match["serial"] != wanted):
                continue
            found.append((match["time"], path.name, path))
        return [path for _, _, path in sorted(found)]

    def load(self, path: str | os.PathLike[str]) -> CalibrationRecord:
        """Read and verify the record whose JSON file is ``path``.

        Raises:
            CorruptCalibrationError: unreadable or malformed JSON, missing or truncated arrays file, checksum
                mismatch, or files that disagree with each other or with their names.
            CalibrationVersionError: a format version other than :data:`FORMAT_VERSION`.
        """
        path = Path(path)
        metadata = self._read_metadata(path)
        npz_path = path.with_name(metadata["arrays_file"])
        try:
            npz_bytes = npz_path.read_bytes()
        except FileNotFoundError as exc:
            raise CorruptCalibrationError(f"{path}: its arrays file {npz_path.name} is missing") from exc
        except OSError as exc:
            raise CorruptCalibrationError(f"{path}: cannot read its arrays file {npz_path.name}: {exc}") from exc
        digest = hashlib.sha256(npz_bytes).hexdigest()
        if digest != metadata["arrays_sha256"]:
            raise CorruptCalibrationError(
                f"{path}: arrays file {npz_path.name} fails its checksum (sha256 {digest[:16]}..., "
                f"expected {metadata['arrays_sha256'][:16]}...); it is truncated or was changed"
            )
        arrays = self._read_arrays(path, npz_bytes, metadata["arrays"])
        device = metadata["device"]
        return CalibrationRecord(
            model=device["model"],
            serial_number=device["serial_number"],
            firmware_version=device["firmware_version"],
            settings=metadata["settings"],
            created=metadata["created"],
            results={name: dict(routine["result"]) for name, routine in metadata["routines"].items()},
            arrays=arrays,
            path=path,
        )

    def latest(self, serial_number: str, settings: Mapping[str, Any] | None = None) -> CalibrationRecord | None:
        """The newest valid record of the device whose stored settings equal ``settings`` on the keys given.

        A key absent from the stored settings does not match. Corrupt or unreadable records are skipped
        with a warning. Returns None when no record matches.
        """
        wanted = {} if settings is None else _json_value(dict(settings), "settings")
        for path in reversed(self.list(serial_number)):
            try:
                metadata = self._read_metadata(path)
                if metadata["device"]["serial_number"] != serial_number:
                    continue
                stored = metadata["settings"]
                if any(key not in stored or stored[key] != value for key, value in wanted.items()):
                    continue
                return self.load(path)
            except CalibrationError as exc:
                _log.warning("skipping calibration record %s: %s", path, exc)
        return None

    def _read_metadata(self, path: Path) -> dict[str, Any]:
        """Parse and validate a record's JSON, with its created time as a datetime."""
        metadata = self._parse_metadata(path)
        device, created = self._check_identity(path, metadata)
        arrays_file = self._check_contents(path, metadata)
        stem = _stem(device["serial_number"], created)
        if path.name != f"{stem}.json" or not arrays_file.startswith(f"{stem}."):
            raise _corrupt(
                path, f"file name does not match its content (expected {stem}.json for this device and time)"
            )
        return metadata

    @staticmethod
    def _parse_metadata(path: Path) -> dict[str, Any]:
        """The record's JSON as a dict, once it says it is this format in the version this driver reads."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as exc:
            raise CalibrationError(f"{path}: no such calibration record") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise CorruptCalibrationError(f"{path}: cannot read: {exc}") from exc
        try:
            metadata = json.loads(text)
        except ValueError as exc:
            raise CorruptCalibrationError(f"{path}: not valid JSON ({exc}); the file is damaged") from exc
        if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
            raise CorruptCalibrationError(f"{path}: not an {FORMAT_NAME} file")
        version = metadata.get("format_version")
        if version != FORMAT_VERSION or isinstance(version, bool):
            newer = is_int(version, FORMAT_VERSION + 1)
            raise CalibrationVersionError(
                f"{path}: format version {version!r}, this driver reads version {FORMAT_VERSION}"
                + (" (written by a newer driver)" if newer else "")
            )
        return metadata

    @staticmethod
    def _check_identity(path: Path, metadata: dict[str, Any]) -> tuple[dict[str, Any], datetime]:
        """Check the device identity, the settings and the created time; the created time replaces its text in
        ``metadata``. Returns (device identity, created time)."""
        device = metadata.get("device")
        if not isinstance(device, dict) or not all(
            isinstance(device.get(k), str) for k in ("model", "serial_number", "firmware_version")
        ):
            raise _corrupt(path, "device identity (model, serial_number, firmware_version) is missing or malformed")
        if not isinstance(metadata.get("settings"), dict):
            raise _corrupt(path, "settings are missing or not a mapping")
        try:
            created = datetime.fromisoformat(metadata["created"])
            created = _check_utc(created, "created")
        except (KeyError, TypeError, ValueError) as exc:
            raise _corrupt(path, f"created time is missing or not ISO 8601 with a time zone ({exc})") from exc
        metadata["created"] = created
        return device, created

    def _check_contents(self, path: Path, metadata: dict[str, Any]) -> str:
        """Check the routines' results, the array index and the arrays file's name and checksum; returns the
        arrays file's name."""
        routines = metadata.get("routines")
        index = metadata.get("arrays")
        if not isinstance(routines, dict) or not isinstance(index, dict):
            raise _corrupt(path, "routine results or the array index are missing")
        listed: set[str] = set()
        for name, routine in routines.items():
            if (
                not isinstance(routine, dict)
                or not isinstance(routine.get("result"), dict)
                or not isinstance(routine.get("arrays"), builtins.list)
            ):
                raise _corrupt(path, f"routine {name!r} is malformed")
            listed.update(routine["arrays"])
        if listed != set(index):
            raise _corrupt(path, "the routines' array names disagree with the array index")
        for name, spec in index.items():
            if not (
                isinstance(spec, dict)
                and isinstance(spec.get("dtype"), str)
                and isinstance(spec.get("shape"), builtins.list)
            ):
                raise _corrupt(path, f"array index entry {name!r} is malformed")

        arrays_file, sha = metadata.get("arrays_file"), metadata.get("arrays_sha256")
        if not isinstance(arrays_file, str) or not self._is_plain_name(arrays_file):
            raise _corrupt(path, "arrays file name is missing or not a plain file name")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise _corrupt(path, "arrays checksum is missing or not a sha256")
        return arrays_file

    @staticmethod
    def _read_arrays(path: Path, npz_bytes: bytes, index: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
                names = set(npz.files)
                if names != set(index):
                    raise CorruptCalibrationError(
                        f"{path}: arrays file holds {sorted(names)}, the metadata lists {sorted(index)}"
                    )
                for name, spec in index.items():
                    array = npz[name]
                    if array.dtype.str != spec["dtype"] or list(array.shape) != spec["shape"]:
                        raise CorruptCalibrationError(
                            f"{path}: array {name!r} is {array.dtype.str}{list(array.shape)}, "
                            f"the metadata says {spec['dtype']}{spec['shape']}"
                        )
                    arrays[name] = array
        except CorruptCalibrationError:
            raise
        except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            # ValueError includes numpy's refusal of pickled (object) arrays under allow_pickle=False.
            raise CorruptCalibrationError(f"{path}: arrays file is unreadable: {exc}") from exc
        return arrays
