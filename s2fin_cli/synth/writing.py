"""``write_scene``: a generated scene as GeoTIFFs (through :func:`write_raster`) + scene.json.

Files and conventions
---------------------
=====================  ==========================================================================
hsi.tif                optical reflectance; int16 = round(reflectance x 10000) with tag
                       ``scale_factor=0.0001`` and nodata -32768 (default), or float32
                       reflectance with nodata NaN. Band descriptions ``b012 652.3 nm``
                       (``B04 664.6 nm`` for Sentinel-2-like bands); band tags ``wavelength``,
                       ``fwhm`` (nm); dataset tags ``wavelength_units=nm``, ``wavelength`` (all
                       centres, comma separated), ``bad_bands`` (1-based, strong water vapour).
lidar.tif              float32, nodata -9999: band 1 ``DSM (m)`` (terrain + objects, metres),
                       band 2 ``intensity`` (unitless, ~0..1) unless disabled.
sar.tif                float32, nodata -9999: ``VV (dB)``, ``VH (dB)`` [, ``HH (dB)``, ``HV (dB)``]
                       backscatter sigma0 in dB (or linear power with --sar-linear), speckled.
ground_truth.tif       uint8 class ids 1..N everywhere the optical image has data; 0 = nodata.
train_labels.tif       uint8, sparse training pixels; 0 = unlabeled.
test_labels.tif        uint8, test pixels, disjoint from (and buffered away from) training.
scene.json             the command, config, seed, grid, classes (with the confusion each one is
                       there to create), label protocol, counts and SHA-256 of every array.
=====================  ==========================================================================

Label rasters carry the class colour table, category names and a raster attribute table
(``.aux.xml``) and a QGIS ``.qml`` sidecar, and declare nodata 0. Every file, sidecars included,
is checked before anything is generated into place (:func:`check_outputs`), and all of them are
renamed into place together once the last is written: a failure (a creation option GDAL
refuses, a full disk) leaves an existing scene untouched.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from s2fin_cli import __version__
from s2fin_cli.errors import ConfigError, OutputError
from s2fin_cli.io.gdal import check_creation_profile
from s2fin_cli.io.outputs import Output, check_outputs
from s2fin_cli.io.writer import AtomicGroup, geotiff_profile, write_raster, write_text
from s2fin_cli.synth.config import SynthConfig
from s2fin_cli.synth.scene import SynthScene, describe, scene_grid

HSI_SCALE = 10000
HSI_NODATA_INT16 = -32768
FLOAT_NODATA = -9999.0
OPTICAL_DTYPES = ("int16", "float32")


def scene_file_names(scene: SynthScene) -> dict[str, str]:
    """Role -> file name for the files :func:`write_scene` writes."""
    return config_file_names(scene.config)


def config_file_names(config: SynthConfig) -> dict[str, str]:
    """Role -> file name for the files a scene of ``config`` is written as."""
    return {
        "hsi": "hsi.tif",
        config.active: f"{config.active}.tif",
        "ground_truth": "ground_truth.tif",
        "train_labels": "train_labels.tif",
        "test_labels": "test_labels.tif",
        "scene": "scene.json",
    }


def optical_array(scene: SynthScene, dtype: str = "int16") -> tuple[np.ndarray, float]:
    """The optical cube as stored: (array, nodata)."""
    if dtype == "float32":
        return scene.optical.astype(np.float32), float("nan")
    scaled = np.clip(np.nan_to_num(scene.optical, nan=0.0) * HSI_SCALE, -32767, 32767)
    stored = np.round(scaled).astype(np.int16)
    stored[:, ~scene.valid] = HSI_NODATA_INT16
    return stored, float(HSI_NODATA_INT16)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


_LABEL_ROLES = ("ground_truth", "train_labels", "test_labels")


def prepare_outputs(config: SynthConfig, out_dir: str | Path, *, overwrite: bool = False,
                    optical_dtype: str = "int16",
                    creation_options: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Check everything :func:`write_scene` will write, before a scene is generated: the
    optical dtype, the creation options (GDAL tries each raster's profile in memory), the output
    folder (created) and every file and sidecar (:func:`check_outputs`). Returns role -> path."""
    if optical_dtype not in OPTICAL_DTYPES:
        raise ConfigError(f"optical dtype {optical_dtype!r}", hint="int16 or float32")
    grid = scene_grid(config)
    co = dict(creation_options or {})
    for dtype, nodata in ((optical_dtype, HSI_NODATA_INT16 if optical_dtype == "int16"
                           else float("nan")), ("float32", FLOAT_NODATA), ("uint8", 0)):
        check_creation_profile(geotiff_profile(grid, count=1, dtype=dtype, nodata=nodata,
                                               creation_options=co), co or None)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from exc
    paths = {role: out / name for role, name in config_file_names(config).items()}
    check_outputs([Output(path, None if role == "scene" else "GTiff", role in _LABEL_ROLES)
                   for role, path in paths.items()], [], overwrite=overwrite)
    return paths


