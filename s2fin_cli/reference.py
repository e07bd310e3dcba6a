"""Reference labels against a class table: the one rule that matches their classes, and the
merge of several label files into one set of training labels.

Used wherever labels are compared with the classes of a model or a map (``s2fin train
--test-labels``, ``s2fin evaluate`` in both modes):

* By **id** (raster labels, vector labels with an integer field). When both sides name their
  classes and a name differs for one id, a warning says so (the ids still decide).
* By **name** when vector labels hold class *names* (a string ``--label-field``): their ids are
  only the sorted order of the names in that file, so each name is matched to the class of that
  name (exact, then case-insensitive).
* A labelled pixel whose class the target does not know is a :class:`LabelError` naming every
  such class with its pixel count, unless ``exclude_unknown``: then those pixels are left out
  with a warning and reported.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s2fin_cli import console
from s2fin_cli.classes import ClassInfo, ClassTable, default_color
from s2fin_cli.errors import LabelError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.labels import (
    MAX_CLASS_ID,
    VECTOR_SUFFIXES,
    LabelPoints,
    LabelSource,
    VectorLabels,
    open_labels,
    read_label_points,
)
from s2fin_cli.sampling import Samples


def is_default_name(class_id: int, name: str) -> bool:
    return name == f"class {class_id}"


def matches_by_name(source: LabelSource) -> bool:
    """Vector labels with a class-name field got ids from sorted names: match them by name."""
    return isinstance(source, VectorLabels) and source.named_classes is not None


def class_names(table: ClassTable | None) -> dict[int, str]:
    return {} if table is None else {c.id: c.name for c in table}


def label_lookup(
    target: ClassTable, labels: ClassTable | None, *, by_name: bool, what: str = "map"
) -> np.ndarray:
    """An int64 lookup from label id (0..65535) to the target class id; -1 = unknown, 0 -> 0.

    ``by_name``: match the labels' class names to the target's names (vector labels with a
    string field); otherwise match ids, warning where both sides name one id differently.
    """
    lut = np.full(MAX_CLASS_ID + 1, -1, np.int64)
    lut[0] = 0
    if by_name and labels is not None:
        exact = {c.name: c.id for c in target}
        folded = {c.name.casefold(): c.id for c in target}
        for c in labels:
            match = exact.get(c.name, folded.get(c.name.casefold()))
            if match is not None:
                lut[c.id] = match
        return lut
    ids = np.asarray(target.ids, np.int64)
    lut[ids[ids <= MAX_CLASS_ID]] = ids[ids <= MAX_CLASS_ID]
    if labels is not None:
        target_names = {c.id: c.name for c in target}
        differ = [f"{c.id} ({c.name!r} in the labels, {target_names[c.id]!r} in the {what})"
                  for c in labels
                  if c.id in target_names and c.name != target_names[c.id]
                  and not is_default_name(c.id, c.name)
                  and not is_default_name(c.id, target_names[c.id])]
        if differ:
            console.warn("class names differ for id " + "; ".join(differ[:8])
                         + (" ..." if len(differ) > 8 else "")
                         + "; classes are matched by id")
    return lut


def _unknown_message(unknown: Mapping[int, int], names: Mapping[int, str],
                     target: ClassTable, what: str, by_name: bool) -> str:
    items, keys = [], []
    for i, n in sorted(unknown.items()):
        name = names.get(i)
        label = f"{name!r}" if by_name and name else (
            f"{i} {name!r}" if name and not is_default_name(i, name) else f"{i}")
        items.append(f"{label} ({n} px)")
        keys.append(repr(name) if by_name and name else str(i))
    known = ", ".join(f"{c.name!r}" if by_name else f"{c.id} {c.name!r}" for c in target)
    kind = "class names" if by_name else "class ids"
    more = " ..." if len(items) > 12 else ""
    return (f"the labels hold {kind} unknown to the {what}: {', '.join(items[:12])}{more}; "
            f"[{', '.join(keys[:12])}{more}] are not among the {what}'s classes {known}")


def settle_unknown(unknown: dict[int, int], names: Mapping[int, str], target: ClassTable,
                   what: str, by_name: bool, exclude_unknown: bool | None) -> dict[int, int]:
    """Raise :class:`LabelError` for labelled pixels of classes the ``what`` does not know, or
    (``exclude_unknown``) warn and return them (label id -> pixels). ``exclude_unknown=None``:
    the command has no such option (no hint)."""
    if not unknown:
        return {}
    message = _unknown_message(unknown, names, target, what, by_name)
    if not exclude_unknown:
        hint = (None if exclude_unknown is None else
                "pass --exclude-unknown to leave those pixels out of the assessment")
        raise LabelError(message, hint=hint)
    console.warn(f"{message}; {sum(unknown.values())} labelled pixel(s) left out")
    return dict(sorted(unknown.items()))


@dataclass
class ReferenceSamples:
    """The labelled pixels of reference labels, with class ids of the target's table."""

    samples: Samples
    by_name: bool
    # Label id -> pixels left out because the target does not know their class.
    excluded: dict[int, int] = field(default_factory=dict)
    label_names: dict[int, str] = field(default_factory=dict)  # names the labels gave their ids


def vector_label_field(path: str | Path, label_field: str | None) -> str | None:
    """``--label-field`` as it applies to ``path`` when several label files are read together
    (training sources, test labels): vector files only, since a raster has no fields."""
    return label_field if Path(path).suffix.lower() in VECTOR_SUFFIXES else None


