"""NaN, Inf and nodata in the inputs.

Decisions (documented in docs/reliability.md):

- NaN and Inf are invalid values: they never enter the training statistics; a pixel whose bands
  are all invalid in either modality is nodata (0) in the map, and labels on it are dropped with
  a warning.
- A scene that is nodata everywhere: ``train`` refuses it (5: no usable labelled pixel, all on
  scene nodata); ``predict`` writes an all-nodata map (exit 0; the report says 0 pixels
  classified), so a batch over many tiles does not fail on a tile outside the footprint.
- Nodata in a patch's halo is filled with the training mean: the centre is still classified.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch

from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.io.writer import write_raster
from s2fin_cli.model_file import load_model_file
from s2fin_cli.preprocessing import derive
from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    BANDS,
    PREDICT_FAST,
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    class_stripes,
    run_cli,
    snapshot,
)

GRID = utm_grid(SIZE, SIZE)


def _labels(d: Path) -> Path:
    """Every other pixel of every other row: enough samples, a short training."""
    labels = class_stripes()
    labels[1::2] = 0
    labels[:, 1::2] = 0
    return write_raster(d / "labels.tif", labels, GRID, nodata=0)


def _map(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_nan_and_inf_are_invalid_values(tmp_path: Path) -> None:
    optical, aux = scene_arrays(SIZE, SIZE, BANDS, 1, seed=31)
    optical += class_stripes()[None].astype(np.float32)
    rng = np.random.default_rng(0)
    # Isolated bad values in single bands: the pixel keeps its other bands.
    for value in (np.nan, np.inf, -np.inf):
        b = rng.integers(0, BANDS, 20)
        r, c = rng.integers(0, SIZE, 20), rng.integers(0, SIZE, 20)
        optical[b, r, c] = value
    # Whole pixels without data: all optical bands NaN, all Inf, or a mix; the LiDAR missing.
    optical[:, 3, 3] = np.nan
    optical[:, 4, 10] = np.inf
    optical[::2, 20, 20] = -np.inf
    optical[1::2, 20, 20] = np.nan
    aux[:, 12, 7] = np.nan
    aux[:, 13, 7] = np.inf
    nodata = np.zeros((SIZE, SIZE), bool)
    nodata[[3, 4, 20, 12, 13], [3, 10, 20, 7, 7]] = True  # labelled: (4, 10), (20, 20)
    scene = write_stacked(tmp_path / "dirty.tif", optical, aux, GRID)
    labels = _labels(tmp_path)
    model = tmp_path / "dirty.s2fin"
    result = run_cli(["train", scene, "--labels", labels, "-o", model, *TINY_TRAIN],
                     cwd=tmp_path)
    assert_ok(result)
    assert "warning: dropped 2 labelled pixel(s) where the scene is nodata" in result.stderr

    # The statistics are those of the finite values only.
    pre = load_model_file(model).preprocessor
    finite = np.where(np.isfinite(optical), optical, np.nan).reshape(BANDS, -1)
    np.testing.assert_allclose(pre.optical_mean, np.nanmean(finite, axis=1), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(pre.optical_std, np.nanstd(finite, axis=1), rtol=1e-4)
    # The LiDAR band is the DSM, which the network sees as its height above ground: that
    # channel's statistics are those of the heights where the DSM is finite.
    assert pre.raw_aux_bands == 1 and pre.height_channel == 0
    with open_stacked_scene(scene) as opened:
        block = opened.read(opened.grid.full_window(), pre.context)
    height = derive(torch.from_numpy(block.aux), pre.derived)[0].numpy()
    assert np.isnan(height[12, 7]) and np.isnan(height[13, 7])
    assert np.isfinite(height).sum() == SIZE * SIZE - 2
    np.testing.assert_allclose(pre.aux_mean[:1], [np.nanmean(height)], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pre.aux_std[:1], [np.nanstd(height)], rtol=1e-3)
    assert all(bool(v.isfinite().all()) for v in pre.tensors().values())

    out = tmp_path / "dirty.classes.tif"
    result = run_cli(["predict", scene, "-m", model, "--json", *PREDICT_FAST], cwd=tmp_path)
    assert_ok(result)
    classes = _map(out)
    np.testing.assert_array_equal(classes == 0, nodata)
    assert np.isin(classes[~nodata], [1, 2, 3]).all()
    assert json.loads(result.stdout)["scenes"][0]["nodata"] == int(nodata.sum())


def _nodata_scene(d: Path) -> Path:
    optical = np.full((BANDS, SIZE, SIZE), np.nan, np.float32)
    aux = np.full((1, SIZE, SIZE), np.nan, np.float32)
    return write_stacked(d / "empty.tif", optical, aux, GRID)


def test_train_on_a_scene_without_data_is_a_label_error(tiny: TinyData, tmp_path: Path,
                                                       out_dir: Path) -> None:
    scene = _nodata_scene(tmp_path)
    before = snapshot(tmp_path)
    result = run_cli(["train", scene, "--labels", tiny.labels, "-o", out_dir / "m.s2fin",
                      *TINY_TRAIN], cwd=tmp_path)
    assert_user_error(result, 5, match="all on scene nodata")
    assert_nothing_new(before, tmp_path)


def test_predict_on_a_scene_without_data_writes_an_all_nodata_map(tiny: TinyData,
                                                                  tmp_path: Path) -> None:
    scene = _nodata_scene(tmp_path)
    out = tmp_path / "empty.classes.tif"
    result = run_cli(["predict", scene, "-m", tiny.model, "--json", *PREDICT_FAST],
                     cwd=tmp_path)
    assert_ok(result)
    report = json.loads(result.stdout)["scenes"][0]
    assert report["classified"] == 0 and report["nodata"] == SIZE * SIZE
    assert (_map(out) == 0).all()
    with rasterio.open(out) as ds:
        assert ds.nodata == 0


def test_nodata_in_the_halo(tiny: TinyData, tmp_path: Path) -> None:
    """A nodata ring of 2 pixels: the pixels next to it have nodata in their patches (halo 3)
    and are classified; the ring is nodata in the map."""
    optical, aux = scene_arrays(SIZE, SIZE, BANDS, 1, seed=3)
    optical += class_stripes()[None].astype(np.float32)
    ring = np.ones((SIZE, SIZE), bool)
    ring[2:-2, 2:-2] = False
    optical[:, ring] = np.nan
    aux[:, ring] = np.nan
    # A nodata hole inside as well: its neighbours have nodata in the middle of the halo.
    optical[:, 10:12, 10:12] = np.nan
    hole = np.zeros_like(ring)
    hole[10:12, 10:12] = True
    scene = write_stacked(tmp_path / "ring.tif", optical, aux, GRID)
    out = tmp_path / "ring.classes.tif"
    result = run_cli(["predict", scene, "-m", tiny.model, *PREDICT_FAST, "--block-size", "8"],
                     cwd=tmp_path)
    assert_ok(result)
    classes = _map(out)
    np.testing.assert_array_equal(classes == 0, ring | hole)
    assert np.isin(classes[~(ring | hole)], [1, 2, 3]).all()
