"""Accuracy assessment of class maps: confusion matrix, OA, AA, Kappa, per-class accuracies.

The one metrics module that training (validation), ``evaluate`` and the benchmarks share, so a
number means the same thing everywhere.

Conventions
-----------
* Reference (ground-truth) value 0 means *unlabeled*: those pixels are ignored entirely.
* Predicted value 0 means *no prediction* (nodata in the map: outside the scene, masked input).
  A labeled reference pixel with no prediction is **counted, as an error**: it sits in the extra
  last column of the confusion matrix ("no prediction"), lowers overall accuracy and that class's
  producer's accuracy, and never counts towards any class's user's accuracy. A map cannot score
  better by leaving hard pixels blank.
* Any other value that is not an id of the class table, in either array, is a
  :class:`~s2fin_cli.errors.LabelError` (a map from another class scheme, a mislabeled file).

The confusion matrix is ``int64`` of shape ``(K, K + 1)`` for K classes, in class-table order:
rows are reference classes, columns are predicted classes, and column K counts "no prediction".
``matrix[:, :K]`` is the usual square confusion matrix.

Definitions (N = all labeled reference pixels, including those with no prediction):

* overall accuracy (OA) = trace / N
* producer's accuracy (PA, recall) of class i = correct_i / reference pixels of i
* user's accuracy (UA, precision) of class i = correct_i / pixels predicted as i
* F1 of class i = 2 correct_i / (reference_i + predicted_i), the harmonic mean of PA and UA
* average accuracy (AA) = mean PA over the classes **present in the reference** (support > 0);
  macro F1 likewise
* Cohen's Kappa = (p_o - p_e) / (1 - p_e) with p_o = OA and
  p_e = sum_i reference_i * predicted_i / N**2 ("no prediction" never agrees by chance); a
  perfect map has Kappa 1 even when p_e = 1 (a single class).

A quantity with a zero denominator is undefined and is NaN, computed without numpy warnings: PA
of a class absent from the reference, UA of a class never predicted, F1 of a class that is
neither in the reference nor predicted, and every summary of an empty reference. JSON output
writes NaN as ``null``; CSV output as an empty field; the table as "–".
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from rich.table import Table

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import LabelError

__all__ = [
    "NO_PREDICTION",
    "AccuracyReport",
    "ConfusionAccumulator",
    "confusion_matrix",
    "format_mean_std",
    "mean_std",
]

NO_PREDICTION = "no prediction"

Classes = int | Sequence[int] | ClassTable


def _class_ids(classes: Classes) -> list[int]:
    """Class ids from an int N (ids 1..N), a sequence of ids or a ClassTable; sorted, >= 1."""
    if isinstance(classes, ClassTable):
        ids = classes.ids
    elif isinstance(classes, int | np.integer):
        if int(classes) < 1:
            raise ValueError(f"the number of classes must be >= 1, got {classes}")
        ids = list(range(1, int(classes) + 1))
    else:
        ids = sorted({int(i) for i in classes})
        if len(ids) != len(list(classes)):
            raise ValueError(f"duplicate class ids in {list(classes)}")
    if not ids:
        raise ValueError("no classes given")
    if ids[0] < 1:
        raise ValueError(f"class ids start at 1 (0 is unlabeled/nodata), got {ids[0]}")
    return ids


def _as_int_array(values: ArrayLike, what: str) -> NDArray[np.int64]:
    array = np.asarray(values)
    if array.dtype.kind in "iu":
        return array.astype(np.int64, copy=False).ravel()
    if array.dtype.kind == "b":
        return array.astype(np.int64).ravel()
    if array.dtype.kind == "f":
        flat = array.ravel()
        if not np.all(np.isfinite(flat)) or np.any(flat != np.round(flat)):
            raise LabelError(f"{what} holds non-integer values; class ids must be integers")
        return flat.astype(np.int64)
    raise LabelError(f"{what} has dtype {array.dtype}; class ids must be integers")


class ConfusionAccumulator:
    """A confusion matrix built block by block (streaming over a scene, or summed over workers).

    >>> acc = ConfusionAccumulator(3)
    >>> acc.update([1, 2, 0], [1, 3, 2])      # the reference-0 pixel is ignored
    >>> acc.matrix.tolist()
    [[1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    """

    def __init__(self, classes: Classes) -> None:
        self.ids: list[int] = _class_ids(classes)
        self.classes: ClassTable | None = classes if isinstance(classes, ClassTable) else None
        k = len(self.ids)
        # Lookup from raw id to row/column; -1 marks ids outside the table. 0 maps to "no
        # prediction" (column k) for predictions; the reference drops 0 before the lookup.
        self._lut = np.full(self.ids[-1] + 1, -1, dtype=np.int64)
        self._lut[np.asarray(self.ids)] = np.arange(k)
        self._lut[0] = k
        self._matrix = np.zeros((k, k + 1), dtype=np.int64)

    @property
    def num_classes(self) -> int:
        return len(self.ids)

    @property
    def matrix(self) -> NDArray[np.int64]:
        """A copy of the ``(K, K + 1)`` int64 matrix accumulated so far."""
        return self._matrix.copy()

    def _index(self, values: NDArray[np.int64]) -> NDArray[np.int64]:
        out = np.full(values.shape, -1, dtype=np.int64)
        inside = (values >= 0) & (values < self._lut.size)
        out[inside] = self._lut[values[inside]]
        return out

    def update(self, reference: ArrayLike, predicted: ArrayLike) -> None:
        """Add one block of pixels; both arrays have the same shape (any number of dimensions)."""
        ref = _as_int_array(reference, "the reference")
        pred = _as_int_array(predicted, "the prediction")
        if np.shape(reference) != np.shape(predicted):
            raise ValueError(f"reference shape {np.shape(reference)} differs from prediction "
                             f"shape {np.shape(predicted)}")
        labeled = ref != 0
        ref, pred = ref[labeled], pred[labeled]
        if ref.size == 0:
            return
        k = len(self.ids)
        rows = self._index(ref)  # ref has no 0 here, so the lookup's 0 -> K never applies
        cols = self._index(pred)
        bad_ref = rows < 0
        if bad_ref.any():
            unknown = sorted({int(v) for v in np.unique(ref[bad_ref])})
            raise LabelError(f"the reference holds class ids {unknown[:10]} that are not in the "
                             f"class table {self.ids}")
        bad_pred = cols < 0
        if bad_pred.any():
            unknown = sorted({int(v) for v in np.unique(pred[bad_pred])})
            raise LabelError(f"the prediction holds class ids {unknown[:10]} that are not in the "
                             f"class table {self.ids} (0 means no prediction)")
        counts = np.bincount(rows * (k + 1) + cols, minlength=k * (k + 1))
        self._matrix += counts.reshape(k, k + 1)

    def merge(self, other: ConfusionAccumulator) -> None:
        """Add another accumulator's counts (e.g. from another worker); same class ids required."""
        if other.ids != self.ids:
            raise ValueError(f"cannot merge class ids {other.ids} into {self.ids}")
        self._matrix += other._matrix

    def reset(self) -> None:
        self._matrix[...] = 0

    def report(self, classes: ClassTable | None = None) -> AccuracyReport:
        """The accuracy report of everything added so far."""
        table = classes or self.classes or ClassTable.from_ids(self.ids)
        return AccuracyReport.from_matrix(self._matrix, table)


def confusion_matrix(reference: ArrayLike, predicted: ArrayLike,
                     classes: Classes) -> NDArray[np.int64]:
    """The ``(K, K + 1)`` int64 confusion matrix of one pair of label arrays.

    ``classes`` is the number of classes N (ids 1..N), a sequence of class ids, or a
    :class:`ClassTable`. Rows are reference classes, columns predicted classes in the same order,
    and the last column counts labeled pixels with no prediction (predicted 0). Reference pixels
    0 (unlabeled) are ignored.
    """
    acc = ConfusionAccumulator(classes)
    acc.update(reference, predicted)
    return acc.matrix


def _ratio(num: NDArray[Any], den: NDArray[Any]) -> NDArray[np.float64]:
    num_f = np.asarray(num, dtype=np.float64)
    den_f = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num_f, den_f).shape, np.nan, dtype=np.float64)
    np.divide(num_f, den_f, out=out, where=den_f != 0)
    return out


