"""Shared fixtures (built from :mod:`tests.helpers`, where the helpers live)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from s2fin_cli.io.grid import Grid
from tests.helpers import SHARED_DATA, utm_grid


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
