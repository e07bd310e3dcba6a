"""The one home of the tests' shared helpers (fixtures live in the conftest.py files and are
built from these): grids, the thread limiter, the tiny network config, stacked scenes written
with the package's own band tags, tiny model bundles, and the training data of the training
tests. Small enough that a whole-scene prediction takes a second on a 2-core CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS

from models import S2Fin, S2FinConfig
from s2fin_cli.classes import ClassTable
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import Scene, open_scene, open_stacked_scene
from s2fin_cli.io.stack import band_tags
from s2fin_cli.io.writer import write_raster
from s2fin_cli.model_file import ModalitySpec, ModelBundle, save_model_file
from s2fin_cli.preprocessing import fit_preprocessor
from s2fin_cli.training import NetworkOptions, TrainRequest, TrainSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real data lives beside the checkout and is never committed; tests that need it skip without it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

UTM32N = CRS.from_epsg(32632)


def utm_grid(width: int = 40, height: int = 30, res: float = 1.0,
             origin: tuple[float, float] = (660_000.0, 5_100_000.0)) -> Grid:
    """A grid in UTM zone 32N (around Trento) with square pixels of ``res`` metres."""
    return Grid(UTM32N, Affine(res, 0, origin[0], 0, -res, origin[1]), width, height)


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads (tiny models on a shared 2-core machine are many
    times faster single-threaded: the learning test took 11.8 s with two threads and 3.6 s with
    one), restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


TINY_NETWORK: dict[str, Any] = {
    "dim": 16, "heads": 2, "hfset_depth": 1, "spatial_depth": 1, "long_range_depth": 1,
    "ssm_heads": 2, "top_k": 4, "dropout": 0.0,
}


def tiny_config(bands: int = 6, aux_bands: int = 1, num_classes: int = 4, *,
                reduced_bands: int = 3, patch_size: int = 7, spectral_window: int = 3,
                **overrides: Any) -> S2FinConfig:
    """A small but complete S2FinConfig (every module on; dim 16, depth 1, 7x7 patches)."""
    return S2FinConfig(bands=bands, reduced_bands=reduced_bands, active_bands=aux_bands,
                       num_classes=num_classes, patch_size=patch_size,
                       spectral_window=spectral_window, **{**TINY_NETWORK, **overrides})


def scene_arrays(height: int, width: int, bands: int = 6, aux_bands: int = 1,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth-ish random optical and auxiliary float32 arrays (bands, height, width)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.sin(yy / 3.0)[None] + np.cos(xx / 4.0)[None]
    optical = (base * rng.normal(1.0, 0.3, size=(bands, 1, 1))
               + rng.normal(0, 0.5, size=(bands, height, width))).astype(np.float32)
    aux = (10 * base[:1] + rng.normal(0, 1.0, size=(aux_bands, height, width))).astype(np.float32)
    return optical, aux


def write_stacked(path: Path, optical: np.ndarray, aux: np.ndarray, grid: Grid, *,
                  aux_kind: str = "lidar", nodata: float | None = float("nan"),
                  overwrite: bool = False,
                  creation_options: dict[str, str] | None = None) -> Path:
    """A stacked scene (optical bands, then the auxiliary ones) as float32 GeoTIFF, tagged with
    the band tags ``s2fin stack`` writes."""
    tags = band_tags(optical.shape[0], aux.shape[0], aux_kind)
    return write_raster(path, np.concatenate([optical, aux]).astype(np.float32), grid,
                        nodata=nodata, tags=tags, overwrite=overwrite,
                        creation_options=creation_options)


def write_scene(path: Path, grid: Grid | None = None, *, bands: int = 6, aux_bands: int = 1,
                aux_kind: str = "lidar", seed: int = 0,
                nodata_pixels: np.ndarray | None = None, overwrite: bool = False,
                creation_options: dict[str, str] | None = None) -> Path:
    """A stacked scene of :func:`scene_arrays` (:func:`write_stacked`); ``nodata_pixels``
    (height, width) bool marks pixels whose every band is NaN (nodata)."""
    grid = grid or utm_grid()
    optical, aux = scene_arrays(grid.height, grid.width, bands, aux_bands, seed)
    if nodata_pixels is not None:
        optical[:, nodata_pixels] = np.nan
        aux[:, nodata_pixels] = np.nan
    return write_stacked(path, optical, aux, grid, aux_kind=aux_kind, overwrite=overwrite,
                         creation_options=creation_options)


def write_pair(directory: Path, grid: Grid | None = None, aux_grid: Grid | None = None, *,
               bands: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """Separate HSI and LiDAR rasters (the LiDAR may be on another grid)."""
    grid = grid or utm_grid()
    aux_grid = aux_grid or grid
    optical, _ = scene_arrays(grid.height, grid.width, bands, 1, seed)
    _, aux = scene_arrays(aux_grid.height, aux_grid.width, bands, 1, seed + 1)
    hsi = write_raster(directory / "hsi.tif", optical, grid)
    dsm = write_raster(directory / "dsm.tif", aux, aux_grid)
    return hsi, dsm


def open_pair(hsi: Path, dsm: Path) -> Scene:
    return open_scene(hsi, dsm, "lidar")


def tiny_bundle(scene: Scene | Path, *, num_classes: int = 4, class_ids: list[int] | None = None,
                seed: int = 0, logit_gain: float = 20.0, **config: Any) -> ModelBundle:
    """A ModelBundle for ``scene``: random tiny S2Fin, preprocessing fitted on the scene.

    ``logit_gain`` scales the classifier's last layer so a random network predicts varied
    classes (its default initialisation gives nearly uniform logits).
    """
    if isinstance(scene, Path):
        with open_stacked_scene(scene) as opened:
            return tiny_bundle(opened, num_classes=num_classes, class_ids=class_ids, seed=seed,
                               logit_gain=logit_gain, **config)
    cfg = tiny_config(scene.optical.count, scene.aux.count, num_classes, **config)
    torch.manual_seed(seed)
    model = S2Fin(cfg).eval()
    last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(logit_gain)
    pre = fit_preprocessor(scene, cfg.reduced_bands, seed=seed)
    ids = class_ids or list(range(1, num_classes + 1))
    names = {cid: f"class {chr(ord('A') + i)}" for i, cid in enumerate(ids)}
    classes = ClassTable.from_ids(ids, names)
    optical = ModalitySpec("optical", scene.optical.count, scene.optical.band_names,
                           _json_nodata(scene.optical.nodata))
    aux = ModalitySpec(scene.aux_kind, scene.aux.count, scene.aux.band_names,
                       _json_nodata(scene.aux.nodata))
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return ModelBundle(cfg, state, pre, classes, optical, aux, provenance={"seed": seed})


def _json_nodata(value: float | None) -> float | None:
    # The model file's JSON metadata cannot hold NaN (a NaN nodata is implied by NaN anyway).
    return None if value is None or not np.isfinite(value) else value


def save_tiny_model(path: Path, scene: Scene | Path, **kwargs: Any) -> Path:
    """:func:`tiny_bundle` written as a model file."""
    return save_model_file(path, tiny_bundle(scene, **kwargs))


# -- training --------------------------------------------------------------------------------

TRAINING_SIZE = 32


def make_training_data(directory: Path, *, seed: int = 0) -> dict[str, Path]:
    """A 32x32 stacked scene (6 bands + 1 LiDAR) with 3 classes in vertical stripes, sparse
    training labels and disjoint test labels."""
    size = TRAINING_SIZE
    grid = utm_grid(size, size)
    scene = write_scene(directory / "scene.tif", grid, bands=6, seed=seed)
    rows, cols = np.mgrid[0:size, 0:size]
    classes = (cols * 3 // size + 1).astype(np.uint8)
    train = np.where((rows % 3 == 0) & (cols % 3 == 0), classes, 0).astype(np.uint8)
    test = np.where((rows % 3 == 1) & (cols % 3 == 2), classes, 0).astype(np.uint8)
    write_raster(directory / "train.tif", train, grid, nodata=0)
    write_raster(directory / "test.tif", test, grid, nodata=0)
    return {"scene": scene, "labels": directory / "train.tif", "test": directory / "test.tif"}


def tiny_request(data: dict[str, Path], output: Path, **overrides: object) -> TrainRequest:
    """A fast request on :func:`make_training_data`; ``overrides`` may name TrainRequest or
    NetworkOptions fields."""
    # The default recipe (every element of TrainSettings and NetworkOptions), made small: few
    # epochs and steps, a tiny network, a height window that fits the 32 px scene.
    defaults, net_defaults = TrainSettings(), NetworkOptions()
    settings = dataclasses.replace(defaults, epochs=3, batch_size=16, warmup_epochs=1,
                                   patience=5, seed=0, min_steps=12)
    network_fields = {f.name for f in dataclasses.fields(NetworkOptions)}
    network = dataclasses.replace(net_defaults, patch_size=7, spectral_window=3, pca=3, dim=8,
                                  depth=1, height_window=min(net_defaults.height_window, 5))
    network = dataclasses.replace(network, **{k: v for k, v in overrides.items()  # type: ignore[arg-type]
                                              if k in network_fields})
    request = TrainRequest(
        labels=data["labels"], scene=data["scene"], test_labels=data["test"], output=output,
        val_fraction=0.25, split_block=8, network=network, settings=settings, device="cpu",
    )
    return dataclasses.replace(request, **{k: v for k, v in overrides.items()  # type: ignore[arg-type]
                                           if k not in network_fields})
