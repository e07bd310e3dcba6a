"""The compared methods, all trained on the same patches of the same N-per-class draw.

* ``rf``, ``svm``: scikit-learn on per-pixel features = the centre pixel of the spectral patch
  (every optical band, z-scored with the scene statistics of :func:`fit_preprocessor`) and of
  the active patch (every LiDAR/SAR band, z-scored). The SVM pipeline standardises again on the
  training pixels. Fixed hyperparameters (RF: 200 trees, sqrt features; SVM: RBF, C = 10,
  gamma = "scale"): with 5-20 labels per class there is nothing to tune them on.
* ``cnn``: :class:`SmallCNN` on the PCA + active patch (p x p), trained by the same loop as
  S²Fin (:func:`s2fin_cli.training.fit`: AdamW, warm-up + cosine, label smoothing, dihedral
  augmentation) with the same fixed step budget.
* ``s2fin`` and ``s2fin-no-<module>``: :class:`models.S2Fin` built by
  :meth:`s2fin_cli.training.NetworkOptions.build_config` (the config ``s2fin train`` builds),
  one module switched off per ablation.

No method sees a validation or test pixel while training: deep models train for a fixed number
of optimisation steps and the last weights are scored (no checkpoint selection).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from models import S2Fin
from s2fin_cli.training import (
    ABLATIONS,
    NetworkOptions,
    TrainSettings,
    evaluate_patch_set,
    fit,
)
from s2fin_cli.training_data import PatchSet, epoch_batches

BASELINES = ("rf", "svm", "cnn")
S2FIN = "s2fin"
ABLATED = tuple(f"s2fin-no-{m}" for m in ABLATIONS)
ALL_METHODS = (*BASELINES, S2FIN, *ABLATED)
LABELS = {"rf": "RF (pixel)", "svm": "SVM-RBF (pixel)", "cnn": "2-D CNN (patch)",
          S2FIN: "S²Fin", **{f"s2fin-no-{m}": f"S²Fin − {m}" for m in ABLATIONS}}


@dataclass(frozen=True)
class Recipe:
    """The training recipe shared by the CNN and every S²Fin variant.

    ``steps`` is the budget at N <= ``reference_n`` labelled pixels per class; above it the
    budget grows with N (N = 20 gets twice the steps of N = 10), so every N gets about the same
    number of passes over its training pixels.
    """

    steps: int = 64
    reference_n: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    augment: bool = True
    warmup_fraction: float = 0.05

    def steps_at(self, n_per_class: int) -> int:
        return round(self.steps * max(1.0, n_per_class / self.reference_n))

    def settings(self, n_train: int, seed: int, n_per_class: int = 0) -> TrainSettings:
        """TrainSettings whose epochs add up to about ``steps_at(n_per_class)`` steps."""
        per_epoch = len(epoch_batches(n_train, self.batch_size, torch.Generator().manual_seed(0)))
        epochs = max(1, round(self.steps_at(n_per_class) / per_epoch))
        warmup = max(1, round(self.warmup_fraction * epochs)) if epochs > 1 else 0
        return TrainSettings(epochs=epochs, batch_size=self.batch_size, lr=self.lr,
                             weight_decay=self.weight_decay, warmup_epochs=warmup,
                             patience=epochs + 1, seed=seed,
                             label_smoothing=self.label_smoothing, augment=self.augment)

    def to_json(self) -> dict[str, object]:
        return asdict(self)


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


@dataclass
class Outcome:
    pred: np.ndarray  # output index per test sample
    train_seconds: float
    predict_seconds: float


def _sklearn(make: Callable[[int], object], train: PatchSet, test: PatchSet,
             seed: int) -> Outcome:
    t0 = time.perf_counter()
    model = make(seed)
    model.fit(pixel_features(train), train.targets.numpy())  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    pred = model.predict(pixel_features(test))  # type: ignore[attr-defined]
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


def _torch(model: nn.Module, train: PatchSet, test: PatchSet, recipe: Recipe,
           seed: int, n_per_class: int) -> Outcome:
    device = torch.device("cpu")
    t0 = time.perf_counter()
    result = fit(model, train, None, recipe.settings(len(train), seed, n_per_class), device)
    model.load_state_dict(result.best_state)
    t1 = time.perf_counter()
    pred, _ = evaluate_patch_set(model, test, device, batch_size=256)
    return Outcome(pred, t1 - t0, time.perf_counter() - t1)


def build_model(method: str, train: PatchSet, num_classes: int, network: NetworkOptions,
                seed: int) -> nn.Module:
    torch.manual_seed(seed)
    if method == "cnn":
        channels = train.spatial.shape[1] + train.active.shape[1]
        return SmallCNN(channels, num_classes, dropout=network.dropout)
    ablate = () if method == S2FIN else (method.removeprefix("s2fin-no-"),)
    config = dataclasses.replace(network, ablate=ablate).build_config(
        train.spectral.shape[1], train.spatial.shape[1], train.active.shape[1], num_classes)
    return S2Fin(config)


def run_method(method: str, train: PatchSet, test: PatchSet, num_classes: int, *,
               recipe: Recipe, network: NetworkOptions, seed: int, n_per_class: int) -> Outcome:
    """Train ``method`` on ``train`` and predict ``test`` (output indexes)."""
    if method == "rf":
        return _sklearn(_rf, train, test, seed)
    if method == "svm":
        return _sklearn(_svm, train, test, seed)
    if method == "cnn" or method == S2FIN or method in ABLATED:
        model = build_model(method, train, num_classes, network, seed)
        return _torch(model, train, test, recipe, seed, n_per_class)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(ALL_METHODS)}")


def parameter_count(method: str, train: PatchSet, num_classes: int, network: NetworkOptions) -> int:
    if method in ("rf", "svm"):
        return 0
    model = build_model(method, train, num_classes, network, 0)
    return sum(p.numel() for p in model.parameters())
