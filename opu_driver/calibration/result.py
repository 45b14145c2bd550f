"""The base of the routines' result dataclasses: ``summary()`` and ``arrays()`` derived from field metadata.

A calibration record keeps each result as scalars (the summary, in the JSON file) and arrays (in the .npz file).
Instead of every result listing its fields again in two methods, each field says what the record keeps of it
(:func:`summarised`, :func:`stored`, :func:`region`, :func:`rows`; :func:`summarised_property` and
:func:`stored_property` for derived values), and :class:`CalibrationResult` builds both in declaration order, the
camera region last. Readers of a record (the report, the summary table, applying a record) take the key names
from the classes (``DarkResult.summary_key.level_dn``, ``DarkResult.record_array.mean_dn``), so a renamed or
mistyped key fails at once instead of silently reading nothing.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

__all__ = [
    "Recorded",
    "CalibrationResult",
    "KeyNames",
    "summarised",
    "stored",
    "region",
    "rows",
    "summarised_property",
    "stored_property",
    "summary_of",
    "arrays_of",
    "row_key",
    "REGION_PREFIX",
    "REGION_PARTS",
    "region_keys",
]

REGION_PREFIX = "roi_"
"""Prefix of the summary keys that hold a result's camera region (``roi_x``, ``roi_y``, ``roi_width``,
``roi_height``)."""
REGION_PARTS = ("x", "y", "width", "height")

_META = "calibration_entry"
_ranks = itertools.count()  # declaration order of entries, fields and properties alike


def region_keys() -> tuple[str, ...]:
    """The summary keys of a camera region, in the order a summary lists them."""
    return tuple(REGION_PREFIX + part for part in REGION_PARTS)


@dataclasses.dataclass(frozen=True)
class _Scalar:
    """How a value enters the summary: converted, then None when not finite (if asked), then rounded."""

    digits: int | None = None
    significant: int | None = None
    finite: bool = False
    convert: Callable[[Any], Any] | None = None

    def value(self, value: Any) -> Any:
        if self.convert is not None:
            value = self.convert(value)
        if value is None:
            return None
        if self.finite and not math.isfinite(value):
            return None
        if self.digits is not None:
            return round(float(value), self.digits)
        if self.significant is not None:
            return float(f"{value:.{self.significant}g}")
        return value


@dataclasses.dataclass(frozen=True)
class _Entry:
    """What a record keeps of one field or property: a summary scalar, an array, or both."""

    rank: int
    scalar: _Scalar | None = None
    array: bool = False
    dtype: npt.DTypeLike | None = None
    when: Callable[[Any], bool] | None = None

    def summary_keys(self, name: str) -> list[str]:
        return [name] if self.scalar is not None else []

    def summary_items(self, name: str, value: Any) -> Iterator[tuple[str, Any]]:
        if self.scalar is not None:
            yield name, self.scalar.value(value)

    def array_keys(self, name: str) -> list[str]:
        return [name] if self.array else []

    def array_items(self, owner: Any, name: str, value: Any) -> Iterator[tuple[str, np.ndarray]]:
        if self.array and (self.when is None or self.when(owner)):
            yield name, value if self.dtype is None else np.asarray(value, dtype=self.dtype)


@dataclasses.dataclass(frozen=True)
class _Region(_Entry):
    """A :class:`~opu_driver.devices.camera.Roi` whose x, y, width and height close the summary."""

    def summary_keys(self, name: str) -> list[str]:
        return list(region_keys())

    def summary_items(self, name: str, value: Any) -> Iterator[tuple[str, Any]]:
        for key, part in zip(region_keys(), REGION_PARTS, strict=True):
            yield key, getattr(value, part)


@dataclasses.dataclass(frozen=True)
class _Rows(_Entry):
    """A tuple of row dataclasses: the labels joined under the field's key, each row's summary entries under
    "<label>:<key>", and one array per stored column (one value per row, in row order)."""

    row_type: type = object
    label: Callable[[Any], str] = str

    def summary_keys(self, name: str) -> list[str]:
        return [name]

    def summary_items(self, name: str, value: Any) -> Iterator[tuple[str, Any]]:
        yield name, ",".join(self.label(row) for row in value)
        for row in value:
            prefix = self.label(row)
            for key, scalar in summary_of(row).items():
                yield row_key(prefix, key), scalar

    def array_keys(self, name: str) -> list[str]:
        return [key for column, entry in _entries(self.row_type) for key in entry.array_keys(column)]

    def array_items(self, owner: Any, name: str, value: Any) -> Iterator[tuple[str, np.ndarray]]:
        for column, entry in _entries(self.row_type):
            if entry.array:
                yield column, np.asarray([getattr(row, column) for row in value], dtype=entry.dtype)


def row_key(label: str, key: str) -> str:
    """The summary key of one row's entry: "<label>:<key>" (e.g. "four_frame/ternary:snr_db")."""
    return f"{label}:{key}"


