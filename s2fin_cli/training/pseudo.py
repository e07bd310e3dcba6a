"""Self-training (``s2fin train --semi``): a second fit on the labels plus confident,
class-balanced pseudo-labels of unlabelled pixels.

After the first fit, a seeded random pool of unlabelled pixels (valid centres, not labelled, no
patch overlapping a validation patch) is classified with the selected weights through the same
code as scoring (:func:`s2fin_cli.scoring.predict_probabilities`). Per class, the most confident
pixels predicted as that class (probability at least ``pseudo_threshold``) become pseudo-labels,
at most ``self_training`` times the class's training labels: balanced, so a class the first
model favours cannot swamp the others. A fresh network then trains on labels + pseudo-labels for
as many optimiser steps as the first fit ran (the cost of self-training is about one more
training), and validation, if any, selects its weights as before.

Test labels are never used; the pool is drawn from the whole scene, so pixels that carry test
labels may be pseudo-labelled by the model's own prediction, as any unlabelled pixel.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from s2fin_cli.classes import ClassTable
from s2fin_cli.hashing import derived_seed
from s2fin_cli.io.reader import Scene
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import Preprocessor
from s2fin_cli.sampling import Samples, Split, valid_centres, within_distance
from s2fin_cli.scoring import predict_probabilities
from s2fin_cli.training.settings import TrainSettings

# Unlabelled pixels scored for pseudo-labels: this many per training label, at most POOL_MAX.
POOL_PER_LABEL = 20
POOL_MAX = 20000
_POOL_STREAM = 303


@dataclass(frozen=True)
class PseudoLabels:
    samples: Samples  # the pseudo-labelled pixels (class ids predicted)
    pool: int  # unlabelled pixels scored

    def tensors(self) -> dict[str, torch.Tensor]:
        s = self.samples
        return {"rows": torch.from_numpy(s.rows.copy()), "cols": torch.from_numpy(s.cols.copy()),
                "classes": torch.from_numpy(s.classes.copy()),
                "pool": torch.tensor([self.pool], dtype=torch.int64)}

    @classmethod
    def from_tensors(cls, data: dict[str, torch.Tensor]) -> PseudoLabels:
        return cls(Samples(data["rows"].numpy().astype(np.int64),
                           data["cols"].numpy().astype(np.int64),
                           data["classes"].numpy().astype(np.int64)), int(data["pool"][0]))


def unlabelled_pool(scene: Scene, labelled: Samples, split: Split, patch_size: int, size: int,
                    seed: int) -> Samples:
    """Up to ``size`` seeded random pixels of the scene that are valid centres, carry no label
    and whose patch does not overlap a validation patch (class ids 0), row-major."""
    height, width = scene.grid.shape
    rng = np.random.default_rng([seed, _POOL_STREAM])
    flat = np.unique(rng.integers(0, height * width, size=2 * size + 16))
    taken = np.isin(flat, labelled.rows * width + labelled.cols)
    flat = flat[~taken]
    flat = flat[np.sort(rng.permutation(flat.size)[:size])] if flat.size > size else flat
    pool = Samples(flat // width, flat % width, np.zeros(flat.size, np.int64))
    if len(split.val):
        near = within_distance(pool.rows, pool.cols, split.val.rows, split.val.cols, patch_size)
        pool = pool.subset(~near)
    return pool.subset(valid_centres(scene, pool)) if len(pool) else pool


def choose(probabilities: np.ndarray, pool: Samples, classes: ClassTable,
           per_class: dict[int, int], threshold: float) -> Samples:
    """Per class, the ``per_class[id]`` most confident pool pixels predicted as that class with
    a probability of at least ``threshold`` (ties: pool order), row-major."""
    ids = np.asarray(classes.ids, np.int64)
    pred, conf = probabilities.argmax(1), probabilities.max(1)
    chosen = []
    for i, class_id in enumerate(ids.tolist()):
        members = np.flatnonzero((pred == i) & (conf >= threshold))
        order = members[np.argsort(-conf[members], kind="stable")]
        chosen.append(order[:per_class.get(class_id, 0)])
    index = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    picked = pool.subset(index)
    return Samples(picked.rows, picked.cols, ids[pred[index]]).sorted()


def pseudo_label(model: torch.nn.Module, scene: Scene, labelled: Samples, split: Split,
                 pre: Preprocessor, geometry: PatchGeometry, classes: ClassTable,
                 settings: TrainSettings, device: torch.device) -> PseudoLabels:
    """The pseudo-labels of one run (see the module docs); ``model`` holds the first fit's
    selected weights."""
    size = min(POOL_MAX, POOL_PER_LABEL * max(len(split.train), 1))
    pool = unlabelled_pool(scene, labelled, split, geometry.patch_size, size, settings.seed)
    if len(pool) == 0:
        return PseudoLabels(Samples.empty(), 0)
    probabilities = predict_probabilities(model, scene, pool, pre, geometry, device,
                                          len(classes))
    counts = split.train.counts(classes)
    per_class = {c: round(settings.self_training * n) for c, n in counts.items()}
    return PseudoLabels(choose(probabilities, pool, classes, per_class,
                               settings.pseudo_threshold), len(pool))


def merged(train: Samples, pseudo: Samples) -> Samples:
    """Training labels and pseudo-labels as one sample set (row-major)."""
    return Samples(np.concatenate([train.rows, pseudo.rows]),
                   np.concatenate([train.cols, pseudo.cols]),
                   np.concatenate([train.classes, pseudo.classes])).sorted()


def second_fit_settings(settings: TrainSettings, steps: int) -> TrainSettings:
    """The second fit's settings: as many optimiser steps as the first fit ran."""
    return dataclasses.replace(settings, epochs=1, min_steps=steps)


def second_fit_seed(seed: int) -> int:
    """The seed of the second network's initialisation."""
    return derived_seed("s2fin-self-training", seed) % (2**31)


__all__ = ["POOL_MAX", "POOL_PER_LABEL", "PseudoLabels", "choose", "merged", "pseudo_label",
           "second_fit_seed", "second_fit_settings", "unlabelled_pool"]
