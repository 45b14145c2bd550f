"""The report's look: one palette, the matplotlib settings of the page, and how numbers are written.

Data in blue, a second series in orange, what was chosen or what is wrong in red, references (y = x, full scale,
thresholds' context) in grey; maps in viridis. Every panel takes its colours from here so the page reads as one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType  # matplotlib is optional: only the report needs it

__all__ = ["DATA", "SECOND", "MARK", "GUIDE", "MAP", "SERIES", "RC_PARAMS", "fmt", "integer_formatter"]

DATA = "#1f5fa8"
SECOND = "#e07b18"
MARK = "#c62828"
GUIDE = "#6b6b6b"
MAP = "viridis"
SERIES = ("#1f5fa8", "#e07b18", "#2e8b57", "#8e44ad", "#b8860b", "#17a2b8")

RC_PARAMS: dict[RcKeyType, Any] = {
    "font.size": 9.5,
    "axes.titlesize": 10.5,
    "axes.titleweight": "bold",
    "axes.labelsize": 9.5,
    "xtick.labelsize": 8.5,
    "ytick.labelsize": 8.5,
    "legend.fontsize": 8,
    "legend.framealpha": 0.85,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "image.cmap": MAP,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}
"""matplotlib settings of the whole page (applied with ``rc_context`` while drawing only)."""


def fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without trailing noise."""
    return f"{value:.{digits}g}"


def integer_formatter() -> Any:
    """A tick formatter writing plain numbers (2, 4, 8 rather than 2^1, 2^2, 2^3 on a log axis)."""
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: f"{value:g}")
