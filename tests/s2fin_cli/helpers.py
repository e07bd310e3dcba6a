"""Shared test helpers: tiny stacked scenes and tiny model bundles (random S2Fin + fitted
preprocessing), small enough that a whole-scene prediction takes a second on a 2-core CPU."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import S2Fin, S2FinConfig
from s2fin_cli.classes import ClassTable
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import (
    TAG_AUX_BANDS,
    TAG_AUX_KIND,
    TAG_OPTICAL_BANDS,
    Scene,
    open_scene,
    open_stacked_scene,
)
from s2fin_cli.io.writer import write_raster
from s2fin_cli.model_file import ModalitySpec, ModelBundle, save_model_file
from s2fin_cli.preprocessing import fit_preprocessor
from tests.conftest import utm_grid

TINY_NETWORK: dict[str, Any] = {
    "dim": 16, "heads": 2, "hfset_depth": 1, "spatial_depth": 1, "long_range_depth": 1,
    "ssm_heads": 2, "top_k": 4, "dropout": 0.0,
}


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch with ``n`` intra-op threads (tiny models on a shared 2-core machine are many
    times faster single-threaded), restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tiny_config(bands: int = 6, aux_bands: int = 1, num_classes: int = 4, *,
                reduced_bands: int = 3, patch_size: int = 7, spectral_window: int = 3,
                **overrides: Any) -> S2FinConfig:
    """A small S2FinConfig (dim 16, depth 1, 7x7 patches) for fast tests."""
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


def write_scene(path: Path, grid: Grid | None = None, *, bands: int = 6, aux_bands: int = 1,
                aux_kind: str = "lidar", seed: int = 0,
                nodata_pixels: np.ndarray | None = None, overwrite: bool = False,
                creation_options: dict[str, str] | None = None) -> Path:
    """A stacked scene (optical bands, then aux bands, with s2fin's band tags) as float32 GeoTIFF.

    ``nodata_pixels`` (height, width) bool marks pixels whose every band is NaN (nodata).
    """
    grid = grid or utm_grid()
    optical, aux = scene_arrays(grid.height, grid.width, bands, aux_bands, seed)
    data = np.concatenate([optical, aux])
    if nodata_pixels is not None:
        data[:, nodata_pixels] = np.nan
    tags = {TAG_OPTICAL_BANDS: f"1-{bands}", TAG_AUX_BANDS: f"{bands + 1}-{bands + aux_bands}",
            TAG_AUX_KIND: aux_kind}
    return write_raster(path, data, grid, nodata=float("nan"), tags=tags, overwrite=overwrite,
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
    return ModelBundle(cfg, state, pre, classes, optical, aux, provenance={"test": True})


def _json_nodata(value: float | None) -> float | None:
    # The model file's JSON metadata cannot hold NaN (a NaN nodata is implied by NaN anyway).
    return None if value is None or not np.isfinite(value) else value


def save_tiny_model(path: Path, scene: Scene | Path, **kwargs: Any) -> Path:
    """:func:`tiny_bundle` written as a model file."""
    return save_model_file(path, tiny_bundle(scene, **kwargs))


def open_pair(hsi: Path, dsm: Path) -> Scene:
    return open_scene(hsi, dsm, "lidar")