def _field(entry: _Entry, default: Any, default_factory: Any, repr_: bool) -> Any:
    return dataclasses.field(default=default, default_factory=default_factory, repr=repr_, metadata={_META: entry})


def summarised(
    *,
    digits: int | None = None,
    significant: int | None = None,
    finite: bool = False,
    convert: Callable[[Any], Any] | None = None,
    array: npt.DTypeLike | bool = False,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    repr: bool = True,
) -> Any:
    """A field that enters the summary under its own name.

    Args:
        digits: round to this many decimals (``round(float(value), digits)``).
        significant: keep this many significant digits instead.
        finite: None instead of NaN or an infinity (JSON has neither). None always stays None.
        convert: applied to the value first (``bool``, ``int``, a count of an array).
        array: also an array of ``arrays()`` (a row's column), of this dtype (True: as it is).
    """
    entry = _Entry(
        next(_ranks),
        _Scalar(digits, significant, finite, convert),
        array is not False,
        None if array is True or array is False else array,
    )
    return _field(entry, default, default_factory, repr)


def stored(
    dtype: npt.DTypeLike | None = None,
    *,
    summary: Callable[[Any], Any] | None = None,
    when: Callable[[Any], bool] | None = None,
    default: Any = dataclasses.MISSING,
    default_factory: Any = dataclasses.MISSING,
    repr: bool = False,
) -> Any:
    """A field kept as an array of ``arrays()`` under its own name, as ``dtype`` (None: as it is).

    Args:
        summary: the summary also holds this function of the array under the same name (a count, say).
        when: the array is kept only when this is true of the result (optional arrays).
    """
    entry = _Entry(next(_ranks), None if summary is None else _Scalar(convert=summary), True, dtype, when)
    return _field(entry, default, default_factory, repr)


def region() -> Any:
    """The camera region of the result (a Roi): ``roi_x``, ``roi_y``, ``roi_width``, ``roi_height`` close the
    summary."""
    return _field(_Region(next(_ranks)), dataclasses.MISSING, dataclasses.MISSING, True)


def rows(row_type: type, label: Callable[[Any], str], *, default_factory: Any = tuple) -> Any:
    """A tuple of ``row_type`` rows (dataclasses declared with these helpers), flattened into the summary and the
    arrays as :class:`_Rows` says; ``label`` names a row."""
    return _field(
        _Rows(next(_ranks), array=True, row_type=row_type, label=label), dataclasses.MISSING, default_factory, True
    )


class _Property(property):
    """A property that enters the summary or the arrays (see :func:`summarised_property`)."""

    entry: _Entry


def summarised_property(
    *,
    digits: int | None = None,
    significant: int | None = None,
    finite: bool = False,
    convert: Callable[[Any], Any] | None = None,
) -> Callable[[Callable[[Any], Any]], property]:
    """Decorator: a property derived from the fields that enters the summary (rounded as :func:`summarised`
    says) at its place in the class body."""
    entry = _Entry(next(_ranks), _Scalar(digits, significant, finite, convert))

    def wrap(function: Callable[[Any], Any]) -> property:
        prop = _Property(function, doc=function.__doc__)
        prop.entry = entry
        return prop

    return wrap


def stored_property(dtype: npt.DTypeLike | None = None) -> Callable[[Callable[[Any], Any]], property]:
    """Decorator: a property derived from the fields that ``arrays()`` keeps, as ``dtype`` (None: as it is), at
    its place in the class body."""
    entry = _Entry(next(_ranks), None, True, dtype)

    def wrap(function: Callable[[Any], Any]) -> property:
        prop = _Property(function, doc=function.__doc__)
        prop.entry = entry
        return prop

    return wrap


_ENTRIES: dict[type, tuple[tuple[str, _Entry], ...]] = {}