def read_reference(path: str | os.PathLike[str], grid: Grid, target: ClassTable, *,
                   what: str, label_field: str | None = None,
                   exclude_unknown: bool | None = None) -> ReferenceSamples:
    """Every labelled pixel of ``path`` on ``grid``, its class matched to ``target`` (the
    classes of a ``what``: "model", "map"); empty labels are a :class:`LabelError`."""
    with open_labels(path, grid, label_field=label_field) as source:
        points = source.points()
        by_name = matches_by_name(source)
        label_table = source.named_classes
    if len(points) == 0:
        raise LabelError(f"{Path(path).name} has no labelled pixel on the scene grid",
                         hint="0 means unlabeled; check the extent and CRS of the labels")
    names = class_names(label_table)
    lut = label_lookup(target, label_table, by_name=by_name, what=what)
    ref = lut[points.classes]
    unknown_mask = ref < 0
    ids, counts = np.unique(points.classes[unknown_mask], return_counts=True)
    unknown = {int(i): int(n) for i, n in zip(ids, counts, strict=True)}
    excluded = settle_unknown(unknown, names, target, what, by_name, exclude_unknown)
    keep = ~unknown_mask
    if by_name:
        renamed = {int(k): int(lut[k]) for k in np.unique(points.classes[keep]) if lut[k] != k}
        if renamed:
            console.note("matched label classes to the " + what + "'s by name: "
                         + ", ".join(f"{names.get(k, k)} {k}->{v}" for k, v in renamed.items()))
    samples = Samples(np.asarray(points.rows[keep], np.int64),
                      np.asarray(points.cols[keep], np.int64), ref[keep])
    return ReferenceSamples(samples, by_name, excluded, names)


def merge_label_sources(paths: Sequence[str | os.PathLike[str]], grid: Grid, *,
                        label_field: str | None = None) -> tuple[LabelPoints, ClassTable]:
    """The labelled pixels of several label files on ``grid`` as one set (``s2fin train
    --labels A --labels B``: the original labels plus the points an analyst labelled).

    The first file's classes come first; a later file's classes are matched by the rule of this
    module (by id, or by name for a class-name field, where a new name gets the next free id).
    ``label_field`` applies to the vector files among them. A pixel labelled twice with one
    class counts once; with two classes it is a
    :class:`LabelError` (exit 5) naming how many pixels and where. A file without a labelled
    pixel on the grid is a :class:`LabelError` (so is a merged set with none).
    """
    if len(paths) == 1:
        return read_label_points(paths[0], grid, label_field=label_field)
    table: ClassTable | None = None
    parts: list[tuple[Path, LabelPoints]] = []
    for path in map(Path, paths):
        with open_labels(path, grid, label_field=vector_label_field(path, label_field)) as source:
            points = source.points()
            by_name = matches_by_name(source)
            source_table = source.class_table(points.classes)
        if len(points) == 0:
            raise LabelError(f"{path.name} has no labelled pixel on the scene grid",
                             hint="0 means unlabeled; check the extent and CRS of the labels")
        if table is None:
            table = source_table
        else:
            table, lut = _join_classes(table, source_table, by_name=by_name)
            points = LabelPoints(points.rows, points.cols, lut[points.classes])
        parts.append((path, points))
    assert table is not None
    return _merge_points(parts, grid), table


def _join_classes(table: ClassTable, other: ClassTable, *, by_name: bool
                  ) -> tuple[ClassTable, np.ndarray]:
    """``table`` with ``other``'s classes added, and the lookup of ``other``'s ids into it."""
    lut = label_lookup(table, other, by_name=by_name, what="first labels")
    classes = list(table)
    known = {c.id for c in classes}
    for c in other:
        if lut[c.id] >= 0:
            continue
        new_id = c.id if not by_name and c.id not in known else max(known | {0}) + 1
        classes.append(ClassInfo(new_id, c.name, c.color if new_id == c.id else
                                 default_color(new_id)))
        known.add(new_id)
        lut[c.id] = new_id
    return ClassTable(tuple(classes)), lut


def _merge_points(parts: list[tuple[Path, LabelPoints]], grid: Grid) -> LabelPoints:
    rows = np.concatenate([p.rows for _, p in parts])
    cols = np.concatenate([p.cols for _, p in parts])
    classes = np.concatenate([p.classes for _, p in parts])
    origin = np.concatenate([np.full(len(p), i) for i, (_, p) in enumerate(parts)])
    key = rows * grid.width + cols
    order = np.lexsort((classes, key))
    key, classes, rows, cols, origin = (a[order] for a in (key, classes, rows, cols, origin))
    same_pixel = key[1:] == key[:-1]
    clash = same_pixel & (classes[1:] != classes[:-1])
    if clash.any():
        first = int(np.flatnonzero(clash)[0])
        a, b = parts[int(origin[first])][0], parts[int(origin[first + 1])][0]
        raise LabelError(
            f"{int(clash.sum())} pixel(s) carry two different classes in the label files, e.g. "
            f"row {int(rows[first])}, col {int(cols[first])}: class {int(classes[first])} in "
            f"{a.name} and {int(classes[first + 1])} in {b.name}",
            hint="fix or remove one of the two labels")
    keep = np.concatenate([[True], ~same_pixel])
    duplicates = int((~keep).sum())
    if duplicates:
        console.note(f"{duplicates} pixel(s) are labelled alike in several label files: "
                     "counted once")
    return LabelPoints(rows[keep], cols[keep], classes[keep])


__all__ = [
    "ReferenceSamples",
    "class_names",
    "is_default_name",
    "label_lookup",
    "matches_by_name",
    "merge_label_sources",
    "read_reference",
    "settle_unknown",
    "vector_label_field",
]
