"""``s2fin suggest`` as a library: which pixels should the analyst label next?

:func:`run_suggest` (the command) checks everything before any work (options, every output
against every input with :func:`~s2fin_cli.io.outputs.check_outputs`, the model file, the scene
against the model: bands, modality, values), then :func:`suggest_pixels` (what the benchmark
calls too) does the work in three passes that each keep memory to one block:

1. **Candidates** (:func:`sample_candidates`): the scene is streamed block by block; a pixel is
   eligible when both modalities have data there and it lies inside no labelled pixel's patch
   (``--labels``, every file; :func:`spacing_for`). Every eligible pixel
   gets a seeded key (:func:`~s2fin_cli.acquisition.pixel_keys`); the ``max_candidates``
   smallest keys are kept, a uniform sample without replacement, whatever the block size.
2. **Scores** (:func:`score_pixels`): only the candidates' patches go through the network
   (:func:`~s2fin_cli.training_data.iter_sample_inputs`, block by block), giving their class
   probabilities and the feature vector the classifier sees (a forward pre-hook on the head's
   last ``Linear`` layer; ``models/`` is untouched). Up to ``LABELLED_FEATURE_CAP`` labelled
   pixels are scored too, for their features.
3. **Selection** (:func:`~s2fin_cli.acquisition.select_pixels`): uncertainty, then greedy picks
   spread in space, over the predicted classes and in feature space.

The result is written by :mod:`s2fin_cli.io.suggestions` (a styled GeoPackage point layer, and
a CSV on request), atomically.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.windows import Window
from torch import nn

from s2fin_cli import __version__, console
from s2fin_cli.acceleration import batch_workers, map_in_batch_workers
from s2fin_cli.acquisition import (
    ACQUISITIONS,
    DEFAULT_POOL_FACTOR,
    STRATEGIES,
    Acquisition,
    Candidates,
    Strategy,
    normalised_entropy,
    pixel_keys,
    select_pixels,
    smallest_keys,
    top_two,
    uncertainty,
)
from s2fin_cli.classes import ClassTable
from s2fin_cli.device import autocast, cpu_threads, select_device
from s2fin_cli.errors import ConfigError, OutputError
from s2fin_cli.hashing import file_sha256
from s2fin_cli.inference import PREDICT_BLOCK_SIZE, default_batch_size
from s2fin_cli.io.outputs import check_outputs, given_path
from s2fin_cli.io.reader import Scene, open_scene_from_options
from s2fin_cli.io.suggestions import SuggestionTable, write_suggestions
from s2fin_cli.io.windows import iter_blocks
from s2fin_cli.model_file import ModelBundle, load_model_file
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import Preprocessor
from s2fin_cli.reference import merge_label_sources
from s2fin_cli.sampling import SAMPLE_READ_BLOCK, Samples, valid_centres
from s2fin_cli.training_data import PatchBatch, iter_sample_inputs

# Candidates scored at most: a seeded uniform sample of the eligible pixels above this.
DEFAULT_MAX_CANDIDATES = 20_000
# Labelled pixels scored for their feature vectors at most (a seeded sample above this).
LABELLED_FEATURE_CAP = 1_000
# Seed offset so the labelled-pixel sample and the candidate sample are independent draws.
_LABELLED_STREAM = 0x5EED


@dataclass(frozen=True)
class SuggestRequest:
    """Everything ``s2fin suggest`` is asked to do (paths and options)."""

    output: str | Path  # the GeoPackage, as given (a trailing separator names a directory)
    n: int
    model: Path
    scene: Path | None = None
    hsi: Path | None = None
    lidar: Path | None = None
    sar: Path | None = None
    aux_bands: int | None = None
    labels: tuple[Path, ...] = ()
    label_field: str | None = None
    csv: str | Path | None = None
    acquisition: Acquisition = "margin"
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    pool_factor: int = DEFAULT_POOL_FACTOR
    seed: int = 0
    overwrite: bool = False
    device: str = "auto"
    threads: int | None = None
    batch_size: int | None = None
    block_size: int = PREDICT_BLOCK_SIZE
    skip_value_check: bool = False

    @property
    def source(self) -> Path:
        path = self.scene if self.scene is not None else self.hsi
        if path is None:
            raise ConfigError("missing input: give a stacked SCENE, or --hsi with --lidar or "
                              "--sar")
        return path

    def inputs(self) -> list[Path]:
        return [p for p in (self.scene, self.hsi, self.lidar, self.sar, self.model,
                            *self.labels) if p is not None]


@dataclass
class CandidateSample:
    """The candidates drawn from a scene and what the draw saw."""

    rows: np.ndarray
    cols: np.ndarray
    keys: np.ndarray
    valid: int  # pixels with data in both modalities (within ``allowed`` when given)
    eligible: int  # valid pixels outside every labelled pixel's patch neighbourhood

    def __len__(self) -> int:
        return int(self.rows.size)


@dataclass
class Suggestion:
    """The chosen pixels, best first, with what the model thinks of them."""

    rows: np.ndarray
    cols: np.ndarray
    probabilities: np.ndarray  # (n, K), the model's class order
    score: np.ndarray  # the acquisition score (higher = more uncertain)
    acquisition: Acquisition
    strategy: Strategy
    scored: int  # candidates scored by the network
    eligible: int
    valid: int
    labelled: int  # labelled pixels that were excluded with their neighbourhoods
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.size)

    def table(self, classes: ClassTable) -> SuggestionTable:
        """The attribute table written to the GeoPackage (class ids and names of ``classes``,
        the model's class table)."""
        first, p1, second, p2 = top_two(self.probabilities)
        ids = np.asarray(classes.ids, np.int64)
        names = [c.name for c in classes]
        return SuggestionTable(
            rank=np.arange(1, len(self) + 1), rows=self.rows, cols=self.cols,
            pred_id=ids[first], pred_name=[names[i] for i in first],
            second_id=np.where(second >= 0, ids[np.clip(second, 0, None)], 0),
            second_name=[names[i] if i >= 0 else "" for i in second],
            confidence=p1, margin=p1 - p2,
            entropy=normalised_entropy(self.probabilities), score=self.score)


def spacing_for(patch_size: int) -> int:
    """The smallest Chebyshev distance a suggestion keeps from labelled pixels and from other
    suggestions: ``patch_size // 2 + 1``, so that no suggested pixel lies inside the patch of
    another pixel (labelled or suggested) and each label brings a centre the network has not yet
    seen in any training patch.

    Why not ``patch_size`` (patches that do not even overlap)? Boxes of (2 patch - 1)^2 pixels
    around every label use up a scene fast: on the 160 x 160 px benchmark scenes, 77 labels
    (7 per class) already left fewer eligible pixels than a round of 22 suggestions needs.
    """
    return patch_size // 2 + 1


def check_suggest_options(n: int, max_candidates: int, pool_factor: int,
                          acquisition: str) -> None:
    """The option errors of ``s2fin suggest`` (exit 9), before anything is read."""
    if n < 1:
        raise ConfigError(f"-n must be >= 1, got {n}")
    if max_candidates < n:
        raise ConfigError(f"--max-candidates ({max_candidates}) must be at least -n ({n})")
    if pool_factor < 1:
        raise ConfigError(f"the pool factor must be >= 1, got {pool_factor}")
    if acquisition not in ACQUISITIONS:
        raise ConfigError(f"--acquisition {acquisition!r} is not one of "
                          f"{', '.join(ACQUISITIONS)}")


def check_suggest_outputs(request: SuggestRequest) -> None:
    """The GeoPackage (``.gpkg``: it carries the style) and the CSV against every input
    (:func:`check_outputs`: never an input, never twice, ``--overwrite`` to replace)."""
    output = given_path(request.output, "-o")
    if not str(request.output).endswith(("/", os.sep)) and output.suffix.lower() != ".gpkg":
        raise OutputError(f"-o {output}: suggestions are written as a GeoPackage; name the "
                          "output .gpkg", hint="add --csv NAME.csv for a table as well")
    check_outputs([request.output, request.csv], request.inputs(), overwrite=request.overwrite)


def labelled_samples(paths: Sequence[Path], scene: Scene, *,
                     label_field: str | None = None) -> Samples:
    """Every labelled pixel of ``paths`` on the scene grid, merged (:func:`merge_label_sources`:
    a pixel with two classes is refused, exit 5; vector features without a class are skipped
    with a warning, so unlabelled suggestions of an earlier round are suggested again)."""
    if not paths:
        return Samples.empty()
    points, _ = merge_label_sources(list(paths), scene.grid, label_field=label_field)
    return Samples.from_points(points)


def _near_labels(window: Window, rows: np.ndarray, cols: np.ndarray,
                 distance: int) -> np.ndarray:
    """(h, w) bool: some point lies at Chebyshev distance < ``distance`` of the pixel (a box
    count through a summed-area table of the block plus a margin)."""
    h, w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off), int(window.col_off)
    out = np.zeros((h, w), bool)
    reach = distance - 1
    if rows.size == 0 or distance < 1:
        return out
    sel = ((rows >= r0 - reach) & (rows < r0 + h + reach)
           & (cols >= c0 - reach) & (cols < c0 + w + reach))
    if not sel.any():
        return out
    side = 2 * reach + 1
    counts = np.zeros((h + side, w + side), np.int32)
    np.add.at(counts, (rows[sel] - (r0 - reach) + 1, cols[sel] - (c0 - reach) + 1), 1)
    sat = counts.cumsum(0).cumsum(1)
    box = sat[side:, side:] - sat[:-side, side:] - sat[side:, :-side] + sat[:-side, :-side]
    return np.asarray(box > 0)


