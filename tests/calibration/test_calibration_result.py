"""Results declare what a record keeps of them; routines declare how calibrate runs them."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np
import pytest

from opu_driver.calibration import (
    DarkResult,
    DriftResult,
    ExposureResult,
    FidelityResult,
    FidelityRow,
    LatencyResult,
    MatrixResult,
    ReferenceResult,
    RoiResult,
    registry,
)
from opu_driver.calibration import run as run_module
from opu_driver.calibration.result import (
    CalibrationResult,
    Recorded,
    region,
    region_keys,
    rows,
    stored,
    stored_property,
    summarised,
    summarised_property,
)
from opu_driver.devices.camera import Roi
from opu_driver.errors import InvalidInputError

RESULTS = (
    ExposureResult,
    DarkResult,
    LatencyResult,
    RoiResult,
    ReferenceResult,
    FidelityResult,
    MatrixResult,
    DriftResult,
)


@dataclasses.dataclass(frozen=True)
class _Row(Recorded):
    name: str
    value: float = summarised(digits=2, finite=True, array=np.float32)
    note: str = summarised()


@dataclasses.dataclass(frozen=True)
class _Toy(CalibrationResult):
    routine: ClassVar[str] = "toy"

    roi: Roi = region()
    count: int = summarised()
    level: float = summarised(digits=3)
    slope: float = summarised(significant=3)
    error: float | None = summarised(digits=4, finite=True)

    @summarised_property(digits=1)
    def doubled(self) -> float:
        return 2 * self.level

    flags: np.ndarray = stored(bool, summary=lambda mask: int(np.sum(mask)))
    trace: np.ndarray = stored(np.float32)

    @stored_property(np.int64)
    def index(self) -> np.ndarray:
        return np.arange(self.count)

    extra: np.ndarray | None = stored(when=lambda result: result.extra is not None, default=None)
    table: tuple[_Row, ...] = rows(_Row, lambda row: row.name)
    hidden: int = 0


def _toy(**changes) -> _Toy:
    values = dict(
        roi=Roi(1, 2, 30, 40),
        count=3,
        level=1.23456,
        slope=0.000123456,
        error=float("nan"),
        flags=np.array([1, 0, 1]),
        trace=np.arange(3, dtype=np.float64),
        table=(_Row("a", 0.123, "x"), _Row("b", math.inf, "y")),
    )
    values.update(changes)
    return _Toy(**values)


def test_the_summary_follows_the_declarations_with_the_region_last():
    summary = _toy().summary()
    assert list(summary) == [
        "count",
        "level",
        "slope",
        "error",
        "doubled",
        "flags",
        "table",
        "a:value",
        "a:note",
        "b:value",
        "b:note",
        *region_keys(),
    ]
    assert summary["level"] == 1.235 and summary["slope"] == 0.000123 and summary["doubled"] == 2.5
    assert summary["error"] is None and summary["b:value"] is None  # NaN and infinity: JSON has neither
    assert summary["flags"] == 2 and isinstance(summary["flags"], int)
    assert summary["table"] == "a,b" and summary["a:value"] == 0.12
    assert [summary[k] for k in region_keys()] == [1, 2, 30, 40]
    assert _toy(error=None).summary()["error"] is None and _toy(error=0.123456).summary()["error"] == 0.1235


def test_the_arrays_follow_the_declarations_with_their_dtypes():
    arrays = _toy().arrays()
    assert list(arrays) == ["flags", "trace", "index", "value"]
    assert arrays["flags"].dtype == bool and arrays["trace"].dtype == np.float32
    assert arrays["index"].dtype == np.int64 and arrays["value"].dtype == np.float32
    assert list(_toy(extra=np.ones(2)).arrays()) == ["flags", "trace", "index", "extra", "value"]


def test_key_names_are_attributes_and_a_typo_fails():
    assert _Toy.summary_key.level == "level" and _Toy.record_array.trace == "toy/trace"
    assert list(_Toy.summary_key) == list(_toy().summary())[:7] + list(region_keys())
    assert list(_Toy.array_key) == list(_toy(extra=np.ones(2)).arrays())  # optional arrays included
    assert "count" in _Toy.summary_key and len(_Toy.array_key) == 5
    with pytest.raises(AttributeError, match="_Toy has no summary key 'levle'"):
        _Toy.summary_key.levle


@pytest.mark.parametrize("result", RESULTS)
def test_every_result_names_its_keys(result):
    assert result.routine and result.routine in run_module.ROUTINES
    keys = list(result.summary_key)
    assert len(keys) == len(set(keys)) and keys
    assert all(name.startswith(result.routine + "/") for name in result.record_array)


def test_fidelity_rows_flatten_into_the_summary_in_row_order():
    row = FidelityRow(
        scheme="two_frame",
        n_bits=4,
        frames_per_vector=8,
        repeatability=0.9999999,
        linearity_error=0.5,
        nonlinearity=float("nan"),
        snr_db=math.inf,
        signal_variance=1.0,
        noise_variance=0.0,
        n_outputs=3,
    )
    result = FidelityResult(16, 32, 4, (row,))
    summary = result.summary()
    assert list(FidelityRow.summary_key) == [
        "frames_per_vector",
        "repeatability",
        "linearity_error",
        "nonlinearity",
        "snr_db",
    ]
    assert summary["rows"] == "two_frame/4bit" and summary["two_frame/4bit:repeatability"] == 1.0
    assert summary[FidelityResult.row_key("two_frame/4bit", "snr_db")] is None
    assert summary["two_frame/4bit:nonlinearity"] is None
    arrays = result.arrays()
    assert list(arrays) == ["frames_per_vector", "repeatability", "linearity_error", "snr_db"]
    assert arrays["frames_per_vector"].dtype == np.int64 and arrays["snr_db"].tolist() == [math.inf]
    with pytest.raises(TypeError):
        FidelityRow("two_frame", 4, 8, 1.0, 0.5, 0.1, 3.0, 1.0, 0.0, 3)  # keyword-only: the order is the summary's


def test_the_registry_runs_the_routines_in_their_order():
    assert run_module.ROUTINES == ("exposure", "dark", "latency", "roi", "reference", "fidelity", "matrix", "drift")
    assert run_module.INVALIDATES == {
        "exposure": ("dark", "roi", "reference", "fidelity", "matrix", "drift"),
        "reference": ("fidelity", "matrix", "drift"),
    }
    assert run_module.NEEDS_REFERENCE == ("matrix", "drift")
    entries = registry.routines()
    assert [entry.result for entry in entries] == list(RESULTS)
    assert registry.get_routine("roi").needs == ("dark",)
    assert [entry.name for entry in entries if entry.sets_camera] == ["exposure"]
    with pytest.raises(InvalidInputError, match="unknown routine 'nope'"):
        registry.get_routine("nope")


def test_a_registered_routine_takes_its_place_in_the_order(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @dataclasses.dataclass(frozen=True)
    class NoiseResult(CalibrationResult):
        routine: ClassVar[str] = "noise"
        level: float = summarised(digits=2)

    @registry.register_routine(NoiseResult, position=35, needs=(DarkResult,), stale_after=(ExposureResult,))
    def from_plan(opu, plan, earlier, progress):
        return NoiseResult(level=float(earlier[DarkResult.routine].level_dn))

    assert registry.routine_names() == (
        "exposure",
        "dark",
        "latency",
        "noise",
        "roi",
        "reference",
        "fidelity",
        "matrix",
        "drift",
    )
    dark = DarkResult(Roi(0, 0, 2, 1), 2, np.zeros(2, np.float32), 3.14159, 0.0, 1.0, np.zeros(2, bool), "shutter")
    assert registry.get_routine("noise").run(None, None, {"dark": dark}, False).summary() == {"level": 3.14}

    @dataclasses.dataclass(frozen=True)
    class LateResult(CalibrationResult):
        routine: ClassVar[str] = "late"

    registry.register_routine(LateResult, position=5, needs=(NoiseResult,))(from_plan)
    with pytest.raises(ValueError, match="not an earlier routine"):
        registry._check(sorted(registry._REGISTRY.values(), key=lambda r: r.position))
