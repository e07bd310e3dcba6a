"""The pixel grid of a raster: CRS, affine transform and size.

The HSI grid is the reference grid of a scene: auxiliary rasters and labels are put on it, and
maps are written on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from affine import Affine
from rasterio.coords import BoundingBox
from rasterio.crs import CRS
from rasterio.transform import array_bounds
from rasterio.warp import transform_bounds
from rasterio.windows import Window


@dataclass(frozen=True)
class Grid:
    """A raster grid. ``crs`` is None for rasters without a map grid: no georeferencing, or
    georeferencing by ground control points only (``gcps``, in ``gcp_crs``), which s2fin carries
    to what it writes on the grid but cannot resample onto or reproject to."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int
    gcps: tuple[Any, ...] = ()  # rasterio GroundControlPoint
    gcp_crs: CRS | None = None

    @classmethod
    def of(cls, dataset: Any) -> Grid:
        """The grid of an open rasterio dataset (or WarpedVRT)."""
        crs = dataset.crs if dataset.crs else None
        gcps: tuple[Any, ...] = ()
        gcp_crs = None
        if crs is None:
            points, points_crs = getattr(dataset, "gcps", ((), None))
            if points:
                gcps, gcp_crs = tuple(points), (points_crs if points_crs else None)
        return cls(crs, dataset.transform, int(dataset.width), int(dataset.height), gcps,
                   gcp_crs)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> BoundingBox:
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return BoundingBox(west, south, east, north)

    @property
    def resolution(self) -> tuple[float, float]:
        """The true pixel size (x, y): the lengths of the transform's column and row vectors,
        so a rotated grid reports its pixels' size, not their projections on the axes."""
        t = self.transform
        return (math.hypot(t.a, t.d), math.hypot(t.b, t.e))

    @property
    def rotation(self) -> float:
        """The grid's rotation in degrees (counter-clockwise angle of its rows from map east);
        0 for a north-up grid."""
        angle = math.degrees(math.atan2(self.transform.d, self.transform.a))
        return 0.0 if abs(angle) < 1e-9 else angle

    @property
    def is_geographic(self) -> bool:
        return self.crs is not None and bool(self.crs.is_geographic)

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None

    @property
    def is_gcp_referenced(self) -> bool:
        """Georeferenced by ground control points only (no map grid)."""
        return self.crs is None and bool(self.gcps)

    def full_window(self) -> Window:
        return Window(0, 0, self.width, self.height)

    def same_as(self, other: Grid, *, tolerance: float = 1e-6) -> bool:
        """Same CRS, size and transform (coefficients equal within ``tolerance`` of a pixel)."""
        if self.shape != other.shape or self.crs != other.crs:
            return False
        if self.gcps or other.gcps:
            return (self.gcp_crs == other.gcp_crs and len(self.gcps) == len(other.gcps)
                    and all(_same_gcp(a, b) for a, b in zip(self.gcps, other.gcps, strict=True)))
        pixel = max(self.resolution) or 1.0
        return all(abs(a - b) <= tolerance * pixel
                   for a, b in zip(self.transform[:6], other.transform[:6], strict=True))

    def coverage_by(self, other: Grid) -> float:
        """Fraction of this grid's area inside ``other``'s footprint (0 when they do not meet).

        Both grids need a CRS; ``other``'s bounds are reprojected (densified edges) to ours.
        """
        if self.crs is None or other.crs is None:
            raise ValueError("coverage needs a CRS on both grids")
        west, south, east, north = transform_bounds(other.crs, self.crs, *other.bounds,
                                                    densify_pts=21)
        ref = self.bounds
        width = min(east, ref.right) - max(west, ref.left)
        height = min(north, ref.top) - max(south, ref.bottom)
        if width <= 0 or height <= 0:
            return 0.0
        area = (ref.right - ref.left) * (ref.top - ref.bottom)
        return min(1.0, width * height / area) if area > 0 else 0.0

    def describe(self) -> dict[str, Any]:
        """A JSON-ready description (used by ``inspect --json`` and the model file)."""
        return {
            "crs": self.crs.to_string() if self.crs else None,
            "transform": list(self.transform)[:6],
            "width": self.width,
            "height": self.height,
            "resolution": list(self.resolution),
            "bounds": list(self.bounds),
            "geographic": self.is_geographic,
            "rotation_deg": self.rotation,
            "gcps": len(self.gcps),
            "gcp_crs": self.gcp_crs.to_string() if self.gcp_crs else None,
        }


def _same_gcp(a: Any, b: Any) -> bool:
    values = [(float(getattr(a, k)), float(getattr(b, k))) for k in ("row", "col", "x", "y")]
    return all(abs(u - v) <= 1e-9 * max(1.0, abs(u)) for u, v in values)
