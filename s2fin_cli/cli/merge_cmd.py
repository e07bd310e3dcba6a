"""``s2fin merge``: assemble the part files of a sharded ``s2fin predict`` into one class map.

The parts (``scene.classes.part-0000-of-0008.tif`` ...; a glob pattern works too) must be the N
parts of one run: merge refuses a missing or duplicated shard and parts that differ in shard
count, block size, model checksum, classes, grid or scene name (exit code 3). The result is what a
single-process ``s2fin predict`` writes: same pixels, colour table, nodata, category names / RAT,
``.qml`` and tags; ``--cog`` for a Cloud-Optimized GeoTIFF. ``--probabilities`` / ``--confidence``
also merge the probability / confidence parts written beside the class parts.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import rasterio
import typer

from s2fin_cli import console
from s2fin_cli.cli.helpers import expand_paths
from s2fin_cli.cli.options import Cog, CreationOptions, JsonOutput, Overwrite
from s2fin_cli.errors import ConfigError
from s2fin_cli.io.classmap import MapOutputs
from s2fin_cli.io.writer import check_output_path, parse_creation_options, qml_path_for
from s2fin_cli.sharding import check_parts, merge_parts, merge_tags, merged_path, read_part

# GDAL block cache while merging: a few rows of tiles of the output and of the parts.
MERGE_GDAL_CACHE_MB = 256
_SIDECARS = (".qml", ".aux.xml", ".ovr", ".msk")


def merge(
    parts: Annotated[
        list[str],
        typer.Argument(help="The class-map part files of one sharded prediction (or a glob "
                       "pattern, e.g. 'scene.classes.part-*.tif').", show_default=False,
                       metavar="PART..."),
    ],
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Merged class map (default: the parts' name without "
                     ".part-I-of-N, beside them).", show_default=False),
    ] = None,
    probabilities: Annotated[
        Path | None,
        typer.Option("--probabilities", help="Also merge the probability parts (written with "
                     "predict --probabilities) into this file.", show_default=False),
    ] = None,
    confidence: Annotated[
        Path | None,
        typer.Option("--confidence", help="Also merge the confidence parts into this file.",
                     show_default=False),
    ] = None,
    cog: Cog = False,
    co: CreationOptions = None,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Assemble the parts of a sharded prediction (predict --shard) into one class map."""
    paths = [p for p in expand_paths(parts) if not p.name.lower().endswith(_SIDECARS)]
    # The same file named twice (a glob and its name, relative and absolute) counts once.
    unique = list({p.resolve(): p for p in reversed(paths)}.values())[::-1]
    read = [read_part(p) for p in unique]
    checked = check_parts(read)
    target = output if output is not None else merged_path(checked[0].path)
    if target.is_dir():
        target = target / merged_path(checked[0].path).name
    inputs = {p.resolve() for p in unique}
    outs = [p for p in (target, probabilities, confidence) if p is not None]
    for out in outs:
        if out.resolve() in inputs:
            raise ConfigError(f"output {out} is one of the parts")
        check_output_path(out, overwrite=overwrite)
    if len({o.resolve() for o in outs}) != len(outs):
        raise ConfigError("-o, --probabilities and --confidence must name different files")
    if cog and target.suffix.lower() not in (".tif", ".tiff"):
        console.warn(f"{target}: a COG is a GeoTIFF; consider a .tif name")
    outputs = MapOutputs(classes=target, probabilities=probabilities, confidence=confidence,
                         cog=cog, creation_options=parse_creation_options(co or []),
                         overwrite=overwrite, tags=merge_tags(checked[0]))
    # GDAL's default cache (5 % of RAM) would fill with the tiles of N parts; the environment's
    # GDAL_CACHEMAX wins.
    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": MERGE_GDAL_CACHE_MB << 20}
    with rasterio.Env(**env):
        summary = merge_parts(checked, outputs, progress=not json_output)
    report = {**summary.to_json(), "style": str(qml_path_for(target))}
    if json_output:
        console.stdout.print_json(json.dumps(report))
    else:
        console.stdout.print(f"merged {summary.parts} parts ({summary.blocks} blocks of "
                             f"{summary.block_size}) into {target}", markup=False)
