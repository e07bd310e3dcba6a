"""``s2fin train`` as a library: sampling, preprocessing, the training loop, checkpoints, metrics.

:func:`run_training` does what the command does, from file paths to a model file; :func:`fit`
is the loop alone (AdamW, linear warm-up then cosine decay per step, early stopping on the
validation set, AMP on CUDA).

Determinism: the network is initialised from ``seed``; every epoch reseeds torch (dropout) and
its own generator (shuffle, augmentation) from ``(seed, epoch)``. After every epoch a checkpoint
(``<output>.ckpt``: tensors and primitives only, ``torch.save``/``torch.load(weights_only=True)``,
written atomically) holds the weights, the optimizer state, the best weights so far, the
early-stopping state and the preprocessing, so ``--resume`` continues a killed run to the same
final weights as an uninterrupted run. The checkpoint is removed once the model file is written.

Under torchrun (``dist``, a :class:`s2fin_cli.distributed.DistContext`) the same loop runs data
parallel: every rank draws the same global batches of ``batch_size x world_size`` samples from
the per-epoch permutation and trains on every ``world_size``-th of them (DDP averages the
gradients, the loss is weighted so the step equals a single-process step on the global batch),
metrics are all-reduced so every rank takes the same early-stopping decision, and rank 0 alone
writes the checkpoint, the model file and the report. docs/distributed.md has the details.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import inspect
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models import S2Fin, S2FinConfig, parameter_table
from s2fin_cli import __version__, console
from s2fin_cli.classes import ClassTable
from s2fin_cli.device import autocast, cpu_threads, select_device
from s2fin_cli.distributed import DEBUG_DIGEST_ENV, DistContext, rank_seed, state_digest
from s2fin_cli.errors import ConfigError, LabelError, ModelFileError
from s2fin_cli.io.labels import read_label_points
from s2fin_cli.io.reader import Scene, open_scene_from_options
from s2fin_cli.io.writer import atomic_output, check_output_path, write_text
from s2fin_cli.metrics import AccuracyReport, ConfusionAccumulator
from s2fin_cli.model_file import (
    DEFAULT_MODEL_PATH,
    ModalitySpec,
    ModelBundle,
    save_model_file,
)
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import Preprocessor, fit_preprocessor
from s2fin_cli.sampling import (
    Protocol,
    Samples,
    Split,
    apply_protocol,
    blocked_split,
    drop_invalid_centres,
    pixel_overlap,
)
from s2fin_cli.training_data import (
    PatchSet,
    augment,
    augment_choices,
    epoch_batches,
    extract_patch_set,
    iter_sample_inputs,
    rank_share,
)

CHECKPOINT_FORMAT = "s2fin-checkpoint"
CHECKPOINT_VERSION = 1
ABLATIONS = ("hfset", "afcm", "ssaf", "hfrm", "long_range")

# Defaults chosen so the bundled sample scene trains in minutes on a 2-core CPU (README).
DEFAULT_DIM = 32
DEFAULT_HEADS = 4
DEFAULT_DEPTH = 1
DEFAULT_PATCH = 11
DEFAULT_SPECTRAL_WINDOW = 5
DEFAULT_PCA = 30


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (everything that changes the weights besides data and network)."""

    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    # Validation sets of limited-label runs are small and noisy: on the sample scene patience 15
    # stopped at epoch 26 (best 11, test OA 77.3 %) where the same run went on to a best epoch 31
    # (test OA 84.2 %, found with --patience 60). 25 still reaches that epoch.
    patience: int = 25
    seed: int = 0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    augment: bool = True

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (0.0 <= self.label_smoothing < 1.0, "label smoothing must be in [0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a fixed function of (seed, epoch), so a resumed run replays it."""
    digest = hashlib.sha256(f"s2fin-epoch:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up from base_lr / warmup to base_lr, then cosine decay to 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


# -- checkpoints ------------------------------------------------------------------------------


def checkpoint_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".ckpt")


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write a checkpoint (tensors and primitives only) atomically."""
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **state}
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"checkpoint {path} cannot be read: {first[:200]}",
                             hint="delete it to start over") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not an s2fin training checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"checkpoint {path} has version {data.get('version')}, this s2fin "
                             f"writes {CHECKPOINT_VERSION}", hint="delete it to start over")
    return data


# -- the loop ---------------------------------------------------------------------------------


class TrainingStopped(Exception):
    """Raised by :func:`fit` after the checkpoint of epoch ``stop_after`` (an injected stop)."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"training stopped after epoch {epoch}; continue with --resume")
        self.epoch = epoch


@dataclass
class FitResult:
    best_state: dict[str, Tensor]
    best_epoch: int  # 1-based; the last epoch when there is no validation set
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]]
    final_state: dict[str, Tensor] = field(default_factory=dict)


