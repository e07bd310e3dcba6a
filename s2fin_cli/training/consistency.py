"""Consistency training on the scene's unlabelled pixels (``s2fin train --consistency``).

A few labels say little about how a class varies across a scene; the unlabelled pixels show it.
Before the fit, a seeded pool of unlabelled pixels (:func:`s2fin_cli.training.pseudo.
unlabelled_pool`: valid centres, not labelled, no patch overlapping a validation patch) is cut
once, as the training patches are. Every optimiser step then also draws as many pool patches as
its labelled batch holds and, FixMatch-style (Sohn et al., 2020):

- a *weak* view of each (a random flip/rotation) is classified in eval mode, without
  gradient, by the *teacher*: an exponential moving average of the network's weights (decay
  ``consistency_teacher``, updated after every optimiser step; Mean Teacher, Tarvainen and
  Valpola, 2017), or with ``consistency_teacher`` 0 the network itself. The average changes
  less from step to step than the network does, so one step's mistakes are less often taught
  back as targets (measured: docs/network.md, "Consistency training on unlabelled pixels");
- where that prediction is confident (probability >= its class's threshold, below), its class
  is the target of a *strong* view of the same patch (another flip/rotation, a per-sample gain
  of ±``strong_gain`` and noise of std ``strong_noise`` on the optical inputs) in the same step;
- with ``consistency_adaptive`` (FlexMatch's class-adaptive thresholds, Zhang et al., 2021) a
  class's threshold is the confidence cut scaled by how much of the pool the network already
  gives that class with confidence (:func:`class_thresholds`), so the classes it has not
  learnt yet are not left without targets while one dominant class takes them all; without it
  every class's threshold is the confidence cut, ``consistency_threshold`` of the way from
  chance to the most a label-smoothed network predicts
  (:meth:`~s2fin_cli.training.settings.TrainSettings.confidence_cut`: 0.80 with 11 classes,
  0.89 with 2);
- the unlabelled loss, a mean over the drawn patches, is added to the labelled one with the
  weight ``consistency``, ramped up linearly over the first ``consistency_ramp`` of the steps
  (the early network's guesses are poor);
- with ``consistency_balance``, a class given to more than 1 / classes of the drawn patches
  has its patches' weights scaled down to that share (scenes where one class covers most of
  the area otherwise teach it everywhere).

Targets are plain cross-entropy (no label smoothing). Everything is drawn from the epoch's
generator after the labelled batch's augmentation, so a run is deterministic and a resumed run
replays it. Test labels are never used: the pool is drawn from the whole scene.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2fin_cli.acceleration import BatchWorkers, map_in_batch_workers
from s2fin_cli.device import autocast
from s2fin_cli.training.averaging import WeightAverage
from s2fin_cli.training.settings import TrainSettings
from s2fin_cli.training_data import PatchSet, augment, augment_choices, radiometric_draws


@dataclass
class Teacher:
    """The network that classifies the weak views: a copy of the trained network whose weights
    are the exponential moving average of its weights after every optimiser step."""

    network: nn.Module
    average: WeightAverage

    @classmethod
    def start(cls, model: nn.Module, decay: float) -> Teacher:
        """A teacher of ``model`` with its present weights."""
        network = copy.deepcopy(model).eval().requires_grad_(False)
        # the average's tensors are the copy's own weights, updated in place
        return cls(network, WeightAverage(model, decay, network.state_dict()))

    def restore(self, state: dict[str, Tensor], steps: int) -> None:
        """The checkpoint's averaged weights ``state`` after ``steps`` updates."""
        self.network.load_state_dict(state)  # copies into the average's tensors
        self.average.steps = steps

    def update(self) -> None:
        """After an optimiser step: move the average towards the network's new weights."""
        self.average.update()


@dataclass
class ConsistencyPool:
    """The unlabelled patches consistency training draws from, the teacher that classifies
    their weak views (None: the trained network itself) and, with class-adaptive thresholds,
    the network's learning status on them: ``status`` holds for every patch the class of its
    last weak prediction at or above the confidence cut (-1: none yet), or is None (one fixed
    threshold). The teacher and the status change as training runs; a checkpoint keeps both
    so a resumed run replays the same targets."""

    patches: PatchSet
    status: Tensor | None = None
    teacher: Teacher | None = None

    @classmethod
    def start(cls, patches: PatchSet, settings: TrainSettings,
              model: nn.Module) -> ConsistencyPool:
        """A pool before the first step (no patch has a confident class yet; the teacher is
        ``model`` as it is now)."""
        status = (torch.full((len(patches),), -1, dtype=torch.int64)
                  if settings.consistency_adaptive else None)
        teacher = (Teacher.start(model, settings.consistency_teacher)
                   if settings.consistency_teacher > 0 else None)
        return cls(patches, status, teacher)

    def __len__(self) -> int:
        return len(self.patches)


