"""The pixel grid of a raster: CRS, affine transform and size.

The HSI grid is the reference grid of a scene: auxiliary rasters and labels are put on it, and
maps are written on it.
"""

from __future__ import annotations

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
    """A raster grid. ``crs`` is None for rasters without georeferencing."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @classmethod
    def of(cls, dataset: Any) -> Grid:
        """The grid of an open rasterio dataset (or WarpedVRT)."""
        crs = dataset.crs if dataset.crs else None
        return cls(crs, dataset.transform, int(dataset.width), int(dataset.height))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def bounds(self) -> BoundingBox:
        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return BoundingBox(west, south, east, north)

    @property
    def resolution(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def is_geographic(self) -> bool:
        return self.crs is not None and bool(self.crs.is_geographic)

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None

    def full_window(self) -> Window:
        return Window(0, 0, self.width, self.height)

    def same_as(self, other: Grid, *, tolerance: float = 1e-6) -> bool:
        """Same CRS, size and transform (coefficients equal within ``tolerance`` of a pixel)."""
        if self.shape != other.shape or self.crs != other.crs:
            return False
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
        }
