"""Bit-for-bit checks of a faulty run against a fault-free run: what the soak (``opu soak``) and the fault sweep
(``opu faults``) share.

With ``noise=0`` the emulator is deterministic: a vector's result is a pure function of the vector and the
device's seed. So the exact expectation of a run with faults on is the result of the same vectors on a fault-free
device of the same seed, and every returned row can be compared with its reference row bit for bit (no tolerance
is needed, and none would hide a row computed from another request's frames). This module holds the emulator URL
those runs use, the checks of its options and fault plan, how the device is opened for such a comparison, and the
row check itself.
"""

from __future__ import annotations

import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from opu_driver.errors import ConfigurationError

__all__ = [
    "DEFAULT_URL_QUERY",
    "RESERVED_KEYS",
    "RowCheck",
    "check_fault_plan",
    "check_rows",
    "check_url_query",
    "emulator_url",
    "open_exact",
    "reference_lookup",
]

DEFAULT_URL_QUERY = "dmd=96x64&camera=64x48&cell=4"
"""The small emulator of the test suite: about 30,000 frames/s here without faults."""
RESERVED_KEYS = ("seed", "noise", "faults")
"""URL keys the exact runs set themselves: the seed (the same for the faulty and the fault-free device), noise
off, and the fault plan."""


def check_url_query(url_query: object, hint: str = "") -> str:
    """``url_query`` if it is a well-formed emulator query that sets none of :data:`RESERVED_KEYS`.

    Raises:
        ConfigurationError: not a string, malformed, or setting a reserved key (``hint`` says what to use instead).
    """
    if not isinstance(url_query, str):
        raise ConfigurationError(f"url_query must be a string, got {url_query!r}")
    try:
        keys = [
            key
            for key, _ in urllib.parse.parse_qsl(
                url_query.lstrip("?"), keep_blank_values=True, strict_parsing=bool(url_query.strip("?"))
            )
        ]
    except ValueError as exc:
        raise ConfigurationError(f"url_query {url_query!r}: {exc}") from None
    reserved = sorted(set(keys) & set(RESERVED_KEYS))
    if reserved:
        raise ConfigurationError(
            f"url_query must not set {', '.join(reserved)}: seed, noise=0 and faults are set by the run itself"
            + (f" ({hint})" if hint else "")
        )
    return url_query


def check_fault_plan(plan: object) -> str:
    """``plan`` if the emulator accepts it as a fault plan (docs/emulator.md, "Faults"); "" is no fault.

    Raises:
        ConfigurationError: not a string, or an entry the emulator refuses (named in the message).
    """
    if not isinstance(plan, str):
        raise ConfigurationError(f"faults must be a fault plan text, got {plan!r}")
    from firmware_sim.errors import SimConfigError
    from firmware_sim.faults import FaultPlan

    try:
        FaultPlan.parse(plan)  # a bad plan is refused now, naming its entry, before anything is opened
    except SimConfigError as exc:
        raise ConfigurationError(exc.message) from exc
    return plan


def emulator_url(url_query: str, seed: int, faults: str = "") -> str:
    """The emulator URL of an exact run: the options, the seed, noise off and (if any) the fault plan."""
    query = url_query.strip("?&")
    parts = [query] if query else []
    parts += [f"seed={seed}", "noise=0"]
    if faults.strip():
        parts.append(f"faults={faults.replace(' ', '')}")
    return "sim://?" + "&".join(parts)


def open_exact(url: str, **settings: Any) -> Any:
    """``opu_driver.open(url, **settings)`` for a run whose results are compared bit for bit with another's.

    No stored calibration is applied (a calibration of the user's must not change what is measured) and no
    drift check runs at open (it would send frames, under faults, before the run starts).
    """
    import opu_driver

    return opu_driver.open(url, calibration=None, drift_check=False, **settings)


@dataclass(frozen=True)
class RowCheck:
    """How the rows of one result compare with the reference rows of the vectors asked for."""

    rows: int = 0
    matched: int = 0
    mismatched: int = 0
    misattributed: int = 0
    duplicated: int = 0
    lost: int = 0
    extra: int = 0

    @property
    def ok(self) -> bool:
        return self.mismatched == 0 and self.lost == 0 and self.extra == 0


def reference_lookup(reference: np.ndarray) -> Callable[[bytes], int | None]:
    """A function mapping a row's bytes to the index of the reference row with those bytes (None if none).

    The table is built on the first call only: a run without a wrong row never pays for it. When reference rows
    repeat, the last index of equal rows is returned.
    """
    table: dict[bytes, int] = {}

    def lookup(row: bytes) -> int | None:
        if not table and len(reference):
            view = np.ascontiguousarray(reference).view(np.uint8).reshape(len(reference), -1)
            table.update((view[i].tobytes(), i) for i in range(len(reference)))
        return table.get(row)

    return lookup


def check_rows(
    result: np.ndarray, indices: np.ndarray, reference: np.ndarray, lookup: Callable[[bytes], int | None]
) -> RowCheck:
    """Compare each row of ``result`` with ``reference[indices[i]]`` bit for bit.

    ``indices`` must be distinct (a batch draws without replacement) and the reference rows pairwise distinct;
    ``lookup`` maps a row's bytes to the pool index whose reference row it is (None if none). A wrong row that is
    another pool vector's reference row is *misattributed*; a row whose bytes occur more than once in the result
    is *duplicated* (each copy after the first); rows missing at the end are *lost*, rows beyond the request
    *extra*. Misattributed and duplicated rows are also mismatched.
    """
    asked = len(indices)
    got = int(result.shape[0]) if result.ndim == 2 else 0
    if result.ndim != 2 or result.shape[1] != reference.shape[1] or result.dtype != reference.dtype:
        return RowCheck(rows=asked, mismatched=asked, lost=asked)  # nothing usable came back
    n = min(asked, got)
    expected = reference[indices[:n]]
    width = reference.dtype.itemsize * reference.shape[1]
    # bit-for-bit: compare raw bytes (float -0.0 != 0.0 and NaN == NaN of the same payload, as they should)
    got_bytes = np.ascontiguousarray(result[:n]).view(np.uint8).reshape(n, width)
    want_bytes = np.ascontiguousarray(expected).view(np.uint8).reshape(n, width)
    equal = (got_bytes == want_bytes).all(axis=1)
    mismatched = int(n - equal.sum())
    misattributed = 0
    for i in np.flatnonzero(~equal):
        owner = lookup(got_bytes[i].tobytes())
        if owner is not None and owner != int(indices[i]):
            misattributed += 1
    seen = Counter(got_bytes[i].tobytes() for i in range(n))
    duplicated = sum(count - 1 for count in seen.values() if count > 1)
    return RowCheck(
        rows=asked,
        matched=int(equal.sum()),
        mismatched=mismatched,
        misattributed=misattributed,
        duplicated=duplicated,
        lost=max(0, asked - got),
        extra=max(0, got - asked),
    )
