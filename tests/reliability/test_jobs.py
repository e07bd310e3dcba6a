"""Batch-job environments and the files a job reads (issue 12): the real CLI as a subprocess.

- A SLURM array or torchrun environment never shards a prediction by itself (one scene per task
  is the common use of arrays): the map asked for is written whole, with a note.
- A model file given as a pipe (``-m <(cat model.s2fin)``) is read from the stream, and the
  map's model checksum is that of the bytes read.
- ``--seed`` outside 0..2**63-1 is an option error (9), not an internal one.
- ``train --labels A --labels B`` merges label files; a pixel with two classes is exit 5, before
  any training and with nothing written.
- A scene in another value encoding than the training data (reflectance x 10000 vs 0..1) is
  refused before any work (exit 7) by predict and evaluate -m, unless --skip-value-check.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import rasterio

from tests.helpers import scene_arrays, write_stacked
from tests.reliability.harness import (
    BANDS,
    PREDICT_FAST,
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    class_stripes,
    cli_env,
    run_cli,
    snapshot,
)


def test_slurm_array_variables_alone_give_the_whole_map(tiny: TinyData, out_dir: Path) -> None:
    out = out_dir / "scene1.tif"
    env = cli_env(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="4")
    result = run_cli(["predict", tiny.scene, "-m", tiny.model, "-o", out, "--json",
                      *PREDICT_FAST], env=env)
    assert_ok(result)
    assert "--shard auto" in result.stderr
    assert json.loads(result.stdout)["scenes"][0]["pixels"] == SIZE * SIZE
    with rasterio.open(out) as ds:
        assert (ds.read(1) > 0).all()  # every pixel of the scene classified
    assert not list(out_dir.glob("*.part-*"))


def test_shard_auto_reads_the_array_and_needs_one(tiny: TinyData, out_dir: Path) -> None:
    env = cli_env(SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="4")
    result = run_cli(["predict", tiny.scene, "-m", tiny.model, "-o", out_dir / "map.tif",
                      "--shard", "auto", "--block-size", "8", *PREDICT_FAST], env=env)
    assert_ok(result)
    assert [p.name for p in out_dir.iterdir()] == ["map.part-0001-of-0004.tif"]
    result = run_cli(["predict", tiny.scene, "-m", tiny.model, "-o", out_dir / "other.tif",
                      "--shard", "auto", *PREDICT_FAST])
    assert_user_error(result, 9, match="--shard auto")
    assert not (out_dir / "other.tif").exists()


def test_a_scene_in_another_scale_is_refused_before_any_work(tiny: TinyData, tmp_path: Path,
                                                             out_dir: Path) -> None:
    optical, aux = scene_arrays(SIZE, SIZE, BANDS, 1, seed=3)  # the tiny scene's own arrays
    optical = (optical + class_stripes()[None]) * 10_000.0
    scaled = write_stacked(tmp_path / "scaled.tif", optical, aux, tiny.grid)
    before = snapshot(out_dir)
    result = run_cli(["predict", scaled, "-m", tiny.model, "-o", out_dir / "map.tif",
                      *PREDICT_FAST])
    assert_user_error(result, 7, match="do not look like the training data")
    assert "--skip-value-check" in result.stderr
    assert_nothing_new(before, out_dir)
    result = run_cli(["evaluate", "-m", tiny.model, scaled, "--labels", tiny.test_labels,
                      "--device", "cpu"])
    assert_user_error(result, 7, match="optical values")
    result = run_cli(["predict", scaled, "-m", tiny.model, "-o", out_dir / "map.tif",
                      "--skip-value-check", *PREDICT_FAST])
    assert_ok(result)
    assert "classifying anyway" in result.stderr and (out_dir / "map.tif").exists()
    # The training scene itself passes without a word about values.
    result = run_cli(["predict", tiny.scene, "-m", tiny.model, "-o", out_dir / "same.tif",
                      *PREDICT_FAST])
    assert_ok(result)
    assert "training data" not in result.stderr


def test_a_model_from_a_pipe(tiny: TinyData, tmp_path: Path, out_dir: Path) -> None:
    fifo = tmp_path / "model.pipe"
    os.mkfifo(fifo)
    data = tiny.model.read_bytes()

    def feed() -> None:
        with open(fifo, "wb") as f:
            f.write(data)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = out_dir / "map.tif"
    result = run_cli(["predict", tiny.scene, "-m", fifo, "-o", out, *PREDICT_FAST])
    writer.join(timeout=10)
    assert_ok(result)
    with rasterio.open(out) as ds:
        assert ds.tags()["S2FIN_MODEL_SHA256"] == hashlib.sha256(data).hexdigest()


def test_merged_training_labels_and_conflicts(tiny: TinyData, tmp_path: Path,
                                             out_dir: Path) -> None:
    with rasterio.open(tiny.labels) as ds:
        labels, profile = ds.read(1), ds.profile
    rows, cols = np.nonzero(labels)
    extra = np.zeros_like(labels)
    extra[rows[0], cols[0]] = labels[rows[0], cols[0]] % 3 + 1  # another class, same pixel
    conflicting = tmp_path / "extra.tif"
    with rasterio.open(conflicting, "w", **profile) as ds:
        ds.write(extra, 1)
    before = snapshot(out_dir)
    result = run_cli(["train", tiny.scene, "--labels", tiny.labels, "--labels", conflicting,
                      "-o", out_dir / "m.s2fin", *TINY_TRAIN])
    assert_user_error(result, 5, match="two different classes")
    assert_nothing_new(before, out_dir)
    alike = tmp_path / "alike.tif"
    extra[rows[0], cols[0]] = labels[rows[0], cols[0]]
    with rasterio.open(alike, "w", **profile) as ds:
        ds.write(extra, 1)
    result = run_cli(["train", tiny.scene, "--labels", tiny.labels, "--labels", alike,
                      "-o", out_dir / "m.s2fin", *TINY_TRAIN])
    assert_ok(result)
    assert "counted once" in result.stderr


def test_seeds_out_of_range_are_option_errors(tiny: TinyData, tmp_path: Path) -> None:
    for seed in ("-1", str(2**64 + 1)):
        result = run_cli(["train", tiny.scene, "--labels", tiny.labels, "-o",
                          tmp_path / "m.s2fin", "--seed", seed, *TINY_TRAIN])
        assert_user_error(result, 9, match="--seed must be in")
        result = run_cli(["synth", tmp_path / "syn", "--size", "48", "--seed", seed])
        assert_user_error(result, 9, match="--seed must be in")
    assert not list(tmp_path.iterdir())