def _state_copy(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step":
                state[key] = value.to(device)


@torch.no_grad()
def evaluate_patch_set(model: nn.Module, patches: PatchSet, device: torch.device, *,
                       batch_size: int = 256) -> tuple[np.ndarray, float]:
    """Predicted output indexes and mean cross-entropy of every sample of ``patches``."""
    model.eval()
    preds, loss_sum = [], 0.0
    for start in range(0, len(patches), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(patches)))
        spectral, spatial, active, target = (t.to(device) for t in patches.batch(idx))
        with autocast(device):
            logits = model(spectral, spatial, active)
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        preds.append(logits.argmax(1).cpu().numpy())
    pred = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    return pred, loss_sum / max(len(patches), 1)


def fit(
    model: nn.Module,
    train: PatchSet,
    val: PatchSet | None,
    settings: TrainSettings,
    device: torch.device,
    *,
    checkpoint: Path | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    resume: dict[str, Any] | None = None,
    stop_after: int | None = None,
    json_lines: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    dist: DistContext | None = None,
) -> FitResult:
    """Train ``model`` (already on ``device``); returns the best-validation weights.

    ``resume`` is a loaded checkpoint; ``checkpoint_extra`` is stored in every checkpoint
    (fingerprint, preprocessing). ``stop_after`` raises :class:`TrainingStopped` after that
    epoch's checkpoint, as a kill would (tests and benchmarks use it).

    ``dist``: train data parallel in an initialised process group (every rank calls ``fit``
    with the same ``train``/``val`` sets and settings; ``device`` is the rank's device).
    ``settings.batch_size`` is then per rank; only rank 0 writes ``checkpoint``.
    """
    settings.validate()
    if len(train) == 0:
        raise LabelError("no training sample left")
    world = dist.world_size if dist is not None else 1
    main = dist is None or dist.is_main
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr,
                                  weight_decay=settings.weight_decay)
    steps_per_epoch = len(epoch_batches(len(train), settings.batch_size * world,
                                        torch.Generator().manual_seed(0)))
    total_steps = settings.epochs * steps_per_epoch
    warmup_steps = min(settings.warmup_epochs * steps_per_epoch, total_steps // 2)
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start_epoch, best_epoch, bad_epochs = 0, 0, 0
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_state = _state_copy(model)
    history: list[dict[str, Any]] = []
    stopped_early = False
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        _move_optimizer_state(optimizer, device)
        if use_scaler and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        start_epoch = int(resume["epoch"])
        best_epoch, bad_epochs = int(resume["best_epoch"]), int(resume["bad_epochs"])
        best_score = (float(resume["best_score"][0]), float(resume["best_score"][1]))
        best_state = {k: v.clone() for k, v in resume["best_state"].items()}
        history = list(resume["history"])
        stopped_early = bool(resume.get("stopped_early", False))
    net: nn.Module = model
    if dist is not None:  # after loading the weights: DDP starts from rank 0's copy
        net = _ddp(model, device)

    with console.progress("training", settings.epochs,
                          json_lines=json_lines and main) as bar:
        if start_epoch:
            bar.advance(start_epoch, resumed_at=start_epoch)
        epoch = start_epoch
        while epoch < settings.epochs and not stopped_early:
            t0 = time.perf_counter()
            eseed = epoch_seed(settings.seed, epoch)
            # Dropout: its own stream per rank; shuffle and augmentation: the same on all ranks.
            torch.manual_seed(eseed if dist is None else rank_seed(eseed, dist.rank))
            generator = torch.Generator().manual_seed(eseed)
            model.train()
            schedule = _Schedule(epoch * steps_per_epoch, total_steps, warmup_steps, epoch)
            if dist is None:
                lr, loss_sum, correct, seen = _train_epoch(
                    model, train, settings, device, generator, optimizer, scaler, schedule)
            else:
                lr, loss_sum, correct, seen = _distributed_epoch(
                    net, train, settings, device, generator, optimizer, scaler, schedule, dist)
            record: dict[str, Any] = {
                "epoch": epoch + 1, "lr": lr, "train_loss": loss_sum / seen,
                "train_accuracy": correct / seen,
            }
            if val is not None and len(val):
                if dist is None:
                    pred, val_loss = evaluate_patch_set(model, val, device)
                    val_oa = float((pred == val.targets.cpu().numpy()).mean())
                else:
                    val_oa, val_loss = _distributed_validation(model, train, val, device, dist)
                record.update(val_loss=val_loss, val_accuracy=val_oa)
                score = (val_oa, -val_loss)
                if score > best_score:
                    best_score, best_epoch, bad_epochs = score, epoch + 1, 0
                    best_state = _state_copy(model)
                else:
                    bad_epochs += 1
                    if bad_epochs >= settings.patience:
                        stopped_early = True
            else:  # no validation: the last epoch is the model
                best_epoch, best_state = epoch + 1, _state_copy(model)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(record)
            epoch += 1
            if checkpoint is not None and main:
                save_checkpoint(checkpoint, {
                    **(checkpoint_extra or {}),
                    "epoch": epoch, "model": _state_copy(model),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict() if use_scaler else {},
                    "best_state": best_state, "best_epoch": best_epoch,
                    "best_score": [float(best_score[0]), float(best_score[1])],
                    "bad_epochs": bad_epochs, "history": history,
                    "stopped_early": stopped_early,
                })
            fields = {"loss": record["train_loss"], "acc": record["train_accuracy"]}
            if "val_accuracy" in record:
                fields["val_acc"] = record["val_accuracy"]
            bar.advance(1, **fields)
            if on_epoch is not None:
                on_epoch(record)
            if stop_after is not None and epoch >= stop_after and epoch < settings.epochs \
                    and not stopped_early:
                if dist is not None:  # no rank leaves before rank 0 has written the checkpoint
                    dist.barrier()
                raise TrainingStopped(epoch)
    if stopped_early:
        console.note(f"early stopping after epoch {epoch}: no validation improvement for "
                     f"{settings.patience} epochs")
    final_state = _state_copy(model)
    if dist is not None:
        _check_ranks_in_sync(dist, final_state, best_state)
    return FitResult(best_state, best_epoch, epoch, stopped_early, history, final_state)


@dataclass(frozen=True)
class _Schedule:
    first_step: int  # global step of the epoch's first batch
    total_steps: int
    warmup_steps: int
    epoch: int  # 0-based

    def lr(self, i: int, base_lr: float) -> float:
        return learning_rate(self.first_step + i, self.total_steps, self.warmup_steps, base_lr)


def _train_epoch(
    model: nn.Module, train: PatchSet, settings: TrainSettings, device: torch.device,
    generator: torch.Generator, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, schedule: _Schedule,
) -> tuple[float, float, int, int]:
    """One single-process epoch; returns (last lr, loss sum, correct, seen)."""
    lr, epoch = settings.lr, schedule.epoch
    loss_sum, correct, seen = 0.0, 0, 0
    for i, index in enumerate(epoch_batches(len(train), settings.batch_size, generator)):
        lr = schedule.lr(i, settings.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        spectral, spatial, active, target = train.batch(index)
        if settings.augment:
            spectral, spatial, active = augment(spectral, spatial, active, generator)
        spectral, spatial, active, target = (t.to(device, non_blocking=True) for t in
                                             (spectral, spatial, active, target))
        with autocast(device):
            logits = model(spectral, spatial, active)
        loss = F.cross_entropy(logits.float(), target,
                               label_smoothing=settings.label_smoothing)
        if not torch.isfinite(loss):
            raise ConfigError(f"the training loss became {float(loss)} in epoch "
                              f"{epoch + 1}", hint="lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        n = int(target.shape[0])
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == target).sum())
        seen += n
    return lr, loss_sum, correct, seen


def _ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, without a buffer broadcast before every forward
    (S2Fin's only buffer is a constant; DDP still syncs it once at construction)."""
    names = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in names
               else {"broadcast_buffers": False})  # the older name (torch < 2.13)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def _distributed_epoch(
    net: nn.Module, train: PatchSet, settings: TrainSettings, device: torch.device,
    generator: torch.Generator, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, schedule: _Schedule, dist: DistContext,
) -> tuple[float, float, int, int]:
    """One epoch on this rank's share; returns (last lr, loss sum, correct, seen) over all ranks.

    Every rank draws the same global batches (``batch_size x world_size``) and augmentation
    transforms from ``generator`` and trains on every ``world_size``-th sample of each. The
    summed loss is weighted by ``world_size / global batch`` so that DDP's gradient average is
    the gradient of the global batch's mean loss, whatever the shares' sizes: a step equals a
    single-process step on the global batch. A rank whose share is empty (a last batch smaller
    than the world) still runs a forward and backward, on one sample with weight 0, because
    every rank must join every gradient all-reduce.
    """
    world, rank, epoch = dist.world_size, dist.rank, schedule.epoch
    lr = settings.lr
    totals = np.zeros(3)  # loss sum, correct, seen
    for i, batch in enumerate(epoch_batches(len(train), settings.batch_size * world,
                                            generator)):
        lr = schedule.lr(i, settings.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        g = int(batch.numel())
        choice = augment_choices(g, generator) if settings.augment else None
        share = rank_share(batch, rank, world)
        weight = world / g
        if share.numel() == 0:
            share, weight = torch.arange(1), 0.0
        spectral, spatial, active, target = train.batch(batch[share])
        if choice is not None:
            spectral, spatial, active = augment(spectral, spatial, active, generator,
                                                choice=choice[share])
        spectral, spatial, active, target = (t.to(device, non_blocking=True) for t in
                                             (spectral, spatial, active, target))
        with autocast(device):
            logits = net(spectral, spatial, active)
        loss_sum = F.cross_entropy(logits.float(), target, reduction="sum",
                                   label_smoothing=settings.label_smoothing)
        if dist.any(not bool(torch.isfinite(loss_sum))):  # every rank stops together
            raise ConfigError(f"the training loss became non-finite in epoch {epoch + 1}",
                              hint="lower --lr")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss_sum * weight).backward()
        if settings.grad_clip > 0:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(net.parameters(), settings.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        if weight:
            totals += (float(loss_sum.detach()), int((logits.detach().argmax(1) == target).sum()),
                       int(target.shape[0]))
    loss_total, correct, seen = dist.all_reduce_sum(totals)
    return lr, float(loss_total), round(float(correct)), round(float(seen))


def _distributed_validation(model: nn.Module, train: PatchSet, val: PatchSet,
                            device: torch.device, dist: DistContext) -> tuple[float, float]:
    """(overall accuracy, mean loss) of ``val``: each rank scores a contiguous share, the loss
    sums and the confusion matrix are all-reduced."""
    part = dist.shard(len(val))
    share = PatchSet(val.spectral[part], val.spatial[part], val.active[part], val.targets[part])
    pred, mean_loss = evaluate_patch_set(model, share, device)
    k = int(max(int(train.targets.max()), int(val.targets.max()))) + 1
    target = share.targets.cpu().numpy()
    confusion = np.bincount(target * k + pred, minlength=k * k) if len(share) else np.zeros(k * k)
    totals = dist.all_reduce_sum(np.concatenate([[mean_loss * len(share)], confusion]))
    matrix = totals[1:].reshape(k, k)
    return float(np.trace(matrix) / matrix.sum()), float(totals[0] / matrix.sum())


def _check_ranks_in_sync(dist: DistContext, final: dict[str, Tensor],
                         best: dict[str, Tensor]) -> None:
    """Every rank must end with the same weights (DDP keeps them so; a divergence is a bug)."""
    digests = {"final": state_digest(final), "best": state_digest(best)}
    folder = os.environ.get(DEBUG_DIGEST_ENV)
    if folder:
        Path(folder, f"rank{dist.rank}.json").write_text(json.dumps(digests))
    dist.check_same(digests["final"] + digests["best"], "the trained weights")


@torch.no_grad()
def predict_samples(
    model: nn.Module,
    scene: Scene,
    samples: Samples,
    preprocessor: Preprocessor,
    geometry: PatchGeometry,
    device: torch.device,
    *,
    batch_size: int = 256,
) -> np.ndarray:
    """Output index predicted at each sample (block by block: memory follows the block)."""
    model.eval()
    out = np.full(len(samples), -1, np.int64)
    for part in iter_sample_inputs(scene, samples, preprocessor, geometry, device):
        for start in range(0, len(part), batch_size):
            sl = slice(start, start + batch_size)
            with autocast(device):
                logits = model(part.spectral[sl], part.spatial[sl], part.active[sl])
            out[part.index[sl]] = logits.float().argmax(1).cpu().numpy()
    return out


# -- the whole command ------------------------------------------------------------------------


@dataclass
class TrainRequest:
    """Everything ``s2fin train`` is asked to do (paths and options)."""

    labels: Path
    scene: Path | None = None
    hsi: Path | None = None
    lidar: Path | None = None
    sar: Path | None = None
    aux_bands: int | None = None
    label_field: str | None = None
    test_labels: Path | None = None
    output: Path = DEFAULT_MODEL_PATH
    overwrite: bool = False
    per_class: int | None = None
    train_fraction: float | None = None
    val_fraction: float = 0.2
    split_block: int = 16
    patch_size: int = DEFAULT_PATCH
    spectral_window: int = DEFAULT_SPECTRAL_WINDOW
    pca: int = DEFAULT_PCA
    dim: int = DEFAULT_DIM
    heads: int = DEFAULT_HEADS
    depth: int = DEFAULT_DEPTH
    dropout: float = 0.1
    ablate: tuple[str, ...] = ()
    settings: TrainSettings = field(default_factory=TrainSettings)
    device: str = "auto"
    threads: int | None = None  # CPU threads; None: 1 (see run_training)
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


def parse_ablate(text: str | None) -> tuple[str, ...]:
    """``hfset,afcm`` -> ("hfset", "afcm"); names of S2FinConfig ``use_*`` switches."""
    if not text:
        return ()
    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in ABLATIONS]
    if bad:
        raise ConfigError(f"--ablate: unknown module(s) {', '.join(bad)}",
                          hint=f"choose from {', '.join(ABLATIONS)}")
    return tuple(dict.fromkeys(names))


