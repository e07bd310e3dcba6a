"""What a training run reports: the per-class sample table, warnings about the split, the
accuracy summaries and the provenance stored in the model file."""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import torch
from rich.table import Table

from s2fin_cli import __version__, console
from s2fin_cli.classes import ClassTable
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.model_file import ClassScore, ScoreSummary
from s2fin_cli.sampling import AUTO_VAL_MIN_PER_CLASS, Split


def score_summary(report: AccuracyReport) -> ScoreSummary:
    """The short form of an accuracy report the model file keeps."""
    data = report.to_json()
    per_class: list[ClassScore] = [
        {"id": c["id"], "name": c["name"], "support": c["support"],
         "accuracy": c["producers_accuracy"]} for c in data["classes"]]
    return {"oa": report.overall_accuracy, "aa": report.average_accuracy, "kappa": report.kappa,
            "n_samples": report.n_samples, "per_class": per_class}


def json_safe(value: Any) -> Any:
    """NaN/Inf -> None recursively (the model file's JSON refuses NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def library_versions() -> dict[str, str]:
    import rasterio

    return {"s2fin": __version__, "torch": torch.__version__, "rasterio": rasterio.__version__,
            "numpy": np.__version__}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def split_table(rows: list[dict[str, Any]], dropped_nodata: dict[int, int]) -> Table:
    """The per-class counts of the train/validation split as a rich table."""
    table = Table(title="Samples per class (blocked train/validation split)")
    for col in ("id", "class", "train", "val", "dropped: near val", "dropped: nodata"):
        table.add_column(col, justify="left" if col == "class" else "right")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], str(r["train"]), str(r["val"]),
                      str(r["dropped_overlap"]), str(dropped_nodata.get(r["id"], 0)))
    table.add_row("", "total", str(sum(r["train"] for r in rows)),
                  str(sum(r["val"] for r in rows)),
                  str(sum(r["dropped_overlap"] for r in rows)),
                  str(sum(dropped_nodata.values())), style="bold")
    return table


def warn_about_split(split: Split, classes: ClassTable, val_fraction: float, *,
                     auto: bool = False) -> None:
    """Say what the split left out: no validation at all, classes without validation pixels,
    training pixels dropped next to validation ones. ``auto``: the fraction came from the
    default rule (few labels: no split, by design)."""
    if val_fraction == 0:
        if auto:
            console.note(f"few labels (fewer than {AUTO_VAL_MIN_PER_CLASS} in some class): "
                         "every label trains, for a fixed schedule, without a validation "
                         "split (--val-fraction F holds a share out for early stopping)")
        else:
            console.warn("no validation split (--val-fraction 0): the last epoch is kept and "
                         "there is no early stopping")
        return
    val = split.val.counts(classes)
    missing = [f"{c.name} (id {c.id})" for c in classes if val[c.id] == 0]
    if missing:
        console.warn("no validation pixel for class(es) " + ", ".join(missing)
                     + ": their labels sit in too few split cells (try a smaller --split-block)")
    dropped = sum(split.dropped_overlap.values())
    if dropped:
        console.note(f"dropped {dropped} training pixel(s) whose patch overlapped a validation "
                     "patch")


def describe_counts(classes: ClassTable, counts: dict[int, int]) -> str:
    """``Road 12, Water 9`` in class order."""
    return ", ".join(f"{classes.name_of(k)} {v}" for k, v in counts.items())


__all__ = [
    "describe_counts",
    "json_safe",
    "library_versions",
    "score_summary",
    "split_table",
    "utc_now",
    "warn_about_split",
]
