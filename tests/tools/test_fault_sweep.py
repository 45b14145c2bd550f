"""The fault sweep (``opu faults``) on a small slice: what must hold now and always.

A faulty call either returns exactly the fault-free result of the same seed and inputs (``noise=0``: bit for bit)
or raises a typed ``opu_driver`` error after the driver's retries; it never returns a wrong, lost or extra row.
The slice runs both operations under crc and drop at 2 % on batches of 300 (about a second), checks the table and
the JSON, and that the sweep does catch a wrong row and an untyped exception (so it can fail).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from opu_driver.errors import ConfigurationError
from opu_tools import faults
from opu_tools.cli import main
from opu_tools.faults import SweepConfig, SweepReport, format_rate, format_table, parse_rate

SLICE = ["--kinds", "crc,drop", "--rates", "2%", "--batches", "300", "--seeds", "1", "--no-progress"]
SLICE_CELLS = 4  # 2 operations x 2 kinds x 1 rate x 1 batch


def _sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, list[str], dict]:
    out = tmp_path / "sweep.json"
    code = main(["faults", *args, "--json", str(out)])
    lines = capsys.readouterr().out.splitlines()
    return code, lines, json.loads(out.read_text(encoding="utf-8"))


def _cell_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith(("| transform |", "| linear_transform |"))]


def test_a_faulty_call_returns_the_fault_free_result_or_a_typed_error(tmp_path, capsys) -> None:
    code, lines, data = _sweep(tmp_path, capsys, SLICE)
    report = SweepReport.from_dict(data)

    assert code == 0, "\n".join(lines)
    assert data["ok"] is True
    assert len(report.cells) == SLICE_CELLS
    assert {(c.operation, c.kind) for c in report.cells} == {
        (op, kind) for op in faults.OPERATIONS for kind in ("crc", "drop")
    }
    for cell in report.cells:
        name = f"{cell.operation} {cell.kind}"
        assert (cell.rate, cell.batch, cell.calls) == (0.02, 300, 1), name
        assert cell.wrong_rows == cell.lost_rows == cell.extra_rows == 0, name
        assert not cell.unexpected, f"{name}: {cell.first_unexpected}"
        assert cell.rows_checked == 300 * (cell.calls - cell.failed_calls), name
        assert sum(cell.errors.values()) == cell.failed_calls, name
        assert cell.faults_injected >= 2, f"{name}: the fault must fire for the cell to mean anything"
        assert cell.clean_frames_sent > 0 and cell.frames_sent > 0 and cell.clean_wall_s > 0, name
        # Frame-level recovery: a spoilt or lost frame costs that frame, so at 2% no call of 300 rows fails.
        assert cell.failed_calls == 0, f"{name}: {cell.errors}"

    # the table: a header, its rule, one line per cell in the report's order, then the summary
    table = format_table(report)
    assert lines[: len(table.splitlines())] == table.splitlines()
    cell_lines = _cell_lines(lines)
    assert len(cell_lines) == SLICE_CELLS
    for line, cell in zip(cell_lines, report.cells, strict=True):
        columns = [c.strip() for c in line.strip("|").split("|")]
        assert columns[:4] == [cell.operation, cell.kind, "2%", "300"]
        assert columns[4].startswith(f"{cell.failed_calls}/1")
        assert columns[5] == "0"
    assert "0 wrong/lost/extra rows" in lines[-1]
    assert lines[-1].endswith("OK: every returned row equals the fault-free result")

    # the JSON round-trips
    assert SweepReport.from_dict(json.loads(json.dumps(report.as_dict()))) == report
    assert report.as_dict() == data
    assert SweepConfig.from_dict(data["config"]) == SweepConfig(
        kinds=("crc", "drop"), rates=(0.02,), batches=(300,), seeds=1
    )


@pytest.mark.parametrize("spoil", ["wrong row", "lost row", "untyped error"])
def test_the_sweep_catches_a_wrong_row_and_an_untyped_error(tmp_path, capsys, monkeypatch, spoil) -> None:
    real_run = faults._run

    def spoiled(config, operation, inputs, seed, plan):
        run = real_run(config, operation, inputs, seed, plan)
        if plan and run.result is not None:
            if spoil == "wrong row":
                run.result = run.result.copy()
                run.result.view(np.uint8)[3, 0] ^= 1
            elif spoil == "lost row":
                run.result = run.result[:-1]
            else:
                run.result, run.error = None, ValueError("not a driver error")
        return run

    monkeypatch.setattr(faults, "_run", spoiled)
    args = ["--kinds", "dup", "--rates", "1%", "--batches", "64", "--seeds", "1", "--operations", "transform"]
    code, lines, data = _sweep(tmp_path, capsys, [*args, "--no-progress"])
    (cell,) = SweepReport.from_dict(data).cells
    assert code == 1 and data["ok"] is False
    assert lines[-1].endswith("FAILED")
    if spoil == "wrong row":
        assert (cell.wrong_rows, cell.lost_rows) == (1, 0)
        assert _cell_lines(lines)[0].split("|")[6].strip() == "1"
    elif spoil == "lost row":
        assert (cell.wrong_rows, cell.lost_rows) == (0, 1)
        assert _cell_lines(lines)[0].split("|")[6].strip() == "0 (lost 1)"
    else:
        assert cell.unexpected == {"ValueError": 1} and cell.failed_calls == 0
        assert "not a driver error" in cell.first_unexpected
        assert "UNEXPECTED ValueError 1" in _cell_lines(lines)[0]


def test_clean_calls_that_differ_stop_the_sweep(monkeypatch) -> None:
    real_run = faults._run
    clean_calls = []

    def flaky(config, operation, inputs, seed, plan):
        run = real_run(config, operation, inputs, seed, plan)
        if not plan:
            clean_calls.append(run)
            if len(clean_calls) == 3:  # the warm-up call, then the second of the clean calls
                run.result = run.result + 1
        return run

    monkeypatch.setattr(faults, "_run", flaky)
    config = SweepConfig(kinds=("dup",), rates=(0.01,), batches=(64,), seeds=1, operations=("transform",))
    with pytest.raises(RuntimeError, match="not deterministic"):
        faults.run_sweep(config, progress=True)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"kinds": ("bogus",)}, "bogus"),
        ({"kinds": ("crc+interlock",)}, "interlock"),
        ({"kinds": ("crc", "crc")}, "repeat"),
        ({"rates": (1.5,)}, "rate"),
        ({"batches": (0,)}, "batch"),
        ({"batches": ()}, "batches"),
        ({"operations": ("acquire",)}, "operation"),
        ({"url_query": "dmd=96x64&seed=3"}, "seed"),
        ({"settings": {"retries": -1}}, "retries"),
        ({"settings": {"calibration": None}}, "calibration"),
        ({"settings": {"bogus": 1}}, "bogus"),
    ],
)
def test_bad_sweep_settings_are_refused_before_anything_is_opened(options, match) -> None:
    with pytest.raises(ConfigurationError, match=match):
        SweepConfig(**options)


def test_rates_are_read_and_shown_as_percentages() -> None:
    assert [parse_rate(text) for text in ("0.5%", "1%", "0.02", "0")] == [0.005, 0.01, 0.02, 0.0]
    assert [format_rate(rate) for rate in faults.DEFAULT_RATES] == ["0.5%", "1%", "2%"]
    assert SweepConfig.plan("timeout+crc", 0.005) == "timeout:0.005,crc:0.005"
    for text in ("x", "101%", "-0.1"):
        with pytest.raises(ConfigurationError, match="rate"):
            parse_rate(text)
    config = SweepConfig()
    assert len(list(config.cells())) == 2 * 9 * 3 * 4
    assert config.runs() == 2 * 4 * 2 * (9 * 3 + 9)  # a clean call before each kind's runs
