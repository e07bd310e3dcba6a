"""HSI and auxiliary rasters that do not line up: refused (4), or aligned with a message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS

from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import write_raster
from tests.helpers import scene_arrays, utm_grid
from tests.reliability.harness import (
    PREDICT_FAST,
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    run_cli,
    snapshot,
)


def _pair(d: Path, hsi_grid: Grid, aux_grid: Grid) -> tuple[Path, Path]:
    optical, _ = scene_arrays(hsi_grid.height, hsi_grid.width, 8, 1, seed=11)
    _, aux = scene_arrays(aux_grid.height, aux_grid.width, 8, 1, seed=12)
    return (write_raster(d / "hsi.tif", optical, hsi_grid),
            write_raster(d / "dsm.tif", aux, aux_grid))


def _no_crs(width: int, height: int) -> Grid:
    return Grid(None, Affine(1, 0, 0, 0, -1, height), width, height)


CANNOT_ALIGN = {
    # 10 km east of the HSI: same CRS, no common pixel.
    "no-overlap": (utm_grid(SIZE, SIZE), utm_grid(SIZE, SIZE, origin=(670_000.0, 5_100_000.0))),
    # Nothing says where a raster without CRS lies; a different size cannot be co-registered.
    "aux-without-crs": (utm_grid(SIZE, SIZE), _no_crs(SIZE + 4, SIZE)),
    "hsi-without-crs": (_no_crs(SIZE, SIZE), utm_grid(SIZE + 4, SIZE + 4)),
}


@pytest.mark.parametrize(("case", "command"), [
    ("no-overlap", "predict"), ("no-overlap", "train"), ("aux-without-crs", "predict"),
    ("aux-without-crs", "train"), ("hsi-without-crs", "predict")])
def test_rasters_that_cannot_align(case: str, command: str, tiny: TinyData, tmp_path: Path,
                                   out_dir: Path) -> None:
    hsi, dsm = _pair(tmp_path, *CANNOT_ALIGN[case])
    before = snapshot(tmp_path)
    if command == "predict":
        args = ["predict", "--hsi", hsi, "--lidar", dsm, "-m", tiny.model, "-o",
                out_dir / "map.tif", *PREDICT_FAST]
    else:
        args = ["train", "--hsi", hsi, "--lidar", dsm, "--labels", tiny.labels, "-o",
                out_dir / "m.s2fin", *TINY_TRAIN]
    result = run_cli(args, cwd=tmp_path)
    line = assert_user_error(result, 4)
    assert "overlap" in line or "no CRS" in line
    assert_nothing_new(before, tmp_path)


def test_geographic_crs_warns_and_works(tiny: TinyData, tmp_path: Path) -> None:
    res = 1e-5  # about a metre
    grid = Grid(CRS.from_epsg(4326), Affine(res, 0, 11.1, 0, -res, 46.07), SIZE, SIZE)
    hsi, dsm = _pair(tmp_path, grid, grid)
    out = tmp_path / "map.tif"
    result = run_cli(["predict", "--hsi", hsi, "--lidar", dsm, "-m", tiny.model, "-o", out,
                      *PREDICT_FAST], cwd=tmp_path)
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("geographic" in line for line in warnings), result.stderr
    with rasterio.open(out) as ds:
        assert Grid.of(ds).same_as(grid)
        assert (ds.read(1) > 0).all()


def test_different_resolutions_are_aligned_with_a_message(tiny: TinyData,
                                                          tmp_path: Path) -> None:
    hsi_grid = utm_grid(SIZE, SIZE)
    coarse = utm_grid(SIZE // 2, SIZE // 2, res=2.0)  # the same extent at 2 m
    hsi, dsm = _pair(tmp_path, hsi_grid, coarse)
    out = tmp_path / "map.tif"
    result = run_cli(["predict", "--hsi", hsi, "--lidar", dsm, "-m", tiny.model, "-o", out,
                      *PREDICT_FAST], cwd=tmp_path)
    assert_ok(result)
    assert "aligned" in result.stderr and "dsm.tif" in result.stderr, result.stderr
    with rasterio.open(out) as ds:
        assert Grid.of(ds).same_as(hsi_grid)
        classes = ds.read(1)
    # Bilinear resampling of a 2 m raster onto the 1 m grid: every pixel has data.
    assert (classes > 0).all()
    assert np.isin(classes, [1, 2, 3]).all()
