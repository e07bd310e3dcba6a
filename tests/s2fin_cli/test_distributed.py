"""Data-parallel training under torchrun: 2 CPU processes (gloo) against 1 process.

The end-to-end tests launch two real torchrun jobs on the 32x32 scene of test_training: ``s2fin
train --nproc 2 --stop-after-epoch 1`` (the launcher; a kill after epoch 1), then ``python -m
torch.distributed.run --standalone --nproc-per-node 2 -m s2fin_cli train --resume``. Dropout is
off so a 2-process run with a per-rank batch of 8 and a 1-process run with a batch of 16 make the
same steps (same global batches, same augmentation, gradients averaged over the global batch):
their weights and test-pixel logits agree to float32 rounding (measured after 3 epochs: max abs
weight difference 1.8e-6, logits 1.8e-6; asserted: 1e-4) and give the same predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from typer.testing import CliRunner

from models import S2Fin
from s2fin_cli.cli import train_cmd
from s2fin_cli.cli.app import app
from s2fin_cli.distributed import DEBUG_DIGEST_ENV, launch_env, rank_device
from s2fin_cli.errors import ConfigError
from s2fin_cli.hashing import state_digest
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.model_file import ModelBundle, load_model_file
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.sampling import Samples
from s2fin_cli.training import TrainSettings, load_checkpoint, run_training
from s2fin_cli.training_data import (
    augment,
    augment_choices,
    epoch_batches,
    extract_patch_set,
    rank_share,
)
from tests.helpers import REPO_ROOT, make_training_data, tiny_request, torch_threads

EPOCHS = 3
PER_RANK_BATCH = 8
# Float32 rounding only (gradient sums in another order): 1.8e-6 measured on this scene.
WEIGHT_ATOL = 1e-4
LOGIT_ATOL = 1e-4

TINY = ["--patch-size", "7", "--spectral-window", "3", "--pca", "3", "--dim", "8",
        "--epochs", str(EPOCHS), "--batch-size", str(PER_RANK_BATCH), "--warmup-epochs", "1",
        "--patience", "5", "--split-block", "8", "--val-fraction", "0.25", "--min-steps", "0",
        "--height-window", "5", "--device", "cpu",
        "--dropout", "0"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **extra}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "s2fin_cli", *args],
        capture_output=True, text=True, env=_env(**env), timeout=120, check=False)


def _train_args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", str(data["scene"]), "--labels", str(data["labels"]), "--test-labels",
            str(data["test"]), "-o", str(out), *TINY, *extra]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_training_data(tmp_path_factory.mktemp("distributed"))


@pytest.fixture(scope="module")
def ddp_run(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 2-process training, killed after epoch 1 and resumed: first through ``s2fin train
    --nproc 2`` (the launcher), then straight under torchrun with every rank dumping digests of
    its weights. (Two launches, not three: starting torch processes dominates on 2 cores.)"""
    out_dir = tmp_path_factory.mktemp("ddp_out")
    digests = tmp_path_factory.mktemp("ddp_digests")
    model = out_dir / "m.s2fin"
    stopped = subprocess.run(
        [sys.executable, "-m", "s2fin_cli", *_train_args(data, model, "--stop-after-epoch", "1"),
         "--nproc", "2"],
        capture_output=True, text=True, env=_env(), timeout=120, check=False)
    after_stop = sorted(p.name for p in out_dir.iterdir())
    checkpoint = load_checkpoint(out_dir / "m.s2fin.ckpt") if after_stop else {}
    resumed = _torchrun(_train_args(data, model, "--resume"),
                        **{DEBUG_DIGEST_ENV: str(digests)})
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    return {"dir": out_dir, "model": model, "digests": digests, "stopped": stopped,
            "after_stop": after_stop, "checkpoint": checkpoint, "resumed": resumed}


# -- pieces -----------------------------------------------------------------------------------


