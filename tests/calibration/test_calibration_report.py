"""The calibration report draws one readable PNG of whatever a calibration record holds."""

from __future__ import annotations

import builtins
import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from opu_driver.calibration.report import (
    PANELS,
    ReportUnavailableError,
    check_report_path,
    figure_size_in,
    panels_for,
    render_report,
)
from opu_driver.calibration.store import CalibrationRecord, CalibrationStore
from opu_driver.errors import InvalidInputError, LibraryLoadError, OpuError
from tests.support import small_sim

image = pytest.importorskip("matplotlib.image")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def synthetic_record(seed: int = 0) -> CalibrationRecord:
    """A record with every routine of the shared spec, arrays shaped as the spec says, plausible values.

    The region is 63 x 48 for 3,000 outputs (the camera of tests' small emulator), so the last row of every map
    is partly NaN padding.
    """
    rng = np.random.default_rng(seed)
    n_out, width, height = 3000, 63, 48
    roi = {"roi_x": 0, "roi_y": 0, "roi_width": width, "roi_height": height}
    results: dict = {}
    arrays: dict = {}

    hot = np.zeros(n_out, dtype=bool)
    hot[rng.choice(n_out, 30, replace=False)] = True
    mean_dn = (9.0 + rng.normal(0, 0.6, n_out) + hot * rng.uniform(15, 60, n_out)).astype(np.float32)
    results["dark"] = {
        "n_frames": 64,
        "level_dn": 9.0,
        "fixed_pattern_dn": 0.6,
        "read_noise_dn": 1.2,
        "hot_pixels": int(hot.sum()),
        "method": "shutter",
        **roi,
    }
    arrays |= {"dark/mean_dn": mean_dn, "dark/hot_pixels": hot}

    exposure_us = np.array([25, 50, 100, 200, 400, 800, 1600], dtype=np.float64)
    top_dn = np.minimum(255.0, 12 + 0.55 * exposure_us)
    saturated = np.clip((exposure_us - 420) / 4000, 0, None)
    results["exposure"] = {
        "exposure_us": 400,
        "gain": 1.0,
        "saturated_fraction": 0.0,
        "max_saturated_fraction": 0.001,
        "top_dn": 232.0,
        "full_scale_dn": 255,
        "target_dn": 230,
    }
    arrays |= {
        "exposure/sweep_exposure_us": exposure_us,
        "exposure/sweep_gain": np.ones(7),
        "exposure/sweep_top_dn": top_dn,
        "exposure/sweep_saturated_fraction": saturated,
    }

    correlations = rng.normal(0, 0.08, 17).astype(np.float32)
    correlations[2] = 0.98
    results["latency"] = {
        "lag_frames": 2,
        "header_lag_frames": 2,
        "peak_correlation": 0.98,
        "second_correlation": float(np.sort(correlations)[-2]),
        "n_frames": 64,
    }
    arrays["latency/correlations"] = correlations

    lags = np.arange(9, dtype=np.float64)
    grid = np.arange(-8, 9)
    r2 = grid[:, None] ** 2 + grid[None, :] ** 2
    auto_2d = np.exp(-r2 / 2.0**2) + rng.normal(0, 0.01, r2.shape)
    auto_2d[8, 8] = 1.0
    selection = np.flatnonzero((np.arange(n_out) % width) % 3 == 0)
    results["roi"] = {
        "grain_px": 2.0,
        "stride_px": 3,
        "n_selected": int(selection.size),
        "dropped_hot": 30,
        "dropped_dead": 0,
        "dropped_saturated": 0,
        **roi,
    }
    arrays |= {
        "roi/autocorrelation_lag_px": lags,
        "roi/autocorrelation": np.exp(-(lags**2) / 4.0),
        "roi/autocorrelation_2d": auto_2d.astype(np.float32),
        "roi/selection": selection.astype(np.int64),
        "roi/mean_intensity_dn": rng.exponential(80, n_out).astype(np.float32),
    }

    reference = rng.exponential(60, n_out).astype(np.float32)
    mask = (reference >= 0.1 * np.median(reference)) & (reference < 240)
    results["reference"] = {
        "n_features": 64,
        "n_components": n_out,
        "usable_fraction": round(float(mask.mean()), 4),
        "entry_variance": 3.2,
        "n_frames": 32,
        **roi,
    }
    arrays |= {"reference/reference_dn": reference, "reference/dark_dn": mean_dn, "reference/mask": mask}

    predicted = rng.normal(0, 1, 5000)
    intensity = rng.exponential(60, 5000)
    results["matrix"] = {
        "n_features": 64,
        "n_components": n_out,
        "probes": "hadamard",
        "scheme": "four_frame",
        "n_frames": 256,
        "relative_error": 0.05,
        "holdout_correlation": 0.9987,
        "nonlinear_correlation": 0.995,
        "nonlinear_relative_error": 0.09,
    }
    arrays |= {
        "matrix/matrix": rng.normal(0, 1, (64, n_out)).astype(np.float32),
        "matrix/holdout_predicted": predicted.astype(np.float32),
        "matrix/holdout_measured": (predicted + rng.normal(0, 0.05, 5000)).astype(np.float32),
        "matrix/nonlinear_predicted": intensity.astype(np.float32),
        "matrix/nonlinear_measured": (intensity + rng.normal(0, 1, 5000) * np.sqrt(intensity)).astype(np.float32),
    }

    labels = ["four_frame/ternary", "four_frame/8bit", "two_frame/ternary", "two_frame/8bit"]
    repeatability = [0.995, 0.9992, 0.986, 0.997]
    snr = [23.0, 31.0, 18.5, 25.2]
    results["fidelity"] = {
        "n_features": 64,
        "n_components": n_out,
        "n_vectors": 32,
        "rows": ",".join(labels),
        **{f"{label}:repeatability": r for label, r in zip(labels, repeatability, strict=True)},
    }
    arrays |= {
        "fidelity/frames_per_vector": np.array([4, 32, 2, 16]),
        "fidelity/repeatability": np.array(repeatability),
        "fidelity/linearity_error": np.array([0.01, 0.008, 0.04, 0.03]),
        "fidelity/snr_db": np.array(snr),
    }

    times_s = np.arange(0, 3601, 300, dtype=np.float64)
    drift = 0.998 * np.exp(-times_s / 60000) - 0.012 * (times_s / 3600) ** 2 + rng.normal(0, 0.001, times_s.size)
    results["drift"] = {
        "n_features": 64,
        "n_components": n_out,
        "scheme": "four_frame",
        "n_probes": 16,
        "threshold": 0.95,
        "baseline_repeatability": 0.998,
        "last_correlation": round(float(drift[-1]), 4),
        "needs_recalibration": bool(drift[-1] < 0.95),
    }
    arrays |= {
        "drift/times_s": times_s,
        "drift/correlations": drift,
        "drift/probes": rng.integers(-1, 2, (16, 64)).astype(np.int8),
        "drift/baseline": rng.normal(0, 1, (16, n_out)).astype(np.float32),
    }

    return CalibrationRecord(
        model="OPU-1",
        serial_number="SIM-00000003",
        firmware_version="1.0.0",
        settings={"exposure_us": 400, "gain": 1.0, "pixel_format": "MONO8", "n_components": n_out},
        created=datetime(2024, 5, 17, 14, 3, 22, tzinfo=timezone.utc),
        results=results,
        arrays=arrays,
    )


