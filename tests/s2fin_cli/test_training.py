"""The training loop: schedule, augmentation, on-the-fly patches, determinism and exact resume."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

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
from s2fin_cli.training_data import augment, epoch_batches, extract_patch_set
from tests.helpers import (
    make_training_data,
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


def test_resume_gives_the_same_weights_and_reruns_the_same_metrics(data: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    with torch_threads(1):
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
