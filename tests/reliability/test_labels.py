"""Label problems (5) and unusual but valid labels: vectors in another CRS, invalid geometries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from rasterio.warp import transform_geom

from s2fin_cli.io.writer import write_raster
from tests.helpers import utm_grid
from tests.reliability.harness import (
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    class_stripes,
    run_cli,
    snapshot,
)

GRID = utm_grid(SIZE, SIZE)
X0, Y0 = GRID.transform.c, GRID.transform.f  # top-left corner, 1 m pixels


def _box(col0: float, row0: float, col1: float, row1: float) -> list[list[float]]:
    """A closed ring around pixel columns col0..col1 and rows row0..row1 (UTM metres)."""
    x0, x1, y0, y1 = X0 + col0, X0 + col1, Y0 - row0, Y0 - row1
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _bowtie(col0: float, row0: float, col1: float, row1: float) -> list[list[float]]:
    """A self-intersecting ring (invalid polygon) over the same box."""
    x0, x1, y0, y1 = X0 + col0, X0 + col1, Y0 - row0, Y0 - row1
    return [[x0, y0], [x1, y1], [x1, y0], [x0, y1], [x0, y0]]


def _stripe_features(ring: Any) -> list[dict[str, Any]]:
    # One polygon inside each of the three 8-pixel-wide class stripes.
    return [{"type": "Feature", "properties": {"class": k + 1},
             "geometry": {"type": "Polygon", "coordinates": [ring(8 * k + 1, 1, 8 * k + 7,
                                                                  SIZE - 1)]}}
            for k in range(3)]


def _geojson(path: Path, features: list[dict[str, Any]], crs: str | None) -> Path:
    doc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs is not None:  # the legacy crs member; without it GeoJSON is WGS 84 lon/lat
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def _train(tiny: TinyData, d: Path, labels: Path, *extra: Any) -> Any:
    (d / "out").mkdir(exist_ok=True)
    return run_cli(["train", tiny.scene, "--labels", labels, "-o", d / "out" / "m.s2fin",
                    *TINY_TRAIN, *extra], cwd=d)


def _all_zero(d: Path, tiny: TinyData) -> list[Any]:
    write_raster(d / "zeros.tif", np.zeros((SIZE, SIZE), np.uint8), GRID, nodata=0)
    return ["--labels", d / "zeros.tif"]


def _empty_vector(d: Path, tiny: TinyData) -> list[Any]:
    return ["--labels", _geojson(d / "empty.geojson", [], "EPSG:32632")]


def _vector_elsewhere(d: Path, tiny: TinyData) -> list[Any]:
    far = [{"type": "Feature", "properties": {"class": 1},
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1],
                                                             [0, 0]]]}}]
    return ["--labels", _geojson(d / "far.geojson", far, None)]


def _one_class(d: Path, tiny: TinyData) -> list[Any]:
    labels = np.where(class_stripes() == 1, 1, 0).astype(np.uint8)
    write_raster(d / "one.tif", labels, GRID, nodata=0)
    return ["--labels", d / "one.tif"]


def _unknown_test_class(d: Path, tiny: TinyData) -> list[Any]:
    test = np.zeros((SIZE, SIZE), np.uint8)
    test[1::2, 1::2] = class_stripes()[1::2, 1::2]
    test[5, 5] = 7  # a class the training labels (and so the model) do not have
    write_raster(d / "test7.tif", test, GRID, nodata=0)
    return ["--labels", tiny.labels, "--test-labels", d / "test7.tif"]


LABEL_ERRORS = {
    "all-zero": (_all_zero, "no labelled pixel"),
    "empty-vector": (_empty_vector, "no features"),
    "vector-elsewhere": (_vector_elsewhere, "no labelled pixel"),
    "one-class": (_one_class, "at least 2"),
    "unknown-test-class": (_unknown_test_class, "[7]"),
}


@pytest.mark.parametrize("case", list(LABEL_ERRORS))
def test_label_problems(case: str, tiny: TinyData, tmp_path: Path) -> None:
    make, expected = LABEL_ERRORS[case]
    args = make(tmp_path, tiny)
    (tmp_path / "out").mkdir()
    before = snapshot(tmp_path)
    result = run_cli(["train", tiny.scene, *args, "-o", tmp_path / "out" / "m.s2fin",
                      *TINY_TRAIN], cwd=tmp_path)
    assert_user_error(result, 5, match=expected)
    assert_nothing_new(before, tmp_path)


def test_vector_labels_in_another_crs_are_reprojected(tiny: TinyData, tmp_path: Path) -> None:
    features = _stripe_features(_box)
    for f in features:  # UTM 32N -> WGS 84 longitude/latitude (GeoJSON's default CRS)
        f["geometry"] = transform_geom("EPSG:32632", "EPSG:4326", f["geometry"])
    labels = _geojson(tmp_path / "lonlat.geojson", features, None)
    result = _train(tiny, tmp_path, labels, "--json")
    assert_ok(result)
    assert "reprojected labels" in result.stderr, result.stderr
    assert (tmp_path / "out" / "m.s2fin").is_file()
    done = json.loads(result.stdout.strip().splitlines()[-1])
    # 3 stripes x 6 x 22 pixels (minus boundary effects), split into train and validation.
    counted = sum(r["train"] + r["val"] + r["dropped_overlap"] for r in done["samples"])
    assert 3 * 5 * 21 <= counted <= 3 * 7 * 23


def test_invalid_geometries_are_made_valid_with_a_warning(tiny: TinyData,
                                                         tmp_path: Path) -> None:
    labels = _geojson(tmp_path / "bowties.geojson", _stripe_features(_bowtie), "EPSG:32632")
    result = _train(tiny, tmp_path, labels)
    assert_ok(result)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any("made 3 invalid geometries valid" in line for line in warnings), result.stderr
    assert (tmp_path / "out" / "m.s2fin").is_file()
