"""The fault sweep (``opu faults``): how often a call fails, and what recovery costs, per fault kind, rate and
batch size, with every returned row checked bit for bit.

The fault matrix (tests/opu/test_faults.py) shows that each fault is recovered at rates chosen to make it fire;
the soak (``opu soak``) that a million frames of mixed faults never give a wrong row. Neither says how the
outcome depends on the rate and the size of a call: a batch of 10,000 rows runs in long sequences, and at a rate
of 2 % per camera frame every sequence meets several faults. The sweep measures that, cell by cell, so a change of
the driver's recovery can be compared with the figures before it (docs/reliability.md, "Fault sweep").

A *cell* is one operation (``transform`` of binary vectors, ``linear_transform`` of ternary ones), one fault kind
(or a mix, ``timeout+crc+drop+dup``: each kind at the rate), one rate and one batch size; it is run once per seed.
A run opens a fresh small emulator with ``noise=0`` and the seed, installs the fault plan (so faults hit the call
under test, not the open), and makes one call. The *clean* run is the same call on a fault-free device of the same
seed; its result is computed once per (operation, batch, seed) and reused by every kind and rate (further clean
calls only time it and must agree with it bit for bit). Per cell the sweep counts:

- failed calls: calls that raised a typed ``opu_driver`` error (after the driver's retries);
- wrong rows: rows of returned results that differ from the clean result bit for bit, and lost or extra rows;
  this must always be 0: a call returns exactly the fault-free result or raises;
- frames sent relative to clean: ``opu.counters.frames_sent`` during the faulty calls over the clean calls' (the
  price of the retries, failed calls included);
- wall time relative to clean, of the calls alone (not the open; the clean time is the median of clean calls
  spread through the faulty ones: one before each kind's runs, at least ``clean_repeats``);
- faults injected by the emulator, so a cell whose fault never fired is seen as such.

Any other exception than an ``OpuError`` is *unexpected*: recorded with its message, the sweep goes on, and the
command exits with status 1, as for a wrong row.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from opu_driver.errors import ConfigurationError, OpuError
from opu_driver.validation import Validated, check_choice, check_int, check_number, setting

from .exact import (
    DEFAULT_URL_QUERY,
    check_fault_plan,
    check_rows,
    check_url_query,
    emulator_url,
    open_exact,
    reference_lookup,
)

__all__ = [
    "DEFAULT_BATCHES",
    "DEFAULT_KINDS",
    "DEFAULT_RATES",
    "OPERATIONS",
    "CellResult",
    "SweepConfig",
    "SweepReport",
    "cell_row",
    "format_rate",
    "format_summary",
    "format_table",
    "make_inputs",
    "parse_rate",
    "run_sweep",
]

_log = logging.getLogger(__name__)

OPERATIONS = ("transform", "linear_transform")
"""What a sweep calls: ``Opu.transform`` of binary vectors, ``Opu.linear_transform`` of ternary vectors (its
default scheme, four frames per vector)."""
DEFAULT_KINDS = ("crc", "truncate", "drop", "dup", "reorder", "timeout", "stall", "reset", "timeout+crc+drop+dup")
"""Every fault that loses, spoils, repeats or reorders a frame, alone, and a mix (``+``: each kind at the rate).
Rates are per event of the kind's sort: per camera frame (crc, truncate, drop, dup, reorder), per bulk IN read
(timeout), per bulk transfer (stall), per sequence start (reset); docs/emulator.md, "Faults"."""
DEFAULT_RATES = (0.005, 0.01, 0.02)
DEFAULT_BATCHES = (64, 300, 2000, 10000)
_MIX = "+"
_RESERVED_SETTINGS = ("calibration", "drift_check")  # open_exact sets them: no calibration, no drift check
_SEED_SALT = 0xFA17


def parse_rate(text: str) -> float:
    """A rate as given on the command line: ``"0.5%"`` or ``"0.005"`` -> 0.005.

    Raises:
        ConfigurationError: not a number, or outside 0..1.
    """
    body = text.strip()
    percent = body.endswith("%")
    try:
        value = float(body[:-1] if percent else body)
    except ValueError:
        raise ConfigurationError(f"rate {text!r}: give a fraction (0.005) or a percentage (0.5%)") from None
    value = value / 100 if percent else value
    if not 0 <= value <= 1:
        raise ConfigurationError(f"rate {text!r} is outside 0..1 (0 %..100 %)")
    return value


def format_rate(rate: float) -> str:
    """0.005 -> ``"0.5%"`` (as the table shows it)."""
    return f"{rate * 100:g}%"


def _check_values(values: object, name: str, check: Callable[[Any], Any]) -> tuple[Any, ...]:
    """``values`` as a tuple of checked, distinct values; ConfigurationError for an empty or repeating list."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise ConfigurationError(f"{name} must be a non-empty sequence, got {values!r}")
    checked = tuple(check(value) for value in values)
    if len(set(checked)) != len(checked):
        raise ConfigurationError(f"{name} repeat a value: {list(values)}")
    return checked


