"""What a GIS sees in s2fin's outputs (issue 12 #9, #14, #16-#20), checked at the GDAL level
(rasterio and the ``gdalinfo`` program), plus a PyQGIS check where python3-qgis is installed."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint

from s2fin_cli.classes import default_color
from s2fin_cli.io.classmap import PROBABILITY_NODATA
from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    BANDS,
    PREDICT_FAST,
    SIZE,
    TinyData,
    assert_ok,
    assert_user_error,
    digests,
    run_cli,
)

GDALINFO = shutil.which("gdalinfo")


def gdalinfo(path: Path) -> dict[str, Any]:
    if GDALINFO is None:
        pytest.skip("gdalinfo (gdal-bin) is not installed")
    done = subprocess.run([GDALINFO, "-json", str(path)], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def maps(tiny: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A map, probabilities and confidence of a scene with a nodata corner, by the real CLI;
    the model is given by a relative path through another directory."""
    d = tmp_path_factory.mktemp("maps")
    optical, aux = scene_arrays(SIZE, SIZE, BANDS, 1, seed=5)
    optical[:, :4, :4] = np.nan
    aux[:, :4, :4] = np.nan
    write_stacked(d / "scene.tif", optical, aux, utm_grid(SIZE, SIZE))
    (d / "models").mkdir()
    shutil.copy2(tiny.model, d / "models" / "model.s2fin")
    (d / "work").mkdir()
    before = digests(d)
    assert_ok(run_cli(["predict", "../scene.tif", "-m", "../models/./model.s2fin", "-o",
                       "map.tif", "--probabilities", "p.tif", "--confidence", "c.tif",
                       *PREDICT_FAST], cwd=d / "work"))
    assert {k: v for k, v in digests(d).items() if k in before} == before  # inputs unchanged
    return d / "work"


# -- #16: probabilities and confidence: no valid value equals nodata ---------------------------

@pytest.mark.parametrize("name", ["p.tif", "c.tif"])
def test_probability_encoding_keeps_zero_a_value(name: str, maps: Path) -> None:
    with rasterio.open(maps / name) as ds:
        assert ds.nodata == PROBABILITY_NODATA == 255
        raw = ds.read()
        scales, offsets = np.array(ds.scales), np.array(ds.offsets)
    assert np.allclose(scales, 1 / 250) and np.allclose(offsets, 0.0)
    nodata = raw == ds.nodata
    assert nodata[:, :4, :4].all() and not nodata[:, 4:, 4:].any()
    valid = raw[~nodata]
    assert valid.max() <= 250  # 251..254 are never written
    # After scale/offset (what QGIS and gdal_translate -unscale show) nodata is 1.02, outside
    # [0, 1], and every valid value is inside it: p = 0 (raw 0) is a probability, not nodata.
    assert 255 * scales[0] + offsets[0] > 1.0
    decoded = raw.astype(np.float64) * scales[:, None, None] + offsets[:, None, None]
    assert ((decoded[~nodata] >= 0) & (decoded[~nodata] <= 1)).all()
    if name == "p.tif":
        np.testing.assert_allclose(decoded[:, 4:, 4:].sum(axis=0), 1.0, atol=raw.shape[0] / 500)
    band = gdalinfo(maps / name)["bands"][0]
    assert band["noDataValue"] == 255 and band["scale"] == pytest.approx(0.004)
    assert band.get("offset", 0.0) == 0.0


# -- #17: a style for probabilities and confidence ---------------------------------------------

