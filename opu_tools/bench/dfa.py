"""``opu bench --only dfa``: projections per second for DFA, direct and through the client and the service.

Side by side in one run, ternary error batches of ``BATCH`` vectors, ``repeats`` rounds in each of which every
case runs once in turn (the ratios are per round, then their median: the shared machine's speed drifts):

- direct: ``Opu.linear_transform`` in this process;
- in-process client: ``dfa_client.connect("sim://...")`` (the same Opu behind the projector contract);
- service over loopback: ``opu serve`` on the same emulator (in a thread of this process) and 1, 4 and 8 client
  processes, each sending ``requests`` requests; the aggregate is all their vectors over the wall time from a
  common start to the last answer.

The service's overhead (one client) is measured in pairs: one client process stays connected for the whole run
and sends a burst of ``requests`` requests, then this process runs the same burst directly, alternately,
``PAIRS_PER_ROUND`` times a round. Each pair's two bursts are a fraction of a second apart, so the machine's
drifting speed (the emulator's call time moves between about 8 and 13 ms on a shared 2-core machine) cancels in
the pair's ratio, which a comparison seconds apart does not.

Sizes: 1,000 -> 4,096 (the reference size) and 10 -> 1,024 (the published MNIST size class). The emulator runs at the
reference geometry with the default noise and a 200 us exposure (what the exposure calibration picks for
these linear-mode frames, so no output saturates).
"""

from __future__ import annotations

import functools
import multiprocessing
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .timing import REFERENCE_QUERY, BenchResult, median_time_s

__all__ = ["bench_dfa", "BATCH"]

BATCH = 32  # vectors per request: a DFA mini-batch
SIZES = ((1000, 4096), (10, 1024))
CLIENT_COUNTS = (1, 4, 8)
PAIRS_PER_ROUND = 4


def _errors(n_features: int, batch: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).choice([-1, 0, 1], size=(batch, n_features), p=[0.25, 0.5, 0.25]).astype(np.int8)


def _burst(call: Callable[[], object], times: int) -> Callable[[], list[object]]:
    """A function that makes ``times`` calls of ``call``: one timed burst of requests."""
    return lambda: [call() for _ in range(times)]


def _client_process(
    url: str, n_features: int, n_components: int, requests: int, seed: int, ready: Any, go: Any, done: Any
) -> None:
    import dfa_client

    E = _errors(n_features, BATCH, seed)
    with dfa_client.connect(url, n_components, n_features=n_features) as projector:
        projector.project(E[:1])  # connected and warmed up before the common start
        ready.put(seed)
        if not go.wait(timeout=300):
            return
        for _ in range(requests):
            projector.project(E)
    done.put(requests * BATCH)


def _burst_client(
    url: str, n_features: int, n_components: int, requests: int, seed: int, commands: Any, answers: Any
) -> None:
    """A client that stays connected and times one burst of ``requests`` requests per command."""
    import dfa_client

    E = _errors(n_features, BATCH, seed)
    with dfa_client.connect(url, n_components, n_features=n_features) as projector:
        projector.project(E)  # connected and warmed up
        answers.put(0.0)
        while commands.get(timeout=600) == "burst":
            start = time.perf_counter()
            for _ in range(requests):
                projector.project(E)
            answers.put(time.perf_counter() - start)


def _paired_overhead(
    url: str, direct_burst: Callable[[], object], n_features: int, n_components: int, requests: int, pairs: int
) -> tuple[list[float], list[float]]:
    """(service, direct) vectors/s of ``pairs`` bursts, each service burst followed at once by a direct one."""
    context = multiprocessing.get_context("spawn")
    commands, answers = context.Queue(), context.Queue()
    worker = context.Process(target=_burst_client, args=(url, n_features, n_components, requests, 1, commands, answers))
    worker.start()
    service, direct = [], []
    try:
        _collect(answers, [worker], 1, 120)
        for _ in range(pairs):
            commands.put("burst")
            service.append(requests * BATCH / _collect(answers, [worker], 1, 600)[0])
            start = time.perf_counter()
            direct_burst()
            direct.append(requests * BATCH / (time.perf_counter() - start))
    finally:
        commands.put("stop")
        worker.join(timeout=60)
        if worker.is_alive():
            worker.terminate()
    return service, direct


