"""Turn a downloaded benchmark (``.mat``/``.tif`` files as distributed) into s2fin's GeoTIFFs.

``import_dataset("trento", src, out)`` finds the files of each role under ``src`` using the
dataset's spec (:mod:`s2fin_cli.datasets.specs`), checks their SHA-256 where a sum is known,
and writes what is there:

* ``hsi.tif``, ``lidar.tif``, ``sar.tif``, ``dsm.tif``: (bands, rows, cols), the source dtype
  (float64 becomes float32);
* ``train_labels.tif`` + ``test_labels.tif`` for a train/test split, ``ground_truth.tif`` for the
  full label map: uint8, 0 = unlabeled (also the nodata value), with the dataset's class names
  and colours (colour table + QGIS ``.qml``);
* ``dataset.json``: the source files, their keys and checksums, what was missing, per-class
  label counts, and every note and warning.

The ``.mat`` forms carry no georeferencing: the rasters then get a local pixel grid (no CRS,
``Affine(gsd, 0, 0, 0, -gsd, 0)``, i.e. the top-left corner at (0, 0) and metre-sized pixels of the
dataset's GSD). A georeferenced ``.tif`` source (e.g. the contest's Houston CASI image) gives its
own grid to every output instead.
"""

from __future__ import annotations

import fnmatch
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from s2fin_cli import __version__, console
from s2fin_cli.datasets.readers import read_mat, read_tiff
from s2fin_cli.datasets.specs import (
    IMAGE_ROLES,
    LABEL_ROLES,
    OUTPUT_NAMES,
    ROLE_TITLES,
    ROLES,
    DatasetSpec,
    Role,
    Source,
    get_spec,
)
from s2fin_cli.errors import AlignmentError, ConfigError, InputError, LabelError, OutputError
from s2fin_cli.hashing import file_sha256
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.outputs import Output, check_outputs
from s2fin_cli.io.writer import AtomicGroup, write_raster, write_text

RECORD_NAME = "dataset.json"
RECORD_FORMAT = "s2fin-dataset/1"
_MAX_DEPTH = 4  # how deep under SRC_DIR files are looked for (zip archives nest a folder or two)
_MAX_FILES = 50_000


@dataclass(frozen=True)
class FoundFile:
    """The file chosen for a role, the source form it matched, and matches left unused."""

    role: Role
    path: Path
    source: Source
    unused: tuple[Path, ...] = ()


@dataclass
class _Loaded:
    found: FoundFile
    key: str | None
    array: np.ndarray  # images: (bands, rows, cols); labels: (rows, cols) uint8
    grid: Grid | None = None


