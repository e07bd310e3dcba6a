"""``s2fin predict`` as a library: plan the jobs of one call, check everything before any
work, then classify scene after scene into styled class maps (or shard parts).

Output naming (when not given): ``DIR/scene.tif`` → ``DIR/scene.classes.tif`` (a VRT or any other
raster also gives ``.classes.tif``; with ``--hsi`` the HSI's name is used). With several scenes,
``-o``, ``--probabilities`` and ``--confidence`` name directories, and every scene gets
``scene.classes.tif`` / ``scene.probabilities.tif`` / ``scene.confidence.tif`` in them. With one
scene they name files, or existing directories that receive the derived names.

Everything is checked before anything is computed (:func:`check_jobs`): every input opens and
aligns, the model fits every scene, and no output exists (unless ``--overwrite``).

With a :class:`~s2fin_cli.sharding.Shard`, every output is a part file named and tagged by
:mod:`s2fin_cli.sharding`, and only the shard's blocks are classified.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch

from s2fin_cli import __version__, console
from s2fin_cli.acceleration import (
    auto_compile_excluded,
    maybe_compile,
    resolve_cpu_bf16,
    switch_mode,
)
from s2fin_cli.errors import ConfigError, S2finError
from s2fin_cli.hashing import file_sha256
from s2fin_cli.inference import (
    PREDICT_BLOCK_SIZE,
    BlockPredictor,
    default_batch_size,
    eager_pixels_per_second,
    predict_scene,
    scene_blocks,
    zero_batch,
)
from s2fin_cli.io.classmap import ClassMapWriter, MapOutputs, model_tags
from s2fin_cli.io.outputs import Output, check_outputs, given_path
from s2fin_cli.io.reader import Scene, open_scene_from_options
from s2fin_cli.io.writer import check_extension, qml_path_for
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.sharding import Shard, part_outputs, tag_part_outputs

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

    def open(self, aux_bands: int | None) -> Scene:
        return open_scene_from_options(self.scene, self.hsi if self.scene is None else None,
                                       self.lidar, self.sar, aux_bands=aux_bands)


@dataclass(frozen=True)
class OutputRequest:
    """What the call asked to write: ``-o``, ``--probabilities``, ``--confidence`` and how."""

    # As given: a trailing path separator names a directory (kept by passing a str).
    classes: str | Path | None = None
    probabilities: str | Path | None = None
    confidence: str | Path | None = None
    cog: bool = False
    creation_options: dict[str, str] | None = None
    overwrite: bool = False


def derived_name(source: Path, kind: str = "classes") -> str:
    """``scene.tif`` → ``scene.classes.tif`` (``kind``: classes, probabilities, confidence)."""
    return f"{source.stem}.{kind}.tif"


def _target(given_text: str | Path | None, source: Path, kind: str, several: bool,
            option: str) -> Path | None:
    if given_text is None:
        return None
    given = given_path(given_text, option)
    if several:
        if given.exists() and not given.is_dir():
            raise ConfigError(f"{option} {given}: with several scenes it must be a directory")
        return given / derived_name(source, kind)
    if given.is_dir():
        return given / derived_name(source, kind)
    return given


def prediction_tags(model_path: Path, bundle: ModelBundle) -> dict[str, str]:
    """The tags every output of a prediction carries: the model and the software."""
    sha256 = bundle.file_sha256 or file_sha256(model_path)
    return {**model_tags(model_path, sha256), "S2FIN_SOFTWARE": f"s2fin {__version__}"}


def plan_jobs(scenes: list[Path], hsi: Path | None, lidar: Path | None, sar: Path | None,
              request: OutputRequest, *, tags: dict[str, str], model: Path | None = None,
              shard: Shard | None = None) -> list[Job]:
    """The jobs of one call, with output names resolved (nothing checked on disk yet); with
    ``shard``, every output is its part file. Each job's outputs know the files the job reads
    (its scene and the ``model``), so nothing can be written over them."""
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
        classes_path = (_target(request.classes, source, "classes", several, "-o")
                        or source.with_name(derived_name(source)))
        outputs = MapOutputs(
            classes=classes_path,
            probabilities=_target(request.probabilities, source, "probabilities", several,
                                  "--probabilities"),
            confidence=_target(request.confidence, source, "confidence", several,
                               "--confidence"),
            cog=request.cog, creation_options=request.creation_options or {},
            overwrite=request.overwrite, tags=tags,
            inputs=tuple(p for p in (scene, hsi, lidar, sar, model) if p is not None))
        if shard is not None:
            outputs = part_outputs(outputs, shard)
        jobs.append(Job(scene, hsi_path if scene is None else hsi, lidar, sar, outputs))
    return jobs


@contextmanager
def _quiet() -> Iterator[None]:
    """Silence notes already shown in the checking pass (alignment notes on reopening)."""
    level = console.verbosity()
    console.set_verbosity(min(level, -1))
    try:
        yield
    finally:
        console.set_verbosity(level)


def check_jobs(jobs: list[Job], bundle: ModelBundle, aux_bands: int | None, *,
               skip_value_check: bool = False) -> None:
    """Open every scene, check it against the model (bands, modality, values), and check every
    output path (:func:`check_job_outputs`)."""
    for job in jobs:
        with job.open(aux_bands) as scene:
            try:
                bundle.check_scene(scene)
                bundle.check_values(scene, skip=skip_value_check)
            except S2finError as exc:
                if len(jobs) == 1:
                    raise
                raise type(exc)(f"{job.source}: {exc.message}", hint=exc.hint) from None
    check_job_outputs(jobs)


def check_job_outputs(jobs: list[Job]) -> None:
    """The outputs of every job against the files every job reads (a batch may name as a scene
    what another job would write) and against each other: :func:`check_outputs`, once."""
    outputs: list[Output] = []
    inputs: list[Path] = []
    seen: dict[Path, Path] = {}
    for job in jobs:
        inputs += job.outputs.inputs
        for spec in job.outputs.output_files():
            key = spec.final.resolve()
            if key in seen:
                raise ConfigError(f"{seen[key]} and {job.source} would both write {spec.final}",
                                  hint="give the scenes different names or outputs")
            seen[key] = job.source
            parent = spec.final.parent
            if len(jobs) > 1 and not parent.exists() and parent.parent.is_dir():
                # A batch's output directory is created: nothing in it exists or is read yet.
                assert spec.driver is not None
                check_extension(spec.final, spec.driver)
                continue
            outputs.append(spec)
    check_outputs(outputs, inputs, overwrite=jobs[0].outputs.overwrite if jobs else False)


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
def bounded_gdal_cache(cache_bytes: int) -> Iterator[None]:
    """GDAL's block cache defaults to 5 % of RAM and fills with the tiles of the scene: without a
    cap, memory would grow with the scene up to that. ``GDAL_CACHEMAX`` in the environment wins."""
    if "GDAL_CACHEMAX" in os.environ:
        yield
        return
    console.debug(f"GDAL_CACHEMAX={cache_bytes >> 20} MB")
    with rasterio.Env(GDAL_CACHEMAX=cache_bytes):
        yield


@dataclass(frozen=True)
class RunOptions:
    """How the jobs run: device, batch and block sizes, compile and bf16 modes, progress."""

    device: torch.device
    batch_size: int | None = None
    block_size: int = PREDICT_BLOCK_SIZE
    aux_bands: int | None = None
    shard: Shard | None = None
    progress: bool = True
    compile: str = "auto"  # acceleration.maybe_compile: auto, on, off
    bf16: str = "auto"  # acceleration.resolve_cpu_bf16: auto, on, off


def check_modes(compile_mode: str, bf16_mode: str) -> None:
    """``--compile`` and ``--bf16`` take auto, on or off (9 otherwise), before any work."""
    for option, value in (("--compile", compile_mode), ("--bf16", bf16_mode)):
        try:
            switch_mode(value, option)
        except ValueError:
            raise ConfigError(f"{option} {value!r} is not one of auto, on, off") from None


def _prepared_model(jobs: list[Job], bundle: ModelBundle, options: RunOptions,
                    batch_size: int, cpu_bf16: bool) -> torch.nn.Module:
    """The network, compiled when ``options.compile`` says so (``auto``: when the pixels of
    every job's scene outweigh the compile time at the eager speed, timed on one batch)."""
    model = bundle.build_model(options.device)
    pixels = rate = None
    if switch_mode(options.compile, "compile") == "auto":
        pixels = sum(_scene_pixels(job, options.aux_bands) for job in jobs)
        if options.shard is not None:
            pixels //= options.shard.count
        if auto_compile_excluded(pixels, options.device.type) is None:  # else no probe either
            probe = BlockPredictor(bundle, options.device, batch_size=batch_size, model=model,
                                   cpu_bf16=cpu_bf16)
            rate = eager_pixels_per_second(probe, batch_size)
    decision = maybe_compile(model, options.device, options.compile, pixels=pixels,
                             eager_pixels_per_second=rate, batch_size=batch_size, pad=True)
    console.info(f"torch.compile: {decision.reason}")
    if decision.compiled:
        # Compile now, in this thread: dynamo compiles one thread at a time, and the batch
        # workers (inference.BlockPredictor) then only run the compiled code.
        warm = BlockPredictor(bundle, options.device, batch_size=batch_size,
                              model=decision.model, cpu_bf16=cpu_bf16)
        warm.logits(*zero_batch(warm, batch_size))
    return decision.model


def _scene_pixels(job: Job, aux_bands: int | None) -> int:
    with _quiet(), job.open(aux_bands) as scene:
        return scene.grid.width * scene.grid.height


def run_jobs(jobs: list[Job], bundle: ModelBundle, options: RunOptions
             ) -> Iterator[dict[str, Any]]:
    """Classify every job's scene into its outputs; yields one report per job as it finishes.

    The caller bounds GDAL's cache and torch's threads (:func:`bounded_gdal_cache`,
    :func:`s2fin_cli.device.cpu_threads`) around the whole iteration.
    """
    cpu_bf16 = options.device.type == "cpu" and resolve_cpu_bf16(options.bf16)
    batch_size = options.batch_size or default_batch_size(options.device)
    model = _prepared_model(jobs, bundle, options, batch_size, cpu_bf16)
    names = {c.id: c.name for c in bundle.classes}
    shard = options.shard
    for job in jobs:
        for path in (job.outputs.classes, job.outputs.probabilities, job.outputs.confidence):
            if path is not None:
                os.makedirs(path.parent, exist_ok=True)
        predictor = BlockPredictor(bundle, options.device, batch_size=batch_size,
                                   probabilities=job.outputs.probabilities is not None,
                                   confidence=job.outputs.confidence is not None, model=model,
                                   cpu_bf16=cpu_bf16)
        with _quiet():
            scene = job.open(options.aux_bands)
        with scene:
            grid = scene.grid
            if shard is None:
                outputs = job.outputs
                windows = scene_blocks(grid, options.block_size)
                label = job.source.name
            else:
                outputs = tag_part_outputs(job.outputs, shard, block_size=options.block_size,
                                           grid=grid, scene=job.source)
                windows = shard.windows(grid.height, grid.width, options.block_size)
                label = f"{job.source.name} shard {shard}"
            with ClassMapWriter(grid, bundle.classes, outputs) as writer:
                summary = predict_scene(scene, predictor, writer, windows,
                                        progress=options.progress,
                                        description=f"predict {label}")
        yield {
            "input": str(job.source),
            "output": str(job.outputs.classes),
            "style": str(qml_path_for(job.outputs.classes)) if outputs.style else None,
            "shard": None if shard is None else str(shard),
            "probabilities": None if job.outputs.probabilities is None
            else str(job.outputs.probabilities),
            "confidence": None if job.outputs.confidence is None else str(job.outputs.confidence),
            **summary.to_json(names),
            "precision": predictor.precision,
        }


__all__ = [
    "GDAL_CACHE_MIN_MB",
    "Job",
    "OutputRequest",
    "RunOptions",
    "bounded_gdal_cache",
    "check_jobs",
    "check_modes",
    "derived_name",
    "gdal_cache_bytes",
    "plan_jobs",
    "prediction_tags",
    "run_jobs",
]