def _check_kind(kind: object) -> str:
    """A fault kind of the link, or several joined by ``+``; ConfigurationError naming what is wrong."""
    from firmware_sim.faults import FAULT_KINDS

    if not isinstance(kind, str):
        raise ConfigurationError(f"a fault kind must be a string, got {kind!r}")
    unknown = [name for name in kind.split(_MIX) if name not in FAULT_KINDS]
    if unknown:
        raise ConfigurationError(
            f"fault kind {kind!r}: {', '.join(map(repr, unknown))} is not a fault of the link; choose from "
            f"{', '.join(FAULT_KINDS)}, alone or joined by '{_MIX}'"
        )
    check_fault_plan(SweepConfig.plan(kind, 0.5))
    return kind


@dataclass(frozen=True)
class SweepConfig(Validated):
    """What one fault sweep runs.

    Attributes:
        kinds: fault kinds of the emulator's link (``firmware_sim.faults.FAULT_KINDS``), each alone or several
            joined by ``+`` (a mix, each kind at the cell's rate).
        rates: fault rates, each within 0..1, per event of the kind's sort.
        batches: batch sizes (vectors per call).
        seeds: runs per cell, with seeds ``first_seed``, ``first_seed + 1``, ...: each seed gives the emulator's
            medium, its fault draws and the inputs.
        operations: a subset of :data:`OPERATIONS`.
        n_features: features per vector.
        n_components: outputs per vector.
        url_query: emulator options without seed, noise and faults, which the sweep sets.
        first_seed: the first seed.
        clean_repeats: fault-free calls per (operation, batch, seed), at least; there is one before each kind's
            runs anyway. Their results must be equal bit for bit, and the median of their times is the clean
            time (one slow call would skew every cell of its column on a machine whose load varies).
        settings: ``OpuSettings`` fields for every device of the sweep (``retries``, ``timeout_s``,
            ``chunk_frames``, ...); those not given keep the driver's defaults. ``calibration`` and
            ``drift_check`` are the sweep's (none, off).
    """

    kinds: tuple[str, ...] = setting(DEFAULT_KINDS)
    rates: tuple[float, ...] = setting(DEFAULT_RATES)
    batches: tuple[int, ...] = setting(DEFAULT_BATCHES)
    seeds: int = setting(2, kind="int", low=1)
    operations: tuple[str, ...] = setting(OPERATIONS)
    n_features: int = setting(500, kind="int", low=1)
    n_components: int = setting(64, kind="int", low=1)
    url_query: str = setting(DEFAULT_URL_QUERY)
    first_seed: int = setting(0, kind="int", low=0)
    clean_repeats: int = setting(3, kind="int", low=1)
    settings: dict[str, Any] = field(default_factory=dict)

    def _check(self) -> None:
        from opu_driver import OpuSettings

        kinds = _check_values(self.kinds, "kinds", _check_kind)
        rates = _check_values(
            self.rates, "rates", lambda r: check_number(r, "rate", low=0, high=1, error=ConfigurationError)
        )
        batches = _check_values(
            self.batches, "batches", lambda b: check_int(b, "batch", low=1, error=ConfigurationError)
        )
        operations = _check_values(
            self.operations, "operations", lambda o: check_choice(o, "operation", OPERATIONS, error=ConfigurationError)
        )
        for name, value in (("kinds", kinds), ("rates", rates), ("batches", batches), ("operations", operations)):
            object.__setattr__(self, name, value)
        check_url_query(self.url_query, hint="use --seeds and --kinds")
        if not isinstance(self.settings, dict):
            raise ConfigurationError(f"settings must be a dict of OpuSettings fields, got {self.settings!r}")
        reserved = sorted(set(self.settings) & set(_RESERVED_SETTINGS))
        if reserved:
            raise ConfigurationError(f"settings must not set {', '.join(reserved)}: the sweep runs uncalibrated")
        OpuSettings.from_options(dict(self.settings))  # unknown or bad settings are refused now

    @staticmethod
    def plan(kind: str, rate: float) -> str:
        """The emulator's fault plan of a cell: ``plan("crc+drop", 0.01)`` -> ``"crc:0.01,drop:0.01"``."""
        return ",".join(f"{name}:{rate:g}" for name in kind.split(_MIX))

    def seed_values(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)

    def cells(self) -> Iterator[tuple[str, str, float, int]]:
        """(operation, kind, rate, batch) of every cell, in the table's order."""
        for operation in self.operations:
            for kind in self.kinds:
                for rate in self.rates:
                    for batch in self.batches:
                        yield operation, kind, rate, batch

    def runs(self) -> int:
        """Device calls the sweep makes: the clean ones and one per cell and seed."""
        per_seed = len(self.kinds) * len(self.rates) + max(self.clean_repeats, len(self.kinds))
        return len(self.operations) * len(self.batches) * self.seeds * per_seed

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepConfig:
        """The config that :meth:`as_dict` (and its JSON, a report's ``config``) describes: to run it again."""
        options: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**options)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples as lists)."""
        return {
            f.name: list(value) if isinstance(value := getattr(self, f.name), tuple) else value for f in fields(self)
        }


@dataclass
class CellResult:
    """What the runs of one cell gave, summed over its seeds.

    ``failed_calls`` raised a typed error (``errors`` by class name), ``failed_without_retries`` of them without
    the driver counting a failed recovery (``counters.requests_failed`` unchanged: the error did not come out of
    the retry engine). ``unexpected`` counts exceptions that are no ``OpuError`` (``first_unexpected`` keeps the
    first one's text). ``rows_checked`` are the rows of returned results, ``wrong_rows`` those not equal bit for
    bit to the clean result's (``misattributed_rows`` of them equal to another row of the clean result);
    ``lost_rows`` and ``extra_rows`` compare the returned row counts with the batch. Frames and wall times are
    the faulty calls' and, in ``clean_*``, the clean calls' of the same seeds.
    """

    operation: str
    kind: str
    rate: float
    batch: int
    calls: int = 0
    failed_calls: int = 0
    failed_without_retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    unexpected: dict[str, int] = field(default_factory=dict)
    first_unexpected: str | None = None
    rows_checked: int = 0
    wrong_rows: int = 0
    misattributed_rows: int = 0
    lost_rows: int = 0
    extra_rows: int = 0
    frames_sent: int = 0
    clean_frames_sent: int = 0
    wall_s: float = 0.0
    clean_wall_s: float = 0.0
    faults_injected: int = 0
    retries: int = 0

    @property
    def ok(self) -> bool:
        """No wrong, lost or extra row and no unexpected exception (failed calls are allowed)."""
        return self.wrong_rows == 0 and self.lost_rows == 0 and self.extra_rows == 0 and not self.unexpected

    @property
    def frames_ratio(self) -> float:
        return self.frames_sent / self.clean_frames_sent if self.clean_frames_sent else float("nan")

    @property
    def time_ratio(self) -> float:
        return self.wall_s / self.clean_wall_s if self.clean_wall_s > 0 else float("nan")


@dataclass
class SweepReport:
    """A sweep's cells in the table's order, its settings and its duration. ``ok``: every cell's ``ok``."""

    config: dict[str, Any]
    cells: list[CellResult] = field(default_factory=list)
    wall_s: float = 0.0
    started: str = ""

    @property
    def ok(self) -> bool:
        return all(cell.ok for cell in self.cells)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready; each cell also carries its ratios and verdict (derived, ignored by :meth:`from_dict`)."""
        cells = [
            {**asdict(cell), "frames_ratio": cell.frames_ratio, "time_ratio": cell.time_ratio, "ok": cell.ok}
            for cell in self.cells
        ]
        return {**asdict(self), "cells": cells, "ok": self.ok}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepReport:
        """The report that :meth:`as_dict` (and its JSON) describes."""
        names = {f.name for f in fields(CellResult)}
        cells = [CellResult(**{k: v for k, v in cell.items() if k in names}) for cell in data["cells"]]
        return cls(config=dict(data["config"]), cells=cells, wall_s=data["wall_s"], started=data["started"])


@dataclass
class _Run:
    """One call on one device: its result or error, and what it cost."""

    result: np.ndarray | None
    error: BaseException | None
    frames_sent: int
    wall_s: float
    faults_injected: int
    retries: int
    requests_failed: int


def make_inputs(operation: str, batch: int, seed: int, n_features: int) -> np.ndarray:
    """The vectors of a run: binary uint8 for transform, ternary float32 (none all-zero) for linear_transform.

    The same for every kind and rate of a seed, so the clean result is theirs too.
    """
    rng = np.random.default_rng([seed, batch, n_features, OPERATIONS.index(operation), _SEED_SALT])
    if operation == "transform":
        return rng.integers(0, 2, size=(batch, n_features), dtype=np.uint8)
    E = rng.integers(-1, 2, size=(batch, n_features), dtype=np.int8).astype(np.float32)
    E[np.abs(E).sum(axis=1) == 0, 0] = 1.0  # an all-zero vector gives zeros without using the device
    return E


def _call(opu: Any, operation: str, inputs: np.ndarray, n_components: int) -> np.ndarray:
    if operation == "transform":
        return opu.transform(inputs, n_components)
    return opu.linear_transform(inputs, n_components)


def _run(config: SweepConfig, operation: str, inputs: np.ndarray, seed: int, plan: str) -> _Run:
    """Open a fresh device of ``seed``, install ``plan`` and make one call, timed and counted.

    The plan is installed after the open, so its faults hit the call under test only (how ``open`` rides out
    faults is tested in tests/opu/test_faults_more.py), and its draws start afresh from the seed.
    """
    with open_exact(emulator_url(config.url_query, seed), **config.settings) as opu:
        if plan:
            opu.emulator.set_faults(plan)
        before = opu.counters
        result: np.ndarray | None = None
        error: BaseException | None = None
        gc.collect()  # the previous runs' devices and buffers go now: memory stays bounded, no collection is timed
        started = time.perf_counter()
        try:
            result = _call(opu, operation, inputs, config.n_components)
        except Exception as exc:  # typed or not: the cell records it, the sweep goes on
            error = exc
        wall_s = time.perf_counter() - started
        after = opu.counters
        injected = sum(opu.emulator.fault_counts["injected"].values())
    return _Run(
        result=result,
        error=error,
        frames_sent=after.frames_sent - before.frames_sent,
        wall_s=wall_s,
        faults_injected=injected,
        retries=after.retries - before.retries,
        requests_failed=after.requests_failed - before.requests_failed,
    )


def _record(cell: CellResult, run: _Run, clean: _Run) -> None:
    """Add one faulty run to its cell: its costs, its error, or its rows checked against the clean run's (the
    clean time is added by the caller, once all clean calls of the seed are timed)."""
    assert clean.result is not None
    cell.calls += 1
    cell.frames_sent += run.frames_sent
    cell.clean_frames_sent += clean.frames_sent
    cell.wall_s += run.wall_s
    cell.faults_injected += run.faults_injected
    cell.retries += run.retries
    error = run.error
    if isinstance(error, OpuError):
        cell.failed_calls += 1
        cell.failed_without_retries += int(run.requests_failed == 0)
        cell.errors[type(error).__name__] = cell.errors.get(type(error).__name__, 0) + 1
    elif error is not None:
        name = type(error).__name__
        cell.unexpected[name] = cell.unexpected.get(name, 0) + 1
        if cell.first_unexpected is None:
            cell.first_unexpected = f"{name}: {error}"
        _log.error(
            "%s %s at %s, batch %d: unexpected %s: %s", cell.operation, cell.kind, cell.rate, cell.batch, name, error
        )
    else:
        assert run.result is not None
        reference = clean.result
        check = check_rows(np.asarray(run.result), np.arange(len(reference)), reference, reference_lookup(reference))
        cell.rows_checked += check.rows
        cell.wrong_rows += check.mismatched
        cell.misattributed_rows += check.misattributed
        cell.lost_rows += check.lost
        cell.extra_rows += check.extra
        if not check.ok:
            _log.error("%s %s at %s, batch %d: %s", cell.operation, cell.kind, cell.rate, cell.batch, check)


def _clean_run(config: SweepConfig, operation: str, inputs: np.ndarray, seed: int, reference: _Run | None) -> _Run:
    """A fault-free call of (operation, inputs, seed) on a fresh device; checked bit for bit against
    ``reference`` (the first clean call) when given.

    Raises:
        OpuError: the clean call failed.
        RuntimeError: it differs from the reference: the emulator is not deterministic, and no row can be checked.
    """
    run = _run(config, operation, inputs, seed, "")
    if run.error is not None:
        raise run.error
    assert run.result is not None
    if reference is not None:
        assert reference.result is not None
        if not check_rows(run.result, np.arange(len(inputs)), reference.result, lambda row: None).ok:
            raise RuntimeError(
                f"two fault-free {operation} calls of {len(inputs)} vectors with seed {seed} differ: the "
                f"emulator ({config.url_query}, noise=0) is not deterministic"
            )
        run.result = None  # only the reference's rows are kept
    return run


def _sweep_seed(
    config: SweepConfig, cells: dict[tuple[str, str, float, int], CellResult], key: tuple[str, int, int], bar: Any
) -> None:
    """Every kind and rate of one (operation, batch, seed): the clean reference first, then the faulty runs,
    a further clean call timed before each kind's runs (so the clean time, their median, is measured across the
    same stretch of time as the faulty calls, on a machine whose load varies), and at least
    ``config.clean_repeats`` clean calls in all."""
    operation, batch, seed = key
    inputs = make_inputs(operation, batch, seed, config.n_features)
    reference = _clean_run(config, operation, inputs, seed, None)
    clean_times = [reference.wall_s]
    for _ in range(config.clean_repeats - len(config.kinds)):
        clean_times.append(_clean_run(config, operation, inputs, seed, reference).wall_s)
    for index, kind in enumerate(config.kinds):
        if index:
            clean_times.append(_clean_run(config, operation, inputs, seed, reference).wall_s)
        for rate in config.rates:
            run = _run(config, operation, inputs, seed, config.plan(kind, rate))
            _record(cells[operation, kind, rate, batch], run, reference)
            if bar is not None:
                bar.update()
    clean_s = statistics.median(clean_times)
    for kind in config.kinds:
        for rate in config.rates:
            cells[operation, kind, rate, batch].clean_wall_s += clean_s
    if bar is not None:
        bar.update(len(clean_times))


def _warm_up(config: SweepConfig) -> None:
    """One small call per operation, untimed: the first call of a process pays for imports and caches, which
    would otherwise inflate the first clean time."""
    for operation in config.operations:
        _run(config, operation, make_inputs(operation, 8, config.first_seed, config.n_features), config.first_seed, "")


def run_sweep(config: SweepConfig, progress: bool = False) -> SweepReport:
    """Run every cell of ``config`` for every seed and return the report (check ``ok``).

    Raises:
        OpuError, RuntimeError: only when a clean run fails or two clean runs differ (no reference).
    """
    report = SweepReport(config=config.as_dict(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    cells = {(c.operation, c.kind, c.rate, c.batch): c for c in (CellResult(*key) for key in config.cells())}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.runs(), desc="faults", unit="run", mininterval=0.5)
    started = time.perf_counter()
    try:
        _warm_up(config)
        for operation in config.operations:
            for batch in config.batches:
                for seed in config.seed_values():
                    if bar is not None:
                        bar.set_description(f"{operation} {batch}")
                    _sweep_seed(config, cells, (operation, batch, seed), bar)
    finally:
        if bar is not None:
            bar.close()
    report.cells = list(cells.values())
    report.wall_s = time.perf_counter() - started
    return report


_HEADER = (
    "operation",
    "faults",
    "rate",
    "batch",
    "failed calls",
    "wrong rows",
    "frames sent (x clean)",
    "wall time (x clean)",
    "faults injected",
)


def _failed_text(cell: CellResult) -> str:
    text = f"{cell.failed_calls}/{cell.calls}"
    if cell.errors:
        text += " (" + ", ".join(f"{name} {count}" for name, count in sorted(cell.errors.items())) + ")"
    if cell.unexpected:
        text += "; UNEXPECTED " + ", ".join(f"{name} {count}" for name, count in sorted(cell.unexpected.items()))
    return text


def _wrong_text(cell: CellResult) -> str:
    text = f"{cell.wrong_rows:,}"
    extra = [f"{name} {count:,}" for name, count in (("lost", cell.lost_rows), ("extra", cell.extra_rows)) if count]
    return text + (f" ({', '.join(extra)})" if extra else "")


def cell_row(cell: CellResult) -> list[str]:
    """One cell as the table's columns."""
    return [
        cell.operation,
        cell.kind,
        format_rate(cell.rate),
        f"{cell.batch:,}",
        _failed_text(cell),
        _wrong_text(cell),
        f"{cell.frames_ratio:.2f}",
        f"{cell.time_ratio:.2f}",
        f"{cell.faults_injected:,}",
    ]


def format_table(report: SweepReport) -> str:
    """The sweep as a Markdown table, one line per cell (as docs/reliability.md shows it)."""
    lines = ["| " + " | ".join(_HEADER) + " |", "|" + " --- |" * len(_HEADER)]
    lines += ["| " + " | ".join(cell_row(cell)) + " |" for cell in report.cells]
    return "\n".join(lines)


def format_summary(report: SweepReport) -> str:
    """One line: cells, calls, failed calls, wrong rows, duration and the verdict."""
    calls = sum(c.calls for c in report.cells)
    failed = sum(c.failed_calls for c in report.cells)
    wrong = sum(c.wrong_rows + c.lost_rows + c.extra_rows for c in report.cells)
    unexpected = sum(sum(c.unexpected.values()) for c in report.cells)
    verdict = "OK: every returned row equals the fault-free result" if report.ok else "FAILED"
    return (
        f"{len(report.cells)} cells, {calls:,} faulty calls, {failed:,} failed, {wrong:,} wrong/lost/extra rows, "
        f"{unexpected} unexpected errors; {report.wall_s:.0f} s; {verdict}"
    )
