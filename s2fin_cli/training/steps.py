"""The pieces one optimisation epoch is made of: the learning-rate schedule, the per-epoch seed,
the optimiser step, a single-process epoch (its batches split into parts trained side by side
on the CPU's batch workers), and scoring a patch set.

The data-parallel epoch (:mod:`s2fin_cli.training.ddp`) is built from the same schedule and the
same :func:`optimizer_step`; only how a batch's loss is formed differs (see there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.layers import dropout_generator
from s2fin_cli.acceleration import BatchWorkers, map_in_batch_workers
from s2fin_cli.device import autocast
from s2fin_cli.errors import ConfigError
from s2fin_cli.hashing import derived_seed
from s2fin_cli.training.consistency import (
    ConsistencyPool,
    UnlabelledBatch,
    combined_loss,
    unlabelled_batch,
)
from s2fin_cli.training.settings import TrainSettings
from s2fin_cli.training_data import (
    PatchSet,
    augment,
    context_draws,
    epoch_batches,
    mix_context,
    radiometric_draws,
    scale_heights,
    uniform_gains,
)


def radiometric_wanted(settings: TrainSettings) -> bool:
    return settings.gain_jitter > 0 or settings.spectral_noise > 0


def augment_batch(spectral: Tensor, spatial: Tensor, active: Tensor, settings: TrainSettings,
                  generator: torch.Generator, *, choice: Tensor | None = None,
                  share: Tensor | None = None, global_size: int | None = None,
                  train: PatchSet | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Flips/rotations (``settings.augment``), radiometric changes, gains on the height above
    ground (where ``train``, the training set, has one), then context mixing (the surroundings
    of some patches replaced by those of random ``train`` samples) of one batch, drawn from
    ``generator``. Data parallel: ``choice`` holds the global batch's transforms and ``share``
    this rank's positions in the global batch of ``global_size`` samples (every rank draws the
    same global changes and applies its share)."""
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
    if settings.height_jitter > 0 and train is not None and train.height is not None:
        gains = uniform_gains(n, generator, settings.height_jitter)
        active = scale_heights(active, train.height, gains if share is None else gains[share])
    if settings.context_mix > 0 and train is not None and len(train):
        mixed, donor = context_draws(n, len(train), settings.context_mix, generator)
        if share is not None:
            mixed, donor = mixed[share], donor[share]
        spatial, active = mix_context(spatial, active, train, mixed, donor)
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
    # consistency training: unlabelled patches drawn, and those confident enough to train
    unlabelled: int = 0
    confident: int = 0

    def record(self) -> dict[str, float]:
        """The epoch's entry in the training history (without validation and timing)."""
        out = {"lr": self.lr, "train_loss": self.loss_sum / self.seen,
               "train_accuracy": self.correct / self.seen}
        if self.unlabelled:
            out["unlabelled_confident"] = self.confident / self.unlabelled
        return out


# Devices on which AdamW runs its fused kernel: one pass over each parameter tensor instead of a
# dozen elementwise ops per tensor. The default network's 123 tensors on AMD Zen 4, one thread:
# 0.63-0.92 against 3.29-3.62 ms per step, the weights within 2.6e-8 of the per-tensor form's
# after three steps (docs/network.md, "Training step overheads").
_FUSED_OPTIMIZER_DEVICES = ("cpu", "cuda")


def make_optimizer(parameters: Iterable[nn.Parameter], settings: TrainSettings,
                   device: torch.device) -> torch.optim.AdamW:
    """The optimiser every training run uses: AdamW with the settings' peak learning rate and
    weight decay, fused on the CPU and CUDA (the schedule sets the learning rate per step)."""
    return torch.optim.AdamW(parameters, lr=settings.lr, weight_decay=settings.weight_decay,
                             fused=device.type in _FUSED_OPTIMIZER_DEVICES)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   loss: Tensor, parameters: list[nn.Parameter], grad_clip: float) -> None:
    """Backward ``loss``, clip the gradient norm (when ``grad_clip`` > 0), step, update AMP."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]  # torch leaves it untyped
    _clip_and_step(optimizer, scaler, parameters, grad_clip)


def _clip_and_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   parameters: list[nn.Parameter], grad_clip: float) -> None:
    """Clip the gradient norm (when ``grad_clip`` > 0), step, update AMP (a disabled scaler
    makes unscale and update no-ops and step a plain ``optimizer.step()``)."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(parameters, grad_clip)
    scaler.step(optimizer)
    scaler.update()


@dataclass(frozen=True)
class BatchPart:
    """One part of a training batch and the seed of its dropout masks."""

    spectral: Tensor
    spatial: Tensor
    active: Tensor
    target: Tensor
    dropout_seed: int


def split_batch(spectral: Tensor, spatial: Tensor, active: Tensor, target: Tensor, parts: int,
                dropout_seed: Callable[[int], int]) -> list[BatchPart]:
    """``parts`` contiguous parts of one batch, sizes differing by at most one (fewer when the
    batch is smaller), part k's dropout seeded with ``dropout_seed(k)``."""
    pieces = [t.tensor_split(min(parts, int(target.shape[0]))) for t in
              (spectral, spatial, active, target)]
    return [BatchPart(spectral_k, spatial_k, active_k, target_k, dropout_seed(k))
            for k, (spectral_k, spatial_k, active_k, target_k)
            in enumerate(zip(*pieces, strict=True))]