@pytest.mark.parametrize("name", ["p", "c"])
def test_probability_rasters_have_a_ramp_style(name: str, maps: Path) -> None:
    root = ET.parse(maps / f"{name}.qml").getroot()
    renderer = root.find("./pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "singlebandpseudocolor"
    shader = renderer.find("./rastershader/colorrampshader")
    assert shader is not None
    assert float(shader.get("minimumValue", "nan")) == 0.0
    assert float(shader.get("maximumValue", "nan")) == 1.0
    values = [float(i.get("value", "nan")) for i in shader.iter("item")]
    assert values[0] == 0.0 and values[-1] == 1.0 and values == sorted(values)
    with rasterio.open(maps / f"{name}.tif") as ds:
        descriptions = ds.descriptions
    if name == "p":  # each band is named after its class
        with rasterio.open(maps / "map.tif") as ds:
            classes = json.loads(ds.tags()["S2FIN_CLASSES"])
        assert list(descriptions) == [f"P({c['name']})" for c in classes]


# -- #18: names and colours in every place a GeoTIFF can carry them ---------------------------

def test_class_map_carries_names_and_a_short_colour_table(maps: Path, tmp_path: Path) -> None:
    with rasterio.open(maps / "map.tif") as ds:
        classes = json.loads(ds.tags()["S2FIN_CLASSES"])
    names = {c["id"]: c["name"] for c in classes}
    info = gdalinfo(maps / "map.tif")
    band = info["bands"][0]
    # Ids <= 15: a 4-bit map, so 16 colour entries (GeoTIFF stores 2^bits), not 256.
    assert band["colorTable"]["count"] == 16
    for cid, entry in enumerate(band["colorTable"]["entries"]):
        if cid in names:
            color = next(c["color"] for c in classes if c["id"] == cid)
            assert entry == [*color, 255]
    assert band["categories"][0] == "nodata"
    assert {i: band["categories"][i] for i in names} == names
    rows = [r["f"] for r in info["rat"]["row"]]
    assert [(r[0], r[1]) for r in rows] == sorted(names.items())
    assert info["rat"]["tableType"] == "thematic"
    # Inside the GeoTIFF itself (the map copied alone, without .aux.xml or .qml):
    shutil.copy2(maps / "map.tif", tmp_path / "alone.tif")
    alone = gdalinfo(tmp_path / "alone.tif")["bands"][0]
    assert {k: v for k, v in alone["metadata"][""].items() if k.startswith("CLASS_")} == {
        f"CLASS_{i}": n for i, n in names.items()}
    assert alone["colorTable"]["count"] == 16


# -- #20: the model named by file name and checksum --------------------------------------------

def test_map_names_the_model_by_file_name_and_checksum(maps: Path, tiny: TinyData) -> None:
    import hashlib

    with rasterio.open(maps / "map.tif") as ds:
        tags = ds.tags()
    assert tags["S2FIN_MODEL"] == "model.s2fin"
    assert tags["S2FIN_MODEL_SHA256"] == hashlib.sha256(tiny.model.read_bytes()).hexdigest()


# -- #19: default colours are clearly distinct -------------------------------------------------

def _lab(rgb: tuple[int, int, int] | list[int]) -> tuple[float, float, float]:
    """sRGB (D65) to CIELAB."""
    c = np.asarray(rgb, float) / 255.0
    c = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                    [0.0193339, 0.1191920, 0.9503041]]) @ c
    t = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return (116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2]))


