"""``opu rig check RIG.toml``: the smoke test a lab runs first on a lab-built OPU.

It opens the rig, measures the dark level (light off), shows N random pictures through ``transform`` and reports
what came back: frames matched, frames lost and recovered, the frame rate achieved against the configured picture
period, the DMD-to-camera lag (from the light of on/off pictures), the dark level and how many frames saturated.
A loss is explained when the frame matching accounted for it (frames lost in transport, triggers missed, damaged frames,
plays shown again) and the driver recovered it; anything else (a row missing, a call that failed, a loss with no
cause on record) makes the check fail.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

import opu_driver
from opu_driver.calibration.dark import measure_dark
from opu_driver.errors import ConfigurationError, OpuError

__all__ = ["RigCheckReport", "run_rig_check", "format_rig_check"]

_CHUNK_PATTERNS = 256  # patterns per transform call (one progress step)


@dataclass
class RigCheckReport:
    """What ``opu rig check`` measured on a rig (``--json`` writes it as is)."""

    rig: str
    model: str
    serial_number: str
    patterns: int
    n_components: int
    picture_time_us: int
    frames_sent: int = 0
    frames_matched: int = 0
    frames_lost: int = 0
    frames_resent: int = 0
    rows_returned: int = 0
    wall_s: float = 0.0
    frame_rate_hz: float = 0.0
    configured_rate_hz: float = 0.0
    lag_frames: int | None = None
    lag_correlation: float | None = None
    dark_level_dn: float | None = None
    read_noise_dn: float | None = None
    saturated_frames: int = 0
    matching: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def run_rig_check(
    rig_file: str, *, patterns: int = 2000, n_components: int = 256, seed: int = 0, progress: bool = False
) -> RigCheckReport:
    """Run the check on the rig that ``rig_file`` describes. Raises ConfigurationError for bad arguments or a bad
    rig file (before anything opens), OpuError when the rig cannot be opened."""
    if isinstance(patterns, bool) or not isinstance(patterns, int) or patterns < 1:
        raise ConfigurationError(f"--patterns must be a positive integer, got {patterns!r}")
    with opu_driver.open(f"rig://{rig_file}") as opu:
        if not 1 <= n_components <= opu.info.camera_width * opu.info.camera_height:
            raise ConfigurationError(
                f"--components {n_components} outside 1..{opu.info.camera_width * opu.info.camera_height}"
            )
        period_us = int(opu.camera.settings.frame_time_us or 0)
        report = RigCheckReport(rig_file, opu.info.model, opu.info.serial_number, patterns, n_components, period_us)
        report.configured_rate_hz = 1e6 / period_us if period_us else 0.0
        try:
            dark = measure_dark(opu, n_components, n_frames=32)
            report.dark_level_dn, report.read_noise_dn = float(dark.level_dn), float(dark.read_noise_dn)
        except OpuError as exc:
            report.problems.append(f"dark measurement failed: {exc}")
        n_features = min(1000, opu.max_features)
        rng = np.random.default_rng(seed)
        before = opu.counters
        started = time.monotonic()
        with tqdm(total=patterns, desc="rig check", unit="pattern", disable=not progress) as bar:
            done = 0
            while done < patterns:
                n = min(_CHUNK_PATTERNS, patterns - done)
                X = rng.integers(0, 2, size=(n, n_features), dtype=np.uint8)
                try:
                    Y = opu.transform(X, n_components)
                except OpuError as exc:
                    report.problems.append(f"transform of patterns {done}..{done + n - 1} failed: {exc}")
                    break
                report.rows_returned += int(Y.shape[0])
                done += n
                bar.update(n)
        report.wall_s = time.monotonic() - started
        after = opu.counters
        report.frames_sent = after.frames_sent - before.frames_sent
        report.frames_matched = after.frames_matched - before.frames_matched
        report.frames_lost = after.frames_missing - before.frames_missing
        report.frames_resent = after.frames_resent - before.frames_resent
        report.saturated_frames = after.saturated_frames - before.saturated_frames
        report.frame_rate_hz = report.frames_sent / report.wall_s if report.wall_s > 0 else 0.0
        matching = opu.frame_matching
        report.matching = asdict(matching) if matching is not None else {}
        try:
            report.lag_frames, report.lag_correlation = _measure_lag(opu, n_features, min(n_components, 256), rng)
        except OpuError as exc:
            report.problems.append(f"lag measurement failed: {exc}")
    if report.rows_returned != patterns and not report.problems:
        report.problems.append(f"{report.rows_returned} rows came back for {patterns} patterns")
    explained = sum(report.matching.get(k, 0) for k in ("transport_lost", "triggers_missed", "incomplete"))
    if report.frames_lost and not (explained or report.matching.get("given_up")):
        report.problems.append(
            f"{report.frames_lost} frames lost with no cause on record (no id gap, time gap, "
            "damaged frame or play given up)"
        )
    if report.lag_frames is None and report.lag_correlation is not None:
        report.problems.append(
            f"the light does not follow the pictures (best correlation {report.lag_correlation:.2f})"
            ": is the laser on, the camera triggered by the DMD?"
        )
    if report.lag_frames not in (None, 0):
        report.problems.append(
            f"the camera sees each picture {report.lag_frames} frames late: check the trigger "
            "wiring (the DMD's trigger-out must start the camera's exposure)"
        )
    return report


def _measure_lag(
    opu: Any, n_features: int, n_components: int, rng: np.random.Generator, n_patterns: int = 64, max_lag: int = 8
) -> tuple[int | None, float]:
    """The lag between the pictures and the light the camera saw, from the light alone: random all-on and all-off
    pictures in one call, their brightness correlated with the on/off pattern at lags 0..max_lag. The frame
    matching assumes the camera exposes each picture as it is shown (lag 0); another lag means a miswired trigger.
    (The latency routine of the calibration measures the same on devices that show feature frames.)"""
    pattern = rng.integers(0, 2, size=n_patterns).astype(bool)
    pattern[:2] = (True, False)
    X = np.repeat(pattern[:, None], n_features, axis=1).astype(np.uint8)
    brightness = opu.transform(X, n_components).astype(np.float64).mean(axis=1)
    correlations = []
    for lag in range(max_lag + 1):
        seen, shown = brightness[lag:], pattern[: n_patterns - lag].astype(np.float64)
        ok = seen.std() > 0 and shown.std() > 0
        correlations.append(float(np.corrcoef(seen, shown)[0, 1]) if ok else 0.0)
    best = int(np.argmax(correlations))
    return (best if correlations[best] >= 0.5 else None), correlations[best]


def format_rig_check(report: RigCheckReport) -> str:
    """The report as lines of text for a terminal."""
    m = report.matching
    lines = [
        f"rig {report.rig}: {report.model} {report.serial_number}",
        f"  patterns shown:     {report.patterns} ({report.n_components} outputs each)",
        f"  frames sent:        {report.frames_sent} ({report.frames_resent} shown again)",
        f"  frames matched:     {report.frames_matched}; lost and recovered: {report.frames_lost}",
        f"  frame matching:     {m.get('plays', 0)} plays, {m.get('given_up', 0)} given up, "
        f"{m.get('transport_lost', 0)} lost in transport, {m.get('triggers_missed', 0)} triggers missed, "
        f"{m.get('incomplete', 0)} damaged",
        f"  frame rate:         {report.frame_rate_hz:,.0f} frames/s achieved, configured "
        f"{report.configured_rate_hz:,.0f} (picture time {report.picture_time_us} us)",
        f"  lag:                {report.lag_frames} frames (light-pattern correlation "
        f"{report.lag_correlation if report.lag_correlation is None else round(report.lag_correlation, 3)})",
        f"  dark level:         {_dn(report.dark_level_dn)} DN (read noise {_dn(report.read_noise_dn)} DN)",
        f"  saturated frames:   {report.saturated_frames}",
    ]
    lines += [f"  PROBLEM: {problem}" for problem in report.problems]
    lines.append("OK" if report.ok else "FAILED")
    return "\n".join(lines)


def _dn(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
