"""Labels on the scene grid, from a raster or from vectors.

- Raster labels: integer classes, 0 = unlabeled (negative values and the nodata value count as
  unlabeled too). Another grid is aligned with nearest-neighbour resampling, never bilinear.
- Vector labels: GeoJSON, GeoPackage, Shapefile, FlatGeobuf and anything else OGR opens, read
  through pyogrio (GDAL/OGR in a wheel: no GDAL Python bindings needed), so every format follows
  OGR's rules (GeoJSON: WGS 84 unless a ``crs`` member OGR understands says otherwise).
  ``--label-field`` holds integer ids or names; names become ids 1..N in sorted order and are
  kept. Geometries are made valid (with a warning), reprojected to the grid CRS and rasterized
  per block, so memory follows the block, never the scene. Features without a geometry or
  without a class are skipped, with one warning saying how many and why; coordinates that
  cannot be longitude/latitude in a geographic CRS (a projected file whose CRS was lost) are
  refused.
- Label rasters have one band of class ids: a multi-band raster (an RGB rendering of a label
  map) is refused, and so is a text table GDAL would read as an XYZ grid (point labels in CSV).

Class names travel with labels: a label raster written by s2fin carries its class table in the
``S2FIN_CLASSES`` tag; vector names come from the field.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import CRSError
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from rasterio.windows import Window
from rasterio.windows import bounds as window_bounds
from rasterio.windows import transform as window_transform

from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import AlignmentError, InputError, LabelError
from s2fin_cli.io.gdal import error_text, gdal_messages
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import align_to_grid, crs_label, open_raster
from s2fin_cli.io.windows import iter_blocks
from s2fin_cli.io.writer import CLASSES_TAG

VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml", ".sqlite")
# Text tables: GDAL reads them as XYZ grids, never what a user means by labels.
TABLE_SUFFIXES = (".csv", ".txt", ".xyz", ".tsv")
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
        if str(ds.driver) in ("XYZ", "CSV"):
            ds.close()
            raise _table_error(path, grid)
        if ds.count > 1:
            ds.close()
            raise LabelError(
                f"{path.name} has {ds.count} bands; a label raster has one band of class ids "
                "(0 = unlabeled)",
                hint="an RGB picture of a label map holds colours, not ids: export the class "
                     "ids (e.g. the map's single band), or gdal_translate -b N if band N holds "
                     "them")
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
        data = read_vectors(path)
        if not data.geometries.size:
            raise LabelError(f"{path.name} holds no features", hint="is it the right layer/file?")
        field_name = _choose_field(list(data.fields), label_field, path)
        values = data.fields[field_name]
        classes, ids = _class_ids(values, field_name, path)
        src_crs = data.crs
        dst_crs = grid.crs
        if dst_crs is None and src_crs is not None:
            raise LabelError(f"{path.name} is georeferenced but the scene grid has no map CRS"
                             + (" (ground control points only)" if grid.gcps else ""),
                             hint="use raster labels on the pixel grid")
        reproject = src_crs is not None and dst_crs is not None and src_crs != dst_crs
        kept: list[tuple[Any, int]] = []
        repaired = no_geometry = no_class = 0
        for shape, class_id in zip(data.geometries, ids, strict=True):
            if shape is None or shape.is_empty:
                no_geometry += 1
                continue
            if class_id is None:
                no_class += 1
                continue
            if not shape.is_valid:
                shape = shapely.make_valid(shape)
                repaired += 1
                if shape.is_empty:
                    no_geometry += 1
                    continue
            kept.append((shape, class_id))
        if repaired:
            console.warn(f"{path.name}: made {repaired} invalid geometries valid")
        skipped = no_geometry + no_class
        if skipped:
            reasons = []
            if no_class:
                reasons.append(f"{no_class} without a value in {field_name!r}")
            if no_geometry:
                reasons.append(f"{no_geometry} without a geometry (null, empty, or of a type "
                               "GDAL does not read)")
            console.warn(f"{path.name}: {skipped} of {data.geometries.size} features skipped: "
                         + ", ".join(reasons))
        if src_crs is not None and kept:
            _check_geographic_range(path, src_crs, [s for s, _ in kept])
        mappings = [shapely.geometry.mapping(s) for s, _ in kept]
        if reproject and mappings:
            assert src_crs is not None and dst_crs is not None
            try:
                with gdal_messages():
                    mappings = list(transform_geom(src_crs, dst_crs, mappings))
            except Exception as exc:  # PROJ cannot relate the CRSs (several exception types)
                raise AlignmentError(
                    f"labels {path.name} cannot be reprojected from {crs_label(src_crs)} to "
                    f"{crs_label(dst_crs)}: {error_text(exc)}",
                    hint="reproject the labels (ogr2ogr -t_srs) or check PROJ's data "
                         "(PROJ_DATA)") from None
            console.note(f"reprojected labels {path.name} from {crs_label(src_crs)} to "
                         f"{crs_label(dst_crs)}")
        super().__init__(path, grid, classes)
        self._shapes = [(m, class_id) for m, (_, class_id) in zip(mappings, kept, strict=True)]
        self._bounds = [shapely.geometry.shape(g).bounds for g, _ in self._shapes]

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
    if p.suffix.lower() in TABLE_SUFFIXES:
        raise _table_error(p, grid)
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


def _table_error(path: Path, grid: Grid) -> InputError:
    epsg = grid.crs.to_epsg() if grid.crs is not None else None
    return InputError(
        f"labels {path.name} are a text table, which GDAL would read as an XYZ grid of "
        "values, not as labelled points or polygons",
        hint="put the points in a vector file with their CRS, e.g. ogr2ogr -f GPKG labels.gpkg "
             f"{path.name} -oo X_POSSIBLE_NAMES=x -oo Y_POSSIBLE_NAMES=y "
             f"-a_srs EPSG:{epsg or '<code>'}")


@dataclass
class VectorData:
    """A vector layer as read: shapely geometries (None where a feature has none), the
    attribute columns (plain Python values, None for null), the CRS (None when the file has
    none) and the layer's name."""

    geometries: np.ndarray  # object array of shapely geometries or None
    fields: dict[str, list[Any]]
    crs: CRS | None
    layer: str


