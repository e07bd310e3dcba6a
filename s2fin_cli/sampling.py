"""Which labelled pixels train the network and which validate it.

Order of operations (``s2fin train``):

1. :func:`drop_invalid_centres`: labelled pixels where the scene is nodata are dropped (counted
   per class): a patch centred on nodata has nothing to classify.
2. :func:`apply_protocol`: the labelled-pixel budget, seeded and stratified per class:
   ``all`` (every labelled pixel), ``per-class N`` (exactly N per class, the limited-label
   protocol of the literature) or ``fraction F`` (round(F * n) per class, at least 1).
   A class with too few pixels is a :class:`LabelError` naming it.
3. :func:`blocked_split`: a spatially blocked train/validation split of that budget. The grid is
   cut into square cells of ``block_size`` pixels; cells are visited in a seeded order and
   assigned to validation while some class they hold still needs validation pixels (about
   ``val_fraction`` of each class), unless that would leave a class less than half its share of
   training pixels; the best of a few seeded orders is kept. Training pixels
   whose patch would overlap a validation patch (Chebyshev distance < ``patch_size``) are then
   dropped, so no pixel value is seen by both sets. Checkpoints are selected on this validation
   set, never on test labels.

Every step works on pixel coordinates (memory follows the number of labelled pixels, never the
scene), and every random choice comes from ``numpy.random.default_rng`` seeded with the run's
seed, so a seed fixes the split.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from rasterio.windows import Window

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import ConfigError, LabelError
from s2fin_cli.io.labels import LabelPoints
from s2fin_cli.io.reader import Scene

ProtocolKind = Literal["all", "per-class", "fraction"]

# The blocked split's defaults: a fifth of the labels validates, in cells of 16 x 16 pixels.
DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SPLIT_BLOCK = 16
# The default validation strategy ("auto", no --val-fraction): hold DEFAULT_VAL_FRACTION out only
# when every class has at least this many labelled pixels; below it, every label trains and the
# run lasts its fixed schedule (a validation split of a few pixels per class costs a third of
# the labels and selects an epoch on noise).
AUTO_VAL_MIN_PER_CLASS = 50
# Side of the blocks read when only the pixels at samples are needed (validity, patches).
SAMPLE_READ_BLOCK = 512
# Seed offsets so the protocol draw and the split draw are independent streams of one seed.
_PROTOCOL_STREAM = 101
_SPLIT_STREAM = 202


@dataclass(frozen=True)
class Samples:
    """Pixel centres with their class ids (int64 arrays of equal length)."""

    rows: np.ndarray
    cols: np.ndarray
    classes: np.ndarray

    @classmethod
    def from_points(cls, points: LabelPoints) -> Samples:
        return cls(np.asarray(points.rows, np.int64), np.asarray(points.cols, np.int64),
                   np.asarray(points.classes, np.int64))

    @classmethod
    def empty(cls) -> Samples:
        z = np.zeros(0, np.int64)
        return cls(z, z.copy(), z.copy())

    def __len__(self) -> int:
        return int(self.rows.size)

    def subset(self, index: np.ndarray) -> Samples:
        """The samples selected by a boolean mask or an index array (order kept)."""
        return Samples(self.rows[index], self.cols[index], self.classes[index])

    def counts(self, classes: ClassTable | Iterable[int] | None = None) -> dict[int, int]:
        """Pixels per class id; with ``classes``, every listed id appears (0 when absent)."""
        ids, counts = np.unique(self.classes, return_counts=True)
        found = {int(i): int(c) for i, c in zip(ids, counts, strict=True)}
        if classes is None:
            return found
        wanted = classes.ids if isinstance(classes, ClassTable) else [int(i) for i in classes]
        return {i: found.get(i, 0) for i in wanted}

    def sorted(self) -> Samples:
        """Row-major order: the order blocks are read in, and a canonical order for hashing."""
        order = np.lexsort((self.cols, self.rows))
        return self.subset(order)


@dataclass(frozen=True)
class Protocol:
    """The labelled-pixel budget: ``all``, ``per-class`` N, or a stratified ``fraction`` F."""

    kind: ProtocolKind = "all"
    per_class: int | None = None
    fraction: float | None = None

    @classmethod
    def from_options(cls, per_class: int | None, train_fraction: float | None) -> Protocol:
        if per_class is not None and train_fraction is not None:
            raise ConfigError("give --per-class or --train-fraction, not both")
        if per_class is not None:
            if per_class < 1:
                raise ConfigError(f"--per-class must be >= 1, got {per_class}")
            return cls("per-class", per_class=per_class)
        if train_fraction is not None:
            if not 0.0 < train_fraction <= 1.0:
                raise ConfigError(f"--train-fraction must be in (0, 1], got {train_fraction}")
            return cls("fraction", fraction=train_fraction)
        return cls("all")

    def describe(self) -> str:
        if self.kind == "per-class":
            return f"{self.per_class} labelled pixels per class"
        if self.kind == "fraction":
            return f"{self.fraction:g} of the labelled pixels of each class"
        return "every labelled pixel"

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "per_class": self.per_class, "fraction": self.fraction}


def _class_label(classes: ClassTable, class_id: int) -> str:
    try:
        return f"{classes.name_of(class_id)!r} (id {class_id})"
    except KeyError:
        return f"id {class_id}"


def valid_centres(scene: Scene, samples: Samples, *,
                  block_size: int = SAMPLE_READ_BLOCK) -> np.ndarray:
    """(N,) bool: the scene has data (both modalities) at each sample; only blocks that hold
    samples are read."""
    keep = np.zeros(len(samples), bool)
    for window, index in group_by_block(samples, block_size, scene.grid.shape):
        core = scene.read(window).core_valid
        keep[index] = core[samples.rows[index] - int(window.row_off),
                           samples.cols[index] - int(window.col_off)]
    return keep


def drop_invalid_centres(samples: Samples, scene: Scene, *, block_size: int = SAMPLE_READ_BLOCK
                         ) -> tuple[Samples, dict[int, int]]:
    """Keep the samples where the scene has data (both modalities); count the dropped per class."""
    if len(samples) == 0:
        return samples, {}
    keep = valid_centres(scene, samples, block_size=block_size)
    return samples.subset(keep), samples.subset(~keep).counts()


def group_by_block(
    samples: Samples, block_size: int, shape: tuple[int, int]
) -> list[tuple[Window, np.ndarray]]:
    """The row-major blocks of a ``shape`` grid that hold samples, with their sample indexes."""
    height, width = shape
    if len(samples) == 0:
        return []
    if samples.rows.min() < 0 or samples.cols.min() < 0 or samples.rows.max() >= height \
            or samples.cols.max() >= width:
        raise ValueError("samples lie outside the grid")
    n_cols = -(-width // block_size)
    key = (samples.rows // block_size) * n_cols + samples.cols // block_size
    order = np.argsort(key, kind="stable")
    keys, starts = np.unique(key[order], return_index=True)
    ends = np.append(starts[1:], order.size)
    out = []
    for k, s, e in zip(keys.tolist(), starts.tolist(), ends.tolist(), strict=True):
        row, col = (k // n_cols) * block_size, (k % n_cols) * block_size
        window = Window(col, row, min(block_size, width - col), min(block_size, height - row))
        out.append((window, order[s:e]))
    return out


def apply_protocol(samples: Samples, protocol: Protocol, classes: ClassTable, *,
                   seed: int) -> Samples:
    """The labelled-pixel budget of ``protocol``, stratified per class (row-major order)."""
    if protocol.kind == "all":
        empty = [c for c, n in samples.counts(classes).items() if n == 0]
        if empty:
            raise LabelError("no usable labelled pixel (all on scene nodata) for class "
                             + ", ".join(_class_label(classes, c) for c in empty))
        return samples.sorted()
    rng = np.random.default_rng([seed, _PROTOCOL_STREAM])
    counts = samples.counts(classes)
    keep: list[np.ndarray] = []
    short = []
    for class_id, available in counts.items():
        if protocol.kind == "per-class":
            assert protocol.per_class is not None
            wanted = protocol.per_class
        else:
            assert protocol.fraction is not None
            wanted = max(1, round(protocol.fraction * available)) if available else 0
        if available < max(wanted, 1):
            short.append((class_id, available, wanted))
            continue
        members = np.flatnonzero(samples.classes == class_id)
        keep.append(rng.choice(members, size=wanted, replace=False))
    if short:
        text = "; ".join(f"class {_class_label(classes, c)} has {a} usable labelled pixel(s), "
                         f"the protocol needs {max(w, 1)}" for c, a, w in short)
        raise LabelError(f"too few labelled pixels for {protocol.describe()}: {text}",
                         hint="lower --per-class, label more pixels, or drop the class")
    return samples.subset(np.sort(np.concatenate(keep))).sorted()


def resolve_val_fraction(val_fraction: float | None, counts: dict[int, int]) -> float:
    """The validation fraction of a run: ``val_fraction`` when given; otherwise (``auto``)
    :data:`DEFAULT_VAL_FRACTION` when the smallest class of ``counts`` (labelled pixels per
    class) has at least :data:`AUTO_VAL_MIN_PER_CLASS`, else 0 (no validation split)."""
    if val_fraction is not None:
        return val_fraction
    if counts and min(counts.values()) >= AUTO_VAL_MIN_PER_CLASS:
        return DEFAULT_VAL_FRACTION
    return 0.0


@dataclass
class Split:
    """A train/validation split and what it cost."""

    train: Samples
    val: Samples
    # Training pixels dropped because their patch overlapped a validation patch, per class id.
    dropped_overlap: dict[int, int] = field(default_factory=dict)
    val_cells: int = 0
    cells: int = 0
    block_size: int = 0

    def table_rows(self, classes: ClassTable) -> list[dict[str, Any]]:
        train, val = self.train.counts(classes), self.val.counts(classes)
        return [{"id": c.id, "name": c.name, "train": train[c.id], "val": val[c.id],
                 "dropped_overlap": self.dropped_overlap.get(c.id, 0)} for c in classes]


def blocked_split(
    samples: Samples,
    classes: ClassTable,
    *,
    val_fraction: float,
    block_size: int,
    patch_size: int,
    seed: int,
    attempts: int = 16,
) -> Split:
    """Spatially blocked split; train and validation patches never overlap (module docstring).

    ``attempts`` seeded cell orders are tried; the one that leaves the fewest classes without
    training pixels, then without validation pixels, then loses the fewest pixels (dropped next
    to validation patches, or validation size off its target) wins.
    A class left without training pixels is a :class:`LabelError`; a class left without
    validation pixels is allowed (the caller warns).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if block_size < 1:
        raise ConfigError(f"--split-block must be >= 1 pixel, got {block_size}")
    samples = samples.sorted()
    if val_fraction == 0.0 or len(samples) == 0:
        return Split(samples, Samples.empty(), {}, 0, 0, block_size)
    ids = classes.ids
    col_of = {c: i for i, c in enumerate(ids)}
    class_idx = np.array([col_of[int(c)] for c in samples.classes], np.int64)
    cell_r, cell_c = samples.rows // block_size, samples.cols // block_size
    cell_keys, cell_of = np.unique(np.stack([cell_r, cell_c], 1), axis=0, return_inverse=True)
    cell_of = cell_of.reshape(-1)
    n_cells, k = len(cell_keys), len(ids)
    per_cell = np.zeros((n_cells, k), np.int64)
    np.add.at(per_cell, (cell_of, class_idx), 1)
    total = per_cell.sum(axis=0)
    target = np.where(total >= 2, np.maximum(1, np.round(val_fraction * total)), 0)
    # Each class keeps at least half its fair share of training pixels, and at least one.
    min_train = np.maximum(1, np.floor(total * (1.0 - val_fraction) / 2)).astype(np.int64)
    order = np.argsort(cell_of, kind="stable")
    bounds = np.searchsorted(cell_of[order], np.arange(n_cells + 1))
    cell_members = [order[bounds[i]:bounds[i + 1]] for i in range(n_cells)]
    rng = np.random.default_rng([seed, _SPLIT_STREAM])
    best: tuple[tuple[int, int, int], np.ndarray, np.ndarray] | None = None
    for _ in range(max(1, attempts)):
        is_val_cell = _assign_cells(rng.permutation(n_cells), samples, class_idx, cell_keys,
                                    cell_members, per_cell, target, min_train, block_size,
                                    patch_size)
        in_val = is_val_cell[cell_of]
        near = within_distance(samples.rows[~in_val], samples.cols[~in_val],
                               samples.rows[in_val], samples.cols[in_val], patch_size)
        val_classes = per_cell[is_val_cell].sum(axis=0)
        train_classes = np.bincount(class_idx[~in_val][~near], minlength=k)
        # Pixels lost to training: those dropped next to validation, plus the validation
        # excess over the target (or shortfall below it).
        lost = int(near.sum()) + abs(int(in_val.sum()) - int(target.sum()))
        score = (int((train_classes == 0).sum()),
                 int(((val_classes == 0) & (target > 0)).sum()), lost)
        if best is None or score < best[0]:
            best = (score, is_val_cell, in_val)
    assert best is not None
    _, is_val_cell, in_val = best
    val = samples.subset(in_val)
    train_candidates = samples.subset(~in_val)
    near = within_distance(train_candidates.rows, train_candidates.cols, val.rows, val.cols,
                           patch_size)
    train = train_candidates.subset(~near)
    dropped = train_candidates.subset(near).counts()
    missing = [c for c in ids if train.counts(classes)[c] == 0]
    if missing:
        text = "; ".join(
            f"class {_class_label(classes, c)} has {samples.counts(classes)[c]} labelled "
            f"pixel(s): {val.counts(classes)[c]} for validation, {dropped.get(c, 0)} dropped "
            "next to validation patches, none left for training" for c in missing)
        raise LabelError(f"the blocked train/validation split leaves no training pixel: {text}",
                         hint="lower --val-fraction, change --split-block or --seed, "
                         "or label more pixels")
    return Split(train, val, dropped, int(is_val_cell.sum()), n_cells, block_size)


