"""S²Fin as users get it: each draw trained by ``s2fin train``'s own function and defaults.

The draw's training pixels are written as a label raster and its test pixels as a test raster on
the scene grid; :func:`s2fin_cli.training.run_training` then does what ``s2fin train --labels
train.tif --test-labels test.tif`` does with the default recipe (``TrainSettings()``,
``NetworkOptions()``, the default validation strategy), seeded with the draw's seed, and its test
report (``summary.test``) is the result. Ablations change only ``NetworkOptions.ablate``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.accuracy.scenes import BenchScene
from s2fin_cli.classes import ClassTable
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import open_scene
from s2fin_cli.io.writer import write_raster
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.sampling import Samples
from s2fin_cli.scoring import predict_probabilities
from s2fin_cli.training import NetworkOptions, TrainRequest, TrainSettings, run_training

_NETWORK_FIELDS = {f.name for f in dataclasses.fields(NetworkOptions)}
_SETTINGS_FIELDS = {f.name for f in dataclasses.fields(TrainSettings)}
RECIPE_FIELDS = (*sorted(_SETTINGS_FIELDS - {"seed"}), *sorted(_NETWORK_FIELDS - {"ablate"}),
                 "val_fraction")


@dataclass(frozen=True)
class Recipe:
    """What a run changes of ``s2fin train``'s defaults (nothing, for the benchmark's S²Fin)."""

    network: NetworkOptions = dataclasses.field(default_factory=NetworkOptions)
    settings: TrainSettings = dataclasses.field(default_factory=TrainSettings)
    val_fraction: float | None = None

    @classmethod
    def with_changes(cls, changes: dict[str, Any]) -> Recipe:
        """The defaults with ``changes`` (fields of NetworkOptions, TrainSettings, or
        ``val_fraction``); an unknown name is a ValueError."""
        bad = sorted(set(changes) - set(RECIPE_FIELDS) - {"ablate"})
        if bad:
            raise ValueError(f"unknown recipe field(s) {', '.join(bad)}; known: "
                             f"{', '.join(RECIPE_FIELDS)}")
        return cls(
            dataclasses.replace(NetworkOptions(), **{k: v for k, v in changes.items()
                                                     if k in _NETWORK_FIELDS}),
            dataclasses.replace(TrainSettings(), **{k: v for k, v in changes.items()
                                                    if k in _SETTINGS_FIELDS}),
            changes.get("val_fraction"))


def parse_changes(items: list[str]) -> dict[str, Any]:
    """``["epochs=2", "active_stem_norm=none"]`` → typed values (int, float, bool, str)."""
    out: dict[str, Any] = {}
    defaults = {**dataclasses.asdict(TrainSettings()), **dataclasses.asdict(NetworkOptions()),
                "val_fraction": 0.0}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in defaults:
            raise ValueError(f"--set {item!r}: give FIELD=VALUE with FIELD one of "
                             f"{', '.join(RECIPE_FIELDS)}")
        kind = type(defaults[key])
        if defaults[key] is None:  # an optional number (min_steps: None = the per-class rule)
            out[key] = None if text.strip().lower() == "none" else int(text)
        elif kind is bool:
            out[key] = text.strip().lower() in ("1", "true", "yes", "on")
        elif kind is tuple:
            out[key] = tuple(t.strip() for t in text.split(",") if t.strip())
        else:
            out[key] = kind(text)
    return out


def write_labels(path: Path, samples: Samples, grid: Grid, classes: ClassTable) -> Path:
    """``samples`` as a class raster on ``grid`` (0 = unlabelled), with the class names."""
    dtype = np.uint8 if max(classes.ids) <= 255 else np.uint16
    array = np.zeros(grid.shape, dtype)
    array[samples.rows, samples.cols] = samples.classes
    return write_raster(path, array, grid, nodata=0, classes=classes, overwrite=True)


@dataclass
class TrainedRun:
    report: AccuracyReport  # at the test pixels (summary.test)
    seconds: float  # the whole run_training call: preprocessing, training, scoring
    parameters: int
    epochs_run: int
    n_train: int  # pixels that trained (after the validation split, if any)
    n_val: int
    # (test pixels, classes) softmax probabilities of the written model, when asked for
    probabilities: np.ndarray | None = None


def train_s2fin(bench: BenchScene, grid: Grid, train: Samples, test: Samples,
                classes: ClassTable, workdir: Path, *, seed: int,
                recipe: Recipe | None = None, threads: int | None = 1,
                probabilities: bool = False) -> TrainedRun:
    """Train S²Fin on ``train`` through ``run_training`` and score it at ``test``.

    ``recipe`` defaults to ``s2fin train``'s defaults (only the seed is the draw's); the
    benchmark passes an ablated ``NetworkOptions`` for ablations, a reverted element for the
    recipe study, and the smoke test fewer epochs.
    """
    recipe = recipe or Recipe()
    workdir.mkdir(parents=True, exist_ok=True)
    labels = write_labels(workdir / "train_labels.tif", train, grid, classes)
    test_labels = write_labels(workdir / "test_labels.tif", test, grid, classes)
    request = TrainRequest(
        labels=labels, hsi=bench.optical,
        lidar=bench.aux if bench.aux_kind == "lidar" else None,
        sar=bench.aux if bench.aux_kind == "sar" else None,
        test_labels=test_labels, output=workdir / "model.s2fin", overwrite=True,
        val_fraction=recipe.val_fraction, network=recipe.network,
        settings=dataclasses.replace(recipe.settings, seed=seed),
        device="cpu", threads=threads,
    )
    t0 = time.perf_counter()
    summary = run_training(request)
    seconds = time.perf_counter() - t0
    assert summary.test is not None
    prov = summary.bundle.provenance
    rows = summary.split_rows
    from models import S2Fin, parameter_table

    n_params = parameter_table(S2Fin(summary.bundle.config))[-1][1]
    probs = None
    if probabilities:
        bundle = summary.bundle
        with open_scene(bench.optical, bench.aux, bench.aux_kind) as scene:
            probs = predict_probabilities(bundle.build_model(), scene, test, bundle.preprocessor,
                                          bundle.geometry, torch.device("cpu"),
                                          len(bundle.classes))
    return TrainedRun(summary.test, seconds, n_params, int(prov.get("epochs_run", 0)),
                      sum(r["train"] for r in rows), sum(r["val"] for r in rows), probs)


__all__ = ["RECIPE_FIELDS", "Recipe", "TrainedRun", "parse_changes", "train_s2fin",
           "write_labels"]