def build_config(request: TrainRequest, bands: int, reduced: int, aux: int,
                 classes: int) -> S2FinConfig:
    p, s = request.patch_size, request.spectral_window
    if p % 2 == 0 or not 7 <= p <= 15:
        raise ConfigError(f"--patch-size must be odd and in 7..15, got {p}")
    if s % 2 == 0 or not 1 <= s <= p:
        raise ConfigError(f"--spectral-window must be odd and in 1..{p}, got {s}")
    if request.dim < 4 or request.dim % request.heads:
        raise ConfigError(f"--dim ({request.dim}) must be >= 4 and divisible by the "
                          f"{request.heads} attention heads")
    if request.depth < 1:
        raise ConfigError(f"--depth must be >= 1, got {request.depth}")
    try:
        return S2FinConfig(
            bands=bands, reduced_bands=reduced, active_bands=aux, num_classes=classes,
            patch_size=p, spectral_window=s, dim=request.dim, heads=request.heads,
            hfset_depth=request.depth, spatial_depth=request.depth,
            long_range_depth=request.depth, dropout=request.dropout,
            ssm_heads=math.gcd(S2FinConfig.ssm_heads, S2FinConfig.ssm_expand * request.dim),
            **{f"use_{name}": False for name in request.ablate},
        )
    except ValueError as exc:
        raise ConfigError(f"invalid network settings: {exc}") from None


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _samples_digest(*sets: Samples) -> str:
    digest = hashlib.sha256()
    for s in sets:
        for a in (s.rows, s.cols, s.classes):
            digest.update(np.ascontiguousarray(a, np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


def _fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k) != current.get(k)]