def training_step(model: nn.Module, spectral: Tensor, spatial: Tensor, active: Tensor,
                  target: Tensor, settings: TrainSettings, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler, parameters: list[nn.Parameter],
                  workers: BatchWorkers, dropout_seed: Callable[[int], int],
                  unlabelled: UnlabelledBatch | None = None) -> tuple[Tensor, Tensor]:
    """One optimiser step on a batch; returns the batch's mean loss and its logits (detached).

    With one worker the batch runs as a whole (dropout from torch's global generator, seeded per
    epoch by the loop). With several (the CPU: :func:`s2fin_cli.acceleration.batch_workers`) the
    batch is split into one part per worker; each worker runs forward and backward of its part
    on its own thread, its dropout masks drawn from a generator seeded by ``dropout_seed(part)``,
    and returns the part's gradients of (part's summed loss / batch size), which this thread adds
    in part order before one clipped optimiser step. The step is the whole batch's mean-loss step
    up to float rounding and dropout draws, and is deterministic for a given worker count.
    Why: the default network's small operations do not split well over intra-op threads, so
    parts on single-thread workers use the cores better (measured in docs/network.md).

    ``unlabelled`` (consistency training): its strong views join the batch, their weighted
    loss is added (:func:`s2fin_cli.training.consistency.combined_loss`); the returned loss and
    logits are the labelled samples'.
    """
    if unlabelled is not None:
        return _step_with_unlabelled(model, spectral, spatial, active, target, unlabelled,
                                     settings, optimizer, scaler, parameters, workers,
                                     dropout_seed)
    if workers.count == 1:
        with autocast(spectral.device):
            logits = model(spectral, spatial, active)
        loss = F.cross_entropy(logits.float(), target, label_smoothing=settings.label_smoothing)
        _check_finite(loss)
        optimizer_step(optimizer, scaler, loss, parameters, settings.grad_clip)
        return loss.detach(), logits.detach()
    size = int(target.shape[0])

    def part_gradients(part: BatchPart) -> tuple[tuple[Tensor | None, ...], Tensor, Tensor]:
        with dropout_generator(torch.Generator().manual_seed(part.dropout_seed)):
            logits = model(part.spectral, part.spatial, part.active)
        loss = F.cross_entropy(logits.float(), part.target, reduction="sum",
                               label_smoothing=settings.label_smoothing) / size
        gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
        return gradients, loss.detach(), logits.detach()

    parts = split_batch(spectral, spatial, active, target, workers.count, dropout_seed)
    results = list(map_in_batch_workers(part_gradients, parts, workers))
    loss = torch.stack([part_loss for _, part_loss, _ in results]).sum()
    _check_finite(loss)
    _set_summed_gradients(parameters, [gradients for gradients, _, _ in results], optimizer)
    _clip_and_step(optimizer, scaler, parameters, settings.grad_clip)
    return loss, torch.cat([logits for _, _, logits in results])


def _step_with_unlabelled(model: nn.Module, spectral: Tensor, spatial: Tensor, active: Tensor,
                          target: Tensor, unlabelled: UnlabelledBatch, settings: TrainSettings,
                          optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                          parameters: list[nn.Parameter], workers: BatchWorkers,
                          dropout_seed: Callable[[int], int]) -> tuple[Tensor, Tensor]:
    """:func:`training_step` on the labelled batch followed by the unlabelled strong views:
    one batch, per-sample weights (1 / labelled count for the labels), split over the workers
    as a labelled batch is."""
    size = int(target.shape[0])
    inputs = [torch.cat([x, u]) for x, u in ((spectral, unlabelled.spectral),
                                               (spatial, unlabelled.spatial),
                                               (active, unlabelled.active))]
    targets = torch.cat([target, unlabelled.targets])
    weights = torch.cat([torch.full((size,), 1.0 / size, device=target.device),
                         unlabelled.weights])
    is_labelled = torch.arange(int(targets.shape[0])) < size
    smoothing = settings.label_smoothing
    if workers.count == 1:
        with autocast(spectral.device):
            logits = model(*inputs)
        loss, labelled = combined_loss(logits, targets, weights, size, smoothing)
        _check_finite(loss)
        optimizer_step(optimizer, scaler, loss, parameters, settings.grad_clip)
        return labelled, logits.detach()[:size]

    def part_gradients(part: tuple[Tensor, ...], seed: int
                       ) -> tuple[tuple[Tensor | None, ...], Tensor, Tensor, Tensor]:
        *part_inputs, part_targets, part_weights, part_labelled = part
        with dropout_generator(torch.Generator().manual_seed(seed)):
            logits = model(*part_inputs)
        # labelled samples come first in the batch, so first in each part
        loss, labelled = combined_loss(logits, part_targets, part_weights,
                                       int(part_labelled.sum()), smoothing)
        gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
        return gradients, loss.detach(), labelled, logits.detach()

    count = min(workers.count, int(targets.shape[0]))
    pieces = list(zip(*(t.tensor_split(count) for t in
                        (*inputs, targets, weights, is_labelled)), strict=True))
    results = list(map_in_batch_workers(lambda item: part_gradients(*item),
                                        [(p, dropout_seed(k)) for k, p in enumerate(pieces)],
                                        workers))
    _check_finite(torch.stack([total for _, total, _, _ in results]).sum())
    _set_summed_gradients(parameters, [gradients for gradients, _, _, _ in results], optimizer)
    _clip_and_step(optimizer, scaler, parameters, settings.grad_clip)
    labelled_loss = torch.stack([labelled for _, _, labelled, _ in results]).sum()
    return labelled_loss, torch.cat([logits for _, _, _, logits in results])[:size]


