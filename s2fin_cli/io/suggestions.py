"""The suggestions of ``s2fin suggest`` on disk: a GeoPackage point layer QGIS opens styled and
an analyst edits directly, and a CSV on request.

* The point layer (named after the file, in the scene's CRS) holds one point per suggested
  pixel centre with ``rank``, ``row``, ``col``, the predicted class (``pred_id``,
  ``pred_name``), the runner-up (``second_id``, ``second_name``), ``confidence`` (the highest
  class probability), ``margin`` (its gap to the runner-up), ``entropy`` (normalised), ``score``
  (the acquisition score) and an empty integer ``label`` for the analyst. ``s2fin train
  --labels ... --labels next.gpkg`` reads ``label`` (one of the default class fields) and skips
  the points left empty, with a warning.
* Its style travels inside the file: GeoPackage has no style of its own, and QGIS's convention
  is a ``layer_styles`` attribute table (f_table_catalog, f_table_schema, f_table_name,
  f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, owner, ui,
  update_time) whose default row QGIS applies when it opens the layer. The QML colours the points
  by predicted class (the model's colours), writes the rank beside each point, offers the class
  names in a drop-down on ``label`` (ids stored) and makes every other field read-only.
* Provenance (model, checksum, software, acquisition) is the layer's metadata.

Everything goes through OGR (pyogrio), into temporary files renamed together at the end
(:class:`~s2fin_cli.io.writer.AtomicGroup`).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np

from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import OutputError
from s2fin_cli.io.gdal import error_text
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import AtomicGroup, write_text

GEOMETRY_COLUMN = "geom"
LABEL_FIELD = "label"
STYLE_TABLE = "layer_styles"
# GeoPackage 1.2 (not GDAL's newest default, 1.4): the GDAL of QGIS 3.22 LTR warns on 1.4.
GPKG_VERSION = "1.2"
# No spatial index: a few hundred points need none, and without its triggers any SQLite client
# (sqlite3, a script) can fill in labels, not only GDAL-based ones.
# QGIS's value-map key that stands for NULL (QgsValueMapFieldFormatter::NULL_VALUE).
_QGIS_NULL = "{2839923C-8B7D-419E-B84B-CA2FE9B80EC7}"
# The marker turns into a square once the analyst has filled in a label.
_SHAPE = f"CASE WHEN \"{LABEL_FIELD}\" IS NULL THEN 'circle' ELSE 'square' END"
_READ_ONLY = ("rank", "row", "col", "pred_id", "pred_name", "second_id", "second_name",
              "confidence", "margin", "entropy", "score")


@dataclass
class SuggestionTable:
    """The attributes of the suggested points, one entry per point, best first."""

    rank: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    pred_id: np.ndarray
    pred_name: Sequence[str]
    second_id: np.ndarray  # 0 when the model has one class
    second_name: Sequence[str]
    confidence: np.ndarray
    margin: np.ndarray
    entropy: np.ndarray
    score: np.ndarray

    def __len__(self) -> int:
        return int(np.asarray(self.rank).size)

    def columns(self) -> list[tuple[str, np.ndarray]]:
        """The layer's fields in order (``label`` last, empty)."""
        def ints(a: np.ndarray) -> np.ndarray:
            return np.asarray(a, np.int32)

        def reals(a: np.ndarray) -> np.ndarray:
            return np.round(np.asarray(a, np.float64), 4)

        return [("rank", ints(self.rank)), ("row", ints(self.rows)), ("col", ints(self.cols)),
                ("pred_id", ints(self.pred_id)),
                ("pred_name", np.asarray(list(self.pred_name), dtype=object)),
                ("second_id", ints(self.second_id)),
                ("second_name", np.asarray(list(self.second_name), dtype=object)),
                ("confidence", reals(self.confidence)), ("margin", reals(self.margin)),
                ("entropy", reals(self.entropy)), ("score", reals(self.score)),
                (LABEL_FIELD, np.zeros(len(self), np.int32))]

    def records(self, grid: Grid | None = None) -> list[dict[str, Any]]:
        """One dict per point (with ``x``, ``y`` of the pixel centre when ``grid`` is given;
        ``label`` None)."""
        columns = self.columns()
        xs, ys = pixel_centres(grid, self.rows, self.cols) if grid is not None else (None, None)
        out = []
        for i in range(len(self)):
            record: dict[str, Any] = {}
            for name, values in columns:
                value = values[i]
                record[name] = None if name == LABEL_FIELD else (
                    value.item() if isinstance(value, np.generic) else value)
                if name == "col" and xs is not None and ys is not None:
                    record["x"], record["y"] = float(xs[i]), float(ys[i])
            out.append(record)
        return out


