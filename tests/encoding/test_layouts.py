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


@settings(max_examples=60, deadline=None)
@given(st.integers(4, 80), st.sampled_from([2, 4, 8]), st.integers(1, 12), st.data())
def test_signal_levels_dim_each_feature_by_whole_groups_of_rows(width, levels, row_groups, data):
    # A row-aligned signal holds each feature on whole groups of L rows starting at multiples of L; signal level m
    # keeps m rows of each group, the same ones for every feature, so each feature keeps exactly m/L of its mirrors
    # in every group (and any optical cell whose rows are whole groups sees its field scaled by m/L).
    height = levels * row_groups
    signal_width = width - int(round(width * 0.5))
    n = data.draw(st.integers(1, signal_width * height))
    whole = SplitLayout(n, width, height, reference_levels=levels)
    if not whole.rows_aligned:
        with pytest.raises(InvalidInputError):
            SplitLayout(n, width, height, reference_levels=levels, signal_level=1)
        return
    square = MacroPixelLayout.largest_side(n, signal_width, height) ** 2
    per = whole.mirrors_per_feature()[:n]
    assert (per <= square).all() and (per >= 0.9 * square).all()  # about the square macro-pixels' light
    grid = whole.mirror_feature_map().reshape(height, width)
    groups = grid[:, :signal_width].reshape(row_groups, levels, signal_width)
    assert (groups == groups[:, :1]).all()  # every group of L rows is one feature's (or none's), column by column
    for m in range(1, levels + 1):
        dimmed = SplitLayout(n, width, height, reference_levels=levels, signal_level=m)
        assert dimmed.n_table_features == whole.n_table_features
        kept = dimmed.mirror_feature_map().reshape(height, width)
        np.testing.assert_array_equal(kept[:, signal_width:], grid[:, signal_width:])  # the same reference
        on = (kept[:, :signal_width] >= 0).reshape(row_groups, levels, signal_width)
        rows_kept = on.any(axis=(0, 2))
        assert rows_kept.sum() == m  # the same m rows of every group
        assert (on[:, rows_kept] == (groups[:, rows_kept] >= 0)).all()
        assert not on[:, ~rows_kept].any()
        lit = kept[:, :signal_width] >= 0
        assert (kept[:, :signal_width][lit] == grid[:, :signal_width][lit]).all()  # each mirror keeps its feature
        np.testing.assert_array_equal(dimmed.mirrors_per_feature()[:n] * levels, per * m)
        # and the dimmer levels keep a subset of the brighter ones' rows
        if m > 1:
            previous = SplitLayout(n, width, height, reference_levels=levels, signal_level=m - 1)
            assert ((previous.mirror_feature_map() >= 0) <= (dimmed.mirror_feature_map() >= 0)).all()


def test_signal_level_is_refused_outside_its_range_or_without_row_aligned_features():
    for bad in (0, 9, 2.5, "4"):
        with pytest.raises(InvalidInputError):
            SplitLayout(48, 96, 64, reference_levels=8, signal_level=bad)
    with pytest.raises(InvalidInputError):
        SplitLayout(48, 96, 64, signal_level=1)  # one reference level: no row classes to dim by
    with pytest.raises(InvalidInputError):
        SplitLayout(48, 96, 64, reference_levels=8, signal_layout="lined", signal_level=4)
    assert SplitLayout(48, 96, 64, reference_levels=8, signal_level=4).rows_aligned
