"""The pieces one optimisation epoch is made of: the learning-rate schedule, the per-epoch seed,
the optimiser step, a single-process epoch, and scoring a patch set.

The data-parallel epoch (:mod:`s2fin_cli.training.ddp`) is built from the same schedule and the
same :func:`optimizer_step`; only how a batch's loss is formed differs (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2fin_cli.device import autocast
from s2fin_cli.errors import ConfigError
from s2fin_cli.hashing import derived_seed
from s2fin_cli.training.settings import TrainSettings
from s2fin_cli.training_data import (
    PatchSet,
    augment,
    context_draws,
    epoch_batches,
    mix_context,
    radiometric_draws,
)


def radiometric_wanted(settings: TrainSettings) -> bool:
    return settings.gain_jitter > 0 or settings.spectral_noise > 0


def augment_batch(spectral: Tensor, spatial: Tensor, active: Tensor, settings: TrainSettings,
                  generator: torch.Generator, *, choice: Tensor | None = None,
                  share: Tensor | None = None, global_size: int | None = None,
                  donors: PatchSet | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Flips/rotations (``settings.augment``), radiometric changes, then context mixing (the
    surroundings of some patches replaced by those of random ``donors`` samples) of one batch,
    drawn from ``generator``. Data parallel: ``choice`` holds the global batch's transforms and
    ``share`` this rank's positions in the global batch of ``global_size`` samples (every rank
    draws the same global changes and applies its share)."""
    if settings.augment:
        if choice is not None and share is not None:
            choice = choice[share]
        spectral, spatial, active = augment(spectral, spatial, active, generator, choice=choice)
    n = int(spectral.shape[0]) if global_size is None else global_size
    if radiometric_wanted(settings):
        draws = radiometric_draws(n, tuple(spectral.shape[1:]), tuple(spatial.shape[1:]),
                                  generator, settings.gain_jitter, settings.spectral_noise)
        if share is not None:
            draws = draws.subset(share)
        spectral, spatial = draws.apply(spectral, spatial)
    if settings.context_mix > 0 and donors is not None and len(donors):
        mixed, donor = context_draws(n, len(donors), settings.context_mix, generator)
        if share is not None:
            mixed, donor = mixed[share], donor[share]
        spatial, active = mix_context(spatial, active, donors, mixed, donor)
    return spectral, spatial, active
def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch: a fixed function of (seed, epoch), so a resumed run replays it."""
    return derived_seed("s2fin-epoch", seed, epoch)


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up from base_lr / warmup to base_lr, then cosine decay to 0 at total_steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """The learning rates of one epoch's steps."""

    first_step: int  # global step of the epoch's first batch
    total_steps: int
    warmup_steps: int
    epoch: int  # 0-based

    def lr(self, i: int, base_lr: float) -> float:
        return learning_rate(self.first_step + i, self.total_steps, self.warmup_steps, base_lr)


@dataclass(frozen=True)
class EpochStats:
    """What an epoch reports: its last learning rate and the training loss/accuracy sums."""

    lr: float
    loss_sum: float
    correct: int
    seen: int


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   loss: Tensor, parameters: list[nn.Parameter], grad_clip: float) -> None:
    """Backward ``loss``, clip the gradient norm (when ``grad_clip`` > 0), step, update AMP."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


def train_epoch(
    model: nn.Module, train: PatchSet, settings: TrainSettings, device: torch.device,
    generator: torch.Generator, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, schedule: Schedule,
    after_step: Callable[[], None] | None = None,
) -> EpochStats:
    """One single-process epoch over ``train`` in batches drawn from ``generator``
    (``after_step`` runs after every optimiser step, e.g. a weight average's update)."""
    lr = settings.lr
    loss_sum, correct, seen = 0.0, 0, 0
    parameters = list(model.parameters())
    for i, index in enumerate(epoch_batches(len(train), settings.batch_size, generator)):
        lr = schedule.lr(i, settings.lr)
        set_learning_rate(optimizer, lr)
        spectral, spatial, active, target = train.batch(index)
        spectral, spatial, active = augment_batch(spectral, spatial, active, settings, generator,
                                                  donors=train)
        spectral, spatial, active, target = (t.to(device, non_blocking=True) for t in
                                             (spectral, spatial, active, target))
        with autocast(device):
            logits = model(spectral, spatial, active)
        loss = F.cross_entropy(logits.float(), target,
                               label_smoothing=settings.label_smoothing)
        if not torch.isfinite(loss):
            raise ConfigError(f"the training loss became {float(loss)} in epoch "
                              f"{schedule.epoch + 1}", hint="lower --lr")
        optimizer_step(optimizer, scaler, loss, parameters, settings.grad_clip)
        if after_step is not None:
            after_step()
        n = int(target.shape[0])
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == target).sum())
        seen += n
    return EpochStats(lr, loss_sum, correct, seen)


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


__all__ = [
    "EpochStats",
    "Schedule",
    "augment_batch",
    "epoch_seed",
    "evaluate_patch_set",
    "learning_rate",
    "optimizer_step",
    "set_learning_rate",
    "train_epoch",
]
