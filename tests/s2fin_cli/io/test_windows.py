from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from s2fin_cli.io.windows import block_count, iter_blocks, reflect_indices, window_slices


@given(size=st.integers(2, 40), start=st.integers(-39, 39), length=st.integers(1, 60))
def test_reflect_indices_match_numpy_reflect_padding(size: int, start: int, length: int) -> None:
    # np.pad(reflect) can only pad by size - 1 at a time; within that range it is the reference.
    pad = size - 1
    if start < -pad or start + length > size + pad:
        return
    padded = np.pad(np.arange(size), pad, mode="reflect")
    expected = padded[start + pad:start + pad + length]
    np.testing.assert_array_equal(reflect_indices(start, length, size), expected)


@given(size=st.integers(1, 12), start=st.integers(-100, 100), length=st.integers(1, 200))
def test_reflect_indices_stay_inside_for_any_overhang(size: int, start: int, length: int) -> None:
    idx = reflect_indices(start, length, size)
    assert idx.shape == (length,)
    assert idx.min() >= 0 and idx.max() < size
    inside = (np.arange(start, start + length) >= 0) & (np.arange(start, start + length) < size)
    np.testing.assert_array_equal(idx[inside], np.arange(start, start + length)[inside])


def test_single_pixel_scene_reflects_to_itself() -> None:
    np.testing.assert_array_equal(reflect_indices(-5, 11, 1), np.zeros(11))


@given(h=st.integers(1, 70), w=st.integers(1, 70), b=st.integers(1, 33))
def test_blocks_cover_grid_exactly_once(h: int, w: int, b: int) -> None:
    cover = np.zeros((h, w), np.int32)
    windows = list(iter_blocks(h, w, b))
    for win in windows:
        assert win.width <= b and win.height <= b
        cover[window_slices(win)] += 1
    assert (cover == 1).all()
    assert len(windows) == block_count(h, w, b)
