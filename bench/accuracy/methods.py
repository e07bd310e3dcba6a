"""The compared methods, all trained on the same labelled pixels of the same N-per-class draw.

* ``rf``, ``svm``: scikit-learn on per-pixel features = the centre pixel of the spectral patch
  (every optical band, z-scored with the scene statistics of :func:`fit_preprocessor`) and of
  the active patch (every LiDAR/SAR band, z-scored). The SVM pipeline standardises again on the
  training pixels. Fixed hyperparameters (RF: 200 trees, sqrt features; SVM: RBF, C = 10,
  gamma = "scale"): with 5-20 labels per class there is nothing to tune them on.
* ``rf-ctx``, ``svm-ctx``: what an analyst would build: the same pixel features plus
  neighbourhood statistics (3 x 3 and 5 x 5 means and the 5 x 5 standard deviation of the
  first PCA components and of every active band) and, with LiDAR, the height above ground
  (:func:`s2fin_cli.preprocessing.height_above_ground` of the DSM, at the pixel and its 5 x 5
  mean).
* ``cnn``: :class:`SmallCNN` on the PCA + active patch (p x p), trained by s2fin's own loop
  (:func:`s2fin_cli.training.fit`: AdamW, warm-up + cosine, label smoothing, flips/rotations)
  for a fixed budget of about 64 steps at N <= 10 (more above, :class:`CNNRecipe`), the last
  weights kept: the budget of the earlier benchmark, under which this CNN scored better than
  with S²Fin's longer schedule (it overfits its few pixels).
* ``s2fin``, ``s2fin-no-<module>`` and ``s2fin-without-<element>``: ``s2fin train`` itself
  (:mod:`bench.accuracy.s2fin_runs`), with a module switched off, or one element of the default
  recipe reverted (:data:`RECIPE_ELEMENTS`).

No method sees a test pixel while training.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from s2fin_cli.training import (
    ABLATIONS,
    TrainSettings,
    evaluate_patch_set,
    fit,
)
from s2fin_cli.training_data import PatchSet, epoch_batches

PIXEL_BASELINES = ("rf", "svm")
CONTEXT_BASELINES = ("rf-ctx", "svm-ctx")
BASELINES = (*PIXEL_BASELINES, *CONTEXT_BASELINES, "cnn")
S2FIN = "s2fin"
ABLATED = tuple(f"s2fin-no-{m}" for m in ABLATIONS)

# Elements of the default recipe, each reverted alone by a ``s2fin-without-<name>`` run:
# (what is reverted, the TrainRequest/TrainSettings/NetworkOptions fields it sets, the active
# sensor it applies to or None for any).
RECIPE_ELEMENTS: dict[str, tuple[str, dict[str, Any], str | None]] = {
    "auto-validation": ("a 20 % blocked validation split and early stopping whatever the "
                        "number of labels (the old default)", {"val_fraction": 0.2}, None),
    "stem-norm": ("GroupNorm per patch in both stems (the old network)",
                  {"optical_stem_norm": "group", "active_stem_norm": "group"}, None),
    "height": ("the DSM instead of its height above ground", {"height_window": 0}, "lidar"),
    "height-gain": ("no per-sample gain on the height above ground", {"height_jitter": 0.0},
                    "lidar"),
    "step-floor": ("no step floor: the epochs only", {"min_steps": 0}, None),
    "class-floor": ("a flat floor of 200 steps whatever the number of classes (the previous "
                    "default)", {"min_steps": 200}, None),
    "radiometric": ("no radiometric augmentation", {"gain_jitter": 0.0, "spectral_noise": 0.0},
                    None),
    "consistency": ("no consistency training on unlabelled pixels", {"consistency": 0.0},
                    None),
    "teacher": ("consistency training's weak views classified by the network itself instead "
                "of its weight average", {"consistency_teacher": 0.0}, None),
}
REVERTED = tuple(f"s2fin-without-{name}" for name in RECIPE_ELEMENTS)
ALL_METHODS = (*BASELINES, S2FIN, *ABLATED, *REVERTED)
LABELS = {"rf": "RF (pixel)", "svm": "SVM-RBF (pixel)",
          "rf-ctx": "RF (pixel + neighbourhood + height)",
          "svm-ctx": "SVM-RBF (pixel + neighbourhood + height)", "cnn": "2-D CNN (patch)",
          S2FIN: "S²Fin", **{f"s2fin-no-{m}": f"S²Fin − {m}" for m in ABLATIONS},
          **{f"s2fin-without-{e}": f"S²Fin without {e}" for e in RECIPE_ELEMENTS}}
SHORT = {"rf-ctx": "RF (+ctx)", "svm-ctx": "SVM (+ctx)", "rf": "RF", "svm": "SVM",
         "cnn": "CNN", S2FIN: "S²Fin"}


def is_s2fin(method: str) -> bool:
    return method == S2FIN or method in ABLATED or method in REVERTED


def applies(method: str, aux_kind: str) -> bool:
    """False for a recipe reversion that changes nothing with this active sensor (the height
    input of a SAR scene): it would repeat the default run."""
    if method not in REVERTED:
        return True
    kind = RECIPE_ELEMENTS[method.removeprefix("s2fin-without-")][2]
    return kind is None or kind == aux_kind


class SmallCNN(nn.Module):
    """Three 3x3 conv blocks on the PCA + active patch, global average pooling, linear head."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32,
                 dropout: float = 0.1) -> None:
        super().__init__()

        def block(i: int, o: int) -> list[nn.Module]:
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

        self.body = nn.Sequential(
            *block(in_channels, width), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 2 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Dropout(dropout), nn.Linear(2 * width, num_classes),
        )

    def forward(self, spectral: torch.Tensor, spatial: torch.Tensor,
                active: torch.Tensor) -> torch.Tensor:
        del spectral  # the CNN sees the PCA + active patch only
        return self.body(torch.cat([spatial, active], dim=1))


