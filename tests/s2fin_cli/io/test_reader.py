from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import xy
from rasterio.warp import transform as warp_transform
from rasterio.windows import Window

from s2fin_cli.errors import AlignmentError, InputError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import open_scene, open_stacked_scene, valid_mask
from s2fin_cli.io.stack import write_stack
from s2fin_cli.io.writer import write_raster
from tests.helpers import utm_grid


def _hsi(grid: Grid, bands: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(bands, *grid.shape)).astype(np.float32)


def _write_pair(tmp_path: Path, grid: Grid, aux_grid: Grid | None = None,
                nodata: float | None = None) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    hsi = _hsi(grid)
    aux_grid = aux_grid or grid
    dsm = np.arange(aux_grid.height * aux_grid.width, dtype=np.float32).reshape(
        1, *aux_grid.shape)
    hsi_path = write_raster(tmp_path / "hsi.tif", hsi, grid, nodata=nodata)
    dsm_path = write_raster(tmp_path / "dsm.tif", dsm, aux_grid)
    return hsi_path, dsm_path, hsi, dsm


def test_coregistered_scene_reads_exact_values(tmp_path: Path, grid: Grid) -> None:
    hsi_path, dsm_path, hsi, dsm = _write_pair(tmp_path, grid)
    with open_scene(hsi_path, dsm_path, "lidar") as scene:
        assert scene.grid.same_as(grid)
        assert not scene.aux_warped
        assert (scene.optical.count, scene.aux.count) == (5, 1)
        block = scene.read(Window(3, 4, 10, 7))
        np.testing.assert_array_equal(block.optical, hsi[:, 4:11, 3:13])
        np.testing.assert_array_equal(block.aux, dsm[:, 4:11, 3:13])


@pytest.mark.parametrize("halo", [1, 5, 12])
def test_halo_reads_reflect_at_every_border_and_corner(tmp_path: Path, grid: Grid,
                                                       halo: int) -> None:
    hsi_path, dsm_path, hsi, _ = _write_pair(tmp_path, grid)
    padded = np.pad(hsi, ((0, 0), (halo, halo), (halo, halo)), mode="reflect")
    h, w = grid.shape
    windows = [Window(0, 0, 8, 8), Window(w - 8, 0, 8, 8), Window(0, h - 8, 8, 8),
               Window(w - 8, h - 8, 8, 8), Window(10, 0, 8, 8), Window(10, h - 8, 8, 8),
               Window(0, 10, 8, 8), Window(w - 8, 10, 8, 8), Window(15, 12, 8, 8),
               Window(0, 0, w, h)]
    with open_scene(hsi_path, dsm_path, "lidar") as scene:
        for win in windows:
            block = scene.read(win, halo=halo)
            r, c = int(win.row_off), int(win.col_off)
            expected = padded[:, r:r + int(win.height) + 2 * halo,
                              c:c + int(win.width) + 2 * halo]
            np.testing.assert_array_equal(block.optical, expected, err_msg=str(win))


def test_scene_smaller_than_halo_still_reads(tmp_path: Path) -> None:
    tiny = utm_grid(width=3, height=2)
    hsi_path, dsm_path, hsi, _ = _write_pair(tmp_path, tiny)
    with open_scene(hsi_path, dsm_path, "lidar") as scene:
        block = scene.read(Window(0, 0, 3, 2), halo=5)
    assert block.optical.shape == (5, 12, 13)
    np.testing.assert_array_equal(block.optical[:, 5:7, 5:8], hsi)
    assert set(np.unique(block.optical)) <= set(np.unique(hsi))


def test_nodata_becomes_nan_and_masks_pixels(tmp_path: Path, grid: Grid) -> None:
    hsi = _hsi(grid)
    hsi[:, 2, 3] = -9999.0  # a whole pixel is nodata
    hsi[1, 5, 5] = -9999.0  # one bad value in one band: the pixel stays valid
    hsi_path = write_raster(tmp_path / "hsi.tif", hsi, grid, nodata=-9999.0)
    dsm = np.ones((1, *grid.shape), np.float32)
    dsm[0, 7, 8] = np.nan
    dsm_path = write_raster(tmp_path / "dsm.tif", dsm, grid, nodata=float("nan"))
    with open_scene(hsi_path, dsm_path, "lidar") as scene:
        block = scene.read(grid.full_window())
    assert np.isnan(block.optical[:, 2, 3]).all()
    assert np.isnan(block.optical[1, 5, 5]) and np.isfinite(block.optical[0, 5, 5])
    valid = block.valid
    assert not valid[2, 3] and not valid[7, 8] and valid[5, 5]
    assert valid.sum() == grid.width * grid.height - 2
    assert valid_mask(block.optical)[7, 8]


