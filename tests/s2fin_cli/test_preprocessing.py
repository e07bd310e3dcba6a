"""Streamed normalisation statistics and PCA, fitted block by block on the training scene."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from s2fin_cli.io.reader import open_scene, open_stacked_scene
from s2fin_cli.io.writer import write_raster
from s2fin_cli.preprocessing import Preprocessor, fit_preprocessor
from tests.helpers import utm_grid, write_scene

GRID = utm_grid(37, 29)  # not a multiple of the block size: edge blocks are partial


def _scene_with_holes(tmp_path: Path) -> tuple[Path, np.ndarray]:
    holes = np.zeros(GRID.shape, bool)
    holes[3:9, 4:20] = True
    holes[25:, 30:] = True
    path = write_scene(tmp_path / "scene.tif", GRID, bands=7, aux_bands=2, seed=5,
                       nodata_pixels=holes)
    return path, holes


def test_streamed_statistics_equal_numpy_on_the_whole_array(tmp_path: Path) -> None:
    path, _ = _scene_with_holes(tmp_path)
    with open_stacked_scene(path) as scene:
        whole = scene.read(scene.grid.full_window())
        pre = fit_preprocessor(scene, 4, block_size=8, seed=0)  # 20 blocks
    for data, mean, std in ((whole.optical, pre.optical_mean, pre.optical_std),
                            (whole.aux, pre.aux_mean, pre.aux_std)):
        flat = data.reshape(data.shape[0], -1).astype(np.float64)
        np.testing.assert_allclose(mean, np.nanmean(flat, axis=1), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(std, np.nanstd(flat, axis=1), rtol=1e-5, atol=1e-6)


def test_nodata_never_enters_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    optical = rng.normal(1000, 50, size=(5, *GRID.shape)).round().astype(np.int16)
    dsm = rng.normal(20, 3, size=(1, *GRID.shape)).astype(np.float32)
    optical[:, :4, :] = -32768  # declared nodata: must not pull the mean down
    optical[2, 10, 10] = -32768  # one bad value in one band
    dsm[0, -3:, :] = -9999
    write_raster(tmp_path / "hsi.tif", optical, GRID, nodata=-32768)
    write_raster(tmp_path / "dsm.tif", dsm, GRID, nodata=-9999)
    with open_scene(tmp_path / "hsi.tif", tmp_path / "dsm.tif", "lidar") as scene:
        pre = fit_preprocessor(scene, 3, block_size=10, seed=0)
    valid = optical.astype(np.float64)
    valid[valid == -32768] = np.nan
    np.testing.assert_allclose(pre.optical_mean,
                               np.nanmean(valid.reshape(5, -1), axis=1), rtol=1e-6)
    assert pre.optical_mean.min() > 900
    np.testing.assert_allclose(pre.aux_mean, [dsm[0, :-3].mean()], rtol=1e-5)
    assert all(torch.isfinite(v).all() for v in pre.tensors().values())
    # Applying it: nodata becomes 0 (the training mean), never a large value.
    block = torch.from_numpy(np.where(valid == valid, valid, np.nan).astype(np.float32))
    z_opt, reduced, _ = pre.device_tensors(torch.device("cpu"))(
        block, torch.from_numpy(dsm))
    assert torch.all(z_opt[:, :4, :] == 0) and torch.isfinite(reduced).all()


def test_pca_components_orthonormal_deterministic_and_principal(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", GRID, bands=9, seed=2)
    with open_stacked_scene(path) as scene:
        a = fit_preprocessor(scene, 4, block_size=8, seed=7)
        b = fit_preprocessor(scene, 4, block_size=8, seed=7)
        capped = fit_preprocessor(scene, 50, block_size=16, seed=0)
        whole = scene.read(scene.grid.full_window()).optical
    c = a.pca_components.astype(np.float64)
    np.testing.assert_allclose(c @ c.T, np.eye(4), atol=1e-5)
    for name in ("pca_components", "pca_mean", "pca_explained", "optical_mean"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert capped.reduced_bands == 9  # capped at the band count
    assert np.all(np.diff(a.pca_explained) <= 1e-7) and a.pca_explained.sum() <= 1.0 + 1e-6
    # Every pixel was sampled (the scene is smaller than the sample): the axes are numpy's.
    z = (whole.reshape(9, -1).T - a.optical_mean) / a.optical_std
    values, vectors = np.linalg.eigh(np.cov(z, rowvar=False))
    top = vectors[:, np.argsort(values)[::-1][:4]].T
    np.testing.assert_allclose(np.abs(np.sum(top * c, axis=1)), 1.0, atol=1e-4)


def test_preprocessor_tensor_round_trip(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", GRID, bands=6, seed=1)
    with open_stacked_scene(path) as scene:
        pre = fit_preprocessor(scene, 3, block_size=8, seed=0)
    back = Preprocessor.from_tensors(pre.tensors())
    for name in ("optical_mean", "optical_std", "aux_mean", "pca_components", "pca_explained"):
        assert np.array_equal(getattr(pre, name), getattr(back, name))
