"""Native kernels against their numpy fallback (bit for bit) and the fallback against simple references."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opu_driver import native
from opu_driver.encoding.layouts import make_layout
from opu_driver.errors import InvalidInputError
from opu_driver.native import fallback
from tests.support import REPO_ROOT

NATIVE = native.backend() == "native"
needs_native = pytest.mark.skipif(
    not NATIVE, reason="native kernels could not be built here (no C compiler?): only the numpy path is tested"
)
FORMATS = [1, 2, 3, 4, 5]
MAX_VALUE = {1: 255, 2: 1023, 3: 4095, 4: 1023, 5: 4095}


def random_runs(rng: np.random.Generator, n_mirrors: int, n_features: int) -> np.ndarray:
    """Disjoint runs at random places, any lengths (including 1), starting and ending mid-byte."""
    cuts = np.unique(rng.integers(0, n_mirrors + 1, size=rng.integers(2, 40)))
    runs = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if b > a and rng.random() < 0.7:
            runs.append((rng.integers(0, n_features), a, b - a))
    if not runs:
        runs.append((0, n_mirrors - 1, 1))
    return np.array(runs, dtype=np.int64)


def per_mirror_reference(bits: np.ndarray, runs: np.ndarray, n_mirrors: int) -> np.ndarray:
    """The obvious per-mirror expansion, then np.packbits."""
    frames = np.zeros((bits.shape[0], n_mirrors), dtype=np.uint8)
    for feature, first, count in runs:
        frames[:, first : first + count] = (bits[:, feature] != 0)[:, None]
    return np.packbits(frames, axis=1)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_mirrors=st.integers(1, 300), n_frames=st.integers(0, 4))
def test_encode_random_runs_native_fallback_reference(seed: int, n_mirrors: int, n_frames: int) -> None:
    rng = np.random.default_rng(seed)
    n_features = int(rng.integers(1, 12))
    runs = random_runs(rng, n_mirrors, n_features)
    bits = rng.integers(0, 2, size=(n_frames, n_features)).astype(np.uint8)
    expected = per_mirror_reference(bits, runs, n_mirrors)
    assert np.array_equal(fallback.encode_frames(bits, runs, n_mirrors), expected)
    assert np.array_equal(native.encode_frames(bits, runs, n_mirrors), expected)
    assert np.array_equal(native.encode_frames(bits.astype(bool), runs, n_mirrors), expected)


@pytest.mark.parametrize("kind", ["lined", "macro", "split"])
@pytest.mark.parametrize("width,height,n_features", [(96, 64, 37), (37, 23, 11), (44, 30, 100), (13, 7, 1)])
def test_encode_layouts_match_layout_expand(kind: str, width: int, height: int, n_features: int) -> None:
    # Odd widths (not multiples of 8) make rows start mid-byte, which exercises the row-copy plan.
    layout = make_layout(kind, n_features, width, height)
    table = layout.run_table
    rng = np.random.default_rng(width * height + n_features)
    bits = rng.integers(0, 2, size=(5, layout.n_table_features)).astype(np.uint8)
    bits[0] = 0
    bits[1] = 1
    expected = layout.expand(bits)
    n_mirrors = width * height
    assert np.array_equal(fallback.encode_frames(bits, table, n_mirrors), expected)
    assert np.array_equal(native.encode_frames(bits, table, n_mirrors), expected)
    assert np.array_equal(native.encode_frames(bits, layout.runs, n_mirrors), expected)


def test_macro_layout_plan_copies_rows() -> None:
    table = make_layout("macro", 12, 36, 24).run_table
    assert table.copy_ops.shape[0] > 0 and table.draw_runs.shape[0] < table.runs.shape[0]


@pytest.mark.parametrize(
    "runs,n_mirrors",
    [
        (np.array([[0, 5, 6]]), 10),  # past the end
        (np.array([[0, 0, 5], [1, 4, 2]]), 10),  # overlap
        (np.array([[0, -1, 2]]), 10),
        (np.array([[0, 0]]), 10),
        (np.array([[0.0, 0, 1]]), 10),
    ],
)
def test_encode_refuses_bad_runs(runs: np.ndarray, n_mirrors: int) -> None:
    for module in (native, fallback):
        with pytest.raises(InvalidInputError):
            module.encode_frames(np.ones((1, 2), np.uint8), runs, n_mirrors)


def test_encode_refuses_bad_bits() -> None:
    runs = np.array([[3, 0, 4]])
    for module in (native, fallback):
        with pytest.raises(InvalidInputError):
            module.encode_frames(np.ones((1, 3), np.uint8), runs, 8)  # feature 3 missing
        with pytest.raises(InvalidInputError):
            module.encode_frames(np.ones((1, 4), np.float64), runs, 8)
        with pytest.raises(InvalidInputError):
            module.encode_frames(np.ones(4, np.uint8), runs, 8)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 4), m=st.integers(0, 33), seed=st.integers(0, 2**32 - 1))
def test_combine_native_fallback_bit_identical(n: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Wide dynamic range so that rounding differs with the order of operations.
    frames4 = (rng.standard_normal((n, 4, m)) * 10.0 ** rng.integers(-3, 6, size=(n, 4, m))).astype(np.float32)
    scale = (rng.standard_normal(m) * 1e3).astype(np.float32)
    f = frames4
    expected4 = np.subtract(np.subtract(f[:, 0], f[:, 1]), np.subtract(f[:, 2], f[:, 3])) * scale
    expected2 = np.subtract(f[:, 0], f[:, 1]) * scale
    for module in (native, fallback):
        got4 = module.combine_four(frames4, scale)
        got2 = module.combine_two(np.ascontiguousarray(frames4[:, :2]), scale)
        assert got4.dtype == np.float32 and got4.shape == (n, m)
        assert np.array_equal(got4.view(np.uint32), expected4.astype(np.float32).view(np.uint32))
        assert np.array_equal(got2.view(np.uint32), expected2.astype(np.float32).view(np.uint32))


def test_combine_refuses_bad_input() -> None:
    for module in (native, fallback):
        with pytest.raises(InvalidInputError):
            module.combine_four(np.zeros((1, 4, 3), np.float64), np.zeros(3, np.float32))
        with pytest.raises(InvalidInputError):
            module.combine_four(np.zeros((1, 2, 3), np.float32), np.zeros(3, np.float32))
        with pytest.raises(InvalidInputError):
            module.combine_two(np.zeros((1, 2, 3), np.float32), np.zeros(4, np.float32))


@needs_native
def test_native_backend_is_built_here() -> None:
    assert native.backend() == "native"


def test_opu_native_0_forces_numpy() -> None:
    env = dict(os.environ, OPU_NATIVE="0")
    code = "from opu_driver import native; print(native.backend())"
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "numpy"
