"""A one-page picture of a calibration record, for a lab notebook (``opu calibrate ... --report report.png``).

:func:`render_report` draws one figure with a panel for each thing the record holds (see :func:`panels_for`):
the dark map and histogram, the exposure sweep, the DMD-to-camera lag, the speckle autocorrelation, the
linear-mode reference with its pixel mask, the estimated matrix against the optics, the fidelity of the
projection schemes and the drift since the baseline. A header says which device, firmware and settings the
record belongs to and when it was taken, so a printed page stands on its own.

matplotlib is an optional extra (``pip install "opu-driver[plot]"``): it is imported only when a report is drawn,
through its object API and the Agg canvas, so the caller's pyplot state and backend are left alone. The routines
that produce the arrays are in this package; the array names are those of the shared record spec
(``"<routine>/<name>"``, per-output vectors laid out row-major in rows of the routine's ``roi_width``).
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import secrets
import textwrap
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, LibraryLoadError
from .store import CalibrationRecord

__all__ = ["ReportUnavailableError", "PANELS", "panels_for", "figure_size_in", "render_report"]

_log = logging.getLogger(__name__)

#: Every panel the report knows, in drawing order, with the arrays it needs (all of them, non-empty).
PANELS: dict[str, tuple[str, ...]] = {
    "dark_map": ("dark/mean_dn",),
    "dark_histogram": ("dark/mean_dn",),
    "exposure_sweep": ("exposure/sweep_exposure_us", "exposure/sweep_top_dn"),
    "latency": ("latency/correlations",),
    "speckle_profile": ("roi/autocorrelation_lag_px", "roi/autocorrelation"),
    "speckle_map": ("roi/autocorrelation_2d",),
    "reference_map": ("reference/reference_dn",),
    "matrix_holdout": ("matrix/holdout_predicted", "matrix/holdout_measured"),
    "matrix_nonlinear": ("matrix/nonlinear_predicted", "matrix/nonlinear_measured"),
    "fidelity_repeatability": ("fidelity/frames_per_vector", "fidelity/repeatability"),
    "fidelity_snr": ("fidelity/frames_per_vector", "fidelity/snr_db"),
    "drift": ("drift/times_s", "drift/correlations"),
}

# Layout of the page, in inches: panels on a grid of at most _MAX_COLUMNS columns, under a header. Half inches
# keep the pixel size exact (figure inches x dpi) for even dpi.
_PANEL_W_IN = 4.5
_PANEL_H_IN = 3.5
_MAX_COLUMNS = 3
_HEADER_IN = 1.0
_FORMATS = ("png", "pdf", "svg")

# One palette for the whole page: data in blue, a second series in orange, what was chosen or what is wrong in
# red, references (y = x, full scale, thresholds' context) in grey; maps in viridis.
_DATA = "#1f5fa8"
_SECOND = "#e07b18"
_MARK = "#c62828"
_GUIDE = "#6b6b6b"
_MAP = "viridis"
_SERIES = ("#1f5fa8", "#e07b18", "#2e8b57", "#8e44ad", "#b8860b", "#17a2b8")

_STYLE = {
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
    "image.cmap": _MAP,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}


class ReportUnavailableError(LibraryLoadError):
    """The report needs matplotlib, the optional ``plot`` extra, which is not installed."""


# -- what to draw --------------------------------------------------------------------------------------------


def _array(record: CalibrationRecord, name: str) -> np.ndarray | None:
    """The record's array ``name`` as a numeric ndarray, or None when absent, empty, not numeric or all NaN."""
    value = record.arrays.get(name)
    if value is None:
        return None
    array = np.asarray(value)
    if array.size == 0 or array.dtype.kind not in "biuf":
        return None
    if array.dtype.kind == "f" and not np.isfinite(array).any():
        return None
    return array


def panels_for(record: CalibrationRecord) -> list[str]:
    """Names of the panels :func:`render_report` draws for ``record``, in order (keys of :data:`PANELS`).

    A panel is drawn when the record holds every array it needs, numeric with at least one finite value;
    routines the record lacks are skipped. The scalar results only annotate (a missing one leaves its mark out).
    """
    if not isinstance(record, CalibrationRecord):
        raise InvalidInputError(f"record must be a CalibrationRecord, got {type(record).__name__}")
    return [name for name, needs in PANELS.items() if all(_array(record, a) is not None for a in needs)]