def test_lidar_in_other_crs_and_resolution_is_aligned_to_a_known_pattern(tmp_path: Path) -> None:
    grid = utm_grid(width=60, height=50, res=2.0)
    # The LiDAR covers a larger area in Web Mercator at ~1.3 m pixels. Its values are a plane in
    # UTM coordinates, so bilinear resampling must reproduce the plane at the HSI pixel centres.
    west, south, east, north = grid.bounds
    xs, ys = warp_transform(grid.crs, CRS.from_epsg(3857), [west - 30, east + 30],
                            [south - 30, north + 30])
    res = 1.3
    width = int((max(xs) - min(xs)) / res)
    height = int((max(ys) - min(ys)) / res)
    merc = Grid(CRS.from_epsg(3857), Affine(res, 0, min(xs), 0, -res, max(ys)), width, height)
    cols, rows = np.meshgrid(np.arange(width), np.arange(height))
    mx, my = xy(merc.transform, rows.ravel(), cols.ravel())
    ux, uy = warp_transform(merc.crs, grid.crs, mx, my)

    def plane(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return 0.05 * (x - west) - 0.03 * (y - south) + 100.0

    dsm = plane(np.asarray(ux), np.asarray(uy)).reshape(1, height, width).astype(np.float32)
    write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    write_raster(tmp_path / "dsm.tif", dsm, merc, nodata=-9999.0)
    with open_scene(tmp_path / "hsi.tif", tmp_path / "dsm.tif", "lidar") as scene:
        assert scene.aux_warped
        assert any("aligned" in n for n in scene.notes)
        block = scene.read(grid.full_window())
    hc, hr = np.meshgrid(np.arange(grid.width), np.arange(grid.height))
    gx, gy = xy(grid.transform, hr.ravel(), hc.ravel())
    expected = plane(np.asarray(gx), np.asarray(gy)).reshape(grid.shape)
    assert block.aux.shape == (1, *grid.shape)
    np.testing.assert_allclose(block.aux[0], expected, atol=0.02)


def test_partial_overlap_leaves_nodata_outside(tmp_path: Path) -> None:
    grid = utm_grid(width=20, height=20)
    shifted = utm_grid(width=20, height=20, origin=(660_010.0, 5_100_000.0))
    write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    write_raster(tmp_path / "dsm.tif", np.ones((1, 20, 20), np.float32), shifted)
    with open_scene(tmp_path / "hsi.tif", tmp_path / "dsm.tif", "lidar") as scene:
        block = scene.read(grid.full_window())
        assert any("covers 50.0 %" in n for n in scene.notes)
    assert np.isnan(block.aux[0, :, :10]).all() and (block.aux[0, :, 10:] == 1).all()


def test_no_overlap_is_refused(tmp_path: Path) -> None:
    grid = utm_grid()
    far = utm_grid(origin=(700_000.0, 5_000_000.0))
    write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    write_raster(tmp_path / "dsm.tif", np.ones((1, *far.shape), np.float32), far)
    with pytest.raises(AlignmentError, match="does not overlap"):
        open_scene(tmp_path / "hsi.tif", tmp_path / "dsm.tif", "lidar")


def test_missing_crs_needs_identical_size(tmp_path: Path, grid: Grid) -> None:
    # A pixel grid without CRS, as .mat-derived rasters have (not the identity: GDAL drops it).
    bare = Grid(None, Affine(1, 0, 0, 0, -1, 0), grid.width, grid.height)
    bare_small = Grid(None, Affine(1, 0, 0, 0, -1, 0), grid.width - 1, grid.height)
    write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    write_raster(tmp_path / "dsm.tif", np.ones((1, *bare.shape), np.float32), bare)
    write_raster(tmp_path / "small.tif", np.ones((1, *bare_small.shape), np.float32), bare_small)
    with open_scene(tmp_path / "hsi.tif", tmp_path / "dsm.tif", "lidar") as scene:
        assert not scene.aux_warped
    with pytest.raises(AlignmentError, match="no CRS"):
        open_scene(tmp_path / "hsi.tif", tmp_path / "small.tif", "lidar")


def test_missing_and_non_raster_inputs(tmp_path: Path, grid: Grid) -> None:
    write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    (tmp_path / "junk.tif").write_text("not a raster")
    with pytest.raises(InputError, match="does not exist"):
        open_scene(tmp_path / "hsi.tif", tmp_path / "nope.tif", "lidar")
    with pytest.raises(InputError, match="not a readable raster"):
        open_scene(tmp_path / "hsi.tif", tmp_path / "junk.tif", "lidar")
    with pytest.raises(InputError, match="directory"):
        open_scene(tmp_path, tmp_path / "hsi.tif", "lidar")


@pytest.mark.parametrize("suffix", [".tif", ".vrt"])
def test_stacked_scene_reads_like_the_pair(tmp_path: Path, grid: Grid, suffix: str) -> None:
    hsi_path, dsm_path, _, _ = _write_pair(tmp_path, grid)
    with open_scene(hsi_path, dsm_path, "lidar") as scene:
        out = write_stack(scene, tmp_path / f"scene{suffix}")
    with open_stacked_scene(out) as stacked:
        assert stacked.aux_kind == "lidar"
        assert (stacked.optical.count, stacked.aux.count) == (5, 1)
        block = stacked.read(Window(2, 3, 9, 9), halo=3)
    with open_scene(hsi_path, dsm_path, "lidar") as scene:
        expected = scene.read(Window(2, 3, 9, 9), halo=3)
    np.testing.assert_array_equal(block.optical, expected.optical)
    np.testing.assert_array_equal(block.aux, expected.aux)


def test_stack_of_a_resampled_pair_must_be_geotiff(tmp_path: Path) -> None:
    grid = utm_grid(width=20, height=20)
    coarse = utm_grid(width=10, height=10, res=2.0)
    write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    write_raster(tmp_path / "dsm.tif", np.ones((1, 10, 10), np.float32), coarse)
    with open_scene(tmp_path / "hsi.tif", tmp_path / "dsm.tif", "lidar") as scene:
        with pytest.raises(AlignmentError, match="VRT"):
            write_stack(scene, tmp_path / "scene.vrt")
        write_stack(scene, tmp_path / "scene.tif")
    assert not (tmp_path / "scene.vrt").exists()
    with open_stacked_scene(tmp_path / "scene.tif") as stacked:
        assert stacked.optical.dtype == "float32"
        np.testing.assert_allclose(stacked.read(grid.full_window()).aux, 1.0)


def test_untagged_raster_needs_aux_band_count(tmp_path: Path, grid: Grid) -> None:
    write_raster(tmp_path / "plain.tif", _hsi(grid, bands=6), grid)
    with pytest.raises(InputError, match="--aux-bands"):
        open_stacked_scene(tmp_path / "plain.tif")
    with open_stacked_scene(tmp_path / "plain.tif", aux_bands=2) as scene:
        assert (scene.optical.count, scene.aux.count) == (4, 2)


def test_real_sen1floods11_chip_reports_geographic_crs(shared_data: Path) -> None:
    chip = shared_data / "sen1floods11_sample"
    with open_scene(chip / "Spain_7370579_S2Hand.tif", chip / "Spain_7370579_S1Hand.tif",
                    "sar") as scene:
        assert scene.grid.is_geographic
        assert any("geographic" in n for n in scene.notes)
        assert (scene.optical.count, scene.aux.count) == (13, 2)
        assert scene.aux.band_names == ("VV", "VH")
        block = scene.read(Window(100, 100, 32, 32), halo=5)
    assert block.optical.shape == (13, 42, 42) and block.aux.shape == (2, 42, 42)
    assert np.isfinite(block.aux).mean() > 0.5


def test_gdal_scale_offset_applied_after_nodata_and_value_summary(tmp_path: Path,
                                                                  grid: Grid) -> None:
    import rasterio

    raw = np.random.default_rng(3).integers(0, 1000, (2, *grid.shape)).astype(np.int16)
    raw[:, 0, 0] = -1  # nodata: masked on the raw value, before scaling
    path = write_raster(tmp_path / "hsi.tif", raw, grid, nodata=-1)
    with rasterio.open(path, "r+") as ds:
        ds.scales = (0.5, 2.0)
        ds.offsets = (10.0, 0.0)
    dsm = write_raster(tmp_path / "dsm.tif", np.ones((1, *grid.shape), np.float32), grid)
    with open_scene(path, dsm, "lidar") as scene:
        assert scene.optical.scaled and scene.optical.scales == (0.5, 2.0)
        block = scene.read(grid.full_window())
        summary = scene.value_summary(max_pixels=grid.width * grid.height)
    expected = raw.astype(np.float32) * np.array([0.5, 2.0], np.float32)[:, None, None]
    expected += np.array([10.0, 0.0], np.float32)[:, None, None]
    expected[:, 0, 0] = np.nan
    np.testing.assert_array_equal(block.optical, expected)
    valid = expected[:, ~np.isnan(expected[0])]
    assert [b["min"] for b in summary["optical"]] == pytest.approx(valid.min(axis=1))
    assert [b["mean"] for b in summary["optical"]] == pytest.approx(valid.mean(axis=1))
    assert summary["aux"][0]["std"] == 0.0 and summary["aux"][0]["valid"] == 1.0


def test_complex_bands_are_refused(tmp_path: Path, grid: Grid) -> None:
    hsi = write_raster(tmp_path / "hsi.tif", _hsi(grid), grid)
    slc = write_raster(tmp_path / "slc.tif", np.ones((1, *grid.shape), np.complex64), grid,
                       creation_options={"PREDICTOR": "1"})
    with pytest.raises(InputError, match="complex"):
        open_scene(hsi, slc, "sar")
