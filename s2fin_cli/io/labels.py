"""Labels on the scene grid, from a raster or from vectors.

- Raster labels: integer classes, 0 = unlabeled (negative values and the nodata value count as
  unlabeled too). Another grid is aligned with nearest-neighbour resampling, never bilinear.
- Vector labels: GeoJSON (read directly), Shapefile, GeoPackage and anything else OGR opens
  (through osgeo.ogr). ``--label-field`` holds integer ids or names; names become ids 1..N in
  sorted order and are kept. Geometries are made valid (with a warning), reprojected to the grid
  CRS and rasterized per block, so memory follows the block, never the scene.

Class names travel with labels: a label raster written by s2fin carries its class table in the
``S2FIN_CLASSES`` tag; vector names come from the field.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import InputError, LabelError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import align_to_grid, open_raster
from s2fin_cli.io.windows import iter_blocks
from s2fin_cli.io.writer import CLASSES_TAG

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".sqlite")
# Fields tried, in order, when --label-field is not given.
DEFAULT_FIELDS = ("class", "class_id", "classid", "label", "label_id", "id_class", "landcover")
MAX_CLASS_ID = 65535


@dataclass
class LabelPoints:
    """Labelled pixels as coordinates: what training samples from (memory ~ labelled pixels)."""

    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    classes: np.ndarray  # int64, >= 1

    def __len__(self) -> int:
        return int(self.rows.size)

    def counts(self) -> dict[int, int]:
        ids, counts = np.unique(self.classes, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts, strict=True)}


class LabelSource:
    """Labels on a grid, read block by block. Use :func:`open_labels`."""

    def __init__(self, path: Path, grid: Grid, classes: ClassTable | None) -> None:
        self.path = path
        self.grid = grid
        # None until known: raster labels without a class table learn their ids while reading.
        self.named_classes = classes

    def read(self, window: Window) -> np.ndarray:
        """(rows, cols) uint16 labels of ``window``; 0 = unlabeled."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> LabelSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def points(self, block_size: int = 1024) -> LabelPoints:
        """All labelled pixels, gathered block by block."""
        rows, cols, values = [], [], []
        for window in iter_blocks(self.grid.height, self.grid.width, block_size):
            block = self.read(window)
            r, c = np.nonzero(block)
            rows.append(r.astype(np.int64) + int(window.row_off))
            cols.append(c.astype(np.int64) + int(window.col_off))
            values.append(block[r, c].astype(np.int64))
        return LabelPoints(np.concatenate(rows), np.concatenate(cols), np.concatenate(values))

    def class_table(self, present: np.ndarray | None = None) -> ClassTable:
        """The class table: recorded names where known, ``class N`` for ids seen but unnamed."""
        ids = set(np.unique(present).tolist()) if present is not None else set()
        if self.named_classes is not None:
            known = {c.id for c in self.named_classes}
            extra = sorted(ids - known - {0})
            if not extra:
                return self.named_classes
            named = {c.id: c.name for c in self.named_classes}
            return ClassTable.from_ids(sorted(known | set(extra)), named)
        return ClassTable.from_ids(sorted(ids - {0}))


class RasterLabels(LabelSource):
    def __init__(self, path: Path, grid: Grid) -> None:
        self._dataset = open_raster(path)
        ds = self._dataset
        if np.dtype(ds.dtypes[0]).kind not in "iu":
            ds.close()
            raise LabelError(f"{path.name} holds {ds.dtypes[0]} values; label rasters must be "
                             "integers (0 = unlabeled)")
        classes = None
        if CLASSES_TAG in ds.tags():
            try:
                classes = ClassTable.from_json(json.loads(ds.tags()[CLASSES_TAG]))
            except ValueError as exc:
                console.warn(f"{path.name}: ignoring malformed class table tag ({exc})")
        super().__init__(path, grid, classes)
        self._nodata = ds.nodata
        alignment = align_to_grid(ds, grid, label=f"labels {path.name}",
                                  resampling=Resampling.nearest, reference_label="the scene grid")
        for text in alignment.notes:
            console.note(text)
        self._source = alignment.source
        self._closers = [*alignment.closers, ds]

    def read(self, window: Window) -> np.ndarray:
        data = self._source.read(1, window=window).astype(np.float64)
        invalid = ~np.isfinite(data) | (data < 0)
        if self._nodata is not None and np.isfinite(self._nodata):
            invalid |= data == self._nodata
        data[invalid] = 0
        if data.size and data.max() > MAX_CLASS_ID:
            raise LabelError(f"{self.path.name} holds class id {int(data.max())}; "
                             f"at most {MAX_CLASS_ID} is supported")
        return data.astype(np.uint16)

    def close(self) -> None:
        for obj in self._closers:
            obj.close()
        self._closers = []