def test_launch_env_reads_torchrun_variables() -> None:
    assert launch_env({}) is None
    assert launch_env({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}) is None
    env = launch_env({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert env is not None and (env.rank, env.world_size, env.local_rank) == (3, 4, 1)
    with pytest.raises(ConfigError, match="RANK"):
        launch_env({"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="inconsistent"):
        launch_env({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"})
    assert rank_device("cpu", 3) == torch.device("cpu")
    with pytest.raises(ConfigError, match="LOCAL_RANK"):
        rank_device("cuda:1", 0)


def test_rank_shares_of_global_batches_are_the_single_process_batches() -> None:
    """Ranks take every world-th sample of the shared global batch, with the augmentation drawn
    for the whole batch: together exactly what one process does with the global batch."""
    spectral, spatial, active = torch.randn(37, 2, 3, 3), torch.randn(37, 3, 7, 7), \
        torch.randn(37, 1, 7, 7)
    world = 3
    single = torch.Generator().manual_seed(5)
    ranks = [torch.Generator().manual_seed(5) for _ in range(world)]
    rank_batches = [epoch_batches(37, 4 * world, gen) for gen in ranks]
    for b, batch in enumerate(epoch_batches(37, 4 * world, single)):
        expect = augment(spectral[batch], spatial[batch], active[batch], single)[1]
        got = torch.full_like(expect, torch.nan)
        for rank, gen in enumerate(ranks):
            assert torch.equal(rank_batches[rank][b], batch)
            choice = augment_choices(batch.numel(), gen)
            pos = rank_share(batch, rank, world)
            idx = batch[pos]
            got[pos] = augment(spectral[idx], spatial[idx], active[idx], gen,
                               choice=choice[pos])[1]
        assert torch.equal(got, expect)
    assert rank_share(torch.arange(2), 2, 3).numel() == 0  # fewer samples than ranks


def test_relaunch_drops_nproc_and_keeps_the_given_options(
        data: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, object] = {}

    def fake_launch(nproc: int, args: list[str], *, threads: int | None = None) -> int:
        seen.update(nproc=nproc, args=args)
        return 7

    monkeypatch.setattr(train_cmd, "launch_local", fake_launch)
    out = tmp_path / "m.s2fin"
    result = CliRunner().invoke(app, ["-v", *_train_args(data, out, "--no-augment", "--nproc",
                                                            "3")])
    assert result.exit_code == 7, result.output
    args = seen["args"]
    assert seen["nproc"] == 3 and isinstance(args, list)
    assert args[:2] == ["-v", "train"] and "--nproc" not in args
    assert args[args.index("--batch-size") + 1] == str(PER_RANK_BATCH)
    assert args[args.index("--dropout") + 1] == "0.0" and "--no-augment" in args
    assert str(data["scene"]) in args and "--resume" not in args
    # Option errors surface before any launch, with their own exit codes.
    bad = CliRunner().invoke(app, _train_args(data, out, "--patch-size", "8", "--nproc", "2"))
    assert bad.exit_code == ConfigError.exit_code and "odd" in bad.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    under = CliRunner().invoke(app, _train_args(data, out, "--nproc", "2"))
    assert under.exit_code == ConfigError.exit_code and "torchrun" in under.stderr


# -- end to end -------------------------------------------------------------------------------


def test_nproc_launches_torchrun_and_only_rank_0_checkpoints(ddp_run: dict[str, Any]) -> None:
    stopped = ddp_run["stopped"]
    assert "launching 2 processes" in stopped.stderr and "2 ranks" in stopped.stderr
    assert stopped.returncode != 0  # torchrun answers 1 when its ranks exit non-zero
    assert ddp_run["after_stop"] == ["m.s2fin.ckpt"]
    assert ddp_run["checkpoint"]["epoch"] == 1
    assert json.loads(ddp_run["checkpoint"]["fingerprint"])["distributed"] == {"world_size": 2}


def test_two_ranks_resume_stay_in_sync_and_only_rank_0_writes(ddp_run: dict[str, Any]) -> None:
    assert "resuming" in ddp_run["resumed"].stderr
    assert sorted(p.name for p in ddp_run["dir"].iterdir()) == ["m.s2fin",
                                                                "m.s2fin.report.json"]
    ranks = [json.loads((ddp_run["digests"] / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    bundle = load_model_file(ddp_run["model"])
    assert state_digest(bundle.state_dict) == ranks[0]["best"]
    dist = bundle.provenance["distributed"]
    assert dist == {"world_size": 2, "backend": "gloo", "per_rank_batch": PER_RANK_BATCH,
                    "effective_batch": 2 * PER_RANK_BATCH}
    assert bundle.provenance["epochs_run"] == EPOCHS


def test_two_ranks_match_one_process_with_the_same_effective_batch(
        data: dict[str, Path], ddp_run: dict[str, Any], tmp_path: Path) -> None:
    settings = TrainSettings(epochs=EPOCHS, batch_size=2 * PER_RANK_BATCH, warmup_epochs=1,
                             patience=5, seed=0, min_steps=0)
    with torch_threads(1):
        single = run_training(tiny_request(data, tmp_path / "one.s2fin", dropout=0.0,
                                           settings=settings))
    ddp = load_model_file(ddp_run["model"])
    a, b = single.bundle.state_dict, ddp.state_dict
    assert a.keys() == b.keys()
    max_diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert max_diff < WEIGHT_ATOL, max_diff
    # Same per-epoch accuracies; losses to rounding.
    for h1, h2 in zip(single.history, ddp.provenance["history"], strict=True):
        assert h1["train_accuracy"] == h2["train_accuracy"]
        assert h1["val_accuracy"] == h2["val_accuracy"]
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], abs=1e-5)
        assert h1["lr"] == h2["lr"]
    # Logits at the test pixels agree within LOGIT_ATOL and give the same classes.
    logits = [_test_logits(bundle, data) for bundle in (single.bundle, ddp)]
    assert float((logits[0] - logits[1]).abs().max()) < LOGIT_ATOL
    assert torch.equal(logits[0].argmax(1), logits[1].argmax(1))
    assert single.bundle.metrics["test"]["oa"] == ddp.metrics["test"]["oa"]


def _test_logits(bundle: ModelBundle, data: dict[str, Path]) -> torch.Tensor:
    model = S2Fin(bundle.config)
    model.load_state_dict(bundle.state_dict)
    model.eval()
    with rasterio.open(data["test"]) as ds:
        labels = ds.read(1)
    rows, cols = np.nonzero(labels)
    samples = Samples(rows.astype(np.int64), cols.astype(np.int64),
                      labels[rows, cols].astype(np.int64))
    geometry = PatchGeometry(bundle.config.patch_size, bundle.config.spectral_window)
    with open_stacked_scene(data["scene"]) as scene, torch.no_grad():
        patches = extract_patch_set(scene, samples, bundle.preprocessor, geometry,
                                    bundle.classes.ids, torch.device("cpu"))
        return model(patches.spectral, patches.spatial, patches.active)


def test_consistency_training_under_two_ranks_matches_one_process(
        data: dict[str, Path], ddp_run: dict[str, Any], tmp_path: Path) -> None:
    """Every rank draws the same global unlabelled batch and trains its share: the same steps
    as one process (float32 rounding), and not the steps of a run without it. With class
    thresholds, whose learning status every rank must update alike."""
    model = tmp_path / "ddp.s2fin"
    run = _torchrun(_train_args(data, model, "--consistency", "1",
                                "--consistency-threshold", "0.3", "--class-thresholds"))
    assert run.returncode == 0, run.stderr[-4000:]
    settings = TrainSettings(epochs=EPOCHS, batch_size=2 * PER_RANK_BATCH, warmup_epochs=1,
                             patience=5, seed=0, min_steps=0, consistency=1.0,
                             consistency_threshold=0.3, consistency_adaptive=True)
    with torch_threads(1):
        single = run_training(tiny_request(data, tmp_path / "one.s2fin", dropout=0.0,
                                           settings=settings))
    ddp = load_model_file(model).state_dict
    a = single.bundle.state_dict
    assert max(float((a[k] - ddp[k]).abs().max()) for k in a) < WEIGHT_ATOL
    # the unlabelled term did train: confident patches in every run's history, the same ones
    trained = [h["unlabelled_confident"] for h in single.history]
    assert sum(trained) > 0
    assert trained == pytest.approx([h["unlabelled_confident"] for h in
                                     load_model_file(model).provenance["history"]])
