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

Label rasters carry the class colour table and a QGIS ``.qml`` sidecar, and declare nodata 0.
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
from s2fin_cli.io.writer import check_output_path, write_raster, write_text
from s2fin_cli.synth.scene import SynthScene, describe

HSI_SCALE = 10000
HSI_NODATA_INT16 = -32768
FLOAT_NODATA = -9999.0
OPTICAL_DTYPES = ("int16", "float32")


def scene_file_names(scene: SynthScene) -> dict[str, str]:
    """Role -> file name for the files :func:`write_scene` writes."""
    return {
        "hsi": "hsi.tif",
        scene.config.active: f"{scene.config.active}.tif",
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


def write_scene(scene: SynthScene, out_dir: str | Path, overwrite: bool = False, *,
                optical_dtype: str = "int16", command: str | None = None,
                creation_options: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write ``scene`` into ``out_dir`` (created if missing); returns role -> path.

    Every output is checked before anything is written, so an existing file (without
    ``overwrite``) leaves the directory untouched.
    """
    if optical_dtype not in OPTICAL_DTYPES:
        raise ConfigError(f"optical dtype {optical_dtype!r}", hint="int16 or float32")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from exc
    names = scene_file_names(scene)
    paths = {role: out / name for role, name in names.items()}
    for path in paths.values():
        check_output_path(path, overwrite=overwrite)

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
                 band_tags=band_tags, overwrite=overwrite, creation_options=co)

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
                 creation_options=co)

    for role, array, desc in (("ground_truth", scene.ground_truth, "ground truth"),
                              ("train_labels", scene.train_labels, "training labels"),
                              ("test_labels", scene.test_labels, "test labels")):
        write_raster(paths[role], array.astype(np.uint8), grid, nodata=0,
                     band_descriptions=[desc], classes=scene.classes,
                     tags={"synthetic": "s2fin synth"},
                     overwrite=overwrite, creation_options=co)

    meta: dict[str, Any] = {
        "generator": "s2fin synth",
        "s2fin_version": __version__,
        "command": command or cfg.command(str(out_dir)),
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
    write_text(paths["scene"], json.dumps(meta, indent=2) + "\n", overwrite=overwrite)
    return paths
