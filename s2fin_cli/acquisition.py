"""Which pixels an analyst should label next, as pure array arithmetic (no I/O, no torch).

Used by :mod:`s2fin_cli.suggestion` (``s2fin suggest``) and by ``bench/active_learning.py``.

* **Uncertainty** of a pixel from its class probabilities ``p`` (one row per pixel):
  ``margin``: ``1 - (p1 - p2)``, one minus the gap between the two most probable classes;
  ``entropy``: ``-sum p log p / log K``, the entropy normalised to [0, 1]. Both are 0 for a
  certain pixel and 1 for a pixel split evenly between classes (the top two, or all K).
* **Pixel keys**: a seeded 64-bit hash of each pixel's (row, col) (SplitMix64). They order
  ties and draw uniform samples: the pixels with the smallest keys are a uniform random sample
  without replacement, whatever order or blocks the pixels are visited in.
* **Selection** (:func:`select_pixels`), strategy ``diverse`` (what ``s2fin suggest`` does):

  1. the pool: the ``pool_factor * n`` most uncertain candidates;
  2. greedy picks from the pool, one at a time. The class whose turn it is: among the predicted
     classes that still have pool members, the one with the fewest picks so far (round-robin
     quotas, so the picks spread over the classes the model predicts). Within it, the candidate
     with the highest ``uncertainty x feature distance``, where the feature distance is the
     Euclidean distance of its L2-normalised feature vector (the network's representation just
     before the classifier) to the nearest pick so far and to the already labelled pixels
     (weighted k-center: not redundant with what is known or chosen);
  3. after each pick, the pool members at Chebyshev distance < ``spacing`` pixels of it leave
     the pool (``s2fin suggest``: ``patch // 2 + 1``, no pick inside another pick's patch).

  ``uncertainty``: the ``n`` most uncertain candidates, nothing else (the baseline "uncertainty
  alone"); ``random``: the ``n`` candidates with the smallest keys (a uniform sample).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Acquisition = Literal["margin", "entropy"]
ACQUISITIONS: tuple[Acquisition, ...] = ("margin", "entropy")
Strategy = Literal["diverse", "uncertainty", "random"]
STRATEGIES: tuple[Strategy, ...] = ("diverse", "uncertainty", "random")
# The pool of the diverse selection holds this many times n of the most uncertain candidates.
DEFAULT_POOL_FACTOR = 10

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _checked(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probabilities must be (pixels, classes), got shape {p.shape}")
    return p


def top_two(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pixel: the index and probability of the most probable class and of the runner-up
    (index -1 and probability 0 when there is one class)."""
    p = _checked(probabilities)
    n, k = p.shape
    if k == 1:
        return (np.zeros(n, np.int64), p[:, 0], np.full(n, -1, np.int64), np.zeros(n))
    order = np.argsort(-p, axis=1, kind="stable")[:, :2]
    rows = np.arange(n)
    first, second = order[:, 0], order[:, 1]
    return first, p[rows, first], second, p[rows, second]


def margin(probabilities: np.ndarray) -> np.ndarray:
    """``p1 - p2``: the gap between the two most probable classes (1 with one class)."""
    _, p1, _, p2 = top_two(probabilities)
    return np.asarray(p1 - p2, np.float64)


def normalised_entropy(probabilities: np.ndarray) -> np.ndarray:
    """``-sum p log p / log K`` in [0, 1] (0 with one class)."""
    p = _checked(probabilities)
    k = p.shape[1]
    if k == 1:
        return np.zeros(p.shape[0])
    safe = np.where(p > 0, p, 1.0)
    h = -(p * np.log(safe)).sum(axis=1) / np.log(k)
    return np.clip(h, 0.0, 1.0)


def uncertainty(probabilities: np.ndarray, acquisition: Acquisition) -> np.ndarray:
    """The acquisition score, higher = more uncertain, in [0, 1]."""
    if acquisition == "margin":
        return np.clip(1.0 - margin(probabilities), 0.0, 1.0)
    if acquisition == "entropy":
        return normalised_entropy(probabilities)
    raise ValueError(f"unknown acquisition {acquisition!r}; choose from {ACQUISITIONS}")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK64
        return z ^ (z >> np.uint64(31))


def pixel_keys(rows: np.ndarray, cols: np.ndarray, seed: int) -> np.ndarray:
    """A seeded uint64 hash of each (row, col): the same pixel always gets the same key for a
    seed, whatever order or blocks it is visited in."""
    r = np.asarray(rows, np.int64).astype(np.uint64)
    c = np.asarray(cols, np.int64).astype(np.uint64)
    salt = _splitmix64(np.asarray([seed & 0xFFFFFFFFFFFFFFFF], np.uint64))[0]
    with np.errstate(over="ignore"):
        return _splitmix64(((r << np.uint64(32)) | c) ^ salt)


