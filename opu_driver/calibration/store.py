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

Reading trusts nothing on disk. A JSON file larger than :data:`MAX_RECORD_JSON_BYTES` is refused before it is
read, and one nested deeper than :data:`MAX_JSON_DEPTH` before it is parsed; both files must be regular files (not
FIFOs or devices; a symbolic link only to a file inside the store) and are opened without blocking; the arrays
file is at most :data:`MAX_ARRAYS_BYTES`, its index is checked (dtypes without objects, shapes, total size) before
any array is read, and every member's header is compared with the index before NumPy allocates it. The settings
are checked by the rules of :class:`~opu_driver.opu.OpuSettings`, the results must be scalars.

A JSON whose arrays file is missing, whose checksum does not match, or whose content disagrees with the
metadata is corrupt; :meth:`CalibrationStore.load` refuses it with a typed error and
:meth:`CalibrationStore.candidates` (and :meth:`CalibrationStore.latest`) skip it with one warning, so one bad
file does not block opening a device.
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
import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from opu_driver.errors import ConfigurationError
from opu_driver.opu import OpuSettings
from opu_driver.validation import is_int

from ._checks import directory_problem

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_RECORD_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_ARRAYS_BYTES",
    "SETTING_KEYS",
    "check_record_settings",
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

MAX_RECORD_JSON_BYTES = 1 << 20
"""The largest record JSON read (1 MiB). A record's JSON holds metadata and scalars only (a whole calibration is a
few kB); a larger file is refused from its size, before it is read."""

MAX_JSON_DEPTH = 32
"""The deepest nesting of lists and objects a record JSON may have (a record uses 4 levels). Checked on the bytes
before parsing, so a file of nested brackets cannot exhaust the parser's recursion."""

MAX_ARRAYS_BYTES = 1 << 30
"""The largest arrays file read, and the largest total the index may declare for its arrays once decompressed
(1 GiB). The matrix of the default plan, 1,000 x 4,096 float32, is 16 MB."""

SETTING_KEYS = ("exposure_us", "frame_time_us", "gain", "pixel_format", "laser_power_mw")
"""The settings a record is taken under and matched by: fields of :class:`~opu_driver.opu.OpuSettings`."""

_MAX_ARRAY_DIMS = 32
_READ_CHUNK_BYTES = 1 << 20
# Opening without blocking: a FIFO put in place of a record file must not wait for a writer (POSIX only; Windows
# has no FIFOs in the file system). O_BINARY keeps Windows from translating bytes.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)


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


def check_record_settings(settings: Mapping[str, Any], where: str) -> None:
    """Check a record's settings on :data:`SETTING_KEYS` by the rules of :class:`~opu_driver.opu.OpuSettings`.

    The same rules refuse the same values given to ``opu_driver.open``, so a record can only hold settings the
    driver would accept (the device's own limits are checked when the record is applied). Other keys are free.

    Raises:
        CalibrationError: naming ``where`` and the setting.
    """
    given = {key: settings[key] for key in SETTING_KEYS if key in settings}
    try:
        OpuSettings(**given)
    except ConfigurationError as exc:
        raise CalibrationError(f"{where}: stored settings refused: {exc}") from None


def _file_kind(mode: int) -> str:
    """What a non-regular file is, in words, for an error message."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def _read_regular_file(path: Path, root: Path, limit_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit_bytes`` inside ``root``.

    A symbolic link is followed only to a file inside ``root``. The file is checked with ``lstat``/``stat`` before
    it is opened, opened with ``O_NONBLOCK`` (a FIFO swapped in after the check cannot block the open) and checked
    again on the open descriptor (same file, still regular); at most ``limit_bytes + 1`` bytes are read, so a file
    that grows meanwhile is refused too. Raises FileNotFoundError when it is missing (the caller words that) and
    CorruptCalibrationError for everything else, naming ``what``.
    """
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            target, inside = os.path.realpath(path), os.path.realpath(root)
            if os.path.commonpath([target, inside]) != inside:
                raise CorruptCalibrationError(f"{what} {path.name} is a link out of the store (to {target})")
            info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise CorruptCalibrationError(f"{what} {path.name} is {_file_kind(info.st_mode)}")
        if info.st_size > limit_bytes:
            raise CorruptCalibrationError(
                f"{what} {path.name} is {info.st_size} bytes, over the {limit_bytes}-byte limit"
            )
        fd = os.open(path, _OPEN_FLAGS)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
                raise CorruptCalibrationError(f"{what} {path.name} was replaced while it was opened")
            chunks, size = [], 0
            while size <= limit_bytes:
                chunk = os.read(fd, min(_READ_CHUNK_BYTES, limit_bytes + 1 - size))
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
        finally:
            os.close(fd)
    except (FileNotFoundError, CorruptCalibrationError):
        raise
    except (OSError, ValueError) as exc:  # ValueError: a path with a NUL byte
        raise CorruptCalibrationError(f"cannot read {what} {path.name}: {exc}") from exc
    if size > limit_bytes:
        raise CorruptCalibrationError(f"{what} {path.name} grew over the {limit_bytes}-byte limit while it was read")
    return b"".join(chunks)