def _collect(queue: Any, workers: list, count: int, timeout_s: float) -> list:
    """``count`` items from ``queue``, failing fast (RuntimeError) when a worker process died."""
    import queue as queue_module

    items: list = []
    deadline = time.monotonic() + timeout_s
    while len(items) < count:
        try:
            items.append(queue.get(timeout=0.5))
        except queue_module.Empty:
            dead = [w for w in workers if w.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(
                    f"benchmark client processes failed (exit codes {[w.exitcode for w in workers]}) or timed out"
                ) from None
    return items


def _service_rate(url: str, n_features: int, n_components: int, n_clients: int, requests: int) -> float:
    """Aggregate vectors/s of ``n_clients`` client processes against the service at ``url``."""
    context = multiprocessing.get_context("spawn")
    ready, done, go = context.Queue(), context.Queue(), context.Event()
    workers = [
        context.Process(
            target=_client_process, args=(url, n_features, n_components, requests, 100 + i, ready, go, done)
        )
        for i in range(n_clients)
    ]
    for w in workers:
        w.start()
    try:
        _collect(ready, workers, n_clients, 120)
        t0 = time.perf_counter()
        go.set()
        total = sum(_collect(done, workers, n_clients, 600))
        elapsed = time.perf_counter() - t0
    finally:
        go.set()
        for w in workers:
            w.join(timeout=60)
            if w.is_alive():
                w.terminate()
    return total / elapsed


def bench_dfa(
    quick: bool,
    repeats: int,
    *,
    query: str = REFERENCE_QUERY,
    sizes: tuple[tuple[int, int], ...] = SIZES,
    client_counts: tuple[int, ...] = CLIENT_COUNTS,
) -> list[BenchResult]:
    """The DFA throughput table (see the module docstring); ``query``, ``sizes`` and ``client_counts`` shrink it
    for a smoke test."""
    import dfa_client
    import opu_driver
    from opu_driver.service import OpuService

    results: list[BenchResult] = []
    # an exposure that keeps the brightest linear-mode frames below full scale, as calibration would choose
    sim = f"sim://?seed=8&{query}&exposure_us=200"
    requests = 4 if quick else 16
    rounds = 1 if quick else repeats
    for n_features, n_components in sizes:
        label = f"{n_features} -> {n_components}"
        E = _errors(n_features, BATCH, 1)
        direct: list[float] = []
        local: list[float] = []
        paired_service: list[float] = []
        paired_direct: list[float] = []
        service_rates: dict[int, list[float]] = {n: [] for n in client_counts}
        # The three run in turn within each round, so that the machine's drifting speed (shared, noisy) hits
        # all of them alike; the ratios are taken per round, then their median.
        with (
            opu_driver.open(sim) as opu,
            dfa_client.connect(sim, n_components, n_features=n_features) as projector,
            OpuService(sim) as service,
        ):
            host, port = service.address
            url = f"tcp://{host}:{port}"
            opu.linear_transform(E, n_components)  # the reference calibrations, once
            projector.project(E)
            direct_burst = _burst(functools.partial(opu.linear_transform, E, n_components), requests)
            local_burst = _burst(functools.partial(projector.project, E), requests)
            for _ in range(rounds):
                direct.append(requests * BATCH / median_time_s(direct_burst, 1))
                local.append(requests * BATCH / median_time_s(local_burst, 1))
                for n_clients in client_counts:
                    service_rates[n_clients].append(_service_rate(url, n_features, n_components, n_clients, requests))
                # (not named ``service``: that is the OpuService the with statement serves)
                burst_service, burst_direct = _paired_overhead(
                    url, direct_burst, n_features, n_components, requests, 1 if quick else PAIRS_PER_ROUND
                )
                paired_service += burst_service
                paired_direct += burst_direct
        median = statistics.median
        one = service_rates[client_counts[0]]
        results.append(
            BenchResult(
                f"DFA projections {label}, direct Opu.linear_transform",
                median(direct),
                "vectors/s",
                f"batch {BATCH}, four-frame, emulator {query}",
            )
        )
        results.append(
            BenchResult(
                f"DFA projections {label}, in-process client",
                median(local),
                "vectors/s",
                f"{median([a / b for a, b in zip(local, direct, strict=True)]):.2f}x direct",
            )
        )
        for n_clients in client_counts:
            rates = service_rates[n_clients]
            if n_clients == client_counts[0]:
                overhead = median([1 - a / b for a, b in zip(paired_service, paired_direct, strict=True)])
                note = (
                    f"overhead {100 * overhead:+.0f}% vs direct, median of {len(paired_service)} paired bursts "
                    "(target <= 10%)"
                )
            else:
                note = f"{median([a / b for a, b in zip(rates, one, strict=True)]):.2f}x one client (target >= 1)"
            results.append(
                BenchResult(
                    f"DFA projections {label}, service, {n_clients} client process{'es' if n_clients > 1 else ''}",
                    median(rates),
                    "vectors/s",
                    note,
                )
            )
    return results
