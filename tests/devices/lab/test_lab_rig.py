"""The lab rig on emulated parts: the conformance suites, the Opu's results against the emulator's ground truth,
camera faults recovered frame by frame, and rig files checked before anything opens."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import opu_driver
from opu_driver.devices import Rig, make_rig
from opu_driver.errors import ConfigurationError, UnsupportedUrlError
from tests.devices.lab.support import exact_lab_linear_matrix, write_rig
from tests.support import REPO_ROOT
from tests.support.conformance import CameraConformance, ControllerConformance, DmdConformance, RigConformance

SHIPPED_RIG = REPO_ROOT / "examples" / "rigs" / "emulated.toml"


DMD_BACKENDS = {  # test id -> the [dmd] section
    "emulated": 'backend = "emulated"',
    "fake-alp": 'backend = "fake-alp"',
    "fake-alp-trigger-in": 'backend = "fake-alp"\ntrigger_in = "rising"',
    "fake-dlpc900": 'backend = "fake-dlpc900"',
}
LIGHT_BACKENDS = ("emulated", "manual")


@pytest.fixture
def open_lab_rig(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """A factory of opened rigs of emulated parts, one backend per part named; all closed (cleanly) after."""
    opened: list[Rig] = []

    def make(dmd: str = "emulated", light: str = "emulated") -> Rig:
        section = DMD_BACKENDS[dmd]
        path = write_rig(tmp_path, dmd=section, light=f'backend = "{light}"', name=f"{dmd}-{light}.toml")
        rig = make_rig(f"rig://{path}", controller_retries=0)
        rig.open()
        opened.append(rig)
        return rig

    yield make
    for rig in opened:
        assert not rig.close()


@pytest.mark.parametrize("dmd_backend", list(DMD_BACKENDS))
class TestDmdOfALabRig(DmdConformance):
    @pytest.fixture
    def dmd(self, open_lab_rig, dmd_backend):
        return open_lab_rig(dmd=dmd_backend).dmd


class TestCameraOfALabRig(CameraConformance):
    """The emulated camera; the Aravis backend runs the same suite against Aravis's fake camera (test_aravis)."""

    @pytest.fixture
    def camera(self, open_lab_rig):
        return open_lab_rig().camera


@pytest.mark.parametrize("light_backend", LIGHT_BACKENDS)
class TestLightOfALabRig(ControllerConformance):
    @pytest.fixture
    def controller(self, open_lab_rig, light_backend):
        return open_lab_rig(light=light_backend).controller


@pytest.mark.parametrize("dmd_backend", list(DMD_BACKENDS))
class TestALabRig(RigConformance):
    @pytest.fixture
    def rig(self, open_lab_rig, dmd_backend):
        return open_lab_rig(dmd=dmd_backend)


# ------------------------------------------------------------------------------------------- through the Opu
def test_a_rig_opens_in_raw_mode_with_its_identity_and_transforms_with_speckle_statistics(tmp_path):
    with opu_driver.open(f"rig://{write_rig(tmp_path, sim='dmd=96x64&camera=64x48&cell=4&noise=0')}") as opu:
        assert opu.settings.frame_mode == "raw"
        assert (opu.info.model, opu.info.serial_number, opu.info.protocol_version) == ("test rig", "LAB-TEST", 0)
        X = np.random.default_rng(0).integers(0, 2, (200, 300), dtype=np.uint8)
        Y = opu.transform(X, 1024).astype(np.float64)
        again = opu.transform(X[:20], 1024)
        matched = opu._rig.match_counters
    # noise off: the same inputs give the same outputs (each row is its own picture's)
    np.testing.assert_array_equal(again, Y[:20])
    # fully developed speckle: intensity exponential, contrast std/mean = 1; over 200 x 1024 correlated pixels
    # (grain 2 px: about 256 independent speckles per row) the contrast is 1 within a few percent
    contrast = Y.std(axis=1) / Y.mean(axis=1)
    assert 0.8 < np.median(contrast) < 1.2
    assert matched.plays >= 1 and matched.given_up == 0


