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
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from s2fin_cli.synth.canvas import Canvas, Painter, Rect, line_cover
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


def _split(rect: Rect, max_side: float, min_side: float, rng: np.random.Generator
           ) -> list[Rect]:
    long_u = rect.du >= rect.dv
    side = rect.du if long_u else rect.dv
    if side <= max_side or side < 2 * min_side:
        return [rect]
    t = float(rng.uniform(0.38, 0.62))
    if long_u:
        cut = rect.u0 + t * rect.du
        parts = [Rect(rect.u0, cut, rect.v0, rect.v1), Rect(cut, rect.u1, rect.v0, rect.v1)]
    else:
        cut = rect.v0 + t * rect.dv
        parts = [Rect(rect.u0, rect.u1, rect.v0, cut), Rect(rect.u0, rect.u1, cut, rect.v1)]
    return [r for p in parts for r in _split(p, max_side, min_side, rng)]


@dataclass(frozen=True)
class _RoadGrid:
    """Road centre lines (rotated frame) across u and v, with their widths."""

    u_cuts: list[float]
    v_cuts: list[float]
    widths_u: list[float]
    widths_v: list[float]


def _road_grid(urban: bool, scene_m: float, ext: float, rng: np.random.Generator) -> _RoadGrid:
    """A jittered grid in the rotated frame, scaled to the scene so that there are enough
    parcels for every kind; farmland has fewer roads."""
    fit = min(1.0, scene_m / (220.0 if urban else 700.0))
    spacing = ((60.0, 120.0) if urban else (180.0, 420.0))
    spacing = (max(28.0, spacing[0] * fit), max(40.0, spacing[1] * fit))
    u_cuts = _cuts(-ext, ext, spacing, rng)
    v_cuts = _cuts(-ext, ext, spacing, rng)
    if not urban:
        u_cuts = u_cuts[::2] or u_cuts
        v_cuts = v_cuts[1::2] or v_cuts[:1]
    widths_u = [float(rng.uniform(6, 11) if urban else rng.uniform(4, 7)) for _ in u_cuts]
    widths_v = [float(rng.uniform(6, 11) if urban else rng.uniform(4, 7)) for _ in v_cuts]
    return _RoadGrid(u_cuts, v_cuts, widths_u, widths_v)


