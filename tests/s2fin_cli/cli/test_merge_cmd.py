"""``s2fin predict --shard`` + ``s2fin merge`` against a single-process ``s2fin predict``, through
Typer's runner (one shard from SLURM's environment) and once as real subprocesses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner, Result

from s2fin_cli.cli.app import app
from s2fin_cli.errors import ConfigError, InputError, OutputError
from s2fin_cli.io.grid import Grid
from tests.helpers import save_tiny_model, torch_threads, utm_grid, write_scene

GRID = utm_grid(width=21, height=17)
BLOCK = "8"  # 3 x 3 blocks: shards 0, 1, 2 own blocks {0, 3, 6}, {1, 4, 7}, {2, 5, 8}
# Scheduler variables, unset for every call unless a test sets them (None unsets in CliRunner).
NO_SCHEDULER: dict[str, str | None] = {
    name: None for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT",
                            "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_STEP", "RANK",
                            "WORLD_SIZE")}
runner = CliRunner()


def invoke(args: list[str], **env: str) -> Result:
    return runner.invoke(app, args, env={**NO_SCHEDULER, **env})


@dataclass
class Run:
    root: Path
    scene: Path
    model: Path

    def predict_args(self, *extra: str, out: str = "map.tif") -> list[str]:
        r = self.root
        return ["predict", str(self.scene), "-m", str(self.model), "-o", str(r / out),
                "--block-size", BLOCK, "--probabilities", str(r / f"p.{out}"), "--confidence",
                str(r / f"c.{out}"), *extra]

    def parts(self, name: str = "map") -> list[Path]:
        return sorted(self.root.glob(f"{name}.part-*.tif"))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """A scene, a model, a single-process prediction (single.tif, p.single.tif, c.single.tif)
    and the 3 parts of a sharded one (map.part-000i-of-0003.tif and their p./c. parts)."""
    root = tmp_path_factory.mktemp("sharded")
    nodata = np.zeros(GRID.shape, bool)
    nodata[0, :3] = True
    nodata[9:12, 10:14] = True
    scene = write_scene(root / "scene.tif", GRID, nodata_pixels=nodata)
    r = Run(root, scene, save_tiny_model(root / "m.s2fin", scene))
    with torch_threads(1):
        result = invoke(r.predict_args(out="single.tif"))
        assert result.exit_code == 0, result.output
        for shard in ("0/3", "2/3"):
            result = invoke(r.predict_args("--shard", shard, "--json"))
            assert result.exit_code == 0, result.output
            report = json.loads(result.stdout)["scenes"][0]
            assert report["shard"] == shard and report["style"] is None
            assert report["output"].endswith(f"map.part-000{shard[0]}-of-0003.tif")
        # shard 1 from a SLURM array --array=1-3 (task ids 1, 2, 3 are shards 0, 1, 2)
        result = invoke(r.predict_args("--shard", "auto"), SLURM_ARRAY_TASK_ID="2",
                        SLURM_ARRAY_TASK_COUNT="3", SLURM_ARRAY_TASK_MIN="1")
        assert result.exit_code == 0, result.output
        assert "predicting shard 1/3 (SLURM_ARRAY_TASK_ID=2" in result.stderr
    yield r


def _grid(path: Path) -> Grid:
    with rasterio.open(path) as ds:
        return Grid.of(ds)


def _categories(path: Path) -> str:
    """The category names and attribute table (GDAL's PAM sidecar)."""
    return path.with_name(path.name + ".aux.xml").read_text()


def _same_raster(a: Path, b: Path) -> None:
    with rasterio.open(a) as x, rasterio.open(b) as y:
        assert np.array_equal(x.read(), y.read())
        assert Grid.of(x).same_as(Grid.of(y)) and x.crs == y.crs
        assert x.profile == y.profile  # dtype, nodata, tiling, compression, photometric
        assert x.tags() == y.tags() and x.descriptions == y.descriptions
        assert x.scales == y.scales and x.offsets == y.offsets
        if x.count == 1 and x.profile.get("photometric") == "palette":
            assert x.colormap(1) == y.colormap(1)


def test_parts_are_plain_sparse_files(run: Run) -> None:
    names = sorted(p.name for p in run.root.iterdir() if ".part-" in p.name)
    assert names == sorted(f"{k}part-000{i}-of-0003.tif" for i in range(3)
                           for k in ("map.", "p.map.", "c.map."))  # no .qml, no .aux.xml
    with rasterio.open(run.parts()[1]) as ds:
        data = ds.read(1)
    owned = np.zeros(GRID.shape, bool)
    for k in (1, 4, 7):
        owned[8 * (k // 3):8 * (k // 3) + 8, 8 * (k % 3):8 * (k % 3) + 8] = True
    assert (data[~owned] == 0).all() and (data[owned] > 0).any()


def test_merge_equals_single_process_predict(run: Run, tmp_path: Path) -> None:
    out = tmp_path / "merged.tif"
    result = invoke(["merge", str(run.root / "map.part-*.tif"), "-o", str(out), "--probabilities",
                     str(tmp_path / "p.tif"), "--confidence", str(tmp_path / "c.tif"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert (report["parts"], report["blocks"], report["shard_count"]) == (3, 9, 3)
    single = run.root / "single.tif"
    _same_raster(single, out)
    _same_raster(run.root / "p.single.tif", tmp_path / "p.tif")
    _same_raster(run.root / "c.single.tif", tmp_path / "c.tif")
    with rasterio.open(out) as ds:
        data = ds.read(1)
        assert ds.nodata == 0 and (data[0, :3] == 0).all() and (data[9:12, 10:14] == 0).all()
        assert "S2FIN_SHARD" not in ds.tags()
    assert _categories(out) == _categories(single)
    assert "<Category>class A</Category>" in _categories(out) and "<Name>Class" in _categories(out)
    assert (tmp_path / "merged.qml").read_text() == (run.root / "single.qml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.qml", "c.tif", "merged.qml", "merged.tif", "merged.tif.aux.xml", "p.qml", "p.tif"]


def test_merge_subprocess_cog_with_default_name(run: Run, tmp_path: Path) -> None:
    for part in run.parts():
        shutil.copy(part, tmp_path / part.name)
    env = {**{k: v for k, v in os.environ.items() if k not in NO_SCHEDULER},
           "OMP_NUM_THREADS": "1"}
    parts = [str(p) for p in sorted(tmp_path.glob("map.part-*.tif"))]
    proc = subprocess.run([sys.executable, "-m", "s2fin_cli", "merge", *parts, "--cog", "--co",
                           "COMPRESS=LZW"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "map.tif"  # the parts' name without .part-I-of-N
    info = subprocess.run(["gdalinfo", str(out)], capture_output=True, text=True,
                          check=True).stdout
    assert "LAYOUT=COG" in info and "COMPRESSION=LZW" in info and "Overviews" in info
    assert "Color Table" in info and "NoData Value=0" in info
    with rasterio.open(out) as ds, rasterio.open(run.root / "single.tif") as single:
        assert np.array_equal(ds.read(1), single.read(1))
        assert Grid.of(ds).same_as(Grid.of(single)) and ds.colormap(1) == single.colormap(1)
    assert (tmp_path / "map.qml").exists()
    assert not [p for p in tmp_path.iterdir() if "s2fin-tmp" in p.name or "stage" in p.name]
    # again: the output exists now
    proc = subprocess.run([sys.executable, "-m", "s2fin_cli", "merge", *parts], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == OutputError.exit_code and "--overwrite" in proc.stderr


def test_missing_and_duplicated_parts_refused(run: Run, tmp_path: Path) -> None:
    parts = run.parts()
    out = tmp_path / "m.tif"
    result = invoke(["merge", str(parts[0]), str(parts[2]), "-o", str(out)])
    assert result.exit_code == InputError.exit_code
    assert "1 of 3 parts missing (shards 1" in result.stderr
    copy = tmp_path / "map.part-0001-of-0003.tif"
    shutil.copy(parts[1], copy)
    result = invoke(["merge", *map(str, parts), str(copy), "-o", str(out)])
    assert result.exit_code == InputError.exit_code
    assert "shard 1/3 given twice" in result.stderr
    # the same file named twice (a glob and its name) is one part
    relative = Path(os.path.relpath(parts[0]))
    result = invoke(["merge", str(run.root / "map.part-*.tif"), str(relative), "-o", str(out)])
    assert result.exit_code == 0, result.output
    result = invoke(["merge", str(tmp_path / "nothing.part-*.tif"), "-o", str(tmp_path / "x.tif")])
    assert result.exit_code == InputError.exit_code
    result = invoke(["merge", str(run.root / "p.map.part-*.tif"), "-o", str(tmp_path / "x.tif")])
    assert result.exit_code == InputError.exit_code
    assert "probabilities part" in result.stderr
    assert not (tmp_path / "x.tif").exists()


def test_parts_of_another_model_refused(run: Run, tmp_path: Path) -> None:
    other = save_tiny_model(tmp_path / "other.s2fin", run.scene, seed=1)
    with torch_threads(1):
        result = invoke(["predict", str(run.scene), "-m", str(other), "-o",
                         str(tmp_path / "map.tif"), "--block-size", BLOCK, "--shard", "1/3"])
    assert result.exit_code == 0, result.output
    parts = run.parts()
    result = invoke(["merge", str(parts[0]), str(tmp_path / "map.part-0001-of-0003.tif"),
                     str(parts[2]), "-o", str(tmp_path / "m.tif")])
    assert result.exit_code == InputError.exit_code
    assert "different runs: model checksum" in result.stderr
    assert not (tmp_path / "m.tif").exists()


def test_predict_shard_option_errors(run: Run, tmp_path: Path) -> None:
    args = ["predict", str(run.scene), "-m", str(run.model), "-o", str(tmp_path / "x.tif")]
    for shard, message in (("3/3", "out of range"), ("1", "INDEX/COUNT")):
        result = invoke([*args, "--shard", shard])
        assert result.exit_code == ConfigError.exit_code, result.output
        assert message in result.stderr
    result = invoke([*args, "--shard", "0/2", "--cog"])
    assert result.exit_code == ConfigError.exit_code
    assert "pass --cog to s2fin merge" in result.stderr
    # --shard none: the whole scene even inside an array job
    with torch_threads(1):
        result = invoke([*args, "--shard", "none"], SLURM_ARRAY_TASK_ID="0",
                        SLURM_ARRAY_TASK_COUNT="4")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.qml", "x.tif", "x.tif.aux.xml"]
