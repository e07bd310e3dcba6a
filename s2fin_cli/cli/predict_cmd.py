"""``s2fin predict``: classify whole scenes into styled, georeferenced class maps.

The command parses options and renders results; planning, checks and the run are
:mod:`s2fin_cli.prediction`'s (naming of outputs, batch jobs, shard parts).
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from s2fin_cli import console
from s2fin_cli.cli.helpers import expand_paths, model_path_or_default
from s2fin_cli.cli.options import (
    AuxBands,
    Bf16,
    BlockSize,
    Cog,
    Compile,
    CreationOptions,
    Device,
    HsiPath,
    InferenceBatchSize,
    JsonOutput,
    LidarPath,
    ModelPath,
    Overwrite,
    SarPath,
    SkipValueCheck,
    Threads,
)
from s2fin_cli.device import cpu_threads, select_device
from s2fin_cli.inference import PREDICT_BLOCK_SIZE
from s2fin_cli.io.writer import parse_creation_options
from s2fin_cli.model_file import load_model_file
from s2fin_cli.prediction import (
    OutputRequest,
    RunOptions,
    bounded_gdal_cache,
    check_jobs,
    check_modes,
    gdal_cache_bytes,
    plan_jobs,
    prediction_tags,
    run_jobs,
)
from s2fin_cli.sharding import resolve_shard


def predict(
    scenes: Annotated[
        list[str] | None,
        typer.Argument(help="Stacked scenes (GeoTIFF/VRT written by s2fin stack, or any raster "
                       "with --aux-bands). Several, or glob patterns, for batch jobs.",
                       show_default=False, metavar="SCENE..."),
    ] = None,
    model: ModelPath = None,
    output: Annotated[
        # A str keeps a trailing '/', which names a directory.
        str | None,
        typer.Option("--output", "-o", help="Class map (default: SCENE.classes.tif beside the "
                     "input); a directory with several scenes."),
    ] = None,
    hsi: HsiPath = None,
    lidar: LidarPath = None,
    sar: SarPath = None,
    aux_bands: AuxBands = None,
    probabilities: Annotated[
        str | None,
        typer.Option("--probabilities", help="Also write per-class probabilities: uint8, one band "
                     "per class, value = round(250 p), 255 = nodata (GDAL scale 1/250 set)."),
    ] = None,
    confidence: Annotated[
        str | None,
        typer.Option("--confidence", help="Also write the highest class probability: uint8, "
                     "same encoding as --probabilities."),
    ] = None,
    cog: Cog = False,
    co: CreationOptions = None,
    overwrite: Overwrite = False,
    device: Device = "auto",
    threads: Threads = None,
    batch_size: InferenceBatchSize = None,
    block_size: BlockSize = PREDICT_BLOCK_SIZE,
    shard_option: Annotated[
        str | None,
        typer.Option("--shard", metavar="I/N", show_default=False,
                     help="Classify only shard I of N (0-based: 0/8 .. 7/8; block k belongs to "
                     "shard k % N) into part files SCENE.classes.part-000I-of-000N.tif, to join "
                     "with `s2fin merge`. 'auto': I/N from SLURM_ARRAY_TASK_ID/COUNT, else "
                     "RANK/WORLD_SIZE. Default: the whole scene."),
    ] = None,
    skip_value_check: SkipValueCheck = False,
    compile_mode: Compile = "auto",
    bf16: Bf16 = "auto",
    json_output: JsonOutput = False,
) -> None:
    """Classify scenes with a trained model into styled, georeferenced class maps."""
    check_modes(compile_mode, bf16)
    scene_paths = expand_paths(list(scenes or []))
    shard = resolve_shard(shard_option)
    model_path = model_path_or_default(model)
    bundle = load_model_file(model_path)
    request = OutputRequest(output, probabilities, confidence, cog=cog,
                            creation_options=parse_creation_options(co or []),
                            overwrite=overwrite)
    jobs = plan_jobs(scene_paths, hsi, lidar, sar, request,
                     tags=prediction_tags(model_path, bundle), model=model_path, shard=shard)
    check_jobs(jobs, bundle, aux_bands, skip_value_check=skip_value_check)
    cache = gdal_cache_bytes(jobs, block_size + 2 * bundle.geometry.halo)
    options = RunOptions(select_device(device), batch_size=batch_size, block_size=block_size,
                         aux_bands=aux_bands, shard=shard, progress=not json_output,
                         compile=compile_mode, bf16=bf16)
    reports: list[dict[str, Any]] = []
    with bounded_gdal_cache(cache), cpu_threads(threads):
        for report in run_jobs(jobs, bundle, options):
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
                     f"on {report['device']} in {report['precision']}")
    console.stdout.print(table)
