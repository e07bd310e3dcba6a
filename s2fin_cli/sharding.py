"""Sharded prediction: N independent processes each classify a share of a scene's blocks into
their own part file, and :func:`merge_parts` assembles the parts into one map.

- **Numbering**: shards are **0-based**, ``--shard i/N`` with ``0 <= i < N`` (as SLURM array task
  ids ``--array=0-7`` and torch's ``RANK``).
- **Which blocks**: the scene is cut into the blocks of ``--block-size`` in row-major order (the
  blocks a single-process prediction uses) and block ``k`` belongs to shard ``k % N``. Neighbouring
  blocks go to different shards, so nodata areas (cheap) and valid areas (expensive) are dealt
  evenly whatever the scene's shape; every pixel is classified exactly as in a single-process run
  (same blocks, same batches), so the merged map is identical to it.
- **Part files**: ``map.tif`` → ``map.part-0003-of-0008.tif`` (same for ``--probabilities`` and
  ``--confidence``), a GeoTIFF on the **full scene grid**, tiled by the block size (when it is a
  multiple of 16) with ``SPARSE_OK=TRUE``: the blocks of other shards are never written and take
  no space; they read as nodata (0). Parts carry the model tags and an ``S2FIN_SHARD`` tag (JSON:
  index, count, block size, block count, rule, product, scene, grid, sibling parts) but no
  ``.qml`` / category names: they are intermediate files.
- **Merge**: every part must come from the same run (same N, block size, model checksum, classes,
  grid, scene name); each index 0..N-1 exactly once. The merged map gets what a single-process
  prediction writes (colour table, nodata, category names / RAT, ``.qml``, tags), through
  :class:`~s2fin_cli.io.classmap.ClassMapWriter`, block by block.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import rasterio
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import (
    ConfigError,
    DuplicatePartError,
    InputError,
    MissingPartError,
    MixedPartsError,
)
from s2fin_cli.io.classmap import (
    PROBABILITY_ENCODING,
    TAG_ENCODING,
    TAG_MODEL_SHA256,
    ClassMapWriter,
    MapOutputs,
)
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.outputs import check_outputs, given_path
from s2fin_cli.io.windows import block_count, iter_blocks
from s2fin_cli.io.writer import CLASSES_TAG

TAG_SHARD = "S2FIN_SHARD"
RULE = "row-major block k belongs to shard k % count"
PRODUCTS = ("classes", "probabilities", "confidence")
_PART_RE = re.compile(r"\.part-(\d+)-of-(\d+)$")
_SHARD_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")
_NO_SHARD = ("none", "off", "no")
_AUTO = "auto"
# The variables --shard auto reads (a note says so when they are set and --shard is not given).
_SCHEDULER_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (0-based) of ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ConfigError(f"shard {self.index}/{self.count} is out of range",
                              hint="shards are numbered 0..N-1: --shard 0/4 .. --shard 3/4")

    @classmethod
    def parse(cls, text: str) -> Shard:
        match = _SHARD_RE.match(text)
        if match is None:
            raise ConfigError(f"--shard {text!r} is not INDEX/COUNT",
                              hint="e.g. --shard 0/8 (0-based), --shard auto or --shard none")
        return cls(int(match.group(1)), int(match.group(2)))

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def label(self) -> str:
        """``part-0003-of-0008`` (at least 4 digits, so names sort by index)."""
        digits = max(4, len(str(self.count - 1)))
        return f"part-{self.index:0{digits}d}-of-{self.count:0{digits}d}"

    def owns(self, block_index: int) -> bool:
        return block_index % self.count == self.index

    def windows(self, height: int, width: int, block_size: int) -> list[Window]:
        """This shard's blocks of a ``height`` x ``width`` grid (see the module docstring)."""
        return [w for k, w in enumerate(iter_blocks(height, width, block_size)) if self.owns(k)]


def _env_int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ConfigError(f"{name}={environ[name]!r} is not an integer",
                          hint="pass --shard INDEX/COUNT") from None