@dataclass
class ImportResult:
    """What :func:`import_dataset` wrote (paths by role) and the ``dataset.json`` record."""

    spec: DatasetSpec
    out_dir: Path
    outputs: dict[Role, Path]
    record: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class _Log:
    """Notes and warnings, shown as they happen and kept for dataset.json."""

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.warnings: list[str] = []

    def note(self, message: str) -> None:
        self.notes.append(message)
        console.note(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        console.warn(message)


# -- finding files ----------------------------------------------------------------------------

def _index_files(src_dir: Path) -> list[Path]:
    """Every regular file under ``src_dir`` up to a few levels deep, hidden folders skipped."""
    files: list[Path] = []
    base_depth = len(src_dir.parts)
    for root, dirs, names in os.walk(src_dir):
        depth = len(Path(root).parts) - base_depth
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if depth < _MAX_DEPTH else []
        for name in sorted(names):
            files.append(Path(root) / name)
            if len(files) >= _MAX_FILES:
                return files
    return files


def _matches(files: list[Path], pattern: str) -> list[Path]:
    lowered = pattern.lower()
    return [f for f in files if fnmatch.fnmatchcase(f.name.lower(), lowered)]


def find_files(spec: DatasetSpec, src_dir: Path) -> dict[Role, FoundFile]:
    """The file of each role found under ``src_dir`` (roles with no file are absent).

    For each role the spec's sources are tried in order; the first with a matching file wins.
    Several matches of one source: the one nearest to ``src_dir`` is used; two equally near
    different files are ambiguous (an :class:`InputError`).
    """
    files = _index_files(src_dir)
    found: dict[Role, FoundFile] = {}
    for role in ROLES:
        chosen: FoundFile | None = None
        unused: list[Path] = []
        for source in spec.sources.get(role, ()):
            hits = sorted({p for pattern in source.names for p in _matches(files, pattern)},
                          key=lambda p: (len(p.relative_to(src_dir).parts), str(p)))
            if not hits:
                continue
            if chosen is not None:
                unused.extend(hits)
                continue
            nearest = len(hits[0].relative_to(src_dir).parts)
            tied = [h for h in hits if len(h.relative_to(src_dir).parts) == nearest]
            if len(tied) > 1:
                names = ", ".join(str(t.relative_to(src_dir)) for t in tied)
                raise InputError(f"several candidate {ROLE_TITLES[role]} files for {spec.name}: "
                                 f"{names}", hint="point SRC_DIR at the folder of one copy")
            chosen = FoundFile(role, hits[0], source)
            unused.extend(hits[1:])
        if chosen is not None:
            found[role] = FoundFile(role, chosen.path, chosen.source, tuple(unused))
    return found


# -- converting arrays ------------------------------------------------------------------------

def _read(found: FoundFile) -> tuple[np.ndarray, str | None, Grid | None]:
    """A found file's raw array: (rows, cols[, bands]) from .mat, (bands, rows, cols) from .tif."""
    path = found.path
    if path.suffix.lower() in (".tif", ".tiff"):
        tiff = read_tiff(path)
        return tiff.array, None, tiff.grid
    if path.suffix.lower() == ".mat":
        array, key = read_mat(path, found.source.keys)
        return array, key, None
    raise InputError(f"{path}: unsupported file type {path.suffix!r} (expected .mat or .tif)")


def _image_bands_first(array: np.ndarray, *, from_tiff: bool, path: Path) -> np.ndarray:
    if array.ndim == 2:
        array = array[np.newaxis]
    elif array.ndim == 3 and not from_tiff:
        array = np.moveaxis(array, -1, 0)  # MATLAB (rows, cols, bands) -> (bands, rows, cols)
    elif array.ndim != 3:
        raise InputError(f"{path}: expected an image of 2 or 3 dimensions, got shape {array.shape}")
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)  # float64 precision is meaningless for these data
    elif array.dtype.kind not in "iuf":
        raise InputError(f"{path}: unsupported data type {array.dtype}")
    return np.ascontiguousarray(array)


