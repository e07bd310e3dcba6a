"""Accuracy assessment of a class map, or of a model at labelled pixels, against reference labels.

Two ways to get predictions, one way to count them:

- :func:`evaluate_map`: a class raster (as written by ``s2fin predict``: integer, 0 = nodata,
  class table in its ``S2FIN_CLASSES`` tag) and reference labels (raster or vector) put on the
  **map's** grid with :func:`s2fin_cli.io.labels.open_labels`. Map and labels are read block by
  block, so memory follows the block, never the map.
- :func:`evaluate_model`: a model file and a scene; the model classifies only the labelled pixels
  (:func:`s2fin_cli.scoring.score_at_samples`, the same code as ``s2fin train --test-labels``).

Every figure comes from :mod:`s2fin_cli.metrics` (one definition of OA/AA/Kappa everywhere).

Matching label classes to map/model classes
-------------------------------------------
* The one rule of :mod:`s2fin_cli.reference`: by id, or by name for vector labels with a class
  name field; unknown classes are a :class:`LabelError` unless ``exclude_unknown`` (then those
  pixels are left out, with a warning, and listed in the result: ``excluded``).
* Map value 0 (or the map's nodata value) at a labelled pixel is *no prediction*: counted, as an
  error, in the extra last column of the confusion matrix. So are labelled pixels where the
  scene is nodata in model mode (``s2fin predict`` writes 0 there too), so both modes agree.
* Map values that are not in the map's class table, at labelled pixels, are a LabelError.
* A map without a class table: its classes are the ids found at labelled pixels (map and
  labels), named from the labels when they carry names, else ``class N``.
"""

from __future__ import annotations

import json
import os
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import InputError, LabelError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.labels import MAX_CLASS_ID, VectorLabels, open_labels
from s2fin_cli.io.reader import Scene, open_raster
from s2fin_cli.io.windows import block_count, iter_blocks
from s2fin_cli.io.writer import CLASSES_TAG
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.reference import (
    class_names,
    label_lookup,
    matches_by_name,
    read_reference,
    settle_unknown,
)
from s2fin_cli.scoring import score_at_samples

__all__ = [
    "MAP_READ_BLOCK",
    "MODEL_BATCH_SIZE",
    "Evaluation",
    "evaluate_map",
    "evaluate_model",
    "map_class_table",
]

MAP_READ_BLOCK = 1024  # map mode: side of the blocks of map and labels read at a time
MODEL_BATCH_SIZE = 512  # model mode: patches per forward pass
_PROGRESS_BLOCKS = 16  # map mode: a progress bar/lines only for maps of at least this many blocks

Mode = Literal["map", "model"]


@dataclass
class Evaluation:
    """An accuracy report and what it was computed from."""

    report: AccuracyReport
    mode: Mode
    inputs: dict[str, Any]
    # Labelled pixels left out because the map/model does not know their class:
    # label id -> pixels (only with exclude_unknown; otherwise that is an error).
    excluded: dict[int, int] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)  # names the labels gave their ids
    matched_by: Literal["id", "name"] = "id"

    @property
    def n_excluded(self) -> int:
        return sum(self.excluded.values())

    def to_json(self) -> dict[str, Any]:
        """:meth:`AccuracyReport.to_json` plus the inputs, the matching and what was left out."""
        return {
            "mode": self.mode,
            "inputs": self.inputs,
            "matched_by": self.matched_by,
            **self.report.to_json(),
            "excluded_labels": [
                {"label_id": i, "name": self.label_names.get(i, f"class {i}"), "pixels": n}
                for i, n in sorted(self.excluded.items())
            ],
        }


# -- class tables -------------------------------------------------------------------------------


