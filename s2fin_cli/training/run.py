"""``s2fin train`` as a library: from file paths to a model file, in named phases.

:func:`run_training` opens the scene, reads the labels, selects the training and validation
samples (:mod:`s2fin_cli.sampling`), fingerprints the run and finds a checkpoint to resume
(:mod:`s2fin_cli.training.checkpoint`), fits the preprocessing, cuts the patches, trains
(:func:`s2fin_cli.training.loop.fit`), scores the selected weights on the validation split and
the optional test labels (:mod:`s2fin_cli.scoring`), and writes the model file, the report and
nothing else.

Under torchrun every rank calls :func:`run_training` with the same request and its
:class:`~s2fin_cli.distributed.DistContext`: whatever must be the same everywhere comes from rank
0 (``ctx.from_main``: output checks, input checksums, the checkpoint, the preprocessing fit) or is
computed from the seed on every rank and compared (``ctx.check_same``: the samples); rank 0
alone writes. A single process runs the same code with :data:`~s2fin_cli.distributed.LOCAL`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from models import S2Fin, S2FinConfig, parameter_table
from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.device import cpu_threads, select_device
from s2fin_cli.distributed import LOCAL, DistContext, RunContext
from s2fin_cli.errors import ConfigError, LabelError
from s2fin_cli.hashing import arrays_digest, file_sha256
from s2fin_cli.io.outputs import check_outputs
from s2fin_cli.io.reader import Scene, open_scene_from_options
from s2fin_cli.io.writer import write_text
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.model_file import (
    DEFAULT_MODEL_PATH,
    InputFile,
    ModalitySpec,
    ModelBundle,
    ModelMetrics,
    Provenance,
    save_model_file,
)
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import Preprocessor, fit_preprocessor
from s2fin_cli.reference import merge_label_sources, read_reference, vector_label_field
from s2fin_cli.sampling import (
    DEFAULT_SPLIT_BLOCK,
    Protocol,
    Samples,
    Split,
    apply_protocol,
    blocked_split,
    drop_invalid_centres,
    pixel_overlap,
    resolve_val_fraction,
)
from s2fin_cli.scoring import index_report, score_at_samples
from s2fin_cli.training.checkpoint import (
    Checkpoint,
    checkpoint_path_for,
    resume_checkpoint,
    save_checkpoint,
)
from s2fin_cli.training.loop import FitResult, fit, planned_schedule
from s2fin_cli.training.pseudo import (
    PseudoLabels,
    merged,
    pseudo_label,
    second_fit_seed,
    second_fit_settings,
    unlabelled_pool,
)
from s2fin_cli.training.report import (
    describe_counts,
    json_safe,
    library_versions,
    score_summary,
    split_table,
    utc_now,
    warn_about_split,
)
from s2fin_cli.training.settings import NetworkOptions, TrainSettings
from s2fin_cli.training.steps import evaluate_patch_set
from s2fin_cli.training_data import PatchSet, extract_patch_set
from s2fin_cli.values import summarize_scene


@dataclass
class TrainRequest:
    """Everything ``s2fin train`` is asked to do (paths and options)."""

    labels: Path | tuple[Path, ...]  # several files are merged (reference.merge_label_sources)
    scene: Path | None = None
    hsi: Path | None = None
    lidar: Path | None = None
    sar: Path | None = None
    aux_bands: int | None = None
    label_field: str | None = None
    test_labels: Path | None = None
    output: Path | str = DEFAULT_MODEL_PATH
    overwrite: bool = False
    per_class: int | None = None
    train_fraction: float | None = None
    # None: "auto" (sampling.resolve_val_fraction: a blocked split only with enough labels).
    val_fraction: float | None = None
    split_block: int = DEFAULT_SPLIT_BLOCK
    network: NetworkOptions = field(default_factory=NetworkOptions)
    settings: TrainSettings = field(default_factory=TrainSettings)
    device: str = "auto"
    threads: int | None = None  # CPU threads; None: s2fin_cli.device's default
    resume: bool = False
    keep_checkpoint: bool = False
    json_lines: bool = False
    stop_after: int | None = None  # injected stop (tests/benchmarks)


@dataclass
class TrainSummary:
    output: Path
    report_path: Path | None
    bundle: ModelBundle
    validation: AccuracyReport | None
    test: AccuracyReport | None
    split_rows: list[dict[str, Any]]
    wall_seconds: float
    history: list[dict[str, Any]]


def label_paths(request: TrainRequest) -> tuple[Path, ...]:
    """The training label files of a request (one or several)."""
    labels = request.labels
    return tuple(map(Path, labels)) if isinstance(labels, tuple | list) else (Path(labels),)


def report_path_for(output: Path) -> Path:
    """``model.s2fin`` → ``model.s2fin.report.json``."""
    return output.with_name(output.name + ".report.json")


def check_request(request: TrainRequest, *, outputs: bool = True) -> Protocol:
    """The option errors :func:`run_training` raises before reading anything (``outputs``: the
    output and report paths too); ``s2fin train --nproc`` runs it before launching torchrun."""
    request.settings.validate()
    if outputs:
        check_train_outputs(request)
    protocol = Protocol.from_options(request.per_class, request.train_fraction)
    if request.val_fraction is not None and not 0.0 <= request.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {request.val_fraction}")
    request.network.validate()
    if request.threads is not None and request.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {request.threads}")
    return protocol


def check_train_outputs(request: TrainRequest) -> None:
    """The model file and its report may not exist (without ``--overwrite``) nor be any file the
    run reads; the run's own checkpoint is replaced (or resumed) but may not be an input."""
    output = Path(request.output)
    inputs = [request.scene, request.hsi, request.lidar, request.sar, *label_paths(request),
              request.test_labels]
    # request.output as given: a trailing separator (a directory) is refused, not stripped.
    check_outputs([request.output, report_path_for(output)], inputs,
                  overwrite=request.overwrite)
    check_outputs([checkpoint_path_for(output)], inputs, overwrite=True)


