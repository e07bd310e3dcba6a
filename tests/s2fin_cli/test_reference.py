"""Merging several label files into one set of training labels (reference.merge_label_sources)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import LabelError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import write_raster
from s2fin_cli.reference import merge_label_sources, vector_label_field
from tests.helpers import utm_grid

GRID = utm_grid(12, 10)


def _raster(path: Path, labelled: dict[tuple[int, int], int],
            names: dict[int, str] | None = None) -> Path:
    array = np.zeros(GRID.shape, np.uint8)
    for (r, c), v in labelled.items():
        array[r, c] = v
    classes = ClassTable.from_ids(sorted(set(labelled.values())), names) if names else None
    return write_raster(path, array, GRID, nodata=0, classes=classes)


def _points(path: Path, grid: Grid, labelled: dict[tuple[int, int], str | int | None]) -> Path:
    """Point features at pixel centres with a ``label`` attribute (None: left unlabelled)."""
    features = []
    for (r, c), value in labelled.items():
        x, y = grid.transform * (c + 0.5, r + 0.5)
        features.append({"type": "Feature", "properties": {"label": value},
                         "geometry": {"type": "Point", "coordinates": [x, y]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features,
                                "crs": {"type": "name", "properties": {"name": "EPSG:32632"}}}))
    return path


def test_raster_and_named_points_merge_by_name(tmp_path: Path) -> None:
    base = _raster(tmp_path / "a.tif", {(0, 0): 1, (1, 1): 2, (2, 2): 1},
                   {1: "Road", 2: "Water"})
    extra = _points(tmp_path / "b.geojson", GRID, {(5, 5): "water", (6, 6): "Trees",
                                                   (2, 2): "Road", (7, 7): None})
    points, table = merge_label_sources([base, extra], GRID, label_field="label")
    assert [(c.id, c.name) for c in table] == [(1, "Road"), (2, "Water"), (3, "Trees")]
    got = {(int(r), int(c)): int(v) for r, c, v in zip(points.rows, points.cols, points.classes,
                                                       strict=True)}
    # (2, 2) labelled alike twice: once; (5, 5) "water" is class 2 by name; "Trees" is new: 3.
    assert got == {(0, 0): 1, (1, 1): 2, (2, 2): 1, (5, 5): 2, (6, 6): 3}


def test_integer_ids_merge_by_id_and_conflicts_are_refused(tmp_path: Path) -> None:
    base = _raster(tmp_path / "a.tif", {(0, 0): 1, (1, 1): 2})
    extra = _points(tmp_path / "b.geojson", GRID, {(3, 3): 2, (4, 4): 5})
    points, table = merge_label_sources([base, extra], GRID, label_field="label")
    assert table.ids == [1, 2, 5] and len(points) == 4
    clash = _points(tmp_path / "c.geojson", GRID, {(1, 1): 1})
    with pytest.raises(LabelError, match=r"1 pixel\(s\) carry two different classes.*row 1, "
                                         r"col 1: class 1 in c.geojson and 2 in a.tif"):
        merge_label_sources([base, clash], GRID, label_field="label")


def test_a_file_without_labels_on_the_grid_is_refused(tmp_path: Path) -> None:
    base = _raster(tmp_path / "a.tif", {(0, 0): 1, (1, 1): 2})
    far = utm_grid(5, 5, origin=(700_000.0, 5_000_000.0))
    elsewhere = _points(tmp_path / "far.geojson", far, {(1, 1): 1})
    with pytest.raises(LabelError, match=r"far\.geojson has no labelled pixel"):
        merge_label_sources([base, elsewhere], GRID, label_field="label")


def test_label_field_applies_to_vector_files_only() -> None:
    assert vector_label_field(Path("next.gpkg"), "label") == "label"
    assert vector_label_field("points.GeoJSON", "label") == "label"
    assert vector_label_field(Path("test_labels.tif"), "label") is None
    assert vector_label_field(Path("next.gpkg"), None) is None
