"""A model's predictions and accuracy at labelled pixels: the one implementation behind
``s2fin train --test-labels`` and ``s2fin evaluate -m``.

Inputs come from :func:`s2fin_cli.training_data.iter_sample_inputs` (block by block, with the
model's stored preprocessing, so memory follows the block). Labelled pixels where the scene is
nodata get no prediction: they count, as errors, in the "no prediction" column of the confusion
matrix, exactly as in a map written by ``s2fin predict`` (which writes 0 there).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from s2fin_cli import console
from s2fin_cli.acceleration import batch_workers, map_in_batch_workers
from s2fin_cli.classes import ClassTable
from s2fin_cli.device import autocast
from s2fin_cli.io.reader import Scene
from s2fin_cli.metrics import AccuracyReport, ConfusionAccumulator
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import Preprocessor
from s2fin_cli.sampling import Samples, valid_centres
from s2fin_cli.training_data import PatchBatch, iter_sample_inputs

SAMPLE_BATCH_SIZE = 256  # patches per forward pass when predicting at labelled pixels


def _logit_batches(model: nn.Module, scene: Scene, samples: Samples,
                   preprocessor: Preprocessor, geometry: PatchGeometry, device: torch.device,
                   batch_size: int) -> Iterator[tuple[np.ndarray, Tensor]]:
    """(sample positions, float32 logits) batch by batch, in eval mode under
    ``torch.inference_mode``; the model's mode is restored. On the CPU several batches run side
    by side (:func:`s2fin_cli.acceleration.batch_workers`, as in ``s2fin predict``)."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    workers = batch_workers(device.type, torch.get_num_threads())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for part in iter_sample_inputs(scene, samples, preprocessor, geometry, device):
                slices = [slice(start, start + batch_size)
                          for start in range(0, len(part), batch_size)]

                def batch_logits(sl: slice, part: PatchBatch = part) -> Tensor:
                    with torch.inference_mode(), autocast(device):  # thread-local state
                        out: Tensor = model(part.spectral[sl], part.spatial[sl],
                                            part.active[sl])
                    return out.float()

                for sl, logits in zip(slices, map_in_batch_workers(batch_logits, slices, workers),
                                      strict=True):
                    yield part.index[sl], logits
    finally:
        model.train(was_training)


def predict_indexes(
    model: nn.Module,
    scene: Scene,
    samples: Samples,
    preprocessor: Preprocessor,
    geometry: PatchGeometry,
    device: torch.device,
    *,
    batch_size: int = SAMPLE_BATCH_SIZE,
) -> np.ndarray:
    """The output index (position in the class table) predicted at every sample, in sample
    order. Runs in eval mode under ``torch.inference_mode``; the model's mode is restored."""
    out = np.full(len(samples), -1, np.int64)
    if len(samples) == 0:
        return out
    for index, logits in _logit_batches(model, scene, samples, preprocessor, geometry, device,
                                        batch_size):
        out[index] = logits.argmax(1).cpu().numpy()
    return out


def predict_probabilities(
    model: nn.Module,
    scene: Scene,
    samples: Samples,
    preprocessor: Preprocessor,
    geometry: PatchGeometry,
    device: torch.device,
    num_classes: int,
    *,
    batch_size: int = SAMPLE_BATCH_SIZE,
) -> np.ndarray:
    """(samples, classes) softmax probabilities at every sample (the centres must be valid)."""
    out = np.zeros((len(samples), num_classes), np.float32)
    for index, logits in _logit_batches(model, scene, samples, preprocessor, geometry, device,
                                        batch_size):
        out[index] = torch.softmax(logits, dim=1).cpu().numpy()
    return out


def predict_class_ids(model: nn.Module, scene: Scene, samples: Samples,
                      preprocessor: Preprocessor, geometry: PatchGeometry, classes: ClassTable,
                      device: torch.device, *, batch_size: int = SAMPLE_BATCH_SIZE
                      ) -> np.ndarray:
    """The class id predicted at every sample, 0 where the scene is nodata (no prediction)."""
    valid = valid_centres(scene, samples)
    predicted = np.zeros(len(samples), np.int64)
    if valid.any():
        index = predict_indexes(model, scene, samples.subset(valid), preprocessor, geometry,
                                device, batch_size=batch_size)
        predicted[valid] = np.asarray(classes.ids, np.int64)[index]
    return predicted


def score_at_samples(model: nn.Module, scene: Scene, samples: Samples,
                     preprocessor: Preprocessor, geometry: PatchGeometry, classes: ClassTable,
                     device: torch.device, *, batch_size: int = SAMPLE_BATCH_SIZE
                     ) -> AccuracyReport:
    """The accuracy report of the model at ``samples`` (class ids of ``classes``)."""
    predicted = predict_class_ids(model, scene, samples, preprocessor, geometry, classes, device,
                                  batch_size=batch_size)
    nodata = int((predicted == 0).sum())
    if nodata:
        console.note(f"{nodata} labelled pixel(s) lie on scene nodata: counted as "
                     "'no prediction'")
    accumulator = ConfusionAccumulator(classes)
    accumulator.update(samples.classes, predicted)
    return accumulator.report(classes)


def index_report(classes: ClassTable, samples: Samples, index: np.ndarray) -> AccuracyReport:
    """The accuracy report of predicted output indexes (-1: no prediction) at ``samples``."""
    accumulator = ConfusionAccumulator(classes)
    ids = np.asarray(classes.ids, np.int64)
    accumulator.update(samples.classes, np.where(index >= 0, ids[np.clip(index, 0, None)], 0))
    return accumulator.report(classes)


__all__ = [
    "SAMPLE_BATCH_SIZE",
    "index_report",
    "predict_class_ids",
    "predict_indexes",
    "predict_probabilities",
    "score_at_samples",
]
