"""The suggestion GeoPackage read back through OGR: the point layer (fields, CRS, pixel
centres, empty labels), the ``layer_styles`` row QGIS applies, the layer's metadata, the CSV,
and the atomic write."""

from __future__ import annotations

import csv
import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
from affine import Affine
from rasterio.crs import CRS

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import OutputError
from s2fin_cli.io import suggestions as io_suggestions
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.labels import open_labels
from s2fin_cli.io.suggestions import (
    GEOMETRY_COLUMN,
    LABEL_FIELD,
    STYLE_TABLE,
    SuggestionTable,
    pixel_centres,
    style_qml,
    write_suggestions,
)
from tests.helpers import utm_grid

CLASSES = ClassTable.from_ids([1, 4, 7], {1: "Road", 4: "Grass & shrubs", 7: "Water"})
FIELDS = ["rank", "row", "col", "pred_id", "pred_name", "second_id", "second_name",
          "confidence", "margin", "entropy", "score", "label"]


def _table() -> SuggestionTable:
    return SuggestionTable(
        rank=np.array([1, 2, 3]), rows=np.array([3, 10, 25]), cols=np.array([4, 30, 0]),
        pred_id=np.array([4, 1, 7]), pred_name=["Grass & shrubs", "Road", "Water"],
        second_id=np.array([1, 7, 4]), second_name=["Road", "Water", "Grass & shrubs"],
        confidence=np.array([0.41, 0.52, 0.6]), margin=np.array([0.02, 0.1, 0.3]),
        entropy=np.array([0.95, 0.8, 0.7]), score=np.array([0.98, 0.9, 0.7]))


def test_points_fields_crs_and_empty_labels(tmp_path: Path) -> None:
    grid = utm_grid(40, 30, res=2.0)
    out = tmp_path / "next.gpkg"
    written = write_suggestions(out, _table(), grid, CLASSES, metadata={"S2FIN_MODEL": "m"})
    assert written == [out]
    layers = pyogrio.list_layers(out)
    assert [str(name) for name in layers[:, 0]] == ["next", STYLE_TABLE]
    info = pyogrio.read_info(out, layer="next")
    assert info["fields"].tolist() == FIELDS
    assert info["geometry_type"] == "Point" and info["geometry_name"] == GEOMETRY_COLUMN
    assert CRS.from_user_input(info["crs"]) == grid.crs
    assert info["layer_metadata"] == {"S2FIN_MODEL": "m"}
    meta, _fids, wkb, columns = pyogrio.raw.read(out, layer="next")
    values = dict(zip(meta["fields"].tolist(), columns, strict=True))
    assert values["rank"].tolist() == [1, 2, 3]
    assert values["pred_name"].tolist() == ["Grass & shrubs", "Road", "Water"]
    assert np.all(np.isnan(values["label"].astype(float)))  # NULL, not 0
    assert meta["ogr_types"][FIELDS.index("label")] == "OFTInteger"
    import shapely

    points = shapely.from_wkb(wkb)
    xs, ys = pixel_centres(grid, np.array([3, 10, 25]), np.array([4, 30, 0]))
    assert np.allclose(shapely.get_x(points), xs) and np.allclose(shapely.get_y(points), ys)
    assert xs[0] == grid.transform.c + 2.0 * 4.5  # the centre of pixel (3, 4)
    # The points fall on their pixels when s2fin reads the layer as labels again.
    with sqlite3.connect(out) as db:
        db.execute("UPDATE next SET label = pred_id WHERE rank < 3")  # any SQLite client
    with open_labels(out, grid, label_field=LABEL_FIELD) as labels:
        got = labels.points()
    found = zip(got.rows.tolist(), got.cols.tolist(), got.classes.tolist(), strict=True)
    assert sorted(found) == [(3, 4, 4), (10, 30, 1)]


def test_layer_styles_row_is_qgis_default_style(tmp_path: Path) -> None:
    out = tmp_path / "round 2.gpkg"
    write_suggestions(out, _table(), utm_grid(40, 30), CLASSES)
    meta, _, wkb, columns = pyogrio.raw.read(out, layer=STYLE_TABLE)
    row = {name: col[0] for name, col in zip(meta["fields"].tolist(), columns, strict=True)}
    assert wkb is None and meta["geometry_type"] is None  # an attribute table
    assert set(row) == {"f_table_catalog", "f_table_schema", "f_table_name",
                        "f_geometry_column", "styleName", "styleQML", "styleSLD",
                        "useAsDefault", "description", "owner", "ui", "update_time"}
    assert row["f_table_name"] == "round 2" and row["f_geometry_column"] == GEOMETRY_COLUMN
    assert row["f_table_catalog"] == "" and row["f_table_schema"] == ""
    assert bool(row["useAsDefault"]) is True
    assert row["styleQML"] == style_qml(CLASSES)


def test_style_colours_classes_and_offers_class_names() -> None:
    root = ET.fromstring(style_qml(CLASSES).split("\n", 1)[1])
    renderer = root.find("renderer-v2")
    assert renderer is not None and renderer.get("type") == "categorizedSymbol"
    assert renderer.get("attr") == "pred_id"
    categories = renderer.findall("categories/category")
    assert [(c.get("value"), c.get("label")) for c in categories] == [
        ("1", "1 Road"), ("4", "4 Grass & shrubs"), ("7", "7 Water")]
    colours = [s.find("layer/Option/Option[@name='color']") for s in
               renderer.findall("symbols/symbol")]
    assert [c.get("value") for c in colours if c is not None] == [
        f"{r},{g},{b},255" for r, g, b in (c.color for c in CLASSES)]
    value_map = root.findall("fieldConfiguration/field[@name='label']/editWidget"
                             "[@type='ValueMap']/config/Option/Option[@name='map']/Option/Option")
    assert [(o.get("name"), o.get("value")) for o in value_map][1:] == [
        ("1 Road", "1"), ("4 Grass & shrubs", "4"), ("7 Water", "7")]
    editable = {f.get("name"): f.get("editable") for f in root.findall("editable/field")}
    assert editable["label"] == "1" and editable["pred_id"] == "0"


def test_csv_beside_and_no_crs(tmp_path: Path) -> None:
    grid = Grid(None, Affine.identity(), 40, 30)
    out, table_path = tmp_path / "next.gpkg", tmp_path / "next.csv"
    write_suggestions(out, _table(), grid, CLASSES, csv=table_path)
    assert pyogrio.read_info(out, layer="next")["crs"] is None
    with table_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == [*FIELDS[:3], "x", "y", *FIELDS[3:]]
    assert rows[0]["pred_name"] == "Grass & shrubs" and rows[0]["label"] == ""
    assert float(rows[0]["x"]) == 4.5 and float(rows[0]["y"]) == 3.5


def test_empty_layer(tmp_path: Path) -> None:
    empty = SuggestionTable(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), [],
                            np.zeros(0), [], np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    out = tmp_path / "none.gpkg"
    write_suggestions(out, empty, utm_grid(), CLASSES)
    assert pyogrio.read_info(out, layer="none")["features"] == 0


def test_a_failure_leaves_nothing_and_replaces_nothing(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "next.gpkg"
    out.write_bytes(b"previous round")

    def broken(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io_suggestions, "_write_style", broken)
    with pytest.raises(OutputError, match="disk full"):
        write_suggestions(out, _table(), utm_grid(), CLASSES, csv=tmp_path / "next.csv",
                          overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next.gpkg"]
    assert out.read_bytes() == b"previous round"
    monkeypatch.undo()
    with pytest.raises(OutputError, match="exists"):
        write_suggestions(out, _table(), utm_grid(), CLASSES)