def class_thresholds(status: Tensor, classes: int, threshold: float) -> Tensor:
    """FlexMatch's per-class thresholds (float32, one per class) from a pool's learning
    status: ``threshold`` x beta / (2 - beta), beta = the pool patches whose last confident
    class is c over max(the most of any class, the patches with none yet). Early on, when most
    patches have none, every threshold is low (the ramped weight keeps those targets' weight
    small); later the class the network gives most often keeps ``threshold`` and each other
    class's falls with its count. All zeros before any patch has a confident class."""
    counts = torch.bincount(status + 1, minlength=classes + 1).double()
    per_class, unseen = counts[1:], float(counts[0])
    if unseen >= len(status):
        return torch.zeros(classes)
    beta = per_class / max(float(per_class.max()), unseen)
    return (threshold * beta / (2.0 - beta)).float()


def record_status(status: Tensor, index: Tensor, sure_targets: Tensor, positions: Tensor,
                  size: int, global_sum: Callable[[Tensor], Tensor] | None = None) -> None:
    """Write one step's confident classes into the pool's ``status`` (in place).

    ``index``: the global batch's ``size`` pool positions; ``sure_targets``: this rank's
    classes at or above the threshold, -1 where below, for the global batch's ``positions``.
    Every rank fills its positions and ``global_sum`` adds the ranks' parts, so all ranks
    write the same status."""
    update = torch.zeros(size, dtype=torch.float64)
    update[positions] = (sure_targets.cpu() + 1).double()
    if global_sum is not None:
        update = global_sum(update)
    sure = update > 0
    status[index[sure]] = update[sure].long() - 1


@dataclass(frozen=True)
class UnlabelledBatch:
    """The strong views of one step's unlabelled patches, their targets and loss weights."""

    spectral: Tensor
    spatial: Tensor
    active: Tensor
    targets: Tensor  # (U,) int64: the class the weak view was given (output index)
    weights: Tensor  # (U,) float32: ramped weight / global unlabelled count, 0 where unsure

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def confident(self) -> int:
        """Patches that train (a confident weak prediction)."""
        return int((self.weights > 0).sum())


def ramped_weight(settings: TrainSettings, step: int, total_steps: int) -> float:
    """The unlabelled loss's weight at optimiser ``step`` (0-based) of ``total_steps``."""
    span = settings.consistency_ramp * total_steps
    if span <= 0:
        return settings.consistency
    return settings.consistency * min(1.0, step / span)


@torch.no_grad()
def weak_predictions(model: nn.Module, views: tuple[Tensor, Tensor, Tensor],
                     workers: BatchWorkers) -> Tensor:
    """Class probabilities (float32) of the weak views, the network in eval mode without
    gradient (no dropout), split over the batch workers like a training batch; the network's
    mode is restored."""
    was_training = model.training
    model.eval()
    try:
        parts = list(zip(*(t.tensor_split(max(1, min(workers.count, int(t.shape[0]))))
                           for t in views), strict=True))

        def classify(part: tuple[Tensor, ...]) -> Tensor:
            with autocast(part[0].device):
                return model(*part).float().softmax(1)

        return torch.cat(list(map_in_batch_workers(classify, parts, workers)))
    finally:
        model.train(was_training)