def _labels(array: np.ndarray, n_classes: int, path: Path, log: _Log) -> np.ndarray:
    """A (rows, cols) uint8 label map, 0 = unlabeled; -1 (unlabeled in some files) becomes 0."""
    a = np.squeeze(np.asarray(array))
    if a.ndim != 2:
        raise InputError(f"{path}: expected a 2-D label map, got shape {np.shape(array)}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise LabelError(f"{path}: labels hold non-integer values")
    elif a.dtype.kind not in "iub":
        raise LabelError(f"{path}: labels of data type {a.dtype}")
    values = a.astype(np.int64)
    unlabeled = values == -1
    if unlabeled.any():
        values[unlabeled] = 0
        log.note(f"{path.name}: {int(unlabeled.sum())} pixels labeled -1 (unlabeled) set to 0")
    bad = (values < 0) | (values > n_classes)
    if bad.any():
        unknown = sorted({int(v) for v in np.unique(values[bad])})[:10]
        raise LabelError(f"{path}: label values {unknown} outside 0..{n_classes}")
    return values.astype(np.uint8)


def _labels_from_coords(coords: np.ndarray, ground_truth: np.ndarray, path: Path,
                        key: str, log: _Log) -> np.ndarray:
    """A label map holding the ground truth at (row, col) ``coords`` (0- or 1-based)."""
    c = np.asarray(coords)
    if c.ndim != 2 or c.shape[1] != 2 or c.dtype.kind not in "iuf":
        raise InputError(f"{path}: {key!r} is not an (n, 2) array of pixel coordinates")
    c = c.astype(np.int64)
    rows, cols = ground_truth.shape

    def labeled(base: int) -> bool:
        r, k = c[:, 0] - base, c[:, 1] - base
        inside = (r >= 0) & (r < rows) & (k >= 0) & (k < cols)
        return bool(inside.all()) and bool((ground_truth[r, k] > 0).all())

    # The usual files are 0-based (NumPy); MATLAB-made ones are 1-based. Take the base under
    # which every coordinate falls on a labeled pixel.
    base = 0 if labeled(0) else 1 if labeled(1) else -1
    if base < 0:
        raise LabelError(f"{path}: coordinates in {key!r} do not all fall on labeled pixels of "
                         "the ground truth")
    if base == 1:
        log.note(f"{path.name}: {key!r} holds 1-based (MATLAB) coordinates")
    out = np.zeros_like(ground_truth)
    r, k = c[:, 0] - base, c[:, 1] - base
    out[r, k] = ground_truth[r, k]
    return out


def _local_grid(spec: DatasetSpec, shape: tuple[int, int]) -> Grid:
    return Grid(None, Affine(spec.gsd, 0.0, 0.0, 0.0, -spec.gsd, 0.0), shape[1], shape[0])


# -- the import ---------------------------------------------------------------------------------

def _expected_text(spec: DatasetSpec) -> str:
    parts = []
    for role in ROLES:
        names = spec.expected_files(role)
        if names:
            parts.append(f"{ROLE_TITLES[role]}: {' or '.join(names)}")
    return "; ".join(parts)


def _check_sums(spec: DatasetSpec, found: dict[Role, FoundFile], strict: bool,
                log: _Log) -> dict[Path, tuple[str, str]]:
    """SHA-256 and status ("verified", "mismatch", "unknown") of every distinct found file."""
    results: dict[Path, tuple[str, str]] = {}
    for item in found.values():
        if item.path in results:
            continue
        digest = file_sha256(item.path)
        known = spec.sha256.get(item.path.name.lower())
        if known is None:
            status = "unknown"
        elif digest in known:
            status = "verified"
        else:
            status = "mismatch"
            message = (f"{item.path}: SHA-256 {digest[:16]}… differs from the known copy "
                       f"({known[0][:16]}…); the content may still be right (another export)")
            if strict:
                raise InputError(message, hint="drop --strict to import it anyway")
            log.warn(message)
        results[item.path] = (digest, status)
    return results


def _counts(labels: np.ndarray, n_classes: int) -> list[int]:
    return [int(v) for v in np.bincount(labels.ravel(), minlength=n_classes + 1)[1:]]


def _write_rasters(spec: DatasetSpec, loaded: dict[Role, _Loaded], targets: dict[Role, Path],
                   grid: Grid, overwrite: bool, creation_options: dict[str, str] | None,
                   group: AtomicGroup) -> None:
    classes = spec.classes
    for role, path in targets.items():
        entry = loaded[role]
        tags = {"S2FIN_DATASET": spec.name, "S2FIN_ROLE": role,
                "SOURCE_FILE": entry.found.path.name}
        if entry.key:
            tags["SOURCE_KEY"] = entry.key
        if role in IMAGE_ROLES:
            bands = entry.array.shape[0]
            names = spec.band_names.get(role, ())
            descriptions = list(names) if len(names) == bands else [
                f"band {i}" for i in range(1, bands + 1)]
            write_raster(path, entry.array, grid, band_descriptions=descriptions, tags=tags,
                         overwrite=overwrite, creation_options=creation_options, group=group)
        else:
            write_raster(path, entry.array, grid, nodata=0, classes=classes,
                         band_descriptions=[ROLE_TITLES[role]], tags=tags,
                         overwrite=overwrite, creation_options=creation_options, group=group)


def import_dataset(
    name: str,
    src_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    strict: bool = False,
    creation_options: dict[str, str] | None = None,
) -> ImportResult:
    """Import benchmark ``name`` from ``src_dir`` into GeoTIFFs + dataset.json in ``out_dir``.

    ``strict``: a known checksum that differs, or verified class counts that differ, is an
    error instead of a warning.
    """
    try:
        spec = get_spec(name)
    except KeyError as exc:
        raise ConfigError(str(exc.args[0])) from None
    src = Path(src_dir)
    out = Path(out_dir)
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist or is not a folder")
    log = _Log()

    found = find_files(spec, src)
    if not found:
        raise InputError(f"no {spec.name} files found under {src}",
                         hint=f"expected {_expected_text(spec)}")
    for item in found.values():
        for path in item.unused:
            log.note(f"{path.relative_to(src)} also matches {ROLE_TITLES[item.role]}; using "
                     f"{item.path.relative_to(src)}")
    sums = _check_sums(spec, found, strict, log)
    loaded = _load_all(spec, found, log)
    grid = _common_grid(spec, loaded, log)
    missing = _report_missing(spec, found, loaded, log)
    counts = _check_counts(spec, loaded, strict, log)
    targets = _checked_targets(out, found, loaded, overwrite)
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "s2fin_version": __version__,
        "dataset": spec.name,
        "title": spec.title,
        "citation": spec.citation,
        "official_split": spec.official_split,
        "source_dir": str(src.resolve()),
        "georeferenced": grid.is_georeferenced,
        "gsd_m": spec.gsd,
        "grid": grid.describe(),
        "classes": spec.classes.to_json(),
        "outputs": {role: path.name for role, path in targets.items()},
        "files": [
            {
                "role": role,
                "path": str(entry.found.path.relative_to(src)),
                "key": entry.key,
                "sha256": sums[entry.found.path][0],
                "checksum": sums[entry.found.path][1],
                "shape": list(entry.array.shape),
                "dtype": str(entry.array.dtype),
            }
            for role, entry in loaded.items()
        ],
        "missing": missing,
        "label_counts": {role: {str(i): n for i, n in enumerate(c, start=1)}
                         for role, c in counts.items()},
        "notes": log.notes,
        "warnings": log.warnings,
    }
    _write_all(spec, loaded, targets, grid, record, out, overwrite, creation_options)
    return ImportResult(spec, out, targets, record, log.notes, log.warnings)


