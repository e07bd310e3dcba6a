"""Drawing on the render grid: the rotated canvas and the painter of each parcel kind.

Coordinates are metres in a frame rotated by the scene's angle; the canvas keeps, per render
pixel, the class id, an object id, two materials with the share of the first, and the height
above ground (see :class:`s2fin_cli.synth.layout.Layout`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from s2fin_cli.synth.config import SynthConfig
from s2fin_cli.synth.spectra import Material

M = Material


@dataclass
class Rect:
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


class Canvas:
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

    def window(self, rect: Rect, pad: float = 0.0) -> tuple[slice, slice] | None:
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

    def local(self, sl: tuple[slice, slice], rect: Rect) -> tuple[np.ndarray, np.ndarray,
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


def stripe_rows(s: np.ndarray, period: float, duty: float, pixel: float) -> np.ndarray:
    """Share of a pixel covered by rows (width duty*period every ``period`` m) along ``s``: the
    first harmonic of the square wave, attenuated by the pixel's box filter (anti-aliased)."""
    p = period / pixel
    atten = abs(np.sinc(1.0 / p)) if p > 1.0 else 0.0
    wave = np.cos(2 * np.pi * s / period)
    f = duty + (2 / np.pi) * math.sin(np.pi * duty) * atten * wave * 1.25
    return np.clip(f, 0.0, 1.0).astype(np.float32)


def line_cover(s: np.ndarray, spacing: float, width: float, pixel: float,
                offset: float = 0.0) -> np.ndarray:
    """Share of a pixel covered by thin lines (``width`` m) every ``spacing`` m along ``s``."""
    d = np.abs(np.mod(s - offset + spacing / 2, spacing) - spacing / 2)
    cover = np.clip((width / 2 + pixel / 2 - d) / pixel, 0.0, min(1.0, width / pixel))
    return cover.astype(np.float32)


@dataclass
class Keys:
    road: int
    grass: int
    trees: int
    shrubs: int


