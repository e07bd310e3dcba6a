"""Shared fixtures: tiny georeferenced rasters written through s2fin's own writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from s2fin_cli.io.grid import Grid

REPO_ROOT = Path(__file__).resolve().parents[1]
# Real data lives beside the checkout and is never committed; tests that need it skip without it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

UTM32N = CRS.from_epsg(32632)


def utm_grid(width: int = 40, height: int = 30, res: float = 1.0,
             origin: tuple[float, float] = (660_000.0, 5_100_000.0)) -> Grid:
    """A grid in UTM zone 32N (around Trento) with square pixels of ``res`` metres."""
    return Grid(UTM32N, Affine(res, 0, origin[0], 0, -res, origin[1]), width, height)


@pytest.fixture
def grid() -> Grid:
    return utm_grid()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not present at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
