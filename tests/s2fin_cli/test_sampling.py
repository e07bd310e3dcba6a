"""Sampling protocols, nodata centres and the spatially blocked train/validation split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import ConfigError, LabelError
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.sampling import (
    Protocol,
    Samples,
    apply_protocol,
    blocked_split,
    drop_invalid_centres,
    group_by_block,
    pixel_overlap,
    within_distance,
)
from tests.helpers import utm_grid, write_scene


def _samples(counts: dict[int, int], size: int = 60, seed: int = 0) -> Samples:
    """Distinct random pixels of a size x size grid with ``counts`` pixels per class id."""
    rng = np.random.default_rng(seed)
    total = sum(counts.values())
    flat = rng.choice(size * size, size=total, replace=False)
    classes = np.concatenate([np.full(n, c) for c, n in counts.items()])
    return Samples(flat // size, flat % size, classes.astype(np.int64))


TABLE = ClassTable.from_ids([1, 2, 3], {1: "Road", 2: "Grass", 3: "Water"})


def test_protocol_all_keeps_every_pixel() -> None:
    s = _samples({1: 40, 2: 25, 3: 7})
    out = apply_protocol(s, Protocol.from_options(None, None), TABLE, seed=0)
    assert out.counts() == {1: 40, 2: 25, 3: 7}


def test_protocol_per_class_exact_and_seeded() -> None:
    s = _samples({1: 40, 2: 25, 3: 12})
    p = Protocol.from_options(10, None)
    a = apply_protocol(s, p, TABLE, seed=3)
    b = apply_protocol(s, p, TABLE, seed=3)
    c = apply_protocol(s, p, TABLE, seed=4)
    assert a.counts() == {1: 10, 2: 10, 3: 10}
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert not (np.array_equal(a.rows, c.rows) and np.array_equal(a.cols, c.cols))
    # Every drawn pixel is a labelled pixel of its class.
    have = set(zip(s.rows.tolist(), s.cols.tolist(), s.classes.tolist(), strict=True))
    assert set(zip(a.rows.tolist(), a.cols.tolist(), a.classes.tolist(), strict=True)) <= have


def test_protocol_fraction_is_stratified() -> None:
    s = _samples({1: 40, 2: 25, 3: 3})
    out = apply_protocol(s, Protocol.from_options(None, 0.2), TABLE, seed=0)
    assert out.counts() == {1: 8, 2: 5, 3: 1}  # round(0.2 n), at least 1


def test_too_few_pixels_is_a_label_error_naming_the_class() -> None:
    s = _samples({1: 40, 2: 25, 3: 4})
    with pytest.raises(LabelError) as info:
        apply_protocol(s, Protocol.from_options(10, None), TABLE, seed=0)
    text = str(info.value)
    assert "'Water' (id 3)" in text and "has 4" in text and "needs 10" in text
    assert "Grass" not in text


def test_protocol_options_contradicting_or_out_of_range() -> None:
    with pytest.raises(ConfigError):
        Protocol.from_options(5, 0.5)
    with pytest.raises(ConfigError):
        Protocol.from_options(0, None)
    with pytest.raises(ConfigError):
        Protocol.from_options(None, 1.5)


def _chebyshev_min(a: Samples, b: Samples) -> int:
    d = np.maximum(np.abs(a.rows[:, None] - b.rows[None]), np.abs(a.cols[:, None] - b.cols[None]))
    return int(d.min())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blocked_split_train_and_validation_patches_never_overlap(seed: int) -> None:
    s = _samples({1: 120, 2: 90, 3: 60}, size=100, seed=seed)
    split = blocked_split(s, TABLE, val_fraction=0.2, block_size=20, patch_size=7, seed=seed)
    assert len(split.train) and len(split.val)
    assert _chebyshev_min(split.train, split.val) >= 7  # 7x7 patches share no pixel
    # Validation pixels come in whole cells; nothing is both, nothing is invented.
    assert pixel_overlap(split.train, split.val) == 0
    train_c, val_c = split.train.counts(TABLE), split.val.counts(TABLE)
    for c, n in s.counts(TABLE).items():
        assert train_c[c] + val_c[c] + split.dropped_overlap.get(c, 0) == n
        assert train_c[c] > 0
    cells_val = {(int(r) // 20, int(c) // 20) for r, c in zip(split.val.rows, split.val.cols,
                                                               strict=True)}
    cells_train = {(int(r) // 20, int(c) // 20) for r, c in zip(split.train.rows,
                                                                split.train.cols, strict=True)}
    assert not cells_val & cells_train
    again = blocked_split(s, TABLE, val_fraction=0.2, block_size=20, patch_size=7, seed=seed)
    assert np.array_equal(again.val.rows, split.val.rows)


def test_blocked_split_without_validation() -> None:
    s = _samples({1: 10, 2: 10})
    split = blocked_split(s, TABLE, val_fraction=0.0, block_size=8, patch_size=7, seed=0)
    assert len(split.val) == 0 and len(split.train) == 20


def test_blocked_split_refuses_to_leave_a_class_without_training() -> None:
    # Class 3 sits in one 3x3 clump: all in one cell; its validation would leave no training.
    s = _samples({1: 60, 2: 60}, size=80)
    clump = Samples(np.array([40, 40, 41, 41]), np.array([40, 41, 40, 41]), np.full(4, 3))
    both = Samples(np.concatenate([s.rows, clump.rows]), np.concatenate([s.cols, clump.cols]),
                   np.concatenate([s.classes, clump.classes]))
    both = both.subset(np.unique(both.rows * 80 + both.cols, return_index=True)[1])
    split = blocked_split(both, TABLE, val_fraction=0.3, block_size=10, patch_size=5, seed=0)
    assert split.train.counts(TABLE)[3] > 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=1, max_size=30),
       st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), min_size=0, max_size=30),
       st.integers(1, 9), st.integers(1, 16))
def test_within_distance_matches_brute_force(a: list[tuple[int, int]], b: list[tuple[int, int]],
                                             distance: int, tile: int) -> None:
    ar, ac = np.array([p[0] for p in a]), np.array([p[1] for p in a])
    br = np.array([p[0] for p in b], dtype=np.int64)
    bc = np.array([p[1] for p in b], dtype=np.int64)
    got = within_distance(ar, ac, br, bc, distance, tile=tile)
    if b:
        d = np.maximum(np.abs(ar[:, None] - br[None]), np.abs(ac[:, None] - bc[None]))
        want = (d < distance).any(axis=1)
    else:
        want = np.zeros(len(a), bool)
    assert np.array_equal(got, want)


def test_group_by_block_covers_every_sample_once() -> None:
    s = _samples({1: 50, 2: 50}, size=37)
    seen = []
    for window, index in group_by_block(s, 10, (37, 37)):
        r, c = s.rows[index], s.cols[index]
        assert ((r >= window.row_off) & (r < window.row_off + window.height)).all()
        assert ((c >= window.col_off) & (c < window.col_off + window.width)).all()
        seen.append(index)
    assert np.array_equal(np.sort(np.concatenate(seen)), np.arange(len(s)))


def test_nodata_centres_are_dropped_and_counted(tmp_path: Path) -> None:
    grid = utm_grid(30, 20)
    holes = np.zeros(grid.shape, bool)
    holes[5:8, 10:14] = True
    path = write_scene(tmp_path / "scene.tif", grid, nodata_pixels=holes)
    rows = np.array([5, 6, 7, 0, 19, 10])
    cols = np.array([10, 13, 11, 0, 29, 20])
    classes = np.array([1, 2, 1, 1, 2, 2])
    with open_stacked_scene(path) as scene:
        kept, dropped = drop_invalid_centres(Samples(rows, cols, classes), scene, block_size=8)
    assert dropped == {1: 2, 2: 1}
    assert sorted(zip(kept.rows.tolist(), kept.cols.tolist(), strict=True)) == [
        (0, 0), (10, 20), (19, 29)]