def write_scene(scene: SynthScene, out_dir: str | Path, overwrite: bool = False, *,
                optical_dtype: str = "int16", command: str | None = None,
                creation_options: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write ``scene`` into ``out_dir`` (created if missing); returns role -> path.

    Every output is checked before anything is written (:func:`prepare_outputs`), and the files
    appear together when the last is written, so an existing file (without ``overwrite``) or a
    failure midway leaves the directory as it was.
    """
    paths = prepare_outputs(scene.config, out_dir, overwrite=overwrite,
                            optical_dtype=optical_dtype, creation_options=creation_options)
    names = scene_file_names(scene)
    with AtomicGroup() as group:
        _write_files(scene, paths, names, group, overwrite=overwrite,
                     optical_dtype=optical_dtype, command=command or
                     scene.config.command(str(out_dir)), creation_options=creation_options)
    return paths


def _write_files(scene: SynthScene, paths: dict[str, Path], names: dict[str, str],
                 group: AtomicGroup, *, overwrite: bool, optical_dtype: str, command: str,
                 creation_options: Mapping[str, str] | None) -> None:

    cfg = scene.config
    grid = scene.grid
    co = creation_options
    optical, nodata = optical_array(scene, optical_dtype)
    centers = [f"{c:.1f}" for c in scene.bands.centers]
    optical_tags = {
        "wavelength_units": "nm",
        "wavelength": ",".join(centers),
        "fwhm": ",".join(f"{c:.2f}" for c in scene.bands.fwhm),
        "bad_bands": ",".join(str(b) for b in scene.notes.get("bad_bands", [])),
        "sensor": ("Sentinel-2-like MSI" if cfg.optical == "msi"
                   else f"hyperspectral imager ({cfg.optical.upper()})"),
        "quantity": "surface reflectance",
        "synthetic": "s2fin synth",
    }
    if optical_dtype == "int16":
        optical_tags.update(scale_factor="0.0001", add_offset="0")
    band_tags = [{"wavelength": w, "fwhm": f"{f:.2f}", "wavelength_units": "nm"}
                 for w, f in zip(centers, scene.bands.fwhm, strict=True)]
    write_raster(paths["hsi"], optical, grid, nodata=nodata,
                 band_descriptions=scene.bands.descriptions(), tags=optical_tags,
                 band_tags=band_tags, overwrite=overwrite, creation_options=co, group=group)

    if cfg.active == "lidar":
        active_tags = {"sensor": "airborne LiDAR", "units": "m (DSM)", "synthetic": "s2fin synth",
                       "vertical_datum": "orthometric (synthetic)"}
    else:
        active_tags = {"sensor": "C-band SAR (Sentinel-1-like)",
                       "units": "dB" if cfg.sar_db else "linear power",
                       "quantity": "sigma0 backscatter",
                       "speckle_looks": str(scene.notes.get("sar_looks")),
                       "resolution_m": str(scene.notes.get("sar_resolution_m")),
                       "incidence_angle_deg": str(scene.geometry.sar_incidence),
                       "look_direction": "east", "synthetic": "s2fin synth"}
    write_raster(paths[cfg.active], scene.active.astype(np.float32), grid, nodata=FLOAT_NODATA,
                 band_descriptions=scene.active_names, tags=active_tags, overwrite=overwrite,
                 creation_options=co, group=group)

    for role, array, desc in (("ground_truth", scene.ground_truth, "ground truth"),
                              ("train_labels", scene.train_labels, "training labels"),
                              ("test_labels", scene.test_labels, "test labels")):
        write_raster(paths[role], array.astype(np.uint8), grid, nodata=0,
                     band_descriptions=[desc], classes=scene.classes,
                     tags={"synthetic": "s2fin synth"},
                     overwrite=overwrite, creation_options=co, group=group)

    meta: dict[str, Any] = {
        "generator": "s2fin synth",
        "s2fin_version": __version__,
        "command": command,
        "seed": cfg.seed,
        "preset": cfg.preset,
        "config": cfg.to_json(),
        "files": names,
        "optical": {
            "file": names["hsi"], "dtype": optical_dtype,
            "nodata": None if optical_dtype == "float32" else HSI_NODATA_INT16,
            "scale_factor": 1.0 / HSI_SCALE if optical_dtype == "int16" else 1.0,
            "band_names": list(scene.bands.names),
            "wavelength_nm": [float(c) for c in scene.bands.centers],
            "fwhm_nm": [float(f) for f in scene.bands.fwhm],
        },
        "active": {"file": names[cfg.active], "kind": cfg.active, "dtype": "float32",
                   "nodata": FLOAT_NODATA, "bands": scene.active_names},
        **describe(scene),
        "sha256": {"hsi": _sha(optical), cfg.active: _sha(scene.active),
                   "ground_truth": _sha(scene.ground_truth),
                   "train_labels": _sha(scene.train_labels),
                   "test_labels": _sha(scene.test_labels)},
    }
    write_text(paths["scene"], json.dumps(meta, indent=2) + "\n", overwrite=overwrite,
               group=group)
