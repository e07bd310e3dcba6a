"""``s2fin synth``: write a seeded synthetic optical + LiDAR/SAR scene with ground truth."""

from __future__ import annotations

import json
import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from s2fin_cli import console
from s2fin_cli.cli.options import CreationOptions, JsonOutput, Overwrite
from s2fin_cli.io.writer import parse_creation_options


class Preset(str, Enum):
    urban = "urban"
    agricultural = "agricultural"
    msi_sar = "msi-sar"


class Optical(str, Enum):
    vnir = "vnir"
    vnir_swir = "vnir-swir"
    msi = "msi"


class Active(str, Enum):
    lidar = "lidar"
    sar = "sar"


class OpticalDtype(str, Enum):
    int16 = "int16"
    float32 = "float32"


def synth(
    out_dir: Annotated[Path, typer.Argument(help="Directory to write the scene into (created if "
                                            "missing).", file_okay=False)],
    preset: Annotated[Preset, typer.Option(
        "--preset", help="Scene character: urban (HSI VNIR + LiDAR, 1 m), agricultural (HSI "
        "VNIR-SWIR + SAR, 1 m) or msi-sar (Sentinel-2-like MSI + SAR, 10 m).")] = Preset.urban,
    size: Annotated[int | None, typer.Option("--size", min=48, max=8192,
                                             help="Width and height in pixels (default 256).")
    ] = None,
    height: Annotated[int | None, typer.Option("--height", min=48, max=8192,
                                               help="Rows, if not square.")] = None,
    width: Annotated[int | None, typer.Option("--width", min=48, max=8192,
                                              help="Columns, if not square.")] = None,
    bands: Annotated[int | None, typer.Option(
        "--bands", help="Optical bands: 8-512 hyperspectral (default: urban 144, "
        "agricultural 180); msi: 10, 12 or 13 (default 12).")] = None,
    optical: Annotated[Optical | None, typer.Option(
        "--optical", help="Optical sensor: vnir (400-1000 nm), vnir-swir (400-2500 nm) or msi "
        "(default: from the preset).")] = None,
    active: Annotated[Active | None, typer.Option(
        "--active", help="Active sensor: lidar or sar (default: from the preset).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed and options "
                                      "give byte-identical rasters.")] = 0,
    difficulty: Annotated[float, typer.Option(
        "--difficulty", min=0.0, max=1.0,
        help="0..1: scales sensor noise, speckle, PSF, within-class variability and shrinks the "
        "designed class contrasts.")] = 0.5,
    train_per_class: Annotated[int, typer.Option(
        "--train-per-class", min=1, help="Training pixels per class (a few per object).")] = 30,
    label_buffer: Annotated[int, typer.Option(
        "--label-buffer", min=0, max=64,
        help="Test pixels keep this many pixels away from training objects.")] = 5,
    pixel_size: Annotated[float | None, typer.Option(
        "--pixel-size", help="Pixel size in metres (default 1; msi-sar 10).")] = None,
    epsg: Annotated[int, typer.Option("--epsg", help="Projected CRS of the grid.")] = 32632,
    sar_bands: Annotated[int, typer.Option(
        "--sar-bands", help="2 (VV, VH) or 4 (VV, VH, HH, HV).")] = 2,
    sar_looks: Annotated[float | None, typer.Option(
        "--sar-looks",
        help="Equivalent number of looks of the speckle (default: from the difficulty).")
    ] = None,
    sar_linear: Annotated[bool, typer.Option(
        "--sar-linear", help="Write SAR as linear power instead of dB.")] = False,
    lidar_intensity: Annotated[bool, typer.Option(
        "--lidar-intensity/--no-lidar-intensity", help="Add a LiDAR intensity band.")] = True,
    nodata_edge: Annotated[float, typer.Option(
        "--nodata-edge", min=0.0, max=0.3,
        help="Share of the scene outside the optical swath (nodata), 0 for none.")] = 0.0,
    optical_dtype: Annotated[OpticalDtype, typer.Option(
        "--optical-dtype", help="int16 (reflectance x 10000, nodata -32768) or float32 "
        "(reflectance, nodata NaN).")] = OpticalDtype.int16,
    overwrite: Overwrite = False,
    co: CreationOptions = None,
    json_output: JsonOutput = False,
) -> None:
    """Generate a synthetic co-registered optical + LiDAR/SAR scene with ground truth and
    disjoint train/test labels (hsi.tif, lidar.tif or sar.tif, ground_truth.tif,
    train_labels.tif, test_labels.tif, scene.json)."""
    from s2fin_cli.synth import SynthConfig, generate_scene, write_scene
    from s2fin_cli.synth.writing import prepare_outputs

    config = SynthConfig.for_preset(
        preset.value, size=size, height=height, width=width, bands=bands,
        optical=optical.value if optical else None, active=active.value if active else None,
        seed=seed, difficulty=difficulty, train_per_class=train_per_class,
        label_buffer=label_buffer, pixel_size=pixel_size, epsg=epsg, sar_bands=sar_bands,
        sar_looks=sar_looks, sar_db=not sar_linear, lidar_intensity=lidar_intensity,
        nodata_edge=nodata_edge,
    )
    if config.preset == "agricultural" and config.optical != "vnir-swir":
        console.warn("the clay and calcareous soils differ only at 2205/2338 nm, outside "
                     f"{config.optical}: they cannot be told apart spectrally")
    if config.preset == "urban" and config.active != "lidar":
        console.warn("the urban classes are built around heights; SAR only hints at them")
    options = parse_creation_options(co or [])
    # Before the (possibly long) generation: options GDAL refuses, outputs that exist.
    prepare_outputs(config, out_dir, overwrite=overwrite, optical_dtype=optical_dtype.value,
                    creation_options=options)
    scene = generate_scene(config)
    argv = sys.argv[1:] if sys.argv and Path(sys.argv[0]).name == "s2fin" else None
    command = ("s2fin " + shlex.join(argv)) if argv and "synth" in argv else None
    paths = write_scene(scene, out_dir, overwrite=overwrite, optical_dtype=optical_dtype.value,
                        command=command, creation_options=options)
    counts = scene.class_counts()
    if json_output:
        console.stdout.print_json(json.dumps({
            "files": {k: str(v) for k, v in paths.items()},
            "classes": [{"id": c.id, "name": c.name, "pixels": counts["ground_truth"][c.id],
                         "train": counts["train"][c.id], "test": counts["test"][c.id]}
                        for c in scene.classes],
        }))
        return
    console.note(f"wrote {out_dir}: {config.preset}, {config.width}x{config.height} px at "
                 f"{config.pixel_size:g} m (EPSG:{config.epsg}), {len(scene.bands)} optical + "
                 f"{scene.active.shape[0]} {config.active} bands, {len(scene.classes)} classes, "
                 f"{sum(counts['train'].values())} training / {sum(counts['test'].values())} "
                 "test pixels")
    for c in scene.classes:
        console.info(f"  {c.id:2d} {c.name:24s} {counts['ground_truth'][c.id]:8d} px  "
                     f"train {counts['train'][c.id]:5d}  test {counts['test'][c.id]:6d}")
