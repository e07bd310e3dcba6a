"""``s2fin train`` through Typer's runner and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from s2fin_cli.cli.app import app
from s2fin_cli.errors import (
    EXIT_INTERRUPTED,
    AlignmentError,
    ConfigError,
    LabelError,
    OutputError,
)
from s2fin_cli.io.writer import write_raster
from s2fin_cli.model_file import load_model_file
from tests.helpers import REPO_ROOT, make_training_data, torch_threads, utm_grid, write_pair

runner = CliRunner()

TINY = ["--patch-size", "7", "--spectral-window", "3", "--pca", "3", "--dim", "8",
        "--epochs", "2", "--batch-size", "16", "--warmup-epochs", "0", "--split-block", "8",
        "--val-fraction", "0.25", "--min-steps", "0", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_training_data(tmp_path_factory.mktemp("train_cmd"))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield


def _args(data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train", str(data["scene"]), "--labels", str(data["labels"]), "--test-labels",
            str(data["test"]), "-o", str(out), *TINY, *extra]


def test_train_writes_model_report_and_json(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.s2fin"
    result = runner.invoke(app, _args(data, out, "--json", "--per-class", "30", "--dropout",
                                      "0.2"))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [line["done"] for line in lines if line.get("event") == "training"] == [1, 2]
    done = lines[-1]
    assert done["event"] == "done" and done["output"] == str(out)
    assert {row["train"] + row["val"] + row["dropped_overlap"] for row in done["samples"]} == {30}
    bundle = load_model_file(out)
    assert bundle.classes.ids == [1, 2, 3] and bundle.config.num_classes == 3
    assert bundle.config.dropout == 0.2 and "distributed" not in bundle.provenance
    assert bundle.provenance["protocol"]["kind"] == "per-class"
    assert set(bundle.metrics) == {"validation", "test"}
    report = json.loads((tmp_path / "m.s2fin.report.json").read_text())
    assert report["test"]["confusion_matrix"]["values"]
    assert report["test"]["n_samples"] == int(np.count_nonzero(_read(data["test"])))
    assert not (tmp_path / "m.s2fin.ckpt").exists()
    # Refused without --overwrite, before any training.
    again = runner.invoke(app, _args(data, out))
    assert again.exit_code == OutputError.exit_code and "--overwrite" in again.stderr


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read(1)


def test_stop_and_resume_through_the_cli(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "r.s2fin"
    stopped = runner.invoke(app, _args(data, out, "--stop-after-epoch", "1"))
    assert stopped.exit_code == EXIT_INTERRUPTED and "--resume" in stopped.stderr
    assert (tmp_path / "r.s2fin.ckpt").exists() and not out.exists()
    resumed = runner.invoke(app, _args(data, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.stderr and "OA" in resumed.stdout
    full = tmp_path / "f.s2fin"
    assert runner.invoke(app, _args(data, full)).exit_code == 0
    a, b = load_model_file(out).state_dict, load_model_file(full).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_user_errors_have_their_exit_codes(data: dict[str, Path], tmp_path: Path) -> None:
    out = str(tmp_path / "x.s2fin")
    cases = [
        (["--per-class", "500"], LabelError.exit_code, "needs 500"),
        (["--patch-size", "8"], ConfigError.exit_code, "odd"),
        (["--per-class", "5", "--train-fraction", "0.5"], ConfigError.exit_code, "not both"),
        (["--ablate", "fft"], ConfigError.exit_code, "unknown"),
    ]
    for extra, code, text in cases:
        args = [a if a != str(tmp_path / "m.s2fin") else out for a in _args(data, Path(out))]
        result = runner.invoke(app, [*args, *extra])
        assert result.exit_code == code, (extra, result.output)
        assert text in result.stderr and "Traceback" not in result.output


def test_rasters_that_cannot_align_are_refused(tmp_path: Path) -> None:
    hsi, _ = write_pair(tmp_path)
    far = tmp_path / "far.tif"
    write_raster(far, np.ones((1, 5, 5), np.float32), utm_grid(5, 5, origin=(0.0, 0.0)))
    labels = tmp_path / "labels.tif"
    write_raster(labels, np.ones((30, 40), np.uint8), utm_grid(), nodata=0)
    result = runner.invoke(app, ["train", "--hsi", str(hsi), "--lidar", str(far), "--labels",
                                 str(labels), "-o", str(tmp_path / "m.s2fin")])
    assert result.exit_code == AlignmentError.exit_code == 4
    assert "does not overlap" in result.stderr


def test_train_as_a_subprocess(data: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "sub.s2fin"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "s2fin_cli", "train", str(data["scene"]), "--labels",
         str(data["labels"]), "-o", str(out), *TINY, "--epochs", "1", "--val-fraction", "0"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stderr and " s" in proc.stderr
    assert load_model_file(out).provenance["checkpoint_selection"] == "last epoch"
