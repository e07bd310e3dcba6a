"""Consistency training on unlabelled pixels (s2fin_cli/training/consistency.py): the ramp, the
targets and weights of an unlabelled batch, data-parallel shares, the combined loss, the split
step, and a whole run through ``run_training`` (deterministic, exact resume)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import S2Fin
from s2fin_cli.acceleration import BatchWorkers
from s2fin_cli.errors import ConfigError
from s2fin_cli.model_file import load_model_file
from s2fin_cli.training import (
    TrainingStopped,
    TrainSettings,
    checkpoint_path_for,
    loop,
    run_training,
)
from s2fin_cli.training.checkpoint import load_checkpoint
from s2fin_cli.training.consistency import (
    ConsistencyPool,
    Teacher,
    UnlabelledBatch,
    balance_factors,
    class_thresholds,
    combined_loss,
    ramped_weight,
    record_status,
    unlabelled_batch,
    unlabelled_loss,
)
from s2fin_cli.training.steps import dropout_seeds, make_optimizer, train_epoch, training_step
from s2fin_cli.training_data import PatchSet, augment, augment_choices, rank_share
from tests.helpers import make_training_data, tiny_config, tiny_request, torch_threads


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_training_data(tmp_path_factory.mktemp("consistency"))


def _patches(model: S2Fin, n: int = 24, seed: int = 0) -> PatchSet:
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    p, s = cfg.patch_size, cfg.spectral_window
    return PatchSet(torch.randn(n, cfg.bands, s, s, generator=g),
                    torch.randn(n, cfg.reduced_bands, p, p, generator=g),
                    torch.randn(n, cfg.active_bands, p, p, generator=g),
                    torch.zeros(n, dtype=torch.int64))


def _pool(model: S2Fin, n: int = 24, seed: int = 0) -> ConsistencyPool:
    """A pool with one fixed threshold (no learning status)."""
    return ConsistencyPool(_patches(model, n, seed))


def test_the_weight_ramps_up_linearly_then_holds() -> None:
    settings = TrainSettings(consistency=2.0, consistency_ramp=0.5)
    assert [ramped_weight(settings, s, 100) for s in (0, 25, 50, 99)] == [0.0, 1.0, 2.0, 2.0]
    flat = dataclasses.replace(settings, consistency_ramp=0.0)
    assert ramped_weight(flat, 0, 100) == 2.0


def test_settings_check_the_consistency_options() -> None:
    for bad in ({"consistency": -1.0}, {"consistency_threshold": 1.5},
                {"consistency_ramp": 2.0}, {"strong_gain": 1.0}, {"strong_noise": -0.1},
                {"consistency_teacher": 1.0}, {"consistency_teacher": -0.5}):
        with pytest.raises(ConfigError):
            TrainSettings(**bad).validate()  # type: ignore[arg-type]


def test_the_confidence_cut_is_a_share_of_the_way_from_chance_to_the_ceiling() -> None:
    settings = TrainSettings()  # label smoothing 0.1: the ceiling is 0.9 + 0.1 / classes
    assert settings.confidence_cut(11) == pytest.approx(0.80, abs=1e-4)
    assert settings.confidence_cut(2) == pytest.approx(0.89, abs=1e-4)
    for classes in (2, 4, 11):
        low = dataclasses.replace(settings, consistency_threshold=0.0)
        high = dataclasses.replace(settings, consistency_threshold=1.0)
        assert low.confidence_cut(classes) == pytest.approx(1 / classes)
        assert high.confidence_cut(classes) == pytest.approx(0.9 + 0.1 / classes)


def test_the_teacher_is_a_weight_average_updated_after_each_step() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config())
    start = {k: v.clone() for k, v in model.state_dict().items()}
    teacher = Teacher.start(model, 0.99)
    assert not teacher.network.training
    assert not any(p.requires_grad for p in teacher.network.parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    teacher.update()  # the first update: decay min(0.99, 2 / 11)
    d = 2 / 11
    now = model.state_dict()
    for name, value in teacher.network.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, d * start[name] + (1 - d) * now[name], atol=1e-6)
    assert teacher.average.steps == 1
    # a checkpoint's state and step count come back
    again = Teacher.start(S2Fin(tiny_config()), 0.99)
    again.restore(teacher.average.copy(), teacher.average.steps)
    assert all(torch.equal(a, b) for a, b in zip(again.network.state_dict().values(),
                                                  teacher.network.state_dict().values(),
                                                  strict=True))
    assert again.average.steps == 1
    assert ConsistencyPool.start(_patches(model), TrainSettings(consistency_teacher=0.0),
                                 model).teacher is None


def test_the_teacher_not_the_network_classifies_the_weak_views() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config()).train()
    settings = TrainSettings(consistency=1.0, consistency_threshold=0.0)
    pool = ConsistencyPool.start(_patches(model), settings, model)
    assert pool.teacher is not None
    with torch.no_grad():  # the network moves on; the teacher keeps the old weights
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))

    def targets(classifier: S2Fin) -> torch.Tensor:
        g = torch.Generator().manual_seed(3)
        index = torch.randint(0, len(pool), (16,), generator=g)
        weak = augment(*pool.patches.batch(index)[:3], torch.Generator(),
                       choice=augment_choices(16, g))
        classifier.eval()
        with torch.no_grad():
            return classifier(*weak).argmax(1)

    with torch_threads(1):
        batch = unlabelled_batch(model, pool, 16, settings, torch.Generator().manual_seed(3),
                                 5, 10, BatchWorkers(1, 1), torch.device("cpu"))
        by_teacher = targets(pool.teacher.network)  # type: ignore[arg-type]
        by_network = targets(model)
    model.train()
    assert torch.equal(batch.targets, by_teacher)
    assert not torch.equal(by_teacher, by_network)


def test_targets_are_the_eval_classes_of_the_weak_views() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config(dropout=0.5)).train()
    pool = _pool(model)
    settings = TrainSettings(consistency=1.0, consistency_threshold=0.0, consistency_ramp=0.5)
    with torch_threads(1):
        batch = unlabelled_batch(model, pool, 10, settings, torch.Generator().manual_seed(7),
                                 step=30, total_steps=100, workers=BatchWorkers(1, 1),
                                 device=torch.device("cpu"))
    assert model.training  # the network's mode is restored
    # Replay the draws: patches, weak and strong transforms (radiometric draws follow).
    g = torch.Generator().manual_seed(7)
    index = torch.randint(0, len(pool), (10,), generator=g)
    weak_choice, strong_choice = augment_choices(10, g), augment_choices(10, g)
    views = pool.patches.batch(index)[:3]
    weak = augment(*views, torch.Generator(), choice=weak_choice)
    model.eval()
    with torch.no_grad():
        expected = model(*weak).argmax(1)
    assert torch.equal(batch.targets, expected)
    # threshold 0: every patch trains, with the ramped weight (0.6 at step 30) per patch
    assert torch.allclose(batch.weights, torch.full((10,), 0.6 / 10))
    assert batch.confident == 10 and len(batch) == 10
    # the strong view: another transform and radiometric changes of the optical inputs only
    strong = augment(*views, torch.Generator(), choice=strong_choice)
    assert torch.equal(batch.active, strong[2])
    assert not torch.allclose(batch.spatial, strong[1])


def test_unsure_predictions_do_not_train() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config())
    settings = TrainSettings(consistency=1.0, consistency_threshold=1.0, consistency_ramp=0.0)
    batch = unlabelled_batch(model, _pool(model), 8, settings, torch.Generator().manual_seed(1),
                             0, 10, BatchWorkers(1, 1), torch.device("cpu"))
    assert batch.confident == 0 and float(batch.weights.sum()) == 0.0


def test_class_thresholds_follow_the_learning_status() -> None:
    # 4 patches last confidently class 0, 2 class 1, none class 2, 2 none yet
    status = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1])
    cuts = class_thresholds(status, 3, 0.8)
    # beta = counts / max(4, 2) = 1, 0.5, 0; threshold x beta / (2 - beta)
    assert torch.allclose(cuts, torch.tensor([0.8, 0.8 * 0.5 / 1.5, 0.0]))
    # most patches without a confident class yet: every threshold is low (warm-up)
    early = class_thresholds(torch.tensor([0, 0, -1, -1, -1, -1]), 3, 0.8)
    assert torch.allclose(early, torch.tensor([0.8 * (1 / 2) / (3 / 2), 0.0, 0.0]))
    assert torch.equal(class_thresholds(torch.full((5,), -1), 3, 0.8), torch.zeros(3))


def test_the_status_keeps_each_patchs_last_confident_class_over_ranks() -> None:
    index = torch.tensor([3, 0, 5, 1])  # a global batch of 4 pool positions
    sure = torch.tensor([2, -1, 1, 0])  # the classes at or above the threshold; -1: below
    status = torch.tensor([1, -1, -1, -1, -1, -1])
    record_status(status, index, sure, torch.arange(4), 4)
    # position 0 was unsure this time: its earlier class stays
    assert status.tolist() == [1, 0, -1, 2, -1, 1]
    # two ranks, each with its share of the batch: the summed parts give both the same status
    shares = [rank_share(torch.arange(4), rank, 2) for rank in range(2)]
    parts: list[torch.Tensor] = []
    for share in shares:
        record_status(torch.full((6,), -1), index, sure[share], share, 4,
                      global_sum=lambda t: parts.append(t) or t)
    assert all(int((part != 0).sum()) <= len(share) for part, share in zip(parts, shares,
                                                                            strict=True))
    for share in shares:
        ranked = torch.tensor([1, -1, -1, -1, -1, -1])
        record_status(ranked, index, sure[share], share, 4, global_sum=lambda t: sum(parts))
        assert torch.equal(ranked, status)


def test_adaptive_thresholds_let_the_less_given_classes_train() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config())
    settings = TrainSettings(consistency=1.0, consistency_threshold=0.99, consistency_ramp=0.0,
                             consistency_adaptive=True)

    def draw(pool: ConsistencyPool) -> UnlabelledBatch:
        with torch_threads(1):
            return unlabelled_batch(model, pool, 12, settings, torch.Generator().manual_seed(4),
                                    0, 10, BatchWorkers(1, 1), torch.device("cpu"))

    fixed = draw(_pool(model))
    assert fixed.confident == 0  # an untrained network is never that sure (a cut of ~0.9)
    fresh = ConsistencyPool.start(_patches(model), settings, model)
    assert fresh.status is not None and torch.equal(fresh.status, torch.full((24,), -1))
    # no learning status yet: every threshold 0, every patch trains (FlexMatch's warm-up)
    assert draw(fresh).confident == 12
    assert torch.equal(fresh.status, torch.full((24,), -1))  # nothing reached the cut
    # the whole pool last given one class: that class keeps the cut, the others' are 0
    given = int(torch.mode(fixed.targets).values)
    learnt = ConsistencyPool(_patches(model), torch.full((24,), given))
    batch = draw(learnt)
    assert torch.equal(batch.weights > 0, batch.targets != given)
    assert ConsistencyPool.start(_patches(model), TrainSettings(), model).status is None


def test_data_parallel_shares_make_up_the_global_batch() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config(dropout=0.0))
    pool = _pool(model)
    settings = TrainSettings(consistency=1.0, consistency_threshold=0.05, consistency_ramp=0.0)

    def draw(share: torch.Tensor | None) -> UnlabelledBatch:
        with torch_threads(1):
            return unlabelled_batch(model, pool, 9, settings, torch.Generator().manual_seed(3),
                                    5, 10, BatchWorkers(1, 1), torch.device("cpu"), share=share)

    whole = draw(None)
    shares = [rank_share(torch.arange(9), rank, 2) for rank in range(2)]
    parts = [draw(share) for share in shares]
    for field in ("spectral", "spatial", "active", "targets", "weights"):
        merged = torch.empty_like(getattr(whole, field))
        for share, part in zip(shares, parts, strict=True):
            merged[share] = getattr(part, field)
        assert torch.allclose(merged.float(), getattr(whole, field).float(), atol=1e-6), field


def test_the_combined_loss_adds_the_weighted_unlabelled_term() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 4, generator=g)
    targets = torch.randint(0, 4, (7,), generator=g)
    weights = torch.tensor([1 / 3] * 3 + [0.25, 0.0, 0.25, 0.25])
    loss, labelled = combined_loss(logits, targets, weights, 3, 0.1)
    expected_labelled = F.cross_entropy(logits[:3], targets[:3], label_smoothing=0.1)
    expected_rest = (F.cross_entropy(logits[3:], targets[3:], reduction="none")
                     * weights[3:]).sum()
    assert float(labelled) == pytest.approx(float(expected_labelled), rel=1e-6)
    assert float(loss) == pytest.approx(float(expected_labelled + expected_rest), rel=1e-6)
    assert float(unlabelled_loss(logits[3:], targets[3:], weights[3:])) == pytest.approx(
        float(expected_rest), rel=1e-6)


def _step_with_unlabelled(workers: BatchWorkers) -> tuple[float, torch.Tensor,
                                                          list[torch.Tensor]]:
    torch.manual_seed(0)
    model = S2Fin(tiny_config(dropout=0.0)).train()
    pool = _pool(model, seed=1)
    g = torch.Generator().manual_seed(2)
    spectral, spatial, active, _ = _patches(model, n=6, seed=2).batch(torch.arange(6))
    target = torch.randint(0, model.config.num_classes, (6,), generator=g)
    settings = TrainSettings(consistency=1.0, consistency_threshold=0.0, consistency_ramp=0.0)
    extra = unlabelled_batch(model, pool, 6, settings, g, 0, 10, workers, torch.device("cpu"))
    parameters = list(model.parameters())
    optimizer = make_optimizer(parameters, settings, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    loss, logits = training_step(model, spectral, spatial, active, target, settings, optimizer,
                                 scaler, parameters, workers, dropout_seeds(0, 0, 0), extra)
    assert logits.shape == (6, model.config.num_classes)  # the labelled samples' logits
    return float(loss), logits, [t.detach().clone() for t in parameters]


def test_a_split_step_with_unlabelled_views_takes_the_whole_batch_step() -> None:
    with torch_threads(1):
        whole = _step_with_unlabelled(BatchWorkers(1, 1))
        split = _step_with_unlabelled(BatchWorkers(3, 1))
    assert split[0] == pytest.approx(whole[0], abs=1e-6)
    assert torch.allclose(split[1], whole[1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(split[2], whole[2], strict=True))


def test_a_run_with_consistency_is_deterministic_and_resumes_exactly(
        data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the pool's learning status and teacher at the start of every epoch, as the loop hands
    # them over
    statuses: list[torch.Tensor] = []
    teachers: list[dict[str, torch.Tensor]] = []

    def recording_epoch(*args: object, **kwargs: object) -> object:
        pool = args[-1]
        if isinstance(pool, ConsistencyPool) and pool.status is not None:
            statuses.append(pool.status.clone())
        if isinstance(pool, ConsistencyPool) and pool.teacher is not None:
            teachers.append(pool.teacher.average.copy())
        return train_epoch(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "train_epoch", recording_epoch)
    settings = TrainSettings(epochs=3, batch_size=16, warmup_epochs=1, seed=2, min_steps=0,
                             consistency=1.0, consistency_threshold=0.05,
                             consistency_adaptive=True)
    extra = {"settings": settings, "val_fraction": None, "per_class": 8}
    out = tmp_path / "resumed.s2fin"
    with torch_threads(1):
        full = run_training(tiny_request(data, tmp_path / "full.s2fin", **extra))
        full_statuses, statuses[:] = list(statuses), []
        full_teachers, teachers[:] = list(teachers), []
        plain = run_training(tiny_request(
            data, tmp_path / "plain.s2fin", **{**extra, "settings": dataclasses.replace(
                settings, consistency=0.0)}))
        with pytest.raises(TrainingStopped):
            run_training(tiny_request(data, out, stop_after=2, **extra))
        assert checkpoint_path_for(out).exists()
        statuses.clear()
        teachers.clear()
        resumed = run_training(tiny_request(data, out, resume=True, **extra))
    # the resumed third epoch starts from the status the full run had there (the checkpoint's)
    assert len(full_statuses) == 3 and len(statuses) == 1
    assert int((full_statuses[2] >= 0).sum()) > 0
    assert torch.equal(statuses[0], full_statuses[2])
    # and from the full run's teacher there, not a copy of the resumed network
    assert len(full_teachers) == 3 and len(teachers) == 1
    assert all(torch.equal(teachers[0][k], full_teachers[2][k]) for k in full_teachers[2])
    a, b = load_model_file(full.output).state_dict, load_model_file(resumed.output).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.bundle.metrics == resumed.bundle.metrics
    c = load_model_file(plain.output).state_dict
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the unlabelled term did train
    recorded = full.bundle.provenance["settings"]
    assert recorded["consistency"] == 1.0 and recorded["consistency_threshold"] == 0.05
    assert np.isfinite([h["train_loss"] for h in full.history]).all()
    assert sum(h["unlabelled_confident"] for h in full.history) > 0
    assert "unlabelled_confident" not in plain.history[0]
    assert recorded["consistency_adaptive"] is True


def test_the_checkpoint_keeps_the_pools_learning_status_and_teacher(data: dict[str, Path],
                                                        tmp_path: Path) -> None:
    settings = TrainSettings(epochs=3, batch_size=16, warmup_epochs=1, seed=2, min_steps=0,
                             consistency=1.0, consistency_threshold=0.05,
                             consistency_adaptive=True)
    out = tmp_path / "stopped.s2fin"
    with torch_threads(1), pytest.raises(TrainingStopped):
        run_training(tiny_request(data, out, stop_after=1, settings=settings,
                                  val_fraction=None, per_class=8))
    saved = load_checkpoint(checkpoint_path_for(out))
    status = saved["consistency_status"]
    assert status.dtype == torch.int64 and int((status >= 0).sum()) > 0
    # the teacher's averaged weights after the epoch's steps, not the network's
    assert saved["teacher_steps"] > 0
    assert set(saved["teacher"]) == set(saved["model"])
    assert not all(torch.equal(saved["teacher"][k], saved["model"][k]) for k in saved["model"])


def test_balance_caps_each_class_at_its_share_of_the_batch() -> None:
    targets = torch.tensor([0, 0, 0, 0, 0, 0, 1, 2])
    confident = torch.tensor([True] * 6 + [True, False])
    factors = balance_factors(targets, confident, 4, 8)
    # 6 confident patches of class 0 against a share of 8 / 4 = 2: each counts 1/3
    assert torch.allclose(factors, torch.tensor([1 / 3] * 6 + [1.0, 1.0]))
    doubled = balance_factors(targets, confident, 4, 8, global_sum=lambda t: 2 * t)
    assert torch.allclose(doubled[:6], torch.full((6,), 1 / 6))


def test_an_empty_data_parallel_share_classifies_nothing_but_joins_the_counts() -> None:
    torch.manual_seed(0)
    model = S2Fin(tiny_config())
    settings = TrainSettings(consistency=1.0, consistency_balance=True,
                             consistency_adaptive=True)
    summed: list[torch.Tensor] = []

    def global_sum(t: torch.Tensor) -> torch.Tensor:
        summed.append(t)
        return t

    pool = ConsistencyPool.start(_patches(model), settings, model)
    batch = unlabelled_batch(model, pool, 2, settings, torch.Generator().manual_seed(0),
                             1, 2, BatchWorkers(1, 1), torch.device("cpu"),
                             share=rank_share(torch.arange(2), 2, 4), global_sum=global_sum)
    assert len(batch) == 0 and batch.weights.shape == (0,)
    # the pool's learning status (the global batch's 2 positions), then the class counts
    assert [t.shape for t in summed] == [(2,), (model.config.num_classes,)]
