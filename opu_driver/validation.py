"""Checks of arguments and settings, written once: every settings dataclass and public entry point uses these.

Two ways in:

- functions (``check_int``, ``check_number``, ``check_choice``, ``check_bool``) for arguments of a call: they
  return the value normalised (a NumPy integer becomes ``int``) or raise the error type the caller names
  (``InvalidInputError`` for call arguments by default);
- :class:`Validated`, a base for frozen settings dataclasses whose fields are declared with :func:`setting`:
  every field is checked and normalised when the object is built, and a cross-field rule goes in
  ``_check``. Bad settings raise ``ConfigurationError`` naming the field, before anything touches a device.

Booleans are never accepted as numbers (``True`` is an ``int`` in Python, and ``retries=True`` is a bug), NaN and
infinities are never accepted where a finite number is meant.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import Any, ClassVar, TypeVar

import numpy as np

from .errors import ConfigurationError, InvalidInputError, OpuError

__all__ = ["is_int", "is_number", "check_int", "check_number", "check_choice", "check_bool", "setting", "Validated"]

_T = TypeVar("_T")


def is_int(value: object, low: int | None = None, high: int | None = None) -> bool:
    """Whether ``value`` is a Python or NumPy integer (not a bool) within ``low..high`` (bounds optional)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    # Comparing a NumPy integer gives a NumPy bool: convert, so callers always get a Python bool.
    return bool((low is None or value >= low) and (high is None or value <= high))


def is_number(value: object) -> bool:
    """Whether ``value`` is a finite Python or NumPy real number (not a bool)."""
    return (
        not isinstance(value, bool)
        and isinstance(value, (int, float, np.integer, np.floating))
        and math.isfinite(float(value))
    )


def _range_text(low: float | None, high: float | None, low_open: bool = False) -> str:
    if low is not None and high is not None:
        return f" within {'(' if low_open else ''}{low}..{high}{')' if low_open else ''}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low}"
    if high is not None:
        return f" <= {high}"
    return ""


def check_int(
    value: object,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    error: type[OpuError] = InvalidInputError,
) -> int:
    """``value`` as an ``int``; ``error`` naming ``name`` and the range when it is not an integer within it."""
    if not is_int(value, low, high):
        raise error(f"{name} must be an integer{_range_text(low, high)}, got {value!r}")
    return int(value)  # type: ignore[call-overload]


def check_number(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    error: type[OpuError] = InvalidInputError,
) -> float:
    """``value`` as a finite ``float`` within ``low..high`` (``low_open``: strictly above ``low``)."""
    ok = is_number(value)
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = (low is None or (number > low if low_open else number >= low)) and (high is None or number <= high)
    if not ok:
        raise error(f"{name} must be a finite number{_range_text(low, high, low_open)}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_choice(value: _T, name: str, choices: Collection[Any], *, error: type[OpuError] = InvalidInputError) -> _T:
    """``value`` itself when it is one of ``choices``; ``error`` listing them otherwise."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value asked of a set
        ok = False
    if not ok:
        raise error(f"{name}={value!r}; choose one of {', '.join(repr(c) for c in choices)}")
    return value


def check_bool(value: object, name: str, *, error: type[OpuError] = InvalidInputError) -> bool:
    """``value`` when it is exactly True or False (not 0, 1 or a string)."""
    if not isinstance(value, (bool, np.bool_)):
        raise error(f"{name} must be True or False, got {value!r}")
    return bool(value)


@dataclasses.dataclass(frozen=True)
class _Rule:
    """How one settings field is checked (kept in the field's metadata)."""

    kind: str  # "int", "number", "bool", "choice" or "any"
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple[Any, ...] = ()
    optional: bool = False

    def apply(self, value: Any, name: str, error: type[OpuError]) -> Any:
        if value is None and self.optional:
            return None
        if self.kind == "int":
            return check_int(value, name, low=self.low, high=self.high, error=error)  # type: ignore[arg-type]
        if self.kind == "number":
            return check_number(value, name, low=self.low, high=self.high, low_open=self.low_open, error=error)
        if self.kind == "bool":
            return check_bool(value, name, error=error)
        if self.kind == "choice":
            return check_choice(value, name, self.choices, error=error)
        return value


def setting(
    default: Any = dataclasses.MISSING,
    *,
    kind: str = "any",
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    choices: Collection[Any] = (),
    optional: bool = False,
) -> Any:
    """A dataclass field of a :class:`Validated` settings class, with the rule it is checked by.

    ``kind`` is "int", "number" (finite float), "bool", "choice" (one of ``choices``) or "any" (checked in
    ``_check``); ``optional`` lets None through (meaning "keep the device's own value").
    """
    if kind not in ("int", "number", "bool", "choice", "any"):
        raise ValueError(f"unknown setting kind {kind!r}")
    rule = _Rule(kind, low, high, low_open, tuple(choices), optional)
    return dataclasses.field(default=default, metadata={"rule": rule})


class Validated:
    """Base of frozen settings dataclasses: fields declared with :func:`setting` are checked and normalised at
    construction; ``_check`` (optional) adds rules between fields. ``_error`` is the error type raised."""

    _error: ClassVar[type[OpuError]] = ConfigurationError

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            rule = field.metadata.get("rule")
            if rule is None:
                continue
            value = rule.apply(getattr(self, field.name), field.name, self._error)
            object.__setattr__(self, field.name, value)
        self._check()

    def _check(self) -> None:
        """Hook: rules between fields, raising ``self._error``."""