def _report_summary(report: AccuracyReport) -> dict[str, Any]:
    data = report.to_json()
    return {
        "oa": report.overall_accuracy, "aa": report.average_accuracy, "kappa": report.kappa,
        "n_samples": report.n_samples,
        "per_class": [{"id": c["id"], "name": c["name"], "support": c["support"],
                       "accuracy": c["producers_accuracy"]} for c in data["classes"]],
    }


def _json_safe(value: Any) -> Any:
    """NaN/Inf -> None recursively (the model file's JSON refuses NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _library_versions() -> dict[str, str]:
    import rasterio

    return {"s2fin": __version__, "torch": torch.__version__, "rasterio": rasterio.__version__,
            "numpy": np.__version__}


def _split_table(rows: list[dict[str, Any]], dropped_nodata: dict[int, int]) -> Any:
    from rich.table import Table

    table = Table(title="Samples per class (blocked train/validation split)")
    for col in ("id", "class", "train", "val", "dropped: near val", "dropped: nodata"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], str(r["train"]), str(r["val"]),
                      str(r["dropped_overlap"]), str(dropped_nodata.get(r["id"], 0)))
    table.add_row("", "total", str(sum(r["train"] for r in rows)),
                  str(sum(r["val"] for r in rows)),
                  str(sum(r["dropped_overlap"] for r in rows)),
                  str(sum(dropped_nodata.values())), style="bold")
    return table


def report_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".report.json")


def check_request(request: TrainRequest, *, outputs: bool = True) -> Protocol:
    """The option errors :func:`run_training` raises before reading anything (``outputs``: the
    output and report paths too); ``s2fin train --nproc`` runs it before launching torchrun."""
    request.settings.validate()
    if outputs:
        output = Path(request.output)
        check_output_path(output, overwrite=request.overwrite)
        check_output_path(report_path_for(output), overwrite=request.overwrite)
    protocol = Protocol.from_options(request.per_class, request.train_fraction)
    if not 0.0 <= request.val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {request.val_fraction}")
    if request.pca < 1:
        raise ConfigError(f"--pca must be >= 1, got {request.pca}")
    build_config(request, 8, 1, 1, 2)  # option errors before any reading
    if request.threads is not None and request.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {request.threads}")
    return protocol


def run_training(request: TrainRequest, *, dist: DistContext | None = None) -> TrainSummary:
    """Train from files to a model file (and ``<output>.report.json``); see the module docs.

    ``dist``: one rank of a data-parallel run (every rank calls this with the same request);
    rank 0 checks and writes the outputs, the other ranks return a summary without reports.
    """
    t_start = time.perf_counter()
    output = Path(request.output)
    report_path = report_path_for(output)
    if dist is None:
        protocol = check_request(request)
        device = select_device(request.device)
    else:
        protocol = check_request(request, outputs=False)
        dist.from_main(lambda: check_request(request))  # the outputs are rank 0's
        device = dist.device
    with cpu_threads(request.threads):
        return _run(request, device, protocol, output, report_path, t_start, dist)


def _run(request: TrainRequest, device: torch.device, protocol: Protocol, output: Path,
         report_path: Path, t_start: float, dist: DistContext | None = None) -> TrainSummary:
    settings = request.settings
    main = dist is None or dist.is_main
    with open_scene_from_options(request.scene, request.hsi, request.lidar, request.sar,
                                 aux_bands=request.aux_bands) as scene:
        points, table = read_label_points(request.labels, scene.grid,
                                          label_field=request.label_field)
        present = set(np.unique(points.classes).tolist())
        classes = ClassTable(tuple(c for c in table if c.id in present))
        if len(classes) < 2:
            raise LabelError(f"{Path(request.labels).name} holds {len(classes)} class(es); "
                             "training needs at least 2")
        labelled, dropped_nodata = drop_invalid_centres(Samples.from_points(points), scene)
        if dropped_nodata:
            console.warn(f"dropped {sum(dropped_nodata.values())} labelled pixel(s) where the "
                         "scene is nodata (" + ", ".join(f"class {k}: {v}" for k, v in
                                                       sorted(dropped_nodata.items())) + ")")
        budget = apply_protocol(labelled, protocol, classes, seed=settings.seed)
        counts = budget.counts(classes)
        console.note(f"protocol: {protocol.describe()} (seed {settings.seed}): "
                     + ", ".join(f"{classes.name_of(k)} {v}" for k, v in counts.items()))
        split = blocked_split(budget, classes, val_fraction=request.val_fraction,
                              block_size=request.split_block, patch_size=request.patch_size,
                              seed=settings.seed)
        _warn_split(split, classes, request.val_fraction)
        if dist is not None:  # seeded, so the same everywhere: checked, not broadcast
            dist.check_same(_samples_digest(split.train, split.val), "the training samples")
        rows = split.table_rows(classes)
        if not request.json_lines and console.verbosity() >= 0:
            console.stderr.print(_split_table(rows, dropped_nodata))

        test_samples: Samples | None = None
        if request.test_labels is not None:
            test_samples = _read_test_labels(request, scene, classes, labelled)

        if dist is None:
            inputs = _input_files(request, scene)
        else:  # hashing the inputs once is enough
            inputs = dist.from_main(lambda: _input_files(request, scene))
        fingerprint = {
            "inputs": {k: v["sha256"] for k, v in inputs.items()},
            "protocol": protocol.to_json(), "val_fraction": request.val_fraction,
            "split_block": request.split_block, "samples": _samples_digest(split.train,
                                                                           split.val),
            "settings": settings.to_json(), "pca": request.pca,
            "network": {"patch_size": request.patch_size, "dim": request.dim,
                        "heads": request.heads, "depth": request.depth,
                        "spectral_window": request.spectral_window,
                        "dropout": request.dropout, "ablate": list(request.ablate)},
        }
        if dist is not None:  # another world size makes other batches: no exact resume
            fingerprint["distributed"] = {"world_size": dist.world_size}
        fingerprint_text = json.dumps(fingerprint, sort_keys=True)
        ckpt_path = checkpoint_path_for(output)
        if dist is None:
            resume_state = _resume_state(request, ckpt_path, fingerprint)
        else:  # rank 0's checkpoint, loaded by every rank
            resume_state = dist.from_main(lambda: _resume_state(request, ckpt_path, fingerprint))

        if resume_state is not None:
            pre = Preprocessor.from_tensors(resume_state["preprocessing"])
        elif dist is None:
            console.info("fitting normalisation and PCA on the training scene")
            pre = fit_preprocessor(scene, request.pca, seed=settings.seed)
        else:  # fitted once, on rank 0, and broadcast: bit-identical on every rank
            console.info("fitting normalisation and PCA on the training scene (rank 0)")
            pre = Preprocessor.from_tensors(dist.from_main(
                lambda: fit_preprocessor(scene, request.pca, seed=settings.seed).tensors()))
        config = build_config(request, pre.bands, pre.reduced_bands, pre.aux_bands,
                              len(classes))
        geometry = PatchGeometry(config.patch_size, config.spectral_window)
        torch.manual_seed(settings.seed)
        model = S2Fin(config).to(device)
        n_params = parameter_table(model)[-1][1]
        storage = device if device.type == "cuda" else torch.device("cpu")
        train_set = extract_patch_set(scene, split.train, pre, geometry, classes.ids, device,
                                      storage=storage)
        val_set = (extract_patch_set(scene, split.val, pre, geometry, classes.ids, device,
                                     storage=storage) if len(split.val) else None)
        console.note(f"training S²Fin ({n_params:,} parameters) on {len(split.train)} samples, "
                     f"validating on {len(split.val)}, {settings.epochs} epochs max, "
                     f"device {device}" + (_describe_world(dist, settings) if dist else ""))
        result = fit(
            model, train_set, val_set, settings, device, checkpoint=ckpt_path,
            checkpoint_extra={"fingerprint": fingerprint_text,
                              "preprocessing": pre.tensors()},
            resume=resume_state, stop_after=request.stop_after,
            json_lines=request.json_lines and main, dist=dist,
        )
        model.load_state_dict(result.best_state)
        validation = test = None
        if val_set is not None and main:
            pred, _ = evaluate_patch_set(model, val_set, device)
            validation = _report(classes, split.val, pred)
        if test_samples is not None and main:
            test = _test_report(model, scene, test_samples, pre, geometry, device, classes)

        wall = time.perf_counter() - t_start
        provenance = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "inputs": inputs,
            "protocol": {**protocol.to_json(), "description": protocol.describe(),
                         "val_fraction": request.val_fraction,
                         "split_block": request.split_block,
                         "dropped_nodata": {str(k): v for k, v in dropped_nodata.items()},
                         "per_class": rows},
            "seed": settings.seed,
            "settings": settings.to_json(),
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_early": result.stopped_early,
            "checkpoint_selection": "validation" if val_set is not None else "last epoch",
            "history": result.history,
            "device": str(device),
            "versions": _library_versions(),
            "wall_seconds": round(wall, 2),
        }
        if dist is not None:
            provenance["distributed"] = {
                **dist.describe(), "per_rank_batch": settings.batch_size,
                "effective_batch": settings.batch_size * dist.world_size,
            }
        metrics: dict[str, Any] = {}
        if validation is not None:
            metrics["validation"] = _report_summary(validation)
        if test is not None:
            metrics["test"] = _report_summary(test)
        bundle = ModelBundle(
            config=config, state_dict=result.best_state, preprocessor=pre, classes=classes,
            optical=ModalitySpec("optical", scene.optical.count, scene.optical.band_names,
                                 _json_safe(scene.optical.nodata)),
            aux=ModalitySpec(scene.aux_kind, scene.aux.count, scene.aux.band_names,
                             _json_safe(scene.aux.nodata)),
            provenance=_json_safe(provenance), metrics=_json_safe(metrics),
        )
        if not main:  # rank 0 writes; the others are done
            return TrainSummary(output, None, bundle, None, None, rows,
                                time.perf_counter() - t_start, result.history)
        save_model_file(output, bundle, overwrite=request.overwrite)
        written_report: Path | None = None
        if validation is not None or test is not None:
            doc = {"model": str(output), "validation": validation.to_json() if validation else None,
                   "test": test.to_json() if test else None,
                   "samples": rows, "best_epoch": result.best_epoch,
                   "epochs_run": result.epochs_run}
            written_report = write_text(report_path, json.dumps(_json_safe(doc), indent=2,
                                                                allow_nan=False) + "\n",
                                        overwrite=request.overwrite)
        if not request.keep_checkpoint:
            with contextlib.suppress(FileNotFoundError):
                os.remove(ckpt_path)
    return TrainSummary(output, written_report, bundle, validation, test, rows,
                        time.perf_counter() - t_start, result.history)


def _describe_world(dist: DistContext, settings: TrainSettings) -> str:
    return (f" x {dist.world_size} ranks ({dist.backend}; batch {settings.batch_size} per rank, "
            f"{settings.batch_size * dist.world_size} effective)")


def _warn_split(split: Split, classes: ClassTable, val_fraction: float) -> None:
    if val_fraction == 0:
        console.warn("no validation split (--val-fraction 0): the last epoch is kept and "
                     "there is no early stopping")
        return
    val = split.val.counts(classes)
    missing = [f"{c.name} (id {c.id})" for c in classes if val[c.id] == 0]
    if missing:
        console.warn("no validation pixel for class(es) " + ", ".join(missing)
                     + ": their labels sit in too few split cells (try a smaller --split-block)")
    dropped = sum(split.dropped_overlap.values())
    if dropped:
        console.note(f"dropped {dropped} training pixel(s) whose patch overlapped a validation "
                     "patch")


def _read_test_labels(request: TrainRequest, scene: Scene, classes: ClassTable,
                      training: Samples) -> Samples:
    assert request.test_labels is not None
    points, test_table = read_label_points(request.test_labels, scene.grid,
                                           label_field=request.label_field)
    test = _match_class_names(Samples.from_points(points), test_table, classes).sorted()
    unknown = sorted(set(np.unique(test.classes).tolist()) - set(classes.ids))
    if unknown:
        raise LabelError(f"test labels {Path(request.test_labels).name} hold class id(s) "
                         f"{unknown[:10]} that the training labels do not",
                         hint=f"training classes: {classes.ids}")
    overlap = pixel_overlap(test, training)
    if overlap:
        console.warn(f"{overlap} test pixel(s) are also training labels: the test is not "
                     "independent (use disjoint test labels)")
    return test


def _match_class_names(samples: Samples, table: ClassTable, classes: ClassTable) -> Samples:
    """Give test pixels the training ids of their class names where both files name classes
    (vector labels number their names 1..N per file, so ids alone may disagree)."""
    by_name = {c.name: c.id for c in classes if c.name != f"class {c.id}"}
    mapping = {c.id: by_name[c.name] for c in table if c.name in by_name}
    if not mapping or all(k == v for k, v in mapping.items()):
        return samples
    lut = np.arange(max(int(samples.classes.max()), max(mapping)) + 1, dtype=np.int64)
    for old, new in mapping.items():
        lut[old] = new
    console.note("matched test classes to training classes by name: "
                 + ", ".join(f"{table.name_of(k)} {k}->{v}" for k, v in mapping.items()
                             if k != v))
    return Samples(samples.rows, samples.cols, lut[samples.classes])


def _input_files(request: TrainRequest, scene: Scene) -> dict[str, dict[str, Any]]:
    files: dict[str, Path] = {}
    if request.scene is not None:
        files["scene"] = Path(request.scene)
    else:
        files["optical"] = scene.optical.path
        files[scene.aux_kind] = scene.aux.path
    files["labels"] = Path(request.labels)
    if request.test_labels is not None:
        files["test_labels"] = Path(request.test_labels)
    return {k: {"path": str(p), "name": p.name, "sha256": file_sha256(p)}
            for k, p in files.items()}


def _resume_state(request: TrainRequest, path: Path,
                  fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not request.resume:
        if path.exists():
            console.warn(f"{path} exists and will be replaced (pass --resume to continue it)")
        return None
    if not path.exists():
        console.note(f"no checkpoint {path} to resume; starting from epoch 1")
        return None
    state = load_checkpoint(path)
    try:
        saved = json.loads(state["fingerprint"])
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"checkpoint {path} has no valid run fingerprint") from None
    diff = _fingerprint_diff(saved, fingerprint)
    if diff:
        raise ConfigError(f"checkpoint {path} belongs to a run with other inputs or settings "
                          f"(differs in: {', '.join(diff)})",
                          hint="rerun with the same options, or drop --resume to start over")
    console.note(f"resuming from {path} after epoch {int(state['epoch'])}")
    return state


def _report(classes: ClassTable, samples: Samples, pred_index: np.ndarray) -> AccuracyReport:
    acc = ConfusionAccumulator(classes)
    ids = np.asarray(classes.ids, np.int64)
    predicted = np.where(pred_index >= 0, ids[np.clip(pred_index, 0, None)], 0)
    acc.update(samples.classes, predicted)
    return acc.report(classes)


def _test_report(model: nn.Module, scene: Scene, samples: Samples, pre: Preprocessor,
                 geometry: PatchGeometry, device: torch.device,
                 classes: ClassTable) -> AccuracyReport:
    """Predict at valid test pixels; nodata test pixels count as "no prediction" (errors)."""
    valid, dropped = drop_invalid_centres(samples, scene)
    if dropped:
        console.note(f"{sum(dropped.values())} test pixel(s) lie on scene nodata: counted as "
                     "'no prediction'")
    pred = predict_samples(model, scene, valid, pre, geometry, device)
    acc = ConfusionAccumulator(classes)
    ids = np.asarray(classes.ids, np.int64)
    acc.update(valid.classes, ids[pred])
    invalid = samples.subset(~_member(samples, valid))
    if len(invalid):
        acc.update(invalid.classes, np.zeros(len(invalid), np.int64))
    return acc.report(classes)


def _member(a: Samples, b: Samples) -> np.ndarray:
    if len(b) == 0:
        return np.zeros(len(a), bool)
    width = int(max(a.cols.max(), b.cols.max())) + 1
    return np.isin(a.rows * width + a.cols, b.rows * width + b.cols)


__all__ = [
    "ABLATIONS",
    "FitResult",
    "TrainRequest",
    "TrainSettings",
    "TrainSummary",
    "TrainingStopped",
    "build_config",
    "check_request",
    "checkpoint_path_for",
    "epoch_seed",
    "evaluate_patch_set",
    "file_sha256",
    "fit",
    "learning_rate",
    "load_checkpoint",
    "parse_ablate",
    "predict_samples",
    "report_path_for",
    "run_training",
    "save_checkpoint",
]