def _load_all(spec: DatasetSpec, found: dict[Role, FoundFile], log: _Log) -> dict[Role, _Loaded]:
    """Read every image and label role found (labels given as coordinates take their classes
    from the ground truth map)."""
    n_classes = len(spec.class_names)
    loaded: dict[Role, _Loaded] = {}
    for role in IMAGE_ROLES:
        if role in found:
            raw, key, grid = _read(found[role])
            array = _image_bands_first(raw, from_tiff=key is None, path=found[role].path)
            loaded[role] = _Loaded(found[role], key, array, grid)
    coords_roles: list[Role] = []
    for role in ("ground_truth", "train", "test"):
        if role not in found:
            continue
        if found[role].source.coords:
            coords_roles.append(role)
            continue
        raw, key, grid = _read(found[role])
        loaded[role] = _Loaded(found[role], key, _labels(raw, n_classes, found[role].path, log),
                               grid)
    for role in coords_roles:
        item = found[role]
        if "ground_truth" not in loaded:
            log.warn(f"{item.path.name} holds {role} coordinates but no ground truth map was "
                     f"found to take the labels from (expected "
                     f"{' or '.join(spec.expected_files('ground_truth'))}); {role} skipped")
            continue
        raw, key, _ = _read(item)
        assert key is not None
        loaded[role] = _Loaded(item, key, _labels_from_coords(
            raw, loaded["ground_truth"].array, item.path, key, log))
    return loaded


def _common_grid(spec: DatasetSpec, loaded: dict[Role, _Loaded], log: _Log) -> Grid:
    """One pixel grid for everything: the files' georeferencing, or a local grid."""
    shapes = {role: item.array.shape[-2:] for role, item in loaded.items()}
    if len(set(shapes.values())) > 1:
        listing = ", ".join(f"{item.found.path.name} {tuple(shapes[r])}"
                            for r, item in loaded.items())
        raise AlignmentError(f"the {spec.name} files differ in size: {listing}")
    shape = (int(next(iter(shapes.values()))[0]), int(next(iter(shapes.values()))[1]))
    if spec.shape is not None and shape != spec.shape:
        log.warn(f"the rasters are {shape[0]} x {shape[1]} pixels; the published {spec.name} "
                 f"scene is {spec.shape[0]} x {spec.shape[1]} (a crop or another version?)")
    for role in IMAGE_ROLES:
        if role in loaded and role in spec.bands:
            bands = loaded[role].array.shape[0]
            if bands != spec.bands[role]:
                log.note(f"{loaded[role].found.path.name}: {bands} band(s); the published "
                         f"{ROLE_TITLES[role]} has {spec.bands[role]}")
    geo = [(role, item) for role, item in loaded.items() if item.grid is not None]
    if not geo:
        log.note(f"the {spec.name} source files carry no georeferencing: writing a local pixel "
                 f"grid (no CRS, {spec.gsd:g} m pixels, top-left corner at 0, 0)")
        return _local_grid(spec, shape)
    grid = geo[0][1].grid
    assert grid is not None
    for _role, other in geo[1:]:
        if other.grid is not None and not other.grid.same_as(grid):
            raise AlignmentError(f"{other.found.path.name} and {geo[0][1].found.path.name} "
                                 "are georeferenced differently")
    plain = [other.found.path.name for other in loaded.values() if other.grid is None]
    log.note(f"using the georeferencing of {geo[0][1].found.path.name}"
             + (f"; {', '.join(plain)} (not georeferenced) put on the same pixel grid"
                if plain else ""))
    return grid


