"""``s2fin predict``: classify whole scenes into styled, georeferenced class maps.

Output naming (when not given): ``DIR/scene.tif`` → ``DIR/scene.classes.tif`` (a VRT or any other
raster also gives ``.classes.tif``; with ``--hsi`` the HSI's name is used). With several scenes,
``-o``, ``--probabilities`` and ``--confidence`` name directories, and every scene gets
``scene.classes.tif`` / ``scene.probabilities.tif`` / ``scene.confidence.tif`` in them. With one
scene they name files, or existing directories that receive the derived names.

Everything is checked before anything is computed: every input opens and aligns, the model fits
every scene, and no output exists (unless ``--overwrite``).

Sharding (``--shard i/N``, 0-based; see :mod:`s2fin_cli.sharding` and docs/distributed.md): the
process classifies only the blocks ``k`` with ``k % N == i`` and writes part files named after the
outputs, ``scene.classes.part-0003-of-0008.tif`` (likewise for probabilities and confidence), that
``s2fin merge`` assembles. Without ``--shard`` the shard comes from a SLURM job array
(``SLURM_ARRAY_TASK_ID``/``SLURM_ARRAY_TASK_COUNT``) or from ``RANK``/``WORLD_SIZE`` when they
are set (with a note); ``--shard none`` classifies the whole scene whatever the environment.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import rasterio
import typer
from rich.table import Table

from s2fin_cli import __version__, console
from s2fin_cli.cli.options import (
    AuxBands,
    CreationOptions,
    Device,
    HsiPath,
    JsonOutput,
    LidarPath,
    Overwrite,
    SarPath,
    Threads,
)
from s2fin_cli.device import cpu_threads, select_device
from s2fin_cli.errors import ConfigError, InputError, OutputError, S2finError
from s2fin_cli.inference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_CPU_BATCH_SIZE,
    BlockPredictor,
    predict_scene,
)
from s2fin_cli.io.classmap import ClassMapWriter, MapOutputs, model_tags
from s2fin_cli.io.reader import Scene, open_scene_from_options
from s2fin_cli.io.writer import check_output_path, parse_creation_options, qml_path_for
from s2fin_cli.model_file import DEFAULT_MODEL_PATH, ModelBundle, load_model_file
from s2fin_cli.sharding import Shard, part_path, resolve_shard, shard_outputs

_GLOB_CHARS = set("*?[")
# GDAL block cache while predicting: what one block read touches, plus this margin (MB).
GDAL_CACHE_MIN_MB = 32


@dataclass(frozen=True)
class Job:
    """One scene to classify and where its outputs go."""

    scene: Path | None  # a stacked raster, or None with --hsi
    hsi: Path | None
    lidar: Path | None
    sar: Path | None
    outputs: MapOutputs

    @property
    def source(self) -> Path:
        path = self.scene if self.scene is not None else self.hsi
        assert path is not None
        return path


def derived_name(source: Path, kind: str = "classes") -> str:
    """``scene.tif`` → ``scene.classes.tif`` (``kind``: classes, probabilities, confidence)."""
    return f"{source.stem}.{kind}.tif"


def expand_scenes(patterns: list[str]) -> list[Path]:
    """Scene arguments with glob patterns expanded (when the shell did not), in sorted order."""
    out: list[Path] = []
    for text in patterns:
        if not Path(text).exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"no file matches {text!r}")
            out += [Path(m) for m in matches]
        else:
            out.append(Path(text))
    return out


def _target(given: Path | None, source: Path, kind: str, several: bool,
            option: str) -> Path | None:
    if given is None:
        return None
    if several:
        if given.exists() and not given.is_dir():
            raise ConfigError(f"{option} {given}: with several scenes it must be a directory")
        return given / derived_name(source, kind)
    if given.is_dir():
        return given / derived_name(source, kind)
    return given


def plan_jobs(
    scenes: list[Path], hsi: Path | None, lidar: Path | None, sar: Path | None,
    output: Path | None, probabilities: Path | None, confidence: Path | None, *,
    cog: bool, creation_options: dict[str, str], overwrite: bool, tags: dict[str, str],
) -> list[Job]:
    """The jobs of one call, with output names resolved (nothing checked on disk yet)."""
    if scenes and hsi is not None:
        raise ConfigError("give stacked scenes or --hsi with --lidar/--sar, not both")
    several = len(scenes) > 1
    sources: list[tuple[Path | None, Path | None]] = (
        [(s, None) for s in scenes] if scenes else [(None, hsi)])
    jobs = []
    for scene, hsi_path in sources:
        if scene is None and hsi_path is None:
            raise ConfigError("missing input: give a stacked SCENE, or --hsi with --lidar or "
                              "--sar")
        source = scene if scene is not None else hsi_path
        assert source is not None
        classes_path = (_target(output, source, "classes", several, "-o")
                        or source.with_name(derived_name(source)))
        outputs = MapOutputs(
            classes=classes_path,
            probabilities=_target(probabilities, source, "probabilities", several,
                                  "--probabilities"),
            confidence=_target(confidence, source, "confidence", several, "--confidence"),
            cog=cog, creation_options=creation_options, overwrite=overwrite, tags=tags)
        jobs.append(Job(scene, hsi_path if scene is None else hsi, lidar, sar, outputs))
    return jobs


def shard_jobs(jobs: list[Job], shard: Shard) -> list[Job]:
    """The jobs of one shard: every output renamed to its part file (:func:`part_path`)."""
    out = []
    for job in jobs:
        o = job.outputs
        if o.cog:
            raise ConfigError("--cog cannot be used with --shard: parts are plain GeoTIFFs",
                              hint="pass --cog to s2fin merge")
        out.append(replace(job, outputs=replace(
            o, classes=part_path(o.classes, shard),
            probabilities=None if o.probabilities is None else part_path(o.probabilities, shard),
            confidence=None if o.confidence is None else part_path(o.confidence, shard))))
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence notes already shown in the checking pass (alignment notes on reopening)."""
    level = console.verbosity()
    console.set_verbosity(min(level, -1))
    try:
        yield
    finally:
        console.set_verbosity(level)