def run_training(request: TrainRequest, *, ctx: RunContext = LOCAL) -> TrainSummary:
    """Train from files to a model file (and ``<output>.report.json``); see the module docs.

    ``ctx``: one rank of a data-parallel run (every rank calls this with the same request);
    rank 0 checks and writes the outputs, the other ranks return a summary without reports.
    """
    t_start = time.perf_counter()
    protocol = ctx.from_main(lambda: check_request(request))
    device = ctx.device if isinstance(ctx, DistContext) else select_device(request.device)
    with cpu_threads(request.threads):
        return _train(request, device, protocol, ctx, t_start)


@dataclass
class _Selection:
    """The labelled pixels a run trains and validates on."""

    classes: ClassTable
    labelled: Samples  # every labelled pixel on scene data
    split: Split
    dropped_nodata: dict[int, int]
    rows: list[dict[str, Any]]  # per-class counts (the split table)
    val_fraction: float  # the one used (the request's, or the auto rule's)


def _train(request: TrainRequest, device: torch.device, protocol: Protocol, ctx: RunContext,
           t_start: float) -> TrainSummary:
    settings = request.settings
    output = Path(request.output)
    with open_scene_from_options(request.scene, request.hsi, request.lidar, request.sar,
                                 aux_bands=request.aux_bands) as scene:
        selection = _select_samples(request, scene, protocol, ctx)
        classes = selection.classes
        test_samples = (None if request.test_labels is None
                        else _read_test_labels(request, scene, classes, selection.labelled))
        inputs = ctx.from_main(lambda: _input_files(request, scene))
        fingerprint = _fingerprint(request, protocol, inputs, selection, ctx)
        ckpt_path = checkpoint_path_for(output)
        checkpoint = ctx.from_main(
            lambda: resume_checkpoint(ckpt_path, fingerprint, resume=request.resume))
        pre = _preprocessing(scene, request, checkpoint, ctx)
        config = request.network.build_config(pre.bands, pre.reduced_bands, pre.aux_bands,
                                              len(classes))
        torch.manual_seed(settings.seed)
        model: nn.Module = S2Fin(config).to(device)
        train_set, val_set = _patch_sets(scene, selection.split, pre, config, classes, device)
        pool = _consistency_pool(scene, selection, settings, pre, config, classes, device)
        _announce(model, selection.split, settings, device, ctx)
        if checkpoint is None:
            checkpoint = Checkpoint(json.dumps(fingerprint, sort_keys=True), pre.tensors())
        model, result, self_training = _fit_stages(
            _Stages(request, scene, selection, pre, config, classes, device, ctx, ckpt_path,
                    pool),
            model, train_set, val_set, checkpoint)
        model.load_state_dict(result.best_state)
        validation = test = None
        if ctx.is_main:
            validation, test = _score(model, scene, selection.split, val_set, test_samples, pre,
                                      config, classes, device)
        optical_values, aux_values = summarize_scene(scene, seed=settings.seed)
        bundle = ModelBundle(
            config=config, state_dict=result.best_state, preprocessor=pre, classes=classes,
            optical=ModalitySpec("optical", scene.optical.count, scene.optical.band_names,
                                 json_safe(scene.optical.nodata), optical_values),
            aux=ModalitySpec(scene.aux_kind, scene.aux.count, scene.aux.band_names,
                             json_safe(scene.aux.nodata), aux_values),
            provenance=json_safe(_provenance(request, protocol, inputs, selection, result,
                                             val_set is not None, device, ctx, t_start,
                                             self_training)),
            metrics=json_safe(_metrics(validation, test)),
        )
    if not ctx.is_main:  # rank 0 writes; the others are done
        return TrainSummary(output, None, bundle, None, None, selection.rows,
                            time.perf_counter() - t_start, result.history)
    report_path = _write_outputs(request, bundle, validation, test, selection, result)
    return TrainSummary(output, report_path, bundle, validation, test, selection.rows,
                        time.perf_counter() - t_start, result.history)


