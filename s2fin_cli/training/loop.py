"""The training loop: AdamW, linear warm-up then cosine decay per step, early stopping on the
validation set, AMP on CUDA, a checkpoint after every epoch.

Determinism: every epoch reseeds torch (dropout) and its own generator (shuffle, augmentation)
from ``(seed, epoch)``, and batches split over the CPU's batch workers seed each part's dropout
from ``(seed, epoch, step, part)``, so a run resumed from the checkpoint of epoch k continues to
the same final weights as an uninterrupted run (for a given ``--threads``: the thread count sets
the number of parts).

The same loop runs data parallel when its context is a
:class:`~s2fin_cli.distributed.DistContext` (see :mod:`s2fin_cli.training.ddp`): only rank 0
writes the checkpoint and reports progress, and the early-stopping decision is taken on
all-reduced metrics, so it is the same everywhere.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from s2fin_cli import console
from s2fin_cli.acceleration import batch_workers
from s2fin_cli.distributed import LOCAL, DistContext, RunContext
from s2fin_cli.errors import LabelError
from s2fin_cli.training.averaging import WeightAverage, state_copy
from s2fin_cli.training.checkpoint import Checkpoint, LoopState, save_checkpoint
from s2fin_cli.training.consistency import ConsistencyPool
from s2fin_cli.training.ddp import (
    check_ranks_in_sync,
    distributed_epoch,
    distributed_validation,
    wrap_ddp,
)
from s2fin_cli.training.settings import TrainSettings
from s2fin_cli.training.steps import (
    EpochStats,
    Schedule,
    epoch_seed,
    evaluate_patch_set,
    make_optimizer,
    train_epoch,
)
from s2fin_cli.training_data import PatchSet, epoch_batches


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


@dataclass
class EarlyStopping:
    """Keeps the best weights by (validation accuracy, -validation loss); stops after
    ``patience`` epochs without improvement."""

    patience: int
    best_state: dict[str, Tensor]
    best_score: tuple[float, float] = (-math.inf, -math.inf)
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False

    def update(self, epoch: int, score: tuple[float, float], model: nn.Module) -> None:
        """Record epoch ``epoch`` (1-based) with its validation ``score``."""
        if score > self.best_score:
            self.best_score, self.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = state_copy(model)
        else:
            self.bad_epochs += 1
            if self.bad_epochs >= self.patience:
                self.stopped = True

    def keep_last(self, epoch: int, model: nn.Module) -> None:
        """Without validation the last epoch is the model."""
        self.best_epoch, self.best_state = epoch, state_copy(model)


def _start_pool(unlabelled: PatchSet, settings: TrainSettings, model: nn.Module,
                resume: LoopState | None) -> ConsistencyPool:
    """Consistency training's pool for a fit: as at the first step, or as the checkpoint left
    it (the learning status, the teacher's weights)."""
    pool = ConsistencyPool.start(unlabelled, settings, model)
    if resume is not None:
        if pool.status is not None and resume.consistency_status is not None:
            pool.status.copy_(resume.consistency_status)
        if pool.teacher is not None and resume.teacher:
            pool.teacher.restore(resume.teacher, resume.teacher_steps)
    return pool


def _calling_all(functions: list[Callable[[], None]]) -> Callable[[], None] | None:
    """One function that calls ``functions`` in order (None when there is none)."""
    if not functions:
        return None

    def call() -> None:
        for function in functions:
            function()

    return call


def _move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, Tensor) and key != "step":
                state[key] = value.to(device)


# How one epoch trains and how the validation set is scored: chosen once per run.
_EpochFn = Callable[[torch.Generator, Schedule], EpochStats]
_ValidateFn = Callable[[PatchSet], tuple[float, float]]


def _epoch_functions(model: nn.Module, train: PatchSet, settings: TrainSettings,
                     device: torch.device, optimizer: torch.optim.Optimizer,
                     scaler: torch.amp.GradScaler, ctx: RunContext,
                     after_step: Callable[[], None] | None,
                     unlabelled: ConsistencyPool | None) -> tuple[_EpochFn, _ValidateFn]:
    if isinstance(ctx, DistContext):
        net = wrap_ddp(model, device)  # after loading the weights: DDP starts from rank 0's

        def run_distributed(generator: torch.Generator, schedule: Schedule) -> EpochStats:
            return distributed_epoch(net, train, settings, device, generator, optimizer,
                                     scaler, schedule, ctx, after_step, unlabelled)

        return run_distributed, partial(distributed_validation, model, train, device=device,
                                        dist=ctx)

    workers = batch_workers(device.type, torch.get_num_threads())

    def run_local(generator: torch.Generator, schedule: Schedule) -> EpochStats:
        return train_epoch(model, train, settings, device, generator, optimizer, scaler,
                           schedule, after_step, workers, unlabelled)

    def validate_local(val: PatchSet) -> tuple[float, float]:
        pred, val_loss = evaluate_patch_set(model, val, device)
        return float((pred == val.targets.cpu().numpy()).mean()), val_loss

    return run_local, validate_local


