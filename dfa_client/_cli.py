"""What the training examples' command lines (``dfa_client.train``, ``train_transformer``) share: argument types,
the loop over methods and seeds, the grouping of runs for the summary table, and the results file."""

from __future__ import annotations

import argparse
import json
import logging
import platform
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "int_list",
    "choice_list",
    "add_output_arguments",
    "configure_logging",
    "run_grid",
    "group_runs",
    "write_results",
]

R = TypeVar("R")
K = TypeVar("K", bound=Hashable)


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 0 (``--seeds 0,1,2``)."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers >= 0")
    return values


def choice_list(allowed: Sequence[str], what: str = "method") -> Callable[[str], list[str]]:
    """An argument type for a comma-separated, non-empty list of names from ``allowed``."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in allowed]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {what}(s) {unknown}; choose from {','.join(allowed)}")
        return names

    return parse


def run_grid(
    methods: Sequence[str],
    seeds: Sequence[int],
    run_one: Callable[[str, int], R],
    progress: Callable[[R], object] | None = None,
) -> list[R]:
    """``run_one(method, seed)`` for every method and every seed, in that order, each result passed to
    ``progress`` as it comes."""
    results = []
    for method in methods:
        for seed in seeds:
            result = run_one(method, seed)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def group_runs(results: Sequence[R], key: Callable[[R], K]) -> dict[K, list[R]]:
    """The runs by ``key`` (one summary row each), in the order the keys first appear."""
    groups: dict[K, list[R]] = {}
    for result in results:
        groups.setdefault(key(result), []).append(result)
    return groups


def write_results(
    path: Path,
    command: str,
    settings: Any,
    versions: dict[str, str],
    summary: Sequence[dict[str, Any]],
    results: Sequence[Any],
    default: Callable[[object], object] | None = None,
) -> None:
    """The results file: the command, its settings (a dataclass), the platform, the summary table and every run."""
    document = {
        "command": command,
        "settings": asdict(settings),
        "platform": {"python": platform.python_version(), **versions, "machine": platform.machine()},
        "table": list(summary),
        "runs": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(document, indent=2, default=default) + "\n")


def add_output_arguments(parser: argparse.ArgumentParser, verbose_help: str) -> None:
    """``--out`` (the results file), ``--plot`` (learning curves) and ``-v``."""
    parser.add_argument("--out", type=Path, default=None, help="write every run and the table as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write learning curves (PNG, needs matplotlib)")
    parser.add_argument("-v", "--verbose", action="store_true", help=verbose_help)


def configure_logging(verbose: bool) -> None:
    """INFO with ``-v``, else errors only."""
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
