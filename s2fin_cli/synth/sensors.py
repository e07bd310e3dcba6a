"""Sensors: the optical imager (reflectance, illumination, PSF, noise), LiDAR and SAR.

All three look at the same :class:`~s2fin_cli.synth.layout.Layout` and return arrays on the
output grid (the render grid averaged ``oversample`` x ``oversample``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from s2fin_cli.synth.config import SAR_POLARIZATIONS, SynthConfig
from s2fin_cli.synth.layout import Layout
from s2fin_cli.synth.spectra import (
    VEGETATION,
    BandSet,
    Material,
    MaterialSpectra,
    atmospheric_transmission,
    detector_response,
    library,
)

M = Material


@dataclass(frozen=True)
class Geometry:
    """Sun and radar geometry of the acquisition (degrees)."""

    sun_azimuth: float
    sun_elevation: float
    sar_incidence: float  # the SAR looks east (ascending, right-looking)

    @classmethod
    def draw(cls, rng: np.random.Generator) -> Geometry:
        return cls(round(float(rng.uniform(130.0, 170.0)), 1),
                   round(float(rng.uniform(38.0, 58.0)), 1),
                   round(float(rng.uniform(30.0, 42.0)), 1))


def block_mean(a: np.ndarray, f: int) -> np.ndarray:
    """Average ``f`` x ``f`` blocks of the last two axes."""
    if f == 1:
        return a
    *lead, h, w = a.shape
    return a.reshape(*lead, h // f, f, w // f, f).mean(axis=(-3, -1))


def block_max(a: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return a
    h, w = a.shape
    return a.reshape(h // f, f, w // f, f).max(axis=(1, 3))


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Spatially correlated unit-variance noise (Gaussian-filtered white noise)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field / (field.std() + 1e-12)).astype(np.float32)


def surface_normals(z: np.ndarray, pixel: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit normals (east, north, up) of a height field with rows going south."""
    gy, gx = np.gradient(z.astype(np.float64), pixel)
    nx, ny, nz = -gx, gy, np.ones_like(gx)
    norm = np.sqrt(nx**2 + ny**2 + nz**2)
    return nx / norm, ny / norm, nz / norm


def march_shadow(dsm: np.ndarray, pixel: float, direction: tuple[float, float],
                 slope: float, max_rise: float) -> np.ndarray:
    """True where something along ``direction`` (unit (drow, dcol)) rises above the line that
    climbs ``slope`` metres per metre from the pixel: sun shadow or radar shadow."""
    h, w = dsm.shape
    steps = math.ceil(max_rise / max(slope * pixel, 1e-6))
    pad = steps + 1
    padded = np.pad(dsm, pad, mode="edge")
    shadow = np.zeros(dsm.shape, bool)
    for t in range(1, steps + 1):
        dr = round(t * direction[0])
        dc = round(t * direction[1])
        nb = padded[pad + dr:pad + dr + h, pad + dc:pad + dc + w]
        shadow |= nb > dsm + t * pixel * slope
    return shadow


# ------------------------------------------------------------------------------------------------
# optical


def diffuse_fraction(wl: np.ndarray) -> np.ndarray:
    """Share of skylight in the global irradiance: what lights a shadow (blue-rich)."""
    return np.clip(0.1 * (wl / 700.0) ** -2.0 + 0.03, 0.04, 0.5)


def noise_sigma(wl: np.ndarray, difficulty: float) -> tuple[np.ndarray, float, float]:
    """Per band: (1 / (transmission x detector response)), read noise and shot-noise factor."""
    scale = 0.4 + 1.2 * difficulty
    per_band = np.clip(1.0 / (atmospheric_transmission(wl) * detector_response(wl)), 1.0, 25.0)
    return per_band, 0.0025 * scale, 6.0e-5 * scale