class Painter:
    """Draws parcels of each kind on the canvas."""

    def __init__(self, cv: Canvas, rng: np.random.Generator, config: SynthConfig) -> None:
        self.cv = cv
        self.rng = rng
        self.config = config
        cid = config.class_id
        keys = {c.key for c in config.class_specs}
        self.urban = config.preset == "urban"
        self.keys = Keys(
            road=cid("road"),
            grass=cid("grass") if "grass" in keys else cid("meadow"),
            trees=cid("trees") if "trees" in keys else cid("forest"),
            shrubs=cid("shrubs") if "shrubs" in keys else cid("hedgerow"),
        )
        self.kinds: dict[str, Callable[[Rect], None]] = {
            "meadow": self.meadow, "woodland": self.woodland, "shrubland": self.shrubland,
            "water": self.water, "parking": self.parking, "farmyard": self.farmyard,
        }

    # ---------------------------------------------------------------------------------- ground
    def ground(self, rect: Rect, cls: int, mat: int, height: float = 0.0) -> int:
        obj = self.cv.new_object()
        sl = self.cv.window(rect)
        if sl is not None:
            _, _, inside = self.cv.local(sl, rect)
            self.cv.paint(sl, inside, cls, obj, mat, height=height)
        return obj

    def crowns(self, rect: Rect, cls: int, mat: int, *, cover: float, radius: tuple[float, float],
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
            disc = Rect(cu - r, cu + r, cvv - r, cvv + r)
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
    def meadow(self, rect: Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        area = rect.du * rect.dv
        self.crowns(rect, self.keys.shrubs, M.SHRUB, cover=float(self.rng.uniform(0.0, 0.06)),
                    radius=(0.8, 2.2), tall=(0.6, 2.5))
        if area > 600 and self.rng.random() < 0.6:
            self.crowns(rect, self.keys.trees, M.TREE, cover=float(self.rng.uniform(0.02, 0.08)),
                        radius=(2.5, 5.0), tall=(7.0, 18.0))

    def woodland(self, rect: Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        self.crowns(rect, self.keys.shrubs, M.SHRUB, cover=0.35, radius=(0.8, 2.0),
                    tall=(0.5, 3.0))
        big = self.config.preset != "urban"
        self.crowns(rect, self.keys.trees, M.TREE, cover=0.9 if big else 0.7,
                    radius=(2.5, 6.0) if big else (2.0, 5.0), tall=(8.0, 25.0))

    def shrubland(self, rect: Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        self.crowns(rect, self.keys.shrubs, M.SHRUB, cover=float(self.rng.uniform(0.5, 0.8)),
                    radius=(0.8, 2.5), tall=(0.6, 3.0))

    def water(self, rect: Rect) -> None:
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
        shore = Rect(rect.u0, rect.u1, rect.v0, rect.v1)
        self.crowns(shore, self.keys.shrubs, M.SHRUB, cover=0.04, radius=(0.8, 2.0),
                    tall=(0.5, 2.5))
        # Drawn after the shore shrubs, so crowns never cover the pond.
        self.cv.paint(sl, mask, self.config.class_id("water"), self.cv.new_object(), M.WATER)

    def building(self, rect: Rect, cls: int, roof: int, tall: tuple[float, float],
                 surround: bool = True) -> None:
        if surround:
            self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        inset_u = min(rect.du * 0.3, float(self.rng.uniform(1.5, 5.0)))
        inset_v = min(rect.dv * 0.3, float(self.rng.uniform(1.5, 5.0)))
        fp = Rect(rect.u0 + inset_u, rect.u1 - inset_u, rect.v0 + inset_v, rect.v1 - inset_v)
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
                    strip = (Rect(lo, lo + band, rect.v0, rect.v1) if side == "u"
                             else Rect(rect.u0, rect.u1, lo, lo + band))
                    self.crowns(strip, self.keys.shrubs, M.SHRUB, cover=0.3, radius=(0.7, 1.5),
                                tall=(0.5, 2.0))
            if self.rng.random() < 0.5:
                ring = Rect(rect.u0, rect.u0 + max(inset_u, 1.0), rect.v0, rect.v1)
                self.crowns(ring, self.keys.trees, M.TREE, cover=0.5, radius=(2.0, 4.0),
                            tall=(6.0, 15.0), max_count=3)

    def parking(self, rect: Rect) -> None:
        sl = self.cv.window(rect)
        if sl is None:
            return
        a, b, inside = self.cv.local(sl, rect)
        if self.rng.random() < 0.5:
            a, b = b, a
        px = self.cv.pixel
        pos = np.mod(a, 16.0)
        bay_row = (pos < 5.0) | (pos >= 11.0)
        stripe = line_cover(b, 2.5, 0.12, px) * bay_row
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

    def rows(self, rect: Rect, cls: int, mat_row: int, mat_gap: int, *, period: float,
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
                frac -= line_cover(s, spacing, 0.5, self.cv.pixel, offset=off)
            frac = np.clip(frac, 0, 1)
        else:
            frac = stripe_rows(s + float(self.rng.uniform(0, period)), period, duty, self.cv.pixel)
        height = (tall * np.clip(frac * 1.6, 0, 1)).astype(np.float32)
        self.cv.paint(sl, inside, cls, self.cv.new_object(), mat_row, mat_gap, frac, height)

    def row_crops(self, rect: Rect, soil_mat: int = M.SOIL) -> None:
        period = float(self.rng.uniform(1.8, 3.2))
        self.rows(rect, self.config.class_id("row_crops"), M.CROP, soil_mat, period=period,
                  duty=float(self.rng.uniform(0.45, 0.6)), tall=float(self.rng.uniform(0.3, 1.0)))

    def vineyard(self, rect: Rect) -> None:
        gap = int(self.rng.choice([M.SOIL, M.DRY_VEGETATION, M.GRASS]))
        period = float(self.rng.uniform(2.4, 3.0))
        self.rows(rect, self.config.class_id("vineyard"), M.CROP, gap, period=period,
                  duty=float(self.rng.uniform(0.28, 0.38)), tall=float(self.rng.uniform(1.6, 2.0)))

    def cereal(self, rect: Rect) -> None:
        self.rows(rect, self.config.class_id("cereal"), M.CEREAL, M.SOIL, period=0.25, duty=0.9,
                  tall=float(self.rng.uniform(0.5, 1.0)), tramlines=True)

    def farmyard(self, rect: Rect) -> None:
        self.ground(rect, self.keys.grass, M.GRASS, 0.1)
        # A farmstead of at most 70 x 50 m in a corner of the parcel.
        du, dv = min(rect.du - 4, 70.0), min(rect.dv - 4, 50.0)
        yard = (Rect(rect.u0 + 2, rect.u0 + 2 + du, rect.v0 + 2, rect.v0 + 2 + dv)
                if du >= 8 and dv >= 8 else rect)
        self.ground(yard, self.keys.road, M.GRAVEL)
        n = int(self.rng.integers(1, 4))
        for i in range(n):  # sheds side by side along u
            w = yard.du / n
            lot = Rect(yard.u0 + i * w, yard.u0 + (i + 1) * w, yard.v0, yard.v1)
            self.building(lot, self.config.class_id("farm_building"), M.METAL, (5.0, 11.0),
                          surround=False)

    def hedgerow(self, rect: Rect, side: int) -> None:
        width = float(self.rng.uniform(3.0, 6.0))
        if side == 0:
            strip = Rect(rect.u0, rect.u0 + width, rect.v0, rect.v1)
        elif side == 1:
            strip = Rect(rect.u1 - width, rect.u1, rect.v0, rect.v1)
        elif side == 2:
            strip = Rect(rect.u0, rect.u1, rect.v0, rect.v0 + width)
        else:
            strip = Rect(rect.u0, rect.u1, rect.v1 - width, rect.v1)
        cls = self.keys.shrubs
        self.ground(strip, cls, M.SHRUB, 1.0)
        self.crowns(strip, cls, M.SHRUB, cover=0.9, radius=(1.0, 2.5), tall=(1.5, 4.5))
        self.crowns(strip, cls, M.TREE, cover=0.15, radius=(2.0, 3.5), tall=(6.0, 12.0))
