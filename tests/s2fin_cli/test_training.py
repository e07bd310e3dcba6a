"""The training loop: schedule, augmentation, on-the-fly patches, determinism and exact resume."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from models import S2Fin
from s2fin_cli.acceleration import BatchWorkers
from s2fin_cli.errors import ConfigError, ModelFileError
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.model_file import load_model_file
from s2fin_cli.patches import PatchGeometry, gather_patches
from s2fin_cli.preprocessing import fit_preprocessor
from s2fin_cli.sampling import Samples
from s2fin_cli.training import (
    TrainingStopped,
    TrainSettings,
    checkpoint_path_for,
    learning_rate,
    load_checkpoint,
    parse_ablate,
    run_training,
)
from s2fin_cli.training.steps import dropout_seeds, make_optimizer, split_batch, training_step
from s2fin_cli.training_data import augment, epoch_batches, extract_patch_set
from tests.helpers import (
    make_training_data,
    tiny_config,
    tiny_request,
    torch_threads,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_training_data(tmp_path_factory.mktemp("training"))


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    lrs = [learning_rate(s, 100, 10, 1e-3) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a <= b for a, b in itertools.pairwise(lrs[:10]))
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert lrs[-1] < 1e-6 and learning_rate(100, 100, 10, 1e-3) == 0.0
    assert learning_rate(55, 100, 10, 1e-3) == pytest.approx(1e-3 * 0.5 * (1 + math.cos(
        math.pi * 0.5)))


def test_augmentation_is_the_same_for_all_three_inputs_and_seeded() -> None:
    p, s = 7, 3
    base = torch.randn(64, 2, p, p)
    spectral = base[:, :, 2:5, 2:5].clone()  # centre crop: must stay the centre crop
    generator = torch.Generator().manual_seed(3)
    a_spec, a_spat, a_act = augment(spectral, base, base * 2, generator)
    assert torch.equal(a_act, a_spat * 2)
    assert torch.equal(a_spec, a_spat[:, :, 2:5, 2:5])
    # Each output is one of the 8 dihedral transforms of its input; all 8 occur.
    seen = set()
    for i in range(64):
        for t in range(8):
            x = torch.flip(base[i], dims=(-1,)) if t >= 4 else base[i]
            if torch.equal(torch.rot90(x, t % 4, dims=(-2, -1)), a_spat[i]):
                seen.add(t)
                break
        else:
            raise AssertionError(f"sample {i} is not a flip/rotation of its input")
    assert seen == set(range(8))
    again = augment(spectral, base, base * 2, torch.Generator().manual_seed(3))[1]
    assert torch.equal(again, a_spat) and s == 3


def test_epoch_batches_cover_every_sample_without_singletons() -> None:
    g = torch.Generator().manual_seed(0)
    for n in (1, 5, 16, 17, 33):
        batches = epoch_batches(n, 16, g)
        assert sorted(torch.cat(batches).tolist()) == list(range(n))
        assert n == 1 or min(b.numel() for b in batches) >= 2


def test_patches_cut_per_block_equal_patches_of_the_whole_scene(data: dict[str, Path]) -> None:
    geometry = PatchGeometry(7, 3)
    samples = Samples(np.array([0, 5, 31, 17, 8]), np.array([0, 30, 31, 9, 16]),
                      np.array([1, 2, 3, 1, 2]))
    with open_stacked_scene(data["scene"]) as scene:
        pre = fit_preprocessor(scene, 3, seed=0)
        small = extract_patch_set(scene, samples, pre, geometry, [1, 2, 3],
                                  torch.device("cpu"), block_size=8)
        whole = scene.read(scene.grid.full_window(), halo=3)
    z_opt, reduced, z_aux = pre.device_tensors(torch.device("cpu"))(
        torch.from_numpy(whole.optical), torch.from_numpy(whole.aux))
    rows, cols = torch.from_numpy(samples.rows + 3), torch.from_numpy(samples.cols + 3)
    torch.testing.assert_close(small.spatial, gather_patches(reduced, rows, cols, 7))
    torch.testing.assert_close(small.spectral, gather_patches(z_opt, rows, cols, 3))
    torch.testing.assert_close(small.active, gather_patches(z_aux, rows, cols, 7))
    assert small.targets.tolist() == [0, 1, 2, 0, 1]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_model_file(path).state_dict


# Two threads: each batch is split over two batch workers (dropout seeded per part).
@pytest.mark.parametrize("threads", [1, 2])
def test_resume_gives_the_same_weights_and_reruns_the_same_metrics(data: dict[str, Path],
                                                                   tmp_path: Path,
                                                                   threads: int) -> None:
    with torch_threads(threads):
        full = run_training(tiny_request(data, tmp_path / "full.s2fin"))
        again = run_training(tiny_request(data, tmp_path / "again.s2fin"))
        out = tmp_path / "resumed.s2fin"
        with pytest.raises(TrainingStopped):
            run_training(tiny_request(data, out, stop_after=1))
        ckpt = checkpoint_path_for(out)
        assert ckpt.exists() and not out.exists()
        state = torch.load(ckpt, weights_only=True)  # tensors and primitives only
        assert state["epoch"] == 1 and len(state["history"]) == 1
        resumed = run_training(tiny_request(data, out, resume=True))
    assert not ckpt.exists()  # removed after success
    a, b = _weights(full.output), _weights(resumed.output)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    def losses(history: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert losses(full.history) == losses(resumed.history) == losses(again.history)
    assert full.bundle.metrics == again.bundle.metrics == resumed.bundle.metrics
    assert full.test is not None and full.validation is not None
    prov = full.bundle.provenance
    assert prov["seed"] == 0 and prov["epochs_run"] == 3
    assert set(prov["inputs"]) == {"scene", "labels", "test_labels"}
    assert len(prov["inputs"]["scene"]["sha256"]) == 64
    assert {"s2fin", "torch", "rasterio", "numpy"} <= set(prov["versions"])
    assert full.report_path is not None and full.report_path.exists()
    assert "oa" in full.bundle.metrics["test"] and "per_class" in full.bundle.metrics["test"]


def test_resume_refuses_a_checkpoint_of_other_settings(data: dict[str, Path],
                                                       tmp_path: Path) -> None:
    out = tmp_path / "m.s2fin"
    with torch_threads(1), pytest.raises(TrainingStopped):
        run_training(tiny_request(data, out, stop_after=1, settings=TrainSettings(
            epochs=2, batch_size=16, warmup_epochs=0, seed=0, min_steps=0)))
    with pytest.raises(ConfigError, match="settings"):
        run_training(tiny_request(data, out, resume=True, settings=TrainSettings(
            epochs=2, batch_size=16, warmup_epochs=0, seed=1, min_steps=0)))
    checkpoint_path_for(out).write_bytes(b"not a checkpoint")
    with pytest.raises(ModelFileError):
        load_checkpoint(checkpoint_path_for(out))


def test_ablate_names_are_checked() -> None:
    assert parse_ablate("hfset, long-range") == ("hfset", "long_range")
    with pytest.raises(ConfigError, match="unknown"):
        parse_ablate("hfset,attention")


def test_test_classes_are_matched_to_training_classes_by_name() -> None:
    from s2fin_cli.classes import ClassTable
    from s2fin_cli.reference import label_lookup

    train = ClassTable.from_ids([1, 2, 3], {1: "grass", 2: "road", 3: "water"})
    test = ClassTable.from_ids([1, 2], {1: "road", 2: "water"})
    samples = Samples(np.array([0, 1, 2]), np.array([0, 0, 0]), np.array([1, 2, 1]))
    assert label_lookup(train, test, by_name=True)[samples.classes].tolist() == [2, 3, 2]
    unnamed = ClassTable.from_ids([1, 2])
    assert label_lookup(ClassTable.from_ids([1, 2, 3]), unnamed,
                        by_name=False)[samples.classes].tolist() == [1, 2, 1]


def _one_step(workers: BatchWorkers, dropout: float, parts_seed: int = 0
              ) -> tuple[float, torch.Tensor, list[torch.Tensor]]:
    """One training step of a fresh seeded tiny network on a fixed batch of 7 samples."""
    torch.manual_seed(0)
    model = S2Fin(tiny_config(dropout=dropout)).train()
    cfg = model.config
    g = torch.Generator().manual_seed(1)
    p, s = cfg.patch_size, cfg.spectral_window
    spectral = torch.randn(7, cfg.bands, s, s, generator=g)
    spatial = torch.randn(7, cfg.reduced_bands, p, p, generator=g)
    active = torch.randn(7, cfg.active_bands, p, p, generator=g)
    target = torch.randint(0, cfg.num_classes, (7,), generator=g)
    settings = TrainSettings()
    parameters = list(model.parameters())
    optimizer = make_optimizer(parameters, settings, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    torch.manual_seed(123)  # the loop seeds the global generator per epoch
    loss, logits = training_step(model, spectral, spatial, active, target, settings, optimizer,
                                 scaler, parameters, workers,
                                 dropout_seeds(settings.seed + parts_seed, 0, 0))
    return float(loss), logits, [t.detach().clone() for t in parameters]


def test_a_batch_split_over_workers_takes_the_whole_batch_step() -> None:
    with torch_threads(1):
        whole = _one_step(BatchWorkers(1, 1), dropout=0.0)
        split = _one_step(BatchWorkers(3, 1), dropout=0.0)
    assert split[0] == pytest.approx(whole[0], abs=1e-6)
    assert torch.allclose(split[1], whole[1], atol=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(split[2], whole[2], strict=True))
    moved = sum(float((a - b).abs().sum()) for a, b in zip(whole[2], _fresh_parameters(),
                                                           strict=True))
    assert moved > 0  # the step did change the weights


def _fresh_parameters() -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [t.detach() for t in S2Fin(tiny_config(dropout=0.0)).parameters()]


def test_training_uses_fused_adamw_on_the_cpu() -> None:
    parameters = list(torch.nn.Linear(3, 2).parameters())
    optimizer = make_optimizer(parameters, TrainSettings(), torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["fused"] is True
    assert optimizer.defaults["lr"] == TrainSettings().lr
    assert optimizer.defaults["weight_decay"] == TrainSettings().weight_decay


def test_a_split_step_lays_each_gradient_out_like_its_parameter() -> None:
    # autograd.grad gives convolution weights channels-last gradients; a fused optimiser given
    # one of a contiguous weight mixes up its elements' updates.
    torch.manual_seed(0)
    model = S2Fin(tiny_config(dropout=0.0)).train()
    cfg = model.config
    p, s = cfg.patch_size, cfg.spectral_window
    settings = TrainSettings()
    parameters = list(model.parameters())
    optimizer = make_optimizer(parameters, settings, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    with torch_threads(1):
        training_step(model, torch.randn(6, cfg.bands, s, s),
                      torch.randn(6, cfg.reduced_bands, p, p),
                      torch.randn(6, cfg.active_bands, p, p),
                      torch.randint(0, cfg.num_classes, (6,)), settings, optimizer, scaler,
                      parameters, BatchWorkers(2, 1), dropout_seeds(0, 0, 0))
    with_grad = [t for t in parameters if t.grad is not None]
    assert any(t.dim() == 4 for t in with_grad)  # convolution weights are among them
    assert all(t.grad.stride() == t.stride() for t in with_grad)


def test_a_split_step_with_dropout_is_deterministic_and_seeded_per_part() -> None:
    with torch_threads(1):
        a = _one_step(BatchWorkers(2, 1), dropout=0.3)
        b = _one_step(BatchWorkers(2, 1), dropout=0.3)
        c = _one_step(BatchWorkers(2, 1), dropout=0.3, parts_seed=1)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert all(torch.equal(x, y) for x, y in zip(a[2], b[2], strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a[2], c[2], strict=True))


def test_split_batch_parts_are_contiguous_and_near_equal() -> None:
    x = torch.arange(5)
    parts = split_batch(x, x, x, x, 2, lambda k: 10 + k)
    assert [p.target.tolist() for p in parts] == [[0, 1, 2], [3, 4]]
    assert [p.dropout_seed for p in parts] == [10, 11]
    assert len(split_batch(x[:1], x[:1], x[:1], x[:1], 4, lambda k: k)) == 1
    seeds = dropout_seeds(0, 1, 2)
    assert seeds(0) != seeds(1) and seeds(0) == dropout_seeds(0, 1, 2)(0)