def _grid(n_panels: int) -> tuple[int, int]:
    columns = 2 if n_panels in (2, 4) else min(_MAX_COLUMNS, n_panels)
    return -(-n_panels // columns), columns


def figure_size_in(n_panels: int) -> tuple[float, float]:
    """Width and height in inches of a report of ``n_panels`` panels (the PNG is that times the dpi)."""
    if isinstance(n_panels, bool) or not isinstance(n_panels, (int, np.integer)) or n_panels < 1:
        raise InvalidInputError(f"n_panels must be a positive integer, got {n_panels!r}")
    rows, columns = _grid(int(n_panels))
    # Never narrower than two panels: the header must fit on one page width.
    return max(columns, 2) * _PANEL_W_IN, rows * _PANEL_H_IN + _HEADER_IN


# -- small helpers -------------------------------------------------------------------------------------------


def _summary(record: CalibrationRecord, routine: str) -> Mapping[str, Any]:
    value = record.results.get(routine)
    return value if isinstance(value, Mapping) else {}


def _number(summary: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a summary, or None (absent, None, bool, text, NaN)."""
    value = summary.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float, digits: int = 3) -> str:
    """A number with ``digits`` significant digits, without trailing noise."""
    return f"{value:.{digits}g}"


def _roi_geometry(record: CalibrationRecord, routine: str, n: int) -> tuple[int, int, int]:
    """(x0, y0, width) in camera pixels of the region whose first ``n`` pixels are the routine's outputs.

    The routine's own roi_* keys come first; then those of another routine with as many outputs (same region);
    failing both, a square-ish grid from (0, 0), which is still a faithful picture of the vector.
    """
    candidates = [_summary(record, routine)] + [s for r, s in record.results.items() if r != routine
                                                 and isinstance(s, Mapping)]
    for summary in candidates:
        width, height = _number(summary, "roi_width"), _number(summary, "roi_height")
        if width is None or width < 1 or (summary is not candidates[0]
                                           and (height is None or not (width * height >= n > width * (height - 1)))):
            continue
        return int(_number(summary, "roi_x") or 0), int(_number(summary, "roi_y") or 0), int(width)
    return 0, 0, max(1, math.isqrt(n - 1) + 1)


def _as_map(values: np.ndarray, width: int) -> np.ndarray:
    """A per-output vector as rows of ``width`` (row-major, the last row padded with NaN)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    rows = -(-flat.size // width)
    padded = np.full(rows * width, np.nan)
    padded[:flat.size] = flat
    return padded.reshape(rows, width)


def _finite(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays (same length) flattened, restricted to the positions where all are finite."""
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in arrays]
    n = min(a.size for a in flat)
    flat = [a[:n] for a in flat]
    keep = np.logical_and.reduce([np.isfinite(a) for a in flat])
    return [a[keep] for a in flat]


def _colour_limits(values: np.ndarray, low: float = 1.0, high: float = 99.5) -> tuple[float, float]:
    """Robust colour limits: percentiles of the finite values, so a few hot pixels do not wash the map out."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    vmin, vmax = (float(v) for v in np.percentile(finite, [low, high]))
    if vmax <= vmin:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    return vmin, vmax


def _draw_map(fig, ax, values: np.ndarray, geometry: tuple[int, int, int], label: str,
              limits: tuple[float, float] | None = None):
    """Draw a per-output vector as an image in camera coordinates with a colour bar; returns the image."""
    x0, y0, width = geometry
    image = _as_map(values, width)
    rows = image.shape[0]
    vmin, vmax = limits if limits is not None else _colour_limits(image)
    extent = (x0 - 0.5, x0 + width - 0.5, y0 + rows - 0.5, y0 - 0.5)
    ratio = max(width / rows, rows / width)
    im = ax.imshow(image, cmap=_MAP, vmin=vmin, vmax=vmax, interpolation="nearest", extent=extent,
                   aspect="equal" if ratio <= 3 else "auto")
    finite = image[np.isfinite(image)]
    extend = {(False, False): "neither", (True, False): "min", (False, True): "max", (True, True): "both"}[
        (bool(finite.size and finite.min() < vmin), bool(finite.size and finite.max() > vmax))]
    _colour_bar(fig, ax, im, label, extend)
    ax.set_xlabel("camera x (px)")
    ax.set_ylabel("camera y (px)")
    ax.grid(False)
    return im


def _colour_bar(fig, ax, im, label: str, extend: str = "neither") -> None:
    """A colour bar hugging the image (an inset of the axes, so it follows the box that the aspect leaves)."""
    cax = ax.inset_axes([1.04, 0.0, 0.05, 1.0])
    fig.colorbar(im, cax=cax, label=label, extend=extend)


def _positions(indices: np.ndarray, geometry: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Camera (x, y) of output indices."""
    x0, y0, width = geometry
    return x0 + indices % width, y0 + indices // width


def _identity_line(ax, x: np.ndarray, y: np.ndarray) -> None:
    """Same limits on both axes and the y = x line across them."""
    low = float(min(x.min(), y.min()))
    high = float(max(x.max(), y.max()))
    pad = 0.04 * (high - low or 1.0)
    low, high = low - pad, high + pad
    ax.plot([low, high], [low, high], color=_GUIDE, linestyle="--", linewidth=1.0, label="y = x")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_aspect("equal", adjustable="box")


# -- the panels ----------------------------------------------------------------------------------------------


def _panel_dark_map(fig, ax, record: CalibrationRecord) -> None:
    mean = _array(record, "dark/mean_dn").ravel()
    summary = _summary(record, "dark")
    geometry = _roi_geometry(record, "dark", mean.size)
    _draw_map(fig, ax, mean, geometry, "dark level (DN)")
    hot = _array(record, "dark/hot_pixels")
    n_hot = 0
    if hot is not None and hot.size == mean.size:
        indices = np.flatnonzero(hot.ravel())
        n_hot = indices.size
        if n_hot:
            x, y = _positions(indices, geometry)
            ax.scatter(x, y, s=70, facecolors="none", edgecolors=_MARK, linewidths=1.6, label=f"hot pixel ({n_hot})")
            ax.legend(loc="upper right", handletextpad=0.2, borderpad=0.3)
    ax.set_title("Dark level per output" + (f", {n_hot} hot" if n_hot else ""))


def _bins(body: np.ndarray, low: float, high: float) -> np.ndarray:
    """Histogram edges over [low, high] with a width that resolves ``body`` (the outputs that are not hot).

    Freedman-Diaconis width, at most 200 bins; when the values are quantised (a mean of a few 8-bit frames takes
    multiples of 1/n_frames DN) the width is a whole number of steps and the edges fall between steps, so the
    histogram shows no comb.
    """
    q25, q75 = np.percentile(body, [25, 75])
    width = 2 * (q75 - q25) / body.size ** (1 / 3)
    if not width > 0:
        width = (high - low) / 40 if high > low else 1.0
    width = max(width, (high - low) / 200)
    levels = np.unique(body)
    if 1 < levels.size <= body.size // 4:
        step = float(np.diff(levels).min())
        if step > 0:
            width = step * max(1, round(width / step))
            low -= step / 2
    n = max(1, int(np.ceil((high - low) / width)))
    return low + width * np.arange(n + 1)


def _panel_dark_histogram(fig, ax, record: CalibrationRecord) -> None:
    from matplotlib.patches import Patch

    raw = _array(record, "dark/mean_dn").ravel().astype(np.float64)
    summary = _summary(record, "dark")
    hot = _array(record, "dark/hot_pixels")
    hot_mask = hot.ravel().astype(bool) if hot is not None and hot.size == raw.size else np.zeros(raw.size, bool)
    finite = np.isfinite(raw)
    values, hot_mask = raw[finite], hot_mask[finite]
    body = values[~hot_mask] if (~hot_mask).any() else values
    # The axis spans the ordinary outputs; hot pixels far beyond them go into an overflow bar at the right edge
    # (their levels are in the legend and on the map) rather than squeezing the distribution into one bin.
    low, high = float(body.min()), float(body.max())
    span = max(high - low, 1.0)
    hottest = float(values[hot_mask].max()) if hot_mask.any() else high
    overflow = hottest > high + 3 * span
    edges = _bins(body, low - 0.1 * span, high + 0.1 * span if overflow else max(high, hottest) + 0.05 * span)
    counts, _, _ = ax.hist(values[~hot_mask], bins=edges, color=_DATA, alpha=0.85)
    handles = [Patch(color=_DATA, alpha=0.85, label=f"outputs ({int((~hot_mask).sum()):,})")]
    if hot_mask.any():
        hot_values = values[hot_mask]
        shown = np.minimum(hot_values, edges[-1] - 1e-9 * span) if overflow else hot_values
        ax.hist(shown, bins=edges, color=_MARK, alpha=0.9)
        counts = np.maximum(counts, np.histogram(shown, bins=edges)[0])
        spread = (_fmt(hot_values.min()) + ("" if hot_values.size == 1 else f"–{_fmt(hot_values.max())}"))
        label = f"hot ({hot_values.size}): {spread} DN"
        handles.append(Patch(color=_MARK, label=label + (",\n  in the last bin" if overflow else "")))
    ax.set_yscale("log")
    # Headroom on the log axis: the bars fill the lower 60%, the legend and the notes the top.
    ax.set_ylim(0.7, 0.7 * (max(float(counts.max()), 1.0) / 0.7) ** (1 / 0.6))
    level = _number(summary, "level_dn")
    if level is not None:
        handles.append(ax.axvline(level, color=_GUIDE, linestyle="--", linewidth=1.0,
                                  label=f"median {_fmt(level)} DN"))
    notes = []
    for key, name in (("fixed_pattern_dn", "fixed pattern"), ("read_noise_dn", "read noise")):
        value = _number(summary, key)
        if value is not None:
            notes.append(f"{name} {_fmt(value)} DN")
    n_frames = _number(summary, "n_frames")
    if n_frames is not None:
        method = summary.get("method")
        notes.append(f"{int(n_frames)} frames" + (f", {method.replace('_', ' ')}" if isinstance(method, str) else ""))
    if notes:
        ax.text(0.03, 0.97, "\n".join(notes), transform=ax.transAxes, va="top", ha="left", fontsize=8,
                bbox={"boxstyle": "round,pad=0.35", "facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.85})
    ax.legend(handles=handles, loc="upper right")
    ax.set_xlabel("dark level (DN)")
    ax.set_ylabel("outputs (count)")
    ax.set_title("Dark level distribution")


def _panel_exposure_sweep(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "exposure")
    exposure = _array(record, "exposure/sweep_exposure_us").ravel().astype(np.float64)
    top = _array(record, "exposure/sweep_top_dn").ravel().astype(np.float64)
    n = min(exposure.size, top.size)
    exposure, top = exposure[:n], top[:n]
    gain = _array(record, "exposure/sweep_gain")
    gain = gain.ravel()[:n].astype(np.float64) if gain is not None and gain.size >= n else np.full(n, np.nan)
    saturated = _array(record, "exposure/sweep_saturated_fraction")
    saturated = saturated.ravel()[:n].astype(np.float64) if saturated is not None and saturated.size >= n else None
    groups = [g for g in np.unique(gain[np.isfinite(gain)])] or [np.nan]
    handles = []
    for i, g in enumerate(groups):
        rows = np.isfinite(gain) & (gain == g) if math.isfinite(g) else np.ones(n, dtype=bool)
        order = np.argsort(exposure[rows])
        label = "top level" + (f", gain {_fmt(g)}" if len(groups) > 1 else "")
        (line,) = ax.plot(exposure[rows][order], top[rows][order], marker="o", markersize=3.5, linewidth=1.3,
                          color=_DATA, alpha=1.0 if len(groups) == 1 else 0.45 + 0.55 * (i + 1) / len(groups),
                          label=label)
        handles.append(line)
    full_scale = _number(summary, "full_scale_dn")
    if full_scale is not None:
        handles.append(ax.axhline(full_scale, color=_GUIDE, linestyle="--", linewidth=1.0,
                                  label=f"full scale {_fmt(full_scale, 5)} DN"))
    target = _number(summary, "target_dn")
    if target is not None:
        handles.append(ax.axhline(target, color=_DATA, linestyle=":", linewidth=1.0,
                                  label=f"target {_fmt(target, 4)} DN"))
    chosen_us, chosen_top = _number(summary, "exposure_us"), _number(summary, "top_dn")
    if chosen_us is not None and chosen_top is not None:
        chosen_gain = _number(summary, "gain")
        handles.append(ax.plot([chosen_us], [chosen_top], marker="*", markersize=14, color=_MARK, linestyle="none",
                               markeredgecolor="white", markeredgewidth=0.6, zorder=5,
                               label=f"chosen {_fmt(chosen_us, 4)} µs"
                               + (f", gain {_fmt(chosen_gain)}" if chosen_gain is not None else ""))[0])
    finite_exposure = exposure[np.isfinite(exposure) & (exposure > 0)]
    if finite_exposure.size and finite_exposure.max() / finite_exposure.min() > 8:
        ax.set_xscale("log")
    ax.set_xlabel("exposure (µs)")
    ax.set_ylabel("top level (DN)", color=_DATA)
    if saturated is not None:
        right = ax.twinx()
        right.grid(False)
        right.spines["right"].set_visible(True)
        order = np.argsort(exposure)
        handles.append(right.plot(exposure[order], 100 * saturated[order], marker="s", markersize=3,
                                  linewidth=1.1, color=_SECOND, label="saturated pixels")[0])
        limit = _number(summary, "max_saturated_fraction")
        if limit is not None:
            handles.append(right.axhline(100 * limit, color=_SECOND, linestyle=":", linewidth=1.0,
                                         label=f"saturation limit {_fmt(100 * limit)}%"))
        right.set_ylabel("saturated pixels (%)", color=_SECOND)
        top_percent = max(float(np.nanmax(100 * saturated)) if np.isfinite(saturated).any() else 0.0,
                          100 * limit if limit is not None else 0.0)
        # Linear up to the limit, logarithmic above: a 0.1% limit stays visible beside a 30% saturated sweep end.
        threshold = 100 * limit if limit is not None and limit > 0 else 0.1
        if top_percent > 20 * threshold:
            right.set_yscale("symlog", linthresh=threshold, linscale=0.6)
            right.yaxis.set_major_formatter(_integer_formatter())
            right.set_ylim(0, top_percent * 4)
        else:
            right.set_ylim(0, max(1.0, 1.6 * top_percent))
    # Room above the curves for the legend, which lists both axes' series.
    top_left = max(float(np.nanmax(top)) if np.isfinite(top).any() else 1.0, full_scale or 0.0, target or 0.0)
    ax.set_ylim(0, 1.65 * top_left)
    ax.legend(handles=handles, loc="upper left", ncol=2, columnspacing=0.8, handlelength=1.6)
    ax.set_title("Exposure sweep")


def _panel_latency(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "latency")
    correlations = _array(record, "latency/correlations").ravel().astype(np.float64)
    lags = np.arange(correlations.size)
    chosen = _number(summary, "lag_frames")
    chosen = int(chosen) if chosen is not None else int(np.nanargmax(correlations))
    colours = [_MARK if lag == chosen else _DATA for lag in lags]
    ax.bar(lags, np.nan_to_num(correlations), color=colours, width=0.7)
    ax.axhline(0, color=_GUIDE, linewidth=0.8)
    from matplotlib.patches import Patch

    peak = _number(summary, "peak_correlation")
    handles = [Patch(color=_MARK, label=f"optical lag {chosen} frames" + (f" (r = {peak:.3f})" if peak else ""))]
    header = _number(summary, "header_lag_frames")
    if header is not None:
        handles.append(ax.axvline(header, color=_GUIDE, linestyle="--", linewidth=1.0, label=f"metadata lag "
                                  f"{int(header)} frames" + ("" if int(header) == chosen else " (disagrees)")))
    ax.legend(handles=handles, loc="upper right")
    ax.set_xlabel("lag (camera frames)")
    ax.set_ylabel("correlation with pattern")
    ax.set_ylim(min(-0.1, float(np.nanmin(correlations)) - 0.05), 1.25)
    ax.set_xticks(lags if lags.size <= 17 else lags[::max(1, lags.size // 12)])
    ax.set_title("DMD-to-camera lag")


def _panel_speckle_profile(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "roi")
    lag, value = _finite(_array(record, "roi/autocorrelation_lag_px"), _array(record, "roi/autocorrelation"))
    order = np.argsort(lag)
    ax.plot(lag[order], value[order], marker="o", markersize=3.5, color=_DATA, linewidth=1.3,
            label="intensity autocorrelation")
    ax.axhline(0, color=_GUIDE, linewidth=0.8)
    grain = _number(summary, "grain_px")
    if grain is not None:
        ax.axvline(grain, color=_MARK, linestyle="--", linewidth=1.2, label=f"grain {_fmt(grain)} px")
    stride = _number(summary, "stride_px")
    if stride is not None:
        ax.axvline(stride, color=_SECOND, linestyle=":", linewidth=1.2, label=f"selection stride {_fmt(stride)} px")
    ax.legend(loc="upper right")
    ax.set_xlabel("lag (px)")
    ax.set_ylabel("autocorrelation (1 at lag 0)")
    ax.set_title("Speckle grain: autocorrelation profile")


def _panel_speckle_map(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "roi")
    image = _array(record, "roi/autocorrelation_2d").astype(np.float64)
    if image.ndim != 2:
        side = math.isqrt(image.size)
        image = image.ravel()[:side * side].reshape(side, side)
    half_h, half_w = image.shape[0] // 2, image.shape[1] // 2
    extent = (-half_w - 0.5, image.shape[1] - half_w - 0.5, image.shape[0] - half_h - 0.5, -half_h - 0.5)
    finite = image[np.isfinite(image)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    im = ax.imshow(image, cmap=_MAP, vmin=vmin, vmax=1.0, interpolation="nearest", extent=extent)
    _colour_bar(fig, ax, im, "autocorrelation (1 at lag 0)")
    if finite.size and finite.min() < 0.5 < finite.max():
        y, x = np.mgrid[-half_h:image.shape[0] - half_h, -half_w:image.shape[1] - half_w]
        ax.contour(x, y, np.nan_to_num(image, nan=0.0), levels=[0.5], colors="white", linewidths=1.0)
        ax.plot([], [], color="white", label="half maximum")
    grain = _number(summary, "grain_px")
    if grain is not None:
        from matplotlib.patches import Circle

        ax.add_patch(Circle((0, 0), grain, fill=False, edgecolor=_MARK, linestyle="--", linewidth=1.2,
                            label=f"radius = grain ({_fmt(grain)} px)"))
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(loc="upper right", facecolor="#333333", labelcolor="white", edgecolor="none")
        legend.get_frame().set_alpha(0.7)
    ax.set_xlabel("Δx (px)")
    ax.set_ylabel("Δy (px)")
    ax.grid(False)
    ax.set_title("Speckle autocorrelation map")


def _mask_is_usable(mask: np.ndarray, summary: Mapping[str, Any]) -> bool:
    """Whether True in the reference mask means usable (the spec) -- checked against usable_fraction if given."""
    fraction = _number(summary, "usable_fraction")
    if fraction is None:
        return True
    kept = float(mask.mean())
    return abs(kept - fraction) <= abs(1 - kept - fraction)


def _panel_reference_map(fig, ax, record: CalibrationRecord) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    summary = _summary(record, "reference")
    reference = _array(record, "reference/reference_dn").ravel().astype(np.float64)
    geometry = _roi_geometry(record, "reference", reference.size)
    mask = _array(record, "reference/mask")
    usable = np.ones(reference.size, dtype=bool)
    if mask is not None and mask.size == reference.size:
        usable = mask.ravel().astype(bool)
        if not _mask_is_usable(usable, summary):
            usable = ~usable
    limits = _colour_limits(reference[usable] if usable.any() else reference)
    _draw_map(fig, ax, reference, geometry, "reference − dark (DN)", limits)
    excluded = ~usable
    if excluded.any():
        x0, y0, width = geometry
        overlay = _as_map(np.where(excluded, 1.0, np.nan), width)
        ax.imshow(overlay, cmap=ListedColormap([_MARK]), vmin=0, vmax=1, interpolation="nearest",
                  extent=(x0 - 0.5, x0 + width - 0.5, y0 + overlay.shape[0] - 0.5, y0 - 0.5),
                  aspect=ax.get_aspect())
        share = 100 * excluded.mean()
        ax.legend(handles=[Patch(color=_MARK, label=f"masked: {int(excluded.sum())} ({share:.1f}%)")],
                  loc="upper right")
    ax.set_title(f"Linear-mode reference, {100 * usable.mean():.1f}% usable")


def _scatter(ax, predicted: np.ndarray, measured: np.ndarray, correlation: float | None,
             relative_error: float | None) -> None:
    x, y = _finite(predicted, measured)
    if correlation is None and x.size > 1 and x.std() > 0 and y.std() > 0:
        correlation = float(np.corrcoef(x, y)[0, 1])
    alpha = float(np.clip(600 / max(x.size, 1), 0.08, 0.7))
    label = f"{x.size:,} outputs"
    if correlation is not None:
        label += f", r = {correlation:.4f}"
    if relative_error is not None:
        label += f"\nrelative error {100 * relative_error:.2g}%"
    ax.scatter(x, y, s=4, color=_DATA, alpha=alpha, linewidths=0, rasterized=True, label=label)
    if x.size:
        _identity_line(ax, x, y)
    legend = ax.legend(loc="upper left", markerscale=3)
    for handle in legend.legend_handles if hasattr(legend, "legend_handles") else legend.legendHandles:
        handle.set_alpha(1.0)


def _panel_matrix_holdout(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "matrix")
    _scatter(ax, _array(record, "matrix/holdout_predicted"), _array(record, "matrix/holdout_measured"),
             _number(summary, "holdout_correlation"), _number(summary, "relative_error"))
    ax.set_xlabel("predicted x·M (a.u.; entries of M have unit variance)")
    ax.set_ylabel("optical projection (a.u.)")
    ax.set_title("Estimated matrix vs optics (held out)")


def _panel_matrix_nonlinear(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "matrix")
    _scatter(ax, _array(record, "matrix/nonlinear_predicted"), _array(record, "matrix/nonlinear_measured"),
             _number(summary, "nonlinear_correlation"), _number(summary, "nonlinear_relative_error"))
    ax.set_xlabel("predicted |x·M|² (DN)")
    ax.set_ylabel("measured intensity (DN)")
    ax.set_title("Intensity mode: measured vs |x·M|²")


def _fidelity_rows(record: CalibrationRecord, n: int) -> list[str]:
    rows = _summary(record, "fidelity").get("rows")
    labels = [r.strip() for r in rows.split(",")] if isinstance(rows, str) else []
    return labels if len(labels) == n else [f"row {i}" for i in range(n)]


def _panel_fidelity(ax, record: CalibrationRecord, name: str, ylabel: str, title: str, legend: bool) -> None:
    from matplotlib.lines import Line2D

    frames = _array(record, "fidelity/frames_per_vector").ravel().astype(np.float64)
    values = _array(record, f"fidelity/{name}").ravel().astype(np.float64)
    n = min(frames.size, values.size)
    frames, values = frames[:n], values[:n]
    labels = _fidelity_rows(record, n)
    # A label reads "<scheme>/<encoding>": one colour per scheme, one marker per encoding, and a line through a
    # scheme's points in order of cost, so the trade-off of frames against quality reads along each line.
    split = [label.split("/", 1) if "/" in label else [label, ""] for label in labels]
    schemes = list(dict.fromkeys(scheme for scheme, _ in split))
    encodings = list(dict.fromkeys(encoding for _, encoding in split))
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for s, scheme in enumerate(schemes):
        rows = sorted((i for i in range(n) if split[i][0] == scheme and np.isfinite(values[i])),
                      key=lambda i: frames[i])
        colour = _SERIES[s % len(_SERIES)]
        if len(rows) > 1:
            ax.plot(frames[rows], values[rows], color=colour, linewidth=1.1, alpha=0.7)
        for i in rows:
            ax.plot(frames[i], values[i], linestyle="none", color=colour, markersize=7, markeredgecolor="white",
                    marker=markers[encodings.index(split[i][1]) % len(markers)])
    positive = frames[np.isfinite(frames) & (frames > 0)]
    if positive.size and positive.max() / positive.min() >= 4:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(_integer_formatter())
    ax.set_xlabel("camera frames per vector")
    ax.set_ylabel(ylabel)
    ax.margins(x=0.12, y=0.2)
    if legend:
        handles = [Line2D([], [], color=_SERIES[s % len(_SERIES)], linewidth=1.5, label=scheme.replace("_", "-"))
                   for s, scheme in enumerate(schemes)]
        if encodings != [""]:
            handles += [Line2D([], [], color=_GUIDE, marker=markers[e % len(markers)], linestyle="none",
                               markersize=6, label=encoding or "(none)") for e, encoding in enumerate(encodings)]
        ax.legend(handles=handles, loc="best", ncol=2 if len(handles) > 4 else 1, columnspacing=1.0,
                  handletextpad=0.4)
    ax.set_title(title)


def _integer_formatter():
    from matplotlib.ticker import FuncFormatter

    return FuncFormatter(lambda value, _pos: f"{value:g}")


def _panel_fidelity_repeatability(fig, ax, record: CalibrationRecord) -> None:
    _panel_fidelity(ax, record, "repeatability", "repeatability (correlation)", "Fidelity: repeatability", True)


def _panel_fidelity_snr(fig, ax, record: CalibrationRecord) -> None:
    _panel_fidelity(ax, record, "snr_db", "signal-to-noise ratio (dB)", "Fidelity: SNR",
                    "fidelity_repeatability" not in panels_for(record))


def _time_axis(times_s: np.ndarray) -> tuple[np.ndarray, str]:
    span = float(np.nanmax(np.abs(times_s))) if times_s.size else 0.0
    if span >= 3 * 3600:
        return times_s / 3600, "h"
    if span >= 180:
        return times_s / 60, "min"
    return times_s, "s"


def _panel_drift(fig, ax, record: CalibrationRecord) -> None:
    summary = _summary(record, "drift")
    times_s, correlations = _finite(_array(record, "drift/times_s"), _array(record, "drift/correlations"))
    order = np.argsort(times_s)
    times_s, correlations = times_s[order], correlations[order]
    times, unit = _time_axis(times_s)
    ax.plot(times, correlations, marker="o", markersize=3.5, color=_DATA, linewidth=1.3,
            label="correlation with baseline")
    threshold = _number(summary, "threshold")
    if threshold is not None:
        ax.axhline(threshold, color=_MARK, linestyle="--", linewidth=1.1, label=f"recalibrate below {_fmt(threshold)}")
        low = correlations < threshold
        if low.any():
            ax.plot(times[low], correlations[low], marker="o", markersize=5, linestyle="none", color=_MARK)
    baseline = _number(summary, "baseline_repeatability")
    if baseline is not None:
        ax.axhline(baseline, color=_GUIDE, linestyle=":", linewidth=1.1,
                   label=f"baseline repeatability {_fmt(baseline, 4)}")
    ax.legend(loc="lower left")
    ax.set_xlabel(f"time since baseline ({unit})")
    ax.set_ylabel("correlation with baseline")
    ax.margins(y=0.2)
    needs = summary.get("needs_recalibration")
    status = {True: ": recalibrate", False: ": within threshold"}.get(needs if isinstance(needs, bool) else None, "")
    ax.set_title(f"Drift of the projection{status}", **({"color": _MARK} if needs is True else {}))


_DRAW: dict[str, Callable[..., None]] = {
    "dark_map": _panel_dark_map,
    "dark_histogram": _panel_dark_histogram,
    "exposure_sweep": _panel_exposure_sweep,
    "latency": _panel_latency,
    "speckle_profile": _panel_speckle_profile,
    "speckle_map": _panel_speckle_map,
    "reference_map": _panel_reference_map,
    "matrix_holdout": _panel_matrix_holdout,
    "matrix_nonlinear": _panel_matrix_nonlinear,
    "fidelity_repeatability": _panel_fidelity_repeatability,
    "fidelity_snr": _panel_fidelity_snr,
    "drift": _panel_drift,
}


# -- the header ----------------------------------------------------------------------------------------------


def _created_utc(created: Any) -> str:
    if isinstance(created, str):
        with contextlib.suppress(ValueError):
            created = datetime.fromisoformat(created)
    if not isinstance(created, datetime):
        return "time unknown"
    if created.tzinfo is None:  # a naive time in a record is taken as UTC, as the store writes it
        created = created.replace(tzinfo=timezone.utc)
    return created.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _settings_text(settings: Mapping[str, Any]) -> str:
    known = {"exposure_us": "exposure {} µs", "frame_time_us": "frame time {} µs", "gain": "gain {}",
             "pixel_format": "{}", "laser_power_mw": "laser {} mW", "n_components": "{} outputs"}
    parts = [template.format(settings[key]) for key, template in known.items() if key in settings]
    parts += [f"{key} {value}" for key, value in settings.items() if key not in known]
    return " · ".join(parts) if parts else "settings not recorded"


def _highlights(record: CalibrationRecord) -> str:
    """The few numbers a reader looks for first, one phrase per routine present."""
    phrases = []

    def add(routine: str, template: str, *keys: str) -> None:
        summary = _summary(record, routine)
        values = [_number(summary, key) for key in keys]
        if all(v is not None for v in values):
            phrases.append(template.format(*values))

    add("dark", "dark {:.3g} DN, read noise {:.3g} DN", "level_dn", "read_noise_dn")
    add("exposure", "exposure {:.4g} µs", "exposure_us")
    add("latency", "lag {:.0f} frames", "lag_frames")
    add("roi", "grain {:.3g} px", "grain_px")
    if "reference" in record.results:
        add("reference", "reference {:.1%} usable", "usable_fraction")
    add("matrix", "matrix r = {:.4f}", "holdout_correlation")
    add("drift", "drift r = {:.4f}", "last_correlation")
    return " · ".join(phrases)


def _draw_header(fig, record: CalibrationRecord, title: str | None, width_in: float, height_in: float) -> None:
    top = 1 - 0.12 / height_in
    line = 0.21 / height_in
    fig.text(0.012, top, title or f"OPU calibration report: {record.model}, serial {record.serial_number}",
             fontsize=13.5, fontweight="bold", va="top", ha="left")
    details = (("" if title is None else f"{record.model} · serial {record.serial_number} · ")
               + f"firmware {record.firmware_version} · {_settings_text(record.settings)} · "
               f"calibrated {_created_utc(record.created)}")
    highlights = _highlights(record)
    chars = max(40, int(width_in * 72 / (9.0 * 0.52)))
    lines = textwrap.wrap(details, chars)[:2] + (textwrap.wrap(highlights, chars)[:1] if highlights else [])
    for i, text in enumerate(lines):
        fig.text(0.012, top - 0.30 / height_in - i * line, text, fontsize=9.0, va="top", ha="left",
                 color="#222222" if i < len(lines) - (1 if highlights else 0) else _GUIDE)


# -- the report ----------------------------------------------------------------------------------------------


def check_report_path(path: str | os.PathLike[str]) -> Path:
    """Refuse a report path with an unknown suffix, or a missing matplotlib, before hours of calibration.

    Raises:
        InvalidInputError: the suffix is not .png, .pdf or .svg.
        ReportUnavailableError: matplotlib (the ``plot`` extra) is not installed.
    """
    target = Path(path)
    if target.suffix.lower().lstrip(".") not in _FORMATS:
        raise InvalidInputError(f"report path {str(target)!r}: use a .png, .pdf or .svg suffix")
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ReportUnavailableError('the calibration report needs matplotlib: pip install "opu-driver[plot]"')
    return target


def render_report(record: CalibrationRecord, path: str | os.PathLike[str], *, title: str | None = None,
                  dpi: int = 120) -> Path:
    """Draw ``record`` as one figure (a panel per thing it holds, see :func:`panels_for`) and save it at ``path``.

    The format follows the suffix (``.png``, ``.pdf`` or ``.svg``). The file is written under a temporary name in
    the same directory and renamed over ``path``, so a reader never sees half a picture.

    Args:
        record: the calibration record (from a routine run or :meth:`CalibrationStore.load`).
        path: where to write the picture.
        title: the header's first line (default: "OPU calibration report: <model>, serial <serial>").
        dpi: resolution; the image is :func:`figure_size_in` times dpi pixels.

    Returns:
        The path written.

    Raises:
        InvalidInputError: not a record, nothing in it to plot, a bad dpi or an unknown suffix.
        ReportUnavailableError: matplotlib (the ``plot`` extra) is not installed.
    """
    panels = panels_for(record)
    if not panels:
        raise InvalidInputError(
            f"the record holds nothing to plot (routines {sorted(record.results) or 'none'}); the report draws "
            f"arrays of: {', '.join(sorted({a.split('/')[0] for needs in PANELS.values() for a in needs}))}"
        )
    if isinstance(dpi, bool) or not isinstance(dpi, (int, np.integer)) or not 20 <= dpi <= 1200:
        raise InvalidInputError(f"dpi must be an integer within 20..1200, got {dpi!r}")
    if title is not None and not isinstance(title, str):
        raise InvalidInputError(f"title must be a string or None, got {type(title).__name__}")
    target = check_report_path(path)
    fmt = target.suffix.lower().lstrip(".")
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.layout_engine import ConstrainedLayoutEngine
    except ImportError as exc:
        raise ReportUnavailableError(
            'the calibration report needs matplotlib: pip install "opu-driver[plot]"'
        ) from exc

    width_in, height_in = figure_size_in(len(panels))
    rows, columns = _grid(len(panels))
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(width_in, height_in), dpi=dpi)
        FigureCanvasAgg(fig)
        header = _HEADER_IN / height_in
        fig.set_layout_engine(ConstrainedLayoutEngine(rect=(0, 0, 1, 1 - header), w_pad=0.06, h_pad=0.06,
                                                      wspace=0.04, hspace=0.04))
        grid = fig.add_gridspec(rows, columns)
        for i, name in enumerate(panels):
            ax = fig.add_subplot(grid[i // columns, i % columns])
            _DRAW[name](fig, ax, record)
        _draw_header(fig, record, title, width_in, height_in)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(temp, "wb") as f:
                fig.savefig(f, format=fmt, dpi=dpi, metadata={"Title": title or "OPU calibration report"}
                            if fmt != "png" else {"Software": "opu_driver calibration report"})
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
    _log.info("calibration report of %s %s (%d panels: %s) written to %s", record.model, record.serial_number,
              len(panels), ", ".join(panels), target)
    return target
