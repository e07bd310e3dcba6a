"""The inspect and stack commands through Typer's runner and as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio
from typer.testing import CliRunner

from s2fin_cli.cli.app import app
from s2fin_cli.errors import AlignmentError, InputError, OutputError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import write_raster
from tests.helpers import utm_grid

runner = CliRunner()


def _pair(tmp_path: Path, aux_grid: Grid | None = None) -> tuple[Path, Path]:
    grid = utm_grid()
    hsi = np.random.default_rng(0).normal(size=(4, *grid.shape)).astype(np.float32)
    aux_grid = aux_grid or grid
    write_raster(tmp_path / "hsi.tif", hsi, grid)
    write_raster(tmp_path / "dsm.tif", np.ones((1, *aux_grid.shape), np.float32), aux_grid)
    return tmp_path / "hsi.tif", tmp_path / "dsm.tif"


def test_version_names_every_engine() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    for word in ("s2fin", "torch", "CUDA", "rasterio", "GDAL"):
        assert word in result.stdout


def test_inspect_json_reports_alignment(tmp_path: Path) -> None:
    hsi, dsm = _pair(tmp_path, utm_grid(width=20, height=15, res=2.0))
    result = runner.invoke(app, ["inspect", str(hsi), str(dsm), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [i["bands"] for i in data["inputs"]] == [4, 1]
    assert data["inputs"][0]["grid"]["crs"] == "EPSG:32632"
    assert data["alignment"][0]["ok"] and "resampled" in data["alignment"][0]["status"]


def test_inspect_flags_rasters_that_cannot_align(tmp_path: Path) -> None:
    hsi, dsm = _pair(tmp_path, utm_grid(origin=(0.0, 0.0)))
    result = runner.invoke(app, ["inspect", str(hsi), str(dsm), "--json"])
    assert json.loads(result.stdout)["alignment"][0]["status"].endswith("no spatial overlap")


def test_stack_writes_tagged_scene_and_refuses_overwrite(tmp_path: Path) -> None:
    hsi, dsm = _pair(tmp_path)
    out = tmp_path / "scene.tif"
    args = ["stack", "--hsi", str(hsi), "--lidar", str(dsm), "-o", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    with rasterio.open(out) as ds:
        assert ds.count == 5
        assert ds.descriptions[-1].startswith("lidar:")
        assert ds.tags()["S2FIN_AUX_KIND"] == "lidar"
    again = runner.invoke(app, args)
    assert again.exit_code == OutputError.exit_code
    assert "--overwrite" in again.stderr
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_errors_are_one_line_with_distinct_codes(tmp_path: Path) -> None:
    hsi, _ = _pair(tmp_path)
    far = tmp_path / "far.tif"
    write_raster(far, np.ones((1, 5, 5), np.float32), utm_grid(5, 5, origin=(0.0, 0.0)))
    cases = [
        (["inspect", str(tmp_path / "nope.tif")], InputError.exit_code),
        (["stack", "--hsi", str(hsi), "--lidar", str(far), "-o", str(tmp_path / "s.tif")],
         AlignmentError.exit_code),
    ]
    for args, code in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == code, result.output
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ")
        assert "Traceback" not in result.output
    assert not (tmp_path / "s.tif").exists()


def test_console_script_as_subprocess(tmp_path: Path) -> None:
    hsi, dsm = _pair(tmp_path)
    out = tmp_path / "scene.vrt"
    proc = subprocess.run([sys.executable, "-m", "s2fin_cli", "stack", "--hsi", str(hsi),
                           "--lidar", str(dsm), "-o", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with rasterio.open(out) as ds:
        assert ds.count == 5
    proc = subprocess.run([sys.executable, "-m", "s2fin_cli", "inspect", str(tmp_path / "x.tif")],
                          capture_output=True, text=True)
    assert proc.returncode == InputError.exit_code
    assert proc.stderr.strip() == f"error: {tmp_path / 'x.tif'} does not exist"
