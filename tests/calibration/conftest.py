"""One calibrated record shared by the tests that need a whole calibration: made once per session, by the command
line (``opu calibrate all``), on the small emulator with strong light (so the exposure routine has work to do)."""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path

import pytest

from opu_driver.calibration import CalibrationPlan, CalibrationRecord, CalibrationStore
from tests.support import small_sim

CALIBRATED_SIM = small_sim("seed=21&signal_e=6000")
"""Strong light (2.4 times the default signal): the device's default exposure saturates the brightest frames."""

CALIBRATED_PLAN = CalibrationPlan(n_features=64, n_components=512, dark_frames=16)
"""The sizes the shared record is taken for (the command line's flags below say the same)."""


@dataclass(frozen=True)
class Calibrated:
    """What ``opu calibrate all`` left: its store, the record, what it printed and the report it drew."""

    store_dir: Path
    record: CalibrationRecord
    printed: str
    report: Path


@pytest.fixture(scope="session")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> Calibrated:
    from opu_tools.cli import main

    root = tmp_path_factory.mktemp("calibrated")
    store_dir, report = root / "store", root / "report.png"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(
            [
                "calibrate",
                "all",
                "--url",
                CALIBRATED_SIM,
                "--out",
                str(store_dir),
                "--n-features",
                str(CALIBRATED_PLAN.n_features),
                "--n-components",
                str(CALIBRATED_PLAN.n_components),
                "--frames",
                str(CALIBRATED_PLAN.dark_frames),
                "--pixel-format",
                "MONO12",
                "--report",
                str(report),
                "--no-progress",
            ]
        )
    assert status == 0, out.getvalue()
    records = CalibrationStore(store_dir).list()
    assert len(records) == 1
    return Calibrated(store_dir, CalibrationStore(store_dir).load(records[0]), out.getvalue(), report)
