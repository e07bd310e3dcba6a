"""``generate_scene``: a seeded, deterministic synthetic multimodal scene (no I/O)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.crs import CRS

from s2fin_cli.classes import ClassTable
from s2fin_cli.io.grid import Grid
from s2fin_cli.synth.config import SAR_POLARIZATIONS, SynthConfig
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


def scene_grid(config: SynthConfig) -> Grid:
    x0, y0 = config.origin
    px = config.pixel_size
    return Grid(CRS.from_epsg(config.epsg), Affine(px, 0.0, x0, 0.0, -px, y0),
                config.width, config.height)


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