def _dark_only(record: CalibrationRecord) -> CalibrationRecord:
    return CalibrationRecord(
        record.model,
        record.serial_number,
        record.firmware_version,
        dict(record.settings),
        record.created,
        {"dark": record.results["dark"]},
        {k: v for k, v in record.arrays.items() if k.startswith("dark/")},
    )


@pytest.mark.slow
def test_full_record_renders_every_panel_as_a_png(tmp_path):
    record = synthetic_record()
    assert panels_for(record) == list(PANELS)
    path = render_report(record, tmp_path / "report.png", dpi=100)
    assert path == tmp_path / "report.png"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 100_000  # a page of twelve plots (about 400 KB at 100 dpi), not an empty canvas
    pixels = image.imread(path)
    width_in, height_in = figure_size_in(len(PANELS))
    assert (width_in, height_in) == (13.5, 15.0)  # 3 columns x 4 rows of 4.5 x 3.5 in, under a 1 in header
    assert pixels.shape[:2] == (1500, 1350)
    assert pixels[..., :3].std() > 0.05  # not uniform
    # nothing but the report is left in the directory (the temporary file was renamed over it)
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]


@pytest.mark.slow
def test_a_dark_only_record_draws_only_the_dark_panels_at_the_dpi_asked(tmp_path):
    import matplotlib

    record = _dark_only(synthetic_record())
    assert panels_for(record) == ["dark_map", "dark_histogram"]
    width_in, height_in = figure_size_in(2)
    full_w, full_h = figure_size_in(len(PANELS))
    assert width_in < full_w and height_in < full_h
    backend, rc_before = matplotlib.get_backend(), dict(matplotlib.rcParams)
    had_pyplot = "matplotlib.pyplot" in sys.modules
    for dpi in (50, 100):
        path = render_report(record, tmp_path / f"dark{dpi}.png", dpi=dpi, title="Dark frame, bench 2")
        pixels = image.imread(path)
        assert pixels.shape[:2] == (round(height_in * dpi), round(width_in * dpi))
        assert pixels[..., :3].std() > 0.05
    # the user's backend, style and pyplot state are left alone
    assert matplotlib.get_backend() == backend and dict(matplotlib.rcParams) == rc_before
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_panels_need_their_arrays_not_just_a_results_entry():
    record = synthetic_record()
    del record.arrays["fidelity/snr_db"], record.arrays["roi/autocorrelation_2d"]
    record.arrays["drift/times_s"] = np.zeros(0)  # empty: nothing to draw
    panels = panels_for(record)
    assert "fidelity_snr" not in panels and "speckle_map" not in panels and "drift" not in panels
    assert "fidelity_repeatability" in panels and "speckle_profile" in panels


