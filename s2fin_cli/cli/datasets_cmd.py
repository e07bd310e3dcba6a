"""``s2fin datasets``: the public HSI + LiDAR/SAR benchmarks, imported as GeoTIFFs.

A Typer sub-application with two commands, ``list`` and ``import``. The main app registers it
with ``app.add_typer(datasets)`` (it carries its own name, ``datasets``).
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from s2fin_cli import console
from s2fin_cli.cli.options import CreationOptions, JsonOutput, Overwrite
from s2fin_cli.datasets import DATASETS, import_dataset
from s2fin_cli.datasets.specs import OUTPUT_NAMES, ROLE_TITLES, ROLES
from s2fin_cli.io.writer import parse_creation_options


class DatasetName(str, Enum):
    """The supported benchmarks (kept equal to the keys of ``DATASETS``; a test checks it)."""

    houston2013 = "houston2013"
    trento = "trento"
    muufl = "muufl"
    augsburg = "augsburg"
    berlin = "berlin"
    yellow_river = "yellow-river"
    lcz_hk = "lcz-hk"


datasets = typer.Typer(
    name="datasets",
    help="Public HSI + LiDAR/SAR benchmarks: list them, import their files as GeoTIFFs.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@datasets.command("list")
def list_(json_output: JsonOutput = False) -> None:
    """List the supported benchmarks and the files each is commonly distributed as."""
    if json_output:
        data = [
            {
                "name": spec.name,
                "title": spec.title,
                "citation": spec.citation,
                "classes": spec.classes.to_json(),
                "gsd_m": spec.gsd,
                "shape": None if spec.shape is None else list(spec.shape),
                "bands": dict(spec.bands),
                "official_split": spec.official_split,
                "expected_files": {role: spec.expected_files(role) for role in ROLES
                                   if spec.expected_files(role)},
            }
            for spec in DATASETS.values()
        ]
        console.stdout.print_json(json.dumps(data))
        return
    for spec in DATASETS.values():
        table = Table(title=f"{spec.name}: {spec.title}", title_justify="left", show_header=True)
        table.add_column("role")
        table.add_column("written as")
        table.add_column("looked for (any of, first preferred)")
        for role in ROLES:
            names = spec.expected_files(role)
            if names:
                table.add_row(ROLE_TITLES[role], OUTPUT_NAMES[role], ", ".join(names))
        bands = ", ".join(f"{role} {n}" for role, n in spec.bands.items())
        size = ("size not known" if spec.shape is None
                else f"{spec.shape[0]} x {spec.shape[1]} px")
        table.caption = (f"{len(spec.class_names)} classes: {', '.join(spec.class_names)}. "
                         f"{size}, {spec.gsd:g} m, bands: {bands}. "
                         + ("Official train/test split." if spec.official_split
                            else "No official split (ground truth only)."))
        console.stdout.print(table)


@datasets.command("import")
def import_(
    name: Annotated[DatasetName, typer.Argument(help="Which benchmark.", case_sensitive=False)],
    src_dir: Annotated[Path, typer.Argument(
        help="Folder holding the downloaded files (searched a few levels deep).",
        file_okay=False)],
    out_dir: Annotated[Path, typer.Option(
        "--output", "-o", help="Folder to write the GeoTIFFs and dataset.json to (created).",
        file_okay=False)],
    strict: Annotated[bool, typer.Option(
        "--strict", help="Fail, instead of warning, on a checksum or class count that differs "
        "from the known one.")] = False,
    overwrite: Overwrite = False,
    co: CreationOptions = None,
    json_output: JsonOutput = False,
) -> None:
    """Import a benchmark's .mat/.tif files as GeoTIFFs (hsi, lidar/sar, labels) + dataset.json.

    Writes whatever is present and says what is missing. The .mat forms carry no
    georeferencing: their rasters get a local pixel grid with the dataset's pixel size.
    """
    result = import_dataset(name.value, src_dir, out_dir, overwrite=overwrite, strict=strict,
                            creation_options=parse_creation_options(co or []))
    if json_output:
        console.stdout.print_json(json.dumps(result.record))
        return
    table = Table(title=f"{result.spec.name} imported to {result.out_dir}", title_justify="left")
    table.add_column("output")
    table.add_column("from")
    table.add_column("shape")
    table.add_column("checksum")
    for entry in result.record["files"]:
        table.add_row(OUTPUT_NAMES[entry["role"]], entry["path"]
                      + (f" [{entry['key']}]" if entry["key"] else ""),
                      " x ".join(str(v) for v in entry["shape"]), entry["checksum"])
    console.stdout.print(table)
    for missing in result.record["missing"]:
        console.stdout.print(f"missing {ROLE_TITLES[missing['role']]}: "
                             f"{' or '.join(missing['expected'])}", markup=False)
