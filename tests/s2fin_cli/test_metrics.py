"""Accuracy metrics against hand-computed confusion matrices, plus property tests."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rich.console import Console

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import LabelError
from s2fin_cli.metrics import (
    NO_PREDICTION,
    AccuracyReport,
    ConfusionAccumulator,
    confusion_matrix,
    format_mean_std,
    mean_std,
)

pytestmark = pytest.mark.filterwarnings("error")  # NaN handling must not warn


def _pairs(matrix: list[list[int]], ids: list[int]) -> tuple[list[int], list[int]]:
    """Reference/prediction pixel lists realising ``matrix`` (last column: prediction 0)."""
    ref: list[int] = []
    pred: list[int] = []
    cols = [*ids, 0]
    for r, row in zip(ids, matrix, strict=True):
        for c, count in zip(cols, row, strict=True):
            ref += [r] * count
            pred += [c] * count
    return ref, pred


# Hand-computed 3-class case (rows: reference 1..3; columns: predicted 1..3, no prediction).
#   ref 1: 5 1 0 | 0   support 6
#   ref 2: 2 3 1 | 0   support 6
#   ref 3: 0 0 4 | 1   support 5        N = 17, correct = 12, predicted totals 7 4 5
HAND = [[5, 1, 0, 0], [2, 3, 1, 0], [0, 0, 4, 1]]
TABLE3 = ClassTable.from_ids([1, 2, 3], {1: "Trees", 2: "Grass", 3: "Water"})


def _hand_arrays() -> tuple[np.ndarray, np.ndarray]:
    ref, pred = _pairs(HAND, [1, 2, 3])
    # Unlabeled reference pixels are ignored whatever they are predicted as.
    ref += [0, 0, 0, 0]
    pred += [1, 3, 0, 2]
    return np.array(ref, dtype=np.uint8), np.array(pred, dtype=np.uint8)


def test_hand_computed_three_classes() -> None:
    ref, pred = _hand_arrays()
    m = confusion_matrix(ref, pred, 3)
    assert m.dtype == np.int64
    assert m.tolist() == HAND
    r = AccuracyReport.from_matrix(m, TABLE3)
    assert r.n_samples == 17
    assert r.n_unpredicted == 1
    assert r.overall_accuracy == pytest.approx(12 / 17)
    assert r.producers_accuracy.tolist() == pytest.approx([5 / 6, 3 / 6, 4 / 5])
    assert r.users_accuracy.tolist() == pytest.approx([5 / 7, 3 / 4, 4 / 5])
    assert r.f1.tolist() == pytest.approx([10 / 13, 6 / 10, 8 / 10])
    assert r.average_accuracy == pytest.approx(32 / 45)  # (5/6 + 1/2 + 4/5) / 3
    # p_e = (6*7 + 6*4 + 5*5) / 17**2 = 91/289; kappa = (204 - 91) / (289 - 91)
    assert r.kappa == pytest.approx(113 / 198)
    assert r.macro_f1 == pytest.approx((10 / 13 + 0.6 + 0.8) / 3)
    assert r.support.tolist() == [6, 6, 5]
    assert r.predicted.tolist() == [7, 4, 5]
    assert r.unpredicted.tolist() == [0, 0, 1]


def test_same_matrix_from_ids_table_and_2d_arrays() -> None:
    ref, pred = _hand_arrays()
    pad = (-ref.size) % 7
    ref2 = np.concatenate([ref, np.zeros(pad, np.uint8)]).reshape(-1, 7)
    pred2 = np.concatenate([pred, np.zeros(pad, np.uint8)]).reshape(-1, 7)
    for classes in (3, [1, 2, 3], TABLE3):
        assert confusion_matrix(ref2, pred2, classes).tolist() == HAND


def test_sparse_class_ids() -> None:
    # Ids need not be contiguous; rows/columns follow the sorted ids.
    ref = np.array([10, 10, 3, 3, 0, 7])
    pred = np.array([10, 3, 3, 0, 10, 7])
    m = confusion_matrix(ref, pred, [10, 3, 7])
    # order 3, 7, 10
    assert m.tolist() == [[1, 0, 0, 1], [0, 1, 0, 0], [1, 0, 1, 0]]


def test_absent_classes() -> None:
    # Classes 1..4; class 3 is absent from the reference but predicted once; class 4 is absent
    # from both.
    #   ref 1: 3 0 1 0 | 0      ref 2: 0 2 0 0 | 0      ref 3, 4: nothing
    matrix = [[3, 0, 1, 0, 0], [0, 2, 0, 0, 0], [0] * 5, [0] * 5]
    ref, pred = _pairs(matrix, [1, 2, 3, 4])
    table = ClassTable.from_ids([1, 2, 3, 4])
    r = AccuracyReport.from_arrays(ref, pred, table)
    assert r.matrix.tolist() == matrix
    pa, ua, f1 = r.producers_accuracy, r.users_accuracy, r.f1
    assert pa[:2].tolist() == pytest.approx([0.75, 1.0])
    assert math.isnan(pa[2]) and math.isnan(pa[3])
    assert ua[:3].tolist() == pytest.approx([1.0, 1.0, 0.0])
    assert math.isnan(ua[3])
    assert f1[:3].tolist() == pytest.approx([6 / 7, 1.0, 0.0])
    assert math.isnan(f1[3])
    assert r.present.tolist() == [True, True, False, False]
    assert r.average_accuracy == pytest.approx(0.875)  # over present classes only
    assert r.macro_f1 == pytest.approx((6 / 7 + 1) / 2)
    assert r.overall_accuracy == pytest.approx(5 / 6)
    assert r.kappa == pytest.approx(0.7)  # p_e = 16/36
    data = json.loads(json.dumps(r.to_json(), allow_nan=False))
    assert data["classes"][2]["producers_accuracy"] is None
    assert data["classes"][3]["users_accuracy"] is None
    assert data["classes"][3]["f1"] is None
    assert data["classes"][2]["users_accuracy"] == 0.0


def test_class_never_predicted() -> None:
    ref = [1, 1, 2, 2]
    pred = [1, 1, 1, 1]
    r = AccuracyReport.from_arrays(ref, pred, ClassTable.from_ids([1, 2]))
    assert r.producers_accuracy.tolist() == [1.0, 0.0]
    assert r.users_accuracy[0] == 0.5 and math.isnan(r.users_accuracy[1])
    assert r.f1[1] == 0.0
    assert r.kappa == pytest.approx(0.0)


def test_empty_reference_is_nan_without_warnings() -> None:
    r = AccuracyReport.from_arrays(np.zeros(5, int), np.ones(5, int), TABLE3)
    assert r.n_samples == 0
    for value in (r.overall_accuracy, r.average_accuracy, r.kappa, r.macro_f1):
        assert math.isnan(value)
    assert json.loads(json.dumps(r.to_json(), allow_nan=False))["kappa"] is None
    Console(file=io.StringIO()).print(r.table())


def test_only_unpredicted_pixels() -> None:
    r = AccuracyReport.from_arrays([1, 2, 2], [0, 0, 0], TABLE3)
    assert r.overall_accuracy == 0.0
    assert r.producers_accuracy[:2].tolist() == [0.0, 0.0]
    assert r.n_unpredicted == 3
    assert r.kappa == 0.0


def test_single_class_perfect_kappa_is_one() -> None:
    r = AccuracyReport.from_arrays([2, 2, 2], [2, 2, 2], TABLE3)
    assert (r.overall_accuracy, r.average_accuracy, r.kappa) == (1.0, 1.0, 1.0)


def test_square_matrix_accepted() -> None:
    square = [row[:3] for row in HAND]
    r = AccuracyReport.from_matrix(np.array(square), TABLE3)
    assert r.matrix[:, 3].tolist() == [0, 0, 0]
    assert r.overall_accuracy == pytest.approx(12 / 16)


def test_against_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    ref = rng.integers(1, 6, 500)
    pred = np.where(rng.random(500) < 0.7, ref, rng.integers(1, 6, 500))
    r = AccuracyReport.from_arrays(ref, pred, ClassTable.from_ids(range(1, 6)))
    expected = sk.confusion_matrix(ref, pred, labels=[1, 2, 3, 4, 5])
    assert r.matrix[:, :5].tolist() == expected.tolist()
    assert r.kappa == pytest.approx(sk.cohen_kappa_score(ref, pred))
    assert r.overall_accuracy == pytest.approx(sk.accuracy_score(ref, pred))
    assert r.average_accuracy == pytest.approx(sk.balanced_accuracy_score(ref, pred))
    assert r.f1.tolist() == pytest.approx(sk.f1_score(ref, pred, average=None).tolist())


def test_errors() -> None:
    with pytest.raises(LabelError, match=r"reference holds class ids \[4\]"):
        confusion_matrix([1, 4], [1, 1], 3)
    with pytest.raises(LabelError, match=r"prediction holds class ids \[-1, 9\]"):
        confusion_matrix([1, 2, 3], [9, -1, 1], 3)
    with pytest.raises(LabelError, match="non-integer"):
        confusion_matrix(np.array([1.5]), np.array([1.0]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix([1, 2], [1, 2, 3], 3)
    with pytest.raises(ValueError, match="class ids start at 1"):
        confusion_matrix([1], [1], [0, 1])
    with pytest.raises(ValueError, match="does not fit"):
        AccuracyReport.from_matrix(np.zeros((2, 2), np.int64), TABLE3)
    # Integral floats are accepted; invalid predictions under unlabeled pixels do not matter.
    assert confusion_matrix(np.array([1.0, 0.0]), np.array([1.0, 77.0]), 3)[0, 0] == 1


def test_outputs() -> None:
    ref, pred = _hand_arrays()
    r = AccuracyReport.from_arrays(ref, pred, TABLE3)
    data = r.to_json()
    text = json.dumps(data, allow_nan=False)
    assert data["confusion_matrix"]["columns"] == [1, 2, 3, NO_PREDICTION]
    assert data["classes"][0]["name"] == "Trees"
    back = AccuracyReport.from_json(json.loads(text))
    assert back.matrix.tolist() == HAND and back.classes == TABLE3
    assert back.kappa == r.kappa

    rows = list(csv.DictReader(io.StringIO(r.to_csv())))
    by_key = {(row["metric"], row["class_id"]): row["value"] for row in rows}
    assert float(by_key[("overall_accuracy", "")]) == pytest.approx(12 / 17)
    assert float(by_key[("users_accuracy", "2")]) == pytest.approx(0.75)
    assert by_key[("support", "3")] == "5"
    matrix_rows = list(csv.reader(io.StringIO(r.confusion_csv())))
    assert matrix_rows[0][-1] == NO_PREDICTION
    assert matrix_rows[3] == ["Water", "0", "0", "4", "1"]

    out = Console(file=io.StringIO(), width=140, record=True)
    out.print(r.table())
    out.print(r.confusion_table())
    rendered = out.export_text()
    assert "Grass" in rendered and "70.59" in rendered and "no prediction" in rendered


def test_mean_std() -> None:
    table = ClassTable.from_ids([1, 2])
    r1 = AccuracyReport.from_matrix(np.array([[1, 0], [0, 1]]), table)  # OA 1
    r2 = AccuracyReport.from_matrix(np.array([[1, 1], [0, 0]]), table)  # OA .5, class 2 absent
    s = mean_std([r1, r2])
    assert s["runs"] == 2
    assert s["overall_accuracy"]["mean"] == pytest.approx(0.75)
    assert s["overall_accuracy"]["std"] == pytest.approx(0.25)
    assert mean_std([r1, r2], ddof=1)["overall_accuracy"]["std"] == pytest.approx(math.sqrt(0.125))
    # class 2's PA is undefined in run 2, so it is averaged over one run only
    assert s["classes"][1]["producers_accuracy"] == {"mean": 1.0, "std": 0.0, "n": 1}
    assert format_mean_std(s["overall_accuracy"]) == "75.00 ± 25.00"
    assert format_mean_std({"mean": None, "std": None}) == "–"
    json.dumps(s, allow_nan=False)
    with pytest.raises(ValueError, match="different class ids"):
        mean_std([r1, AccuracyReport.from_matrix(np.eye(3, dtype=np.int64), TABLE3)])
    with pytest.raises(ValueError):
        mean_std([])


def test_accumulator_merge_and_reset() -> None:
    ref, pred = _hand_arrays()
    a, b = ConfusionAccumulator(TABLE3), ConfusionAccumulator(TABLE3)
    a.update(ref[:9], pred[:9])
    b.update(ref[9:], pred[9:])
    a.merge(b)
    assert a.matrix.tolist() == HAND
    assert a.report().classes == TABLE3
    with pytest.raises(ValueError):
        a.merge(ConfusionAccumulator(4))
    a.reset()
    assert a.matrix.sum() == 0


# -- properties ---------------------------------------------------------------------------

K = 5


@st.composite
def label_pairs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(0, 200))
    ref = draw(hnp.arrays(np.uint8, n, elements=st.integers(0, K)))
    pred = draw(hnp.arrays(np.uint8, n, elements=st.integers(0, K)))
    return ref, pred


@settings(max_examples=60, deadline=None)
@given(label_pairs())
def test_property_bounds(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, pred = pair
    r = AccuracyReport.from_arrays(ref, pred, ClassTable.from_ids(range(1, K + 1)))
    assert r.matrix.sum() == int((ref != 0).sum())
    if r.n_samples:
        assert 0.0 <= r.overall_accuracy <= 1.0
        assert 0.0 <= r.average_accuracy <= 1.0
        assert -1.0 <= r.kappa <= 1.0
        assert 0.0 <= r.macro_f1 <= 1.0
    for values in (r.producers_accuracy, r.users_accuracy, r.f1):
        defined = values[~np.isnan(values)]
        assert ((defined >= 0) & (defined <= 1)).all()
    json.dumps(r.to_json(), allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.uint8, st.integers(1, 200), elements=st.integers(0, K)))
def test_property_perfect_prediction(ref: np.ndarray) -> None:
    r = AccuracyReport.from_arrays(ref, ref, ClassTable.from_ids(range(1, K + 1)))
    if (ref != 0).any():
        assert r.overall_accuracy == r.average_accuracy == r.kappa == r.macro_f1 == 1.0
        assert r.n_unpredicted == 0


@settings(max_examples=40, deadline=None)
@given(label_pairs(), st.data())
def test_property_permutation_invariance(pair: tuple[np.ndarray, np.ndarray],
                                         data: st.DataObject) -> None:
    ref, pred = pair
    order = np.array(data.draw(st.permutations(range(ref.size))), dtype=np.int64)
    assert (confusion_matrix(ref, pred, K) == confusion_matrix(ref[order], pred[order], K)).all()


@settings(max_examples=40, deadline=None)
@given(label_pairs(), st.lists(st.integers(0, 200), max_size=6))
def test_property_blocks_equal_one_shot(pair: tuple[np.ndarray, np.ndarray],
                                        cuts: list[int]) -> None:
    ref, pred = pair
    bounds = sorted({0, ref.size, *(min(c, ref.size) for c in cuts)})
    acc = ConfusionAccumulator(K)
    for lo, hi in itertools.pairwise(bounds):
        acc.update(ref[lo:hi], pred[lo:hi])
    assert (acc.matrix == confusion_matrix(ref, pred, K)).all()
