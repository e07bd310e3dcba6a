"""Sensor band sets and a small library of material reflectance spectra (1 nm, 350–2550 nm).

The spectra are analytic caricatures of real ones (vegetation red edge and leaf-water bands,
soil continua with clay Al–OH and carbonate absorptions, asphalt, concrete, a polymer roofing
membrane with narrow C–H overtones, water, paints). They are not measured spectra: what matters
is that the class pairs the generator is built around overlap in the smooth, low-frequency part
of the spectrum and differ only where the paper says S²Fin looks (narrow, high-frequency detail),
or do not differ spectrally at all (the same material at another height).

Every material comes with three variation directions (brightness, spectral slope and a
material-specific one: vigour for vegetation, moisture for soils, turbidity for water, ageing /
tint for the rest). A pixel's reflectance is ``S * (1 + c1) + c2 * V2 + c3 * V3``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

WL = np.arange(350.0, 2551.0, 1.0)  # the 1 nm grid every material spectrum is defined on

# Sentinel-2 MSI: (name, centre nm, FWHM nm, native resolution m), S2A values rounded.
SENTINEL2_BANDS: tuple[tuple[str, float, float, float], ...] = (
    ("B01", 442.7, 21.0, 60.0), ("B02", 492.4, 66.0, 10.0), ("B03", 559.8, 36.0, 10.0),
    ("B04", 664.6, 31.0, 10.0), ("B05", 704.1, 15.0, 20.0), ("B06", 740.5, 15.0, 20.0),
    ("B07", 782.8, 20.0, 20.0), ("B08", 832.8, 106.0, 10.0), ("B8A", 864.7, 21.0, 20.0),
    ("B09", 945.1, 20.0, 60.0), ("B10", 1373.5, 31.0, 60.0), ("B11", 1613.7, 91.0, 20.0),
    ("B12", 2202.4, 175.0, 20.0),
)
# --bands for the msi range: 13 = all, 12 = without the cirrus band B10 (as in L2A products),
# 10 = the 10 m and 20 m bands only.
MSI_BAND_SETS: dict[int, tuple[str, ...]] = {
    13: tuple(b[0] for b in SENTINEL2_BANDS),
    12: tuple(b[0] for b in SENTINEL2_BANDS if b[0] != "B10"),
    10: ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12"),
}

SPECTRAL_RANGES: dict[str, tuple[float, float]] = {
    "vnir": (400.0, 1000.0),
    "vnir-swir": (400.0, 2500.0),
}


@dataclass(frozen=True)
class BandSet:
    """Centre wavelengths and FWHM (nm) of the optical sensor, band names, native resolution."""

    names: tuple[str, ...]
    centers: np.ndarray
    fwhm: np.ndarray
    native_resolution_m: np.ndarray | None  # per band, for resampled multispectral bands

    def __len__(self) -> int:
        return len(self.names)

    def descriptions(self) -> list[str]:
        """Band descriptions, e.g. ``b012 652.3 nm`` or ``B04 664.6 nm``."""
        return [f"{n} {c:.1f} nm" for n, c in zip(self.names, self.centers, strict=True)]

    def response(self) -> np.ndarray:
        """Gaussian spectral response functions, (bands, len(WL)), each summing to 1."""
        sigma = self.fwhm / 2.3548
        srf = np.exp(-0.5 * ((WL[None, :] - self.centers[:, None]) / sigma[:, None]) ** 2)
        return srf / srf.sum(axis=1, keepdims=True)

    def resample(self, spectrum: np.ndarray) -> np.ndarray:
        """A 1 nm spectrum (len(WL),) or (k, len(WL)) seen through the bands."""
        return spectrum @ self.response().T


def hyperspectral_bands(count: int, spectral_range: str) -> BandSet:
    """``count`` evenly spaced bands over the range, FWHM 1.2 x the spacing (>= 2 nm)."""
    lo, hi = SPECTRAL_RANGES[spectral_range]
    step = (hi - lo) / count
    centers = np.round(lo + step * (np.arange(count) + 0.5), 1)
    fwhm = np.full(count, max(2.0, round(1.2 * step, 2)))
    names = tuple(f"b{i + 1:03d}" for i in range(count))
    return BandSet(names, centers, fwhm, None)


def multispectral_bands(count: int) -> BandSet:
    keep = MSI_BAND_SETS[count]
    rows = [b for b in SENTINEL2_BANDS if b[0] in keep]
    return BandSet(tuple(r[0] for r in rows), np.array([r[1] for r in rows]),
                   np.array([r[2] for r in rows]), np.array([r[3] for r in rows]))


def atmospheric_transmission(wl: np.ndarray) -> np.ndarray:
    """Two-way transmission caricature: Rayleigh loss in the blue, O2-A and water-vapour bands.

    Atmospherically corrected reflectance is noisier where little light came through; the noise
    model divides by this (bands with T < 0.2 are listed as bad bands).
    """
    t = 1.0 - 0.35 * np.exp(-(wl - 380.0) / 120.0).clip(0, 1)
    for center, width, depth in ((760, 4, 0.6), (940, 22, 0.65), (1135, 30, 0.6),
                                 (1400, 45, 0.97), (1900, 55, 0.985), (2500, 60, 0.5)):
        t = t * (1.0 - depth * np.exp(-0.5 * ((wl - center) / width) ** 2))
    return np.clip(t, 0.01, 1.0)


def detector_response(wl: np.ndarray) -> np.ndarray:
    """Relative detector sensitivity: silicon (VNIR) falls off towards 1000 nm, then MCT."""
    si = np.clip(1.0 - ((wl - 650.0) / 420.0) ** 2, 0.15, 1.0)
    mct = np.clip(0.75 - 0.1 * ((wl - 1600.0) / 900.0) ** 2, 0.3, 1.0)
    return np.where(wl < 1000.0, si, mct)


# ------------------------------------------------------------------------------------------------
# analytic spectra on WL


def _g(center: float, width: float) -> np.ndarray:
    return np.exp(-0.5 * ((WL - center) / width) ** 2)


def _sig(center: float, width: float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-(WL - center) / width))


def vegetation(*, vis: float, green: float, red: float, edge: float, nir: float,
               water: float = 1.0) -> np.ndarray:
    """Green leaves: chlorophyll wells (blue, 675 nm), green peak, red edge, NIR plateau, SWIR
    leaf-water absorptions (970, 1200, 1450, 1940 nm)."""
    well = vis - red
    visible = vis + green * _g(550, 32) - well * _g(675, 22) - 0.5 * well * _g(450, 30)
    step = _sig(edge, 14)
    plateau = nir * (1 - 0.32 * _sig(1330, 35) - 0.28 * _sig(1850, 35) + 0.04 * _g(1650, 120))
    absorb = np.exp(-water * (0.05 * _g(970, 30) + 0.14 * _g(1200, 45) + 0.9 * _g(1450, 60)
                              + 1.4 * _g(1940, 80) + 0.4 * _sig(2420, 60)))
    return np.clip(visible * (1 - step) + plateau * step * absorb, 0.002, 1.0)


def soil(*, bright: float, iron: float = 0.04, clay: float = 0.0, carbonate: float = 0.0
         ) -> np.ndarray:
    """A mineral soil continuum, hydroxyl/water dips, optional narrow clay (Al–OH, 2205 nm) and
    carbonate (2335 nm) absorptions."""
    r = bright * (0.35 + 0.65 * (1 - np.exp(-(WL - 350) / 450)))
    r = r * (1 - 0.10 * _g(1415, 22) - 0.16 * _g(1915, 30) - iron * _g(900, 70))
    r = r * (1 - clay * _g(2205, 11) - 0.3 * clay * _g(2165, 9))
    r = r * (1 - carbonate * _g(2338, 14) - 0.25 * carbonate * _g(2160, 20))
    return np.clip(r, 0.002, 1.0)


def asphalt(*, bright: float = 1.0) -> np.ndarray:
    r = 0.045 + 0.06 * np.clip((WL - 400) / 1600, 0, 1) + 0.01 * _sig(500, 60)
    r = r * (1 - 0.08 * _g(1730, 14) - 0.10 * _g(2310, 18))
    return np.clip(bright * r, 0.002, 1.0)


def concrete() -> np.ndarray:
    r = 0.20 + 0.12 * (1 - np.exp(-(WL - 350) / 220))
    r = r * (1 - 0.05 * _g(1415, 25) - 0.08 * _g(1915, 35) - 0.06 * _g(2340, 20))
    return np.clip(r, 0.002, 1.0)


def membrane(depth: float) -> np.ndarray:
    """A polymer roofing membrane on the concrete continuum: identical but for narrow C–H
    overtone absorptions (915, 1210, 1730, 2310 nm)."""
    features = (_g(915, 8.0) + 0.9 * _g(1212, 9.0) + 1.2 * _g(1728, 9.0) + 1.0 * _g(2310, 10.0))
    return np.clip(concrete() * (1 - depth * features), 0.002, 1.0)


def water(turbidity: float = 0.01) -> np.ndarray:
    return 0.004 + 0.04 * _g(480, 80) + turbidity * _g(580, 60) + 0.004 * _g(700, 40)


def white_paint() -> np.ndarray:
    return np.clip(0.72 * _sig(408, 7) * (1 - 0.08 * _sig(1500, 200)), 0.02, 1.0)


def car_paint(color: str) -> np.ndarray:
    base = {
        "red": 0.05 + 0.40 * _sig(600, 12) * (1 - 0.3 * _sig(1400, 200)),
        "blue": 0.05 + 0.22 * _g(460, 40) + 0.25 * _sig(780, 40),
        "silver": 0.42 - 0.06 * np.clip((WL - 400) / 2100, 0, 1),
        "dark": 0.035 + 0.02 * np.clip((WL - 400) / 2100, 0, 1),
    }[color]
    return np.clip(base, 0.01, 1.0)


def metal_roof() -> np.ndarray:
    r = 0.42 - 0.08 * np.clip((WL - 400) / 2100, 0, 1) + 0.03 * _g(500, 60)
    return np.clip(r, 0.01, 1.0)


def dry_vegetation() -> np.ndarray:
    """Straw / senescent grass: no chlorophyll, a cellulose-lignin band at 2100 nm."""
    r = 0.10 + 0.28 * (1 - np.exp(-(WL - 380) / 300)) - 0.05 * _g(680, 30)
    r = r * (1 - 0.12 * _g(1450, 50) - 0.2 * _g(1930, 60) - 0.15 * _g(2100, 35))
    return np.clip(r, 0.01, 1.0)


def gravel() -> np.ndarray:
    r = 0.22 + 0.1 * (1 - np.exp(-(WL - 350) / 500))
    r = r * (1 - 0.04 * _g(1915, 30) - 0.05 * _g(2338, 14))
    return np.clip(r, 0.01, 1.0)


class Material(IntEnum):
    """Surface materials; several classes share one (a road and a roof of the same asphalt)."""

    NONE = 0
    ASPHALT = 1
    CONCRETE = 2
    MEMBRANE = 3
    PAINT = 4
    CAR_RED = 5
    CAR_BLUE = 6
    CAR_SILVER = 7
    CAR_DARK = 8
    GRASS = 9
    SHRUB = 10
    TREE = 11
    CROP = 12
    CEREAL = 13
    SOIL = 14
    SOIL_CLAY = 15
    SOIL_CARBONATE = 16
    WATER = 17
    GRAVEL = 18
    METAL = 19
    DRY_VEGETATION = 20


VEGETATION = frozenset({Material.GRASS, Material.SHRUB, Material.TREE, Material.CROP,
                        Material.CEREAL})
SOILS = frozenset({Material.SOIL, Material.SOIL_CLAY, Material.SOIL_CARBONATE})

# Leaf parameters (vis, green, red, edge nm, nir, water); class contrasts are scaled towards the
# mean of the grass/shrub/tree triple by the difficulty.
_VEG_PARAMS: dict[Material, tuple[float, float, float, float, float, float]] = {
    Material.GRASS: (0.050, 0.075, 0.035, 716.0, 0.43, 0.9),
    Material.SHRUB: (0.045, 0.065, 0.030, 720.0, 0.40, 1.0),
    Material.TREE: (0.040, 0.055, 0.026, 724.0, 0.36, 1.15),
    Material.CEREAL: (0.050, 0.080, 0.036, 717.0, 0.44, 0.95),
    Material.CROP: (0.052, 0.090, 0.034, 721.0, 0.49, 1.0),
}


@dataclass(frozen=True)
class MaterialSpectra:
    """Band-resampled spectra: ``mean[m]``, ``slope[m]``, ``specific[m]``, each (bands,)."""

    mean: np.ndarray  # (n_materials, bands)
    slope: np.ndarray
    specific: np.ndarray
    nir_reflectance: np.ndarray  # (n_materials,) at 1064 nm, for the LiDAR intensity


def library(bands: BandSet, *, difficulty: float) -> MaterialSpectra:
    """All materials seen through ``bands``. ``difficulty`` shrinks the designed contrasts."""
    contrast = 1.15 - 0.8 * difficulty  # 1.15 at 0, 0.75 at 0.5, 0.35 at 1
    n = len(Material)
    hi = np.zeros((n, WL.size))
    spec = np.zeros((n, WL.size))
    veg_mean = np.mean([_VEG_PARAMS[m] for m in (Material.GRASS, Material.SHRUB, Material.TREE)],
                       axis=0)
    for m in Material:
        if m in _VEG_PARAMS:
            p = np.array(_VEG_PARAMS[m])
            if m in (Material.GRASS, Material.SHRUB, Material.TREE):
                p = veg_mean + (p - veg_mean) * contrast
            vis, green, red, edge, nir, wat = (float(v) for v in p)
            hi[m] = vegetation(vis=vis, green=green, red=red, edge=edge, nir=nir, water=wat)
            spec[m] = vegetation(vis=vis, green=green + 0.012, red=red - 0.004, edge=edge + 4,
                                 nir=nir + 0.05, water=wat) - hi[m]
        elif m in SOILS:
            depth = 0.13 * contrast
            hi[m] = soil(bright=0.30, clay=depth if m == Material.SOIL_CLAY else 0.0,
                         carbonate=depth if m == Material.SOIL_CARBONATE else 0.0,
                         iron=0.06 if m == Material.SOIL else 0.04)
            spec[m] = -hi[m] * (0.25 + 0.2 * _g(1450, 60) + 0.3 * _g(1940, 80))
        elif m == Material.WATER:
            hi[m] = water()
            spec[m] = 0.02 * _g(580, 60)
        else:
            hi[m] = {
                Material.NONE: np.full(WL.size, 0.1),
                Material.ASPHALT: asphalt(),
                Material.CONCRETE: concrete(),
                Material.MEMBRANE: membrane(0.16 * contrast),
                Material.PAINT: white_paint(),
                Material.CAR_RED: car_paint("red"),
                Material.CAR_BLUE: car_paint("blue"),
                Material.CAR_SILVER: car_paint("silver"),
                Material.CAR_DARK: car_paint("dark"),
                Material.GRAVEL: gravel(),
                Material.METAL: metal_roof(),
                Material.DRY_VEGETATION: dry_vegetation(),
            }[m]
            spec[m] = 0.12 * hi[m] * (1 - 2 * _sig(700, 150))  # ageing / tint: blue vs red
    slope = hi * ((WL - 1000.0) / 1500.0)[None, :] * 0.5
    nir_idx = int(np.argmin(np.abs(WL - 1064.0)))
    return MaterialSpectra(
        mean=bands.resample(hi).astype(np.float64),
        slope=bands.resample(slope).astype(np.float64),
        specific=bands.resample(spec).astype(np.float64),
        nir_reflectance=hi[:, nir_idx].copy(),
    )