class VectorLabels(LabelSource):
    def __init__(self, path: Path, grid: Grid, label_field: str | None) -> None:
        features, src_crs = read_vector_features(path)
        if not features:
            raise LabelError(f"{path.name} holds no features", hint="is it the right layer/file?")
        field_name = _choose_field(features, label_field, path)
        values = [props.get(field_name) for _, props in features]
        classes, ids = _class_ids(values, field_name, path)
        shapes: list[tuple[Any, int]] = []
        repaired = 0
        dst_crs = grid.crs
        if dst_crs is None and src_crs is not None:
            raise LabelError(f"{path.name} is georeferenced but the scene grid has no CRS",
                             hint="use raster labels on the pixel grid")
        reproject = src_crs is not None and dst_crs is not None and src_crs != dst_crs
        for (geom, _), class_id in zip(features, ids, strict=True):
            if geom is None or class_id is None:
                continue
            shape = shapely.geometry.shape(geom)
            if not shape.is_valid:
                shape = shapely.make_valid(shape)
                repaired += 1
            if shape.is_empty:
                continue
            mapping = shapely.geometry.mapping(shape)
            if reproject:
                mapping = transform_geom(src_crs, dst_crs, mapping)
            shapes.append((mapping, class_id))
        if repaired:
            console.warn(f"{path.name}: made {repaired} invalid geometries valid")
        if reproject:
            console.note(f"reprojected labels {path.name} from {src_crs} to "
                         f"{dst_crs.to_string() if dst_crs else ''}")
        super().__init__(path, grid, classes)
        self._shapes = shapes
        self._bounds = [shapely.geometry.shape(g).bounds for g, _ in shapes]

    def read(self, window: Window) -> np.ndarray:
        height, width = int(window.height), int(window.width)
        transform = window_transform(window, self.grid.transform)
        # Skip geometries far from the block: rasterize cost follows the block, not the file.
        x0, y0, x1, y1 = window_bounds(window, self.grid.transform)
        x0, x1 = sorted((x0, x1))
        y0, y1 = sorted((y0, y1))
        near = [s for s, (bx0, by0, bx1, by1) in zip(self._shapes, self._bounds, strict=True)
                if bx1 >= x0 and bx0 <= x1 and by1 >= y0 and by0 <= y1]
        if not near:
            return np.zeros((height, width), np.uint16)
        return rasterize(near, out_shape=(height, width), transform=transform, fill=0,
                         dtype="uint16")