def _entries(cls: type) -> tuple[tuple[str, _Entry], ...]:
    """(name, entry) of every declared field and property of ``cls``, in declaration order, the region last."""
    cached = _ENTRIES.get(cls)
    if cached is not None:
        return cached
    found = [
        (f.metadata[_META].rank, f.name, f.metadata[_META]) for f in dataclasses.fields(cls) if _META in f.metadata
    ]
    seen = set()
    for klass in cls.__mro__:
        for name, attribute in vars(klass).items():
            if isinstance(attribute, _Property) and name not in seen:
                seen.add(name)
                found.append((attribute.entry.rank, name, attribute.entry))
    found.sort(key=lambda item: (isinstance(item[2], _Region), item[0]))
    entries = tuple((name, entry) for _, name, entry in found)
    _ENTRIES[cls] = entries
    return entries


def summary_of(obj: Any) -> dict[str, Any]:
    """The summary of a dataclass declared with these helpers (what :meth:`Recorded.summary` returns)."""
    out: dict[str, Any] = {}
    for name, entry in _entries(type(obj)):
        out.update(entry.summary_items(name, getattr(obj, name)))
    return out


def arrays_of(obj: Any) -> dict[str, np.ndarray]:
    """The arrays of a dataclass declared with these helpers (what :meth:`Recorded.arrays` returns)."""
    out: dict[str, np.ndarray] = {}
    for name, entry in _entries(type(obj)):
        if entry.array:
            out.update(entry.array_items(obj, name, getattr(obj, name)))
    return out


class KeyNames:
    """Key names of one class as attributes (``DarkResult.summary_key.level_dn == "level_dn"``), in order when
    iterated; an unknown attribute raises AttributeError naming the class."""

    def __init__(self, owner: str, what: str, names: Iterable[tuple[str, str]]) -> None:
        self._owner = owner
        self._what = what
        self._names = dict(names)

    def __getattr__(self, attribute: str) -> str:
        names = self.__dict__.get("_names", {})
        if attribute in names:
            return names[attribute]
        raise AttributeError(f"{self.__dict__.get('_owner')} has no {self.__dict__.get('_what')} {attribute!r}")

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __contains__(self, key: object) -> bool:
        return key in self._names.values()

    def __len__(self) -> int:
        return len(self._names)

    def __repr__(self) -> str:
        return f"<{self._what}s of {self._owner}: {', '.join(self._names.values())}>"


class _Names:
    """Class attribute computing a :class:`KeyNames` of its owner on first use (after @dataclass has run)."""

    def __init__(self, what: str, qualify: bool = False) -> None:
        self._what = what
        self._qualify = qualify
        self._cache: dict[type, KeyNames] = {}

    def __get__(self, obj: Any, owner: type) -> KeyNames:
        names = self._cache.get(owner)
        if names is None:
            if self._what == "summary key":
                keys = [key for name, entry in _entries(owner) for key in entry.summary_keys(name)]
            else:
                keys = [key for name, entry in _entries(owner) for key in entry.array_keys(name)]
            prefix = f"{getattr(owner, 'routine', '')}/" if self._qualify else ""
            names = KeyNames(owner.__name__, self._what, ((key, prefix + key) for key in keys))
            self._cache[owner] = names
        return names


class Recorded:
    """Base of dataclasses whose fields are declared with :func:`summarised`, :func:`stored` and the like.

    ``summary()`` and ``arrays()`` follow the declarations; ``summary_key`` and ``array_key`` name their keys.
    """

    summary_key: ClassVar[KeyNames] = _Names("summary key")  # type: ignore[assignment]
    array_key: ClassVar[KeyNames] = _Names("array")  # type: ignore[assignment]

    def summary(self) -> dict[str, Any]:
        """The scalars a calibration record keeps (JSON values: bool, int, float, str or None), in order."""
        return summary_of(self)

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays a calibration record keeps (stored as ``<routine>/<name>``), in order."""
        return arrays_of(self)


class CalibrationResult(Recorded):
    """Base of the routines' results; ``routine`` is the name the record keeps them under.

    ``record_array`` names the arrays as a record holds them (``DarkResult.record_array.mean_dn ==
    "dark/mean_dn"``).
    """

    routine: ClassVar[str] = ""
    record_array: ClassVar[KeyNames] = _Names("array", qualify=True)  # type: ignore[assignment]
