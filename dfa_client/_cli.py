"""Argument types shared by the training examples' command lines (``dfa_client.train``, ``train_transformer``)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

__all__ = ["int_list", "choice_list"]


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