def _mean_defined(values: NDArray[np.float64]) -> float:
    """Mean over the non-NaN entries; NaN (no warning) when there are none."""
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _csv_float(value: float) -> str:
    return "" if math.isnan(value) else repr(float(value))


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


@dataclass(frozen=True, eq=False)  # numpy fields: compare .matrix and .classes instead
class AccuracyReport:
    """Accuracy figures of one confusion matrix (see the module docstring for definitions).

    Per-class arrays follow the class-table order. Fractions are in [0, 1] (the rich table shows
    percentages).
    """

    classes: ClassTable
    matrix: NDArray[np.int64]
    overall_accuracy: float
    average_accuracy: float
    kappa: float
    macro_f1: float
    producers_accuracy: NDArray[np.float64]
    users_accuracy: NDArray[np.float64]
    f1: NDArray[np.float64]
    support: NDArray[np.int64]
    predicted: NDArray[np.int64]
    unpredicted: NDArray[np.int64]

    @property
    def n_samples(self) -> int:
        """Labeled reference pixels assessed (with or without a prediction)."""
        return int(self.support.sum())

    @property
    def n_unpredicted(self) -> int:
        return int(self.unpredicted.sum())

    @property
    def present(self) -> NDArray[np.bool_]:
        """Classes with at least one reference pixel (those that AA and macro F1 average over)."""
        return self.support > 0

    @classmethod
    def from_matrix(cls, matrix: ArrayLike, classes: ClassTable) -> AccuracyReport:
        """Compute every figure from a ``(K, K + 1)`` (or square ``(K, K)``) confusion matrix."""
        m = np.asarray(matrix)
        k = len(classes)
        if m.shape == (k, k):
            m = np.concatenate([m, np.zeros((k, 1), dtype=m.dtype)], axis=1)
        if m.shape != (k, k + 1):
            raise ValueError(f"confusion matrix of shape {m.shape} does not fit {k} classes "
                             f"(expected ({k}, {k + 1}) or ({k}, {k}))")
        if m.dtype.kind not in "iu" or (m < 0).any():
            raise ValueError("a confusion matrix holds non-negative integer counts")
        m = m.astype(np.int64)
        square = m[:, :k]
        correct = np.diag(square).astype(np.int64)
        support = m.sum(axis=1)
        predicted = square.sum(axis=0)
        n = int(support.sum())
        pa = _ratio(correct, support)
        ua = _ratio(correct, predicted)
        f1 = _ratio(2 * correct, support + predicted)
        present = support > 0
        if n == 0:
            oa = kappa = math.nan
        else:
            oa = float(correct.sum()) / n
            pe = float(np.dot(support.astype(np.float64), predicted.astype(np.float64))) / n**2
            if oa == 1.0:
                kappa = 1.0
            elif pe == 1.0:
                kappa = math.nan  # unreachable: p_e = 1 implies p_o = 1
            else:
                kappa = (oa - pe) / (1.0 - pe)
        return cls(
            classes=classes,
            matrix=m,
            overall_accuracy=oa,
            average_accuracy=_mean_defined(pa[present]),
            kappa=kappa,
            macro_f1=_mean_defined(f1[present]),
            producers_accuracy=pa,
            users_accuracy=ua,
            f1=f1,
            support=support,
            predicted=predicted,
            unpredicted=m[:, k].copy(),
        )

    @classmethod
    def from_arrays(cls, reference: ArrayLike, predicted: ArrayLike,
                    classes: ClassTable) -> AccuracyReport:
        return cls.from_matrix(confusion_matrix(reference, predicted, classes), classes)

    # -- output -----------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (``json.dumps(..., allow_nan=False)`` works: NaN becomes null)."""
        per_class = []
        for i, c in enumerate(self.classes):
            per_class.append({
                "id": c.id,
                "name": c.name,
                "color": list(c.color),
                "support": int(self.support[i]),
                "predicted": int(self.predicted[i]),
                "unpredicted": int(self.unpredicted[i]),
                "producers_accuracy": _json_float(float(self.producers_accuracy[i])),
                "users_accuracy": _json_float(float(self.users_accuracy[i])),
                "f1": _json_float(float(self.f1[i])),
            })
        return {
            "overall_accuracy": _json_float(self.overall_accuracy),
            "average_accuracy": _json_float(self.average_accuracy),
            "kappa": _json_float(self.kappa),
            "macro_f1": _json_float(self.macro_f1),
            "n_samples": self.n_samples,
            "n_unpredicted": self.n_unpredicted,
            "classes": per_class,
            "confusion_matrix": {
                "rows": "reference class ids",
                "columns": [*self.classes.ids, NO_PREDICTION],
                "values": self.matrix.tolist(),
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AccuracyReport:
        """Rebuild a report from :meth:`to_json` output (figures are recomputed from the matrix)."""
        try:
            table = ClassTable.from_json(
                [{"id": c["id"], "name": c["name"], "color": c["color"]} for c in data["classes"]]
            )
            values = np.asarray(data["confusion_matrix"]["values"], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an accuracy report: {exc}") from exc
        return cls.from_matrix(values, table)

    def to_csv(self) -> str:
        """Tidy CSV, one figure per line: ``metric,class_id,class_name,value``.

        Summary figures have empty class fields; per-class figures (support, predicted,
        unpredicted, producers_accuracy, users_accuracy, f1) one line per class. Undefined
        values are empty. Easy to filter or pivot in pandas/spreadsheets and to concatenate
        over runs.
        """
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["metric", "class_id", "class_name", "value"])
        for name, value in (("overall_accuracy", self.overall_accuracy),
                            ("average_accuracy", self.average_accuracy),
                            ("kappa", self.kappa), ("macro_f1", self.macro_f1)):
            writer.writerow([name, "", "", _csv_float(value)])
        writer.writerow(["n_samples", "", "", self.n_samples])
        writer.writerow(["n_unpredicted", "", "", self.n_unpredicted])
        for i, c in enumerate(self.classes):
            writer.writerow(["support", c.id, c.name, int(self.support[i])])
            writer.writerow(["predicted", c.id, c.name, int(self.predicted[i])])
            writer.writerow(["unpredicted", c.id, c.name, int(self.unpredicted[i])])
            writer.writerow(["producers_accuracy", c.id, c.name,
                             _csv_float(float(self.producers_accuracy[i]))])
            writer.writerow(["users_accuracy", c.id, c.name,
                             _csv_float(float(self.users_accuracy[i]))])
            writer.writerow(["f1", c.id, c.name, _csv_float(float(self.f1[i]))])
        return buf.getvalue()

    def confusion_csv(self) -> str:
        """The confusion matrix as CSV: a header of predicted class names, one row per reference
        class, and a last "no prediction" column."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        names = [c.name for c in self.classes]
        writer.writerow(["reference \\ predicted", *names, NO_PREDICTION])
        for name, row in zip(names, self.matrix.tolist(), strict=True):
            writer.writerow([name, *row])
        return buf.getvalue()

    def table(self, title: str | None = "Accuracy") -> Table:
        """A rich table: per-class support, PA, UA, F1 (in %), and OA/AA/Kappa in the caption."""
        caption = (f"OA {_pct(self.overall_accuracy)} %   AA {_pct(self.average_accuracy)} %   "
                   f"Kappa {'–' if math.isnan(self.kappa) else f'{self.kappa:.4f}'}   "
                   f"macro F1 {_pct(self.macro_f1)} %   {self.n_samples} labeled pixels")
        if self.n_unpredicted:
            caption += f", {self.n_unpredicted} with no prediction"
        out = Table(title=title, caption=caption)
        out.add_column("id", justify="right")
        out.add_column("class")
        out.add_column("support", justify="right")
        out.add_column("producer's %", justify="right")
        out.add_column("user's %", justify="right")
        out.add_column("F1 %", justify="right")
        for i, c in enumerate(self.classes):
            out.add_row(str(c.id), c.name, str(int(self.support[i])),
                        _pct(float(self.producers_accuracy[i])),
                        _pct(float(self.users_accuracy[i])), _pct(float(self.f1[i])))
        return out

    def confusion_table(self, title: str | None = "Confusion matrix (rows: reference)") -> Table:
        out = Table(title=title)
        out.add_column("reference \\ predicted")
        for c in self.classes:
            out.add_column(str(c.id), justify="right")
        out.add_column(NO_PREDICTION, justify="right")
        for c, row in zip(self.classes, self.matrix.tolist(), strict=True):
            out.add_row(f"{c.id} {c.name}", *(str(v) for v in row))
        return out


def _stats(values: Iterable[float], ddof: int) -> dict[str, float | int | None]:
    array = np.asarray(list(values), dtype=np.float64)
    defined = array[~np.isnan(array)]
    n = int(defined.size)
    mean = float(defined.mean()) if n else math.nan
    std = float(defined.std(ddof=ddof)) if n > ddof else math.nan
    return {"mean": _json_float(mean), "std": _json_float(std), "n": n}


def mean_std(reports: Sequence[AccuracyReport], *, ddof: int = 0) -> dict[str, Any]:
    """Mean and standard deviation of each figure over runs (e.g. seeds), JSON-ready.

    Every report must use the same class ids. Runs in which a figure is undefined (NaN) are left
    out of that figure's statistics; ``n`` says how many runs each one used. ``ddof=0`` gives the
    population standard deviation (``numpy.std``'s default, what most papers' code reports);
    pass ``ddof=1`` for the sample standard deviation. Undefined statistics are ``None``.
    """
    if not reports:
        raise ValueError("mean_std needs at least one report")
    ids = reports[0].classes.ids
    for r in reports[1:]:
        if r.classes.ids != ids:
            raise ValueError(f"reports use different class ids: {ids} and {r.classes.ids}")
    per_class = []
    for i, c in enumerate(reports[0].classes):
        per_class.append({
            "id": c.id,
            "name": c.name,
            "producers_accuracy": _stats((float(r.producers_accuracy[i]) for r in reports), ddof),
            "users_accuracy": _stats((float(r.users_accuracy[i]) for r in reports), ddof),
            "f1": _stats((float(r.f1[i]) for r in reports), ddof),
        })
    return {
        "runs": len(reports),
        "ddof": ddof,
        "overall_accuracy": _stats((r.overall_accuracy for r in reports), ddof),
        "average_accuracy": _stats((r.average_accuracy for r in reports), ddof),
        "kappa": _stats((r.kappa for r in reports), ddof),
        "macro_f1": _stats((r.macro_f1 for r in reports), ddof),
        "classes": per_class,
    }


def format_mean_std(stats: Mapping[str, Any], *, percent: bool = True, digits: int = 2) -> str:
    """``"95.12 ± 0.34"`` from one entry of :func:`mean_std` (percent by default)."""
    mean, std = stats.get("mean"), stats.get("std")
    if mean is None:
        return "–"
    scale = 100.0 if percent else 1.0
    text = f"{scale * mean:.{digits}f}"
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"