def test_transform_on_the_shipped_rig_has_the_speckle_statistics_the_demo_checks():
    """``opu demo``'s statistics on the shipped rig (1,000 features as its 6x6 macro-pixels, 4,096 outputs).

    Tolerances from the speckle: the outputs hold K = n_outputs / grain^2 (1,024) independent speckle grains of
    one medium, and every statistic over them carries that medium's own fluctuation, of order 1/sqrt(K):
    - contrast: one row's std/mean of K exponential values has sd sqrt(kurtosis - 1) / (2 sqrt(K)) = 1.41/sqrt(K)
      (the median over rows is tighter);
    - proportionality: the mean at a share p of features on is (p + beta p^2) times the line's, beta the medium's
      cross-term over K grains (sd 1/sqrt(K)); after the line's fit the largest departure is 0.58 |beta|: 4 sd;
    - pair correlation: over ten media (seeds 0-9) its sd was 0.29/sqrt(K) at K = 256 and 1,024: 4 sd.
    """
    from opu_tools.demo import speckle_statistics

    rng = np.random.default_rng(0)
    with opu_driver.open(f"rig://{SHIPPED_RIG}", layout="macro") as opu:
        opu.set_layout("macro", 6)
        X = rng.integers(0, 2, (500, 1000), dtype=np.uint8)
        Y = opu.transform(X, 4096)
        stats = speckle_statistics(opu, X, Y, rng)
        k = 4096 / opu.emulator.ground_truth.grain_px**2
    assert abs(stats.contrast - 1) <= 1.41 / np.sqrt(k)
    departure = max(abs(m / p - 1) for m, p in zip(stats.mean_signal_dn, stats.proportional_dn, strict=True))
    assert departure <= 4 * 0.58 / np.sqrt(k)
    assert abs(stats.pair_correlation - stats.squared_overlap) <= 4 * 0.29 / np.sqrt(k)
    assert stats.repeat_correlation >= 0.99 and stats.saturated_fraction == 0.0
    assert stats.dark_level_dn > 0


@pytest.mark.slow
def test_linear_transform_correlates_with_the_exact_matrix_on_the_shipped_rig():
    """1,000 -> 4,096, four-frame, ternary, with the emulator's default (realistic) noise."""
    n_features, n_out = 1000, 4096
    E = np.random.default_rng(0).choice([-1, 0, 1], size=(200, n_features), p=[0.2, 0.6, 0.2]).astype(np.float32)
    with opu_driver.open(f"rig://{SHIPPED_RIG}", exposure_us=150) as opu:  # the reference below full scale
        Y = opu.linear_transform(E, n_out).astype(np.float64)
        B = exact_lab_linear_matrix(opu, n_features)[:, :n_out]
        mask = opu.linear_mode.calibration(n_features, n_out).mask
        zeroed = opu.linear_mode.saturated_outputs
    assert zeroed == 0 and mask.mean() > 0.9
    assert (Y[:, ~mask] == 0).all()
    rho = np.corrcoef(Y[:, mask].ravel(), (E @ B)[:, mask].ravel())[0, 1]
    assert rho >= 0.99, rho


@pytest.mark.parametrize(
    "faults",
    [
        "{trigger_miss = 0.02}",
        "{transport_loss = 0.03}",
        "{incomplete = 0.03}",
        "{trigger_miss = 0.01, transport_loss = 0.01, incomplete = 0.01}",
    ],
)
def test_camera_faults_cost_frames_never_rows(tmp_path, faults):
    sim = "dmd=96x64&camera=64x48&cell=4&noise=0&seed=2"
    X = np.random.default_rng(1).integers(0, 2, (400, 200), dtype=np.uint8)
    with opu_driver.open(f"rig://{write_rig(tmp_path, sim=sim, name='clean.toml')}") as opu:
        clean = opu.transform(X, 300)
    camera = f'backend = "emulated"\nfaults = {faults}'
    with opu_driver.open(f"rig://{write_rig(tmp_path, sim=sim, camera=camera)}", retries=4) as opu:
        faulty = opu.transform(X, 300)
        matched, counters = opu._rig.match_counters, opu.counters
    np.testing.assert_array_equal(faulty, clean)
    lost = matched.transport_lost + matched.triggers_missed + matched.incomplete
    assert lost + matched.given_up > 0  # the faults fired
    assert counters.frames_sent > 400


def test_a_dmd_and_camera_region_restrict_what_the_opu_sees(tmp_path):
    dmd = 'backend = "emulated"\nregion = [16, 8, 64, 48]'
    camera = 'backend = "emulated"\nregion = [8, 4, 48, 40]'
    with opu_driver.open(f"rig://{write_rig(tmp_path, dmd=dmd, camera=camera)}") as opu:
        assert (opu.info.dmd_width, opu.info.dmd_height, opu.info.camera_width, opu.info.camera_height) == (
            64,
            48,
            48,
            40,
        )
        Y = opu.transform(np.ones((2, 50), dtype=np.uint8), 100)
        world_roi = opu.emulator.camera_roi()
    assert Y.shape == (2, 100) and Y.mean() > 0
    x, y, w, h = world_roi  # the camera's region on the sensor: inside the configured one
    assert 8 <= x and 4 <= y and x + w <= 56 and y + h <= 44


