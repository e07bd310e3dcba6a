from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_transform

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import InputError, LabelError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.labels import open_labels, read_label_points
from s2fin_cli.io.writer import write_raster
from tests.helpers import utm_grid


def _rect(grid: Grid, col0: int, row0: int, col1: int, row1: int) -> list[tuple[float, float]]:
    """Corners of the pixel block cols col0..col1-1, rows row0..row1-1, in grid CRS."""
    t = grid.transform
    corners = [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]
    return [(t.c + c * t.a, t.f + r * t.e) for c, r in corners]


def _expected(grid: Grid, boxes: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    out = np.zeros(grid.shape, np.uint16)
    for col0, row0, col1, row1, value in boxes:
        out[row0:row1, col0:col1] = value
    return out


BOXES = [(2, 3, 8, 9, 1), (20, 5, 30, 12, 2), (10, 20, 16, 26, 3)]
NAMES = {1: "asphalt", 2: "grass", 3: "water"}


def _geojson(grid: Grid, path: Path, *, wgs84: bool, string_field: bool,
             invalid: bool = False) -> Path:
    features = []
    for col0, row0, col1, row1, value in BOXES:
        ring = _rect(grid, col0, row0, col1, row1)
        if wgs84:
            lon, lat = warp_transform(grid.crs, CRS.from_epsg(4326), *zip(*ring, strict=True))
            ring = list(zip(lon, lat, strict=True))
        if invalid and value == 1:
            # A bow-tie made of the same corners: invalid, made valid with a warning.
            ring = [ring[0], ring[2], ring[1], ring[3], ring[0]]
        features.append({"type": "Feature",
                         "geometry": {"type": "Polygon", "coordinates": [ring]},
                         "properties": {"cls": NAMES[value] if string_field else value}})
    collection: dict[str, object] = {"type": "FeatureCollection", "features": features}
    if not wgs84:
        collection["crs"] = {"type": "name", "properties": {"name": "EPSG:32632"}}
    path.write_text(json.dumps(collection))
    return path


@pytest.mark.parametrize("wgs84", [False, True])
def test_geojson_integer_classes_rasterize_to_expected_pixels(tmp_path: Path, wgs84: bool) -> None:
    grid = utm_grid()
    path = _geojson(grid, tmp_path / "labels.geojson", wgs84=wgs84, string_field=False)
    with open_labels(path, grid, label_field="cls") as source:
        labels = source.read(grid.full_window())
    np.testing.assert_array_equal(labels, _expected(grid, BOXES))


def test_geojson_string_classes_become_named_ids(tmp_path: Path) -> None:
    grid = utm_grid()
    path = _geojson(grid, tmp_path / "labels.geojson", wgs84=True, string_field=True)
    points, table = read_label_points(path, grid, label_field="cls")
    # Names are sorted alphabetically into ids 1..N.
    assert [(c.id, c.name) for c in table] == [(1, "asphalt"), (2, "grass"), (3, "water")]
    assert points.counts() == {1: 36, 2: 70, 3: 36}


def test_blockwise_read_equals_whole_read(tmp_path: Path) -> None:
    grid = utm_grid()
    path = _geojson(grid, tmp_path / "labels.geojson", wgs84=False, string_field=False)
    with open_labels(path, grid, label_field="cls") as source:
        points = source.points(block_size=7)
    whole = _expected(grid, BOXES)
    assert len(points) == int((whole > 0).sum())
    np.testing.assert_array_equal(whole[points.rows, points.cols], points.classes)


def test_invalid_geometry_is_repaired_with_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    grid = utm_grid()
    path = _geojson(grid, tmp_path / "labels.geojson", wgs84=False, string_field=False,
                    invalid=True)
    with open_labels(path, grid, label_field="cls") as source:
        labels = source.read(grid.full_window())
    assert "made 1 invalid geometries valid" in capsys.readouterr().err
    assert (labels == 2).sum() == 70 and (labels == 1).sum() > 0


def test_geopackage_labels_through_ogr(tmp_path: Path) -> None:
    ogr = pytest.importorskip("osgeo.ogr")
    osr = pytest.importorskip("osgeo.osr")
    grid = utm_grid()
    path = tmp_path / "labels.gpkg"
    driver = ogr.GetDriverByName("GPKG")
    ds = driver.CreateDataSource(str(path))
    srs = osr.SpatialReference()
    srs.ImportFromEPSG(32632)
    layer = ds.CreateLayer("labels", srs, ogr.wkbPolygon)
    layer.CreateField(ogr.FieldDefn("landcover", ogr.OFTString))
    for col0, row0, col1, row1, value in BOXES:
        ring = ogr.Geometry(ogr.wkbLinearRing)
        for x, y in _rect(grid, col0, row0, col1, row1):
            ring.AddPoint_2D(x, y)
        poly = ogr.Geometry(ogr.wkbPolygon)
        poly.AddGeometry(ring)
        feature = ogr.Feature(layer.GetLayerDefn())
        feature.SetField("landcover", NAMES[value])
        feature.SetGeometry(poly)
        layer.CreateFeature(feature)
    ds = None  # close: OGR flushes on dereference
    # No --label-field: "landcover" is one of the fields tried by default.
    points, table = read_label_points(path, grid)
    assert [c.name for c in table] == ["asphalt", "grass", "water"]
    whole = _expected(grid, BOXES)
    np.testing.assert_array_equal(whole[points.rows, points.cols], points.classes)
    assert len(points) == int((whole > 0).sum())


def test_raster_labels_keep_their_class_table_and_align_with_nearest(tmp_path: Path) -> None:
    grid = utm_grid(width=20, height=20)
    coarse = utm_grid(width=10, height=10, res=2.0)
    labels = np.zeros((10, 10), np.uint8)
    labels[2:5, 3:6] = 2
    labels[7, 7] = 1
    table = ClassTable.from_ids([1, 2], {1: "roof", 2: "tree"})
    path = write_raster(tmp_path / "labels.tif", labels, coarse, nodata=0, classes=table)
    points, read_table = read_label_points(path, grid)
    assert [c.name for c in read_table] == ["roof", "tree"]
    with open_labels(path, grid) as source:
        fine = source.read(grid.full_window())
    np.testing.assert_array_equal(fine, np.kron(labels, np.ones((2, 2), np.uint8)))
    assert points.counts() == {1: 4, 2: 36}


def test_negative_and_nodata_label_values_are_unlabeled(tmp_path: Path) -> None:
    grid = utm_grid(width=4, height=1)
    path = write_raster(tmp_path / "l.tif", np.array([[-1, 0, 3, 255]], np.int16), grid,
                        nodata=255)
    with open_labels(path, grid) as source:
        np.testing.assert_array_equal(source.read(grid.full_window()), [[0, 0, 3, 0]])


def test_label_errors(tmp_path: Path) -> None:
    grid = utm_grid()
    empty = tmp_path / "empty.geojson"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    with pytest.raises(LabelError, match="no features"):
        read_label_points(empty, grid)
    path = _geojson(grid, tmp_path / "l.geojson", wgs84=False, string_field=False)
    with pytest.raises(LabelError, match="no field 'nope'"):
        read_label_points(path, grid, label_field="nope")
    with pytest.raises(LabelError, match="--label-field"):
        read_label_points(path, grid)
    zeros = write_raster(tmp_path / "zeros.tif", np.zeros(grid.shape, np.uint8), grid)
    with pytest.raises(LabelError, match="no labelled pixel"):
        read_label_points(zeros, grid)
    floats = write_raster(tmp_path / "f.tif", np.ones(grid.shape, np.float32), grid)
    with pytest.raises(LabelError, match="integers"):
        read_label_points(floats, grid)
    with pytest.raises(InputError, match="do not exist"):
        read_label_points(tmp_path / "missing.tif", grid)
    outside = Grid(grid.crs, Affine(1, 0, 0, 0, -1, 0), 5, 5)
    with pytest.raises(LabelError, match="no labelled pixel"):
        read_label_points(path, outside, label_field="cls")