def _json_nesting_depth(data: bytes) -> int:
    """The deepest nesting of ``[`` and ``{`` outside strings in JSON text, found without parsing it.

    Vectorised over the bytes (linear time, no recursion): a quote preceded by an odd run of backslashes is
    escaped, the quotes left delimit strings, and brackets inside strings do not count. For text that is not
    JSON the number bounds how deep a parser could recurse before it fails. UTF-8 never uses the bytes of
    quote, backslash or brackets inside a multi-byte character, so bytes can be scanned as they are.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(raw == ord('"'))
    backslashes = np.flatnonzero(raw == ord("\\"))
    if backslashes.size and quotes.size:
        breaks = np.flatnonzero(np.diff(backslashes) != 1) + 1
        starts = backslashes[np.concatenate(([0], breaks))]
        ends = backslashes[np.concatenate((breaks - 1, [backslashes.size - 1]))]
        odd_run_ends = ends[(ends - starts) % 2 == 0]  # run length ends - starts + 1 is odd
        quotes = quotes[~np.isin(quotes - 1, odd_run_ends)]
    opening = (raw == ord("[")) | (raw == ord("{"))
    brackets = np.flatnonzero(opening | (raw == ord("]")) | (raw == ord("}")))
    outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of delimiting quotes before it
    steps = np.where(opening[brackets[outside]], 1, -1).astype(np.int32)
    return max(0, int(np.cumsum(steps).max())) if steps.size else 0


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

    def check_writable(self) -> None:
        """Refuse a directory that :meth:`save` could not create or write in (a path under a file, a read-only
        folder), before a calibration run that would save there.

        Raises:
            CalibrationError: naming the directory and the reason.
        """
        problem = directory_problem(self.directory, create=True)
        if problem is not None:
            raise CalibrationError(f"calibration store {self.directory}: {problem}")

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
        """The arrays file an existing JSON points to, if it is readable enough to say; else None (read with the
        same bounds as a record, so a FIFO or a huge file in its place cannot stall a save)."""
        try:
            name = self._parse_metadata(json_path).get("arrays_file")
        except (CalibrationError, FileNotFoundError):
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
        check_record_settings(settings, "record")

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

        Every entry named like a record is listed, whatever it is (a FIFO or a link in place of a record is then
        refused by :meth:`load`, with its reason, rather than passed over in silence); temporary leftovers of
        interrupted writes and arrays files without their JSON are not records.

        Raises:
            CalibrationError: the directory exists but cannot be read.
        """
        if not self.directory.is_dir():
            return []
        wanted = None if serial_number is None else _serial_component(serial_number)
        found = []
        try:
            entries = builtins.list(self.directory.iterdir())
        except OSError as exc:
            raise CalibrationError(f"cannot list the calibration store {self.directory}: {exc}") from exc
        for path in entries:
            if path.name.startswith(_TEMP_PREFIX):
                continue
            match = _JSON_NAME.match(path.name)
            if match is None or (wanted is not None and match["serial"] != wanted):
                continue
            found.append((match["time"], path.name, path))
        return [path for _, _, path in sorted(found)]

    def load(self, path: str | os.PathLike[str]) -> CalibrationRecord:
        """Read and verify the record whose JSON file is ``path``.

        Raises:
            CorruptCalibrationError: unreadable, oversized, too deeply nested or malformed JSON; a record file or
                arrays file that is not a regular file in the store; a missing or truncated arrays file, checksum
                mismatch, or files that disagree with each other or with their names; settings the driver refuses.
            CalibrationVersionError: a format version other than :data:`FORMAT_VERSION`.
            CalibrationError: no file at ``path``.
        """
        path = Path(path)
        return self._load(path, self._read_metadata(path))

    def candidates(self, serial_number: str, settings: Mapping[str, Any] | None = None) -> Iterator[CalibrationRecord]:
        """The valid records of the device whose stored settings equal ``settings`` on the keys given, newest first.

        A key absent from the stored settings does not match. A record that cannot be read or verified is skipped
        with one warning naming the file and the reason, and the next older one is tried; a directory that cannot
        be listed yields nothing, with one warning.
        """
        wanted = {} if settings is None else _json_value(dict(settings), "settings")
        try:
            paths = self.list(serial_number)
        except CalibrationError as exc:
            _log.warning("skipping the calibration store: %s", exc)
            return
        for path in reversed(paths):
            try:
                metadata = self._read_metadata(path)
                if metadata["device"]["serial_number"] != serial_number:
                    continue
                stored = metadata["settings"]
                if any(key not in stored or stored[key] != value for key, value in wanted.items()):
                    continue
                record = self._load(path, metadata)
            except CalibrationError as exc:
                _log.warning("skipping calibration record: %s", exc)
                continue
            yield record

    def latest(self, serial_number: str, settings: Mapping[str, Any] | None = None) -> CalibrationRecord | None:
        """The newest valid record of the device whose stored settings equal ``settings`` on the keys given.

        A key absent from the stored settings does not match. Corrupt or unreadable records are skipped
        with a warning. Returns None when no record matches.
        """
        return next(self.candidates(serial_number, settings), None)

    def _load(self, path: Path, metadata: dict[str, Any]) -> CalibrationRecord:
        """The record of the JSON ``path`` whose checked ``metadata`` is given: its arrays read and verified."""
        try:
            npz_bytes = _read_regular_file(
                path.with_name(metadata["arrays_file"]), path.parent, MAX_ARRAYS_BYTES, "arrays file"
            )
        except FileNotFoundError as exc:
            raise CorruptCalibrationError(f"{path}: its arrays file {metadata['arrays_file']} is missing") from exc
        except CorruptCalibrationError as exc:
            raise CorruptCalibrationError(f"{path}: {exc}") from None
        digest = hashlib.sha256(npz_bytes).hexdigest()
        if digest != metadata["arrays_sha256"]:
            raise CorruptCalibrationError(
                f"{path}: arrays file {metadata['arrays_file']} fails its checksum (sha256 {digest[:16]}..., "
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

    def _read_metadata(self, path: Path) -> dict[str, Any]:
        """Parse and validate a record's JSON, with its created time as a datetime.

        Whatever a malformed file makes the checks raise comes out as CorruptCalibrationError, so a caller
        searching the store never meets another exception from a file's content.
        """
        try:
            metadata = self._parse_metadata(path)
            device, created = self._check_identity(path, metadata)
            arrays_file = self._check_contents(path, metadata)
        except FileNotFoundError as exc:
            raise CalibrationError(f"{path}: no such calibration record") from exc
        except CalibrationError:
            raise
        except Exception as exc:  # a shape of JSON the checks did not foresee: the file is bad, not the caller
            raise _corrupt(path, f"malformed ({type(exc).__name__}: {exc})") from exc
        stem = _stem(device["serial_number"], created)
        if path.name != f"{stem}.json" or not arrays_file.startswith(f"{stem}."):
            raise _corrupt(
                path, f"file name does not match its content (expected {stem}.json for this device and time)"
            )
        return metadata

    @staticmethod
    def _parse_metadata(path: Path) -> dict[str, Any]:
        """The record's JSON as a dict, once it says it is this format in the version this driver reads.

        The file is read with :func:`_read_regular_file` (bounded, never blocking) and its nesting depth checked
        before it is parsed. Raises FileNotFoundError when it is missing.
        """
        try:
            data = _read_regular_file(path, path.parent, MAX_RECORD_JSON_BYTES, "record file")
        except CorruptCalibrationError as exc:
            raise CorruptCalibrationError(f"{path}: {exc}") from None
        depth = _json_nesting_depth(data)
        if depth > MAX_JSON_DEPTH:
            raise _corrupt(path, f"nested {depth} levels deep, over the limit of {MAX_JSON_DEPTH}")
        try:
            metadata = json.loads(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise _corrupt(path, f"not UTF-8 text ({exc})") from exc
        except (ValueError, RecursionError) as exc:
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
        settings = metadata.get("settings")
        if not isinstance(settings, dict):
            raise _corrupt(path, "settings are missing or not a mapping")
        try:
            check_record_settings(settings, str(path))
        except CalibrationError as exc:
            raise CorruptCalibrationError(str(exc)) from None
        try:
            created = datetime.fromisoformat(metadata["created"])
            created = _check_utc(created, "created")
        except (KeyError, TypeError, ValueError, CalibrationError) as exc:
            raise _corrupt(path, f"created time is missing or not ISO 8601 with a time zone ({exc})") from exc
        metadata["created"] = created
        return device, created

    def _check_contents(self, path: Path, metadata: dict[str, Any]) -> str:
        """Check the routines' results (scalars), the array index and the arrays file's name and checksum; returns
        the arrays file's name."""
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
                or not all(isinstance(a, str) and a.startswith(f"{name}/") for a in routine["arrays"])
            ):
                raise _corrupt(path, f"routine {name!r} is malformed")
            for key, value in routine["result"].items():
                if value is not None and not isinstance(value, (bool, int, float, str)):
                    raise _corrupt(path, f"result {name}.{key} is {type(value).__name__}, not a scalar")
            listed.update(routine["arrays"])
        if listed != set(index):
            raise _corrupt(path, "the routines' array names disagree with the array index")
        self._check_index(path, index)

        arrays_file, sha = metadata.get("arrays_file"), metadata.get("arrays_sha256")
        if not isinstance(arrays_file, str) or not self._is_plain_name(arrays_file):
            raise _corrupt(path, "arrays file name is missing or not a plain file name")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise _corrupt(path, "arrays checksum is missing or not a sha256")
        return arrays_file

    @staticmethod
    def _check_index(path: Path, index: dict[str, Any]) -> None:
        """Every index entry a dtype NumPy reads without pickle and a shape of non-negative sizes, and all of them
        together at most :data:`MAX_ARRAYS_BYTES`: checked before a byte of the arrays is read."""
        total_bytes = 0
        for name, spec in index.items():
            if not (
                isinstance(spec, dict)
                and isinstance(spec.get("dtype"), str)
                and isinstance(spec.get("shape"), builtins.list)
                and len(spec["shape"]) <= _MAX_ARRAY_DIMS
                and all(is_int(n, 0) for n in spec["shape"])
            ):
                raise _corrupt(path, f"array index entry {name!r} is malformed")
            try:
                dtype = np.dtype(spec["dtype"])
            except (TypeError, ValueError) as exc:
                raise _corrupt(path, f"array {name!r} has an unknown dtype {spec['dtype']!r}") from exc
            if dtype.hasobject or dtype.str != spec["dtype"]:
                raise _corrupt(path, f"array {name!r} has dtype {spec['dtype']!r}, which the store does not write")
            count = 1
            for n in spec["shape"]:
                count *= n
            total_bytes += count * dtype.itemsize
        if total_bytes > MAX_ARRAYS_BYTES:
            raise _corrupt(
                path, f"the array index declares {total_bytes} bytes, over the {MAX_ARRAYS_BYTES}-byte limit"
            )

    @staticmethod
    def _read_arrays(path: Path, npz_bytes: bytes, index: dict[str, dict[str, Any]]) -> dict[str, np.ndarray]:
        """The arrays of the index from the arrays file's bytes; each member's header is compared with the index
        before the member is read, so a header declaring another shape never reaches an allocation."""
        arrays: dict[str, np.ndarray] = {}
        try:
            with np.load(io.BytesIO(npz_bytes), allow_pickle=False) as npz:
                names = set(npz.files)
                if names != set(index):
                    raise CorruptCalibrationError(
                        f"{path}: arrays file holds {sorted(names)}, the metadata lists {sorted(index)}"
                    )
                for name, spec in index.items():
                    with npz.zip.open(f"{name}.npy") as member:
                        version = np.lib.format.read_magic(member)
                        read_header = (
                            np.lib.format.read_array_header_1_0
                            if version == (1, 0)
                            else np.lib.format.read_array_header_2_0
                        )
                        shape, _, dtype = read_header(member)
                    if dtype.str != spec["dtype"] or list(shape) != spec["shape"]:
                        raise CorruptCalibrationError(
                            f"{path}: array {name!r} is {dtype.str}{list(shape)}, "
                            f"the metadata says {spec['dtype']}{spec['shape']}"
                        )
                    arrays[name] = npz[name]
        except CorruptCalibrationError:
            raise
        except Exception as exc:
            # ValueError includes numpy's refusal of pickled (object) arrays under allow_pickle=False; a damaged
            # zip raises BadZipFile, EOFError, zlib.error, NotImplementedError (unknown compression) and more.
            raise CorruptCalibrationError(f"{path}: arrays file is unreadable: {exc}") from exc
        return arrays
