"""Accuracy assessment of a class map, or of a model at labelled pixels, against reference labels.

Two ways to get predictions, one way to count them:

- :func:`evaluate_map`: a class raster (as written by ``s2fin predict``: integer, 0 = nodata,
  class table in its ``S2FIN_CLASSES`` tag) and reference labels (raster or vector) put on the
  **map's** grid with :func:`s2fin_cli.io.labels.open_labels`. Map and labels are read block by
  block, so memory follows the block, never the map.
- :func:`evaluate_model`: a model file and a scene; the model classifies only the labelled pixels
  (:func:`predict_samples`, through :func:`s2fin_cli.training_data.iter_sample_inputs`).

Every figure comes from :mod:`s2fin_cli.metrics` (one definition of OA/AA/Kappa everywhere).

Matching label classes to map/model classes
-------------------------------------------
* By **id** (raster labels, vector labels with an integer field). When both sides name their
  classes and a name differs for one id, a warning says so (the ids still decide).
* By **name** when vector labels hold class *names* (a string ``--label-field``): their ids are
  only the sorted order of the names, so each name is matched to the map's class of that name
  (exact, then case-insensitive).
* A labelled pixel whose class the map/model does not know is a :class:`LabelError` naming every
  such class with its pixel count, unless ``exclude_unknown``: then those pixels are left out of
  the assessment, with a warning, and listed in the result (``excluded``).
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
from collections.abc import Mapping
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
from s2fin_cli.io.labels import MAX_CLASS_ID, LabelSource, VectorLabels, open_labels
from s2fin_cli.io.reader import Scene, open_raster
from s2fin_cli.io.windows import block_count, iter_blocks
from s2fin_cli.io.writer import CLASSES_TAG
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.sampling import Samples, group_by_block

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BLOCK_SIZE",
    "Evaluation",
    "evaluate_map",
    "evaluate_model",
    "label_lookup",
    "map_class_table",
    "predict_samples",
    "valid_centres",
]

DEFAULT_BLOCK_SIZE = 1024  # map mode: side of the blocks of map and labels read at a time
DEFAULT_BATCH_SIZE = 512  # model mode: patches per forward pass
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


# -- class tables and label matching ----------------------------------------------------------


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


def _is_default_name(class_id: int, name: str) -> bool:
    return name == f"class {class_id}"


def label_lookup(
    target: ClassTable, labels: ClassTable | None, *, by_name: bool
) -> np.ndarray:
    """An int64 lookup from label id (0..65535) to the target class id; -1 = unknown, 0 -> 0.

    ``by_name``: match the labels' class names to the target's names (vector labels with a
    string field); otherwise match ids, warning where both sides name one id differently.
    """
    lut = np.full(MAX_CLASS_ID + 1, -1, np.int64)
    lut[0] = 0
    if by_name and labels is not None:
        exact = {c.name: c.id for c in target}
        folded = {c.name.casefold(): c.id for c in target}
        for c in labels:
            match = exact.get(c.name, folded.get(c.name.casefold()))
            if match is not None:
                lut[c.id] = match
        return lut
    ids = np.asarray(target.ids, np.int64)
    lut[ids[ids <= MAX_CLASS_ID]] = ids[ids <= MAX_CLASS_ID]
    if labels is not None:
        target_names = {c.id: c.name for c in target}
        differ = [f"{c.id} ({c.name!r} in the labels, {target_names[c.id]!r} in the map)"
                  for c in labels
                  if c.id in target_names and c.name != target_names[c.id]
                  and not _is_default_name(c.id, c.name)
                  and not _is_default_name(c.id, target_names[c.id])]
        if differ:
            console.warn("class names differ for id " + "; ".join(differ[:8])
                         + (" ..." if len(differ) > 8 else "")
                         + "; classes are matched by id")
    return lut


def _unknown_message(unknown: Mapping[int, int], names: Mapping[int, str],
                     target: ClassTable, what: str, by_name: bool) -> str:
    items = []
    for i, n in sorted(unknown.items()):
        name = names.get(i)
        label = f"{name!r}" if by_name and name else (
            f"{i} {name!r}" if name and not _is_default_name(i, name) else f"{i}")
        items.append(f"{label} ({n} px)")
    known = ", ".join(f"{c.name!r}" if by_name else f"{c.id} {c.name!r}" for c in target)
    kind = "class names" if by_name else "class ids"
    return (f"the labels hold {kind} unknown to the {what}: {', '.join(items[:12])}"
            f"{' ...' if len(items) > 12 else ''}; the {what} knows {known}")


def _settle_unknown(unknown: dict[int, int], names: Mapping[int, str], target: ClassTable,
                    what: str, by_name: bool, exclude_unknown: bool) -> dict[int, int]:
    if not unknown:
        return {}
    message = _unknown_message(unknown, names, target, what, by_name)
    if not exclude_unknown:
        raise LabelError(message, hint="pass --exclude-unknown to leave those pixels out of the "
                         "assessment")
    console.warn(f"{message}; {sum(unknown.values())} labelled pixel(s) left out")
    return dict(sorted(unknown.items()))


def _by_name(source: LabelSource) -> bool:
    """Vector labels with a class-name field got ids from sorted names: match them by name."""
    return isinstance(source, VectorLabels) and source.named_classes is not None


def _names(table: ClassTable | None) -> dict[int, str]:
    return {} if table is None else {c.id: c.name for c in table}


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
    block_size: int = DEFAULT_BLOCK_SIZE,
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
            by_name = _by_name(source)
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
            label_names = _names(label_table)
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
            excluded = _settle_unknown(unknown, label_names, table, "map", by_name,
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


def valid_centres(scene: Scene, samples: Samples, *, block_size: int = 512) -> np.ndarray:
    """(N,) bool: both modalities hold data at each sample (only blocks with samples are read)."""
    keep = np.zeros(len(samples), bool)
    for window, index in group_by_block(samples, block_size, scene.grid.shape):
        core = scene.read(window).core_valid
        keep[index] = core[samples.rows[index] - int(window.row_off),
                           samples.cols[index] - int(window.col_off)]
    return keep


def predict_samples(
    bundle: ModelBundle,
    scene: Scene,
    samples: Samples,
    device: torch.device | str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    *,
    model: torch.nn.Module | None = None,
) -> np.ndarray:
    """The class id (int64, in sample order) the model predicts at every sample.

    A class-id front end to :func:`s2fin_cli.training.predict_samples` (the one prediction at
    labelled pixels, shared with training's test metrics: inputs from
    :func:`s2fin_cli.training_data.iter_sample_inputs`, block by block, with the model's stored
    preprocessing), run under ``torch.inference_mode``. ``model`` defaults to
    ``bundle.build_model(device)``; a given model gets its train/eval mode back afterwards.
    Validity of the centres is not checked here: see :func:`valid_centres`.
    """
    from s2fin_cli.training import predict_samples as predict_indexes

    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    dev = torch.device(device)
    if len(samples) == 0:
        return np.zeros(0, np.int64)
    net = model if model is not None else bundle.build_model(dev)
    was_training = net.training
    try:
        with torch.inference_mode():
            index = predict_indexes(net, scene, samples, bundle.preprocessor, bundle.geometry,
                                    dev, batch_size=batch_size)
    finally:
        net.train(was_training)
    ids = np.asarray(bundle.classes.ids, np.int64)
    return ids[index]


def evaluate_model(
    bundle: ModelBundle,
    scene: Scene,
    labels_path: str | os.PathLike[str],
    *,
    label_field: str | None = None,
    exclude_unknown: bool = False,
    device: torch.device | str = "cpu",
    batch_size: int = DEFAULT_BATCH_SIZE,
    model_path: str | os.PathLike[str] | None = None,
) -> Evaluation:
    """Assess a model on a scene, predicting only at the labelled pixels of ``labels_path``.

    Labels are put on the scene (HSI) grid. Labelled pixels where the scene is nodata get no
    prediction (counted as errors, as in a map written by ``s2fin predict``).
    """
    bundle.check_scene(scene)
    table = bundle.classes
    with open_labels(labels_path, scene.grid, label_field=label_field) as source:
        points = source.points()
        by_name = _by_name(source)
        label_table = source.named_classes
    if len(points) == 0:
        raise LabelError(f"{Path(labels_path).name} has no labelled pixel on the scene grid",
                         hint="0 means unlabeled; check the extent and CRS of the labels")
    label_names = _names(label_table)
    lut = label_lookup(table, label_table, by_name=by_name)
    ref = lut[points.classes]
    unknown_mask = ref < 0
    ids, counts = np.unique(points.classes[unknown_mask], return_counts=True)
    unknown = {int(i): int(n) for i, n in zip(ids, counts, strict=True)}
    excluded = _settle_unknown(unknown, label_names, table, "model", by_name, exclude_unknown)
    keep = ~unknown_mask
    samples = Samples(points.rows[keep], points.cols[keep], ref[keep])
    valid = valid_centres(scene, samples)
    if not valid.all():
        console.note(f"{int((~valid).sum())} labelled pixel(s) lie on scene nodata: counted as "
                     "no prediction")
    predicted = np.zeros(len(samples), np.int64)
    predicted[valid] = predict_samples(bundle, scene, samples.subset(valid), device, batch_size)
    pairs = _PairCounts()
    pairs.update(samples.classes, predicted)
    report = AccuracyReport.from_matrix(pairs.matrix(table), table)
    inputs = {
        "model": None if model_path is None else str(model_path),
        "scene": {"optical": str(scene.optical.path), scene.aux_kind: str(scene.aux.path)},
        "labels": str(labels_path),
        "label_field": label_field,
        "grid": scene.grid.describe(),
        "classes_from": "the model",
        "device": str(device),
    }
    return Evaluation(report, "model", inputs, excluded, label_names,
                      "name" if by_name else "id")
