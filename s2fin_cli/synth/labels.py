"""Ground truth on the output grid and the train / test label protocol.

Protocol (documented in the scene's ``scene.json`` and the README):

1. Candidate pixels are *interior* pixels: the 3 x 3 neighbourhood has one class (no boundary
   mixed pixels), the optical pixel is valid. Training falls back to boundary pixels only when
   the training objects of a class have too few interior ones; test uses all pixels of a class
   only when it has no interior test pixel.
2. Each class's objects (a building, a crown, a field, a road segment...) are sorted along a
   random direction; the first ``train_fraction`` of them (at least one, never all) are
   *training objects*, the rest *test objects*. Training therefore lies mostly in one part of
   the scene and test elsewhere. A class drawn as one object only is cut in two halves along
   that direction.
3. Training labels: ``train_per_class`` pixels per class, a few per training object
   (round-robin over the objects, random pixels inside each).
4. Test labels: every candidate pixel of a test object that is more than ``label_buffer``
   pixels (Chebyshev) away from every pixel of every training object, so no test pixel falls in
   a training pixel's patch of up to (2 * buffer + 1)^2. Should that leave a class without test
   pixels, the buffer is measured from the training *pixels* instead (noted in the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from s2fin_cli.synth.config import SynthConfig


@dataclass
class LabelReport:
    """What the protocol did, per class id: objects and pixels on each side."""

    train_objects: dict[int, int] = field(default_factory=dict)
    test_objects: dict[int, int] = field(default_factory=dict)
    train_pixels: dict[int, int] = field(default_factory=dict)
    test_pixels: dict[int, int] = field(default_factory=dict)
    relaxed: list[int] = field(default_factory=list)  # classes whose buffer was relaxed
    direction_deg: float = 0.0


def downsample_classes(classes: np.ndarray, objects: np.ndarray, f: int, n_classes: int
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Majority class per f x f block and an object of that class (the largest id in the block).
    """
    if f == 1:
        return classes.copy(), objects.copy()
    h, w = classes.shape[0] // f, classes.shape[1] // f
    blocks = classes.reshape(h, f, w, f).transpose(0, 2, 1, 3).reshape(h, w, f * f)
    counts = np.stack([(blocks == c).sum(-1) for c in range(n_classes + 1)], axis=-1)
    counts[..., 0] = -1
    major = counts.argmax(-1).astype(np.uint8)
    obj_blocks = objects.reshape(h, f, w, f).transpose(0, 2, 1, 3).reshape(h, w, f * f)
    obj = np.where(blocks == major[..., None], obj_blocks, 0).max(-1).astype(np.int32)
    return major, obj


def make_labels(gt: np.ndarray, objects: np.ndarray, valid: np.ndarray, config: SynthConfig,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, LabelReport]:
    """Train and test label rasters (uint8, 0 = unlabeled), disjoint, per the module protocol."""
    n_classes = len(config.class_specs)
    h, w = gt.shape
    report = LabelReport()
    angle = float(rng.uniform(0, 2 * math.pi))
    report.direction_deg = round(math.degrees(angle), 1)
    rows, cols = np.mgrid[0:h, 0:w]
    proj = cols * math.cos(angle) - rows * math.sin(angle)

    footprint = np.ones((3, 3), bool)
    interior = np.zeros(gt.shape, bool)
    for c in range(1, n_classes + 1):
        interior |= ndimage.binary_erosion(gt == c, footprint, border_value=1)
    interior &= valid
    # Split objects into pseudo-objects by class (an object id is unique per class anyway).
    key = objects.astype(np.int64) * 256 + gt
    train_obj_mask = np.zeros(gt.shape, bool)
    test_obj_mask = np.zeros(gt.shape, bool)
    train = np.zeros(gt.shape, np.uint8)
    candidates: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    for c in range(1, n_classes + 1):
        in_class = (gt == c) & valid
        if not in_class.any():
            continue
        keys, inverse = np.unique(key[in_class], return_inverse=True)
        centre = np.bincount(inverse, weights=proj[in_class]) / np.bincount(inverse)
        order = np.argsort(centre, kind="stable")
        n = len(keys)
        cls_idx = np.flatnonzero(in_class.ravel())
        if n == 1:
            cut = np.median(proj.ravel()[cls_idx])
            is_train_px = proj.ravel()[cls_idx] < cut
            obj_ids = np.where(is_train_px, 0, 1)
            train_ids = np.array([0])
            n_train, n = 1, 2
        else:
            n_train = min(n - 1, max(1, round(config.train_fraction * n)))
            rank = np.empty(n, np.int64)
            rank[order] = np.arange(n)
            obj_ids = rank[inverse]
            train_ids = np.arange(n_train)
        is_train_px = np.isin(obj_ids, train_ids)
        train_obj_mask.ravel()[cls_idx[is_train_px]] = True
        test_obj_mask.ravel()[cls_idx[~is_train_px]] = True
        report.train_objects[c] = n_train
        report.test_objects[c] = n - n_train

        # Training pixels: round-robin over the training objects.
        inner = interior.ravel()[cls_idx]
        chosen: list[int] = []
        pools = []
        for t in train_ids:
            in_obj = obj_ids == t
            # Interior pixels first; boundary pixels only when an object has no more.
            pools.append(np.concatenate([rng.permutation(cls_idx[in_obj & inner]),
                                         rng.permutation(cls_idx[in_obj & ~inner])]))
        depth = 0
        while len(chosen) < config.train_per_class and any(depth < p.size for p in pools):
            for p in pools:
                if depth < p.size and len(chosen) < config.train_per_class:
                    chosen.append(int(p[depth]))
            depth += 1
        train.ravel()[np.array(chosen, np.int64)] = c
        report.train_pixels[c] = len(chosen)
        test_pool = cls_idx[~is_train_px & inner]
        if test_pool.size == 0:
            test_pool = cls_idx[~is_train_px]
        candidates[c] = (test_pool, cls_idx[~is_train_px])

    size = 2 * config.label_buffer + 1
    near_train_obj = ndimage.binary_dilation(train_obj_mask, np.ones((size, size), bool))
    near_train_px = ndimage.binary_dilation(train > 0, np.ones((size, size), bool))
    test = np.zeros(gt.shape, np.uint8)
    for c, (pool, whole) in candidates.items():
        keep = pool[~near_train_obj.ravel()[pool]]
        if keep.size == 0:
            report.relaxed.append(c)
            keep = pool[~near_train_px.ravel()[pool]]
            if keep.size == 0:
                keep = whole[train.ravel()[whole] == 0]
        test.ravel()[keep] = c
        report.test_pixels[c] = int(keep.size)
    return train, test, report
