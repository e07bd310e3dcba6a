"""Fixtures of the reliability matrix: one tiny scene and ONE tiny model per session (the
harness that drives the CLI is :mod:`tests.reliability.harness`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s2fin_cli.io.writer import write_raster
from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    BANDS,
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_ok,
    class_stripes,
    run_cli,
)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyData:
    root = tmp_path_factory.mktemp("reliability")
    grid = utm_grid(SIZE, SIZE)
    optical, aux = scene_arrays(SIZE, SIZE, BANDS, 1, seed=3)
    stripes = class_stripes()
    optical = optical + stripes[None].astype(np.float32)  # learnable classes
    scene = write_stacked(root / "scene.tif", optical, aux, grid)
    hsi = write_raster(root / "hsi.tif", optical, grid)
    lidar = write_raster(root / "lidar.tif", aux, grid)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    train = np.where((rows % 2 == 0) & (cols % 2 == 0), stripes, 0).astype(np.uint8)
    test = np.where((rows % 2 == 1) & (cols % 2 == 1), stripes, 0).astype(np.uint8)
    labels = write_raster(root / "train.tif", train, grid, nodata=0)
    test_labels = write_raster(root / "test.tif", test, grid, nodata=0)
    model = root / "model.s2fin"
    result = run_cli(["train", scene, "--labels", labels, "-o", model, *TINY_TRAIN], cwd=root)
    assert_ok(result)
    (root / "model.s2fin.report.json").unlink(missing_ok=True)
    return TinyData(root, scene, hsi, lidar, labels, test_labels, model)


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d