def _open(job: Job, aux_bands: int | None) -> Scene:
    return open_scene_from_options(job.scene, job.hsi if job.scene is None else None,
                                   job.lidar, job.sar, aux_bands=aux_bands)


def check_jobs(jobs: list[Job], bundle: ModelBundle, aux_bands: int | None) -> None:
    """Open every scene, check it against the model, and check every output path."""
    seen: dict[Path, Path] = {}
    for job in jobs:
        with _open(job, aux_bands) as scene:
            try:
                bundle.check_scene(scene)
            except S2finError as exc:
                if len(jobs) == 1:
                    raise
                raise type(exc)(f"{job.source}: {exc.message}", hint=exc.hint) from None
        inputs = {p.resolve() for p in (job.scene, job.hsi, job.lidar, job.sar) if p is not None}
        for out in (job.outputs.classes, job.outputs.probabilities, job.outputs.confidence):
            if out is None:
                continue
            key = out.resolve()
            if key in inputs:
                raise ConfigError(f"output {out} is an input of the same scene")
            if key in seen:
                raise ConfigError(f"{seen[key]} and {job.source} would both write {out}",
                                  hint="give the scenes different names or outputs")
            seen[key] = job.source
            _check_output(out, job.outputs.overwrite, several=len(jobs) > 1)
        if job.outputs.cog and job.outputs.classes.suffix.lower() not in (".tif", ".tiff"):
            console.warn(f"{job.outputs.classes}: a COG is a GeoTIFF; consider a .tif name")


