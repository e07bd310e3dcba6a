"""Inputs read as what they are, or refused in one line (issue 12 #6-#8, #10, #11, #13, #14):
GDAL scale/offset applied, complex SAR and multi-band labels refused, vector labels through OGR
(pyogrio) with every skipped feature counted, GDAL/PROJ failures as s2fin's one-line errors.

Every case drives the real CLI and checks that no input (and no existing output) changed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS

from tests.helpers import REPO_ROOT
from tests.reliability.harness import (
    PREDICT_FAST,
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_ok,
    assert_user_error,
    cli_env,
    cli_env_without_osgeo,
    digests,
    run_cli,
)


def _refused(args: list[object], code: int, cwd: Path, *watched: Path,
             match: str | None = None, env: dict[str, str] | None = None) -> str:
    before = digests(*watched)
    line = assert_user_error(run_cli(args, cwd=cwd, env=env), code, match=match)
    assert digests(*watched) == before, "a file changed, appeared or vanished"
    return line


def _copy(src: Path, dst: Path, **changes: Any) -> Path:
    """``src`` rewritten as ``dst`` with profile ``changes`` and data from ``data=``."""
    with rasterio.open(src) as ds:
        profile, data = ds.profile, ds.read()
    data = changes.pop("data", data)
    scales = changes.pop("scales", None)
    profile.update(count=data.shape[0], dtype=str(data.dtype), **changes)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        if scales is not None:
            out.scales = scales
            out.offsets = (0.0,) * data.shape[0]
    return dst


# -- #6: GDAL scale/offset ---------------------------------------------------------------------

SCALE = np.float32(0.01)


@pytest.fixture
def scaled_pair(tiny: TinyData, tmp_path: Path) -> Path:
    """The same HSI twice: int16 raw counts with GDAL scale 0.01, and the physical float32
    values (raw x 0.01, computed in float32 as GDAL's scale is applied)."""
    with rasterio.open(tiny.hsi) as ds:
        physical = ds.read()
    raw = np.round(physical / SCALE).astype(np.int16)
    _copy(tiny.hsi, tmp_path / "scaled.tif", data=raw, nodata=-32768, predictor=1,
          scales=(float(SCALE),) * raw.shape[0])
    _copy(tiny.hsi, tmp_path / "physical.tif", data=raw.astype(np.float32) * SCALE)
    shutil.copy2(tiny.lidar, tmp_path / "lidar.tif")
    return tmp_path


def test_scale_and_offset_are_applied_on_read(scaled_pair: Path) -> None:
    d = scaled_pair
    before = digests(d)
    for name in ("scaled", "physical"):
        assert_ok(run_cli(["stack", "--hsi", f"{name}.tif", "--lidar", "lidar.tif", "-o",
                           f"stack_{name}.tif"], cwd=d))
    assert {k: v for k, v in digests(d).items() if k in before} == before
    with rasterio.open(d / "stack_scaled.tif") as a, rasterio.open(d / "stack_physical.tif") as b:
        assert a.dtypes[0] == "float32"  # physical values, not raw counts
        np.testing.assert_array_equal(a.read(), b.read())


def test_a_scaled_scene_gives_the_map_of_its_physical_values(scaled_pair: Path,
                                                             tiny: TinyData) -> None:
    d = scaled_pair
    for name in ("scaled", "physical"):
        assert_ok(run_cli(["predict", "--hsi", f"{name}.tif", "--lidar", "lidar.tif", "-m",
                           tiny.model, "-o", f"map_{name}.tif", *PREDICT_FAST], cwd=d))
    with rasterio.open(d / "map_scaled.tif") as a, rasterio.open(d / "map_physical.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())


# -- #7: complex SAR ---------------------------------------------------------------------------

def test_complex_sar_is_refused(tiny: TinyData, tmp_path: Path) -> None:
    with rasterio.open(tiny.lidar) as ds:
        amplitude = ds.read()
    _copy(tiny.lidar, tmp_path / "slc.tif", data=(amplitude + 1j).astype(np.complex64),
          nodata=None, predictor=1)
    for args in (["stack", "--hsi", tiny.hsi, "--sar", "slc.tif", "-o", "s.tif"],
                 ["predict", "--hsi", tiny.hsi, "--sar", "slc.tif", "-m", tiny.model, "-o",
                  "m.tif", *PREDICT_FAST]):
        line = _refused(args, 3, tmp_path, tmp_path, tiny.root, match="complex")
        assert "intensity or amplitude" in line


# -- #8: multi-band labels ---------------------------------------------------------------------

def test_rgb_label_raster_is_refused(tiny: TinyData, tmp_path: Path) -> None:
    with rasterio.open(tiny.labels) as ds:
        ids = ds.read(1)
    rgb = np.stack([ids * 40, ids * 20, ids * 10]).astype(np.uint8)  # red: 40, 80, 120
    _copy(tiny.labels, tmp_path / "rgb.tif", data=rgb, photometric="RGB", nodata=None)
    _refused(["train", tiny.scene, "--labels", "rgb.tif", "-o", "m.s2fin", *TINY_TRAIN], 5,
             tmp_path, tmp_path, tiny.root, match="3 bands")


# -- #10: synth CRS ----------------------------------------------------------------------------

def test_synth_in_a_geographic_crs_is_in_degrees(tmp_path: Path) -> None:
    assert_ok(run_cli(["synth", "s", "--size", "48", "--bands", "8", "--epsg", "4326"],
                      cwd=tmp_path))
    with rasterio.open(tmp_path / "s" / "hsi.tif") as ds:
        assert ds.crs.to_epsg() == 4326
        west, south, east, north = ds.bounds
        res_x, res_y = ds.res
    assert 11 < west < east < 12 and 48 < south < north < 48.3  # Munich, as the UTM default
    lat = np.radians((south + north) / 2)
    assert res_y * 110_574 == pytest.approx(1.0, rel=1e-3)  # 1 m pixels on the ground
    assert res_x * 111_320 * np.cos(lat) == pytest.approx(1.0, rel=1e-3)


def test_synth_unknown_epsg_is_exit_9(tmp_path: Path) -> None:
    _refused(["synth", "s", "--size", "48", "--epsg", "99999"], 9, tmp_path, tmp_path,
             match="99999")
    assert not (tmp_path / "s").exists()


# -- #11, #13: vector labels through OGR -------------------------------------------------------

def _ring(col0: int, row0: int, col1: int, row1: int) -> list[list[float]]:
    x0, y0 = 660_000.0, 5_100_000.0  # tests.helpers.utm_grid
    pts = [(col0, row0), (col1, row0), (col1, row1), (col0, row1), (col0, row0)]
    return [[x0 + c, y0 - r] for c, r in pts]


def _collection(features: list[dict[str, Any]], crs: Any = "utm") -> dict[str, Any]:
    out: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs == "utm":
        out["crs"] = {"type": "name", "properties": {"name": "EPSG:32632"}}
    elif crs is not None:
        out["crs"] = crs
    return out


def _feature(geometry: Any, **properties: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def _polygon(col0: int, row0: int, col1: int, row1: int) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [_ring(col0, row0, col1, row1)]}


def test_skipped_features_are_counted(tiny: TinyData, tmp_path: Path) -> None:
    half = SIZE // 2
    features = [_feature(_polygon(0, 0, half, SIZE), landcover="roof"),
                _feature(_polygon(half, 0, SIZE, SIZE), landcover="tree"),
                _feature(None, landcover="tree"),  # null geometry
                _feature(_polygon(0, 0, 4, 4)),  # no class
                _feature({"type": "Blob", "coordinates": [0, 0]}, landcover="roof")]
    (tmp_path / "labels.geojson").write_text(json.dumps(_collection(features)))
    before = digests(tmp_path, tiny.root)
    result = run_cli(["train", tiny.scene, "--labels", "labels.geojson", "-o", "m.s2fin",
                      *TINY_TRAIN], cwd=tmp_path)
    assert_ok(result)
    assert ("labels.geojson: 3 of 5 features skipped: 1 without a value in 'landcover', 2 "
            "without a geometry") in result.stderr
    assert "Traceback" not in result.stderr and "RuntimeWarning" not in result.stderr
    assert {k: v for k, v in digests(tmp_path, tiny.root).items() if k in before} == before


@pytest.mark.parametrize("crs", ["EPSG:32632",  # a string: OGR ignores it (WGS 84 applies)
                                 {"type": "name", "properties": {"name": "EPSG:99999"}}])
def test_geojson_crs_member_gdal_does_not_understand(crs: Any, tiny: TinyData,
                                                     tmp_path: Path) -> None:
    features = [_feature(_polygon(0, 0, SIZE, SIZE), landcover="roof")]
    (tmp_path / "labels.geojson").write_text(json.dumps(_collection(features, crs)))
    _refused(["train", tiny.scene, "--labels", "labels.geojson", "-o", "m.s2fin", *TINY_TRAIN],
             5, tmp_path, tmp_path, tiny.root, match="not longitude/latitude")


def test_geopackage_labels_without_osgeo(tiny: TinyData, tmp_path: Path) -> None:
    """Written with pyogrio (no GDAL Python bindings), read by the CLI with osgeo hidden."""
    import pyogrio.raw
    import shapely

    half = SIZE // 2
    polygons = [shapely.geometry.shape(_polygon(0, 0, half, SIZE)),
                shapely.geometry.shape(_polygon(half, 0, SIZE, SIZE))]
    pyogrio.raw.write(tmp_path / "labels.gpkg", np.array(shapely.to_wkb(polygons), dtype=object),
                      [np.array(["roof", "tree"], dtype=object)], fields=["landcover"],
                      geometry_type="Polygon", crs="EPSG:32632", driver="GPKG")
    env = cli_env_without_osgeo()
    result = run_cli(["train", tiny.scene, "--labels", "labels.gpkg", "-o", "m.s2fin",
                      *TINY_TRAIN], cwd=tmp_path, env=env)
    assert_ok(result)
    inspected = run_cli(["inspect", "m.s2fin", "--json"], cwd=tmp_path)
    assert_ok(inspected)
    summary = json.loads(inspected.stdout)["inputs"][0]["summary"]
    assert summary["classes"] == "1=roof, 2=tree"


def test_broken_proj_data_with_vector_labels(tiny: TinyData, tmp_path: Path) -> None:
    features = [_feature(_polygon(0, 0, SIZE, SIZE), landcover="roof")]
    (tmp_path / "labels.geojson").write_text(json.dumps(_collection(features)))
    env = cli_env(PROJ_DATA=str(tmp_path / "nowhere"), PROJ_LIB=str(tmp_path / "nowhere"))
    _refused(["train", tiny.scene, "--labels", "labels.geojson", "-o", "m.s2fin", *TINY_TRAIN],
             3, tmp_path, tmp_path, tiny.root, match="PROJ", env=env)


def test_engineering_crs_hsi_with_utm_lidar(tiny: TinyData, tmp_path: Path) -> None:
    local = CRS.from_wkt('ENGCRS["site grid",EDATUM["site"],CS[Cartesian,2],'
                         'AXIS["x",east,LENGTHUNIT["metre",1]],'
                         'AXIS["y",north,LENGTHUNIT["metre",1]]]')
    _copy(tiny.hsi, tmp_path / "hsi.tif", crs=local, width=SIZE - 4, height=SIZE - 4,
          data=_copy_data(tiny.hsi)[:, :-4, :-4])
    line = _refused(["stack", "--hsi", "hsi.tif", "--lidar", tiny.lidar, "-o", "s.tif"], 4,
                    tmp_path, tmp_path, tiny.root, match="cannot be transformed")
    assert "site grid" in line and "$schema" not in line


def _copy_data(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return np.asarray(ds.read())


def test_truncated_matlab_v73_file(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    spec = importlib.util.spec_from_file_location(
        "make_benchmark_standins", REPO_ROOT / "tests" / "data_scripts" /
        "make_benchmark_standins.py")
    assert spec is not None and spec.loader is not None
    standins = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_benchmark_standins", standins)
    spec.loader.exec_module(standins)
    src = tmp_path / "src"
    src.mkdir()
    standins.write_v73(src / "Italy_hsi.mat",
                       data=np.random.default_rng(0).random((40, 30, 8)).astype(np.float32))
    data = (src / "Italy_hsi.mat").read_bytes()
    (src / "Italy_hsi.mat").write_bytes(data[: len(data) // 2])
    _refused(["datasets", "import", "trento", "src", "-o", "out"], 3, tmp_path, tmp_path,
             match="Italy_hsi.mat")


# -- #14: point labels in a CSV ----------------------------------------------------------------

def test_points_csv_as_labels_gets_a_helpful_message(tiny: TinyData, tmp_path: Path) -> None:
    (tmp_path / "points.csv").write_text("x,y,class\n660002.5,5099997.5,1\n660010.5,5099990.5,2\n")
    line = _refused(["train", tiny.scene, "--labels", "points.csv", "-o", "m.s2fin",
                     *TINY_TRAIN], 3, tmp_path, tmp_path, tiny.root, match="text table")
    assert "ogr2ogr" in line and "EPSG:32632" in line