@dataclass
class _Stages:
    """What the fits of a run share (one fit, or two with self-training)."""

    request: TrainRequest
    scene: Scene
    selection: _Selection
    pre: Preprocessor
    config: S2FinConfig
    classes: ClassTable
    device: torch.device
    ctx: RunContext
    ckpt_path: Path
    unlabelled: PatchSet | None  # the consistency pool (None: off)

    def fit(self, model: nn.Module, train: PatchSet, val: PatchSet | None,
            settings: TrainSettings, checkpoint: Checkpoint) -> FitResult:
        r = self.request
        return fit(model, train, val, settings, self.device, checkpoint_path=self.ckpt_path,
                   checkpoint=checkpoint, stop_after=r.stop_after,
                   json_lines=r.json_lines and self.ctx.is_main, ctx=self.ctx,
                   unlabelled=self.unlabelled)


def _fit_stages(st: _Stages, model: nn.Module, train_set: PatchSet, val_set: PatchSet | None,
                checkpoint: Checkpoint) -> tuple[nn.Module, FitResult, dict[str, Any] | None]:
    """The fit, then with ``--semi`` the pseudo-labels and the second fit (training/pseudo.py);
    a checkpoint of either stage resumes there. Returns the model, the last fit's result and
    what self-training did (None without it)."""
    settings, ctx = st.request.settings, st.ctx
    if checkpoint.stage == 1:
        result = st.fit(model, train_set, val_set, settings, checkpoint)
        if settings.self_training <= 0:
            return model, result, None
        model.load_state_dict(result.best_state)
        per_epoch = -(-len(train_set) // (settings.batch_size * ctx.world_size))
        chosen = PseudoLabels.from_tensors(ctx.from_main(lambda: pseudo_label(
            model, st.scene, st.selection.labelled, st.selection.split, st.pre,
            PatchGeometry(st.config.patch_size, st.config.spectral_window), st.classes,
            settings, st.device).tensors()))
        checkpoint = Checkpoint(checkpoint.fingerprint, checkpoint.preprocessing, None, 2,
                                chosen.tensors(), {
                                    "steps": result.epochs_run * per_epoch,
                                    "epochs_run": result.epochs_run,
                                    "best_epoch": result.best_epoch,
                                    "history": result.history})
        if ctx.is_main:
            save_checkpoint(st.ckpt_path, checkpoint)
    chosen = PseudoLabels.from_tensors(checkpoint.pseudo)
    counts = chosen.samples.counts(st.classes)
    console.note(f"self-training: {len(chosen.samples)} pseudo-labels from {chosen.pool} "
                 "unlabelled pixels (" + describe_counts(st.classes, counts) + "); training "
                 "a second network on labels and pseudo-labels")
    storage = st.device if st.device.type == "cuda" else torch.device("cpu")
    train2 = extract_patch_set(st.scene, merged(st.selection.split.train, chosen.samples),
                               st.pre, PatchGeometry(st.config.patch_size,
                                                     st.config.spectral_window),
                               st.classes.ids, st.device, storage=storage)
    torch.manual_seed(second_fit_seed(settings.seed))
    model = S2Fin(st.config).to(st.device)
    steps = int(checkpoint.stage_one["steps"])
    result = st.fit(model, train2, val_set, second_fit_settings(settings, steps), checkpoint)
    info = {"pseudo_labels": {str(k): v for k, v in counts.items()}, "pool": chosen.pool,
            "threshold": settings.pseudo_threshold, "ratio": settings.self_training,
            "first_fit": {k: checkpoint.stage_one[k]
                          for k in ("steps", "epochs_run", "best_epoch", "history")}}
    return model, result, info


def _select_samples(request: TrainRequest, scene: Scene, protocol: Protocol,
                    ctx: RunContext) -> _Selection:
    """Labels → classes → labelled pixels on data → the protocol's budget → blocked split."""
    settings = request.settings
    points, table = merge_label_sources(label_paths(request), scene.grid,
                                        label_field=request.label_field)
    present = set(np.unique(points.classes).tolist())
    classes = ClassTable(tuple(c for c in table if c.id in present))
    if len(classes) < 2:
        names = ", ".join(p.name for p in label_paths(request))
        raise LabelError(f"{names} hold(s) {len(classes)} class(es); "
                         "training needs at least 2")
    labelled, dropped_nodata = drop_invalid_centres(Samples.from_points(points), scene)
    if dropped_nodata:
        console.warn(f"dropped {sum(dropped_nodata.values())} labelled pixel(s) where the "
                     "scene is nodata (" + ", ".join(f"class {k}: {v}" for k, v in
                                                   sorted(dropped_nodata.items())) + ")")
    budget = apply_protocol(labelled, protocol, classes, seed=settings.seed)
    console.note(f"protocol: {protocol.describe()} (seed {settings.seed}): "
                 + describe_counts(classes, budget.counts(classes)))
    val_fraction = resolve_val_fraction(request.val_fraction, budget.counts(classes))
    split = blocked_split(budget, classes, val_fraction=val_fraction,
                          block_size=request.split_block, patch_size=request.network.patch_size,
                          seed=settings.seed)
    warn_about_split(split, classes, val_fraction, auto=request.val_fraction is None)
    # Seeded, so the same on every rank: checked, not broadcast.
    ctx.check_same(_samples_digest(split), "the training samples")
    rows = split.table_rows(classes)
    if not request.json_lines and console.verbosity() >= 0:
        console.stderr.print(split_table(rows, dropped_nodata))
    return _Selection(classes, labelled, split, dropped_nodata, rows, val_fraction)


def _samples_digest(split: Split) -> str:
    return arrays_digest([(s.rows, s.cols, s.classes) for s in (split.train, split.val)])


def _read_test_labels(request: TrainRequest, scene: Scene, classes: ClassTable,
                      training: Samples) -> Samples:
    """The test labels on the scene grid, their classes matched to the training classes by
    the rule of :mod:`s2fin_cli.reference` (unknown classes are a label error)."""
    assert request.test_labels is not None
    # --label-field names the field of the training vectors; a raster test file has none.
    field = vector_label_field(request.test_labels, request.label_field)
    test = read_reference(request.test_labels, scene.grid, classes, what="model",
                          label_field=field).samples.sorted()
    overlap = pixel_overlap(test, training)
    if overlap:
        console.warn(f"{overlap} test pixel(s) are also training labels: the test is not "
                     "independent (use disjoint test labels)")
    return test


def _input_files(request: TrainRequest, scene: Scene) -> dict[str, InputFile]:
    files: dict[str, Path] = {}
    if request.scene is not None:
        files["scene"] = Path(request.scene)
    else:
        files["optical"] = scene.optical.path
        files[scene.aux_kind] = scene.aux.path
    for i, path in enumerate(label_paths(request)):
        files["labels" if i == 0 else f"labels_{i + 1}"] = path
    if request.test_labels is not None:
        files["test_labels"] = Path(request.test_labels)
    return {k: {"path": str(p), "name": p.name, "sha256": file_sha256(p)}
            for k, p in files.items()}


def _fingerprint(request: TrainRequest, protocol: Protocol, inputs: dict[str, InputFile],
                 selection: _Selection, ctx: RunContext) -> dict[str, Any]:
    """Everything that decides the weights: a checkpoint resumes only the same fingerprint."""
    fingerprint: dict[str, Any] = {
        "inputs": {k: v["sha256"] for k, v in inputs.items()},
        "protocol": protocol.to_json(), "val_fraction": request.val_fraction,
        "split_block": request.split_block, "samples": _samples_digest(selection.split),
        "settings": request.settings.to_json(), "pca": request.network.pca,
        "network": request.network.fingerprint(),
    }
    if ctx.world_size > 1:  # another world size makes other batches: no exact resume
        fingerprint["distributed"] = {"world_size": ctx.world_size}
    return fingerprint


def _preprocessing(scene: Scene, request: TrainRequest, checkpoint: Checkpoint | None,
                   ctx: RunContext) -> Preprocessor:
    """The resumed run's preprocessing, or one fitted on the training scene (on rank 0, and
    broadcast, so every rank holds the same bits)."""
    derived = request.network.derived_inputs(scene.aux_kind)
    if checkpoint is not None:
        return Preprocessor.from_tensors(checkpoint.preprocessing, derived)
    console.info("fitting normalisation and PCA on the training scene")
    return Preprocessor.from_tensors(ctx.from_main(
        lambda: fit_preprocessor(scene, request.network.pca, seed=request.settings.seed,
                                 derived=derived).tensors()), derived)


def _patch_sets(scene: Scene, split: Split, pre: Preprocessor, config: S2FinConfig,
                classes: ClassTable, device: torch.device) -> tuple[PatchSet, PatchSet | None]:
    geometry = PatchGeometry(config.patch_size, config.spectral_window)
    storage = device if device.type == "cuda" else torch.device("cpu")
    train_set = extract_patch_set(scene, split.train, pre, geometry, classes.ids, device,
                                  storage=storage)
    val_set = (extract_patch_set(scene, split.val, pre, geometry, classes.ids, device,
                                 storage=storage) if len(split.val) else None)
    return train_set, val_set


def _consistency_pool(scene: Scene, selection: _Selection, settings: TrainSettings,
                      pre: Preprocessor, config: S2FinConfig, classes: ClassTable,
                      device: torch.device) -> PatchSet | None:
    """The unlabelled patches consistency training draws from (None when it is off or the
    scene has no unlabelled valid centre); every rank cuts the same seeded pool."""
    if settings.consistency <= 0:
        return None
    pool = unlabelled_pool(scene, selection.labelled, selection.split, config.patch_size,
                           settings.CONSISTENCY_POOL, settings.seed)
    if len(pool) == 0:
        console.warn("consistency training: the scene has no unlabelled pixel; training on "
                     "the labels alone")
        return None
    console.info(f"consistency training on {len(pool)} unlabelled pixels")
    # The pool's targets are never read (consistency gives its own): any class id will do.
    pool = Samples(pool.rows, pool.cols, np.full(len(pool), classes.ids[0], np.int64))
    storage = device if device.type == "cuda" else torch.device("cpu")
    return extract_patch_set(scene, pool, pre,
                             PatchGeometry(config.patch_size, config.spectral_window),
                             classes.ids, device, storage=storage)


def _announce(model: nn.Module, split: Split, settings: TrainSettings, device: torch.device,
              ctx: RunContext) -> None:
    n_params = parameter_table(model)[-1][1]
    _, epochs = planned_schedule(len(split.train), len(split.train.counts()), settings,
                                 ctx.world_size)
    world = ""
    if ctx.world_size > 1:
        world = (f" x {ctx.world_size} ranks ({ctx.describe().get('backend')}; batch "
                 f"{settings.batch_size} per rank, {settings.batch_size * ctx.world_size} "
                 "effective)")
    console.note(f"training S²Fin ({n_params:,} parameters) on {len(split.train)} samples, "
                 f"validating on {len(split.val)}, {epochs} epochs "
                 f"{'max' if len(split.val) else '(fixed schedule)'}, "
                 f"device {device}" + world)


def _score(model: nn.Module, scene: Scene, split: Split, val_set: PatchSet | None,
           test_samples: Samples | None, pre: Preprocessor, config: S2FinConfig,
           classes: ClassTable, device: torch.device
           ) -> tuple[AccuracyReport | None, AccuracyReport | None]:
    """The selected weights on the validation split and on the test labels."""
    validation = test = None
    if val_set is not None:
        pred, _ = evaluate_patch_set(model, val_set, device)
        validation = index_report(classes, split.val, pred)
    if test_samples is not None:
        geometry = PatchGeometry(config.patch_size, config.spectral_window)
        test = score_at_samples(model, scene, test_samples, pre, geometry, classes, device)
    return validation, test


def _provenance(request: TrainRequest, protocol: Protocol, inputs: dict[str, InputFile],
                selection: _Selection, result: FitResult, validated: bool,
                device: torch.device, ctx: RunContext, t_start: float,
                self_training: dict[str, Any] | None = None) -> Provenance:
    settings = request.settings
    provenance: Provenance = {
        "created": utc_now(),
        "inputs": inputs,
        "protocol": {**protocol.to_json(), "description": protocol.describe(),
                     "val_fraction": selection.val_fraction,
                     "val_strategy": "auto" if request.val_fraction is None else "given",
                     "split_block": request.split_block,
                     "dropped_nodata": {str(k): v for k, v in selection.dropped_nodata.items()},
                     "per_class": selection.rows},
        "seed": settings.seed,
        "settings": settings.to_json(),
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "checkpoint_selection": "validation" if validated else "last epoch",
        "history": result.history,
        "device": str(device),
        "versions": library_versions(),
        "wall_seconds": round(time.perf_counter() - t_start, 2),
    }
    if self_training is not None:
        provenance["self_training"] = self_training
    if ctx.world_size > 1:
        provenance["distributed"] = {
            **ctx.describe(), "per_rank_batch": settings.batch_size,
            "effective_batch": settings.batch_size * ctx.world_size,
        }
    return provenance


def _metrics(validation: AccuracyReport | None, test: AccuracyReport | None) -> ModelMetrics:
    metrics: ModelMetrics = {}
    if validation is not None:
        metrics["validation"] = score_summary(validation)
    if test is not None:
        metrics["test"] = score_summary(test)
    return metrics


def _write_outputs(request: TrainRequest, bundle: ModelBundle,
                   validation: AccuracyReport | None, test: AccuracyReport | None,
                   selection: _Selection, result: FitResult) -> Path | None:
    """The model file, the report (when there is something to report), no checkpoint."""
    output = Path(request.output)
    save_model_file(output, bundle, overwrite=request.overwrite)
    written_report: Path | None = None
    if validation is not None or test is not None:
        doc = {"model": str(output), "validation": validation.to_json() if validation else None,
               "test": test.to_json() if test else None,
               "samples": selection.rows, "best_epoch": result.best_epoch,
               "epochs_run": result.epochs_run}
        written_report = write_text(report_path_for(output),
                                    json.dumps(json_safe(doc), indent=2, allow_nan=False) + "\n",
                                    overwrite=request.overwrite)
    if not request.keep_checkpoint:
        with contextlib.suppress(FileNotFoundError):
            os.remove(checkpoint_path_for(output))
    return written_report


__all__ = [
    "TrainRequest",
    "TrainSummary",
    "check_request",
    "check_train_outputs",
    "report_path_for",
    "run_training",
]
