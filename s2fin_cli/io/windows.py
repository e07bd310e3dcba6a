"""Window arithmetic: blocks of a grid, halos, and reflect indices at scene borders.

Kept free of I/O so it can be property-tested against naive references.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from rasterio.windows import Window


def reflect_indices(start: int, length: int, size: int) -> np.ndarray:
    """Indices ``start .. start+length-1`` folded into ``0 .. size-1`` by mirror reflection.

    The reflection does not repeat the edge pixel (numpy's and torch's ``reflect`` mode:
    index -1 maps to 1). Unlike ``np.pad(mode="reflect")`` it works for any overhang, so scenes
    smaller than one patch (even a single pixel) still produce full patches.
    """
    idx = np.arange(start, start + length, dtype=np.int64)
    if size == 1:
        return np.zeros_like(idx)
    period = 2 * (size - 1)
    idx = np.mod(idx, period)
    return np.where(idx < size, idx, period - idx)


def iter_blocks(height: int, width: int, block_size: int) -> Iterator[Window]:
    """Row-major tiling of a grid into windows of at most ``block_size`` squared."""
    if block_size < 1:
        raise ValueError("block_size must be positive")
    for row in range(0, height, block_size):
        for col in range(0, width, block_size):
            yield Window(col, row, min(block_size, width - col), min(block_size, height - row))


def block_count(height: int, width: int, block_size: int) -> int:
    return -(-height // block_size) * -(-width // block_size)


def window_slices(window: Window) -> tuple[slice, slice]:
    """Row and column slices of an integer window."""
    row, col = int(window.row_off), int(window.col_off)
    return slice(row, row + int(window.height)), slice(col, col + int(window.width))
