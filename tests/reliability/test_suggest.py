"""``s2fin suggest`` through the real CLI (issue 15), and the loop back into ``s2fin train``.

- The suggestions are a GeoPackage in the scene's CRS with the fields the analyst needs, a
  ``layer_styles`` default style, and a CSV on request; labels and their patch neighbourhoods
  are never suggested; the same command twice gives the same file content.
- The analyst's filled-in GeoPackage trains with the original labels (``--labels A --labels
  next.gpkg --label-field label``); points left unlabelled are skipped with a warning; a
  point whose class contradicts another label file is exit 5, before any training.
- Every failure is one line with its exit code, and leaves nothing behind or changed.
- QGIS itself (where python3-qgis is installed) opens the layer styled, with a drop-down of
  class names on ``label``.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pyogrio
import pyogrio.raw
import pytest
import rasterio
from rasterio.crs import CRS

from s2fin_cli.io.writer import write_raster
from s2fin_cli.sampling import within_distance
from tests.reliability.harness import (
    SIZE,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    class_stripes,
    digests,
    run_cli,
    snapshot,
)

FAST = ["--device", "cpu", "--batch-size", "256"]


def _points(path: Path) -> dict[str, np.ndarray]:
    meta, _fids, _wkb, columns = pyogrio.raw.read(path, layer=0)
    return dict(zip(meta["fields"].tolist(), columns, strict=True))


def _sparse_labels(tiny: TinyData, directory: Path) -> Path:
    """Four labelled pixels per class stripe, far apart: most of the scene stays eligible."""
    labels = np.zeros((SIZE, SIZE), np.uint8)
    stripes = class_stripes()
    for r in (2, 20):
        for c in (1, 6, 9, 14, 17, 22):
            labels[r, c] = stripes[r, c]
    return write_raster(directory / "sparse.tif", labels, tiny.grid, nodata=0)


def test_suggest_writes_a_styled_layer_and_excludes_labels(tiny: TinyData, tmp_path: Path,
                                                           out_dir: Path) -> None:
    sparse = _sparse_labels(tiny, tmp_path)
    out = out_dir / "next.gpkg"
    args = ["suggest", tiny.scene, "-m", tiny.model, "-n", "6", "--labels", sparse, *FAST]
    result = run_cli([*args, "-o", out, "--csv", out_dir / "next.csv", "--json"])
    assert_ok(result)
    report = json.loads(result.stdout)
    assert report["suggested"] == len(report["suggestions"]) > 0
    assert report["scored_pixels"] == report["eligible_pixels"] < SIZE * SIZE
    info = pyogrio.read_info(out, layer="next")
    assert CRS.from_user_input(info["crs"]) == tiny.grid.crs
    assert info["features"] == report["suggested"]
    values = _points(out)
    assert {"rank", "row", "col", "pred_id", "pred_name", "confidence", "margin", "entropy",
            "score", "label"} <= set(values)
    with rasterio.open(sparse) as ds:
        rows, cols = np.nonzero(ds.read(1))
    assert not within_distance(values["row"].astype(np.int64), values["col"].astype(np.int64),
                               rows, cols, 4).any()  # patch 7: outside every label's patch
    assert (out_dir / "next.csv").read_text().startswith("rank,row,col,x,y,")
    assert [str(n) for n in pyogrio.list_layers(out)[:, 0]] == ["next", "layer_styles"]
    # Deterministic: the same command gives the same points.
    again = run_cli(["-q", *args, "-o", out_dir / "again.gpkg"])
    assert_ok(again)
    twin = _points(out_dir / "again.gpkg")
    for name in ("row", "col", "pred_id", "score"):
        assert np.array_equal(twin[name], values[name])


def test_filled_in_suggestions_train_with_the_original_labels(tiny: TinyData, tmp_path: Path,
                                                              out_dir: Path) -> None:
    out = out_dir / "next.gpkg"
    assert_ok(run_cli(["suggest", tiny.scene, "-m", tiny.model, "-n", "5", "-o", out, *FAST]))
    truth = class_stripes()
    with sqlite3.connect(out) as db:  # the analyst labels three points, leaves two
        points = db.execute("SELECT fid, row, col FROM next ORDER BY rank").fetchall()
        for fid, r, c in points[:3]:
            db.execute("UPDATE next SET label = ? WHERE fid = ?", (int(truth[r, c]), fid))
    model = out_dir / "m2.s2fin"
    result = run_cli(["train", tiny.scene, "--labels", tiny.labels, "--labels", out,
                      "--label-field", "label", "-o", model, *TINY_TRAIN])
    assert_ok(result)
    assert "2 of 5 features skipped: 2 without a value in 'label'" in result.stderr
    assert model.exists()
    # Without --label-field, 'label' is found by name (one of the default class fields), and
    # raster test labels work beside it.
    result = run_cli(["train", tiny.scene, "--labels", tiny.labels, "--labels", out,
                      "--test-labels", tiny.test_labels, "-o", out_dir / "m2b.s2fin",
                      *TINY_TRAIN])
    assert_ok(result)
    assert "using field 'label' for classes" in result.stderr
    # A point labelled against the label raster: exit 5, nothing trained or written.
    fid, r, c = points[0]
    with sqlite3.connect(out) as db:
        db.execute("UPDATE next SET label = ? WHERE fid = ?", (int(truth[r, c]) % 3 + 1, fid))
    other = np.zeros((SIZE, SIZE), np.uint8)
    other[r, c] = truth[r, c]
    raster = write_raster(tmp_path / "other.tif", other, tiny.grid, nodata=0)
    before = snapshot(out_dir)
    result = run_cli(["train", tiny.scene, "--labels", raster, "--labels", out,
                      "--label-field", "label", "-o", out_dir / "m3.s2fin", *TINY_TRAIN])
    assert_user_error(result, 5, match="two different classes")
    assert_nothing_new(before, out_dir)


def test_label_field_with_raster_test_labels(tiny: TinyData, out_dir: Path) -> None:
    out = out_dir / "next.gpkg"
    assert_ok(run_cli(["suggest", tiny.scene, "-m", tiny.model, "-n", "3", "-o", out, *FAST]))
    truth = class_stripes()
    with sqlite3.connect(out) as db:
        for fid, r, c in db.execute("SELECT fid, row, col FROM next").fetchall():
            db.execute("UPDATE next SET label = ? WHERE fid = ?", (int(truth[r, c]), fid))
    result = run_cli(["train", tiny.scene, "--labels", tiny.labels, "--labels", out,
                      "--label-field", "label", "--test-labels", tiny.test_labels, "-o",
                      out_dir / "m.s2fin", *TINY_TRAIN])
    assert_ok(result)


@pytest.mark.parametrize("case", ["exists", "input", "shp", "directory", "same-csv", "n0",
                                  "acquisition", "cap", "missing", "model", "modality",
                                  "conflict"])
def test_suggest_failures_are_one_line_and_change_nothing(case: str, tiny: TinyData,
                                                          tmp_path: Path, out_dir: Path) -> None:
    out = out_dir / "next.gpkg"
    base = ["suggest", tiny.scene, "-m", tiny.model, "-n", "4", *FAST]
    code, match, args = {
        "exists": (8, "exists", [*base, "-o", out]),
        "input": (8, "input", [*base, "--labels", out, "-o", out, "--overwrite"]),
        "shp": (8, ".gpkg", [*base, "-o", out_dir / "next.shp"]),
        "directory": (8, "director", [*base, "-o", f"{out_dir}{os.sep}"]),
        "same-csv": (8, "twice", [*base, "-o", out, "--csv", out, "--overwrite"]),
        "n0": (9, "-n", [*base[:-4], "-n", "0", "-o", out_dir / "a.gpkg"]),
        "acquisition": (9, "acquisition", [*base, "--acquisition", "bald", "-o",
                                           out_dir / "b.gpkg"]),
        "cap": (9, "max-candidates", [*base, "--max-candidates", "2", "-o", out_dir / "c.gpkg"]),
        "missing": (3, "", ["suggest", tmp_path / "nope.tif", "-m", tiny.model, "-o",
                            out_dir / "d.gpkg"]),
        "model": (6, "", ["suggest", tiny.scene, "-m", tiny.labels, "-o", out_dir / "e.gpkg"]),
        "modality": (7, "lidar", ["suggest", "--hsi", tiny.hsi, "--sar", tiny.lidar, "-m",
                                  tiny.model, "-o", out_dir / "f.gpkg"]),
        "conflict": (5, "two different classes", [*base, "--labels", tiny.labels, "--labels",
                                                  tmp_path / "conflict.tif", "-o",
                                                  out_dir / "g.gpkg"]),
    }[case]
    if case in ("exists", "input", "same-csv"):
        assert_ok(run_cli(["-q", *base, "-o", out]))
    if case == "conflict":
        with rasterio.open(tiny.labels) as ds:
            labels = ds.read(1)
        rows, cols = np.nonzero(labels)
        extra = np.zeros_like(labels)
        extra[rows[0], cols[0]] = labels[rows[0], cols[0]] % 3 + 1
        write_raster(tmp_path / "conflict.tif", extra, tiny.grid, nodata=0)
    before, sums = snapshot(out_dir, tiny.root), digests(out_dir, tiny.root)
    result = run_cli(args)
    assert_user_error(result, code, match=match or None)
    assert_nothing_new(before, out_dir, tiny.root)
    assert digests(out_dir, tiny.root) == sums


_QGIS_SCRIPT = """
import json, os, sys
from qgis.core import QgsApplication, QgsVectorLayer
app = QgsApplication([], True)
app.initQgis()
layer = QgsVectorLayer(sys.argv[1], "suggestions", "ogr")
renderer = layer.renderer()
cats = renderer.categories() if renderer.type() == "categorizedSymbol" else []
index = layer.fields().indexOf("label")
setup = layer.editorWidgetSetup(index)
print(json.dumps({
    "valid": layer.isValid(), "crs": layer.crs().authid(), "features": layer.featureCount(),
    "renderer": renderer.type(), "attr": getattr(renderer, "classAttribute", lambda: None)(),
    "categories": [[str(c.value()), c.label(), c.symbol().color().name()] for c in cats],
    "widget": setup.type(), "config": setup.config(),
    "label_read_only": layer.editFormConfig().readOnly(index),
    "rank_read_only": layer.editFormConfig().readOnly(layer.fields().indexOf("rank")),
    "labels_enabled": layer.labelsEnabled(),
}, default=str), flush=True)
os._exit(0)  # PyQGIS may crash while tearing down at exit; the report is out
"""


def test_qgis_opens_the_suggestions_styled(tiny: TinyData, out_dir: Path) -> None:
    python3 = next((p for p in dict.fromkeys(["/usr/bin/python3", shutil.which("python3")])
                    if p and Path(p).exists() and subprocess.run(
                        [p, "-c", "import qgis.core"], capture_output=True,
                        check=False).returncode == 0), None)
    if python3 is None:
        pytest.skip("python3-qgis is not installed (apt-get install qgis python3-qgis)")
    out = out_dir / "next.gpkg"
    assert_ok(run_cli(["suggest", tiny.scene, "-m", tiny.model, "-n", "5", "-o", out, *FAST]))
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    done = subprocess.run([python3, "-c", _QGIS_SCRIPT, str(out)], capture_output=True,
                          text=True, env=env, check=True, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["valid"] and report["crs"] == "EPSG:32632" and report["features"] == 5
    assert report["renderer"] == "categorizedSymbol" and report["attr"] == "pred_id"
    assert [c[0] for c in report["categories"]] == ["1", "2", "3"]
    assert report["widget"] == "ValueMap"
    choices = [next(iter(item.items())) for item in report["config"]["map"]]
    assert [value for _, value in choices[1:]] == ["1", "2", "3"]
    assert not report["label_read_only"] and report["rank_read_only"]
    assert report["labels_enabled"]
