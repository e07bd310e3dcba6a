"""The evaluate command through Typer's runner and once as a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from s2fin_cli.classes import ClassTable
from s2fin_cli.cli.app import app
from s2fin_cli.cli.evaluate_cmd import confusion_csv_path
from s2fin_cli.errors import ConfigError, LabelError, OutputError
from s2fin_cli.io.writer import write_raster
from tests.helpers import REPO_ROOT, save_tiny_model, utm_grid, write_pair, write_scene

runner = CliRunner()

TABLE = ClassTable.from_ids([1, 2, 3], {1: "water", 2: "trees", 3: "urban"})
MAP = np.array([[1, 1, 2, 2, 3], [1, 1, 2, 2, 3], [0, 1, 2, 3, 3], [1, 1, 0, 2, 2]], np.uint8)
REF = np.array([[1, 1, 2, 2, 0], [1, 2, 2, 2, 0], [1, 1, 2, 0, 0], [0, 0, 2, 2, 1]], np.uint8)
EXPECTED = [[4, 1, 0, 1], [1, 6, 0, 1], [0, 0, 0, 0]]


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path]:
    grid = utm_grid(width=5, height=4)
    m = write_raster(tmp_path / "map.tif", MAP, grid, nodata=0, classes=TABLE)
    r = write_raster(tmp_path / "ref.tif", REF, grid, nodata=0)
    return m, r


def test_table_on_stdout(case: tuple[Path, Path]) -> None:
    m, r = case
    result = runner.invoke(app, ["evaluate", str(m), "--labels", str(r)])
    assert result.exit_code == 0, result.output
    for text in ("Accuracy of map.tif", "water", "trees", "urban", "OA 71.43 %", "Kappa 0.4909",
                 "Confusion matrix", "no prediction"):
        assert text in result.stdout


def test_json_csv_and_figures(case: tuple[Path, Path], tmp_path: Path) -> None:
    m, r = case
    metrics, figs = tmp_path / "metrics.csv", tmp_path / "figs"
    args = ["evaluate", str(m), "--labels", str(r), "--json", "--csv", str(metrics),
            "--figures", str(figs)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "map" and data["inputs"]["labels"] == str(r)
    assert data["confusion_matrix"]["values"] == EXPECTED
    assert data["overall_accuracy"] == pytest.approx(10 / 14)
    assert data["classes"][2]["producers_accuracy"] is None  # urban: not in the reference
    assert sorted(Path(p).name for p in data["outputs"]) == [
        "confusion_matrix.png", "map_quicklook.png", "metrics.confusion.csv", "metrics.csv"]
    rows = list(csv.DictReader(io.StringIO(metrics.read_text())))
    oa = next(row for row in rows if row["metric"] == "overall_accuracy")
    assert float(oa["value"]) == pytest.approx(10 / 14)
    assert {row["class_name"] for row in rows if row["metric"] == "f1"} == {
        "water", "trees", "urban"}
    confusion = list(csv.reader(io.StringIO(confusion_csv_path(metrics).read_text())))
    assert confusion[0] == ["reference \\ predicted", "water", "trees", "urban", "no prediction"]
    assert [[int(v) for v in row[1:]] for row in confusion[1:]] == EXPECTED
    for name in ("confusion_matrix.png", "map_quicklook.png"):
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    again = runner.invoke(app, args)
    assert again.exit_code == OutputError.exit_code
    assert "exists" in again.output and "--overwrite" in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_unknown_labels_fail_or_are_excluded(case: tuple[Path, Path], tmp_path: Path) -> None:
    m, _ = case
    ref = REF.copy()
    ref[0, 4] = 9
    r = write_raster(tmp_path / "ref9.tif", ref, utm_grid(width=5, height=4), nodata=0)
    result = runner.invoke(app, ["evaluate", str(m), "--labels", str(r)])
    assert result.exit_code == LabelError.exit_code
    assert "9 (1 px)" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", str(m), "--labels", str(r), "--exclude-unknown",
                                 "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["excluded_labels"] == [{"label_id": 9, "name": "class 9", "pixels": 1}]
    assert data["confusion_matrix"]["values"] == EXPECTED


def test_option_mistakes(case: tuple[Path, Path], tmp_path: Path) -> None:
    m, r = case
    result = runner.invoke(app, ["evaluate", str(m), "--labels", str(r), "--hsi", str(m)])
    assert result.exit_code == ConfigError.exit_code and "-m MODEL" in result.output
    assert runner.invoke(app, ["evaluate", "--labels", str(r)]).exit_code == ConfigError.exit_code
    assert runner.invoke(app, ["evaluate", str(m)]).exit_code == 2  # --labels is required
    missing_dir = tmp_path / "nowhere" / "m.csv"
    result = runner.invoke(app, ["evaluate", str(m), "--labels", str(r), "--csv",
                                 str(missing_dir)])
    assert result.exit_code == OutputError.exit_code


def test_model_mode_stacked_scene_and_pair(tmp_path: Path) -> None:
    grid = utm_grid(width=12, height=9)
    scene = write_scene(tmp_path / "scene.tif", grid)
    model = save_tiny_model(tmp_path / "model.s2fin", scene, num_classes=3)
    ref = np.zeros(grid.shape, np.uint8)
    ref[::2, ::3] = 1
    ref[1::2, 1::3] = 2
    ref[1::4, 2::3] = 3
    labels = write_raster(tmp_path / "ref.tif", ref, grid, nodata=0)
    result = runner.invoke(app, ["evaluate", "-m", str(model), str(scene), "--labels",
                                 str(labels), "--json", "--device", "cpu", "--figures",
                                 str(tmp_path / "figs")])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["mode"] == "model" and data["n_samples"] == int((ref > 0).sum())
    assert np.asarray(data["confusion_matrix"]["values"]).sum() == data["n_samples"]
    assert [Path(p).name for p in data["outputs"]] == ["confusion_matrix.png"]

    hsi, dsm = write_pair(tmp_path, grid)
    result = runner.invoke(app, ["evaluate", "-m", str(model), "--hsi", str(hsi), "--lidar",
                                 str(dsm), "--labels", str(labels), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Accuracy of model.s2fin" in result.stdout


def test_subprocess_json(case: tuple[Path, Path]) -> None:
    m, r = case
    done = subprocess.run([sys.executable, "-m", "s2fin_cli", "evaluate", str(m), "--labels",
                           str(r), "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["confusion_matrix"]["values"] == EXPECTED
    bad = subprocess.run([sys.executable, "-m", "s2fin_cli", "evaluate", str(m), "--labels",
                          str(m.with_name("missing.tif"))], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=180)
    assert bad.returncode == 3 and bad.stderr.count("\n") == 1 and "not exist" in bad.stderr
