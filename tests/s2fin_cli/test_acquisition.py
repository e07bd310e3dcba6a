"""The acquisition arithmetic of ``s2fin suggest``: uncertainty against hand-made probabilities,
seeded pixel keys, and the selection rules (spacing, class spread, feature redundancy,
determinism)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from s2fin_cli.acquisition import (
    Candidates,
    margin,
    normalised_entropy,
    pixel_keys,
    select_pixels,
    smallest_keys,
    top_two,
    uncertainty,
)

# Hand-made class probabilities: certain, split between two, uniform over three, and a
# three-way split with a clear runner-up.
P = np.array([[1.0, 0.0, 0.0],
              [0.5, 0.5, 0.0],
              [1 / 3, 1 / 3, 1 / 3],
              [0.6, 0.3, 0.1]])


def test_margin_and_entropy_on_hand_made_probabilities() -> None:
    assert margin(P) == pytest.approx([1.0, 0.0, 0.0, 0.3])
    h = -(0.6 * np.log(0.6) + 0.3 * np.log(0.3) + 0.1 * np.log(0.1)) / np.log(3)
    assert normalised_entropy(P) == pytest.approx([0.0, np.log(2) / np.log(3), 1.0, h])
    assert uncertainty(P, "margin") == pytest.approx([0.0, 1.0, 1.0, 0.7])
    assert uncertainty(P, "entropy") == pytest.approx(normalised_entropy(P))
    first, p1, second, p2 = top_two(P)
    assert first.tolist() == [0, 0, 0, 0] and second.tolist() == [1, 1, 1, 1]
    assert p1 == pytest.approx([1.0, 0.5, 1 / 3, 0.6]) and p2 == pytest.approx([0, .5, 1 / 3, .3])
    # The two measures disagree where they should: a 50/50 split of two classes is maximally
    # uncertain by margin, but not by entropy over three classes.
    assert uncertainty(P[1:2], "margin")[0] > uncertainty(P[3:4], "margin")[0]


def test_one_class_and_bad_input() -> None:
    one = np.array([[1.0], [1.0]])
    assert margin(one).tolist() == [1.0, 1.0]
    assert normalised_entropy(one).tolist() == [0.0, 0.0]
    assert top_two(one)[2].tolist() == [-1, -1]
    with pytest.raises(ValueError):
        margin(np.array([0.5, 0.5]))
    with pytest.raises(ValueError):
        uncertainty(P, "variance")  # type: ignore[arg-type]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=6), min_size=1, max_size=20))
def test_uncertainty_in_unit_interval(rows: list[list[float]]) -> None:
    k = min(len(r) for r in rows)
    p = np.array([r[:k] for r in rows]) + 1e-9
    p /= p.sum(axis=1, keepdims=True)
    for kind in ("margin", "entropy"):
        u = uncertainty(p, kind)  # type: ignore[arg-type]
        assert np.all((u >= 0) & (u <= 1))


def test_pixel_keys_are_seeded_and_independent_of_visiting_order() -> None:
    rows, cols = np.mgrid[0:40, 0:30]
    r, c = rows.ravel(), cols.ravel()
    keys = pixel_keys(r, c, 7)
    assert np.array_equal(keys, pixel_keys(r, c, 7))
    assert not np.array_equal(keys, pixel_keys(r, c, 8))
    assert np.unique(keys).size == keys.size
    perm = np.random.default_rng(0).permutation(r.size)
    assert np.array_equal(pixel_keys(r[perm], c[perm], 7), keys[perm])
    # The smallest keys are a uniform sample: about a quarter of them in each quadrant.
    chosen = smallest_keys(keys, 400)
    assert np.all(np.diff(keys[chosen].astype(np.float64)) >= 0)
    quadrant = (r[chosen] >= 20).astype(int) * 2 + (c[chosen] >= 15)
    assert np.bincount(quadrant).min() > 70


def _candidates(rows: np.ndarray, cols: np.ndarray, probs: np.ndarray,
                features: np.ndarray | None = None, seed: int = 0) -> Candidates:
    return Candidates(np.asarray(rows, np.int64), np.asarray(cols, np.int64),
                      np.asarray(probs, np.float64), features, pixel_keys(rows, cols, seed))


def _grid_candidates(size: int = 30, k: int = 3, seed: int = 0) -> Candidates:
    rng = np.random.default_rng(seed)
    rows, cols = (a.ravel() for a in np.mgrid[0:size, 0:size])
    logits = rng.normal(size=(rows.size, k))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return _candidates(rows, cols, probs, rng.normal(size=(rows.size, 8)), seed)


def test_strategies_uncertainty_and_random() -> None:
    cand = _grid_candidates()
    u = uncertainty(cand.probabilities, "margin")
    top = select_pixels(cand, 10, strategy="uncertainty")
    assert np.all(u[top] >= np.sort(u)[-10] - 1e-12)
    assert np.all(np.diff(u[top]) <= 1e-12)  # best first
    rand = select_pixels(cand, 10, strategy="random")
    assert np.array_equal(rand, smallest_keys(cand.keys, 10))


def test_diverse_picks_keep_a_patch_apart_and_come_from_the_uncertain_pool() -> None:
    cand = _grid_candidates(size=40)
    n, spacing = 12, 7
    picks = select_pixels(cand, n, spacing=spacing, pool_factor=10)
    assert picks.size == n and np.unique(picks).size == n
    r, c = cand.rows[picks], cand.cols[picks]
    cheb = np.maximum(np.abs(r[:, None] - r[None]), np.abs(c[:, None] - c[None]))
    assert cheb[~np.eye(n, dtype=bool)].min() >= spacing
    u = uncertainty(cand.probabilities, "margin")
    assert u[picks].min() >= np.sort(u)[-10 * n]  # all from the 10 n most uncertain


def test_diverse_picks_spread_over_predicted_classes() -> None:
    # 90 % of the uncertain candidates are predicted as class 0; round-robin still gives each
    # predicted class its share.
    rng = np.random.default_rng(1)
    size = 60
    rows, cols = (a.ravel() for a in np.mgrid[0:size, 0:size])
    cls = np.where(rng.random(rows.size) < 0.9, 0, rng.integers(1, 3, rows.size))
    probs = np.full((rows.size, 3), 0.2)
    probs[np.arange(rows.size), cls] = 0.6
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(axis=1, keepdims=True)
    cand = _candidates(rows, cols, probs)
    picks = select_pixels(cand, 9, spacing=3, strategy="diverse")
    assert np.bincount(cls[picks], minlength=3).tolist() == [3, 3, 3]
    by_uncertainty = select_pixels(cand, 9, strategy="uncertainty")
    assert np.bincount(cls[by_uncertainty], minlength=3)[0] > 3


def test_diverse_picks_avoid_redundant_features() -> None:
    # Two tight feature clusters, the first slightly more uncertain: uncertainty alone takes
    # the first cluster only; the k-center weighting alternates.
    n_each = 50
    rows = np.arange(2 * n_each) * 10  # far apart: spacing plays no part
    cols = np.zeros(2 * n_each, np.int64)
    probs = np.tile([0.5, 0.3, 0.2], (2 * n_each, 1))
    probs[:n_each] = [0.45, 0.35, 0.2]  # more uncertain
    feats = np.zeros((2 * n_each, 4))
    feats[:n_each, 0] = 1.0
    feats[n_each:, 1] = 1.0
    feats += np.random.default_rng(2).normal(0, 0.01, feats.shape)
    cand = _candidates(rows, cols, probs, feats)
    greedy = select_pixels(cand, 4, spacing=7, pool_factor=25)
    assert sorted((greedy >= n_each).tolist()) == [False, False, True, True]
    plain = select_pixels(cand, 4, strategy="uncertainty")
    assert np.all(plain < n_each)
    # Labelled pixels that look like the first cluster push the first picks to the second.
    known = np.zeros((3, 4))
    known[:, 0] = 1.0
    first = select_pixels(cand, 1, spacing=7, pool_factor=100, labelled_features=known)
    assert first[0] >= n_each


def test_an_exhausted_pool_is_refilled() -> None:
    # The most uncertain candidates all sit in one patch: the pool of 10 n holds only them, so
    # the picks must come from the next candidates.
    size = 30
    rows, cols = (a.ravel() for a in np.mgrid[0:size, 0:size])
    probs = np.tile([0.9, 0.1], (rows.size, 1))
    hot = (rows < 3) & (cols < 3)
    probs[hot] = [0.5, 0.5]
    cand = _candidates(rows, cols, probs)
    picks = select_pixels(cand, 4, spacing=5, pool_factor=2)
    assert picks.size == 4
    assert hot[picks].sum() == 1


def test_selection_is_deterministic_and_seeded() -> None:
    a = select_pixels(_grid_candidates(seed=3), 15, spacing=5)
    b = select_pixels(_grid_candidates(seed=3), 15, spacing=5)
    assert np.array_equal(a, b)
    # Ties are broken by the keys: equal probabilities everywhere, another seed, other picks.
    rows, cols = (x.ravel() for x in np.mgrid[0:20, 0:20])
    flat = np.full((rows.size, 2), 0.5)
    one = select_pixels(_candidates(rows, cols, flat, seed=1), 5, spacing=3)
    two = select_pixels(_candidates(rows, cols, flat, seed=2), 5, spacing=3)
    assert not np.array_equal(one, two)
    assert np.array_equal(one, select_pixels(_candidates(rows, cols, flat, seed=1), 5,
                                             spacing=3))


def test_fewer_candidates_than_asked() -> None:
    cand = _candidates(np.array([0, 0, 10]), np.array([0, 1, 10]),
                       np.array([[0.5, 0.5], [0.6, 0.4], [0.7, 0.3]]))
    picks = select_pixels(cand, 5, spacing=3)
    assert picks.tolist() == [0, 2]  # pixel 1 shares pixel 0's patch
    empty = _candidates(np.zeros(0), np.zeros(0), np.zeros((0, 2)))
    assert select_pixels(empty, 3).size == 0
    with pytest.raises(ValueError):
        select_pixels(cand, 0)