def _mask_of(window: Window, samples: Samples) -> np.ndarray:
    h, w = int(window.height), int(window.width)
    r0, c0 = int(window.row_off), int(window.col_off)
    out = np.zeros((h, w), bool)
    sel = ((samples.rows >= r0) & (samples.rows < r0 + h)
           & (samples.cols >= c0) & (samples.cols < c0 + w))
    out[samples.rows[sel] - r0, samples.cols[sel] - c0] = True
    return out


def sample_candidates(scene: Scene, labelled: Samples, *, spacing: int, cap: int, seed: int,
                      block_size: int = PREDICT_BLOCK_SIZE,
                      allowed: Samples | None = None) -> CandidateSample:
    """A seeded uniform sample of at most ``cap`` eligible pixels (module docs), streamed block
    by block; memory follows the block and the cap. ``allowed``: only these pixels may be
    candidates (the benchmark: where the ground truth can answer)."""
    rows_kept = np.zeros(0, np.int64)
    cols_kept = np.zeros(0, np.int64)
    keys_kept = np.zeros(0, np.uint64)
    valid_total = eligible_total = 0
    grid = scene.grid
    for window in iter_blocks(grid.height, grid.width, block_size):
        ok = scene.read(window).core_valid
        if allowed is not None:
            ok = ok & _mask_of(window, allowed)
        valid_total += int(ok.sum())
        ok = ok & ~_near_labels(window, labelled.rows, labelled.cols, spacing)
        r, c = np.nonzero(ok)
        if r.size == 0:
            continue
        eligible_total += int(r.size)
        r = r.astype(np.int64) + int(window.row_off)
        c = c.astype(np.int64) + int(window.col_off)
        rows_kept = np.concatenate([rows_kept, r])
        cols_kept = np.concatenate([cols_kept, c])
        keys_kept = np.concatenate([keys_kept, pixel_keys(r, c, seed)])
        if keys_kept.size > cap:
            keep = smallest_keys(keys_kept, cap)
            rows_kept, cols_kept, keys_kept = rows_kept[keep], cols_kept[keep], keys_kept[keep]
    order = np.lexsort((cols_kept, rows_kept))  # row-major: the order blocks are read in
    return CandidateSample(rows_kept[order], cols_kept[order], keys_kept[order], valid_total,
                           eligible_total)