def _check_output(path: Path, overwrite: bool, *, several: bool) -> None:
    parent = path.parent
    if several and not parent.exists():
        # The output directory of a batch is created; its parent must exist.
        if not parent.parent.is_dir():
            raise OutputError(f"output directory {parent.parent} does not exist")
        return
    check_output_path(path, overwrite=overwrite)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def predict(
    scenes: Annotated[
        list[str] | None,
        typer.Argument(help="Stacked scenes (GeoTIFF/VRT written by s2fin stack, or any raster "
                       "with --aux-bands). Several, or glob patterns, for batch jobs.",
                       show_default=False, metavar="SCENE..."),
    ] = None,
    model: Annotated[
        Path | None,
        # No dir_okay=False: a directory gets s2fin's one-line input error (3), not a usage error.
        typer.Option("--model", "-m", help=f"Model file (default: {DEFAULT_MODEL_PATH}).",
                     show_default=False),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Class map (default: SCENE.classes.tif beside the "
                     "input); a directory with several scenes."),
    ] = None,
    hsi: HsiPath = None,
    lidar: LidarPath = None,
    sar: SarPath = None,
    aux_bands: AuxBands = None,
    probabilities: Annotated[
        Path | None,
        typer.Option("--probabilities", help="Also write per-class probabilities: uint8, one band "
                     "per class, value = 1 + round(254 p), 0 = nodata (GDAL scale/offset set)."),
    ] = None,
    confidence: Annotated[
        Path | None,
        typer.Option("--confidence", help="Also write the highest class probability: uint8, "
                     "same encoding as --probabilities."),
    ] = None,
    cog: Annotated[
        bool, typer.Option("--cog", help="Write Cloud-Optimized GeoTIFFs (with overviews).")
    ] = False,
    co: CreationOptions = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    threads: Threads = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", min=1, show_default=False,
                     help=f"Patches per forward pass (default: {DEFAULT_BATCH_SIZE} on CUDA, "
                     f"{DEFAULT_CPU_BATCH_SIZE} on the CPU)."),
    ] = None,
    block_size: Annotated[
        int, typer.Option("--block-size", min=1, help="Side of the blocks read, classified and "
                          "written at a time (memory follows it).")
    ] = DEFAULT_BLOCK_SIZE,
    shard_option: Annotated[
        str | None,
        typer.Option("--shard", metavar="I/N", show_default=False,
                     help="Classify only shard I of N (0-based: 0/8 .. 7/8; block k belongs to "
                     "shard k % N) into part files SCENE.classes.part-000I-of-000N.tif, to join "
                     "with `s2fin merge`. Default: from SLURM_ARRAY_TASK_ID/COUNT, else "
                     "RANK/WORLD_SIZE, when set; 'none': the whole scene."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Classify scenes with a trained model into styled, georeferenced class maps."""
    scene_paths = expand_scenes(list(scenes or []))
    shard = resolve_shard(shard_option)
    model_path = model
    if model_path is None:
        model_path = DEFAULT_MODEL_PATH
        console.note(f"using the default model {model_path} (pass -m to choose another)")
    bundle = load_model_file(model_path)
    tags = {**model_tags(model_path, file_sha256(model_path)), "S2FIN_SOFTWARE":
            f"s2fin {__version__}"}
    jobs = plan_jobs(scene_paths, hsi, lidar, sar, output, probabilities, confidence, cog=cog,
                     creation_options=parse_creation_options(co or []), overwrite=overwrite,
                     tags=tags)
    if shard is not None:
        jobs = shard_jobs(jobs, shard)
    check_jobs(jobs, bundle, aux_bands)
    cache = gdal_cache_bytes(jobs, block_size + 2 * bundle.geometry.halo)
    with _bounded_gdal_cache(cache), cpu_threads(threads):
        _run(jobs, bundle, model_path, aux_bands, device, batch_size, block_size, json_output,
             shard)


def gdal_cache_bytes(jobs: list[Job], window: int) -> int:
    """A GDAL block cache that holds every tile one read of ``window`` pixels touches, in the
    worst alignment, for the largest input: tiles are decoded once per read, however the bands
    are interleaved, and the cache is bounded by the tile and block sizes, never by the scene."""
    need = 0
    for job in jobs:
        for path in (job.scene, job.hsi, job.lidar, job.sar):
            if path is None:
                continue
            with rasterio.open(path) as ds:
                tile_h, tile_w = ds.block_shapes[0]
                tiles = (-(-window // tile_h) + 1) * (-(-window // tile_w) + 1)
                tiles = min(tiles, -(-ds.height // tile_h) * -(-ds.width // tile_w))
                pixel_bytes = sum(np.dtype(d).itemsize for d in ds.dtypes)
                need = max(need, tiles * tile_h * tile_w * pixel_bytes)
    return max(GDAL_CACHE_MIN_MB << 20, need + (GDAL_CACHE_MIN_MB << 20))


@contextmanager
def _bounded_gdal_cache(cache_bytes: int) -> Iterator[None]:
    """GDAL's block cache defaults to 5 % of RAM and fills with the tiles of the scene: without a
    cap, memory would grow with the scene up to that. ``GDAL_CACHEMAX`` in the environment wins."""
    if "GDAL_CACHEMAX" in os.environ:
        yield
        return
    console.debug(f"GDAL_CACHEMAX={cache_bytes >> 20} MB")
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes):
        yield


def _run(jobs: list[Job], bundle: ModelBundle, model_path: Path, aux_bands: int | None,
         device: str, batch_size: int | None, block_size: int, json_output: bool,
         shard: Shard | None = None) -> None:
    torch_device = select_device(device)
    predictor_model = bundle.build_model(torch_device)
    reports: list[dict[str, Any]] = []
    names = {c.id: c.name for c in bundle.classes}
    for job in jobs:
        for path in (job.outputs.classes, job.outputs.probabilities, job.outputs.confidence):
            if path is not None:
                os.makedirs(path.parent, exist_ok=True)
        predictor = BlockPredictor(bundle, torch_device, batch_size=batch_size,
                                   probabilities=job.outputs.probabilities is not None,
                                   confidence=job.outputs.confidence is not None,
                                   model=predictor_model)
        with _quiet():
            scene = _open(job, aux_bands)
        with scene:
            outputs = job.outputs if shard is None else shard_outputs(
                job.outputs, shard, block_size=block_size, grid=scene.grid, scene=job.source)
            label = job.source.name if shard is None else f"{job.source.name} shard {shard}"
            with ClassMapWriter(scene.grid, bundle.classes, outputs) as writer:
                summary = predict_scene(scene, bundle, writer, block_size=block_size,
                                        predictor=predictor, progress=not json_output,
                                        description=f"predict {label}", shard=shard)
        report = {
            "input": str(job.source),
            "output": str(job.outputs.classes),
            "style": str(qml_path_for(job.outputs.classes)) if outputs.style else None,
            "shard": None if shard is None else str(shard),
            "probabilities": None if job.outputs.probabilities is None
            else str(job.outputs.probabilities),
            "confidence": None if job.outputs.confidence is None else str(job.outputs.confidence),
            **summary.to_json(names),
        }
        reports.append(report)
        if not json_output:
            _print_report(report)
    if json_output:
        console.stdout.print_json(json.dumps({"model": str(model_path), "scenes": reports}))


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['input']} → {report['output']}")
    for col, justify in (("id", "right"), ("class", "left"), ("pixels", "right"),
                         ("share", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    classified = max(report["classified"], 1)
    for c in report["classes"]:
        table.add_row(str(c["id"]), c["name"], f"{c['pixels']:,}",
                      f"{100 * c['pixels'] / classified:.1f} %")
    table.caption = (f"{report['classified']:,} pixels classified, {report['nodata']:,} nodata, "
                     f"{report['seconds']:.1f} s, {report['pixels_per_second']:,.0f} px/s "
                     f"on {report['device']}")
    console.stdout.print(table)
