from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import ConfigError, OutputError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import (
    CLASSES_TAG,
    atomic_output,
    parse_creation_options,
    qml_path_for,
    write_raster,
)

GDALINFO = shutil.which("gdalinfo")


def _gdalinfo(path: Path) -> dict:
    if GDALINFO is None:
        pytest.skip("gdalinfo (Debian gdal-bin) is not installed")
    out = subprocess.run([GDALINFO, "-json", str(path)], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout)


def test_written_raster_reopens_with_grid_nodata_and_layout(tmp_path: Path, grid: Grid) -> None:
    data = np.random.default_rng(0).normal(size=(3, *grid.shape)).astype(np.float32)
    path = write_raster(tmp_path / "x.tif", data, grid, nodata=-9999.0,
                        band_descriptions=["a", "b", "c"], tags={"origin": "test"})
    with rasterio.open(path) as ds:
        assert ds.crs == grid.crs and ds.transform == grid.transform
        assert ds.nodata == -9999.0 and ds.descriptions == ("a", "b", "c")
        assert ds.tags()["origin"] == "test"
        assert ds.compression.name.lower() == "deflate"
        assert ds.block_shapes[0] == (48, 48)  # tiles shrink to the 40x30 grid
        np.testing.assert_array_equal(ds.read(), data)
    info = _gdalinfo(path)
    assert info["coordinateSystem"]["wkt"].find("32632") > 0
    assert info["geoTransform"] == list(grid.transform.to_gdal())
    assert info["bands"][0]["noDataValue"] == -9999.0


def test_class_raster_has_palette_and_qml(tmp_path: Path, grid: Grid) -> None:
    table = ClassTable.from_ids([1, 2, 3], {1: "road", 2: "roof & tile", 3: "tree"})
    labels = np.zeros(grid.shape, np.uint8)
    labels[:5] = 1
    labels[5:10] = 3
    path = write_raster(tmp_path / "classes.tif", labels, grid, nodata=0, classes=table)
    with rasterio.open(path) as ds:
        assert ds.colorinterp[0].name == "palette"
        assert ds.colormap(1)[2] == (*table.classes[1].color, 255)
        assert ClassTable.from_json(json.loads(ds.tags()[CLASSES_TAG])) == table
    info = _gdalinfo(path)
    assert info["bands"][0]["colorInterpretation"] == "Palette"
    assert info["bands"][0]["noDataValue"] == 0
    root = ET.parse(qml_path_for(path)).getroot()
    labels_in_qml = [e.get("label") for e in root.iter("paletteEntry")]
    assert labels_in_qml == ["road", "roof & tile", "tree"]


def test_existing_output_needs_overwrite(tmp_path: Path, grid: Grid) -> None:
    data = np.zeros(grid.shape, np.uint8)
    path = write_raster(tmp_path / "x.tif", data, grid)
    with pytest.raises(OutputError, match="--overwrite"):
        write_raster(path, data, grid)
    write_raster(path, data + 1, grid, overwrite=True)
    with rasterio.open(path) as ds:
        assert ds.read(1).max() == 1


def test_failure_midway_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        (tmp.parent / (tmp.name + ".aux.xml")).write_text("<PAMDataset/>")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(KeyboardInterrupt), atomic_output(target) as tmp:
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_output_directory_problems(tmp_path: Path, grid: Grid) -> None:
    data = np.zeros(grid.shape, np.uint8)
    with pytest.raises(OutputError, match="does not exist"):
        write_raster(tmp_path / "missing" / "x.tif", data, grid)
    with pytest.raises(OutputError, match="is a directory"):
        write_raster(tmp_path, data, grid)


def test_creation_options() -> None:
    assert parse_creation_options(["zlevel=9", "PREDICTOR=2"]) == {"ZLEVEL": "9",
                                                                   "PREDICTOR": "2"}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_creation_options(["ZLEVEL"])


def test_outputs_get_the_umask_mode_even_from_private_writers(tmp_path: Path) -> None:
    import os
    import stat

    target = tmp_path / "model.bin"
    with atomic_output(target) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors creates its file
        os.write(fd, b"x")
        os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