def test_an_empty_record_or_bad_arguments_are_refused(tmp_path):
    empty = CalibrationRecord("OPU-1", "SIM-1", "1.0.0", results={"exposure": {"exposure_us": 400}})
    with pytest.raises(InvalidInputError, match="nothing to plot"):
        render_report(empty, tmp_path / "r.png")
    record = _dark_only(synthetic_record())
    for kwargs in ({"dpi": 0}, {"dpi": 96.0}, {"title": 3}):
        with pytest.raises(InvalidInputError):
            render_report(record, tmp_path / "r.png", **kwargs)
    with pytest.raises(InvalidInputError, match="suffix"):
        render_report(record, tmp_path / "r.jpeg")
    (tmp_path / "a-file").write_text("")
    for path in (tmp_path / "a-file" / "r.png", tmp_path / "a-file" / "sub" / "r.png"):
        with pytest.raises(InvalidInputError, match="is not a directory"):
            render_report(record, path)  # refused before drawing: a folder cannot be made under a file
    with pytest.raises(InvalidInputError, match="does not exist"):
        check_report_path(tmp_path / "missing" / "r.png")  # without create_folder the folder must exist
    (tmp_path / "a-file").unlink()
    with pytest.raises(InvalidInputError):
        panels_for({"dark": {}})
    assert list(tmp_path.iterdir()) == []


def test_missing_matplotlib_is_a_typed_error_naming_the_extra(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)  # "import matplotlib..." now raises ImportError
    with pytest.raises(ReportUnavailableError, match=r'pip install "opu-driver\[plot\]"') as info:
        render_report(synthetic_record(), tmp_path / "r.png")
    assert isinstance(info.value, (OpuError, LibraryLoadError, ImportError))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_record_with_bare_arrays_nan_and_odd_shapes_still_renders(tmp_path):
    # Summaries are optional annotations: without them (no roi_width, no chosen points, no thresholds) every panel
    # still draws; NaN entries are skipped, an all-NaN array counts as absent, and mismatched masks are ignored.
    record = synthetic_record(seed=1)
    record.results = {routine: {} for routine in record.results}
    record.arrays["dark/mean_dn"][::7] = np.nan
    record.arrays["dark/hot_pixels"] = np.zeros(5, dtype=bool)
    record.arrays["matrix/holdout_measured"][:100] = np.nan
    record.arrays["drift/correlations"][:] = np.nan
    record.arrays["roi/autocorrelation_2d"] = record.arrays["roi/autocorrelation_2d"].ravel()
    panels = panels_for(record)
    assert panels == [p for p in PANELS if p != "drift"]
    pixels = image.imread(render_report(record, tmp_path / "bare.png", dpi=40))
    width_in, height_in = figure_size_in(len(panels))
    assert pixels.shape[:2] == (round(height_in * 40), round(width_in * 40))


def test_a_failed_write_leaves_the_old_report_and_no_temporary_file(tmp_path, monkeypatch):
    target = tmp_path / "report.png"
    target.write_bytes(b"old report")
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        render_report(_dark_only(synthetic_record()), target)
    assert target.read_bytes() == b"old report"
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]


def test_a_real_record_from_dark_and_latency_renders_and_survives_the_store(tmp_path):
    import opu_driver
    from opu_driver.calibration import measure_dark, measure_latency

    n_out = 64 * 48 - 100  # not a whole number of rows: the last row of the map is NaN padding
    with opu_driver.open(small_sim("seed=3&hot=0.005")) as opu:
        dark = measure_dark(opu, n_out, n_frames=16)
        latency = measure_latency(opu, n_frames=32, max_lag_frames=8)
        info, camera = opu.info, opu.camera.settings
    record = CalibrationRecord(
        model=info.model,
        serial_number=info.serial_number,
        firmware_version=info.firmware_version,
        settings={
            "exposure_us": camera.exposure_us,
            "gain": camera.gain,
            "pixel_format": camera.pixel_format.name,
            "n_components": n_out,
        },
        results={"dark": dark.summary(), "latency": latency.summary()},
        arrays={
            **{f"dark/{k}": v for k, v in dark.arrays().items()},
            **{f"latency/{k}": v for k, v in latency.arrays().items()},
        },
    )
    loaded = CalibrationStore(tmp_path / "store").load(CalibrationStore(tmp_path / "store").save(record))
    assert panels_for(loaded) == ["dark_map", "dark_histogram", "latency"]
    path = render_report(loaded, tmp_path / "real.png", dpi=60)
    pixels = image.imread(path)
    width_in, height_in = figure_size_in(3)
    assert pixels.shape[:2] == (round(height_in * 60), round(width_in * 60))
    assert pixels[..., :3].std() > 0.05


@pytest.mark.slow
def test_the_format_follows_the_suffix(tmp_path):
    record = _dark_only(synthetic_record())
    assert render_report(record, tmp_path / "r.pdf").read_bytes().startswith(b"%PDF")


def test_the_report_does_not_import_matplotlib_until_drawing(monkeypatch):
    # panels_for needs no plotting library: a CLI can check a record before asking for the extra.
    real_import = builtins.__import__

    def guarded(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise AssertionError("matplotlib imported by panels_for")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", guarded)
    assert panels_for(synthetic_record()) == list(PANELS)