def ciede2000(lab1: tuple[float, float, float], lab2: tuple[float, float, float]) -> float:
    """CIEDE2000 colour difference (Sharma, Wu & Dalal 2005)."""
    (l1, a1, b1), (l2, a2, b2) = lab1, lab2
    cbar = (math.hypot(a1, b1) + math.hypot(a2, b2)) / 2
    g = 0.5 * (1 - math.sqrt(cbar**7 / (cbar**7 + 25**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = math.hypot(a1p, b1), math.hypot(a2p, b2)
    h1p = math.degrees(math.atan2(b1, a1p)) % 360 if c1p else 0.0
    h2p = math.degrees(math.atan2(b2, a2p)) % 360 if c2p else 0.0
    dh = h2p - h1p
    if c1p * c2p == 0:
        dh = 0.0
    elif dh > 180:
        dh -= 360
    elif dh < -180:
        dh += 360
    d_l, d_c = l2 - l1, c2p - c1p
    d_h = 2 * math.sqrt(c1p * c2p) * math.sin(math.radians(dh / 2))
    lbar, cbarp = (l1 + l2) / 2, (c1p + c2p) / 2
    if c1p * c2p == 0:
        hbar = h1p + h2p
    elif abs(h1p - h2p) <= 180:
        hbar = (h1p + h2p) / 2
    else:
        hbar = (h1p + h2p + 360) / 2 if h1p + h2p < 360 else (h1p + h2p - 360) / 2
    t = (1 - 0.17 * math.cos(math.radians(hbar - 30)) + 0.24 * math.cos(math.radians(2 * hbar))
         + 0.32 * math.cos(math.radians(3 * hbar + 6))
         - 0.20 * math.cos(math.radians(4 * hbar - 63)))
    s_l = 1 + 0.015 * (lbar - 50) ** 2 / math.sqrt(20 + (lbar - 50) ** 2)
    s_c, s_h = 1 + 0.045 * cbarp, 1 + 0.015 * cbarp * t
    r_t = (-math.sin(math.radians(60 * math.exp(-(((hbar - 275) / 25) ** 2))))
           * 2 * math.sqrt(cbarp**7 / (cbarp**7 + 25**7)))
    return math.sqrt((d_l / s_l) ** 2 + (d_c / s_c) ** 2 + (d_h / s_h) ** 2
                     + r_t * (d_c / s_c) * (d_h / s_h))


def test_ciede2000_matches_the_published_test_data() -> None:
    # Sharma, Wu & Dalal (2005), pairs 1, 3, 7, 17 and 25 of their table.
    pairs = [((50, 2.6772, -79.7751), (50, 0, -82.7485), 2.0425),
             ((50, 2.8361, -74.0200), (50, 0, -82.7485), 3.4412),
             ((50, 0, 0), (50, -1, 2), 2.3669),
             ((50, 2.5, 0), (73, 25, -18), 27.1492),
             ((60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644)]
    for lab1, lab2, expected in pairs:
        assert ciede2000(lab1, lab2) == pytest.approx(expected, abs=1e-4)


def _closest(colors: dict[str, Any]) -> tuple[float, str, str]:
    labs = {k: _lab(v) for k, v in colors.items()}
    keys = list(colors)
    return min((ciede2000(labs[a], labs[b]), a, b)
               for i, a in enumerate(keys) for b in keys[i + 1:])


MIN_DELTA_E = 15.0


@pytest.mark.parametrize("preset", ["urban", "agricultural", "msi-sar"])
def test_synth_class_colours_are_distinct(preset: str, tmp_path: Path) -> None:
    assert_ok(run_cli(["synth", "s", "--preset", preset, "--size", "48", "--bands", "12" if
                       preset == "msi-sar" else "8"], cwd=tmp_path))
    with rasterio.open(tmp_path / "s" / "ground_truth.tif") as ds:
        classes = json.loads(ds.tags()["S2FIN_CLASSES"])
        cmap = ds.colormap(1)
    assert all(tuple(cmap[c["id"]][:3]) == tuple(c["color"]) for c in classes)
    delta, a, b = _closest({c["name"]: c["color"] for c in classes})
    assert delta >= MIN_DELTA_E, f"{a} and {b} are only {delta:.1f} apart"


def test_default_palette_is_distinct(maps: Path) -> None:
    delta, a, b = _closest({str(i): default_color(i) for i in range(1, 21)})
    assert delta >= MIN_DELTA_E, f"ids {a} and {b} are only {delta:.1f} apart"
    with rasterio.open(maps / "map.tif") as ds:  # a model trained on labels without names
        cmap = ds.colormap(1)
        ids = [c["id"] for c in json.loads(ds.tags()["S2FIN_CLASSES"])]
    assert all(cmap[i][:3] == default_color(i) for i in ids)


# -- #9: a GCP-georeferenced HSI ---------------------------------------------------------------

def _gcp_copy(src: Path, dst: Path) -> list[GroundControlPoint]:
    with rasterio.open(src) as ds:
        profile, data, t, crs = ds.profile, ds.read(), ds.transform, ds.crs
    gcps = [GroundControlPoint(row=r, col=c, x=(t * (c, r))[0], y=(t * (c, r))[1], id=f"p{i}")
            for i, (r, c) in enumerate([(0, 0), (0, SIZE), (SIZE, 0), (SIZE, SIZE)])]
    profile.pop("transform")
    with rasterio.open(dst, "w", **{**profile, "crs": crs, "gcps": gcps}) as out:
        out.write(data)
    return gcps


def test_gcp_georeferenced_hsi_gives_a_georeferenced_map(tiny: TinyData,
                                                          tmp_path: Path) -> None:
    gcps = _gcp_copy(tiny.hsi, tmp_path / "hsi.tif")
    before = digests(tmp_path, tiny.root)
    result = run_cli(["predict", "--hsi", "hsi.tif", "--lidar", tiny.lidar, "-m", tiny.model,
                      "-o", "map.tif", *PREDICT_FAST], cwd=tmp_path)
    assert_ok(result)
    assert "NotGeoreferencedWarning:" not in result.stderr and "site-packages" not in result.stderr
    assert {k: v for k, v in digests(tmp_path, tiny.root).items() if k in before} == before
    with rasterio.open(tmp_path / "map.tif") as ds:
        points, crs = ds.gcps
    assert crs is not None and crs.to_epsg() == 32632
    assert [(g.row, g.col, g.x, g.y) for g in points] == [(g.row, g.col, g.x, g.y) for g in gcps]
    # The stacked scene keeps them too.
    assert_ok(run_cli(["stack", "--hsi", "hsi.tif", "--lidar", tiny.lidar, "-o", "s.tif"],
                      cwd=tmp_path))
    with rasterio.open(tmp_path / "s.tif") as ds:
        assert len(ds.gcps[0]) == 4 and ds.gcps[1].to_epsg() == 32632


def test_gcp_hsi_with_a_lidar_of_another_size_is_refused(tiny: TinyData, tmp_path: Path) -> None:
    _gcp_copy(tiny.hsi, tmp_path / "hsi.tif")
    optical, aux = scene_arrays(SIZE * 2, SIZE * 2, BANDS, 1, seed=2)
    write_stacked(tmp_path / "big.tif", optical, aux, utm_grid(SIZE * 2, SIZE * 2, res=0.5))
    before = digests(tmp_path)
    result = run_cli(["stack", "--hsi", "hsi.tif", "--lidar", "big.tif", "-o", "s.tif"],
                     cwd=tmp_path)
    assert_user_error(result, 4, match="orthorectify")
    assert digests(tmp_path) == before


# -- #14: a rotated grid -----------------------------------------------------------------------

def test_rotated_grid_reports_true_pixel_size_and_rotation(tmp_path: Path) -> None:
    transform = Affine.translation(660_000, 5_100_000) * Affine.rotation(30) * Affine.scale(2, -2)
    with rasterio.open(tmp_path / "r.tif", "w", driver="GTiff", width=8, height=8, count=1,
                       dtype="uint8", crs="EPSG:32632", transform=transform) as ds:
        ds.write(np.ones((1, 8, 8), np.uint8))
    before = digests(tmp_path)
    result = run_cli(["inspect", "r.tif", "--json"], cwd=tmp_path)
    assert_ok(result)
    assert digests(tmp_path) == before
    grid = json.loads(result.stdout)["inputs"][0]["grid"]
    assert grid["resolution"] == pytest.approx([2.0, 2.0])
    assert grid["rotation_deg"] == pytest.approx(30.0)
    table = run_cli(["inspect", "r.tif"], cwd=tmp_path)
    assert_ok(table)
    assert "2 x 2 (grid rotated 30°)" in table.stdout


# -- QGIS itself (where python3-qgis is installed) ---------------------------------------------

_QGIS_SCRIPT = """
import json, sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsPointXY, QgsRaster
app = QgsApplication([], False)
app.initQgis()
out = {}
for path in sys.argv[1:]:
    layer = QgsRasterLayer(path, path, "gdal")
    renderer = layer.renderer()
    provider = layer.dataProvider()
    entry = {"valid": layer.isValid(), "renderer": renderer.type(),
             "nodata": provider.sourceNoDataValue(1)}
    if renderer.type() == "paletted":
        entry["labels"] = [c.label for c in renderer.classes()]
    ext = layer.extent()
    x = ext.xMaximum() - layer.rasterUnitsPerPixelX() / 2
    y = ext.yMinimum() + layer.rasterUnitsPerPixelY() / 2
    entry["corner"] = provider.identify(QgsPointXY(x, y), QgsRaster.IdentifyFormatValue).results()
    x0 = ext.xMinimum() + layer.rasterUnitsPerPixelX() / 2
    y0 = ext.yMaximum() - layer.rasterUnitsPerPixelY() / 2
    entry["nodata_corner"] = provider.identify(QgsPointXY(x0, y0),
                                               QgsRaster.IdentifyFormatValue).results()
    out[path] = entry
print(json.dumps(out, default=str), flush=True)
import os
os._exit(0)  # PyQGIS may crash while tearing down at exit; the report is out
"""


def _qgis_python() -> str | None:
    """The system Python that imports PyQGIS (Debian's python3-qgis), if any."""
    for candidate in dict.fromkeys(["/usr/bin/python3", shutil.which("python3")]):
        if candidate and Path(candidate).exists() and subprocess.run(
                [candidate, "-c", "import qgis.core"], capture_output=True,
                check=False).returncode == 0:
            return candidate
    return None


def test_qgis_shows_the_outputs_as_intended(maps: Path) -> None:
    python3 = _qgis_python()
    if python3 is None:
        pytest.skip("python3-qgis is not installed (apt-get install qgis python3-qgis)")
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([python3, "-c", _QGIS_SCRIPT, str(maps / "map.tif"),
                           str(maps / "p.tif"), str(maps / "c.tif")], capture_output=True,
                          text=True, env=env, check=True, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    with rasterio.open(maps / "map.tif") as ds:
        names = [c["name"] for c in json.loads(ds.tags()["S2FIN_CLASSES"])]
    classes = report[str(maps / "map.tif")]
    assert classes["valid"] and classes["renderer"] == "paletted"
    assert classes["labels"] == names
    for name in ("p.tif", "c.tif"):
        entry = report[str(maps / name)]
        assert entry["valid"] and entry["renderer"] == "singlebandpseudocolor"
        value = float(entry["corner"]["1"])  # a classified pixel: a probability in [0, 1]
        assert 0.0 <= value <= 1.0
        assert entry["nodata_corner"]["1"] in (None, "None", "")  # the nodata corner