def map_class_table(dataset: Any) -> ClassTable | None:
    """The class table in a map's ``S2FIN_CLASSES`` tag, or None (absent or malformed)."""
    text = dataset.tags().get(CLASSES_TAG)
    if text is None:
        return None
    try:
        return ClassTable.from_json(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        console.warn(f"{Path(dataset.name).name}: ignoring malformed class table tag ({exc})")
        return None


# -- map mode ------------------------------------------------------------------------------------


class _PairCounts:
    """Counts of (reference id, predicted id) pairs over labelled pixels, accumulated per block.

    The classes of a map without a class table are only known at the end, so pairs are counted
    first and turned into the confusion matrix once (memory ~ distinct pairs, never pixels).
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[int, int], int] = {}

    def update(self, reference: np.ndarray, predicted: np.ndarray) -> None:
        key = reference.astype(np.int64) << 32 | predicted.astype(np.int64)
        values, counts = np.unique(key, return_counts=True)
        for v, n in zip(values.tolist(), counts.tolist(), strict=True):
            pair = (v >> 32, v & 0xFFFFFFFF)
            self.counts[pair] = self.counts.get(pair, 0) + n

    def ids(self) -> tuple[set[int], set[int]]:
        return {r for r, _ in self.counts}, {p for _, p in self.counts}

    def matrix(self, classes: ClassTable) -> np.ndarray:
        """The ``(K, K + 1)`` int64 matrix; every id must be in ``classes`` (0 = no prediction)."""
        k = len(classes)
        index = {cid: i for i, cid in enumerate(classes.ids)}
        out = np.zeros((k, k + 1), np.int64)
        for (r, p), n in self.counts.items():
            out[index[r], k if p == 0 else index[p]] += n
        return out


def evaluate_map(
    map_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    label_field: str | None = None,
    exclude_unknown: bool = False,
    block_size: int = MAP_READ_BLOCK,
    progress: bool = True,
) -> Evaluation:
    """Assess a class map against reference labels, block by block on the map's grid."""
    if block_size < 1:
        raise ValueError("block_size must be positive")
    map_p = Path(map_path)
    dataset = open_raster(map_p)
    try:
        if dataset.count != 1:
            raise InputError(f"{map_p.name} has {dataset.count} bands; a class map has one",
                             hint="evaluate the .classes.tif written by s2fin predict")
        if np.dtype(dataset.dtypes[0]).kind not in "iu":
            raise InputError(f"{map_p.name} holds {dataset.dtypes[0]} values; a class map holds "
                             "integer class ids (0 = nodata)")
        grid = Grid.of(dataset)
        table = map_class_table(dataset)
        nodata = dataset.nodata
        with open_labels(labels_path, grid, label_field=label_field) as source:
            by_name = matches_by_name(source)
            label_table = source.named_classes
            if table is None and by_name:
                console.warn(f"{map_p.name} has no class table; the class names of the labels "
                             "are matched to map ids by their sorted order")
                by_name = False
            lut = (label_lookup(table, label_table, by_name=by_name) if table is not None
                   else np.arange(MAX_CLASS_ID + 1, dtype=np.int64))
            pairs = _PairCounts()
            unknown_hist = np.zeros(MAX_CLASS_ID + 1, np.int64)
            labelled = 0
            total = block_count(grid.height, grid.width, block_size)
            reporter: AbstractContextManager[Any] = (
                console.progress("evaluate", total) if progress and total >= _PROGRESS_BLOCKS
                else nullcontext())
            with reporter as rep:
                for window in iter_blocks(grid.height, grid.width, block_size):
                    ref_raw = source.read(window)
                    mask = ref_raw != 0
                    if mask.any():
                        raw = ref_raw[mask].astype(np.int64)
                        labelled += raw.size
                        ref = lut[raw]
                        unknown = ref < 0
                        if unknown.any():
                            unknown_hist += np.bincount(raw[unknown], minlength=unknown_hist.size)
                        pred = dataset.read(1, window=window)[mask].astype(np.int64)
                        if nodata is not None and np.isfinite(nodata) and nodata != 0:
                            pred[pred == int(nodata)] = 0
                        if (pred < 0).any() or (pred > 0xFFFFFFFF).any():
                            raise LabelError(f"{map_p.name} holds negative or huge values; class "
                                             "ids are 1..65535 (0 = nodata)")
                        keep = ~unknown
                        pairs.update(ref[keep], pred[keep])
                    if rep is not None:
                        rep.advance(1)
            if labelled == 0:
                raise LabelError(f"{Path(labels_path).name} has no labelled pixel on the grid of "
                                 f"{map_p.name}", hint="0 means unlabeled; check the extent and "
                                 "CRS of the labels")
            label_names = class_names(label_table)
            if table is None:
                ref_ids, pred_ids = pairs.ids()
                ids = sorted((ref_ids | pred_ids) - {0})
                if not ids:
                    raise LabelError("no labelled pixel has a class in the map or the labels")
                table = ClassTable.from_ids(ids, {i: n for i, n in label_names.items()
                                                  if i in ids})
                classes_from = "ids found in the map and the labels"
            else:
                classes_from = f"the {CLASSES_TAG} tag of the map"
            unknown = {int(i): int(unknown_hist[i]) for i in np.flatnonzero(unknown_hist)}
            excluded = settle_unknown(unknown, label_names, table, "map", by_name,
                                       exclude_unknown)
            _, pred_ids = pairs.ids()
            stray = sorted(pred_ids - set(table.ids) - {0})
            if stray:
                raise LabelError(f"{map_p.name} holds class ids {stray[:10]} at labelled pixels "
                                 f"that are not in its class table {table.ids}")
            report = AccuracyReport.from_matrix(pairs.matrix(table), table)
            inputs = {
                "map": str(map_p),
                "labels": str(labels_path),
                "label_field": label_field,
                "labels_kind": "vector" if isinstance(source, VectorLabels) else "raster",
                "grid": grid.describe(),
                "classes_from": classes_from,
            }
            return Evaluation(report, "map", inputs, excluded, label_names,
                              "name" if by_name else "id")
    finally:
        dataset.close()


# -- model mode ----------------------------------------------------------------------------------


def evaluate_model(
    bundle: ModelBundle,
    scene: Scene,
    labels_path: str | os.PathLike[str],
    *,
    label_field: str | None = None,
    exclude_unknown: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = MODEL_BATCH_SIZE,
    model_path: str | os.PathLike[str] | None = None,
    skip_value_check: bool = False,
) -> Evaluation:
    """Assess a model on a scene, predicting only at the labelled pixels of ``labels_path``.

    Labels are put on the scene (HSI) grid. Labelled pixels where the scene is nodata get no
    prediction (counted as errors, as in a map written by ``s2fin predict``).
    """
    bundle.check_scene(scene)
    bundle.check_values(scene, skip=skip_value_check)
    table = bundle.classes
    reference = read_reference(labels_path, scene.grid, table, what="model",
                               label_field=label_field, exclude_unknown=exclude_unknown)
    dev = torch.device(device)
    report = score_at_samples(bundle.build_model(dev), scene, reference.samples,
                              bundle.preprocessor, bundle.geometry, table, dev,
                              batch_size=batch_size)
    inputs = {
        "model": None if model_path is None else str(model_path),
        "scene": {"optical": str(scene.optical.path), scene.aux_kind: str(scene.aux.path)},
        "labels": str(labels_path),
        "label_field": label_field,
        "grid": scene.grid.describe(),
        "classes_from": "the model",
        "device": str(device),
    }
    return Evaluation(report, "model", inputs, reference.excluded, reference.label_names,
                      "name" if reference.by_name else "id")
