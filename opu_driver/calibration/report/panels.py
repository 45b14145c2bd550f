"""The report's panels: one drawing function per panel, grouped by routine, each registered with the arrays it
needs (:data:`PANELS`, in drawing order).

A panel draws from the record's arrays; the routine's summary only annotates it (a missing number leaves its mark
out). Array names and summary keys come from the result classes, so they stay those the routines write.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ..dark import DarkResult
from ..drift import DriftResult
from ..exposure import ExposureResult
from ..fidelity import FidelityResult
from ..latency import LatencyResult
from ..matrix import MatrixResult
from ..reference import ReferenceResult
from ..roi import RoiResult
from ..store import CalibrationRecord
from .data import array, as_map, finite, needed, number, roi_geometry, summary
from .drawing import colour_bar, colour_limits, draw_map, positions, scatter
from .style import DATA, GUIDE, MAP, MARK, SECOND, SERIES, fmt, integer_formatter

__all__ = ["PANELS", "DRAW", "drawable"]

Draw = Callable[[Any, Any, CalibrationRecord], None]

PANELS: dict[str, tuple[str, ...]] = {}
"""Every panel the report knows, in drawing order, with the arrays it needs (all of them, non-empty)."""
DRAW: dict[str, Draw] = {}
"""The drawing function of each panel: ``DRAW[name](fig, ax, record)``."""


def _panel(*needs: str) -> Callable[[Draw], Draw]:
    """Register a drawing function as the panel of its name, drawn when the record holds ``needs``."""

    def register(draw: Draw) -> Draw:
        PANELS[draw.__name__] = needs
        DRAW[draw.__name__] = draw
        return draw

    return register


def drawable(record: CalibrationRecord, name: str) -> bool:
    """Whether the record holds every array panel ``name`` needs, numeric with at least one finite value."""
    return all(array(record, a) is not None for a in PANELS[name])


# -- dark ----------------------------------------------------------------------------------------------------


@_panel(DarkResult.record_array.mean_dn)
def dark_map(fig, ax, record: CalibrationRecord) -> None:
    stored = DarkResult.record_array
    mean = needed(record, stored.mean_dn).ravel()
    geometry = roi_geometry(record, DarkResult, mean.size)
    draw_map(fig, ax, mean, geometry, "dark level (DN)")
    hot = array(record, stored.hot_pixels)
    n_hot = 0
    if hot is not None and hot.size == mean.size:
        indices = np.flatnonzero(hot.ravel())
        n_hot = indices.size
        if n_hot:
            x, y = positions(indices, geometry)
            ax.scatter(x, y, s=70, facecolors="none", edgecolors=MARK, linewidths=1.6, label=f"hot pixel ({n_hot})")
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


@_panel(DarkResult.record_array.mean_dn)
def dark_histogram(fig, ax, record: CalibrationRecord) -> None:
    from matplotlib.patches import Patch

    key, stored = DarkResult.summary_key, DarkResult.record_array
    raw = needed(record, stored.mean_dn).ravel().astype(np.float64)
    values_of = summary(record, DarkResult)
    hot = array(record, stored.hot_pixels)
    hot_mask = hot.ravel().astype(bool) if hot is not None and hot.size == raw.size else np.zeros(raw.size, bool)
    shown = np.isfinite(raw)
    values, hot_mask = raw[shown], hot_mask[shown]
    body = values[~hot_mask] if (~hot_mask).any() else values
    # The axis spans the ordinary outputs; hot pixels far beyond them go into an overflow bar at the right edge
    # (their levels are in the legend and on the map) rather than squeezing the distribution into one bin.
    low, high = float(body.min()), float(body.max())
    span = max(high - low, 1.0)
    hottest = float(values[hot_mask].max()) if hot_mask.any() else high
    overflow = hottest > high + 3 * span
    edges = _bins(body, low - 0.1 * span, high + 0.1 * span if overflow else max(high, hottest) + 0.05 * span)
    counts, _, _ = ax.hist(values[~hot_mask], bins=edges, color=DATA, alpha=0.85)
    handles = [Patch(color=DATA, alpha=0.85, label=f"outputs ({int((~hot_mask).sum()):,})")]
    if hot_mask.any():
        hot_values = values[hot_mask]
        clipped = np.minimum(hot_values, edges[-1] - 1e-9 * span) if overflow else hot_values
        ax.hist(clipped, bins=edges, color=MARK, alpha=0.9)
        counts = np.maximum(counts, np.histogram(clipped, bins=edges)[0])
        spread = fmt(hot_values.min()) + ("" if hot_values.size == 1 else f"–{fmt(hot_values.max())}")
        label = f"hot ({hot_values.size}): {spread} DN"
        handles.append(Patch(color=MARK, label=label + (",\n  in the last bin" if overflow else "")))
    ax.set_yscale("log")
    # Headroom on the log axis: the bars fill the lower 60%, the legend and the notes the top.
    ax.set_ylim(0.7, 0.7 * (max(float(counts.max()), 1.0) / 0.7) ** (1 / 0.6))
    level = number(values_of, key.level_dn)
    if level is not None:
        handles.append(ax.axvline(level, color=GUIDE, linestyle="--", linewidth=1.0, label=f"median {fmt(level)} DN"))
    notes = []
    for summary_key, name in ((key.fixed_pattern_dn, "fixed pattern"), (key.read_noise_dn, "read noise")):
        value = number(values_of, summary_key)
        if value is not None:
            notes.append(f"{name} {fmt(value)} DN")
    n_frames = number(values_of, key.n_frames)
    if n_frames is not None:
        method = values_of.get(key.method)
        notes.append(f"{int(n_frames)} frames" + (f", {method.replace('_', ' ')}" if isinstance(method, str) else ""))
    if notes:
        ax.text(
            0.03,
            0.97,
            "\n".join(notes),
            transform=ax.transAxes,
            va="top",
            ha="left",
            fontsize=8,
            bbox={"boxstyle": "round,pad=0.35", "facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.85},
        )
    ax.legend(handles=handles, loc="upper right")
    ax.set_xlabel("dark level (DN)")
    ax.set_ylabel("outputs (count)")
    ax.set_title("Dark level distribution")


# -- exposure ------------------------------------------------------------------------------------------------


@_panel(ExposureResult.record_array.sweep_exposure_us, ExposureResult.record_array.sweep_top_dn)
def exposure_sweep(fig, ax, record: CalibrationRecord) -> None:
    key, stored = ExposureResult.summary_key, ExposureResult.record_array
    values_of = summary(record, ExposureResult)
    exposure = needed(record, stored.sweep_exposure_us).ravel().astype(np.float64)
    top = needed(record, stored.sweep_top_dn).ravel().astype(np.float64)
    n = min(exposure.size, top.size)
    exposure, top = exposure[:n], top[:n]
    gain = array(record, stored.sweep_gain)
    gain = gain.ravel()[:n].astype(np.float64) if gain is not None and gain.size >= n else np.full(n, np.nan)
    saturated = array(record, stored.sweep_saturated_fraction)
    saturated = saturated.ravel()[:n].astype(np.float64) if saturated is not None and saturated.size >= n else None
    groups = [g for g in np.unique(gain[np.isfinite(gain)])] or [np.nan]
    handles = []
    for i, g in enumerate(groups):
        rows = np.isfinite(gain) & (gain == g) if math.isfinite(g) else np.ones(n, dtype=bool)
        order = np.argsort(exposure[rows])
        label = "top level" + (f", gain {fmt(g)}" if len(groups) > 1 else "")
        (line,) = ax.plot(
            exposure[rows][order],
            top[rows][order],
            marker="o",
            markersize=3.5,
            linewidth=1.3,
            color=DATA,
            alpha=1.0 if len(groups) == 1 else 0.45 + 0.55 * (i + 1) / len(groups),
            label=label,
        )
        handles.append(line)
    full_scale = number(values_of, key.full_scale_dn)
    if full_scale is not None:
        handles.append(
            ax.axhline(
                full_scale, color=GUIDE, linestyle="--", linewidth=1.0, label=f"full scale {fmt(full_scale, 5)} DN"
            )
        )
    target = number(values_of, key.target_dn)
    if target is not None:
        handles.append(
            ax.axhline(target, color=DATA, linestyle=":", linewidth=1.0, label=f"target {fmt(target, 4)} DN")
        )
    chosen_us, chosen_top = number(values_of, key.exposure_us), number(values_of, key.top_dn)
    if chosen_us is not None and chosen_top is not None:
        chosen_gain = number(values_of, key.gain)
        handles.append(
            ax.plot(
                [chosen_us],
                [chosen_top],
                marker="*",
                markersize=14,
                color=MARK,
                linestyle="none",
                markeredgecolor="white",
                markeredgewidth=0.6,
                zorder=5,
                label=f"chosen {fmt(chosen_us, 4)} µs"
                + (f", gain {fmt(chosen_gain)}" if chosen_gain is not None else ""),
            )[0]
        )
    finite_exposure = exposure[np.isfinite(exposure) & (exposure > 0)]
    if finite_exposure.size and finite_exposure.max() / finite_exposure.min() > 8:
        ax.set_xscale("log")
    ax.set_xlabel("exposure (µs)")
    ax.set_ylabel("top level (DN)", color=DATA)
    if saturated is not None:
        right = ax.twinx()
        right.grid(False)
        right.spines["right"].set_visible(True)
        order = np.argsort(exposure)
        handles.append(
            right.plot(
                exposure[order],
                100 * saturated[order],
                marker="s",
                markersize=3,
                linewidth=1.1,
                color=SECOND,
                label="saturated pixels",
            )[0]
        )
        limit = number(values_of, key.max_saturated_fraction)
        if limit is not None:
            handles.append(
                right.axhline(
                    100 * limit,
                    color=SECOND,
                    linestyle=":",
                    linewidth=1.0,
                    label=f"saturation limit {fmt(100 * limit)}%",
                )
            )
        right.set_ylabel("saturated pixels (%)", color=SECOND)
        top_percent = max(
            float(np.nanmax(100 * saturated)) if np.isfinite(saturated).any() else 0.0,
            100 * limit if limit is not None else 0.0,
        )
        # Linear up to the limit, logarithmic above: a 0.1% limit stays visible beside a 30% saturated sweep end.
        threshold = 100 * limit if limit is not None and limit > 0 else 0.1
        if top_percent > 20 * threshold:
            right.set_yscale("symlog", linthresh=threshold, linscale=0.6)
            right.yaxis.set_major_formatter(integer_formatter())
            right.set_ylim(0, top_percent * 4)
        else:
            right.set_ylim(0, max(1.0, 1.6 * top_percent))
    # Room above the curves for the legend, which lists both axes' series.
    top_left = max(float(np.nanmax(top)) if np.isfinite(top).any() else 1.0, full_scale or 0.0, target or 0.0)
    ax.set_ylim(0, 1.65 * top_left)
    ax.legend(handles=handles, loc="upper left", ncol=2, columnspacing=0.8, handlelength=1.6)
    ax.set_title("Exposure sweep")


# -- latency -------------------------------------------------------------------------------------------------


@_panel(LatencyResult.record_array.correlations)
def latency(fig, ax, record: CalibrationRecord) -> None:
    key = LatencyResult.summary_key
    values_of = summary(record, LatencyResult)
    correlations = needed(record, LatencyResult.record_array.correlations).ravel().astype(np.float64)
    lags = np.arange(correlations.size)
    chosen = number(values_of, key.lag_frames)
    chosen = int(chosen) if chosen is not None else int(np.nanargmax(correlations))
    colours = [MARK if lag == chosen else DATA for lag in lags]
    ax.bar(lags, np.nan_to_num(correlations), color=colours, width=0.7)
    ax.axhline(0, color=GUIDE, linewidth=0.8)
    from matplotlib.patches import Patch

    peak = number(values_of, key.peak_correlation)
    handles = [Patch(color=MARK, label=f"optical lag {chosen} frames" + (f" (r = {peak:.3f})" if peak else ""))]
    header = number(values_of, key.header_lag_frames)
    if header is not None:
        handles.append(
            ax.axvline(
                header,
                color=GUIDE,
                linestyle="--",
                linewidth=1.0,
                label=f"metadata lag {int(header)} frames" + ("" if int(header) == chosen else " (disagrees)"),
            )
        )
    ax.legend(handles=handles, loc="upper right")
    ax.set_xlabel("lag (camera frames)")
    ax.set_ylabel("correlation with pattern")
    ax.set_ylim(min(-0.1, float(np.nanmin(correlations)) - 0.05), 1.25)
    ax.set_xticks(lags if lags.size <= 17 else lags[:: max(1, lags.size // 12)])
    ax.set_title("DMD-to-camera lag")


# -- roi -----------------------------------------------------------------------------------------------------


@_panel(RoiResult.record_array.autocorrelation_lag_px, RoiResult.record_array.autocorrelation)
def speckle_profile(fig, ax, record: CalibrationRecord) -> None:
    key, stored = RoiResult.summary_key, RoiResult.record_array
    values_of = summary(record, RoiResult)
    lag, value = finite(needed(record, stored.autocorrelation_lag_px), needed(record, stored.autocorrelation))
    order = np.argsort(lag)
    ax.plot(
        lag[order],
        value[order],
        marker="o",
        markersize=3.5,
        color=DATA,
        linewidth=1.3,
        label="intensity autocorrelation",
    )
    ax.axhline(0, color=GUIDE, linewidth=0.8)
    grain = number(values_of, key.grain_px)
    if grain is not None:
        ax.axvline(grain, color=MARK, linestyle="--", linewidth=1.2, label=f"grain {fmt(grain)} px")
    stride = number(values_of, key.stride_px)
    if stride is not None:
        ax.axvline(stride, color=SECOND, linestyle=":", linewidth=1.2, label=f"selection stride {fmt(stride)} px")
    ax.legend(loc="upper right")
    ax.set_xlabel("lag (px)")
    ax.set_ylabel("autocorrelation (1 at lag 0)")
    ax.set_title("Speckle grain: autocorrelation profile")


@_panel(RoiResult.record_array.autocorrelation_2d)
def speckle_map(fig, ax, record: CalibrationRecord) -> None:
    values_of = summary(record, RoiResult)
    image = needed(record, RoiResult.record_array.autocorrelation_2d).astype(np.float64)
    if image.ndim != 2:
        side = math.isqrt(image.size)
        image = image.ravel()[: side * side].reshape(side, side)
    half_h, half_w = image.shape[0] // 2, image.shape[1] // 2
    extent = (-half_w - 0.5, image.shape[1] - half_w - 0.5, image.shape[0] - half_h - 0.5, -half_h - 0.5)
    shown = image[np.isfinite(image)]
    vmin = min(0.0, float(shown.min())) if shown.size else 0.0
    im = ax.imshow(image, cmap=MAP, vmin=vmin, vmax=1.0, interpolation="nearest", extent=extent)
    colour_bar(fig, ax, im, "autocorrelation (1 at lag 0)")
    if shown.size and shown.min() < 0.5 < shown.max():
        y, x = np.mgrid[-half_h : image.shape[0] - half_h, -half_w : image.shape[1] - half_w]
        ax.contour(x, y, np.nan_to_num(image, nan=0.0), levels=[0.5], colors="white", linewidths=1.0)
        ax.plot([], [], color="white", label="half maximum")
    grain = number(values_of, RoiResult.summary_key.grain_px)
    if grain is not None:
        from matplotlib.patches import Circle

        ax.add_patch(
            Circle(
                (0, 0),
                grain,
                fill=False,
                edgecolor=MARK,
                linestyle="--",
                linewidth=1.2,
                label=f"radius = grain ({fmt(grain)} px)",
            )
        )
    if ax.get_legend_handles_labels()[0]:
        legend = ax.legend(loc="upper right", facecolor="#333333", labelcolor="white", edgecolor="none")
        legend.get_frame().set_alpha(0.7)
    ax.set_xlabel("Δx (px)")
    ax.set_ylabel("Δy (px)")
    ax.grid(False)
    ax.set_title("Speckle autocorrelation map")


# -- reference -----------------------------------------------------------------------------------------------


def _mask_is_usable(mask: np.ndarray, values_of: Mapping[str, Any]) -> bool:
    """Whether True in the reference mask means usable (the spec) -- checked against usable_fraction if given."""
    fraction = number(values_of, ReferenceResult.summary_key.usable_fraction)
    if fraction is None:
        return True
    kept = float(mask.mean())
    return abs(kept - fraction) <= abs(1 - kept - fraction)


@_panel(ReferenceResult.record_array.reference_dn)
def reference_map(fig, ax, record: CalibrationRecord) -> None:
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    stored = ReferenceResult.record_array
    values_of = summary(record, ReferenceResult)
    reference = needed(record, stored.reference_dn).ravel().astype(np.float64)
    geometry = roi_geometry(record, ReferenceResult, reference.size)
    mask = array(record, stored.mask)
    usable = np.ones(reference.size, dtype=bool)
    if mask is not None and mask.size == reference.size:
        usable = mask.ravel().astype(bool)
        if not _mask_is_usable(usable, values_of):
            usable = ~usable
    limits = colour_limits(reference[usable] if usable.any() else reference)
    draw_map(fig, ax, reference, geometry, "reference − dark (DN)", limits)
    excluded = ~usable
    if excluded.any():
        x0, y0, width = geometry
        overlay = as_map(np.where(excluded, 1.0, np.nan), width)
        ax.imshow(
            overlay,
            cmap=ListedColormap([MARK]),
            vmin=0,
            vmax=1,
            interpolation="nearest",
            extent=(x0 - 0.5, x0 + width - 0.5, y0 + overlay.shape[0] - 0.5, y0 - 0.5),
            aspect=ax.get_aspect(),
        )
        share = 100 * excluded.mean()
        ax.legend(handles=[Patch(color=MARK, label=f"masked: {int(excluded.sum())} ({share:.1f}%)")], loc="upper right")
    ax.set_title(f"Linear-mode reference, {100 * usable.mean():.1f}% usable")


# -- matrix --------------------------------------------------------------------------------------------------


@_panel(MatrixResult.record_array.holdout_predicted, MatrixResult.record_array.holdout_measured)
def matrix_holdout(fig, ax, record: CalibrationRecord) -> None:
    key, stored = MatrixResult.summary_key, MatrixResult.record_array
    values_of = summary(record, MatrixResult)
    scatter(
        ax,
        needed(record, stored.holdout_predicted),
        needed(record, stored.holdout_measured),
        number(values_of, key.holdout_correlation),
        number(values_of, key.relative_error),
    )
    ax.set_xlabel("predicted x·M (a.u.; entries of M have unit variance)")
    ax.set_ylabel("optical projection (a.u.)")
    ax.set_title("Estimated matrix vs optics (held out)")


@_panel(MatrixResult.record_array.nonlinear_predicted, MatrixResult.record_array.nonlinear_measured)
def matrix_nonlinear(fig, ax, record: CalibrationRecord) -> None:
    key, stored = MatrixResult.summary_key, MatrixResult.record_array
    values_of = summary(record, MatrixResult)
    scatter(
        ax,
        needed(record, stored.nonlinear_predicted),
        needed(record, stored.nonlinear_measured),
        number(values_of, key.nonlinear_correlation),
        number(values_of, key.nonlinear_relative_error),
    )
    ax.set_xlabel("predicted |x·M|² (DN)")
    ax.set_ylabel("measured intensity (DN)")
    ax.set_title("Intensity mode: measured vs |x·M|²")


# -- fidelity ------------------------------------------------------------------------------------------------


def _fidelity_rows(record: CalibrationRecord, n: int) -> list[str]:
    rows = summary(record, FidelityResult).get(FidelityResult.summary_key.rows)
    labels = [r.strip() for r in rows.split(",")] if isinstance(rows, str) else []
    return labels if len(labels) == n else [f"row {i}" for i in range(n)]


def _fidelity(ax, record: CalibrationRecord, name: str, ylabel: str, title: str, legend: bool) -> None:
    """Fidelity figure ``name`` (an array of the record) against the frames each row costs."""
    from matplotlib.lines import Line2D

    frames = needed(record, FidelityResult.record_array.frames_per_vector).ravel().astype(np.float64)
    values = needed(record, name).ravel().astype(np.float64)
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
        rows = sorted(
            (i for i in range(n) if split[i][0] == scheme and np.isfinite(values[i])), key=lambda i: frames[i]
        )
        colour = SERIES[s % len(SERIES)]
        if len(rows) > 1:
            ax.plot(frames[rows], values[rows], color=colour, linewidth=1.1, alpha=0.7)
        for i in rows:
            ax.plot(
                frames[i],
                values[i],
                linestyle="none",
                color=colour,
                markersize=7,
                markeredgecolor="white",
                marker=markers[encodings.index(split[i][1]) % len(markers)],
            )
    positive = frames[np.isfinite(frames) & (frames > 0)]
    if positive.size and positive.max() / positive.min() >= 4:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(integer_formatter())
    ax.set_xlabel("camera frames per vector")
    ax.set_ylabel(ylabel)
    ax.margins(x=0.12, y=0.2)
    if legend:
        handles = [
            Line2D([], [], color=SERIES[s % len(SERIES)], linewidth=1.5, label=scheme.replace("_", "-"))
            for s, scheme in enumerate(schemes)
        ]
        if encodings != [""]:
            handles += [
                Line2D(
                    [],
                    [],
                    color=GUIDE,
                    marker=markers[e % len(markers)],
                    linestyle="none",
                    markersize=6,
                    label=encoding or "(none)",
                )
                for e, encoding in enumerate(encodings)
            ]
        ax.legend(handles=handles, loc="best", ncol=2 if len(handles) > 4 else 1, columnspacing=1.0, handletextpad=0.4)
    ax.set_title(title)


@_panel(FidelityResult.record_array.frames_per_vector, FidelityResult.record_array.repeatability)
def fidelity_repeatability(fig, ax, record: CalibrationRecord) -> None:
    _fidelity(
        ax,
        record,
        FidelityResult.record_array.repeatability,
        "repeatability (correlation)",
        "Fidelity: repeatability",
        True,
    )


@_panel(FidelityResult.record_array.frames_per_vector, FidelityResult.record_array.snr_db)
def fidelity_snr(fig, ax, record: CalibrationRecord) -> None:
    # the legend goes on the repeatability panel when there is one
    _fidelity(
        ax,
        record,
        FidelityResult.record_array.snr_db,
        "signal-to-noise ratio (dB)",
        "Fidelity: SNR",
        not drawable(record, fidelity_repeatability.__name__),
    )


# -- drift ---------------------------------------------------------------------------------------------------


def _time_axis(times_s: np.ndarray) -> tuple[np.ndarray, str]:
    span = float(np.nanmax(np.abs(times_s))) if times_s.size else 0.0
    if span >= 3 * 3600:
        return times_s / 3600, "h"
    if span >= 180:
        return times_s / 60, "min"
    return times_s, "s"


@_panel(DriftResult.record_array.times_s, DriftResult.record_array.correlations)
def drift(fig, ax, record: CalibrationRecord) -> None:
    key, stored = DriftResult.summary_key, DriftResult.record_array
    values_of = summary(record, DriftResult)
    times_s, correlations = finite(needed(record, stored.times_s), needed(record, stored.correlations))
    order = np.argsort(times_s)
    times_s, correlations = times_s[order], correlations[order]
    times, unit = _time_axis(times_s)
    ax.plot(
        times, correlations, marker="o", markersize=3.5, color=DATA, linewidth=1.3, label="correlation with baseline"
    )
    threshold = number(values_of, key.threshold)
    if threshold is not None:
        ax.axhline(threshold, color=MARK, linestyle="--", linewidth=1.1, label=f"recalibrate below {fmt(threshold)}")
        low = correlations < threshold
        if low.any():
            ax.plot(times[low], correlations[low], marker="o", markersize=5, linestyle="none", color=MARK)
    baseline = number(values_of, key.baseline_repeatability)
    if baseline is not None:
        ax.axhline(
            baseline, color=GUIDE, linestyle=":", linewidth=1.1, label=f"baseline repeatability {fmt(baseline, 4)}"
        )
    ax.legend(loc="lower left")
    ax.set_xlabel(f"time since baseline ({unit})")
    ax.set_ylabel("correlation with baseline")
    ax.margins(y=0.2)
    needs = values_of.get(key.needs_recalibration)
    status = {True: ": recalibrate", False: ": within threshold"}[needs] if isinstance(needs, bool) else ""
    ax.set_title(f"Drift of the projection{status}", **({"color": MARK} if needs is True else {}))