def _plain(value: Any) -> Any:
    """A numpy scalar as a Python value; NaN (OGR's null in a numeric column) as None."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def read_vectors(path: Path) -> VectorData:
    """The first layer of a vector file through pyogrio (OGR), with one-line errors."""
    import pyogrio
    import pyogrio.raw
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

    errors = (DataSourceError, DataLayerError, FieldError, GeometryError, OSError, ValueError,
              RuntimeError)
    unread: list[str] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            layers = pyogrio.list_layers(path)
            if len(layers) == 0:
                raise InputError(f"{path.name} has no vector layer")
            if len(layers) > 1:
                console.note(f"{path.name} has {len(layers)} layers; using the first, "
                             f"{layers[0][0]!r}")
            meta, _fids, wkb, columns = pyogrio.raw.read(path, layer=0)
        unread = [str(w.message) for w in caught]
    except errors as exc:
        raise InputError(f"{path.name} is not a readable vector file: {error_text(exc)}") \
            from None
    for text in dict.fromkeys(unread):
        console.debug(f"{path.name}: OGR: {text}")
    crs = None
    if meta.get("crs"):
        try:
            crs = CRS.from_user_input(meta["crs"])
        except CRSError as exc:
            raise InputError(f"cannot interpret the CRS of {path.name} ({meta['crs']!s:.60}): "
                             f"{error_text(exc)}",
                             hint="check PROJ's data (PROJ_DATA), or write the labels with an "
                                  "EPSG code") from None
    geometries = np.array([None if g is None else shapely.from_wkb(g) for g in wkb],
                          dtype=object)
    fields = {str(name): [_plain(v) for v in column]
              for name, column in zip(meta["fields"], columns, strict=True)}
    return VectorData(geometries, fields, crs, str(layers[0][0]))


def read_vector_features(path: Path) -> tuple[list[tuple[Any, dict[str, Any]]], Any]:
    """(geometry mapping or None, properties) per feature, and the layer CRS (rasterio CRS or
    None): :func:`read_vectors` as GeoJSON-like mappings."""
    data = read_vectors(path)
    names = list(data.fields)
    feats = []
    for i, geom in enumerate(data.geometries):
        mapping = None if geom is None else shapely.geometry.mapping(geom)
        feats.append((mapping, {n: data.fields[n][i] for n in names}))
    return feats, data.crs


def _check_geographic_range(path: Path, crs: CRS, shapes: list[Any]) -> None:
    """Coordinates in a geographic CRS must be longitudes/latitudes: values such as 691200 mean
    a projected file whose CRS was lost (a GeoJSON ``crs`` member OGR did not understand makes
    OGR assume WGS 84)."""
    if not crs.is_geographic:
        return
    x0, y0, x1, y1 = shapely.total_bounds(np.asarray(shapes, dtype=object))
    if x0 < -540 or x1 > 540 or y0 < -90.5 or y1 > 90.5:
        raise LabelError(
            f"{path.name}: coordinates reach ({x0:.6g}, {y0:.6g}) .. ({x1:.6g}, {y1:.6g}), which "
            f"are not longitude/latitude, yet the file's CRS is geographic ({crs_label(crs)})",
            hint="the file's CRS is missing or not understood by GDAL (GeoJSON means WGS 84 "
                 "unless its crs member is {\"type\": \"name\", \"properties\": {\"name\": "
                 "\"EPSG:<code>\"}}); or save the labels as GeoPackage with their CRS")


def _choose_field(names: list[str], label_field: str | None, path: Path) -> str:
    fields: list[str] = sorted(names)
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
