"""The limited-label protocol: which pixels train and which test, per (scene, N, seed).

Per scene, once:

1. Labelled pixels on scene nodata are dropped (:func:`drop_invalid_centres`).
2. Classes that cannot supply ``max(N)`` training pixels plus ``min_test`` test pixels are left
   out of the scene (listed in the report).
3. Test candidates: the test labels (generated / imported scenes with a split), or the label map
   itself (real scenes). Above ``test_cap`` pixels a fixed seeded subsample is kept,
   proportional per class with a floor of ``min(count, TEST_FLOOR)`` per class, the same for
   every method, N and seed. Their patches are cut once (:func:`extract_patch_set`).

Per (N, seed):

4. Training pixels: exactly N per class, seeded and stratified (:func:`apply_protocol`, the
   protocol of ``s2fin train --per-class N``) from the training-eligible pixels.
5. Test pixels: the candidates minus every pixel within the patch radius (Chebyshev distance
   <= patch_size // 2) of a training pixel, so no test centre lies inside a training patch.
   For generated scenes this removes nothing (their test labels are buffered away from the
   training objects); for real scenes it also removes the training pixels themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bench.accuracy.scenes import BenchScene
from s2fin_cli.classes import ClassTable
from s2fin_cli.io.labels import read_label_points
from s2fin_cli.io.reader import Scene
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import Preprocessor
from s2fin_cli.sampling import (
    Protocol,
    Samples,
    apply_protocol,
    drop_invalid_centres,
    within_distance,
)
from s2fin_cli.training_data import PatchSet, extract_patch_set

TEST_FLOOR = 100
_TEST_STREAM = 7919


@dataclass
class Pools:
    """Training-eligible pixels and test candidates of one scene (kept classes only)."""

    classes: ClassTable
    pool: Samples
    candidates: Samples
    test_available: dict[int, int]  # per class, before the cap
    dropped_classes: list[tuple[int, str, str]] = field(default_factory=list)
    dropped_nodata: int = 0


def _named(table: ClassTable, scene: BenchScene) -> ClassTable:
    if scene.classes is None:
        return table
    names = {c.id: c for c in scene.classes}
    return ClassTable(tuple(names.get(c.id, c) for c in table))


def _cap(samples: Samples, cap: int, seed: int) -> Samples:
    """A seeded per-class subsample of about ``cap`` pixels (proportional, floor per class)."""
    if cap <= 0 or len(samples) <= cap:
        return samples.sorted()
    rng = np.random.default_rng([seed, _TEST_STREAM])
    counts = samples.counts()
    total = sum(counts.values())
    keep = []
    for class_id, n in sorted(counts.items()):
        k = min(n, max(min(n, TEST_FLOOR), round(cap * n / total)))
        members = np.flatnonzero(samples.classes == class_id)
        keep.append(rng.choice(members, size=k, replace=False))
    return samples.subset(np.sort(np.concatenate(keep))).sorted()


def build_pools(bench: BenchScene, scene: Scene, *, max_n: int, min_test: int,
                test_cap: int, seed: int = 0) -> Pools:
    points, table = read_label_points(bench.pool_labels, scene.grid)
    table = _named(table, bench)
    pool, dropped = drop_invalid_centres(Samples.from_points(points), scene)
    dropped_nodata = sum(dropped.values())
    if bench.test_labels is not None:
        test_points, _ = read_label_points(bench.test_labels, scene.grid)
        test, test_dropped = drop_invalid_centres(Samples.from_points(test_points), scene)
        dropped_nodata += sum(test_dropped.values())
        need_pool = max_n
    else:
        test = pool
        need_pool = max_n + min_test
    pool_counts, test_counts = pool.counts(), test.counts()
    kept, dropped_classes = [], []
    for c in table:
        have_pool, have_test = pool_counts.get(c.id, 0), test_counts.get(c.id, 0)
        if have_pool < need_pool:
            dropped_classes.append((c.id, c.name, f"{have_pool} labelled pixels, the protocol "
                                    f"needs {need_pool}"))
        elif have_test < min_test:
            dropped_classes.append((c.id, c.name, f"{have_test} test pixels (< {min_test})"))
        else:
            kept.append(c)
    classes = ClassTable(tuple(kept))
    ids = np.asarray(classes.ids, np.int64)
    pool = pool.subset(np.isin(pool.classes, ids))
    test = test.subset(np.isin(test.classes, ids))
    available = test.counts(classes)
    return Pools(classes, pool.sorted(), _cap(test, test_cap, seed), available, dropped_classes,
                 dropped_nodata)


@dataclass
class Draw:
    """One (N, seed): the training pixels, and which test candidates are scored."""

    n: int
    seed: int
    train: Samples
    test_mask: np.ndarray  # bool over the candidates
    excluded: int  # candidates removed for lying inside a training patch

    def test(self, candidates: Samples) -> Samples:
        return candidates.subset(self.test_mask)


def draw(pools: Pools, n: int, seed: int, patch_size: int) -> Draw:
    train = apply_protocol(pools.pool, Protocol("per-class", per_class=n), pools.classes,
                           seed=seed)
    cand = pools.candidates
    near = within_distance(cand.rows, cand.cols, train.rows, train.cols, patch_size // 2 + 1)
    return Draw(n, seed, train, ~near, int(near.sum()))


def cut(scene: Scene, samples: Samples, pre: Preprocessor, geometry: PatchGeometry,
        classes: ClassTable) -> PatchSet:
    """The three network inputs of ``samples`` (CPU), through s2fin's own patch cutting."""
    return extract_patch_set(scene, samples, pre, geometry, classes.ids, torch.device("cpu"))


def subset(patches: PatchSet, mask: np.ndarray) -> PatchSet:
    index = torch.from_numpy(np.flatnonzero(mask))
    return PatchSet(patches.spectral[index], patches.spatial[index], patches.active[index],
                    patches.targets[index])