def _assign_cells(order: np.ndarray, samples: Samples, class_idx: np.ndarray,
                  cell_keys: np.ndarray, cell_members: list[np.ndarray], per_cell: np.ndarray,
                  target: np.ndarray, min_train: np.ndarray, block_size: int,
                  patch_size: int) -> np.ndarray:
    """Greedy: a cell goes to validation while a class it holds needs validation pixels, unless
    that (with the training pixels it would drop next to it) leaves a class fewer than
    ``min_train`` training pixels."""
    n, k = len(samples), per_cell.shape[1]
    alive = np.ones(n, bool)  # still training: not in a validation cell, not dropped near one
    alive_count = np.bincount(class_idx, minlength=k)
    val_count = np.zeros(k, np.int64)
    is_val_cell = np.zeros(per_cell.shape[0], bool)
    index = {(int(r), int(c)): i for i, (r, c) in enumerate(cell_keys.tolist())}
    reach = -(-(patch_size - 1) // block_size)
    for cell in order:
        held = per_cell[cell] > 0
        if not (held & (val_count < target)).any():
            continue
        cr, cc = (int(v) for v in cell_keys[cell])
        members = cell_members[cell]
        neighbours = [cell_members[index[(cr + dr, cc + dc)]]
                      for dr in range(-reach, reach + 1) for dc in range(-reach, reach + 1)
                      if (dr or dc) and (cr + dr, cc + dc) in index]
        cand = np.concatenate(neighbours) if neighbours else np.zeros(0, np.int64)
        cand = cand[alive[cand]]
        near = within_distance(samples.rows[cand], samples.cols[cand], samples.rows[members],
                               samples.cols[members], patch_size)
        lost = np.concatenate([members[alive[members]], cand[near]])
        after = alive_count - np.bincount(class_idx[lost], minlength=k)
        if np.all(after >= min_train):
            is_val_cell[cell] = True
            val_count += per_cell[cell]
            alive[lost] = False
            alive_count = after
    return is_val_cell


def within_distance(rows: np.ndarray, cols: np.ndarray, other_rows: np.ndarray,
                    other_cols: np.ndarray, distance: int, *, tile: int = 1024) -> np.ndarray:
    """Bool per point: some ``other`` point lies at Chebyshev distance < ``distance``.

    Exact and vectorised: per tile of points, a count image of the other points (tile plus a
    margin) and its summed-area table give each point's box count. Memory follows the tile.
    """
    out = np.zeros(rows.size, bool)
    if rows.size == 0 or other_rows.size == 0 or distance < 1:
        return out
    r = distance - 1  # box half-width
    row0, col0 = int(rows.min()), int(cols.min())
    tile = max(1, min(tile, int(max(rows.max() - row0, cols.max() - col0)) + 1))
    trow, tcol = (rows - row0) // tile, (cols - col0) // tile
    tiles, tile_of = np.unique(np.stack([trow, tcol], 1), axis=0, return_inverse=True)
    tile_of = tile_of.reshape(-1)
    for t, (tr, tc) in enumerate(tiles.tolist()):
        idx = np.flatnonzero(tile_of == t)
        r0, c0 = row0 + tr * tile - r, col0 + tc * tile - r
        size = tile + 2 * r
        sel = ((other_rows >= r0) & (other_rows < r0 + size)
               & (other_cols >= c0) & (other_cols < c0 + size))
        if not sel.any():
            continue
        counts = np.zeros((size + 1, size + 1), np.int32)
        np.add.at(counts, (other_rows[sel] - r0 + 1, other_cols[sel] - c0 + 1), 1)
        sat = counts.cumsum(0).cumsum(1)
        pr, pc = rows[idx] - r0, cols[idx] - c0  # in [r, r + tile)
        lo_r, hi_r, lo_c, hi_c = pr - r, pr + r + 1, pc - r, pc + r + 1
        box = sat[hi_r, hi_c] - sat[lo_r, hi_c] - sat[hi_r, lo_c] + sat[lo_r, lo_c]
        out[idx] = box > 0
    return out


def pixel_overlap(a: Samples, b: Samples) -> int:
    """Pixels present in both sets (e.g. test labels that are also training labels)."""
    if len(a) == 0 or len(b) == 0:
        return 0
    width = int(max(a.cols.max(), b.cols.max())) + 1
    return int(np.intersect1d(a.rows * width + a.cols, b.rows * width + b.cols).size)