def feature_layer(model: nn.Module) -> nn.Linear:
    """The layer whose input is the feature vector the classifier sees: the last ``Linear`` of
    the model's head (of the model, when it has no ``head``)."""
    head = getattr(model, "head", None)
    root = head if isinstance(head, nn.Module) else model
    linears = [m for m in root.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise RuntimeError("the network has no Linear layer to read features from")
    return linears[-1]


def score_pixels(model: nn.Module, scene: Scene, samples: Samples, preprocessor: Preprocessor,
                 geometry: PatchGeometry, device: torch.device, *, batch_size: int,
                 features: bool = True, block_size: int = SAMPLE_READ_BLOCK
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """Class probabilities (N, K) and feature vectors (N, D) (None unless ``features``) at
    ``samples``, in sample order, reading the blocks of ``block_size`` px that hold samples.
    Eval mode, ``torch.inference_mode``."""
    n = len(samples)
    probs: np.ndarray | None = None
    feats: np.ndarray | None = None
    # The feature layer's input of the batch each thread (batch worker) last ran.
    captured = threading.local()
    handle = None
    if features:
        handle = feature_layer(model).register_forward_pre_hook(
            lambda _module, args: setattr(captured, "features", args[0].detach()))
    workers = batch_workers(device.type, torch.get_num_threads())
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for part in iter_sample_inputs(scene, samples, preprocessor, geometry, device,
                                           block_size=block_size):
                slices = [slice(start, start + batch_size)
                          for start in range(0, len(part), batch_size)]

                def run(sl: slice, part: PatchBatch = part
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
                    captured.features = None
                    with torch.inference_mode(), autocast(device):  # thread-local state
                        logits = model(part.spectral[sl], part.spatial[sl], part.active[sl])
                    return logits, captured.features

                for sl, (logits, feature) in zip(slices,
                                                 map_in_batch_workers(run, slices, workers),
                                                 strict=True):
                    p = torch.softmax(logits.float(), dim=1).cpu().numpy()
                    if probs is None:
                        probs = np.zeros((n, p.shape[1]), np.float32)
                    probs[part.index[sl]] = p
                    if features and feature is not None:
                        f = feature.float().flatten(1).cpu().numpy()
                        if feats is None:
                            feats = np.zeros((n, f.shape[1]), np.float32)
                        feats[part.index[sl]] = f
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    if probs is None:
        probs = np.zeros((0, 0), np.float32)
    if features and feats is None:
        feats = np.zeros((n, 0), np.float32)
    return probs, feats


def _labelled_features(model: nn.Module, scene: Scene, labelled: Samples, bundle: ModelBundle,
                       device: torch.device, batch_size: int, seed: int) -> np.ndarray | None:
    if len(labelled) == 0:
        return None
    keys = pixel_keys(labelled.rows, labelled.cols, seed + _LABELLED_STREAM)
    subset = labelled.subset(np.sort(smallest_keys(keys, LABELLED_FEATURE_CAP)))
    subset = subset.subset(valid_centres(scene, subset))
    if len(subset) == 0:
        return None
    _, feats = score_pixels(model, scene, subset, bundle.preprocessor, bundle.geometry, device,
                            batch_size=batch_size)
    return feats


def suggest_pixels(bundle: ModelBundle, scene: Scene, n: int, *,
                   labelled: Samples | None = None, acquisition: Acquisition = "margin",
                   strategy: Strategy = "diverse", seed: int = 0,
                   max_candidates: int = DEFAULT_MAX_CANDIDATES,
                   pool_factor: int = DEFAULT_POOL_FACTOR, allowed: Samples | None = None,
                   device: torch.device | None = None, batch_size: int | None = None,
                   block_size: int = PREDICT_BLOCK_SIZE,
                   model: nn.Module | None = None) -> Suggestion:
    """Up to ``n`` pixels of ``scene`` to label next, best first (module docs).

    ``labelled``: pixels already labelled (excluded with their patch neighbourhoods, and the
    reference of feature diversity); ``strategy``: ``diverse`` (``s2fin suggest``),
    ``uncertainty`` (the most uncertain, nothing else) or ``random`` (uniform over the
    candidates, no network pass); ``allowed``: restrict candidates to these pixels.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    check_suggest_options(n, max_candidates, pool_factor, acquisition)
    t0 = time.perf_counter()
    device = device or torch.device("cpu")
    batch = batch_size or default_batch_size(device)
    labelled = labelled if labelled is not None else Samples.empty()
    spacing = spacing_for(bundle.geometry.patch_size)
    sample = sample_candidates(scene, labelled, spacing=spacing, cap=max_candidates, seed=seed,
                               block_size=block_size, allowed=allowed)
    timings = {"candidates": time.perf_counter() - t0}
    k = len(bundle.classes)
    empty = Suggestion(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, k)),
                       np.zeros(0), acquisition, strategy, 0, sample.eligible, sample.valid,
                       len(labelled))
    if len(sample) == 0:
        empty.seconds = time.perf_counter() - t0
        return empty
    candidates_at = Samples(sample.rows, sample.cols, np.zeros(len(sample), np.int64))
    if strategy == "random":
        chosen = smallest_keys(sample.keys, n)
        probs = np.full((chosen.size, k), np.nan)
        return Suggestion(sample.rows[chosen], sample.cols[chosen], probs,
                          np.full(chosen.size, np.nan), acquisition, strategy, 0,
                          sample.eligible, sample.valid, len(labelled),
                          time.perf_counter() - t0, timings)
    net = model if model is not None else bundle.build_model(device)
    diverse = strategy == "diverse"
    probs, feats = score_pixels(net, scene, candidates_at, bundle.preprocessor, bundle.geometry,
                                device, batch_size=batch, features=diverse,
                                block_size=block_size)
    known = (_labelled_features(net, scene, labelled, bundle, device, batch, seed)
             if diverse else None)
    timings["scores"] = time.perf_counter() - t0 - timings["candidates"]
    candidates = Candidates(sample.rows, sample.cols, probs, feats, sample.keys)
    chosen = select_pixels(candidates, n, acquisition=acquisition, strategy=strategy,
                           spacing=spacing, pool_factor=pool_factor, labelled_features=known)
    score = uncertainty(probs[chosen], acquisition)
    return Suggestion(sample.rows[chosen], sample.cols[chosen], probs[chosen], score,
                      acquisition, strategy, len(sample), sample.eligible, sample.valid,
                      len(labelled), time.perf_counter() - t0, timings)


def _provenance(request: SuggestRequest, bundle: ModelBundle,
                suggestion: Suggestion) -> dict[str, str]:
    sha = bundle.file_sha256 or file_sha256(request.model)
    return {"S2FIN_MODEL": request.model.name, "S2FIN_MODEL_SHA256": sha,
            "S2FIN_SOFTWARE": f"s2fin {__version__}",
            "S2FIN_SCENE": request.source.name,
            "S2FIN_SUGGEST": (f"acquisition={request.acquisition} seed={request.seed} "
                              f"scored={suggestion.scored} eligible={suggestion.eligible}")}


def run_suggest(request: SuggestRequest) -> dict[str, Any]:
    """``s2fin suggest``: check everything, suggest, write; returns the report (JSON-ready)."""
    check_suggest_options(request.n, request.max_candidates, request.pool_factor,
                          request.acquisition)
    if request.threads is not None and request.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {request.threads}")
    source = request.source
    if request.scene is not None and request.hsi is not None:
        raise ConfigError("give a stacked SCENE or --hsi with --lidar/--sar, not both")
    check_suggest_outputs(request)
    bundle = load_model_file(request.model)
    device = select_device(request.device)
    with open_scene_from_options(request.scene, request.hsi, request.lidar, request.sar,
                                 aux_bands=request.aux_bands) as scene:
        bundle.check_scene(scene)
        bundle.check_values(scene, skip=request.skip_value_check)
        labelled = labelled_samples(request.labels, scene, label_field=request.label_field)
        with cpu_threads(request.threads):
            suggestion = suggest_pixels(
                bundle, scene, request.n, labelled=labelled, acquisition=request.acquisition,
                seed=request.seed, max_candidates=request.max_candidates,
                pool_factor=request.pool_factor, device=device, batch_size=request.batch_size,
                block_size=request.block_size)
        grid = scene.grid
    if len(suggestion) == 0:
        console.warn("no pixel can be suggested: the scene has no valid pixel outside the "
                     "patch neighbourhoods of the labelled pixels; the layer is empty")
    elif len(suggestion) < request.n:
        console.warn(f"only {len(suggestion)} of {request.n} pixels could be suggested: the "
                     f"{suggestion.eligible} eligible pixels leave no more that are a patch "
                     f"({bundle.geometry.patch_size} px) apart")
    table = suggestion.table(bundle.classes)
    write_suggestions(request.output, table, grid, bundle.classes, csv=request.csv,
                      overwrite=request.overwrite,
                      metadata=_provenance(request, bundle, suggestion))
    return _report(request, source, bundle, suggestion, table)


def _report(request: SuggestRequest, source: Path, bundle: ModelBundle, suggestion: Suggestion,
            table: SuggestionTable) -> dict[str, Any]:
    counts = {c.id: 0 for c in bundle.classes}
    for class_id in table.pred_id.tolist():
        counts[int(class_id)] += 1
    return {
        "input": str(source), "output": str(request.output),
        "csv": None if request.csv is None else str(request.csv),
        "model": str(request.model), "acquisition": request.acquisition,
        "seed": request.seed, "requested": request.n, "suggested": len(suggestion),
        "valid_pixels": suggestion.valid, "labelled_pixels": suggestion.labelled,
        "eligible_pixels": suggestion.eligible, "scored_pixels": suggestion.scored,
        "max_candidates": request.max_candidates, "seconds": round(suggestion.seconds, 3),
        "classes": [{"id": c.id, "name": c.name, "suggested": counts[c.id]}
                    for c in bundle.classes],
        "suggestions": table.records(),
    }


__all__ = [
    "DEFAULT_MAX_CANDIDATES",
    "LABELLED_FEATURE_CAP",
    "CandidateSample",
    "SuggestRequest",
    "Suggestion",
    "check_suggest_options",
    "check_suggest_outputs",
    "feature_layer",
    "labelled_samples",
    "run_suggest",
    "sample_candidates",
    "score_pixels",
    "spacing_for",
    "suggest_pixels",
]