def fit(
    model: nn.Module,
    train: PatchSet,
    val: PatchSet | None,
    settings: TrainSettings,
    device: torch.device,
    *,
    checkpoint_path: Path | None = None,
    checkpoint: Checkpoint | None = None,
    stop_after: int | None = None,
    json_lines: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    ctx: RunContext = LOCAL,
    unlabelled: PatchSet | None = None,
) -> FitResult:
    """Train ``model`` (already on ``device``); returns the best-validation weights.

    ``checkpoint``: the run's fingerprint and preprocessing, written with the loop state to
    ``checkpoint_path`` after every epoch (by the main rank); its ``loop``, when present, is the
    state to resume from. ``stop_after`` raises :class:`TrainingStopped` after that epoch's
    checkpoint, as a kill would (tests and benchmarks use it).

    ``ctx``: a :class:`DistContext` to train data parallel in an initialised process group
    (every rank calls ``fit`` with the same sets and settings; ``device`` is the rank's device,
    ``settings.batch_size`` is per rank).

    ``unlabelled``: the pool of unlabelled patches that consistency training draws from
    (``settings.consistency`` > 0; :mod:`s2fin_cli.training.consistency`); its learning status
    (class-adaptive thresholds) starts afresh with every fit and is part of the checkpoint.
    """
    settings.validate()
    if len(train) == 0:
        raise LabelError("no training sample left")
    optimizer = make_optimizer(model.parameters(), settings, device)
    steps_per_epoch, epochs = planned_schedule(len(train), train.class_count, settings,
                                               ctx.world_size)
    total_steps = epochs * steps_per_epoch
    warmup_steps = min(settings.warmup_epochs * steps_per_epoch, total_steps // 2)
    use_scaler = device.type == "cuda" and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    stopping = EarlyStopping(settings.patience, state_copy(model))
    start_epoch, history = 0, []
    resume = checkpoint.loop if checkpoint is not None else None
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        _move_optimizer_state(optimizer, device)
        if use_scaler and resume.scaler:
            scaler.load_state_dict(resume.scaler)
        start_epoch, history = resume.epoch, list(resume.history)
        stopping = EarlyStopping(settings.patience, resume.best_state, resume.best_score,
                                 resume.best_epoch, resume.bad_epochs, resume.stopped_early)
    pool = _start_pool(unlabelled, settings, model, resume) if unlabelled is not None else None
    averager = None
    if settings.ema > 0:
        averager = (WeightAverage(model, settings.ema, resume.averaged, resume.average_steps)
                    if resume is not None and resume.averaged else
                    WeightAverage(model, settings.ema))
    updates = [update for update in (averager.update if averager else None,
                                     pool.teacher.update if pool and pool.teacher else None)
               if update is not None]
    run_epoch, validate = _epoch_functions(model, train, settings, device, optimizer, scaler,
                                           ctx, _calling_all(updates), pool)
    # The weights validated, selected and written: the average when there is one.
    selected = averager.swapped_in if averager is not None else contextlib.nullcontext

    with console.progress("training", epochs, json_lines=json_lines and ctx.is_main) as bar:
        if start_epoch:
            bar.advance(start_epoch, resumed_at=start_epoch)
        epoch = start_epoch
        while epoch < epochs and not stopping.stopped:
            t0 = time.perf_counter()
            eseed = epoch_seed(settings.seed, epoch)
            # Dropout: its own stream per rank; shuffle and augmentation: the same on all ranks.
            torch.manual_seed(ctx.seed_for_rank(eseed))
            generator = torch.Generator().manual_seed(eseed)
            model.train()
            stats = run_epoch(generator, Schedule(epoch * steps_per_epoch, total_steps,
                                                  warmup_steps, epoch))
            record: dict[str, Any] = {"epoch": epoch + 1, **stats.record()}
            with selected():
                if val is not None and len(val):
                    val_oa, val_loss = validate(val)
                    record.update(val_loss=val_loss, val_accuracy=val_oa)
                    stopping.update(epoch + 1, (val_oa, -val_loss), model)
                else:
                    stopping.keep_last(epoch + 1, model)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            history.append(record)
            epoch += 1
            if checkpoint_path is not None and checkpoint is not None and ctx.is_main:
                checkpoint.loop = LoopState(
                    epoch, state_copy(model), optimizer.state_dict(),
                    scaler.state_dict() if use_scaler else {}, stopping.best_state,
                    stopping.best_epoch, stopping.best_score, stopping.bad_epochs, history,
                    stopping.stopped, averager.copy() if averager else {},
                    averager.steps if averager else 0,
                    pool.status.clone() if pool is not None and pool.status is not None
                    else None,
                    pool.teacher.average.copy() if pool and pool.teacher else {},
                    pool.teacher.average.steps if pool and pool.teacher else 0)
                save_checkpoint(checkpoint_path, checkpoint)
            fields = {"loss": record["train_loss"], "acc": record["train_accuracy"]}
            if "val_accuracy" in record:
                fields["val_acc"] = record["val_accuracy"]
            bar.advance(1, **fields)
            if on_epoch is not None:
                on_epoch(record)
            if stop_after is not None and stop_after <= epoch < epochs \
                    and not stopping.stopped:
                ctx.barrier()  # no rank leaves before rank 0 has written the checkpoint
                raise TrainingStopped(epoch)
    if stopping.stopped:
        console.note(f"early stopping after epoch {epoch}: no validation improvement for "
                     f"{settings.patience} epochs")
    final_state = state_copy(model)
    if isinstance(ctx, DistContext):
        check_ranks_in_sync(ctx, final_state, stopping.best_state)
    return FitResult(stopping.best_state, stopping.best_epoch, epoch, stopping.stopped, history,
                     final_state)


def planned_schedule(samples: int, classes: int, settings: TrainSettings,
                     world_size: int = 1) -> tuple[int, int]:
    """(optimiser steps per epoch, epochs) of :func:`fit` on ``samples`` training samples of
    ``classes`` classes over ``world_size`` ranks: what a run does and what it announces."""
    steps = len(epoch_batches(samples, settings.batch_size * world_size,
                              torch.Generator().manual_seed(0)))
    return steps, settings.epochs_for(steps, classes)


__all__ = ["EarlyStopping", "FitResult", "TrainingStopped", "WeightAverage", "fit",
           "planned_schedule", "state_copy"]