def smallest_keys(keys: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` smallest keys, in increasing key order."""
    if k >= keys.size:
        return np.argsort(keys, kind="stable")
    part = np.argpartition(keys, k)[:k]
    return part[np.argsort(keys[part], kind="stable")]


def ranked(score: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Indexes by decreasing ``score``, ties by increasing key (seeded, never by position)."""
    return np.lexsort((keys, -np.asarray(score, np.float64)))


@dataclass(frozen=True)
class Candidates:
    """Scored candidate pixels: where, what the model thinks, and its feature vectors."""

    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    probabilities: np.ndarray  # (N, K) float
    features: np.ndarray | None  # (N, D) float, or None (no feature diversity)
    keys: np.ndarray  # uint64, pixel_keys

    def __len__(self) -> int:
        return int(self.rows.size)


def normalised_features(features: np.ndarray) -> np.ndarray:
    """Feature vectors scaled to unit length (zero vectors stay zero)."""
    f = np.asarray(features, np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(norm > 0, norm, 1.0)


def _nearest_distance(points: np.ndarray, centres: np.ndarray, chunk: int = 4096) -> np.ndarray:
    out = np.full(points.shape[0], np.inf)
    for start in range(0, centres.shape[0], chunk):
        c = centres[start:start + chunk]
        d2 = ((points[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)
        out = np.minimum(out, np.sqrt(d2.min(axis=1)))
    return out


def select_pixels(candidates: Candidates, n: int, *, acquisition: Acquisition = "margin",
                  strategy: Strategy = "diverse", spacing: int = 1,
                  pool_factor: int = DEFAULT_POOL_FACTOR,
                  labelled_features: np.ndarray | None = None) -> np.ndarray:
    """Indexes (into ``candidates``) of up to ``n`` pixels to label, best first (module docs).

    ``spacing``: picks keep a Chebyshev distance of at least this many pixels;
    ``labelled_features``: feature vectors of pixels already labelled (diverse strategy).
    """
    if n < 1:
        raise ValueError("n must be >= 1")
    if len(candidates) == 0:
        return np.zeros(0, np.int64)
    if strategy == "random":
        return smallest_keys(candidates.keys, n)
    score = uncertainty(candidates.probabilities, acquisition)
    order = ranked(score, candidates.keys)
    if strategy == "uncertainty":
        return order[:n]
    if strategy != "diverse":
        raise ValueError(f"unknown strategy {strategy!r}; choose from {STRATEGIES}")
    # A pool the spacing rule exhausts before n picks is followed by the next most uncertain.
    size = max(n, pool_factor * n)
    picks = np.zeros(0, np.int64)
    for start in range(0, order.size, size):
        if picks.size >= n:
            break
        pool = order[start:start + size]
        new = _greedy(candidates, pool, score[pool], n - picks.size, spacing, labelled_features,
                      picks)
        picks = np.concatenate([picks, pool[new]])
    return picks


def _greedy(candidates: Candidates, pool: np.ndarray, score: np.ndarray, n: int, spacing: int,
            labelled_features: np.ndarray | None, taken: np.ndarray) -> np.ndarray:
    """Positions in ``pool`` of the diverse picks, in pick order (``taken``: candidates picked
    from earlier pools)."""
    rows, cols = candidates.rows[pool], candidates.cols[pool]
    keys = candidates.keys[pool]
    all_predicted = np.argmax(candidates.probabilities, axis=1)
    predicted = all_predicted[pool]
    features = (None if candidates.features is None or candidates.features.shape[1] == 0
                else normalised_features(candidates.features[pool]))
    alive = np.ones(pool.size, bool)
    for j in taken.tolist():
        alive &= ~((np.abs(rows - candidates.rows[j]) < spacing)
                   & (np.abs(cols - candidates.cols[j]) < spacing))
    nearest = np.full(pool.size, np.inf)
    if features is not None:
        assert candidates.features is not None
        known = [candidates.features[taken]]
        if labelled_features is not None and len(labelled_features):
            known.append(np.asarray(labelled_features))
        centres = np.concatenate(known)
        if len(centres):
            nearest = _nearest_distance(features, normalised_features(centres))
    picks_per_class = np.bincount(all_predicted[taken],
                                  minlength=candidates.probabilities.shape[1])
    picks: list[int] = []
    while len(picks) < n and alive.any():
        # Weighted k-center: uncertainty times the distance to what is known (1 before any).
        weight = score * np.where(np.isfinite(nearest), nearest, 1.0)
        best = _best_per_class(weight, keys, predicted, alive)
        # The class with the fewest picks; ties: the one whose best candidate weighs most.
        turn = min(best, key=lambda c: (picks_per_class[c], -weight[best[c]], keys[best[c]]))
        j = best[turn]
        picks.append(j)
        picks_per_class[turn] += 1
        alive &= ~((np.abs(rows - rows[j]) < spacing) & (np.abs(cols - cols[j]) < spacing))
        alive[j] = False
        if features is not None:
            step = np.sqrt(((features - features[j]) ** 2).sum(axis=1))
            nearest = np.minimum(nearest, step)
    return np.asarray(picks, np.int64)


def _best_per_class(weight: np.ndarray, keys: np.ndarray, predicted: np.ndarray,
                    alive: np.ndarray) -> dict[int, int]:
    """For each predicted class with live pool members, its best one (highest weight, ties by
    key)."""
    idx = np.flatnonzero(alive)
    order = idx[ranked(weight[idx], keys[idx])]
    classes, first = np.unique(predicted[order], return_index=True)
    return {int(c): int(order[f]) for c, f in zip(classes, first, strict=True)}


__all__ = [
    "ACQUISITIONS",
    "DEFAULT_POOL_FACTOR",
    "STRATEGIES",
    "Acquisition",
    "Candidates",
    "Strategy",
    "margin",
    "normalised_entropy",
    "normalised_features",
    "pixel_keys",
    "ranked",
    "select_pixels",
    "smallest_keys",
    "top_two",
    "uncertainty",
]
