"""The soak run (``opu soak``): push many frames through an emulated device with faults on, and prove that
every request got exactly its own answer.

DESIGN.md section 8 promises that a request returns its own result or a typed error, never a result computed from
another request's frames. The fault matrix (tests/opu/test_faults.py) proves it for each fault on a few requests; the
soak proves it at volume (a million frames by default) with every fault mixed in at a low rate, the regime of a
training run of days.

How a wrong attribution is caught: with ``noise=0`` the emulator is deterministic, so a vector's result is a pure
function of the vector. A pool of ``pool_size`` distinct input vectors is measured once on a fault-free device of
the same seed (the *reference rows*; a vector whose row equals another's is dropped from the pool, so any two pool
vectors are told apart by their results). The soak device, same seed with faults on, then gets batches of pool
vectors drawn at random without replacement (through ``transform`` and through ``linear_transform`` with both
schemes), and every returned row is compared with its own reference row bit for bit. A row computed from another
request's frame equals another reference row (counted as *misattributed*), a frame used twice shows up as a row
repeated within one result (*duplicated*; pool indices are distinct within a batch), a frame decoded from a corrupt
packet is simply wrong (*mismatched*), and a result with fewer rows than asked for has *lost* rows. Typed errors
are allowed only when the driver's retries were spent (``opu.counters.requests_failed`` grew during that call);
they are counted by type, and any other exception is a failure of the run.

Only ternary vectors go through ``linear_transform``: a real-valued batch's bit planes are scaled on the whole
batch, so its rows depend on their batch-mates, while a ternary row depends on its own frames only
(``LinearMode.project_ternary``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from opu_driver.errors import ConfigurationError, OpuError
from opu_driver.validation import Validated, setting

from .exact import (
    DEFAULT_URL_QUERY,
    RowCheck,
    check_fault_plan,
    check_rows,
    check_url_query,
    emulator_url,
    open_exact,
    reference_lookup,
)

__all__ = [
    "DEFAULT_FAULTS",
    "DEFAULT_URL_QUERY",
    "OPERATIONS",
    "STUCK_REQUESTS",
    "RowCheck",
    "SoakConfig",
    "SoakReport",
    "check_rows",
    "format_report",
    "run_soak",
]

_log = logging.getLogger(__name__)

DEFAULT_FAULTS = "timeout:0.005,crc:0.001,drop:0.001,dup:0.001,reorder:0.001,truncate:0.001,stall:0.005,reset:0.005"
"""Every fault that can lose, spoil, repeat or reorder a frame, at a low rate per event of its sort. The frame
faults are drawn once per camera frame; timeout and reset once per sequence (one bulk read, one start per 64
frames here) and stall once per bulk transfer (two per sequence), so their rates are higher for a similar count:
over a million frames, about 1,000 of each frame fault, 90 timeouts and resets and 180 stalls."""
OPERATIONS = ("transform", "linear_four_frame", "linear_two_frame")
"""What a soak batch goes through: ``Opu.transform``, ``Opu.linear_transform`` with each scheme."""
STUCK_REQUESTS = 20
"""A soak stops when this many requests in a row raised and sent no frame: the device no longer recovers."""


@dataclass(frozen=True)
class SoakConfig(Validated):
    """What one soak run does.

    Attributes:
        frames: stop once the soak device has been sent at least this many DMD frames (``opu.counters.frames_sent``,
            resent frames included).
        faults: the emulator's fault plan (docs/emulator.md, "Faults"); "" runs without faults.
        url_query: emulator options (geometry, lag, ...) without seed, noise and faults, which the soak sets.
        seed: the emulator's seed (its medium and its fault draws) and the seed of the pool and the batches.
        pool_size: distinct input vectors per operation; at least ``max_batch`` (batches draw without
            replacement).
        n_features: features per vector.
        n_components: outputs per vector.
        max_batch: a batch holds 1 to max_batch vectors.
        chunk_frames: frames per device sequence; short sequences give the per-sequence faults (reset) and
            per-transfer faults (stall) many chances to fire.
        retries: the driver's ``OpuSettings.retries``.
        timeout_s: the driver's ``OpuSettings.timeout_s``.
    """

    frames: int = setting(1_000_000, kind="int", low=1)
    faults: str = setting(DEFAULT_FAULTS)
    url_query: str = setting(DEFAULT_URL_QUERY)
    seed: int = setting(0, kind="int", low=0)
    pool_size: int = setting(1024, kind="int", low=1)
    n_features: int = setting(32, kind="int", low=1)
    n_components: int = setting(64, kind="int", low=1)
    max_batch: int = setting(256, kind="int", low=1)
    chunk_frames: int = setting(64, kind="int", low=1)
    retries: int = setting(2, kind="int", low=0)
    timeout_s: float = setting(2.0, kind="number", low=0, low_open=True)

    def _check(self) -> None:
        if self.pool_size < self.max_batch:
            raise ConfigurationError(
                f"pool_size={self.pool_size} must be at least max_batch={self.max_batch} "
                "(a batch draws distinct pool vectors)"
            )
        check_fault_plan(self.faults)
        check_url_query(self.url_query, hint="use --seed and --faults")

    def url(self, faults: bool = True) -> str:
        """The emulator URL: the query, the seed, noise off and (for the soak device) the fault plan."""
        return emulator_url(self.url_query, self.seed, self.faults if faults else "")


@dataclass
class SoakReport:
    """What a soak run saw. ``ok`` is the verdict: no wrong, lost or extra row and no unexplained error.

    ``frames_sent`` counts every DMD frame sent to the soak device (resent frames included),
    ``frames_requested`` the frames the requests themselves needed (one per transform vector, 4 or 2 per
    linear vector). ``typed_errors`` are the requests that raised a typed error after the driver spent its
    retries (allowed, reported); ``unexpected_errors`` raised without a failed recovery behind them (the
    first one's message is kept in ``first_unexpected``). ``stuck_at_request`` is set when the run stopped
    early because :data:`STUCK_REQUESTS` requests in a row failed without sending a frame.
    """

    config: dict[str, Any]
    url: str
    pool_vectors: int = 0
    requests: int = 0
    requests_by_operation: dict[str, int] = field(default_factory=dict)
    rows_checked: int = 0
    rows_matched: int = 0
    mismatched_rows: int = 0
    misattributed_rows: int = 0
    duplicated_rows: int = 0
    lost_rows: int = 0
    extra_rows: int = 0
    rows_in_failed_requests: int = 0
    typed_errors: dict[str, int] = field(default_factory=dict)
    unexpected_errors: dict[str, int] = field(default_factory=dict)
    first_unexpected: str | None = None
    stuck_at_request: int | None = None
    frames_sent: int = 0
    frames_requested: int = 0
    wall_s: float = 0.0
    frames_per_s: float = 0.0
    slowest_request_s: float = 0.0
    counters: dict[str, int] = field(default_factory=dict)
    faults_injected: dict[str, int] = field(default_factory=dict)
    fault_events: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return (
            self.mismatched_rows == 0
            and self.lost_rows == 0
            and self.extra_rows == 0
            and not self.unexpected_errors
            and self.stuck_at_request is None
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def _draw_pool(config: SoakConfig) -> tuple[np.ndarray, np.ndarray]:
    """Distinct binary vectors (transform) and distinct ternary vectors (linear), none all-zero."""
    rng = np.random.default_rng([config.seed, 0x50AC])
    k, n = config.pool_size, config.n_features
    if 2**n - 1 < k:
        raise ConfigurationError(f"{k} distinct nonzero binary vectors do not exist with {n} features")
    pools = []
    for values in ((0, 2), (-1, 2)):
        vectors = np.empty((0, n), dtype=np.int64)
        while len(vectors) < k:  # draw, drop all-zero and repeated vectors, top up
            more = rng.integers(*values, size=(k, n))
            more = more[np.abs(more).sum(axis=1) > 0]
            stacked = np.concatenate([vectors, more])
            _, first = np.unique(stacked, axis=0, return_index=True)
            vectors = stacked[np.sort(first)][:k]
        pools.append(vectors)
    return pools[0].astype(np.uint8), pools[1].astype(np.float32)


def _operate(opu: Any, operation: str, X: np.ndarray, E: np.ndarray, n_components: int) -> np.ndarray:
    if operation == "transform":
        return opu.transform(X, n_components)
    scheme = "four_frame" if operation == "linear_four_frame" else "two_frame"
    return opu.linear_transform(E, n_components, scheme=scheme)


def _frames_per_vector(operation: str) -> int:
    return {"transform": 1, "linear_four_frame": 4, "linear_two_frame": 2}[operation]


def _open(url: str, config: SoakConfig) -> Any:
    return open_exact(url, chunk_frames=config.chunk_frames, retries=config.retries, timeout_s=config.timeout_s)


def measure_reference(config: SoakConfig) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """The pool (X, E) and its reference rows per operation, measured on a fault-free device of the same seed.

    Distinct vectors can give the same row (camera values are quantised, neighbouring pixels share a speckle
    grain): such vectors could not be told apart, so every vector whose row repeats in any operation is dropped
    from the pool, and the reference rows left are pairwise distinct.

    Raises:
        ConfigurationError: fewer than ``max_batch`` vectors are left; use more features or outputs.
    """
    X, E = _draw_pool(config)
    with _open(config.url(faults=False), config) as opu:
        reference = {op: _operate(opu, op, X, E, config.n_components) for op in OPERATIONS}
    keep = np.ones(len(X), dtype=bool)
    for rows in reference.values():
        _, inverse, counts = np.unique(
            rows.view(np.uint8).reshape(len(rows), -1), axis=0, return_inverse=True, return_counts=True
        )
        keep &= counts[inverse.ravel()] == 1
    if keep.sum() < config.max_batch:
        raise ConfigurationError(
            f"only {int(keep.sum())} of {len(X)} pool vectors give rows distinct from every "
            f"other's, fewer than max_batch={config.max_batch}; use more features or outputs"
        )
    if not keep.all():
        _log.info("%d pool vectors dropped: their rows equal another vector's", int((~keep).sum()))
    return X[keep], E[keep], {op: rows[keep] for op, rows in reference.items()}


def run_soak(config: SoakConfig, progress: bool = False) -> SoakReport:
    """Run the soak: reference rows on a fault-free device, then batches on the faulty one until
    ``config.frames`` frames were sent. Returns the report (check ``ok``); raises only for bad settings or a
    device that cannot be opened.
    """
    X, E, reference = measure_reference(config)
    lookups = {op: reference_lookup(rows) for op, rows in reference.items()}  # each built on a first wrong row

    url = config.url(faults=True)
    report = SoakReport(config=asdict(config), url=url, pool_vectors=len(X))
    by_op: Counter[str] = Counter()
    typed: Counter[str] = Counter()
    unexpected: Counter[str] = Counter()
    rng = np.random.default_rng([config.seed, 0x5E0])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.frames, desc="soak", unit="frame", unit_scale=True, mininterval=0.5)
    started = time.perf_counter()
    try:
        with _open(url, config) as opu:
            shown = 0
            failing = 0  # requests in a row that raised without sending a frame
            while opu.counters.frames_sent < config.frames:
                operation = OPERATIONS[int(rng.integers(len(OPERATIONS)))]
                batch = int(rng.integers(1, config.max_batch + 1))
                indices = rng.choice(len(X), size=batch, replace=False)
                failed_before = opu.counters.requests_failed
                sent_before = opu.counters.frames_sent
                call_started = time.perf_counter()
                report.requests += 1
                by_op[operation] += 1
                try:
                    result = _operate(opu, operation, X[indices], E[indices], config.n_components)
                except OpuError as exc:
                    name = type(exc).__name__
                    if opu.counters.requests_failed > failed_before:
                        typed[name] += 1  # the retries were spent: the contract's typed error
                        _log.info(
                            "request %d (%s, %d vectors) failed after its retries: %s: %s",
                            report.requests,
                            operation,
                            batch,
                            name,
                            exc,
                        )
                    else:
                        unexpected[name] += 1
                        if report.first_unexpected is None:
                            report.first_unexpected = (
                                f"request {report.requests} ({operation}, {batch} vectors): {name}: {exc}"
                            )
                        _log.error(
                            "request %d (%s, %d vectors) raised %s without a failed recovery: %s",
                            report.requests,
                            operation,
                            batch,
                            name,
                            exc,
                        )
                    report.rows_in_failed_requests += batch
                    failing = failing + 1 if opu.counters.frames_sent == sent_before else 0
                    if failing >= STUCK_REQUESTS:
                        report.stuck_at_request = report.requests
                        _log.error(
                            "%d requests in a row failed without sending a frame: the device no longer "
                            "recovers; stopping the soak",
                            failing,
                        )
                        break
                else:
                    failing = 0
                    check = check_rows(np.asarray(result), indices, reference[operation], lookups[operation])
                    report.rows_checked += check.rows
                    report.rows_matched += check.matched
                    report.mismatched_rows += check.mismatched
                    report.misattributed_rows += check.misattributed
                    report.duplicated_rows += check.duplicated
                    report.lost_rows += check.lost
                    report.extra_rows += check.extra
                    report.frames_requested += batch * _frames_per_vector(operation)
                    if not check.ok:
                        _log.error("request %d (%s, %d vectors): %s", report.requests, operation, batch, check)
                report.slowest_request_s = max(report.slowest_request_s, time.perf_counter() - call_started)
                if bar is not None:
                    bar.update(min(opu.counters.frames_sent, config.frames) - shown)
                    shown = min(opu.counters.frames_sent, config.frames)
                    bar.set_postfix(
                        mismatches=report.mismatched_rows,
                        errors=sum(typed.values()),
                        retries=opu.counters.retries,
                        refresh=False,
                    )
            report.wall_s = time.perf_counter() - started
            report.frames_sent = opu.counters.frames_sent
            report.counters = asdict(opu.counters)
            fault_counts = opu.emulator.fault_counts
            report.faults_injected = {k: v for k, v in fault_counts["injected"].items() if v}
            report.fault_events = dict(fault_counts.get("events", {}))
    finally:
        if bar is not None:
            bar.close()
    report.requests_by_operation = dict(by_op)
    report.typed_errors = dict(typed)
    report.unexpected_errors = dict(unexpected)
    report.frames_per_s = report.frames_sent / report.wall_s if report.wall_s > 0 else 0.0
    return report


def format_report(report: SoakReport) -> str:
    """A summary table of a soak run."""
    c = report.counters
    errors = ", ".join(f"{k} {v}" for k, v in sorted(report.typed_errors.items())) or "none"
    unexpected = ", ".join(f"{k} {v}" for k, v in sorted(report.unexpected_errors.items())) or "none"
    injected = ", ".join(f"{k} {v:,}" for k, v in sorted(report.faults_injected.items())) or "none"
    ops = ", ".join(f"{k} {v:,}" for k, v in sorted(report.requests_by_operation.items()))
    rows = [
        ("device", report.url),
        (
            "frames sent",
            f"{report.frames_sent:,} ({report.frames_requested:,} asked by requests that returned, "
            f"{c.get('frames_resent', 0):,} resent)",
        ),
        (
            "wall time",
            f"{report.wall_s:.1f} s ({report.frames_per_s:,.0f} frames/s; slowest request "
            f"{report.slowest_request_s:.2f} s)",
        ),
        ("requests", f"{report.requests:,} ({ops})"),
        (
            "rows checked",
            f"{report.rows_checked:,} bit for bit against their reference rows (pool of "
            f"{report.pool_vectors:,} vectors with distinct rows)",
        ),
        (
            "mismatched rows",
            f"{report.mismatched_rows:,} (misattributed {report.misattributed_rows:,}, "
            f"duplicated {report.duplicated_rows:,})",
        ),
        ("lost / extra rows", f"{report.lost_rows:,} / {report.extra_rows:,}"),
        ("typed errors (retries spent)", f"{errors} ({report.rows_in_failed_requests:,} rows not returned)"),
        ("unexpected errors", unexpected + (f"; first: {report.first_unexpected}" if report.first_unexpected else "")),
        (
            "stopped early",
            "no"
            if report.stuck_at_request is None
            else f"at request {report.stuck_at_request:,}: {STUCK_REQUESTS} requests in a row failed without sending a "
            "frame (the device no longer recovers)",
        ),
        ("faults injected", injected),
        (
            "retries",
            f"{c.get('retries', 0):,} (requests recovered {c.get('requests_recovered', 0):,}, "
            f"failed {c.get('requests_failed', 0):,}; frames recovered {c.get('frames_recovered', 0):,})",
        ),
        (
            "faults seen by the driver",
            f"timeouts {c.get('timeouts', 0):,}, stalls {c.get('stalls', 0):,}, "
            f"corrupt packets {c.get('corrupt_packets', 0):,}, resets "
            f"{c.get('resets_detected', 0):,}, duplicate frames "
            f"{c.get('duplicate_frames', 0):,}, reordered frames "
            f"{c.get('reordered_frames', 0):,}",
        ),
        ("verdict", "OK: every returned row is its own request's" if report.ok else "FAILED"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