def _report_missing(spec: DatasetSpec, found: dict[Role, FoundFile],
                    loaded: dict[Role, _Loaded], log: _Log) -> list[dict[str, Any]]:
    """Say which expected files were not found; the list dataset.json records."""
    missing: list[dict[str, Any]] = []
    for role in ROLES:
        if role not in loaded and spec.sources.get(role):
            missing.append({"role": role, "expected": spec.expected_files(role)})
    absent_images = [r for r in IMAGE_ROLES if r in spec.sources and r not in loaded]
    if absent_images:
        expected = "; ".join(" or ".join(spec.expected_files(r)) for r in absent_images)
        log.note(f"not found, not imported: {', '.join(ROLE_TITLES[r] for r in absent_images)} "
                 f"(expected {expected})")
    if not any(r in loaded for r in LABEL_ROLES):
        expected = " or ".join(spec.expected_files("ground_truth") + spec.expected_files("train"))
        log.warn(f"no {spec.name} labels found (expected {expected})")
    elif ("train" in loaded) != ("test" in loaded):
        have: Role
        lack: Role
        have, lack = ("train", "test") if "train" in loaded else ("test", "train")
        log.warn(f"found {ROLE_TITLES[have]} but no {ROLE_TITLES[lack]} (expected "
                 f"{' or '.join(spec.expected_files(lack))})")
    for role in ("train", "test"):
        note = found[role].source.note if role in loaded else ""
        if note:
            log.note(f"{found[role].path.name}: {note}")
    return missing


def _check_counts(spec: DatasetSpec, loaded: dict[Role, _Loaded], strict: bool,
                  log: _Log) -> dict[Role, list[int]]:
    """Per-class label counts, compared with the verified counts of the spec."""
    n_classes = len(spec.class_names)
    counts = {role: _counts(loaded[role].array, n_classes)
              for role in LABEL_ROLES if role in loaded}
    if "train" in loaded and "test" in loaded:
        overlap = int(((loaded["train"].array > 0) & (loaded["test"].array > 0)).sum())
        if overlap:
            log.warn(f"{overlap} pixels are labeled in both the training and the test labels")
    for role, verified in spec.verified_counts.items():
        if role in counts and counts[role] != list(verified):
            diff = [f"{spec.class_names[i]} {counts[role][i]} (expected {verified[i]})"
                    for i in range(n_classes) if counts[role][i] != verified[i]]
            message = (f"{loaded[role].found.path.name}: per-class counts differ from the "
                       f"verified {spec.name} {role} counts: {', '.join(diff[:5])}")
            if strict:
                raise LabelError(message)
            log.warn(message)
        elif role in counts:
            log.note(f"{loaded[role].found.path.name}: per-class counts match the verified "
                     f"{spec.name} {role} counts")
    return counts


def _checked_targets(out: Path, found: dict[Role, FoundFile], loaded: dict[Role, _Loaded],
                     overwrite: bool) -> dict[Role, Path]:
    """The output path of every loaded role, refused before anything is written when it
    exists (without ``overwrite``) or is, or resolves to, a source file (always)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output folder {out}: {exc.strerror or exc}") from exc
    targets = {role: out / OUTPUT_NAMES[role] for role in ROLES if role in loaded}
    check_outputs([*(Output(path, "GTiff", role in LABEL_ROLES) for role, path in targets.items()),
                   out / RECORD_NAME], [item.path for item in found.values()],
                  overwrite=overwrite)
    return targets


def _write_all(spec: DatasetSpec, loaded: dict[Role, _Loaded], targets: dict[Role, Path],
               grid: Grid, record: dict[str, Any], out: Path, overwrite: bool,
               creation_options: dict[str, str] | None) -> None:
    """Every raster and dataset.json, appearing together or not at all."""
    group = AtomicGroup()
    try:
        with warnings.catch_warnings():
            # Said once above, in words; GDAL's warning about a local grid would only confuse.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _write_rasters(spec, loaded, targets, grid, overwrite, creation_options, group)

        write_text(out / RECORD_NAME, json.dumps(record, indent=2) + "\n", overwrite=overwrite,
                   group=group)
    except BaseException as exc:
        translated = group.failed(exc)
        if translated is exc:
            raise
        raise translated from exc
    group.commit()