def pixel_features(patches: PatchSet) -> np.ndarray:
    """(samples, bands + aux): the centre pixel of the spectral and active patches."""
    s, p = patches.spectral.shape[-1], patches.active.shape[-1]
    x = torch.cat([patches.spectral[:, :, s // 2, s // 2], patches.active[:, :, p // 2, p // 2]],
                  dim=1)
    return x.numpy().astype(np.float64)


CONTEXT_PCA = 10  # PCA components whose neighbourhood statistics the analyst features hold


def _window_stats(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Mean (and, for 5 x 5, the standard deviation) of the centre ``size`` window per channel."""
    p = x.shape[-1]
    lo = p // 2 - size // 2
    w = x[:, :, lo:lo + size, lo:lo + size].flatten(2)
    return [w.mean(-1)] if size == 3 else [w.mean(-1), w.std(-1, unbiased=False)]


def context_features(patches: PatchSet, height: np.ndarray | None) -> np.ndarray:
    """Pixel features + 3 x 3 / 5 x 5 neighbourhood statistics of the first PCA components and
    the active bands + ``height`` (samples, k) when given (height above ground features)."""
    spatial = patches.spatial[:, :CONTEXT_PCA]
    parts = [torch.from_numpy(pixel_features(patches))]
    for x in (spatial, patches.active):
        parts += [t.double() for t in (*_window_stats(x, 3), *_window_stats(x, 5))]
    out = torch.cat(parts, dim=1).numpy()
    return out if height is None else np.concatenate([out, height], axis=1)


@dataclass
class Outcome:
    pred: np.ndarray  # output index per test sample
    train_seconds: float
    predict_seconds: float


def _sklearn(make: Callable[[int], object], x_train: np.ndarray, y_train: np.ndarray,
             x_test: np.ndarray, seed: int) -> Outcome:
    t0 = time.perf_counter()
    model = make(seed)
    model.fit(x_train, y_train)  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    pred = model.predict(x_test)  # type: ignore[attr-defined]
    return Outcome(np.asarray(pred, np.int64), t1 - t0, time.perf_counter() - t1)


def _rf(seed: int) -> object:
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(n_estimators=200, max_features="sqrt", random_state=seed,
                                  n_jobs=1)


def _svm(seed: int) -> object:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return make_pipeline(StandardScaler(), SVC(kernel="rbf", C=10.0, gamma="scale",
                                               random_state=seed))


@dataclass(frozen=True)
class CNNRecipe:
    """The CNN's training: about ``steps`` optimiser steps at N <= ``reference_n`` labelled
    pixels per class, growing with N above it (N = 20: twice), batch 32, AdamW 1e-3, weight
    decay 0.05, label smoothing 0.1, flips/rotations, warm-up 5 % of the epochs, last weights."""

    steps: int = 64
    reference_n: int = 10
    batch_size: int = 32

    def settings(self, n_train: int, seed: int, n_per_class: int) -> TrainSettings:
        steps = round(self.steps * max(1.0, n_per_class / self.reference_n))
        per_epoch = len(epoch_batches(n_train, self.batch_size,
                                      torch.Generator().manual_seed(0)))
        epochs = max(1, round(steps / per_epoch))
        warmup = max(1, round(0.05 * epochs)) if epochs > 1 else 0
        return TrainSettings(epochs=epochs, batch_size=self.batch_size, lr=1e-3,
                             weight_decay=0.05, warmup_epochs=warmup, patience=epochs + 1,
                             seed=seed, label_smoothing=0.1, augment=True)


def _cnn(train: PatchSet, test: PatchSet, num_classes: int, seed: int,
         overrides: dict[str, Any] | None) -> Outcome:
    device = torch.device("cpu")
    torch.manual_seed(seed)
    channels = train.spatial.shape[1] + train.active.shape[1]
    model = SmallCNN(channels, num_classes)
    n_per_class = len(train) // max(num_classes, 1)
    settings = CNNRecipe().settings(len(train), seed, n_per_class)
    names = {f.name for f in dataclasses.fields(TrainSettings)}
    settings = dataclasses.replace(settings, **{k: v for k, v in (overrides or {}).items()
                                                if k in names and k != "min_steps"})
    t0 = time.perf_counter()
    result = fit(model, train, None, settings, device)
    model.load_state_dict(result.best_state)
    t1 = time.perf_counter()
    pred, _ = evaluate_patch_set(model, test, device, batch_size=256)
    return Outcome(pred, t1 - t0, time.perf_counter() - t1)


def run_baseline(method: str, train: PatchSet, test: PatchSet, num_classes: int, *, seed: int,
                 height: tuple[np.ndarray, np.ndarray] | None = None,
                 overrides: dict[str, Any] | None = None) -> Outcome:
    """Train baseline ``method`` on ``train`` and predict ``test`` (output indexes).
    ``height``: the height features of the training and test pixels (context baselines)."""
    y = train.targets.numpy()
    if method in PIXEL_BASELINES:
        make = _rf if method == "rf" else _svm
        return _sklearn(make, pixel_features(train), y, pixel_features(test), seed)
    if method in CONTEXT_BASELINES:
        make = _rf if method == "rf-ctx" else _svm
        h_train, h_test = height if height is not None else (None, None)
        return _sklearn(make, context_features(train, h_train), y,
                        context_features(test, h_test), seed)
    if method == "cnn":
        return _cnn(train, test, num_classes, seed, overrides)
    raise ValueError(f"unknown baseline {method!r}; choose from {', '.join(BASELINES)}")


__all__ = ["ABLATED", "ALL_METHODS", "BASELINES", "LABELS", "RECIPE_ELEMENTS", "REVERTED",
           "S2FIN", "CNNRecipe", "SmallCNN", "applies", "context_features", "is_s2fin",
           "pixel_features",
           "run_baseline"]
