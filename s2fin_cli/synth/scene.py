"""``generate_scene``: a seeded, deterministic synthetic multimodal scene (no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.warp import transform as warp_transform

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import ConfigError
from s2fin_cli.io.grid import Grid
from s2fin_cli.synth.config import ORIGIN_EPSG, SAR_POLARIZATIONS, SynthConfig
from s2fin_cli.synth.labels import LabelReport, downsample_classes, make_labels
from s2fin_cli.synth.layout import generate_layout
from s2fin_cli.synth.sensors import (
    Geometry,
    block_mean,
    render_lidar,
    render_optical,
    render_sar,
    sar_looks,
    sar_resolution,
)
from s2fin_cli.synth.spectra import (
    BandSet,
    atmospheric_transmission,
    hyperspectral_bands,
    library,
    multispectral_bands,
)


@dataclass
class SynthScene:
    """A generated scene: arrays on ``grid`` plus everything needed to describe them.

    ``optical`` is reflectance (0..1, float32, NaN where ``valid`` is False); ``active`` is the
    LiDAR (DSM m, intensity) or SAR (dB or linear) stack; label rasters are uint8 with 0 =
    unlabeled (the ground truth is 0 only where the optical image has no data).
    """

    config: SynthConfig
    grid: Grid
    classes: ClassTable
    bands: BandSet
    optical: np.ndarray
    active: np.ndarray
    active_names: list[str]
    ground_truth: np.ndarray
    train_labels: np.ndarray
    test_labels: np.ndarray
    objects: np.ndarray
    dem: np.ndarray
    valid: np.ndarray
    shadow: np.ndarray
    geometry: Geometry
    label_report: LabelReport
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def active_kind(self) -> str:
        return self.config.active

    @property
    def wavelengths(self) -> np.ndarray:
        return self.bands.centers

    def class_counts(self) -> dict[str, dict[int, int]]:
        def count(a: np.ndarray) -> dict[int, int]:
            return {c: int((a == c).sum()) for c in self.classes.ids}

        return {"ground_truth": count(self.ground_truth), "train": count(self.train_labels),
                "test": count(self.test_labels)}


def band_set(config: SynthConfig) -> BandSet:
    if config.optical == "msi":
        return multispectral_bands(config.bands)
    return hyperspectral_bands(config.bands, config.optical)


# Metres per degree of latitude, and of longitude at the equator (WGS 84, rounded).
_M_PER_DEG_LAT = 110_574.0
_M_PER_DEG_LON = 111_320.0


def scene_grid(config: SynthConfig) -> Grid:
    """The scene's grid: ``pixel_size`` metres per pixel at the preset's place, in ``--epsg``.

    The place is ``config.origin`` in UTM 32N (:data:`ORIGIN_EPSG`). In another CRS the scene's
    centre is reprojected and the pixel size converted to that CRS's units: metres divided by
    the unit's length for a projected CRS (US feet ...), degrees for a geographic one (latitude:
    metres / 110574; longitude: metres / (111320 cos latitude), so pixels stay square on the
    ground).
    """
    crs = config.crs()
    x0, y0 = config.origin
    px = config.pixel_size
    if config.epsg == ORIGIN_EPSG:
        return Grid(crs, Affine(px, 0.0, x0, 0.0, -px, y0), config.width, config.height)
    cx, cy = x0 + config.width * px / 2, y0 - config.height * px / 2
    try:
        xs, ys = warp_transform(CRS.from_epsg(ORIGIN_EPSG), crs, [cx], [cy])
        if crs.is_geographic:
            lat = float(ys[0])
            px_x = px / (_M_PER_DEG_LON * max(math.cos(math.radians(lat)), 1e-6))
            px_y = px / _M_PER_DEG_LAT
        else:
            metres_per_unit = float(crs.linear_units_factor[1])
            px_x = px_y = px / metres_per_unit
    except (CRSError, ValueError) as exc:
        raise ConfigError(f"cannot place the synthetic scene in EPSG:{config.epsg}: {exc}") \
            from None
    ox, oy = float(xs[0]) - config.width * px_x / 2, float(ys[0]) + config.height * px_y / 2
    if not all(math.isfinite(v) for v in (ox, oy, px_x, px_y)):
        raise ConfigError(f"the synthetic scene's place (UTM 32N {cx:.0f}, {cy:.0f}) is outside "
                          f"what EPSG:{config.epsg} can express", hint="choose a CRS for Europe")
    return Grid(crs, Affine(px_x, 0.0, ox, 0.0, -px_y, oy), config.width, config.height)


def _swath_edge(config: SynthConfig) -> np.ndarray:
    """Valid-pixel mask: a slanted swath edge removes ``nodata_edge`` of the scene."""
    h, w = config.height, config.width
    valid = np.ones((h, w), bool)
    if config.nodata_edge <= 0:
        return valid
    rows, cols = np.mgrid[0:h, 0:w]
    edge = cols + 0.25 * rows  # a flight line not aligned with the grid
    cut = np.quantile(edge, config.nodata_edge)
    return edge >= cut


def generate_scene(config: SynthConfig) -> SynthScene:
    """Generate the scene described by ``config``; the same config gives identical arrays."""
    config.validate()
    seq = np.random.SeedSequence([config.seed, 0x5352_4649])  # "S2FI"
    r_layout, r_optical, r_active, r_labels, r_geo = (np.random.default_rng(s)
                                                      for s in seq.spawn(5))
    layout = generate_layout(config, r_layout)
    geometry = Geometry.draw(r_geo)
    bands = band_set(config)
    optical, shadow = render_optical(layout, config, bands, geometry, r_optical)
    if config.active == "lidar":
        lib = library(bands, difficulty=config.difficulty)
        active = render_lidar(layout, config, lib, r_active)
        names = ["DSM (m)"] + (["intensity"] if config.lidar_intensity else [])
    else:
        active = render_sar(layout, config, geometry, r_active)
        unit = "dB" if config.sar_db else "linear"
        names = [f"{p} ({unit})" for p in SAR_POLARIZATIONS[config.sar_bands]]

    n_classes = len(config.class_specs)
    gt, objects = downsample_classes(layout.classes, layout.objects, config.oversample, n_classes)
    valid = _swath_edge(config)
    optical[:, ~valid] = np.nan
    gt = np.where(valid, gt, 0).astype(np.uint8)
    train, test, report = make_labels(gt, objects, valid, config, r_labels)
    dem = block_mean(layout.dem, config.oversample).astype(np.float32)
    bad = [i + 1 for i, t in enumerate(atmospheric_transmission(bands.centers)) if t < 0.2]
    notes: dict[str, Any] = {
        "bad_bands": bad,
        "psf_sigma_px": config.psf_sigma if config.psf_sigma is not None
        else round(0.45 + 0.3 * config.difficulty, 3),
    }
    if config.active == "sar":
        notes["sar_looks"] = round(sar_looks(config), 3)
        notes["sar_resolution_m"] = sar_resolution(config)
    return SynthScene(config=config, grid=scene_grid(config), classes=config.class_table(),
                      bands=bands, optical=optical, active=active.astype(np.float32),
                      active_names=names, ground_truth=gt, train_labels=train, test_labels=test,
                      objects=objects, dem=dem, valid=valid, shadow=shadow.astype(np.float32),
                      geometry=geometry, label_report=report, notes=notes)


def describe(scene: SynthScene) -> dict[str, Any]:
    """A JSON-ready summary (without arrays)."""
    cfg = scene.config
    counts = scene.class_counts()
    return {
        "grid": scene.grid.describe(),
        "geometry": {"sun_azimuth_deg": scene.geometry.sun_azimuth,
                     "sun_elevation_deg": scene.geometry.sun_elevation,
                     "sar_incidence_deg": scene.geometry.sar_incidence,
                     "sar_look_direction": "east (ascending, right-looking)"},
        "classes": [
            {**c.__dict__, "color": list(c.color), "key": spec.key, "confusion": spec.confusion,
             "pixels": counts["ground_truth"][c.id], "train_pixels": counts["train"][c.id],
             "test_pixels": counts["test"][c.id],
             "train_objects": scene.label_report.train_objects.get(c.id, 0),
             "test_objects": scene.label_report.test_objects.get(c.id, 0)}
            for c, spec in zip(scene.classes, cfg.class_specs, strict=True)
        ],
        "label_protocol": {
            "train_per_class": cfg.train_per_class,
            "train_fraction_of_objects": cfg.train_fraction,
            "split_direction_deg": scene.label_report.direction_deg,
            "buffer_px": cfg.label_buffer,
            "buffer_relaxed_for_classes": scene.label_report.relaxed,
            "description": "objects of each class sorted along a random direction; the first "
                           "share are training objects (a few interior pixels each), test = "
                           "interior pixels of the other objects farther than buffer_px from "
                           "any training object; train and test never share a pixel",
        },
        "optical_nan_fraction": float(math.fsum((~scene.valid).ravel()) / scene.valid.size),
        **scene.notes,
    }