def unlabelled_batch(model: nn.Module, pool: ConsistencyPool, size: int,
                     settings: TrainSettings,
                     generator: torch.Generator, step: int, total_steps: int,
                     workers: BatchWorkers, device: torch.device, *,
                     share: Tensor | None = None,
                     global_sum: Callable[[Tensor], Tensor] | None = None) -> UnlabelledBatch:
    """One step's unlabelled batch: ``size`` pool patches drawn from ``generator``, their weak
    views classified, their strong views with targets and weights (see the module docstring).

    Data parallel: every rank draws the same ``size`` patches and transforms (the global batch)
    and classifies and returns its ``share`` (positions in it); the weights are per global
    batch, as the labelled loss's are, and ``global_sum`` adds a tensor over the ranks (the
    class counts of ``consistency_balance``, the pool's learning status).
    """
    patches = pool.patches
    index = torch.randint(0, len(pool), (size,), generator=generator)
    global_index = index
    weak_choice = augment_choices(size, generator)
    strong_choice = augment_choices(size, generator)
    draws = None
    if settings.strong_gain > 0 or settings.strong_noise > 0:
        draws = radiometric_draws(size, tuple(patches.spectral.shape[1:]),
                                  tuple(patches.spatial.shape[1:]), generator,
                                  settings.strong_gain, settings.strong_noise)
    if share is not None:
        index, weak_choice, strong_choice = index[share], weak_choice[share], strong_choice[share]
        draws = None if draws is None else draws.subset(share)
    spectral, spatial, active, _ = patches.batch(index)
    weak = augment(spectral, spatial, active, generator, choice=weak_choice)
    strong_spectral, strong_spatial, strong_active = augment(spectral, spatial, active,
                                                             generator, choice=strong_choice)
    if draws is not None:
        strong_spectral, strong_spatial = draws.apply(strong_spectral, strong_spatial)
    weak_spectral, weak_spatial, weak_active = (t.to(device, non_blocking=True) for t in weak)
    if int(index.numel()) == 0:  # a data-parallel rank's empty share: nothing to classify
        classes: int = model.config.num_classes  # type: ignore[union-attr, assignment]
        probabilities = torch.zeros((0, classes), device=device)
    else:
        classifier = pool.teacher.network if pool.teacher is not None else model
        probabilities = weak_predictions(classifier,
                                         (weak_spectral, weak_spatial, weak_active), workers)
    confidence, targets = probabilities.max(1)
    weight = ramped_weight(settings, step, total_steps) / size
    threshold = settings.confidence_cut(probabilities.shape[1])
    confident = confidence >= threshold
    if pool.status is not None:
        # thresholds from the status before this step, as FlexMatch does; then the update
        cuts = class_thresholds(pool.status, probabilities.shape[1], threshold)
        record_status(pool.status, global_index, torch.where(confident, targets, -1),
                      share if share is not None else torch.arange(size), size, global_sum)
        confident = confidence >= cuts.to(confidence.device)[targets]
    weights = confident.float() * weight
    if settings.consistency_balance:
        weights = weights * balance_factors(targets, confident, probabilities.shape[1], size,
                                            global_sum)
    return UnlabelledBatch(strong_spectral.to(device, non_blocking=True),
                           strong_spatial.to(device, non_blocking=True),
                           strong_active.to(device, non_blocking=True), targets, weights)


def balance_factors(targets: Tensor, confident: Tensor, classes: int, size: int,
                    global_sum: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Per-patch weight factors that cap each class's confident patches at size / classes:
    min(1, (size / classes) / confident patches of the patch's class), counted over the global
    batch (``global_sum``: the sum over data-parallel ranks)."""
    counts = torch.bincount(targets[confident], minlength=classes).double()
    if global_sum is not None:
        counts = global_sum(counts)
    factors = (size / classes / counts.clamp_min(1.0)).clamp(max=1.0).float()
    return factors[targets]


def unlabelled_loss(logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
    """The unlabelled term: the sum of plain cross-entropies (no label smoothing: a confident
    class is the target) times the per-sample weights."""
    return (F.cross_entropy(logits.float(), targets, reduction="none") * weights).sum()


def combined_loss(logits: Tensor, targets: Tensor, weights: Tensor, labelled: int,
                  label_smoothing: float) -> tuple[Tensor, Tensor]:
    """(loss, its labelled part) of a batch whose first ``labelled`` samples are labelled and
    the rest unlabelled strong views: per-sample cross-entropies times ``weights``, label-smoothed
    for the labels, :func:`unlabelled_loss` for the rest. The labelled part, detached, is what
    the epoch reports as its training loss."""
    part = (F.cross_entropy(logits[:labelled].float(), targets[:labelled], reduction="none",
                            label_smoothing=label_smoothing) * weights[:labelled]).sum()
    rest = unlabelled_loss(logits[labelled:], targets[labelled:], weights[labelled:])
    return part + rest, part.detach()


__all__ = ["ConsistencyPool", "Teacher", "UnlabelledBatch", "balance_factors",
           "class_thresholds", "combined_loss", "ramped_weight", "record_status",
           "unlabelled_batch", "unlabelled_loss", "weak_predictions"]
