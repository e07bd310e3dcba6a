"""evaluate_map / evaluate_model against hand-computed confusion matrices on tiny rasters."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import InputError, LabelError
from s2fin_cli.evaluation import evaluate_map, evaluate_model
from s2fin_cli.inference import BlockPredictor, BlockResult, predict_scene, scene_blocks
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.io.windows import window_slices
from s2fin_cli.io.writer import write_raster
from s2fin_cli.metrics import confusion_matrix
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.reference import label_lookup
from s2fin_cli.sampling import Samples, valid_centres
from s2fin_cli.scoring import predict_indexes
from tests.helpers import tiny_bundle, utm_grid, write_scene

TABLE = ClassTable.from_ids([1, 2, 3], {1: "water", 2: "trees", 3: "urban"})

# Map: 0 = nodata. Reference: 0 = unlabeled. Class 3 (urban) is predicted but never labelled.
MAP = np.array([
    [1, 1, 2, 2, 3],
    [1, 1, 2, 2, 3],
    [0, 1, 2, 3, 3],
    [1, 1, 0, 2, 2],
], np.uint8)
REF = np.array([
    [1, 1, 2, 2, 0],
    [1, 2, 2, 2, 0],
    [1, 1, 2, 0, 0],
    [0, 0, 2, 2, 1],
], np.uint8)
# Rows: reference water, trees, urban; columns: predicted water, trees, urban, no prediction.
EXPECTED = [[4, 1, 0, 1], [1, 6, 0, 1], [0, 0, 0, 0]]


def small_grid() -> Grid:
    return utm_grid(width=5, height=4)


def write_case(tmp: Path, map_array: np.ndarray = MAP, ref: np.ndarray = REF, *,
               classes: ClassTable | None = TABLE, grid: Grid | None = None) -> tuple[Path, Path]:
    grid = grid or small_grid()
    m = write_raster(tmp / "map.tif", map_array, grid, nodata=0, classes=classes)
    r = write_raster(tmp / "ref.tif", ref, grid, nodata=0)
    return m, r


def test_hand_computed_matrix_with_unlabeled_nodata_and_absent_class(tmp_path: Path) -> None:
    m, r = write_case(tmp_path)
    ev = evaluate_map(m, r, progress=False)
    rep = ev.report
    assert rep.matrix.dtype == np.int64
    assert rep.matrix.tolist() == EXPECTED
    assert [c.name for c in rep.classes] == ["water", "trees", "urban"]
    assert rep.n_samples == 14 and rep.n_unpredicted == 2
    assert rep.overall_accuracy == pytest.approx(10 / 14)
    assert rep.average_accuracy == pytest.approx((4 / 6 + 6 / 8) / 2)  # urban: no reference
    assert rep.kappa == pytest.approx(54 / 110)
    assert rep.producers_accuracy[:2] == pytest.approx([4 / 6, 6 / 8])
    assert rep.users_accuracy[:2] == pytest.approx([4 / 5, 6 / 7])
    assert math.isnan(rep.producers_accuracy[2]) and math.isnan(rep.users_accuracy[2])
    assert ev.mode == "map" and ev.matched_by == "id" and not ev.excluded
    assert "tag" in ev.inputs["classes_from"]
    data = json.loads(json.dumps(ev.to_json(), allow_nan=False))
    assert data["confusion_matrix"]["values"] == EXPECTED
    assert data["inputs"]["map"] == str(m) and data["excluded_labels"] == []


@pytest.mark.parametrize("block_size", [3, 7, 1024])
def test_blockwise_equals_whole(tmp_path: Path, block_size: int) -> None:
    rng = np.random.default_rng(5)
    grid = utm_grid(width=23, height=17)
    pred = rng.integers(0, 4, grid.shape).astype(np.uint8)
    ref = rng.integers(0, 4, grid.shape).astype(np.uint8)
    m, r = write_case(tmp_path, pred, ref, grid=grid)
    ev = evaluate_map(m, r, block_size=block_size, progress=False)
    np.testing.assert_array_equal(ev.report.matrix, confusion_matrix(ref, pred, TABLE))


def test_map_nodata_value_other_than_zero_is_no_prediction(tmp_path: Path) -> None:
    pred = MAP.copy()
    pred[pred == 0] = 255
    grid = small_grid()
    m = write_raster(tmp_path / "map.tif", pred, grid, nodata=255, classes=TABLE)
    r = write_raster(tmp_path / "ref.tif", REF, grid, nodata=0)
    assert evaluate_map(m, r, progress=False).report.matrix.tolist() == EXPECTED


def test_map_without_class_table_uses_ids_seen(tmp_path: Path) -> None:
    m, r = write_case(tmp_path, classes=None)
    ev = evaluate_map(m, r, progress=False)
    # Urban (3) is never predicted at a labelled pixel nor labelled: not a class here.
    assert [c.name for c in ev.report.classes] == ["class 1", "class 2"]
    assert ev.report.matrix.tolist() == [[4, 1, 1], [1, 6, 1]]


def test_unknown_label_ids_are_an_error_naming_them(tmp_path: Path) -> None:
    ref = REF.copy()
    ref[0, 4] = 7
    ref[1, 4] = 7
    ref[2, 4] = 9
    m, r = write_case(tmp_path, ref=ref)
    with pytest.raises(LabelError, match=r"7 \(2 px\), 9 \(1 px\)") as info:
        evaluate_map(m, r, progress=False)
    assert "--exclude-unknown" in str(info.value)


def test_unknown_label_ids_excluded_on_request(tmp_path: Path) -> None:
    ref = REF.copy()
    ref[0, 4] = 7
    m, r = write_case(tmp_path, ref=ref)
    ev = evaluate_map(m, r, exclude_unknown=True, progress=False)
    assert ev.excluded == {7: 1} and ev.n_excluded == 1
    assert ev.report.matrix.tolist() == EXPECTED
    assert ev.to_json()["excluded_labels"] == [{"label_id": 7, "name": "class 7", "pixels": 1}]


def test_map_value_outside_its_class_table_is_an_error(tmp_path: Path) -> None:
    pred = MAP.copy()
    pred[0, 0] = 6
    m, r = write_case(tmp_path, pred)
    with pytest.raises(LabelError, match=r"class ids \[6\]"):
        evaluate_map(m, r, progress=False)


def test_float_or_multiband_map_refused(tmp_path: Path) -> None:
    grid = small_grid()
    r = write_raster(tmp_path / "ref.tif", REF, grid, nodata=0)
    f = write_raster(tmp_path / "f.tif", MAP.astype(np.float32), grid)
    with pytest.raises(InputError, match="integer"):
        evaluate_map(f, r, progress=False)
    two = write_raster(tmp_path / "two.tif", np.stack([MAP, MAP]), grid)
    with pytest.raises(InputError, match="2 bands"):
        evaluate_map(two, r, progress=False)


def test_labels_without_any_labelled_pixel(tmp_path: Path) -> None:
    m, r = write_case(tmp_path, ref=np.zeros_like(REF))
    with pytest.raises(LabelError, match="no labelled pixel"):
        evaluate_map(m, r, progress=False)


def test_labels_on_another_grid_are_aligned_onto_the_map(tmp_path: Path) -> None:
    # Reference at half the resolution (2 m): each reference pixel covers 2x2 map pixels.
    grid = utm_grid(width=6, height=4)
    pred = np.array([[1, 1, 2, 2, 3, 3]] * 4, np.uint8)
    m = write_raster(tmp_path / "map.tif", pred, grid, nodata=0, classes=TABLE)
    coarse = utm_grid(width=3, height=2, res=2.0)
    r = write_raster(tmp_path / "ref.tif", np.array([[1, 2, 2], [1, 1, 0]], np.uint8), coarse,
                     nodata=0)
    ev = evaluate_map(m, r, progress=False)
    assert ev.report.matrix.tolist() == [[8, 4, 0, 0], [0, 4, 4, 0], [0, 0, 0, 0]]


def _square(col: int, row: int, size: int, props: dict[str, object]) -> dict[str, object]:
    x0, y0 = 660_000.0 + col, 5_100_000.0 - row
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 - size], [x0, y0 - size], [x0, y0]]
    return {"type": "Feature", "properties": props,
            "geometry": {"type": "Polygon", "coordinates": [ring]}}


def _geojson(path: Path, features: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps({
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32632"}},
        "features": features}))
    return path


def test_vector_labels_with_integer_ids(tmp_path: Path) -> None:
    m, _ = write_case(tmp_path)
    # 2x2 square at rows 0-1, cols 0-1 labelled water; 2x2 square at rows 0-1, cols 2-3 trees.
    v = _geojson(tmp_path / "ref.geojson", [_square(0, 0, 2, {"cls": 1}),
                                            _square(2, 0, 2, {"cls": 2})])
    ev = evaluate_map(m, v, label_field="cls", progress=False)
    assert ev.report.matrix.tolist() == [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 0]]
    assert ev.inputs["labels_kind"] == "vector" and ev.matched_by == "id"


def test_vector_labels_with_class_names_match_map_names(tmp_path: Path) -> None:
    m, _ = write_case(tmp_path)
    # Sorted names make "Trees" id 1 and "water" id 2 in the labels: matched by name instead.
    v = _geojson(tmp_path / "ref.geojson", [_square(0, 0, 2, {"landcover": "water"}),
                                            _square(2, 0, 2, {"landcover": "Trees"})])
    ev = evaluate_map(m, v, label_field="landcover", progress=False)
    assert ev.matched_by == "name"
    assert ev.report.matrix.tolist() == [[4, 0, 0, 0], [0, 4, 0, 0], [0, 0, 0, 0]]


def test_vector_class_names_unknown_to_the_map(tmp_path: Path) -> None:
    m, _ = write_case(tmp_path)
    v = _geojson(tmp_path / "ref.geojson", [_square(0, 0, 2, {"landcover": "water"}),
                                            _square(2, 0, 1, {"landcover": "shadow"})])
    with pytest.raises(LabelError, match=r"'shadow' \(1 px\)"):
        evaluate_map(m, v, progress=False)
    ev = evaluate_map(m, v, exclude_unknown=True, progress=False)
    assert ev.report.matrix.tolist() == [[4, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert ev.to_json()["excluded_labels"][0]["name"] == "shadow"


def test_label_lookup_by_id_and_by_name() -> None:
    by_id = label_lookup(TABLE, None, by_name=False)
    assert by_id[[0, 1, 2, 3, 4]].tolist() == [0, 1, 2, 3, -1]
    labels = ClassTable.from_ids([1, 2], {1: "URBAN", 2: "water"})
    by_name = label_lookup(TABLE, labels, by_name=True)
    assert by_name[[0, 1, 2, 3]].tolist() == [0, 3, 1, -1]


# -- model mode ----------------------------------------------------------------------------------


@dataclass
class ModelCase:
    tmp: Path
    grid: Grid
    scene: Path
    bundle: ModelBundle
    ref: np.ndarray
    labels: Path


@pytest.fixture(scope="module")
def model_case(tmp_path_factory: pytest.TempPathFactory) -> ModelCase:
    tmp = tmp_path_factory.mktemp("model")
    grid = utm_grid(width=14, height=11)
    nodata = np.zeros(grid.shape, bool)
    nodata[5, 6] = True
    scene_path = write_scene(tmp / "scene.tif", grid, nodata_pixels=nodata)
    bundle = tiny_bundle(scene_path, num_classes=3, class_ids=[1, 2, 5])
    rng = np.random.default_rng(3)
    ref = rng.choice(np.array([0, 0, 1, 2, 5], np.uint8), size=grid.shape)
    ref[5, 6] = 2  # labelled pixel on scene nodata: no prediction
    labels = write_raster(tmp / "ref.tif", ref, grid, nodata=0)
    return ModelCase(tmp, grid, scene_path, bundle, ref, labels)


def test_model_mode_equals_evaluating_the_predicted_map(model_case: ModelCase) -> None:
    case = model_case
    predicted = np.zeros(case.grid.shape, np.uint8)

    def sink(result: BlockResult) -> None:
        rows, cols = window_slices(result.window)
        predicted[rows, cols] = result.classes

    with open_stacked_scene(case.scene) as scene:
        ev = evaluate_model(case.bundle, scene, case.labels)
        predict_scene(scene, BlockPredictor(case.bundle), sink, scene_blocks(scene.grid, 64),
                      progress=False)
    assert predicted[5, 6] == 0 and len(np.unique(predicted)) > 2  # varied predictions
    map_path = write_raster(case.tmp / "pred.tif", predicted, case.grid, nodata=0,
                            classes=case.bundle.classes)
    by_map = evaluate_map(map_path, case.labels, progress=False)
    np.testing.assert_array_equal(ev.report.matrix, by_map.report.matrix)
    assert ev.mode == "model" and ev.report.n_unpredicted == 1
    assert [c.id for c in ev.report.classes] == [1, 2, 5]


def test_predict_samples_returns_class_ids_and_keeps_model_mode(model_case: ModelCase) -> None:
    bundle = model_case.bundle
    samples = Samples(np.array([0, 3, 10]), np.array([0, 7, 13]), np.array([1, 2, 5]))
    model = bundle.build_model("cpu")
    model.train()
    cpu = torch.device("cpu")
    ids_of = np.asarray(bundle.classes.ids, np.int64)
    with open_stacked_scene(model_case.scene) as scene:
        ids = ids_of[predict_indexes(model, scene, samples, bundle.preprocessor, bundle.geometry,
                                     cpu, batch_size=2)]
        assert model.training
        assert set(ids.tolist()) <= {1, 2, 5} and ids.dtype == np.int64
        again = ids_of[predict_indexes(bundle.build_model(cpu), scene, samples,
                                       bundle.preprocessor, bundle.geometry, cpu,
                                       batch_size=512)]
        np.testing.assert_array_equal(ids, again)
        valid = valid_centres(scene, Samples(np.array([5, 0]), np.array([6, 0]),
                                             np.array([1, 1])))
        assert valid.tolist() == [False, True]
        assert predict_indexes(model, scene, Samples.empty(), bundle.preprocessor,
                               bundle.geometry, cpu).size == 0


def test_model_mode_unknown_label_ids(model_case: ModelCase) -> None:
    ref3 = model_case.ref.copy()
    ref3[0, 0] = 3
    labels = write_raster(model_case.tmp / "ref3.tif", ref3, model_case.grid, nodata=0,
                          overwrite=True)
    with open_stacked_scene(model_case.scene) as scene:
        with pytest.raises(LabelError, match=r"unknown to the model: 3 \(1 px\)"):
            evaluate_model(model_case.bundle, scene, labels)
        ev = evaluate_model(model_case.bundle, scene, labels, exclude_unknown=True)
    assert ev.excluded == {3: 1}
