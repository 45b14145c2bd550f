"""Mirror layouts: runs are disjoint, inside the array, and expand to the mirrors they claim."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opu_driver.encoding.layouts import LinedLayout, MacroPixelLayout, SplitLayout, make_layout
from opu_driver.errors import InvalidInputError

geometry = st.tuples(st.integers(1, 60), st.integers(1, 40))


def _check_runs(layout):
    runs = layout.runs.astype(np.int64)
    n_mirrors = layout.dmd_width * layout.dmd_height
    assert (runs[:, 2] >= 1).all()
    assert (runs[:, 1] + runs[:, 2] <= n_mirrors).all()
    n_table = getattr(layout, "n_table_features", layout.n_features)
    assert ((runs[:, 0] >= 0) & (runs[:, 0] < n_table)).all()
    order = np.argsort(runs[:, 1])
    starts, ends = runs[order, 1], runs[order, 1] + runs[order, 2]
    assert (starts[1:] >= ends[:-1]).all(), "runs overlap"
    mapping = layout.mirror_feature_map()
    counts = np.bincount(mapping[mapping >= 0], minlength=n_table)
    np.testing.assert_array_equal(counts, layout.mirrors_per_feature())


@settings(max_examples=60, deadline=None)
@given(geometry, st.data())
def test_lined_layout_covers_the_array_evenly(geom, data):
    width, height = geom
    n = data.draw(st.integers(1, width * height))
    layout = LinedLayout(n, width, height)
    _check_runs(layout)
    per = layout.mirrors_per_feature()
    assert per.sum() == width * height
    assert per.max() - per.min() <= 1


@settings(max_examples=60, deadline=None)
@given(geometry, st.data())
def test_macro_layout_squares_fit_and_are_square(geom, data):
    width, height = geom
    n = data.draw(st.integers(1, width * height))
    layout = MacroPixelLayout(n, width, height)
    _check_runs(layout)
    side, cols, rows = layout.grid()
    assert (layout.mirrors_per_feature() == side * side).all()
    assert cols * side <= width and rows * side <= height


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 30), st.integers(1, 20), st.data())
def test_expand_sets_exactly_the_mirrors_of_the_features_on(width, height, data):
    n = data.draw(st.integers(1, width * height))
    layout = data.draw(st.sampled_from(["lined", "macro"]))
    layout = make_layout(layout, n, width, height)
    bits = np.array(data.draw(st.lists(st.lists(st.integers(0, 1), min_size=n, max_size=n), min_size=1, max_size=3)))
    frames = np.unpackbits(layout.expand(bits), axis=1)[:, : width * height]
    mapping = layout.mirror_feature_map()
    expected = np.where(mapping >= 0, bits[:, np.maximum(mapping, 0)], 0)
    np.testing.assert_array_equal(frames, expected)


def test_sizes_that_do_not_fit_are_refused():
    with pytest.raises(InvalidInputError):
        LinedLayout(13, 3, 4)
    with pytest.raises(InvalidInputError):
        MacroPixelLayout(5, 4, 4, macro_px=2)
    with pytest.raises(InvalidInputError):
        make_layout("spiral", 4, 4, 4)
    with pytest.raises(InvalidInputError):
        LinedLayout(0, 4, 4)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 60), st.integers(1, 30), st.floats(0.05, 0.95), st.sampled_from(["macro", "lined"]), st.data())
def test_split_layout_keeps_signal_and_reference_apart(width, height, fraction, signal_layout, data):
    reference_cols = int(round(width * fraction))
    if not 1 <= reference_cols < width:
        with pytest.raises(InvalidInputError):
            SplitLayout(1, width, height, reference_fraction=fraction, signal_layout=signal_layout)
        return
    n = data.draw(st.integers(1, (width - reference_cols) * height))
    layout = SplitLayout(n, width, height, reference_fraction=fraction, signal_layout=signal_layout)
    _check_runs(layout)
    grid = layout.mirror_feature_map().reshape(height, width)
    signal_width = layout.signal_width
    assert (grid[:, signal_width:] == layout.reference_feature).all()  # the reference is the right-hand block
    assert (grid[:, :signal_width] != layout.reference_feature).all()  # and nothing else is reference
    per = layout.mirrors_per_feature()
    assert per[-1] == (width - signal_width) * height and (per[:-1] > 0).all()
    bits = np.zeros((1, n + 1), dtype=np.uint8)
    bits[0, -1] = 1  # reference only
    frame = np.unpackbits(layout.expand(bits), axis=1)[0, : width * height].reshape(height, width)
    np.testing.assert_array_equal(frame, (grid == layout.reference_feature).astype(np.uint8))


def test_split_layout_refuses_sizes_that_do_not_fit():
    with pytest.raises(InvalidInputError):
        SplitLayout(20, 6, 4, reference_fraction=0.5)  # 12 signal mirrors
    with pytest.raises(InvalidInputError):
        SplitLayout(2, 6, 4, reference_fraction=1.0)
    with pytest.raises(InvalidInputError):
        SplitLayout(2, 6, 4, signal_layout="split")