def shard_from_env(environ: Mapping[str, str]) -> tuple[Shard, str] | None:
    """The shard a scheduler implies, and which variables said so: a SLURM job array
    (``SLURM_ARRAY_TASK_ID`` and ``SLURM_ARRAY_TASK_COUNT``; index = (id - SLURM_ARRAY_TASK_MIN)
    / SLURM_ARRAY_TASK_STEP, so ``--array=1-8`` and ``--array=0-14:2`` work), else
    ``RANK`` and ``WORLD_SIZE`` (torchrun, mpirun wrappers). None when neither pair is set."""
    if "SLURM_ARRAY_TASK_ID" in environ and "SLURM_ARRAY_TASK_COUNT" in environ:
        task = _env_int(environ, "SLURM_ARRAY_TASK_ID")
        count = _env_int(environ, "SLURM_ARRAY_TASK_COUNT")
        first = _env_int(environ, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in environ \
            else 0
        step = _env_int(environ, "SLURM_ARRAY_TASK_STEP") if "SLURM_ARRAY_TASK_STEP" in environ \
            else 1
        offset = task - first
        index = offset // max(step, 1)
        if offset < 0 or offset % max(step, 1) or index >= count:
            raise ConfigError(f"SLURM array task {task} (min {first}, step {step}, count {count}) "
                              "is not one of a regular range of tasks",
                              hint="use --array=0-N-1, or pass --shard INDEX/COUNT")
        where = (f"SLURM_ARRAY_TASK_ID={task}, SLURM_ARRAY_TASK_COUNT={count}"
                 + (f", SLURM_ARRAY_TASK_MIN={first}" if first else "")
                 + (f", SLURM_ARRAY_TASK_STEP={step}" if step != 1 else ""))
        return Shard(index, count), where
    if "RANK" in environ and "WORLD_SIZE" in environ:
        rank, size = _env_int(environ, "RANK"), _env_int(environ, "WORLD_SIZE")
        if not 0 <= rank < size:
            raise ConfigError(f"RANK={rank} is not below WORLD_SIZE={size}",
                              hint="pass --shard INDEX/COUNT")
        return Shard(rank, size), f"RANK={rank}, WORLD_SIZE={size}"
    return None


def resolve_shard(option: str | None, environ: Mapping[str, str] | None = None) -> Shard | None:
    """``--shard``: ``i/N``; ``auto`` (from the scheduler's variables, :func:`shard_from_env`,
    announced; an error when none are set); ``none`` or absent: the whole scene.

    Sharding is never implied: one scene per SLURM array task (or per torchrun rank) is the
    common use of those variables, and a silently sharded run would write a part with a fraction
    of the scene instead of the map asked for. When such variables are set but not used, a note
    says so.
    """
    env = os.environ if environ is None else environ
    text = None if option is None else option.strip().lower()
    if text == _AUTO:
        found = shard_from_env(env)
        if found is None:
            raise ConfigError("--shard auto: no SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT or "
                              "RANK/WORLD_SIZE in the environment",
                              hint="pass --shard INDEX/COUNT")
        shard, where = found
        console.note(f"predicting shard {shard} ({where}) into part files for s2fin merge")
        return shard
    if text is not None and text not in _NO_SHARD:
        return Shard.parse(option or "")
    if text is None:
        present = [name for name in _SCHEDULER_VARS if name in env]
        if present:
            console.note(f"{', '.join(present)} set: predicting the whole scene (pass --shard "
                         "auto to split it over the array's tasks)")
    return None


def part_path(path: Path, shard: Shard) -> Path:
    """``map.tif`` → ``map.part-0003-of-0008.tif``."""
    return path.with_name(f"{path.stem}.{shard.label}{path.suffix}")


def merged_path(part: Path) -> Path:
    """Inverse of :func:`part_path`: ``map.part-0003-of-0008.tif`` → ``map.tif``."""
    stem = _PART_RE.sub("", part.stem)
    if stem == part.stem:
        raise ConfigError(f"{part.name} is not named like a part (NAME.part-I-of-N.tif)",
                          hint="give the merged map's name with -o")
    return part.with_name(stem + part.suffix)


def part_creation_options(block_size: int) -> dict[str, str]:
    """Tiled by the block (when GeoTIFF allows: a multiple of 16) and sparse, so the tiles of other
    shards' blocks are never written and cost nothing."""
    options = {"SPARSE_OK": "TRUE"}
    if block_size % 16 == 0:
        options["BLOCKXSIZE"] = options["BLOCKYSIZE"] = str(block_size)
    return options


@dataclass(frozen=True)
class ShardInfo:
    """What the ``S2FIN_SHARD`` tag of a part file records."""

    index: int
    count: int
    block_size: int
    blocks: int  # blocks in the whole scene
    product: str  # classes, probabilities, confidence
    scene: str
    grid: dict[str, Any]
    siblings: dict[str, str] = field(default_factory=dict)  # product -> path relative to this
    rule: str = RULE

    @property
    def shard(self) -> Shard:
        return Shard(self.index, self.count)

    def to_tag(self) -> str:
        return json.dumps({"index": self.index, "count": self.count,
                           "block_size": self.block_size, "blocks": self.blocks,
                           "rule": self.rule, "product": self.product, "scene": self.scene,
                           "grid": self.grid, "siblings": self.siblings}, sort_keys=True)

    @classmethod
    def from_tag(cls, text: str) -> ShardInfo:
        data = json.loads(text)
        return cls(int(data["index"]), int(data["count"]), int(data["block_size"]),
                   int(data["blocks"]), str(data["product"]), str(data["scene"]),
                   dict(data["grid"]), {str(k): str(v) for k, v in data["siblings"].items()},
                   str(data["rule"]))


def part_outputs(outputs: MapOutputs, shard: Shard) -> MapOutputs:
    """``outputs`` renamed to the part files of ``shard`` (:func:`part_path`); a COG is refused
    (parts are plain GeoTIFFs: ``s2fin merge --cog`` writes the COG)."""
    if outputs.cog:
        raise ConfigError("--cog cannot be used with --shard: parts are plain GeoTIFFs",
                          hint="pass --cog to s2fin merge")
    return replace(
        outputs, classes=part_path(outputs.classes, shard),
        probabilities=None if outputs.probabilities is None
        else part_path(outputs.probabilities, shard),
        confidence=None if outputs.confidence is None else part_path(outputs.confidence, shard))


def tag_part_outputs(outputs: MapOutputs, shard: Shard, *, block_size: int, grid: Grid,
                     scene: Path) -> MapOutputs:
    """The part files of :func:`part_outputs` as written: tagged with :class:`ShardInfo`,
    sparse, tiled by the block, unstyled."""
    named = {"classes": outputs.classes, "probabilities": outputs.probabilities,
             "confidence": outputs.confidence}
    present = {k: p for k, p in named.items() if p is not None}

    def info(product: str) -> str:
        here = present[product].parent
        siblings = {k: os.path.relpath(p, here) for k, p in present.items() if k != product}
        return ShardInfo(shard.index, shard.count, block_size,
                         block_count(grid.height, grid.width, block_size), product, str(scene),
                         grid.describe(), siblings).to_tag()

    # ClassMapWriter tags every raster alike; the classes part's tag names its siblings, and
    # each sibling says what it is through its band count, checked on merging.
    return replace(
        outputs, cog=False,
        creation_options={**part_creation_options(block_size), **outputs.creation_options},
        tags={**outputs.tags, TAG_SHARD: info("classes")}, style=False)


# -- merging -------------------------------------------------------------------------------


@dataclass
class Part:
    """One class-map part file as read for merging."""

    path: Path
    info: ShardInfo
    grid: Grid
    tags: dict[str, str]
    classes: ClassTable
    dtype: str


def _open_error(path: Path, exc: Exception) -> InputError:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return InputError(f"cannot read part {path}: {text}")


def read_part(path: Path) -> Part:
    """Open a class-map part and read its tags; :class:`InputError` for anything else."""
    if not path.is_file():
        raise InputError(f"part {path} does not exist")
    try:
        with rasterio.open(path) as ds:
            tags = dict(ds.tags())
            grid = Grid.of(ds)
            dtype = ds.dtypes[0]
            bands = ds.count
    except (RasterioIOError, OSError) as exc:
        raise _open_error(path, exc) from None
    if TAG_SHARD not in tags:
        raise InputError(f"{path} is not a part of a sharded prediction (no {TAG_SHARD} tag)",
                         hint="parts are written by s2fin predict --shard I/N")
    try:
        info = ShardInfo.from_tag(tags[TAG_SHARD])
        classes = ClassTable.from_json(json.loads(tags[CLASSES_TAG]))
        info.shard  # noqa: B018 - validates index and count
    except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as exc:
        raise InputError(f"{path}: unreadable {TAG_SHARD} or {CLASSES_TAG} tag ({exc})") from None
    if TAG_ENCODING in tags:  # a probabilities / confidence part (tagged like its class part)
        product = "probabilities" if bands > 1 else "confidence"
        raise InputError(f"{path} is a {product} part; give the class-map parts",
                         hint=f"merge finds the {product} parts beside them with --{product}")
    return Part(path, info, grid, tags, classes, dtype)


def check_parts(parts: list[Part]) -> list[Part]:
    """The parts of one run, sorted by index: refuses mixed runs, duplicates and missing parts."""
    if not parts:
        raise MissingPartError("no part to merge")
    first = parts[0]
    f = first.info

    def differ(part: Part, what: str, mine: object, theirs: object) -> MixedPartsError:
        return MixedPartsError(f"{part.path.name} and {first.path.name} are parts of different "
                               f"runs: {what} {mine} vs {theirs}")

    for part in parts[1:]:
        i = part.info
        if i.count != f.count:
            raise differ(part, "shard count", i.count, f.count)
        if i.block_size != f.block_size:
            raise differ(part, "block size", i.block_size, f.block_size)
        sha, first_sha = part.tags.get(TAG_MODEL_SHA256), first.tags.get(TAG_MODEL_SHA256)
        if sha != first_sha:
            raise differ(part, "model checksum", (sha or "none")[:12], (first_sha or "none")[:12])
        if not part.grid.same_as(first.grid):
            raise differ(part, "grid", _grid_text(part.grid), _grid_text(first.grid))
        if part.classes != first.classes:
            raise differ(part, "classes", part.classes.ids, first.classes.ids)
        if Path(i.scene).name != Path(f.scene).name:
            raise differ(part, "scene", i.scene, f.scene)
        if part.dtype != first.dtype or i.blocks != f.blocks or i.rule != f.rule:
            raise differ(part, "layout", f"{part.dtype}/{i.blocks}",
                         f"{first.dtype}/{f.blocks}")
        if Path(i.scene) != Path(f.scene):
            console.note(f"{part.path.name} was predicted from {i.scene}, {first.path.name} from "
                         f"{f.scene} (same name and grid: merged)")
    by_index: dict[int, Part] = {}
    for part in parts:
        if part.info.index in by_index:
            raise DuplicatePartError(f"shard {part.info.shard} given twice: "
                                     f"{by_index[part.info.index].path} and {part.path}")
        by_index[part.info.index] = part
    missing = [i for i in range(f.count) if i not in by_index]
    if missing:
        names = ", ".join(str(i) for i in missing[:8]) + (" ..." if len(missing) > 8 else "")
        example = part_path(merged_path(first.path), Shard(missing[0], f.count)).name
        raise MissingPartError(f"{len(missing)} of {f.count} parts missing (shards {names}; e.g. "
                               f"{example})", hint="run the missing shards, then merge again")
    return [by_index[i] for i in range(f.count)]


def _grid_text(grid: Grid) -> str:
    return f"{grid.width}x{grid.height} {grid.crs} {tuple(round(v, 6) for v in grid.transform[:6])}"


# Files a glob of parts may match that are not parts (their styles and GDAL sidecars).
_NOT_PARTS = (".qml", ".aux.xml", ".ovr", ".msk")


def read_parts(paths: Iterable[Path]) -> list[Part]:
    """The class-map parts named (sidecars skipped; a file named twice, relative and absolute,
    counts once), read and checked (:func:`check_parts`)."""
    named = [p for p in paths if not p.name.lower().endswith(_NOT_PARTS)]
    unique = list({p.resolve(): p for p in reversed(named)}.values())[::-1]
    return check_parts([read_part(p) for p in unique])


def merge_outputs(parts: list[Part], output: str | None, probabilities: str | None,
                  confidence: str | None, *, cog: bool, creation_options: dict[str, str],
                  overwrite: bool) -> MapOutputs:
    """Where the merge of checked ``parts`` goes (``output`` None: the parts' name without
    ``.part-I-of-N``; a directory: that name in it), checked before any work against every part
    read, the probability/confidence parts included (:func:`check_outputs`)."""
    default = merged_path(parts[0].path)
    target = default if output is None else given_path(output)
    if target.is_dir():
        target = target / default.name
    extra = {k: None if v is None else given_path(v, f"--{k}")
             for k, v in (("probabilities", probabilities), ("confidence", confidence))}
    inputs = [p.path for p in parts]
    inputs += [sibling_path(part, k) for k, v in extra.items() if v is not None for part in parts]
    outputs = MapOutputs(classes=target, probabilities=extra["probabilities"],
                         confidence=extra["confidence"], cog=cog,
                         creation_options=creation_options, overwrite=overwrite,
                         tags=merge_tags(parts[0]), inputs=tuple(inputs))
    check_outputs(outputs.output_files(), inputs, overwrite=overwrite)
    return outputs


def sibling_path(part: Part, product: str) -> Path:
    """The ``product`` part written beside a class-map part (:class:`InputError` if none)."""
    relative = part.info.siblings.get(product)
    if relative is None:
        raise MissingPartError(f"{part.path} has no {product} part",
                               hint=f"predict with --{product} to merge them")
    path = part.path.parent / relative
    if not path.is_file():
        raise MissingPartError(f"{product} part {path} (beside {part.path.name}) does not exist")
    return path


def merge_tags(part: Part) -> dict[str, str]:
    """The tags a single-process prediction writes: the part's s2fin tags but the shard's (and
    the class table, which :class:`ClassMapWriter` writes itself)."""
    return {k: v for k, v in part.tags.items()
            if k.startswith("S2FIN_") and k not in (TAG_SHARD, CLASSES_TAG)}


@dataclass
class MergeSummary:
    parts: int
    blocks: int
    shard_count: int
    block_size: int
    output: Path
    probabilities: Path | None = None
    confidence: Path | None = None

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "parts": self.parts, "blocks": self.blocks,
                "shard_count": self.shard_count, "block_size": self.block_size,
                "probabilities": None if self.probabilities is None else str(self.probabilities),
                "confidence": None if self.confidence is None else str(self.confidence)}


