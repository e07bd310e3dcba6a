"""What an input holds, and whether several inputs fit together (``s2fin inspect``).

Each ``describe_*`` returns a JSON-ready dict; the CLI renders it as a table or prints it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from s2fin_cli.errors import InputError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.labels import VECTOR_SUFFIXES, read_vector_features
from s2fin_cli.io.reader import (
    TAG_AUX_BANDS,
    TAG_AUX_KIND,
    TAG_OPTICAL_BANDS,
    open_raster,
)

MODEL_SUFFIXES = (".s2fin", ".safetensors")


def describe_path(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in MODEL_SUFFIXES:
        from s2fin_cli.model_file import describe_model_file

        return describe_model_file(p)
    if suffix in VECTOR_SUFFIXES:
        return describe_vector(p)
    return describe_raster(p)


def describe_raster(path: Path) -> dict[str, Any]:
    with open_raster(path) as ds:
        grid = Grid.of(ds)
        tags = ds.tags()
        info: dict[str, Any] = {
            "kind": "raster",
            "path": str(path),
            "driver": ds.driver,
            "bands": ds.count,
            "dtypes": sorted(set(ds.dtypes)),
            "nodata": None if ds.nodata is None else float(ds.nodata),
            "grid": grid.describe(),
            "band_descriptions": [d or "" for d in ds.descriptions],
            "block_shapes": [list(s) for s in sorted(set(ds.block_shapes))],
            "compression": ds.compression.name if ds.compression else None,
        }
        if TAG_OPTICAL_BANDS in tags:
            info["stacked"] = {"optical_bands": tags[TAG_OPTICAL_BANDS],
                               "aux_bands": tags.get(TAG_AUX_BANDS),
                               "aux_kind": tags.get(TAG_AUX_KIND)}
        warnings = []
        if grid.crs is None:
            warnings.append("no CRS: only usable with an input of identical size")
        elif grid.is_geographic:
            warnings.append("geographic CRS (degrees): patch footprints vary with latitude")
        info["warnings"] = warnings
        return info


def describe_vector(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise InputError(f"{path} does not exist")
    features, crs = read_vector_features(path)
    fields = sorted({k for _, props in features for k in props})
    types = sorted({(g or {}).get("type", "none") for g, _ in features})
    return {
        "kind": "vector",
        "path": str(path),
        "features": len(features),
        "crs": crs.to_string() if crs is not None else None,
        "fields": fields,
        "geometry_types": types,
        "warnings": [] if features else ["no features"],
    }


def grid_of(info: dict[str, Any]) -> Grid | None:
    if info.get("kind") != "raster":
        return None
    from affine import Affine
    from rasterio.crs import CRS

    g = info["grid"]
    crs = CRS.from_user_input(g["crs"]) if g["crs"] else None
    return Grid(crs, Affine(*g["transform"]), g["width"], g["height"])


def alignment(reference: Grid, other: Grid) -> dict[str, Any]:
    """How ``other`` relates to the reference grid: same grid, resampled, or incompatible."""
    if other.same_as(reference):
        return {"status": "same grid", "ok": True}
    if reference.crs is None or other.crs is None:
        if reference.shape == other.shape:
            return {"status": "same size, CRS missing: taken as co-registered", "ok": True}
        return {"status": "cannot align: a CRS is missing and sizes differ", "ok": False}
    coverage = reference.coverage_by(other)
    if coverage <= 0:
        return {"status": "cannot align: no spatial overlap", "ok": False}
    reasons = []
    if other.crs != reference.crs:
        reasons.append(f"reprojected from {other.crs.to_string()}")
    if not np.allclose(other.resolution, reference.resolution, rtol=1e-6):
        reasons.append(f"resampled from {other.resolution[0]:.6g}x{other.resolution[1]:.6g}")
    if not reasons:
        reasons.append("shifted or cropped")
    return {"status": "aligned on the fly: " + ", ".join(reasons), "ok": True,
            "coverage": round(coverage, 4)}
