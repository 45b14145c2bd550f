"""Drawing pieces several panels share: per-output maps in camera coordinates, colour bars, y = x scatters.

They draw on the axes they are given (matplotlib's object API), in the colours of :mod:`.style`.
"""

from __future__ import annotations

import numpy as np

from .data import as_map, finite
from .style import DATA, GUIDE, MAP

__all__ = ["colour_limits", "draw_map", "colour_bar", "positions", "identity_line", "scatter"]


def colour_limits(values: np.ndarray, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Robust colour limits: percentiles of the finite values, so a few hot pixels do not wash the map out."""
    finite_values = values[np.isfinite(values)]
    if finite_values.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(finite_values, [low, high]))
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return vmin, vmax


def draw_map(
    fig, ax, values: np.ndarray, geometry: tuple[int, int, int], label: str, limits: tuple[float, float] | None = None
):
    """Draw a per-output vector as an image in camera coordinates with a colour bar; returns the image."""
    x0, y0, width = geometry
    image = as_map(values, width)
    rows = image.shape[0]
    vmin, vmax = limits if limits is not None else colour_limits(image)
    extent = (x0 - 0.5, x0 + width - 0.5, y0 + rows - 0.5, y0 - 0.5)
    ratio = max(width / rows, rows / width)
    im = ax.imshow(
        image,
        cmap=MAP,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        extent=extent,
        aspect="equal" if ratio <= 3 else "auto",
    )
    shown = image[np.isfinite(image)]
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(shown.size and shown.min() < vmin), bool(shown.size and shown.max() > vmax))
    ]
    colour_bar(fig, ax, im, label, extend)
    ax.set_xlabel("camera x (px)")
    ax.set_ylabel("camera y (px)")
    ax.grid(False)
    return im


def colour_bar(fig, ax, im, label: str, extend: str = "neither") -> None:
    """A colour bar hugging the image (an inset of the axes, so it follows the box that the aspect leaves)."""
    cax = ax.inset_axes([1.04, 0.0, 0.05, 1.0])
    fig.colorbar(im, cax=cax, label=label, extend=extend)


def positions(indices: np.ndarray, geometry: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Camera (x, y) of output indices."""
    x0, y0, width = geometry
    return x0 + indices % width, y0 + indices // width


def identity_line(ax, x: np.ndarray, y: np.ndarray) -> None:
    """Same limits on both axes and the y = x line across them."""
    low = float(min(x.min(), y.min()))
    high = float(max(x.max(), y.max()))
    pad = 0.04 * (high - low or 1.0)
    low, high = low - pad, high + pad
    ax.plot([low, high], [low, high], color=GUIDE, linestyle="--", linewidth=1.0, label="y = x")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal", adjustable="box")


def scatter(
    ax, predicted: np.ndarray, measured: np.ndarray, correlation: float | None, relative_error: float | None
) -> None:
    """Measured against predicted values over the y = x line, the correlation and error in the legend."""
    x, y = finite(predicted, measured)
    if correlation is None and x.size > 1 and x.std() > 0 and y.std() > 0:
        correlation = float(np.corrcoef(x, y)[0, 1])
    alpha = float(np.clip(600 / max(x.size, 1), 0.08, 0.7))
    label = f"{x.size:,} outputs"
    if correlation is not None:
        label += f", r = {correlation:.4f}"
    if relative_error is not None:
        label += f"\nrelative error {100 * relative_error:.2g}%"
    ax.scatter(x, y, s=4, color=DATA, alpha=alpha, linewidths=0, rasterized=True, label=label)
    if x.size:
        identity_line(ax, x, y)
    legend = ax.legend(loc="upper left", markerscale=3)
    for handle in legend.legend_handles if hasattr(legend, "legend_handles") else legend.legendHandles:
        handle.set_alpha(1.0)