def _parcels(cv: Canvas, roads: _RoadGrid, max_side: float, min_side: float,
             rng: np.random.Generator) -> list[tuple[Rect, int]]:
    """The blocks between roads (each one grass-verge object), split into parcels of at least
    40 m² visible, with their visible render pixels."""
    ext, pixel = cv.half_extent, cv.pixel
    edges_u = [-ext - 50.0, *roads.u_cuts, ext + 50.0]
    edges_v = [-ext - 50.0, *roads.v_cuts, ext + 50.0]
    half_u = [0.0, *(w / 2 for w in roads.widths_u), 0.0]
    half_v = [0.0, *(w / 2 for w in roads.widths_v), 0.0]
    parcels: list[tuple[Rect, int]] = []
    for i in range(len(edges_u) - 1):
        for j in range(len(edges_v) - 1):
            verge = float(rng.uniform(1.0, 3.0))
            block = Rect(edges_u[i] + half_u[i] + verge, edges_u[i + 1] - half_u[i + 1] - verge,
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
    return parcels


def _assign_kinds(parcels: list[tuple[Rect, int]], kinds: tuple[tuple[str, float], ...],
                  rng: np.random.Generator) -> dict[int, str]:
    """Every kind once (twice when there is room), the largest parcels first for the kinds that
    need room, then by weight."""
    order = sorted(range(len(parcels)), key=lambda k: -parcels[k][1])
    names = [k for k, _ in kinds]
    weights = np.array([w for _, w in kinds])
    assigned: list[str] = []
    rounds = 2 if len(parcels) >= 2 * len(kinds) else 1
    required = [n for _ in range(rounds) for n in rng.permutation(names).tolist()]
    for k in range(len(parcels)):
        if k < len(required):
            assigned.append(str(required[k]))
        else:
            assigned.append(str(rng.choice(names, p=weights / weights.sum())))
    return {order[k]: assigned[k] for k in range(len(parcels))}


_FIELD_KINDS = ("meadow", "cereal", "row_crops", "vineyard", "soil_clay", "soil_carbonate",
                "bare_soil")


def _hedgerows(painter: Painter, parcels: list[tuple[Rect, int]], kind_of: dict[int, str],
               rng: np.random.Generator) -> None:
    """Hedgerows along some field edges (agricultural presets), at least two."""
    fields = [k for k in range(len(parcels)) if kind_of[k] in _FIELD_KINDS]
    chosen = [k for k in fields if rng.random() < 0.3]
    if len(chosen) < 2:
        chosen = fields[:2] if len(fields) >= 2 else list(range(min(2, len(parcels))))
    for k in chosen:
        painter.hedgerow(parcels[k][0], int(rng.integers(0, 4)))


def _roads(cv: Canvas, painter: Painter, roads: _RoadGrid, urban: bool,
           rng: np.random.Generator) -> None:
    """Roads on top of the parcels: one object per segment between crossings; asphalt with a
    dashed centre line (gravel for half the farm roads); street trees along urban roads."""
    ext = cv.half_extent
    for axis, cuts, widths in (("u", roads.u_cuts, roads.widths_u),
                               ("v", roads.v_cuts, roads.widths_v)):
        other = roads.v_cuts if axis == "u" else roads.u_cuts
        bounds = [-ext - 50.0, *other, ext + 50.0]
        for pos, width in zip(cuts, widths, strict=True):
            mat = M.ASPHALT if urban or rng.random() < 0.5 else M.GRAVEL
            for s0, s1 in itertools.pairwise(bounds):
                rect = (Rect(pos - width / 2, pos + width / 2, s0, s1) if axis == "u"
                        else Rect(s0, s1, pos - width / 2, pos + width / 2))
                _road_segment(cv, painter, rect, axis, mat, width)
            if urban and rng.random() < 0.5:
                _street_trees(painter, axis, pos, width, ext, rng)


def _road_segment(cv: Canvas, painter: Painter, rect: Rect, axis: str, mat: Material,
                  width: float) -> None:
    sl = cv.window(rect)
    if sl is None:
        return
    a, b, inside = cv.local(sl, rect)
    along = b if axis == "u" else a
    across = a if axis == "u" else b
    frac: float | np.ndarray = 1.0
    if mat == M.ASPHALT:  # dashed centre line, 3 m on / 6 m off
        line = line_cover(across, 1e9, 0.15, cv.pixel, offset=width / 2)
        frac = 1.0 - line * (np.mod(along, 9.0) < 3.0)
    if inside.any():
        cv.paint(sl, inside, painter.keys.road, cv.new_object(), mat, M.PAINT, frac)


def _street_trees(painter: Painter, axis: str, pos: float, width: float, ext: float,
                  rng: np.random.Generator) -> None:
    side = 1 if rng.random() < 0.5 else -1
    for s in np.arange(-ext, ext, float(rng.uniform(9.0, 14.0))):
        r = float(rng.uniform(2.0, 3.5))
        c = pos + side * (width / 2 + 1.0)
        spot = (Rect(c - r, c + r, float(s) - r, float(s) + r) if axis == "u"
                else Rect(float(s) - r, float(s) + r, c - r, c + r))
        painter.crowns(spot, painter.keys.trees, M.TREE, cover=0.8,
                       radius=(r, r), tall=(6.0, 14.0), max_count=1)


def generate_layout(config: SynthConfig, rng: np.random.Generator) -> Layout:
    """Draw the scene's layout on the render grid."""
    os_ = config.oversample
    shape = (config.height * os_, config.width * os_)
    pixel = config.pixel_size / os_
    urban = config.preset == "urban"
    angle = float(rng.uniform(-0.45, 0.45))
    cv = Canvas(shape, pixel, angle)
    painter = Painter(cv, rng, config)
    kinds = PRESET_KINDS[config.preset]
    scene_m = min(shape) * pixel
    roads = _road_grid(urban, scene_m, cv.half_extent, rng)

    # Background: grass verges (one object per block).
    cv.classes[:] = painter.keys.grass
    cv.mat_a[:] = M.GRASS
    cv.mat_b[:] = M.GRASS
    cv.height[:] = 0.1

    max_side = min(45.0 if urban else 220.0, math.sqrt(scene_m * scene_m / (2.6 * len(kinds))))
    min_side = max(8.0, max_side * 0.4) if urban else max(20.0, max_side * 0.35)
    parcels = _parcels(cv, roads, max_side, min_side, rng)
    kind_of = _assign_kinds(parcels, kinds, rng)
    for idx, (rect, _) in enumerate(parcels):
        _draw(painter, kind_of[idx], rect)
    if not urban:
        _hedgerows(painter, parcels, kind_of, rng)
    _roads(cv, painter, roads, urban, rng)

    base = {"urban": 520.0, "agricultural": 490.0, "msi-sar": 195.0}[config.preset]
    relief = {"urban": 3.0, "agricultural": 5.0, "msi-sar": 8.0}[config.preset]
    dem = _terrain(shape, pixel, rng, relief, base)
    _flatten(cv, dem, config)
    return Layout(shape, pixel, cv.classes, cv.objects, cv.mat_a, cv.mat_b, cv.frac, cv.height,
                  dem, cv.n_objects, cv.buildings)


def _draw(painter: Painter, kind: str, rect: Rect) -> None:
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


def _flatten(cv: Canvas, dem: np.ndarray, config: SynthConfig) -> None:
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
