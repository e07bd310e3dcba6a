"""The data-parallel parts of the training loop (under torchrun; docs/distributed.md).

Every rank draws the same global batches (``batch_size x world_size``) and augmentation
transforms from the epoch's generator and trains on every ``world_size``-th sample of each. The
summed loss is weighted by ``world_size / global batch`` so that DDP's gradient average is the
gradient of the global batch's mean loss, whatever the shares' sizes: a step equals a
single-process step on the global batch. Metrics are all-reduced, so every rank takes the same
early-stopping decision.
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2fin_cli.acceleration import BatchWorkers
from s2fin_cli.device import autocast
from s2fin_cli.distributed import DEBUG_DIGEST_ENV, DistContext
from s2fin_cli.errors import ConfigError
from s2fin_cli.hashing import state_digest
from s2fin_cli.training.consistency import ConsistencyPool, unlabelled_batch, unlabelled_loss
from s2fin_cli.training.settings import TrainSettings
from s2fin_cli.training.steps import (
    EpochStats,
    Schedule,
    augment_batch,
    evaluate_patch_set,
    optimizer_step,
    set_learning_rate,
)
from s2fin_cli.training_data import (
    PatchSet,
    augment_choices,
    epoch_batches,
    rank_share,
)


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel, without a buffer broadcast before every forward
    (S2Fin's only buffer is a constant; DDP still syncs it once at construction)."""
    names = inspect.signature(nn.parallel.DistributedDataParallel).parameters
    no_sync: dict[str, Any] = ({"forward_sync_buffers": False} if "forward_sync_buffers" in names
                               else {"broadcast_buffers": False})  # the older name (< 2.13)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, **no_sync)


def distributed_epoch(
    net: nn.Module, train: PatchSet, settings: TrainSettings, device: torch.device,
    generator: torch.Generator, optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler, schedule: Schedule, dist: DistContext,
    after_step: Callable[[], None] | None = None,
    unlabelled: ConsistencyPool | None = None,
) -> EpochStats:
    """One epoch on this rank's share; the returned sums are over all ranks.

    A rank whose share is empty (a last batch smaller than the world) still runs a forward and
    backward, on one sample with weight 0, because every rank must join every gradient
    all-reduce. With ``unlabelled`` (consistency training) every rank draws the same global
    unlabelled batch, as large as the labelled one, and trains its share of it.
    """
    world, rank = dist.world_size, dist.rank
    lr = settings.lr
    totals = np.zeros(5)  # loss sum, correct, seen, unlabelled drawn, confident
    parameters = list(net.parameters())
    for i, batch in enumerate(epoch_batches(len(train), settings.batch_size * world,
                                            generator)):
        lr = schedule.lr(i, settings.lr)
        set_learning_rate(optimizer, lr)
        g = int(batch.numel())
        choice = augment_choices(g, generator) if settings.augment else None
        share = rank_share(batch, rank, world)
        weight = world / g
        if share.numel() == 0:
            share, weight = torch.arange(1), 0.0
        spectral, spatial, active, target = train.batch(batch[share])
        spectral, spatial, active = augment_batch(spectral, spatial, active, settings, generator,
                                                  choice=choice, share=share, global_size=g,
                                                  train=train)
        spectral, spatial, active, target = (t.to(device, non_blocking=True) for t in
                                             (spectral, spatial, active, target))
        extra = None
        if unlabelled is not None and settings.consistency > 0:
            module = net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net
            extra = unlabelled_batch(module, unlabelled, g, settings, generator,
                                     schedule.first_step + i, schedule.total_steps,
                                     BatchWorkers(1, torch.get_num_threads()), device,
                                     share=rank_share(torch.arange(g), rank, world),
                                     global_sum=lambda t: torch.from_numpy(
                                         dist.all_reduce_sum(t.cpu().numpy())).to(t))
            if len(extra) == 0:
                extra = None
        n = int(target.shape[0])
        if extra is not None:
            spectral, spatial, active = (torch.cat([x, u]) for x, u in (
                (spectral, extra.spectral), (spatial, extra.spatial), (active, extra.active)))
        with autocast(device):
            logits = net(spectral, spatial, active)
        loss_sum = F.cross_entropy(logits[:n].float(), target, reduction="sum",
                                   label_smoothing=settings.label_smoothing)
        loss = loss_sum * weight
        if extra is not None:
            # the weights are per global unlabelled batch; DDP averages over the ranks
            loss = loss + world * unlabelled_loss(logits[n:], extra.targets, extra.weights)
        logits = logits[:n]
        if dist.any(not bool(torch.isfinite(loss))):  # every rank stops together
            raise ConfigError(f"the training loss became non-finite in epoch "
                              f"{schedule.epoch + 1}", hint="lower --lr")
        optimizer_step(optimizer, scaler, loss, parameters, settings.grad_clip)
        if after_step is not None:
            after_step()
        if weight:
            totals[:3] += (float(loss_sum.detach()),
                           int((logits.detach().argmax(1) == target).sum()), n)
        if extra is not None:
            totals[3:] += (len(extra), extra.confident)
    loss_total, correct, seen, drawn, confident = dist.all_reduce_sum(totals)
    return EpochStats(lr, float(loss_total), round(float(correct)), round(float(seen)),
                      round(float(drawn)), round(float(confident)))


def distributed_validation(model: nn.Module, train: PatchSet, val: PatchSet,
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


def check_ranks_in_sync(dist: DistContext, final: dict[str, Tensor],
                        best: dict[str, Tensor]) -> None:
    """Every rank must end with the same weights (DDP keeps them so; a divergence is a bug)."""
    digests = {"final": state_digest(final), "best": state_digest(best)}
    folder = os.environ.get(DEBUG_DIGEST_ENV)
    if folder:
        Path(folder, f"rank{dist.rank}.json").write_text(json.dumps(digests))
    dist.check_same(digests["final"] + digests["best"], "the trained weights")


__all__ = ["check_ranks_in_sync", "distributed_epoch", "distributed_validation", "wrap_ddp"]
