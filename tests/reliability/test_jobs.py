"""Batch-job environments and the files a job reads (issue 12): the real CLI as a subprocess.

- A SLURM array or torchrun environment never shards a prediction by itself (one scene per task
  is the common use of arrays): the map asked for is written whole, with a note.
"""

from __future__ import annotations

import json
from pathlib import Path

import rasterio

from tests.reliability.harness import (
    PREDICT_FAST,
    SIZE,
    TinyData,
    assert_ok,
    assert_user_error,
    cli_env,
    run_cli,
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