# ----------------------------------------------------------------------------------------------- rig files
@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('[dmd]\nbackend = "emulated"\n[camera]\nbackend = "emulated"\n', "no \\[light\\] section"),
        ('[dmd]\nbackend = "vialux"\n', "backend = 'vialux'"),
        ('[dmd]\nbackend = "alp"\n[camera]\nbackend = "emulated"\n[light]\nbackend = "manual"\n', "needs library"),
        ("[rig]\nwho = 1\n", "unknown key 'who'"),
        ('[rig]\npicture_time_us = "500"\n', "must be an integer"),
        ("[rig]\npicture_time_us = 0\n", "outside"),
        (
            '[dmd]\nbackend = "fake-alp"\ntrigger_in = "both"\n[camera]\nbackend = "emulated"\n'
            '[light]\nbackend = "manual"\n[emulator]\nsim = "dmd=96x64&camera=64x48&cell=4"\n',
            "\\[dmd\\]: trigger_in must be",
        ),
        ("[mirror]\n", "unknown section"),
        ('[dmd]\nbackend = "emulated"\nregion = [0, 0, 0, 4]\n', "region"),
        ('[dmd]\nbackend = "emulated"\nlibrary = "x"\n', "unknown key 'library'"),
        ("[dmd\n", "not valid TOML"),
        (
            '[dmd]\nbackend = "alp"\nlibrary = "alp.so"\n[camera]\nbackend = "aravis"\n[light]\nbackend = "manual"\n'
            '[emulator]\nsim = "seed=1"\n',
            "no emulated part",
        ),
    ],
)
def test_a_bad_rig_file_is_refused_with_the_key_before_anything_opens(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ConfigurationError, match=message):
        opu_driver.open(f"rig://{path}")


def test_rig_urls_name_an_existing_file_and_take_no_options(tmp_path):
    with pytest.raises(ConfigurationError, match="not found"):
        opu_driver.open(f"rig://{tmp_path}/missing.toml")
    with pytest.raises(ConfigurationError, match="no options"):
        opu_driver.open(f"rig://{write_rig(tmp_path)}?seed=1")
    with pytest.raises(UnsupportedUrlError):
        opu_driver.open(f"rig://{write_rig(tmp_path, sim='dmd=1x1')}")


@pytest.mark.parametrize("dmd", ["fake-dlpc900", "fake-alp", "fake-alp-trigger-in"])
def test_every_dmd_backend_shows_the_same_pictures_as_the_plain_emulated_dmd(tmp_path, dmd):
    """Noise off, same optics: a backend's whole path (its device format, upload and play) must give the very
    results of the emulated DMD, picture for picture."""
    sim = "dmd=96x64&camera=64x48&cell=4&noise=0&seed=4"
    X = np.random.default_rng(3).integers(0, 2, (60, 300), dtype=np.uint8)
    with opu_driver.open(f"rig://{write_rig(tmp_path, sim=sim, name='plain.toml')}") as opu:
        plain = opu.transform(X, 500)
    with opu_driver.open(f"rig://{write_rig(tmp_path, sim=sim, dmd=DMD_BACKENDS[dmd])}") as opu:
        shown = opu.transform(X, 500)
        assert opu._rig.match_counters.given_up == 0
    np.testing.assert_array_equal(shown, plain)


# ------------------------------------------------------------------------------------------------ opu rig check
def test_rig_check_passes_on_the_shipped_rig_and_reports_as_json(capsys):
    from opu_tools.cli import main

    assert main(["rig", "check", str(SHIPPED_RIG), "--patterns", "300", "--json"]) == 0
    import json

    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["rows_returned"] == 300 and report["frames_matched"] >= 300
    assert report["lag_frames"] == 0 and report["dark_level_dn"] > 0 and report["matching"]["given_up"] == 0


def test_rig_check_recovers_camera_faults_and_fails_a_camera_the_dmd_does_not_trigger(tmp_path, capsys):
    from opu_tools.cli import main

    faulty = write_rig(tmp_path, camera='backend = "emulated"\nfaults = {transport_loss = 0.02, trigger_miss = 0.01}')
    assert main(["rig", "check", str(faulty), "--patterns", "300"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "lost in transport" in out
    unwired = write_rig(tmp_path, camera='backend = "emulated"\ntrigger_line = "Line0"', name="unwired.toml")
    assert main(["rig", "check", str(unwired), "--patterns", "40"]) != 0
