"""Scene layout: terrain, a rotated road grid, parcels and the objects on them.

Everything is drawn in metres in a frame rotated by a random angle (streets and fields are not
aligned with the UTM grid), on the *render grid*: the output grid refined ``oversample`` times.
Per render pixel the layout holds the class id, an object id (one building, one tree crown, one
field), two materials with the fraction of the first (a stripe of paint over asphalt, a pixel
half crop row and half soil), the height above ground (nDSM) and the terrain (DEM).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from s2fin_cli.synth.config import SynthConfig
from s2fin_cli.synth.spectra import Material

M = Material


@dataclass
class Layout:
    """The layout on the render grid (``shape``) with render pixels of ``pixel`` metres."""

    shape: tuple[int, int]
    pixel: float
    classes: np.ndarray  # uint8
    objects: np.ndarray  # int32, 0 = none
    mat_a: np.ndarray  # int16 Material
    mat_b: np.ndarray  # int16 Material
    frac: np.ndarray  # float32, share of mat_a in the pixel
    height: np.ndarray  # float32, metres above the terrain (nDSM)
    dem: np.ndarray  # float32, terrain elevation (m)
    n_objects: int
    buildings: list[int] = field(default_factory=list)  # object ids of buildings


@dataclass
class _Rect:
    u0: float
    u1: float
    v0: float
    v1: float

    @property
    def du(self) -> float:
        return self.u1 - self.u0

    @property
    def dv(self) -> float:
        return self.v1 - self.v0


class _Canvas:
    def __init__(self, shape: tuple[int, int], pixel: float, angle: float) -> None:
        h, w = shape
        self.shape = shape
        self.pixel = pixel
        self.cos, self.sin = math.cos(angle), math.sin(angle)
        y = ((np.arange(h, dtype=np.float64) + 0.5) * pixel - h * pixel / 2)[:, None]
        x = ((np.arange(w, dtype=np.float64) + 0.5) * pixel - w * pixel / 2)[None, :]
        self.u = (x * self.cos + y * self.sin).astype(np.float32)
        self.v = (-x * self.sin + y * self.cos).astype(np.float32)
        self.classes = np.zeros(shape, np.uint8)
        self.objects = np.zeros(shape, np.int32)
        self.mat_a = np.zeros(shape, np.int16)
        self.mat_b = np.zeros(shape, np.int16)
        self.frac = np.ones(shape, np.float32)
        self.height = np.zeros(shape, np.float32)
        self.n_objects = 0
        self.buildings: list[int] = []
        self.half_extent = 0.5 * pixel * math.hypot(h, w)

    def new_object(self) -> int:
        self.n_objects += 1
        return self.n_objects

    def window(self, rect: _Rect, pad: float = 0.0) -> tuple[slice, slice] | None:
        """The pixel window covering ``rect`` (plus ``pad`` metres), or None if off the scene."""
        us = (rect.u0 - pad, rect.u1 + pad)
        vs = (rect.v0 - pad, rect.v1 + pad)
        xs = [u * self.cos - v * self.sin for u in us for v in vs]
        ys = [u * self.sin + v * self.cos for u in us for v in vs]
        h, w = self.shape
        c0 = max(0, math.floor((min(xs) + w * self.pixel / 2) / self.pixel) - 1)
        c1 = min(w, math.ceil((max(xs) + w * self.pixel / 2) / self.pixel) + 1)
        r0 = max(0, math.floor((min(ys) + h * self.pixel / 2) / self.pixel) - 1)
        r1 = min(h, math.ceil((max(ys) + h * self.pixel / 2) / self.pixel) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return (slice(r0, r1), slice(c0, c1))

    def local(self, sl: tuple[slice, slice], rect: _Rect) -> tuple[np.ndarray, np.ndarray,
                                                                    np.ndarray]:
        """Parcel coordinates (a, b from the parcel corner) and the inside mask in a window."""
        a = self.u[sl] - rect.u0
        b = self.v[sl] - rect.v0
        inside = (a >= 0) & (a < rect.du) & (b >= 0) & (b < rect.dv)
        return a, b, inside

    def paint(self, sl: tuple[slice, slice], mask: np.ndarray, cls: int, obj: int,
              mat_a: int | np.ndarray, mat_b: int | np.ndarray | None = None,
              frac: float | np.ndarray = 1.0, height: float | np.ndarray = 0.0) -> None:
        def pick(value: float | int | np.ndarray) -> float | int | np.ndarray:
            return value[mask] if isinstance(value, np.ndarray) else value

        self.classes[sl][mask] = cls
        self.objects[sl][mask] = obj
        self.mat_a[sl][mask] = pick(mat_a)
        self.mat_b[sl][mask] = pick(mat_a if mat_b is None else mat_b)
        self.frac[sl][mask] = pick(frac)
        self.height[sl][mask] = pick(height)


def _rows(s: np.ndarray, period: float, duty: float, pixel: float) -> np.ndarray:
    """Share of a pixel covered by rows (width duty*period every ``period`` m) along ``s``: the
    first harmonic of the square wave, attenuated by the pixel's box filter (anti-aliased)."""
    p = period / pixel
    atten = abs(np.sinc(1.0 / p)) if p > 1.0 else 0.0
    wave = np.cos(2 * np.pi * s / period)
    f = duty + (2 / np.pi) * math.sin(np.pi * duty) * atten * wave * 1.25
    return np.clip(f, 0.0, 1.0).astype(np.float32)