def render_optical(layout: Layout, config: SynthConfig, bands: BandSet, geometry: Geometry,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reflectance cube (bands, rows, cols) float32 on the output grid, and the shadow share."""
    lib = library(bands, difficulty=config.difficulty)
    h, w = layout.shape
    d = config.difficulty
    spread = 0.6 + 0.8 * d
    n_obj = layout.n_objects + 1
    obj_sigma = np.array([0.10, 0.06, 0.6]) * spread
    pix_sigma = np.array([0.05, 0.02, 0.3]) * spread
    white_sigma = np.array([0.03, 0.005, 0.15]) * spread
    obj_coef = (rng.standard_normal((n_obj, 3)) * obj_sigma).astype(np.float32)
    corr = max(0.6, 1.5 / layout.pixel)
    fields = [smooth_noise(rng, (h, w), corr) for _ in range(3)]
    coef = np.stack([obj_coef[layout.objects, k] + pix_sigma[k] * fields[k]
                     + white_sigma[k] * rng.standard_normal((h, w), dtype=np.float32)
                     for k in range(3)], axis=-1).astype(np.float32)

    # Illumination: slope and crown shading, cast shadows, spectral skylight in the shadows.
    az, el = math.radians(geometry.sun_azimuth), math.radians(geometry.sun_elevation)
    veg = np.isin(layout.mat_a, list(VEGETATION)) & (layout.height > 0.3)
    shape_z = layout.dem + ndimage.gaussian_filter(np.where(veg, layout.height, 0.0),
                                                   0.8 / layout.pixel)
    nx, ny, nz = surface_normals(shape_z, layout.pixel)
    sun = (math.cos(el) * math.sin(az), math.cos(el) * math.cos(az), math.sin(el))
    direct = np.clip((nx * sun[0] + ny * sun[1] + nz * sun[2]) / sun[2], 0.0, 1.6)
    dsm = layout.dem + layout.height
    shadow = march_shadow(dsm, layout.pixel, (-math.cos(az), math.sin(az)),
                          math.tan(el), float(layout.height.max()) + 1.0).astype(np.float32)
    shadow = ndimage.gaussian_filter(shadow, 0.35 / layout.pixel + 0.2)
    direct = (direct * (1.0 - shadow)).astype(np.float32)
    fd = diffuse_fraction(bands.centers).astype(np.float32)

    mean = lib.mean.astype(np.float32)
    slope = lib.slope.astype(np.float32)
    spec = lib.specific.astype(np.float32)
    f = config.oversample
    out = np.empty((len(bands), config.height, config.width), np.float32)
    step = max(f, (32 // f) * f)
    for r0 in range(0, h, step):
        r1 = min(h, r0 + step)
        c = coef[r0:r1]

        def layer(mat: np.ndarray, c: np.ndarray = c) -> np.ndarray:
            return (mean[mat] * (1.0 + c[..., 0:1]) + c[..., 1:2] * slope[mat]
                    + c[..., 2:3] * spec[mat])

        fa = layout.frac[r0:r1, :, None]
        refl = fa * layer(layout.mat_a[r0:r1]) + (1.0 - fa) * layer(layout.mat_b[r0:r1])
        light = (1.0 - fd) * direct[r0:r1, :, None] + fd
        cube = np.moveaxis(refl * light, -1, 0)
        out[:, r0 // f:r1 // f] = block_mean(cube, f)

    # Point-spread function (mixed pixels at boundaries); multispectral bands coarser than the
    # output pixel are blurred to their native resolution.
    psf = config.psf_sigma if config.psf_sigma is not None else 0.45 + 0.3 * d
    for b in range(len(bands)):
        sigma = psf
        if bands.native_resolution_m is not None:
            extra = max(0.0, bands.native_resolution_m[b] / config.pixel_size - 1.0) / 2.355 * 2
            sigma = math.hypot(psf, extra)
        if sigma > 0:
            out[b] = ndimage.gaussian_filter(out[b], sigma, mode="reflect")

    # Noise: read + shot noise, amplified where the atmosphere let little light through, and
    # pushbroom striping (a per-column offset per band).
    per_band, read, shot = noise_sigma(bands.centers, d)
    sigma_map = np.sqrt(read**2 + shot * np.clip(out, 0, None)) * per_band[:, None, None]
    out += (sigma_map * rng.standard_normal(out.shape, dtype=np.float32)).astype(np.float32)
    stripes = rng.standard_normal((len(bands), 1, config.width)).astype(np.float32)
    out += stripes * (0.3 * read * per_band[:, None, None]).astype(np.float32)
    return out, block_mean(shadow, f)


# ------------------------------------------------------------------------------------------------
# LiDAR


def render_lidar(layout: Layout, config: SynthConfig, lib: MaterialSpectra,
                 rng: np.random.Generator) -> np.ndarray:
    """(1 or 2, rows, cols) float32: DSM (m) and optionally a normalised intensity."""
    d = config.difficulty
    f = config.oversample
    dsm_r = layout.dem + layout.height
    # Laser pulses pass through gaps in crowns: some returns come from lower down.
    porous = np.isin(layout.mat_a, [M.TREE, M.SHRUB]) & (layout.height > 0.5)
    gap = porous & (rng.random(layout.shape) < 0.08 + 0.15 * d)
    dsm_r = np.where(gap, layout.dem + layout.height * rng.random(layout.shape), dsm_r)
    dsm = block_max(dsm_r, f) + rng.normal(0.0, 0.03 + 0.12 * d, (config.height, config.width))
    layers = [dsm.astype(np.float32)]
    if config.lidar_intensity:
        nir = lib.nir_reflectance.astype(np.float32)
        refl = layout.frac * nir[layout.mat_a] + (1 - layout.frac) * nir[layout.mat_b]
        _, _, nz = surface_normals(dsm_r, layout.pixel)
        inten = refl * (0.4 + 0.6 * nz) * np.where(gap, 0.5, 1.0)
        inten = block_mean(inten, f)
        inten = inten * (1 + rng.normal(0, 0.05 + 0.1 * d, inten.shape))
        layers.append(np.clip(inten / 0.6, 0, 1.5).astype(np.float32))
    return np.stack(layers)


# ------------------------------------------------------------------------------------------------
# SAR

# Backscatter (dB) at the reference incidence, per class key: VV, VH, HH, HV.
_SAR_CLASS_DB: dict[str, tuple[float, float, float, float]] = {
    "road": (-17.0, -27.0, -18.0, -27.0),
    "parking": (-16.0, -25.0, -16.5, -25.0),
    "roof_bitumen": (-13.0, -22.0, -13.0, -22.0),
    "roof_concrete": (-11.0, -21.0, -11.0, -21.0),
    "roof_membrane": (-12.0, -21.5, -12.0, -21.5),
    "farm_building": (-6.0, -17.0, -5.0, -17.0),
    "water": (-23.0, -31.0, -24.0, -31.0),
    "grass": (-12.0, -19.0, -13.0, -19.0),
    "meadow": (-12.0, -19.0, -13.0, -19.0),
    "cereal": (-14.5, -20.0, -11.0, -20.0),
    "row_crops": (-10.0, -17.0, -10.0, -17.0),
    "vineyard": (-8.0, -14.0, -7.0, -14.0),
    "bare_soil": (-11.0, -19.5, -12.0, -19.5),
    "soil_clay": (-11.0, -19.5, -12.0, -19.5),
    "soil_carbonate": (-11.0, -19.5, -12.0, -19.5),
    "shrubs": (-9.0, -15.0, -9.0, -15.0),
    "hedgerow": (-9.0, -15.0, -9.0, -15.0),
    "trees": (-7.5, -12.5, -7.5, -12.5),
    "forest": (-7.5, -12.5, -7.5, -12.5),
}
_POL_INDEX = {"VV": 0, "VH": 1, "HH": 2, "HV": 3}
NESZ_DB = -25.0


def sar_looks(config: SynthConfig) -> float:
    if config.sar_looks is not None:
        return config.sar_looks
    return 1.0 + 12.0 * (1.0 - config.difficulty)


def sar_resolution(config: SynthConfig) -> float:
    if config.sar_resolution_m is not None:
        return config.sar_resolution_m
    return max(4.0, 2.0 * config.pixel_size)


def render_sar(layout: Layout, config: SynthConfig, geometry: Geometry,
               rng: np.random.Generator) -> np.ndarray:
    """(2 or 4, rows, cols) float32 backscatter, dB (or linear), with gamma speckle."""
    d = config.difficulty
    pols = SAR_POLARIZATIONS[config.sar_bands]
    keys = [c.key for c in config.class_specs]
    table = np.zeros((len(keys) + 1, 4), np.float32)
    for i, key in enumerate(keys, start=1):
        table[i] = _SAR_CLASS_DB[key]
    n_obj = layout.n_objects + 1
    obj_db = rng.normal(0.0, 1.0 + 1.5 * d, (n_obj, 1)) + rng.normal(0.0, 0.5, (n_obj, 4))
    db = table[layout.classes] + obj_db[layout.objects].astype(np.float32)
    cars = np.isin(layout.mat_a, [M.CAR_RED, M.CAR_BLUE, M.CAR_SILVER, M.CAR_DARK])
    db[cars] = np.array([-4.0, -14.0, -3.0, -14.0], np.float32)

    theta = math.radians(geometry.sar_incidence)
    # Local incidence along range (the radar looks east), terrain only.
    gx = np.gradient(layout.dem.astype(np.float64), layout.pixel, axis=1)
    local = theta - np.arctan(gx)
    gain = (np.clip(np.cos(local), 0.05, 1.0) / math.cos(theta)) ** 2
    lin = 10.0 ** (db / 10.0) * gain[..., None]

    # Buildings: double bounce in front of the wall that faces the radar (west), radar shadow
    # behind (east).
    dsm = layout.dem + layout.height
    building = np.isin(layout.objects, layout.buildings)
    tall = np.where(building, layout.height, 0.0)
    reach = max(1, round(1.5 / layout.pixel))
    front = np.zeros(layout.shape, np.float32)
    for k in range(1, reach + 1):
        front = np.maximum(front, np.pad(tall, ((0, 0), (0, k)))[:, k:])
    front = np.where(building, 0.0, np.clip(front / 10.0, 0.0, 1.0))
    lin = lin * (1.0 + front[..., None] * np.array([15.0, 3.0, 25.0, 3.0], np.float32))
    shadow = march_shadow(dsm, layout.pixel, (0.0, -1.0), 1.0 / math.tan(theta),
                          float(layout.height.max()) + 1.0)
    lin[shadow] *= 0.05

    lin = lin + 10.0 ** (NESZ_DB / 10.0)
    lin = block_mean(np.moveaxis(lin, -1, 0), config.oversample)
    res_px = sar_resolution(config) / config.pixel_size
    looks = sar_looks(config)
    out = np.empty((len(pols), config.height, config.width), np.float32)
    cell = max(1.0, res_px / 2.0)
    coarse = (math.ceil(config.height / cell) + 1, math.ceil(config.width / cell) + 1)
    for i, pol in enumerate(pols):
        band = ndimage.gaussian_filter(lin[_POL_INDEX[pol]], res_px / 2.355, mode="reflect")
        speckle = rng.gamma(looks, 1.0 / looks, coarse)
        if cell > 1.0:
            speckle = ndimage.zoom(speckle, cell, order=1, mode="nearest")
        band = band * speckle[:config.height, :config.width]
        out[i] = 10.0 * np.log10(np.maximum(band, 1e-6)) if config.sar_db else band
    return out
