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
from typing import Annotated

import rasterio
import typer

from s2fin_cli import console
from s2fin_cli.cli.helpers import expand_paths
from s2fin_cli.cli.options import Cog, CreationOptions, JsonOutput, Overwrite
from s2fin_cli.io.writer import parse_creation_options, qml_path_for
from s2fin_cli.sharding import merge_outputs, merge_parts, read_parts

# GDAL block cache while merging: a few rows of tiles of the output and of the parts.
MERGE_GDAL_CACHE_MB = 256


def merge(
    parts: Annotated[
        list[str],
        typer.Argument(help="The class-map part files of one sharded prediction (or a glob "
                       "pattern, e.g. 'scene.classes.part-*.tif').", show_default=False,
                       metavar="PART..."),
    ],
    output: Annotated[
        # A str keeps a trailing '/', which names a directory.
        str | None,
        typer.Option("--output", "-o", help="Merged class map (default: the parts' name without "
                     ".part-I-of-N, beside them).", show_default=False),
    ] = None,
    probabilities: Annotated[
        str | None,
        typer.Option("--probabilities", help="Also merge the probability parts (written with "
                     "predict --probabilities) into this file.", show_default=False),
    ] = None,
    confidence: Annotated[
        str | None,
        typer.Option("--confidence", help="Also merge the confidence parts into this file.",
                     show_default=False),
    ] = None,
    cog: Cog = False,
    co: CreationOptions = None,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
) -> None:
    """Assemble the parts of a sharded prediction (predict --shard) into one class map."""
    checked = read_parts(expand_paths(parts))
    outputs = merge_outputs(checked, output, probabilities, confidence, cog=cog,
                            creation_options=parse_creation_options(co or []),
                            overwrite=overwrite)
    # GDAL's default cache (5 % of RAM) would fill with the tiles of N parts; the environment's
    # GDAL_CACHEMAX wins.
    env = {} if "GDAL_CACHEMAX" in os.environ else {"GDAL_CACHEMAX": MERGE_GDAL_CACHE_MB << 20}
    with rasterio.Env(**env):
        summary = merge_parts(checked, outputs, progress=not json_output)
    target = outputs.classes
    report = {**summary.to_json(), "style": str(qml_path_for(target))}
    if json_output:
        console.stdout.print_json(json.dumps(report))
    else:
        console.stdout.print(f"merged {summary.parts} parts ({summary.blocks} blocks of "
                             f"{summary.block_size}) into {target}", markup=False)