def _line_cover(s: np.ndarray, spacing: float, width: float, pixel: float,
                offset: float = 0.0) -> np.ndarray:
    """Share of a pixel covered by thin lines (``width`` m) every ``spacing`` m along ``s``."""
    d = np.abs(np.mod(s - offset + spacing / 2, spacing) - spacing / 2)
    cover = np.clip((width / 2 + pixel / 2 - d) / pixel, 0.0, min(1.0, width / pixel))
    return cover.astype(np.float32)


@dataclass
class _Keys:
    road: int
    grass: int
    trees: int
    shrubs: int


class _Painter:
    """Draws parcels of each kind on the canvas."""

    def __init__(self, cv: _Canvas, rng: np.random.Generator, config: SynthConfig) -> None:
        self.cv = cv
        self.rng = rng
        self.config = config
        cid = config.class_id
        keys = {c.key for c in config.class_specs}
        self.urban = config.preset == "urban"
        self.keys = _Keys(
            road=cid("road"),
            grass=cid("grass") if "grass" in keys else cid("meadow"),
            trees=cid("trees") if "trees" in keys else cid("forest"),
            shrubs=cid("shrubs") if "shrubs" in keys else cid("hedgerow"),
        )
        self.kinds: dict[str, Callable[[_Rect], None]] = {
            "meadow": self.meadow, "woodland": self.woodland, "shrubland": self.shrubland,
            "water": self.water, "parking": self.parking, "farmyard": self.farmyard,
        }

    # ---------------------------------------------------------------------------------- ground
    def ground(self, rect: _Rect, cls: int, mat: int, height: float = 0.0) -> int:
        obj = self.cv.new_object()
        sl = self.cv.window(rect)
        if sl is not None:
            _, _, inside = self.cv.local(sl, rect)
            self.cv.paint(sl, inside, cls, obj, mat, height=height)
        return obj

    def crowns(self, rect: _Rect, cls: int, mat: int, *, cover: float, radius: tuple[float, float],
               tall: tuple[float, float], max_count: int = 400, mat_under: int | None = None
               ) -> None:
        """Round crowns (trees, shrubs) with dome heights, each its own object, inside rect."""
        area = rect.du * rect.dv
        mean_r = sum(radius) / 2
        count = min(max_count, round(cover * area / (math.pi * mean_r**2)))
        for _ in range(count):
            r = float(self.rng.uniform(*radius))
            h = float(self.rng.uniform(*tall))
            lo_u, lo_v = rect.u0 + r * 0.6, rect.v0 + r * 0.6
            cu = float(self.rng.uniform(lo_u, max(lo_u, rect.u1 - r * 0.6)))
            cvv = float(self.rng.uniform(lo_v, max(lo_v, rect.v1 - r * 0.6)))
            disc = _Rect(cu - r, cu + r, cvv - r, cvv + r)
            sl = self.cv.window(disc)
            if sl is None:
                continue
            _, _, inside = self.cv.local(sl, rect)
            du = self.cv.u[sl] - cu
            dv = self.cv.v[sl] - cvv
            # Slightly irregular outline.
            phase = float(self.rng.uniform(0, 2 * np.pi))
            rr = r * (1 + 0.12 * np.cos(3 * np.arctan2(dv, du) + phase))
            d = np.sqrt(du**2 + dv**2) / rr
            mask = (d < 1.0) & inside
            if not mask.any():
                continue
            dome = h * (0.35 + 0.65 * np.sqrt(np.clip(1 - d**2, 0, 1)))
            self.cv.paint(sl, mask, cls, self.cv.new_object(), mat,
                          mat_under if mat_under is not None else mat, 1.0, dome)

    # ---------------------------------------------------------------------------------- kinds
    def meadow(self, rect: _Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        area = rect.du * rect.dv
        self.crowns(rect, self.keys.shrubs, M.SHRUB, cover=float(self.rng.uniform(0.0, 0.06)),
                    radius=(0.8, 2.2), tall=(0.6, 2.5))
        if area > 600 and self.rng.random() < 0.6:
            self.crowns(rect, self.keys.trees, M.TREE, cover=float(self.rng.uniform(0.02, 0.08)),
                        radius=(2.5, 5.0), tall=(7.0, 18.0))

    def woodland(self, rect: _Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        self.crowns(rect, self.keys.shrubs, M.SHRUB, cover=0.35, radius=(0.8, 2.0),
                    tall=(0.5, 3.0))
        big = self.config.preset != "urban"
        self.crowns(rect, self.keys.trees, M.TREE, cover=0.9 if big else 0.7,
                    radius=(2.5, 6.0) if big else (2.0, 5.0), tall=(8.0, 25.0))

    def shrubland(self, rect: _Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        self.crowns(rect, self.keys.shrubs, M.SHRUB, cover=float(self.rng.uniform(0.5, 0.8)),
                    radius=(0.8, 2.5), tall=(0.6, 3.0))

    def water(self, rect: _Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        cu, cvv = (rect.u0 + rect.u1) / 2, (rect.v0 + rect.v1) / 2
        ru, rv = rect.du * self.rng.uniform(0.32, 0.44), rect.dv * self.rng.uniform(0.32, 0.44)
        sl = self.cv.window(rect)
        if sl is None:
            return
        du = (self.cv.u[sl] - cu) / ru
        dv = (self.cv.v[sl] - cvv) / rv
        ang = np.arctan2(dv, du)
        p1, p2 = (float(x) for x in self.rng.uniform(0, 2 * np.pi, 2))
        edge = 1 + 0.12 * np.sin(2 * ang + p1) + 0.08 * np.sin(5 * ang + p2)
        mask = np.sqrt(du**2 + dv**2) < edge
        shore = _Rect(rect.u0, rect.u1, rect.v0, rect.v1)
        self.crowns(shore, self.keys.shrubs, M.SHRUB, cover=0.04, radius=(0.8, 2.0),
                    tall=(0.5, 2.5))
        # Drawn after the shore shrubs, so crowns never cover the pond.
        self.cv.paint(sl, mask, self.config.class_id("water"), self.cv.new_object(), M.WATER)

    def building(self, rect: _Rect, cls: int, roof: int, tall: tuple[float, float],
                 surround: bool = True) -> None:
        if surround:
            self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        inset_u = min(rect.du * 0.3, float(self.rng.uniform(1.5, 5.0)))
        inset_v = min(rect.dv * 0.3, float(self.rng.uniform(1.5, 5.0)))
        fp = _Rect(rect.u0 + inset_u, rect.u1 - inset_u, rect.v0 + inset_v, rect.v1 - inset_v)
        sl = self.cv.window(fp)
        if sl is None:
            return
        a, b, inside = self.cv.local(sl, fp)
        if self.rng.random() < 0.4 and fp.du > 12 and fp.dv > 12:  # L-shaped footprint
            cut_a = fp.du * float(self.rng.uniform(0.35, 0.6))
            cut_b = fp.dv * float(self.rng.uniform(0.35, 0.6))
            inside &= ~((a > fp.du - cut_a) & (b > fp.dv - cut_b))
        obj = self.cv.new_object()
        h = float(self.rng.uniform(*tall))
        mat = np.full(inside.shape, roof, np.int16)
        hh = np.full(inside.shape, h, np.float32)
        # Rooftop plant (HVAC boxes, skylights): part of the roof class, another material.
        for _ in range(int(self.rng.integers(0, 4)) if fp.du * fp.dv > 150 else 0):
            bu, bv = float(self.rng.uniform(1.5, 3.5)), float(self.rng.uniform(1.5, 3.0))
            pu = float(self.rng.uniform(1, max(1.0, fp.du - bu - 1)))
            pv = float(self.rng.uniform(1, max(1.0, fp.dv - bv - 1)))
            box = (a > pu) & (a < pu + bu) & (b > pv) & (b < pv + bv) & inside
            mat[box] = M.METAL
            hh[box] = h + float(self.rng.uniform(1.0, 2.5))
        self.cv.paint(sl, inside, cls, obj, mat, height=hh)
        self.cv.buildings.append(obj)
        if surround and self.urban:
            for band, side in ((inset_u, "u"), (inset_v, "v")):
                if band > 2.5 and self.rng.random() < 0.5:
                    lo = rect.u0 if side == "u" else rect.v0
                    strip = (_Rect(lo, lo + band, rect.v0, rect.v1) if side == "u"
                             else _Rect(rect.u0, rect.u1, lo, lo + band))
                    self.crowns(strip, self.keys.shrubs, M.SHRUB, cover=0.3, radius=(0.7, 1.5),
                                tall=(0.5, 2.0))
            if self.rng.random() < 0.5:
                ring = _Rect(rect.u0, rect.u0 + max(inset_u, 1.0), rect.v0, rect.v1)
                self.crowns(ring, self.keys.trees, M.TREE, cover=0.5, radius=(2.0, 4.0),
                            tall=(6.0, 15.0), max_count=3)

    def parking(self, rect: _Rect) -> None:
        sl = self.cv.window(rect)
        if sl is None:
            return
        a, b, inside = self.cv.local(sl, rect)
        if self.rng.random() < 0.5:
            a, b = b, a
        px = self.cv.pixel
        pos = np.mod(a, 16.0)
        bay_row = (pos < 5.0) | (pos >= 11.0)
        stripe = _line_cover(b, 2.5, 0.12, px) * bay_row
        frac = (1.0 - stripe).astype(np.float32)
        # Cars: one per bay with the lot's occupancy, a random paint each.
        row_idx = (np.floor(a / 16.0) * 2 + (pos >= 11.0)).astype(np.int64)
        col_idx = np.floor(b / 2.5).astype(np.int64)
        n_r, n_c = int(row_idx.max()) + 2, int(col_idx.max()) + 2
        occupied = self.rng.random((n_r, n_c)) < self.rng.uniform(0.3, 0.85)
        paints = np.array([M.CAR_RED, M.CAR_BLUE, M.CAR_SILVER, M.CAR_DARK, M.CAR_SILVER,
                           M.CAR_DARK], np.int16)
        color = paints[self.rng.integers(0, len(paints), (n_r, n_c))]
        ri, ci = np.clip(row_idx, 0, n_r - 1), np.clip(col_idx, 0, n_c - 1)
        in_bay_a = np.where(pos < 5.0, np.abs(pos - 2.5), np.abs(pos - 13.5))
        in_bay_b = np.abs(np.mod(b, 2.5) - 1.25)
        car = bay_row & occupied[ri, ci] & (in_bay_a < 2.25) & (in_bay_b < 0.9) & inside
        mat_a = np.where(car, color[ri, ci], M.ASPHALT).astype(np.int16)
        frac = np.where(car, 1.0, frac).astype(np.float32)
        height = np.where(car, 1.45, 0.0).astype(np.float32)
        self.cv.paint(sl, inside, self.config.class_id("parking"), self.cv.new_object(), mat_a,
                      M.PAINT, frac, height)

    def rows(self, rect: _Rect, cls: int, mat_row: int, mat_gap: int, *, period: float,
             duty: float, tall: float, tramlines: bool = False) -> None:
        sl = self.cv.window(rect)
        if sl is None:
            return
        a, b, inside = self.cv.local(sl, rect)
        angle = float(self.rng.choice([0.0, np.pi / 2]) + self.rng.normal(0, 0.05))
        s = a * math.cos(angle) + b * math.sin(angle)
        if tramlines:
            frac = np.ones(a.shape, np.float32)
            spacing = float(self.rng.choice([12.0, 18.0, 24.0]))
            for off in (-0.9, 0.9):  # the two wheel tracks of a tramline
                frac -= _line_cover(s, spacing, 0.5, self.cv.pixel, offset=off)
            frac = np.clip(frac, 0, 1)
        else:
            frac = _rows(s + float(self.rng.uniform(0, period)), period, duty, self.cv.pixel)
        height = (tall * np.clip(frac * 1.6, 0, 1)).astype(np.float32)
        self.cv.paint(sl, inside, cls, self.cv.new_object(), mat_row, mat_gap, frac, height)

    def row_crops(self, rect: _Rect, soil_mat: int = M.SOIL) -> None:
        period = float(self.rng.uniform(1.8, 3.2))
        self.rows(rect, self.config.class_id("row_crops"), M.CROP, soil_mat, period=period,
                  duty=float(self.rng.uniform(0.45, 0.6)), tall=float(self.rng.uniform(0.3, 1.0)))

    def vineyard(self, rect: _Rect) -> None:
        gap = int(self.rng.choice([M.SOIL, M.DRY_VEGETATION, M.GRASS]))
        period = float(self.rng.uniform(2.4, 3.0))
        self.rows(rect, self.config.class_id("vineyard"), M.CROP, gap, period=period,
                  duty=float(self.rng.uniform(0.28, 0.38)), tall=float(self.rng.uniform(1.6, 2.0)))

    def cereal(self, rect: _Rect) -> None:
        self.rows(rect, self.config.class_id("cereal"), M.CEREAL, M.SOIL, period=0.25, duty=0.9,
                  tall=float(self.rng.uniform(0.5, 1.0)), tramlines=True)

    def farmyard(self, rect: _Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        # A farmstead of at most 70 x 50 m in a corner of the parcel.
        du, dv = min(rect.du - 4, 70.0), min(rect.dv - 4, 50.0)
        yard = (_Rect(rect.u0 + 2, rect.u0 + 2 + du, rect.v0 + 2, rect.v0 + 2 + dv)
                if du >= 8 and dv >= 8 else rect)
        self.ground(yard, self.keys.road, M.GRAVEL)
        n = int(self.rng.integers(1, 4))
        for i in range(n):  # sheds side by side along u
            w = yard.du / n
            lot = _Rect(yard.u0 + i * w, yard.u0 + (i + 1) * w, yard.v0, yard.v1)
            self.building(lot, self.config.class_id("farm_building"), M.METAL, (5.0, 11.0),
                          surround=False)

    def hedgerow(self, rect: _Rect, side: int) -> None:
        width = float(self.rng.uniform(3.0, 6.0))
        if side == 0:
            strip = _Rect(rect.u0, rect.u0 + width, rect.v0, rect.v1)
        elif side == 1:
            strip = _Rect(rect.u1 - width, rect.u1, rect.v0, rect.v1)
        elif side == 2:
            strip = _Rect(rect.u0, rect.u1, rect.v0, rect.v0 + width)
        else:
            strip = _Rect(rect.u0, rect.u1, rect.v1 - width, rect.v1)
        cls = self.keys.shrubs
        self.ground(strip, cls, M.SHRUB, 1.0)
        self.crowns(strip, cls, M.SHRUB, cover=0.9, radius=(1.0, 2.5), tall=(1.5, 4.5))
        self.crowns(strip, cls, M.TREE, cover=0.15, radius=(2.0, 3.5), tall=(6.0, 12.0))


# Kinds of parcel per preset: (kind, weight). Every kind below appears at least once.
_URBAN_KINDS = (("roof_bitumen", 0.13), ("roof_concrete", 0.13), ("roof_membrane", 0.13),
                ("parking", 0.12), ("meadow", 0.1), ("woodland", 0.1), ("shrubland", 0.07),
                ("row_crops", 0.08), ("bare_soil", 0.07), ("water", 0.05))
_AGRI_KINDS = (("meadow", 0.14), ("cereal", 0.16), ("row_crops", 0.12), ("vineyard", 0.11),
               ("soil_clay", 0.09), ("soil_carbonate", 0.09), ("woodland", 0.1),
               ("water", 0.05), ("farmyard", 0.06), ("shrubland", 0.05))
_MSI_KINDS = (*((k, w) for k, w in _AGRI_KINDS if k not in ("soil_clay", "soil_carbonate")),
              ("bare_soil", 0.14))
PRESET_KINDS = {"urban": _URBAN_KINDS, "agricultural": _AGRI_KINDS, "msi-sar": _MSI_KINDS}


def _terrain(shape: tuple[int, int], pixel: float, rng: np.random.Generator,
             relief: float, base: float) -> np.ndarray:
    """A smooth DEM: low-frequency noise (bicubic from a coarse grid) plus a gentle slope."""
    h, w = shape
    extent = max(h, w) * pixel
    n = max(3, int(extent / 400.0) + 3)
    coarse = rng.normal(0, 1, (n, n))
    fine = ndimage.zoom(coarse, (h / n, w / n), order=3, mode="nearest")[:h, :w]
    fine = (fine - fine.mean()) / (fine.std() + 1e-9)
    gy, gx = rng.normal(0, 0.01, 2)
    yy, xx = np.mgrid[0:h, 0:w] * pixel
    dem = base + relief * fine + gx * (xx - xx.mean()) + gy * (yy - yy.mean())
    return dem.astype(np.float32)


def _cuts(lo: float, hi: float, spacing: tuple[float, float], rng: np.random.Generator
          ) -> list[float]:
    out = []
    pos = lo + float(rng.uniform(0.3, 0.8)) * spacing[0]
    while pos < hi:
        out.append(pos)
        pos += float(rng.uniform(*spacing))
    return out


def _split(rect: _Rect, max_side: float, min_side: float, rng: np.random.Generator
           ) -> list[_Rect]:
    long_u = rect.du >= rect.dv
    side = rect.du if long_u else rect.dv
    if side <= max_side or side < 2 * min_side:
        return [rect]
    t = float(rng.uniform(0.38, 0.62))
    if long_u:
        cut = rect.u0 + t * rect.du
        parts = [_Rect(rect.u0, cut, rect.v0, rect.v1), _Rect(cut, rect.u1, rect.v0, rect.v1)]
    else:
        cut = rect.v0 + t * rect.dv
        parts = [_Rect(rect.u0, rect.u1, rect.v0, cut), _Rect(rect.u0, rect.u1, cut, rect.v1)]
    return [r for p in parts for r in _split(p, max_side, min_side, rng)]


def generate_layout(config: SynthConfig, rng: np.random.Generator) -> Layout:
    """Draw the scene's layout on the render grid."""
    os_ = config.oversample
    shape = (config.height * os_, config.width * os_)
    pixel = config.pixel_size / os_
    urban = config.preset == "urban"
    angle = float(rng.uniform(-0.45, 0.45))
    cv = _Canvas(shape, pixel, angle)
    painter = _Painter(cv, rng, config)
    kinds = PRESET_KINDS[config.preset]
    scene_m = min(shape) * pixel

    # Roads: a jittered grid in the rotated frame, scaled to the scene so that there are enough
    # parcels for every kind.
    fit = min(1.0, scene_m / (220.0 if urban else 700.0))
    spacing = ((60.0, 120.0) if urban else (180.0, 420.0))
    spacing = (max(28.0, spacing[0] * fit), max(40.0, spacing[1] * fit))
    ext = cv.half_extent
    u_cuts = _cuts(-ext, ext, spacing, rng)
    v_cuts = _cuts(-ext, ext, spacing, rng)
    if not urban:  # farmland: fewer roads
        u_cuts = u_cuts[::2] or u_cuts
        v_cuts = v_cuts[1::2] or v_cuts[:1]
    widths_u = [float(rng.uniform(6, 11) if urban else rng.uniform(4, 7)) for _ in u_cuts]
    widths_v = [float(rng.uniform(6, 11) if urban else rng.uniform(4, 7)) for _ in v_cuts]

    # Background: grass verges (one object per block).
    cv.classes[:] = painter.keys.grass
    cv.mat_a[:] = M.GRASS
    cv.mat_b[:] = M.GRASS
    cv.height[:] = 0.1

    edges_u = [-ext - 50.0, *u_cuts, ext + 50.0]
    edges_v = [-ext - 50.0, *v_cuts, ext + 50.0]
    half_u = [0.0, *(w / 2 for w in widths_u), 0.0]
    half_v = [0.0, *(w / 2 for w in widths_v), 0.0]
    n_kinds = len(kinds)
    max_side = min(45.0 if urban else 220.0,
                   math.sqrt(scene_m * scene_m / (2.6 * n_kinds)))
    min_side = max(8.0, max_side * 0.4) if urban else max(20.0, max_side * 0.35)
    parcels: list[tuple[_Rect, int]] = []
    for i in range(len(edges_u) - 1):
        for j in range(len(edges_v) - 1):
            verge = float(rng.uniform(1.0, 3.0))
            block = _Rect(edges_u[i] + half_u[i] + verge, edges_u[i + 1] - half_u[i + 1] - verge,
                          edges_v[j] + half_v[j] + verge, edges_v[j + 1] - half_v[j + 1] - verge)
            if block.du < 4 or block.dv < 4:
                continue
            sl = cv.window(block)
            if sl is None:
                continue
            cv.objects[sl][cv.local(sl, block)[2]] = cv.new_object()
            for rect in _split(block, max_side, min_side, rng):
                rsl = cv.window(rect)
                if rsl is None:
                    continue
                visible = int(cv.local(rsl, rect)[2].sum())
                if visible * pixel * pixel >= 40.0:
                    parcels.append((rect, visible))

    # Kinds: every kind once (twice when there is room), the largest parcels first for the
    # kinds that need room, then by weight.
    order = sorted(range(len(parcels)), key=lambda k: -parcels[k][1])
    names = [k for k, _ in kinds]
    weights = np.array([w for _, w in kinds])
    assigned: list[str] = []
    rounds = 2 if len(parcels) >= 2 * n_kinds else 1
    required = [n for _ in range(rounds) for n in rng.permutation(names).tolist()]
    for k in range(len(parcels)):
        if k < len(required):
            assigned.append(str(required[k]))
        else:
            assigned.append(str(rng.choice(names, p=weights / weights.sum())))
    kind_of = {order[k]: assigned[k] for k in range(len(parcels))}

    for idx, (rect, _) in enumerate(parcels):
        kind = kind_of[idx]
        _draw(painter, kind, rect)

    # Hedgerows along some field edges (agricultural presets), at least two.
    if not urban:
        fields = [k for k in range(len(parcels)) if kind_of[k] in
                  ("meadow", "cereal", "row_crops", "vineyard", "soil_clay", "soil_carbonate",
                   "bare_soil")]
        chosen = [k for k in fields if rng.random() < 0.3]
        if len(chosen) < 2:
            chosen = fields[:2] if len(fields) >= 2 else list(range(min(2, len(parcels))))
        for k in chosen:
            painter.hedgerow(parcels[k][0], int(rng.integers(0, 4)))

    # Roads on top: one object per segment between crossings.
    road_mat = M.ASPHALT
    for axis, cuts, widths in (("u", u_cuts, widths_u), ("v", v_cuts, widths_v)):
        other = v_cuts if axis == "u" else u_cuts
        bounds = [-ext - 50.0, *other, ext + 50.0]
        for pos, width in zip(cuts, widths, strict=True):
            mat = road_mat if urban or rng.random() < 0.5 else M.GRAVEL
            for s0, s1 in itertools.pairwise(bounds):
                rect = (_Rect(pos - width / 2, pos + width / 2, s0, s1) if axis == "u"
                        else _Rect(s0, s1, pos - width / 2, pos + width / 2))
                sl = cv.window(rect)
                if sl is None:
                    continue
                a, b, inside = cv.local(sl, rect)
                along = b if axis == "u" else a
                across = a if axis == "u" else b
                frac: float | np.ndarray = 1.0
                if mat == M.ASPHALT:  # dashed centre line, 3 m on / 6 m off
                    line = _line_cover(across, 1e9, 0.15, pixel, offset=width / 2)
                    frac = 1.0 - line * (np.mod(along, 9.0) < 3.0)
                if inside.any():
                    cv.paint(sl, inside, painter.keys.road, cv.new_object(), mat, M.PAINT, frac)
            # Street trees along urban roads.
            if urban and rng.random() < 0.5:
                side = 1 if rng.random() < 0.5 else -1
                for s in np.arange(-ext, ext, float(rng.uniform(9.0, 14.0))):
                    r = float(rng.uniform(2.0, 3.5))
                    c = pos + side * (width / 2 + 1.0)
                    spot = (_Rect(c - r, c + r, float(s) - r, float(s) + r) if axis == "u"
                            else _Rect(float(s) - r, float(s) + r, c - r, c + r))
                    painter.crowns(spot, painter.keys.trees, M.TREE, cover=0.8,
                                   radius=(r, r), tall=(6.0, 14.0), max_count=1)

    base = {"urban": 520.0, "agricultural": 490.0, "msi-sar": 195.0}[config.preset]
    relief = {"urban": 3.0, "agricultural": 5.0, "msi-sar": 8.0}[config.preset]
    dem = _terrain(shape, pixel, rng, relief, base)
    _flatten(cv, dem, config)
    return Layout(shape, pixel, cv.classes, cv.objects, cv.mat_a, cv.mat_b, cv.frac, cv.height,
                  dem, cv.n_objects, cv.buildings)


def _draw(painter: _Painter, kind: str, rect: _Rect) -> None:
    cid = painter.config.class_id
    if kind.startswith("roof_"):
        roof = {"roof_bitumen": M.ASPHALT, "roof_concrete": M.CONCRETE,
                "roof_membrane": M.MEMBRANE}[kind]
        painter.building(rect, cid(kind), roof, (4.0, 25.0))
    elif kind == "row_crops":
        painter.row_crops(rect)
    elif kind == "vineyard":
        painter.vineyard(rect)
    elif kind == "cereal":
        painter.cereal(rect)
    elif kind in ("bare_soil", "soil_clay", "soil_carbonate"):
        mat = {"bare_soil": M.SOIL, "soil_clay": M.SOIL_CLAY,
               "soil_carbonate": M.SOIL_CARBONATE}[kind]
        painter.ground(rect, cid(kind), mat, 0.05)
    else:
        painter.kinds[kind](rect)


def _flatten(cv: _Canvas, dem: np.ndarray, config: SynthConfig) -> None:
    """Flat roofs and ponds on sloping terrain: a roof is ``h`` above the footprint's lowest
    ground; a pond's ground is dug down to its lowest point (the DEM is changed)."""
    water = config.class_id("water")
    ponds = {int(i) for i in np.unique(cv.objects[cv.classes == water])}
    ids = sorted(set(cv.buildings) | ponds)
    if not ids:
        return
    labels = np.where(np.isin(cv.objects, ids), cv.objects, 0)
    slices = ndimage.find_objects(labels)
    for obj in ids:
        sl = slices[obj - 1] if obj - 1 < len(slices) else None
        if sl is None:
            continue
        mask = labels[sl] == obj
        floor = float(dem[sl][mask].min())
        if obj in ponds:
            dem[sl][mask] = floor
            cv.height[sl][mask] = 0.0
        else:
            cv.height[sl][mask] += floor - dem[sl][mask]
