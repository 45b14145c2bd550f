"""The report's page: which panels a record gets, their grid under a header, the figure, and writing it safely.

matplotlib is imported only in :func:`render_report`, through its object API and the Agg canvas, so the caller's
pyplot state and backend are left alone and choosing panels or checking a path needs no plotting library.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import secrets
import textwrap
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ...errors import InvalidInputError, LibraryLoadError
from ...validation import check_int
from .._checks import directory_problem
from ..dark import DarkResult
from ..drift import DriftResult
from ..exposure import ExposureResult
from ..latency import LatencyResult
from ..matrix import MatrixResult
from ..reference import ReferenceResult
from ..result import CalibrationResult
from ..roi import RoiResult
from ..store import CalibrationRecord
from .data import number, summary
from .panels import DRAW, PANELS, drawable
from .style import GUIDE, RC_PARAMS

__all__ = ["ReportUnavailableError", "panels_for", "figure_size_in", "check_report_path", "render_report"]

_log = logging.getLogger(__name__)

# Layout of the page, in inches: panels on a grid of at most _MAX_COLUMNS columns, under a header. Half inches
# keep the pixel size exact (figure inches x dpi) for even dpi.
_PANEL_W_IN = 4.5
_PANEL_H_IN = 3.5
_MAX_COLUMNS = 3
_HEADER_IN = 1.0
_FORMATS = ("png", "pdf", "svg")


class ReportUnavailableError(LibraryLoadError):
    """The report needs matplotlib, the optional ``plot`` extra, which is not installed."""


def panels_for(record: CalibrationRecord) -> list[str]:
    """Names of the panels :func:`render_report` draws for ``record``, in order (keys of ``PANELS``).

    A panel is drawn when the record holds every array it needs, numeric with at least one finite value;
    routines the record lacks are skipped. The scalar results only annotate (a missing one leaves its mark out).
    """
    if not isinstance(record, CalibrationRecord):
        raise InvalidInputError(f"record must be a CalibrationRecord, got {type(record).__name__}")
    return [name for name in PANELS if drawable(record, name)]


def _grid(n_panels: int) -> tuple[int, int]:
    columns = 2 if n_panels in (2, 4) else min(_MAX_COLUMNS, n_panels)
    return -(-n_panels // columns), columns


def figure_size_in(n_panels: int) -> tuple[float, float]:
    """Width and height in inches of a report of ``n_panels`` panels (the PNG is that times the dpi)."""
    rows, columns = _grid(check_int(n_panels, "n_panels", low=1))
    # Never narrower than two panels: the header must fit on one page width.
    return max(columns, 2) * _PANEL_W_IN, rows * _PANEL_H_IN + _HEADER_IN


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
    known = {
        "exposure_us": "exposure {} µs",
        "frame_time_us": "frame time {} µs",
        "gain": "gain {}",
        "pixel_format": "{}",
        "laser_power_mw": "laser {} mW",
        "n_components": "{} outputs",
    }
    parts = [template.format(settings[key]) for key, template in known.items() if key in settings]
    parts += [f"{key} {value}" for key, value in settings.items() if key not in known]
    return " · ".join(parts) if parts else "settings not recorded"


def _highlights(record: CalibrationRecord) -> str:
    """The few numbers a reader looks for first, one phrase per routine present."""
    phrases = []

    def add(result: type[CalibrationResult], template: str, *keys: str) -> None:
        values_of = summary(record, result)
        values = [number(values_of, key) for key in keys]
        if all(v is not None for v in values):
            phrases.append(template.format(*values))

    add(
        DarkResult,
        "dark {:.3g} DN, read noise {:.3g} DN",
        DarkResult.summary_key.level_dn,
        DarkResult.summary_key.read_noise_dn,
    )
    add(ExposureResult, "exposure {:.4g} µs", ExposureResult.summary_key.exposure_us)
    add(LatencyResult, "lag {:.0f} frames", LatencyResult.summary_key.lag_frames)
    add(RoiResult, "grain {:.3g} px", RoiResult.summary_key.grain_px)
    if ReferenceResult.routine in record.results:
        add(ReferenceResult, "reference {:.1%} usable", ReferenceResult.summary_key.usable_fraction)
    add(MatrixResult, "matrix r = {:.4f}", MatrixResult.summary_key.holdout_correlation)
    add(DriftResult, "drift r = {:.4f}", DriftResult.summary_key.last_correlation)
    return " · ".join(phrases)


def _draw_header(fig, record: CalibrationRecord, title: str | None, width_in: float, height_in: float) -> None:
    top = 1 - 0.12 / height_in
    line = 0.21 / height_in
    fig.text(
        0.012,
        top,
        title or f"OPU calibration report: {record.model}, serial {record.serial_number}",
        fontsize=13.5,
        fontweight="bold",
        va="top",
        ha="left",
    )
    details = (
        ("" if title is None else f"{record.model} · serial {record.serial_number} · ")
        + f"firmware {record.firmware_version} · {_settings_text(record.settings)} · "
        f"calibrated {_created_utc(record.created)}"
    )
    highlights = _highlights(record)
    chars = max(40, int(width_in * 72 / (9.0 * 0.52)))
    lines = textwrap.wrap(details, chars)[:2] + (textwrap.wrap(highlights, chars)[:1] if highlights else [])
    for i, text in enumerate(lines):
        fig.text(
            0.012,
            top - 0.30 / height_in - i * line,
            text,
            fontsize=9.0,
            va="top",
            ha="left",
            color="#222222" if i < len(lines) - (1 if highlights else 0) else GUIDE,
        )


# -- the report ----------------------------------------------------------------------------------------------


def check_report_path(path: str | os.PathLike[str], *, create_folder: bool = False) -> Path:
    """Refuse a report path that cannot be written, or a missing matplotlib, before hours of calibration.

    The report's folder must exist and be writable; with ``create_folder`` it may be missing when it can be
    created (its nearest existing ancestor is a writable directory), as :func:`render_report` creates it.

    Raises:
        InvalidInputError: the suffix is not .png, .pdf or .svg; the path is a directory; its folder does not
            exist (unless ``create_folder``), is not a directory or cannot be written in.
        ReportUnavailableError: matplotlib (the ``plot`` extra) is not installed.
    """
    target = Path(path)
    if target.suffix.lower().lstrip(".") not in _FORMATS:
        raise InvalidInputError(f"report path {str(target)!r}: use a .png, .pdf or .svg suffix")
    if target.is_dir():
        raise InvalidInputError(f"report path {str(target)!r} is a directory")
    problem = directory_problem(target.parent, create=create_folder)
    if problem is not None:
        raise InvalidInputError(f"report path {str(target)!r}: {problem}")
    try:
        spec = importlib.util.find_spec("matplotlib")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ReportUnavailableError('the calibration report needs matplotlib: pip install "opu-driver[plot]"')
    return target


def render_report(
    record: CalibrationRecord, path: str | os.PathLike[str], *, title: str | None = None, dpi: int = 120
) -> Path:
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
        InvalidInputError: not a record, nothing in it to plot, a bad dpi, an unknown suffix, or a folder that
            cannot be created or written in (see :func:`check_report_path`; a missing folder is created).
        ReportUnavailableError: matplotlib (the ``plot`` extra) is not installed.
    """
    panels = panels_for(record)
    if not panels:
        raise InvalidInputError(
            f"the record holds nothing to plot (routines {sorted(record.results) or 'none'}); the report draws "
            f"arrays of: {', '.join(sorted({a.split('/')[0] for needs in PANELS.values() for a in needs}))}"
        )
    dpi = check_int(dpi, "dpi", low=20, high=1200)
    if title is not None and not isinstance(title, str):
        raise InvalidInputError(f"title must be a string or None, got {type(title).__name__}")
    target = check_report_path(path, create_folder=True)
    fmt = target.suffix.lower().lstrip(".")
    try:
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.layout_engine import ConstrainedLayoutEngine
    except ImportError as exc:
        raise ReportUnavailableError('the calibration report needs matplotlib: pip install "opu-driver[plot]"') from exc

    width_in, height_in = figure_size_in(len(panels))
    rows, columns = _grid(len(panels))
    with matplotlib.rc_context(RC_PARAMS):
        fig = Figure(figsize=(width_in, height_in), dpi=dpi)
        FigureCanvasAgg(fig)
        header = _HEADER_IN / height_in
        fig.set_layout_engine(
            ConstrainedLayoutEngine(rect=(0, 0, 1, 1 - header), w_pad=0.06, h_pad=0.06, wspace=0.04, hspace=0.04)
        )
        grid = fig.add_gridspec(rows, columns)
        for i, name in enumerate(panels):
            ax = fig.add_subplot(grid[i // columns, i % columns])
            DRAW[name](fig, ax, record)
        _draw_header(fig, record, title, width_in, height_in)
        target.parent.mkdir(parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(temp, "wb") as f:
                fig.savefig(
                    f,
                    format=fmt,
                    dpi=dpi,
                    metadata={"Title": title or "OPU calibration report"}
                    if fmt != "png"
                    else {"Software": "opu_driver calibration report"},
                )
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
    _log.info(
        "calibration report of %s %s (%d panels: %s) written to %s",
        record.model,
        record.serial_number,
        len(panels),
        ", ".join(panels),
        target,
    )
    return target
