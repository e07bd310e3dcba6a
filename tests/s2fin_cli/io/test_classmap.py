"""Class-map writing: georeferencing, styling (colour table, .qml, categories/RAT), COG,
probability encoding, atomicity."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import OutputError
from s2fin_cli.io.classmap import (
    CLASS_BAND_DESCRIPTION,
    TAG_MODEL,
    TAG_MODEL_SHA256,
    ClassMapWriter,
    MapOutputs,
    class_dtype,
    decode_probability,
    encode_probability,
    model_tags,
    overview_factors,
)
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.windows import iter_blocks, window_slices
from s2fin_cli.io.writer import CLASSES_TAG
from tests.helpers import utm_grid

CLASSES = ClassTable.from_ids([1, 2, 4], {1: "water", 2: "trees & shrubs", 4: "<roads>"})


def _class_array(grid: Grid, classes: ClassTable = CLASSES, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = rng.choice([0, *classes.ids], size=grid.shape)
    return arr


def _write(grid: Grid, outputs: MapOutputs, array: np.ndarray, classes: ClassTable = CLASSES,
           block: int = 16, fail_after: int | None = None) -> None:
    probs = np.random.default_rng(1).dirichlet(np.ones(len(classes)), size=grid.shape)
    probs = np.moveaxis(probs, -1, 0).astype(np.float32)
    with ClassMapWriter(grid, classes, outputs) as writer:
        for i, window in enumerate(iter_blocks(grid.height, grid.width, block)):
            if fail_after is not None and i == fail_after:
                raise RuntimeError("injected")
            rs, cs = window_slices(window)
            writer.write_block(window, array[rs, cs], probs[:, rs, cs], probs[:, rs, cs].max(0))


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_class_map_is_georeferenced_and_styled(tmp_path: Path) -> None:
    grid = utm_grid(width=45, height=33)
    arr = _class_array(grid)
    out = tmp_path / "map.tif"
    _write(grid, MapOutputs(out, tags=model_tags("m.s2fin", "ab" * 32)), arr)
    with rasterio.open(out) as ds:
        assert ds.crs == grid.crs and ds.transform == grid.transform
        assert (ds.height, ds.width) == grid.shape
        assert ds.dtypes == ("uint8",) and ds.nodata == 0
        assert ds.profile["tiled"] and ds.compression is not None
        assert ds.colorinterp[0].name == "palette"
        cmap = ds.colormap(1)
        assert cmap[2] == (*CLASSES.classes[1].color, 255) and cmap[0][3] == 0
        assert ds.descriptions == (CLASS_BAND_DESCRIPTION,)
        tags = ds.tags()
        assert tags[TAG_MODEL] == "m.s2fin" and tags[TAG_MODEL_SHA256] == "ab" * 32
        assert ClassTable.from_json(json.loads(tags[CLASSES_TAG])) == CLASSES
        np.testing.assert_array_equal(ds.read(1), arr)
    qml = ET.parse(out.with_suffix(".qml")).getroot()
    labels = {e.get("value"): e.get("label") for e in qml.iter("paletteEntry")}
    assert labels == {str(c.id): c.name for c in CLASSES}
    # GDAL itself (subprocess: the system gdalinfo) sees the colour table, nodata, categories.
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(out)], check=True,
                                     capture_output=True, text=True).stdout)
    band = info["bands"][0]
    assert band["noDataValue"] == 0 and band["colorInterpretation"] == "Palette"
    assert band["colorTable"]["entries"][4][:3] == list(CLASSES.classes[2].color)
    assert band["categories"][1:5] == ["water", "trees & shrubs", "", "<roads>"]
    assert [r["f"][1] for r in info["rat"]["row"]] == [c.name for c in CLASSES]
    assert _files(tmp_path) == {"map.tif", "map.tif.aux.xml", "map.qml"}


def test_uint16_above_255_classes(tmp_path: Path) -> None:
    classes = ClassTable.from_ids([1, 7, 300])
    assert class_dtype(classes) == "uint16" and class_dtype(CLASSES) == "uint8"
    grid = utm_grid(width=20, height=10)
    arr = _class_array(grid, classes)
    _write(grid, MapOutputs(tmp_path / "m.tif"), arr, classes)
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.dtypes == ("uint16",)
        assert ds.colormap(1)[300][:3] == classes.classes[2].color
        np.testing.assert_array_equal(ds.read(1), arr)


def test_cog_output_is_valid_with_overviews(tmp_path: Path) -> None:
    grid = utm_grid(width=70, height=50)
    arr = _class_array(grid)
    out = tmp_path / "map.tif"
    outputs = MapOutputs(out, probabilities=tmp_path / "p.tif", confidence=tmp_path / "c.tif",
                         cog=True, creation_options={"BLOCKSIZE": "256", "TILED": "YES"})
    _write(grid, outputs, arr)
    for path in (out, tmp_path / "p.tif", tmp_path / "c.tif"):
        with rasterio.open(path) as ds:
            assert ds.overviews(1), path
            assert ds.crs == grid.crs and ds.transform == grid.transform
        text = subprocess.run(["gdalinfo", str(path)], check=True, capture_output=True,
                              text=True).stdout
        assert "LAYOUT=COG" in text
    with rasterio.open(out) as ds:
        assert ds.block_shapes == [(256, 256)]
        assert ds.colormap(1)[4][:3] == CLASSES.classes[2].color
        np.testing.assert_array_equal(ds.read(1), arr)
    assert not [n for n in _files(tmp_path) if "s2fin-tmp" in n or "stage" in n]


def test_probabilities_encoding_and_scale(tmp_path: Path) -> None:
    p = np.array([0.0, 1.0, 0.5, 1 / 3, np.nan], np.float32)
    enc = encode_probability(p)
    assert enc.tolist() == [0, 250, 125, 83, 255]
    np.testing.assert_allclose(decode_probability(enc)[:4], p[:4], atol=1 / 500)
    assert np.isnan(decode_probability(enc)[4])
    grid = utm_grid(width=10, height=8)
    arr = _class_array(grid)
    outputs = MapOutputs(tmp_path / "m.tif", probabilities=tmp_path / "p.tif",
                         confidence=tmp_path / "c.tif")
    _write(grid, outputs, arr, block=4)
    with rasterio.open(tmp_path / "p.tif") as ds:
        assert ds.count == len(CLASSES) and ds.nodata == 255 and ds.dtypes[0] == "uint8"
        assert ds.descriptions[1] == "P(trees & shrubs)"
        assert ds.tags(2)["class_id"] == "2"
        probs = ds.read(masked=True).astype(np.float64) * ds.scales[0] + ds.offsets[0]
        np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=len(CLASSES) / 500)
    with rasterio.open(tmp_path / "c.tif") as ds:
        assert ds.count == 1 and (ds.read(1) <= 250).all()


def test_error_midway_leaves_nothing(tmp_path: Path) -> None:
    grid = utm_grid(width=40, height=40)
    outputs = MapOutputs(tmp_path / "m.tif", probabilities=tmp_path / "p.tif", cog=True)
    with pytest.raises(RuntimeError, match="injected"):
        _write(grid, outputs, _class_array(grid), block=8, fail_after=3)
    assert _files(tmp_path) == set()


def test_existing_output_refused_and_overwrite_drops_stale_sidecar(tmp_path: Path) -> None:
    grid = utm_grid(width=8, height=8)
    out = tmp_path / "m.tif"
    out.write_bytes(b"old")
    with pytest.raises(OutputError, match="exists"):
        _write(grid, MapOutputs(out), _class_array(grid))
    assert out.read_bytes() == b"old"
    stale = tmp_path / "m.tif.ovr"
    stale.write_bytes(b"stale overviews of the old map")
    _write(grid, MapOutputs(out, overwrite=True), _class_array(grid))
    assert not stale.exists()
    with rasterio.open(out) as ds:
        assert ds.count == 1


def test_categories_are_written_without_osgeo(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "osgeo", None)  # import osgeo raises ImportError
    grid = utm_grid(width=8, height=8)
    _write(grid, MapOutputs(tmp_path / "m.tif"), _class_array(grid))
    assert _files(tmp_path) == {"m.tif", "m.tif.aux.xml", "m.qml"}
    with rasterio.open(tmp_path / "m.tif") as ds:
        assert ds.colormap(1)[1][:3] == CLASSES.classes[0].color
    info = json.loads(subprocess.run(["gdalinfo", "-json", str(tmp_path / "m.tif")], check=True,
                                     capture_output=True, text=True).stdout)
    assert info["bands"][0]["categories"][1:5] == ["water", "trees & shrubs", "", "<roads>"]


def test_overview_factors() -> None:
    assert overview_factors(40, 30) == [2]
    assert overview_factors(1024, 600) == [2, 4]
    assert overview_factors(5000, 5000)[-1] == 32
    assert overview_factors(1, 100) == []


def test_write_block_window_placement(tmp_path: Path) -> None:
    grid = utm_grid(width=6, height=5)
    with ClassMapWriter(grid, CLASSES, MapOutputs(tmp_path / "m.tif")) as writer:
        writer.write_block(Window(0, 0, 6, 5), np.zeros((5, 6), np.uint8))
        writer.write_block(Window(2, 1, 3, 2), np.full((2, 3), 4, np.uint8))
    with rasterio.open(tmp_path / "m.tif") as ds:
        data = ds.read(1)
    assert data.sum() == 4 * 6 and (data[1:3, 2:5] == 4).all()


def test_unstyled_output_and_encoded_writes(tmp_path: Path) -> None:
    """Part files of a sharded prediction: no .qml, no category sidecar; ``write_encoded``
    (what merge uses) writes what ``write_block`` writes."""
    grid = utm_grid(width=20, height=12)
    arr = _class_array(grid)
    probs = np.moveaxis(np.random.default_rng(2).dirichlet(np.ones(3), size=grid.shape), -1, 0)
    conf = probs.max(0)
    probs[:, arr == 0] = np.nan
    conf[arr == 0] = np.nan
    paths = {}
    for name, style in (("a", True), ("b", False)):
        outputs = MapOutputs(tmp_path / f"{name}.tif", probabilities=tmp_path / f"{name}p.tif",
                             confidence=tmp_path / f"{name}c.tif", style=style)
        with ClassMapWriter(grid, CLASSES, outputs) as writer:
            for window in iter_blocks(grid.height, grid.width, 8):
                rs, cs = window_slices(window)
                if style:
                    writer.write_block(window, arr[rs, cs], probs[:, rs, cs], conf[rs, cs])
                else:
                    writer.write_encoded(window, arr[rs, cs],
                                         encode_probability(probs[:, rs, cs]),
                                         encode_probability(conf[rs, cs]))
        paths[name] = outputs
    assert _files(tmp_path) == {"a.tif", "a.tif.aux.xml", "a.qml", "ap.tif", "ap.qml", "ac.tif",
                                "ac.qml", "b.tif", "bp.tif", "bc.tif"}
    for a, b in (("a.tif", "b.tif"), ("ap.tif", "bp.tif"), ("ac.tif", "bc.tif")):
        with rasterio.open(tmp_path / a) as x, rasterio.open(tmp_path / b) as y:
            assert np.array_equal(x.read(), y.read()) and x.tags() == y.tags()