def open_labels(
    path: str | os.PathLike[str], grid: Grid, *, label_field: str | None = None
) -> LabelSource:
    """Open raster or vector labels on ``grid``. Close the result (or use ``with``)."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"labels {p} do not exist")
    if p.is_dir():
        raise InputError(f"labels {p} is a directory, not a file")
    if p.suffix.lower() in VECTOR_SUFFIXES:
        return VectorLabels(p, grid, label_field)
    if label_field is not None:
        raise InputError(f"--label-field applies to vector labels, and {p.name} is a raster")
    return RasterLabels(p, grid)


def read_label_points(
    path: str | os.PathLike[str], grid: Grid, *, label_field: str | None = None
) -> tuple[LabelPoints, ClassTable]:
    """Every labelled pixel of ``path`` on ``grid`` and the class table; empty labels refused."""
    with open_labels(path, grid, label_field=label_field) as source:
        points = source.points()
        if len(points) == 0:
            raise LabelError(f"{Path(path).name} has no labelled pixel on the scene grid",
                             hint="0 means unlabeled; check the extent and CRS of the labels")
        return points, source.class_table(points.classes)


def read_vector_features(path: Path) -> tuple[list[tuple[Any, dict[str, Any]]], Any]:
    """(geometry mapping, properties) per feature, and the layer CRS (rasterio CRS or None)."""
    from rasterio.crs import CRS

    if path.suffix.lower() in (".geojson", ".json"):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path.name} is not valid GeoJSON: {exc}") from None
        if not isinstance(data, dict):
            raise InputError(f"{path.name} is not a GeoJSON object")
        if data.get("type") == "FeatureCollection":
            raw = data.get("features") or []
        elif data.get("type") == "Feature":
            raw = [data]
        else:
            raise InputError(f"{path.name} is not a GeoJSON Feature or FeatureCollection")
        crs_name = ((data.get("crs") or {}).get("properties") or {}).get("name")
        # RFC 7946: coordinates are WGS 84 longitude/latitude unless a (legacy) crs member says.
        crs = CRS.from_user_input(crs_name) if crs_name else CRS.from_epsg(4326)
        feats = [(f.get("geometry"), dict(f.get("properties") or {})) for f in raw
                 if isinstance(f, dict)]
        return feats, crs
    return _read_ogr_features(path)


def _read_ogr_features(path: Path) -> tuple[list[tuple[Any, dict[str, Any]]], Any]:
    try:
        from osgeo import ogr, osr
    except ImportError:
        raise InputError(
            f"reading {path.suffix} labels needs GDAL's Python bindings (osgeo)",
            hint="install s2fin[gdal], or convert the labels to GeoJSON",
        ) from None
    from rasterio.crs import CRS

    ogr.UseExceptions()
    try:
        source = ogr.Open(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path.name} is not a readable vector file: {exc}") from None
    if source is None or source.GetLayerCount() == 0:
        raise InputError(f"{path.name} is not a readable vector file")
    if source.GetLayerCount() > 1:
        console.note(f"{path.name} has {source.GetLayerCount()} layers; using the first")
    layer = source.GetLayer(0)
    srs = layer.GetSpatialRef()
    crs = None
    if srs is not None:
        srs.SetAxisMappingStrategy(osr.OAMS_TRADITIONAL_GIS_ORDER)
        crs = CRS.from_wkt(srs.ExportToWkt())
    feats = []
    for feature in layer:
        geom = feature.GetGeometryRef()
        mapping = json.loads(geom.ExportToJson()) if geom is not None else None
        feats.append((mapping, dict(feature.items())))
    return feats, crs


def _choose_field(features: list[tuple[Any, dict[str, Any]]], label_field: str | None,
                  path: Path) -> str:
    fields: list[str] = sorted({k for _, props in features for k in props})
    if label_field is not None:
        if label_field not in fields:
            raise LabelError(f"{path.name} has no field {label_field!r}",
                             hint=f"fields: {', '.join(fields) or 'none'}")
        return label_field
    lower = {f.lower(): f for f in fields}
    for name in DEFAULT_FIELDS:
        if name in lower:
            console.note(f"{path.name}: using field {lower[name]!r} for classes")
            return lower[name]
    raise LabelError(f"{path.name}: say which field holds the classes with --label-field",
                     hint=f"fields: {', '.join(fields) or 'none'}")


def _class_ids(values: list[Any], field_name: str,
               path: Path) -> tuple[ClassTable | None, list[int | None]]:
    present = [v for v in values if v is not None and v != ""]
    if not present:
        raise LabelError(f"{path.name}: field {field_name!r} is empty in every feature")
    if all(isinstance(v, bool | int | np.integer) or (isinstance(v, float) and v.is_integer())
           for v in present):
        ids: list[int | None] = [None if v is None or v == "" else int(v) for v in values]
        bad = sorted({i for i in ids if i is not None and not 1 <= i <= MAX_CLASS_ID})
        if bad:
            raise LabelError(f"{path.name}: class ids must be 1..{MAX_CLASS_ID} (0 is "
                             f"unlabeled); found {bad[:5]}")
        return None, ids
    names = sorted({str(v) for v in present})
    mapping = {name: i for i, name in enumerate(names, start=1)}
    table = ClassTable.from_ids(mapping.values(), {i: n for n, i in mapping.items()})
    console.note(f"{path.name}: {len(names)} class names in {field_name!r} became ids "
                 + ", ".join(f"{i}={n}" for n, i in list(mapping.items())[:12])
                 + (" ..." if len(names) > 12 else ""))
    return table, [None if v is None or v == "" else mapping[str(v)] for v in values]


def iter_label_blocks(source: LabelSource, block_size: int = 1024) -> Iterator[
        tuple[Window, np.ndarray]]:
    for window in iter_blocks(source.grid.height, source.grid.width, block_size):
        yield window, source.read(window)