def pixel_centres(grid: Grid, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Map coordinates of the centres of pixels (``rows``, ``cols``) of ``grid``."""
    t = grid.transform
    c = np.asarray(cols, np.float64) + 0.5
    r = np.asarray(rows, np.float64) + 0.5
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def _colour(rgb: tuple[int, int, int]) -> str:
    return f"{rgb[0]},{rgb[1]},{rgb[2]},255"


def _symbol(name: str, rgb: tuple[int, int, int]) -> str:
    props = {"name": "circle", "color": _colour(rgb), "outline_color": "35,35,35,255",
             "outline_style": "solid", "outline_width": "0.4", "outline_width_unit": "MM",
             "size": "3.2", "size_unit": "MM", "angle": "0", "joinstyle": "bevel",
             "scale_method": "diameter"}
    options = "".join(f"<Option name={quoteattr(k)} type=\"QString\" value={quoteattr(v)}/>"
                      for k, v in props.items())
    legacy = "".join(f"<prop k={quoteattr(k)} v={quoteattr(v)}/>" for k, v in props.items())
    # The marker turns into a square once the analyst has filled in a label.
    shape = ("<Option name=\"properties\" type=\"Map\"><Option name=\"name\" type=\"Map\">"
             "<Option name=\"active\" type=\"bool\" value=\"true\"/>"
             f"<Option name=\"expression\" type=\"QString\" value={quoteattr(_SHAPE)}/>"
             "<Option name=\"type\" type=\"int\" value=\"3\"/></Option></Option>")
    return (f"      <symbol type=\"marker\" name={quoteattr(name)} alpha=\"1\" "
            "clip_to_extent=\"1\" force_rhr=\"0\">\n"
            "        <layer class=\"SimpleMarker\" enabled=\"1\" locked=\"0\" pass=\"0\">\n"
            f"          <Option type=\"Map\">{options}</Option>\n"
            f"          {legacy}\n"
            "          <data_defined_properties><Option type=\"Map\">"
            "<Option name=\"name\" type=\"QString\" value=\"\"/>"
            f"{shape}<Option name=\"type\" type=\"QString\" value=\"collection\"/>"
            "</Option></data_defined_properties>\n"
            "        </layer>\n"
            "      </symbol>\n")


def _value_map(classes: ClassTable) -> str:
    entries = [("(not labelled)", _QGIS_NULL)] + [(f"{c.id} {c.name}", str(c.id))
                                                  for c in classes]
    items = "".join(f"<Option type=\"Map\"><Option name={quoteattr(k)} type=\"QString\" "
                    f"value={quoteattr(v)}/></Option>" for k, v in entries)
    return (f"    <field name=\"{LABEL_FIELD}\" configurationFlags=\"None\">\n"
            "      <editWidget type=\"ValueMap\"><config><Option type=\"Map\">"
            f"<Option name=\"map\" type=\"List\">{items}</Option>"
            "</Option></config></editWidget>\n"
            "    </field>\n")


def _labeling() -> str:
    return ("  <labeling type=\"simple\">\n"
            "    <settings calloutType=\"simple\">\n"
            "      <text-style fieldName=\"rank\" isExpression=\"0\" fontSize=\"8\" "
            "fontSizeUnit=\"Point\" textColor=\"20,20,20,255\" textOpacity=\"1\">\n"
            "        <text-buffer bufferDraw=\"1\" bufferSize=\"0.8\" bufferSizeUnits=\"MM\" "
            "bufferColor=\"255,255,255,255\" bufferOpacity=\"1\"/>\n"
            "      </text-style>\n"
            "      <placement placement=\"0\" dist=\"1.2\" distUnits=\"MM\"/>\n"
            "      <rendering obstacle=\"1\" scaleVisibility=\"0\"/>\n"
            "    </settings>\n"
            "  </labeling>\n")


def style_qml(classes: ClassTable) -> str:
    """The QGIS style of the suggestion layer (module docs)."""
    categories = "".join(
        f"      <category render=\"true\" symbol=\"{i}\" value=\"{c.id}\" "
        f"label={quoteattr(f'{c.id} {c.name}')}/>\n" for i, c in enumerate(classes))
    symbols = "".join(_symbol(str(i), c.color) for i, c in enumerate(classes))
    editable = "".join(f"    <field name=\"{name}\" editable=\"0\"/>\n" for name in _READ_ONLY)
    tip = ("Rank [% \"rank\" %]: [% \"pred_name\" %] ([% round(\"confidence\" * 100) %] %) or "
           "[% \"second_name\" %]?")
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        "<qgis version=\"3.22\" styleCategories=\"Symbology|Labeling|Fields|Forms|MapTips\" "
        "labelsEnabled=\"1\">\n"
        "  <renderer-v2 type=\"categorizedSymbol\" attr=\"pred_id\" symbollevels=\"0\" "
        "enableorderby=\"0\" forceraster=\"0\">\n"
        f"    <categories>\n{categories}    </categories>\n"
        f"    <symbols>\n{symbols}    </symbols>\n"
        "  </renderer-v2>\n"
        + _labeling()
        + f"  <fieldConfiguration>\n{_value_map(classes)}  </fieldConfiguration>\n"
        f"  <aliases><alias field=\"{LABEL_FIELD}\" index=\"11\" "
        "name=\"label (class id: pick the class)\"/></aliases>\n"
        f"  <editable>\n{editable}    <field name=\"{LABEL_FIELD}\" editable=\"1\"/>\n"
        "  </editable>\n"
        f"  <mapTip>{escape(tip)}</mapTip>\n"
        "  <previewExpression>\"pred_name\"</previewExpression>\n"
        "  <layerGeometryType>0</layerGeometryType>\n"
        "</qgis>\n")


def csv_text(table: SuggestionTable, grid: Grid) -> str:
    buffer = io.StringIO()
    records = table.records(grid)
    names = [name for name, _ in table.columns()]
    names = [*names[:3], "x", "y", *names[3:]]
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()


def _crs_text(grid: Grid) -> str | None:
    if grid.crs is None:
        return None
    code = grid.crs.to_epsg(confidence_threshold=100)
    return f"EPSG:{code}" if code is not None else grid.crs.to_wkt()


def _write_points(path: Path, layer: str, table: SuggestionTable, grid: Grid,
                  metadata: dict[str, str]) -> None:
    import pyogrio.raw
    import shapely

    xs, ys = pixel_centres(grid, table.rows, table.cols)
    wkb = shapely.to_wkb(shapely.points(xs, ys)) if len(table) else np.zeros(0, object)
    columns = table.columns()
    masks = [np.ones(len(table), bool) if name == LABEL_FIELD else None for name, _ in columns]
    with warnings.catch_warnings():
        # Without a CRS pyogrio warns in its words; write_suggestions says it in s2fin's.
        warnings.filterwarnings("ignore", message=".*'crs' was not provided")
        pyogrio.raw.write(path, wkb, [v for _, v in columns], [n for n, _ in columns],
                          field_mask=masks, layer=layer, driver="GPKG", geometry_type="Point",
                          crs=_crs_text(grid), layer_metadata=metadata,
                          layer_options={"GEOMETRY_NAME": GEOMETRY_COLUMN,
                                         "SPATIAL_INDEX": "NO"},
                          dataset_options={"VERSION": GPKG_VERSION})


def _write_style(path: Path, layer: str, classes: ClassTable) -> None:
    import pyogrio.raw

    now = np.array([_dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)],
                   dtype="datetime64[ms]")

    def text(value: str) -> np.ndarray:
        return np.array([value], dtype=object)

    fields = {
        "f_table_catalog": text(""), "f_table_schema": text(""), "f_table_name": text(layer),
        "f_geometry_column": text(GEOMETRY_COLUMN), "styleName": text(layer),
        "styleQML": text(style_qml(classes)), "styleSLD": text(""),
        "useAsDefault": np.array([True]),
        "description": text("s2fin suggest: points coloured by predicted class; fill in "
                            "'label'"),
        "owner": text(""), "ui": np.array([None], dtype=object), "update_time": now,
    }
    masks = [np.array([True]) if name == "ui" else None for name in fields]
    pyogrio.raw.write(path, None, list(fields.values()), list(fields), field_mask=masks,
                      layer=STYLE_TABLE, driver="GPKG", append=True)


def write_suggestions(path: str | os.PathLike[str], table: SuggestionTable, grid: Grid,
                      classes: ClassTable, *, csv: str | os.PathLike[str] | None = None,
                      overwrite: bool = False,
                      metadata: dict[str, str] | None = None) -> list[Path]:
    """The GeoPackage (and the CSV), renamed into place together once both are complete."""
    from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError

    final = Path(os.fspath(path))
    layer = final.stem
    if grid.crs is None:
        console.warn(f"the scene has no map CRS: the points of {final.name} are in its grid's "
                     "own coordinates, without a CRS")
    written = [final]
    with AtomicGroup() as group:
        target = group.add(final, overwrite=overwrite)
        try:
            _write_points(target.tmp, layer, table, grid, metadata or {})
            _write_style(target.tmp, layer, classes)
        except (DataSourceError, DataLayerError, FieldError, GeometryError) as exc:
            raise OutputError(f"could not write {final}: {error_text(exc)}") from None
        if csv is not None:
            written.append(write_text(csv, csv_text(table, grid), overwrite=overwrite,
                                      group=group))
    return written


__all__ = [
    "GEOMETRY_COLUMN",
    "LABEL_FIELD",
    "STYLE_TABLE",
    "SuggestionTable",
    "csv_text",
    "pixel_centres",
    "style_qml",
    "write_suggestions",
]