def _set_summed_gradients(parameters: list[nn.Parameter],
                          parts: list[tuple[Tensor | None, ...]],
                          optimizer: torch.optim.Optimizer) -> None:
    """Each parameter's gradient = its parts' gradients added in part order, laid out like the
    parameter."""
    optimizer.zero_grad(set_to_none=True)
    for i, parameter in enumerate(parameters):
        terms = [g for part in parts if (g := part[i]) is not None]
        parameter.grad = _sum_in_order(terms, parameter) if terms else None


def _sum_in_order(terms: list[Tensor], parameter: Tensor) -> Tensor:
    """``terms`` added in order into a tensor with ``parameter``'s strides. Why: a convolution's
    weight gradient from ``torch.autograd.grad`` comes channels-last; ``backward()`` would have
    laid it out like the weight, and torch's fused CPU AdamW assumes that layout (given a
    channels-last gradient of a contiguous weight it updates the weight's elements with each
    other's gradients, silently)."""
    total = torch.empty_like(parameter, requires_grad=False).copy_(terms[0])
    for term in terms[1:]:
        total.add_(term)
    return total


def _check_finite(loss: Tensor) -> None:
    if not torch.isfinite(loss):
        raise ConfigError(f"the training loss became {float(loss)}", hint="lower --lr")


def dropout_seeds(seed: int, epoch: int, step: int) -> Callable[[int], int]:
    """The dropout seed of each part of one step's batch: a fixed function of (training seed,
    epoch, step in the epoch, part), so a resumed run replays it."""
    return lambda part: derived_seed("s2fin-dropout", seed, epoch, step, part)


def train_epoch(
    model: nn.Module, train: PatchSet, settings: TrainSettings, device: torch.device,
    generator: torch.Generator, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, schedule: Schedule,
    after_step: Callable[[], None] | None = None,
    workers: BatchWorkers | None = None,
    unlabelled: ConsistencyPool | None = None,
) -> EpochStats:
    """One single-process epoch over ``train`` in batches drawn from ``generator``
    (``after_step`` runs after every optimiser step, e.g. a weight average's update;
    ``workers``: how each batch is trained, see :func:`training_step`; default one batch at a
    time; ``unlabelled``: the consistency pool, see :mod:`s2fin_cli.training.consistency`)."""
    workers = workers or BatchWorkers(1, torch.get_num_threads())
    lr = settings.lr
    loss_sum, correct, seen, drawn, confident = 0.0, 0, 0, 0, 0
    parameters = list(model.parameters())
    for i, index in enumerate(epoch_batches(len(train), settings.batch_size, generator)):
        lr = schedule.lr(i, settings.lr)
        set_learning_rate(optimizer, lr)
        spectral, spatial, active, target = train.batch(index)
        spectral, spatial, active = augment_batch(spectral, spatial, active, settings, generator,
                                                  train=train)
        spectral, spatial, active, target = (t.to(device, non_blocking=True) for t in
                                             (spectral, spatial, active, target))
        extra = None
        if unlabelled is not None and settings.consistency > 0:
            extra = unlabelled_batch(model, unlabelled, int(target.shape[0]), settings,
                                     generator, schedule.first_step + i, schedule.total_steps,
                                     workers, device)
            drawn, confident = drawn + len(extra), confident + extra.confident
        try:
            loss, logits = training_step(model, spectral, spatial, active, target, settings,
                                         optimizer, scaler, parameters, workers,
                                         dropout_seeds(settings.seed, schedule.epoch, i), extra)
        except ConfigError as exc:
            raise ConfigError(f"{exc.message} in epoch {schedule.epoch + 1}",
                              hint=exc.hint) from None
        if after_step is not None:
            after_step()
        n = int(target.shape[0])
        loss_sum += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == target).sum())
        seen += n
    return EpochStats(lr, loss_sum, correct, seen, drawn, confident)


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
    "BatchPart",
    "EpochStats",
    "Schedule",
    "augment_batch",
    "epoch_seed",
    "evaluate_patch_set",
    "learning_rate",
    "make_optimizer",
    "optimizer_step",
    "set_learning_rate",
    "split_batch",
    "train_epoch",
    "training_step",
]
