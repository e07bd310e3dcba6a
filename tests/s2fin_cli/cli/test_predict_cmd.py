"""``s2fin predict`` through Typer's runner and once as a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from typer.testing import CliRunner

from models import S2Fin
from s2fin_cli.cli.app import app
from s2fin_cli.errors import CompatibilityError, ConfigError, OutputError
from s2fin_cli.io.classmap import TAG_MODEL, TAG_MODEL_SHA256
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import CLASSES_TAG
from s2fin_cli.prediction import GDAL_CACHE_MIN_MB, OutputRequest, gdal_cache_bytes, plan_jobs
from tests.helpers import (
    open_pair,
    save_tiny_model,
    torch_threads,
    utm_grid,
    write_pair,
    write_scene,
)

runner = CliRunner()
GRID = utm_grid(width=21, height=17)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Inside a SLURM array or torchrun these would make predict shard (--shard's default).
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    with torch_threads(1):
        yield


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    nodata = np.zeros(GRID.shape, bool)
    nodata[0, :3] = True
    return write_scene(tmp_path / "scene.tif", GRID, nodata_pixels=nodata)


@pytest.fixture
def model(tmp_path: Path, scene: Path) -> Path:
    return save_tiny_model(tmp_path / "m.s2fin", scene, class_ids=[1, 2, 3, 4])


def _grid(path: Path) -> Grid:
    with rasterio.open(path) as ds:
        return Grid.of(ds)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if "s2fin-tmp" in p.name
                  or "stage" in p.name)


def test_predict_stacked_scene_json(tmp_path: Path, scene: Path, model: Path) -> None:
    result = runner.invoke(app, ["predict", str(scene), "-m", str(model), "--json",
                                 "--block-size", "8", "--batch-size", "50"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["scenes"][0]
    out = tmp_path / "scene.classes.tif"
    assert report["output"] == str(out) and report["nodata"] == 3
    assert report["classified"] == GRID.width * GRID.height - 3
    assert sum(c["pixels"] for c in report["classes"]) == report["classified"]
    assert {c["name"] for c in report["classes"]} == {f"class {x}" for x in "ABCD"}
    assert _grid(out).same_as(GRID)
    with rasterio.open(out) as ds:
        assert ds.tags()[TAG_MODEL] == model.name  # the name and checksum, not the path
        assert len(ds.tags()[TAG_MODEL_SHA256]) == 64 and CLASSES_TAG in ds.tags()
        data = ds.read(1)
    assert (data[0, :3] == 0).all() and (data[1:] > 0).all()
    assert (tmp_path / "scene.classes.qml").exists()


def test_default_model_is_announced(tmp_path: Path, scene: Path, model: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    model.rename(tmp_path / "model.s2fin")
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", "scene.tif", "-o", "map.tif"])
    assert result.exit_code == 0, result.output
    assert "default model model.s2fin" in result.stderr
    assert "classified" in result.stdout  # the summary table
    assert (tmp_path / "map.tif").exists() and (tmp_path / "map.qml").exists()


def _lonlat_grid(grid: Grid, res: float) -> Grid:
    """A EPSG:4326 grid covering ``grid`` (another CRS and resolution)."""
    assert grid.crs is not None
    west, south, east, north = transform_bounds(grid.crs, "EPSG:4326", *grid.bounds)
    width = int(np.ceil((east - west) / res)) + 2
    height = int(np.ceil((north - south) / res)) + 2
    return Grid(CRS.from_epsg(4326), Affine(res, 0, west - res, 0, -res, north + res),
                width, height)


def test_aux_on_another_crs_gives_map_on_hsi_grid(tmp_path: Path) -> None:
    hsi, dsm = write_pair(tmp_path, GRID, _lonlat_grid(GRID, 2e-5))
    with open_pair(hsi, dsm) as opened:
        model = save_tiny_model(tmp_path / "m.s2fin", opened)
    result = runner.invoke(app, ["predict", "--hsi", str(hsi), "--lidar", str(dsm), "-m",
                                 str(model), "--block-size", "10"])
    assert result.exit_code == 0, result.output
    assert "aligned" in result.stderr
    assert _grid(tmp_path / "hsi.classes.tif").same_as(GRID)


def test_band_count_mismatch_refused_before_any_output(tmp_path: Path, model: Path) -> None:
    other = write_scene(tmp_path / "five.tif", GRID, bands=5)
    result = runner.invoke(app, ["predict", str(other), "-m", str(model)])
    assert result.exit_code == CompatibilityError.exit_code, result.output
    assert "6 optical bands" in result.stderr
    assert not (tmp_path / "five.classes.tif").exists()


def test_modality_mismatch_refused(tmp_path: Path, model: Path) -> None:
    hsi, dsm = write_pair(tmp_path, GRID)
    result = runner.invoke(app, ["predict", "--hsi", str(hsi), "--sar", str(dsm), "-m",
                                 str(model)])
    assert result.exit_code == CompatibilityError.exit_code, result.output
    assert "--lidar" in result.stderr
    assert not (tmp_path / "hsi.classes.tif").exists()


def test_batch_checks_every_scene_first(tmp_path: Path, scene: Path, model: Path) -> None:
    bad = write_scene(tmp_path / "zz_bad.tif", GRID, bands=5)
    result = runner.invoke(app, ["predict", str(scene), str(bad), "-m", str(model)])
    assert result.exit_code == CompatibilityError.exit_code
    assert "zz_bad.tif" in result.stderr
    assert not (tmp_path / "scene.classes.tif").exists()  # the good scene was not computed


def test_existing_output_refused_then_overwritten(tmp_path: Path, scene: Path,
                                                  model: Path) -> None:
    out = tmp_path / "scene.classes.tif"
    out.write_bytes(b"keep me")
    args = ["predict", str(scene), "-m", str(model)]
    result = runner.invoke(app, args)
    assert result.exit_code == OutputError.exit_code and "--overwrite" in result.stderr
    assert out.read_bytes() == b"keep me"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert _grid(out).same_as(GRID)


def test_failure_midway_leaves_no_output(tmp_path: Path, scene: Path, model: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    forward = S2Fin.forward

    def failing(self: S2Fin, *args: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("injected failure")
        return forward(self, *args)

    monkeypatch.setattr(S2Fin, "forward", failing)
    before = set(tmp_path.iterdir())
    result = runner.invoke(app, ["predict", str(scene), "-m", str(model), "--block-size", "6",
                                 "--probabilities", str(tmp_path / "p.tif"), "--cog"])
    assert result.exit_code == 1 and "injected failure" in result.stderr
    assert calls["n"] == 3
    assert set(tmp_path.iterdir()) == before  # no map, no sidecar, no temporary file


def test_batch_with_glob_into_directory(tmp_path: Path, model: Path) -> None:
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for name in ("a", "b"):
        write_scene(scenes / f"{name}.tif", utm_grid(width=9, height=7))
    out = tmp_path / "maps"
    result = runner.invoke(app, ["predict", str(scenes / "*.tif"), "-m", str(model), "-o",
                                 str(out), "--confidence", str(out), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)["scenes"]
    assert [Path(r["output"]).name for r in reports] == ["a.classes.tif", "b.classes.tif"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a.classes.qml", "a.classes.tif", "a.classes.tif.aux.xml", "a.confidence.qml",
        "a.confidence.tif", "b.classes.qml", "b.classes.tif", "b.classes.tif.aux.xml",
        "b.confidence.qml", "b.confidence.tif"]


def test_batch_outputs_must_not_collide(tmp_path: Path, model: Path) -> None:
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        write_scene(tmp_path / sub / "s.tif", utm_grid(width=5, height=5))
    result = runner.invoke(app, ["predict", str(tmp_path / "x" / "s.tif"),
                                 str(tmp_path / "y" / "s.tif"), "-m", str(model), "-o",
                                 str(tmp_path)])
    assert result.exit_code == ConfigError.exit_code and "both write" in result.stderr


def test_subprocess_cog_with_probabilities(tmp_path: Path, scene: Path, model: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "s2fin_cli", "predict", str(scene), "-m", str(model), "-o",
         str(tmp_path / "cog.tif"), "--cog", "--probabilities", str(tmp_path / "p.tif"),
         "--confidence", str(tmp_path / "c.tif"), "--co", "COMPRESS=LZW", "--device", "cpu"],
        capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = subprocess.run(["gdalinfo", str(tmp_path / "cog.tif")], capture_output=True,
                          text=True, check=True).stdout
    assert "LAYOUT=COG" in info and "COMPRESSION=LZW" in info and "Overviews" in info
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == 4 and ds.overviews(1)
    assert not _leftovers(tmp_path)


def test_gdal_cache_follows_tiles_not_scene_size(tmp_path: Path) -> None:
    tiles = {"BLOCKXSIZE": "16", "BLOCKYSIZE": "16"}
    small = write_scene(tmp_path / "small.tif", utm_grid(64, 64), creation_options=tiles)
    large = write_scene(tmp_path / "large.tif", utm_grid(256, 256), creation_options=tiles)
    jobs = plan_jobs([small, large], None, None, None, OutputRequest(), tags={})
    one = gdal_cache_bytes(jobs[:1], 40)
    assert one == gdal_cache_bytes(jobs[1:], 40)
    # (40 / 16 + 1)^2 = 16 tiles of 16x16 px x 7 float32 bands, plus the margin
    assert one == 16 * 16 * 16 * 7 * 4 + (GDAL_CACHE_MIN_MB << 20)


def test_shard_from_rank_and_world_size(tmp_path: Path, scene: Path, model: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = runner.invoke(app, ["predict", str(scene), "-m", str(model), "--block-size", "8",
                                 "--json", "--shard", "auto"])
    assert result.exit_code == 0, result.output
    assert "predicting shard 1/2 (RANK=1, WORLD_SIZE=2)" in result.stderr
    report = json.loads(result.stdout)["scenes"][0]
    assert report["shard"] == "1/2" and report["style"] is None
    part = tmp_path / "scene.classes.part-0001-of-0002.tif"
    assert report["output"] == str(part)
    assert report["classified"] == 64 + 64 + 40 + 8  # blocks 1, 3, 5, 7 (8x8, 8x8, 8x5, 1x8)
    with rasterio.open(part) as ds:
        assert "S2FIN_SHARD" in ds.tags() and _grid(part).same_as(GRID)
    assert not (tmp_path / "scene.classes.tif").exists()
    assert not (tmp_path / "scene.classes.part-0001-of-0002.qml").exists()


def test_scheduler_variables_alone_never_shard(tmp_path: Path, scene: Path, model: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """One scene per SLURM array task: the map asked for is written whole, with a note."""
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "4")
    out = tmp_path / "scene1.tif"
    result = runner.invoke(app, ["predict", str(scene), "-m", str(model), "-o", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert "predicting the whole scene" in result.stderr and "--shard auto" in result.stderr
    report = json.loads(result.stdout)["scenes"][0]
    assert report["shard"] is None and report["pixels"] == GRID.width * GRID.height
    assert out.exists() and not list(tmp_path.glob("*.part-*"))


def test_compile_and_bf16_modes(tmp_path: Path, scene: Path, model: Path) -> None:
    out = tmp_path / "fp32.tif"
    result = runner.invoke(app, ["-v", "predict", str(scene), "-m", str(model), "-o", str(out),
                                 "--compile", "auto", "--bf16", "off"])
    assert result.exit_code == 0, result.output
    # auto never compiles on the CPU: compiled code measured no faster there
    assert "torch.compile: auto" in result.stderr and "not faster" in result.stderr
    # The summary says the precision of the map (rich may wrap the caption).
    assert "on cpu in float32" in " ".join(result.stdout.split())
    bf16 = tmp_path / "bf16.tif"
    result = runner.invoke(app, ["predict", str(scene), "-m", str(model), "-o", str(bf16),
                                 "--compile", "off", "--bf16", "on", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scenes"][0]["precision"] == "bfloat16"
    with rasterio.open(out) as a, rasterio.open(bf16) as b:
        assert (a.read(1) == b.read(1)).mean() > 0.9  # bf16 may flip near-ties only
    for option in ("--compile", "--bf16"):
        result = runner.invoke(app, ["predict", str(scene), "-m", str(model), "-o",
                                     str(tmp_path / "x.tif"), option, "sometimes"])
        assert result.exit_code == ConfigError.exit_code and "auto, on, off" in result.stderr
    assert not (tmp_path / "x.tif").exists()
