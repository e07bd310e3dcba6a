"""Bad and unusual input rasters: missing, a directory, not a raster, corrupt, tiny, very wide."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    PREDICT_FAST,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    class_stripes,
    run_cli,
    snapshot,
)


def _missing(d: Path, source: Path) -> Path:
    return d / "does-not-exist.tif"


def _directory(d: Path, source: Path) -> Path:
    p = d / "a-directory.tif"
    p.mkdir()
    return p


def _text(d: Path, source: Path) -> Path:
    p = d / "notes.tif"
    p.write_text("this is not a GeoTIFF\n" * 50, encoding="utf-8")
    return p


def _cut_in_half(d: Path, source: Path) -> Path:
    data = source.read_bytes()
    p = d / f"truncated-{source.name}"
    p.write_bytes(data[: len(data) // 2])
    return p


def _flipped_tile(d: Path, source: Path) -> Path:
    """``source`` with bytes flipped in the middle of its (DEFLATE) tile: the header and the
    directory are intact, so it opens, and decompression fails on read."""
    p = d / f"corrupt-tile-{source.name}"
    p.write_bytes(source.read_bytes())
    with rasterio.open(p) as ds:
        offset = int(ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_0_0", "TIFF", bidx=1))
    data = bytearray(p.read_bytes())
    # A few flipped bytes can still inflate (to garbage); 512 break the DEFLATE stream.
    middle = offset + size // 2
    for i in range(middle - 256, middle + 256):
        data[i] ^= 0xFF
    p.write_bytes(bytes(data))
    return p


BAD_INPUTS: dict[str, Callable[[Path, Path], Path]] = {
    "missing": _missing,
    "directory": _directory,
    "not-a-raster": _text,
    "truncated": _cut_in_half,
    "corrupt-tile": _flipped_tile,
}


# Train opens the scene as predict does; it runs where its path differs: Typer's own checks of
# its arguments (missing, directory) and the reads of statistics and samples (corrupt tile).
@pytest.mark.parametrize(("case", "command"), [
    *((case, "predict") for case in BAD_INPUTS),
    ("missing", "train"), ("directory", "train"), ("corrupt-tile", "train")])
def test_bad_scene_is_an_input_error(case: str, command: str, tiny: TinyData,
                                     tmp_path: Path, out_dir: Path) -> None:
    bad = BAD_INPUTS[case](tmp_path, tiny.scene)
    before = snapshot(tmp_path)
    if command == "predict":
        args = ["predict", bad, "-m", tiny.model, "-o", out_dir / "map.tif", *PREDICT_FAST]
    else:
        args = ["train", bad, "--labels", tiny.labels, "-o", out_dir / "m.s2fin", *TINY_TRAIN]
    result = run_cli(args, cwd=tmp_path)
    assert_user_error(result, 3, match=bad.name)
    assert_nothing_new(before, tmp_path)


@pytest.mark.parametrize(("which", "case"), [("hsi", "missing"), ("hsi", "not-a-raster"),
                                           ("lidar", "directory"), ("lidar", "corrupt-tile")])
def test_bad_hsi_or_lidar_is_an_input_error(which: str, case: str, tiny: TinyData,
                                            tmp_path: Path, out_dir: Path) -> None:
    inputs = {"hsi": tiny.hsi, "lidar": tiny.lidar}
    bad = inputs[which] = BAD_INPUTS[case](tmp_path, inputs[which])
    before = snapshot(tmp_path)
    result = run_cli(["predict", "--hsi", inputs["hsi"], "--lidar", inputs["lidar"], "-m",
                      tiny.model, "-o", out_dir / "map.tif", *PREDICT_FAST], cwd=tmp_path)
    assert_user_error(result, 3, match=bad.name)
    assert_nothing_new(before, tmp_path)


@pytest.mark.parametrize("case", ["directory", "not-a-raster", "truncated"])
def test_bad_labels_are_an_input_error(case: str, tiny: TinyData, tmp_path: Path,
                                       out_dir: Path) -> None:
    bad = BAD_INPUTS[case](tmp_path, tiny.labels)
    before = snapshot(tmp_path)
    result = run_cli(["train", tiny.scene, "--labels", bad, "-o", out_dir / "m.s2fin",
                      *TINY_TRAIN], cwd=tmp_path)
    assert_user_error(result, 3, match=bad.name)
    assert_nothing_new(before, tmp_path)


def test_one_pixel_scene_gives_a_one_pixel_map(tiny: TinyData, tmp_path: Path) -> None:
    grid = utm_grid(1, 1)
    optical, aux = scene_arrays(1, 1, 8, 1, seed=5)
    scene = write_stacked(tmp_path / "pixel.tif", optical, aux, grid)
    out = tmp_path / "pixel.classes.tif"
    result = run_cli(["predict", scene, "-m", tiny.model, "--json", *PREDICT_FAST],
                     cwd=tmp_path)
    assert_ok(result)
    report = json.loads(result.stdout)["scenes"][0]
    assert report["pixels"] == 1 and report["classified"] == 1
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height, ds.count) == (1, 1, 1)
        value = int(ds.read(1)[0, 0])
    assert value in (1, 2, 3)
    assert not list(tmp_path.glob("*.s2fin-tmp-*"))


def test_three_hundred_bands_train_and_predict(tmp_path: Path) -> None:
    size, bands = 24, 300
    grid = utm_grid(size, size)
    optical, aux = scene_arrays(size, size, bands, 1, seed=7)
    stripes = class_stripes(size)
    optical += stripes[None].astype(np.float32)
    scene = write_stacked(tmp_path / "wide.tif", optical, aux, grid)
    rows, cols = np.mgrid[0:size, 0:size]
    labels = np.where((rows % 2 == 0) & (cols % 2 == 0), stripes, 0).astype(np.uint8)
    from s2fin_cli.io.writer import write_raster

    write_raster(tmp_path / "labels.tif", labels, grid, nodata=0)
    model = tmp_path / "wide.s2fin"
    assert_ok(run_cli(["train", scene, "--labels", tmp_path / "labels.tif", "-o", model,
                       *TINY_TRAIN], cwd=tmp_path))
    result = run_cli(["predict", scene, "-m", model, "--json", *PREDICT_FAST], cwd=tmp_path)
    assert_ok(result)
    report = json.loads(result.stdout)["scenes"][0]
    assert report["classified"] == size * size
    with rasterio.open(tmp_path / "wide.classes.tif") as ds:
        assert (ds.width, ds.height) == (size, size)
        assert set(np.unique(ds.read(1)).tolist()) <= {1, 2, 3}