def expected_bands(product: str, classes: ClassTable) -> int:
    return len(classes) if product == "probabilities" else 1


@contextlib.contextmanager
def _open_all(paths: Iterable[Path]) -> Iterator[list[Any]]:
    with contextlib.ExitStack() as stack:
        datasets = []
        for path in paths:
            try:
                datasets.append(stack.enter_context(rasterio.open(path)))
            except (RasterioIOError, OSError) as exc:
                raise _open_error(path, exc) from None
        yield datasets


def merge_parts(parts: list[Part], outputs: MapOutputs, *, progress: bool = True) -> MergeSummary:
    """Assemble checked parts (:func:`check_parts`) into ``outputs`` block by block: block ``k``
    is read from part ``k % N``, so memory follows the block, never the scene."""
    first = parts[0]
    n, size = first.info.count, first.info.block_size
    extra = {k: p for k, p in (("probabilities", outputs.probabilities),
                               ("confidence", outputs.confidence)) if p is not None}
    extra_paths = {k: [sibling_path(part, k) for part in parts] for k in extra}
    for product, paths in extra_paths.items():
        for part, path in zip(parts, paths, strict=True):
            with rasterio.open(path) as ds:
                tag = ds.tags().get(TAG_SHARD)
                encoding = ds.tags().get(TAG_ENCODING)
                fits = (tag is not None and ShardInfo.from_tag(tag).shard == part.info.shard
                        and ds.count == expected_bands(product, first.classes)
                        and Grid.of(ds).same_as(first.grid))
            if not fits:
                raise MixedPartsError(f"{product} part {path} does not fit {part.path.name} "
                                      "(shard, bands or grid)")
            if encoding != PROBABILITY_ENCODING:  # values copied as stored: one encoding only
                raise MixedPartsError(f"{product} part {path} stores values as {encoding!r}; "
                                      f"this s2fin writes {PROBABILITY_ENCODING!r}",
                                      hint="predict the shards again with this version")
    grid = first.grid
    total = block_count(grid.height, grid.width, size)
    with contextlib.ExitStack() as stack:
        class_ds = stack.enter_context(_open_all(p.path for p in parts))
        extra_ds = {k: stack.enter_context(_open_all(paths)) for k, paths in extra_paths.items()}
        writer = stack.enter_context(ClassMapWriter(grid, first.classes, outputs))
        reporter = stack.enter_context(console.progress("merge", total)) if progress else None
        for k, window in enumerate(iter_blocks(grid.height, grid.width, size)):
            owner = k % n
            classes = class_ds[owner].read(1, window=window)
            probs = extra_ds["probabilities"][owner].read(window=window) \
                if "probabilities" in extra_ds else None
            conf = extra_ds["confidence"][owner].read(1, window=window) \
                if "confidence" in extra_ds else None
            writer.write_encoded(window, classes, probs, conf)
            if reporter is not None:
                reporter.advance(1)
    return MergeSummary(len(parts), total, n, size, outputs.classes, outputs.probabilities,
                        outputs.confidence)


__all__ = [
    "RULE",
    "TAG_SHARD",
    "MergeSummary",
    "Part",
    "Shard",
    "ShardInfo",
    "check_parts",
    "merge_outputs",
    "merge_parts",
    "merge_tags",
    "merged_path",
    "part_outputs",
    "part_path",
    "read_part",
    "read_parts",
    "resolve_shard",
    "shard_from_env",
    "tag_part_outputs",
]
