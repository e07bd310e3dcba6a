"""``s2fin stack``: one raster holding the optical bands, then the LiDAR/SAR bands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s2fin_cli import console
from s2fin_cli.cli.options import CreationOptions, HsiPath, LidarPath, Overwrite, SarPath
from s2fin_cli.io.outputs import Output, check_outputs
from s2fin_cli.io.reader import open_scene_from_options
from s2fin_cli.io.stack import stack_driver, write_stack
from s2fin_cli.io.writer import parse_creation_options


def stack(
    # A str, not a Path: a trailing "/" (a directory, not a file name) must survive to the check.
    output: Annotated[str, typer.Option("--output", "-o", help="scene.tif (GeoTIFF, resampled "
                                        "on the fly) or scene.vrt (references the inputs).")],
    hsi: HsiPath = None,
    lidar: LidarPath = None,
    sar: SarPath = None,
    overwrite: Overwrite = False,
    co: CreationOptions = None,
) -> None:
    """Stack an optical raster and a LiDAR/SAR raster on the optical grid into one scene."""
    options = parse_creation_options(co or [])
    with open_scene_from_options(None, hsi, lidar, sar) as scene:
        driver = stack_driver(output) if Path(output).suffix else None
        check_outputs([Output(output, driver)], [hsi, lidar, sar], overwrite=overwrite)
        path = write_stack(scene, Path(output), overwrite=overwrite, creation_options=options)
        console.note(f"wrote {path}: {scene.optical.count} optical + {scene.aux.count} "
                     f"{scene.aux_kind} bands, {scene.grid.width}x{scene.grid.height} px")
