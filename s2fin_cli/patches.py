"""Cutting the network's three inputs around centre pixels, vectorised on the device.

S²Fin classifies the centre pixel of a patch. Per centre it sees a spectral patch (all z-scored
optical bands, ``spectral_window`` squared), a spatial optical patch (the PCA components,
``patch_size`` squared) and an active-sensor patch (``patch_size`` squared). Patches are gathered
with one advanced-indexing operation per batch: no Python loop per pixel, and only the current
batch of patches exists in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PatchGeometry:
    patch_size: int
    spectral_window: int

    @property
    def halo(self) -> int:
        """Pixels a block needs around it so every centre gets a full patch."""
        return self.patch_size // 2


def gather_patches(padded: Tensor, rows: Tensor, cols: Tensor, size: int) -> Tensor:
    """(N, C, size, size) patches of ``padded`` (C, H, W) centred at ``rows``/``cols`` (N,).

    Centres are in ``padded``'s own coordinates and must lie at least ``size // 2`` pixels
    inside it (callers read blocks with a halo of ``patch_size // 2``).
    """
    half = size // 2
    offsets = torch.arange(-half, half + 1, device=padded.device)
    r = rows.to(padded.device)[:, None] + offsets  # (N, size)
    c = cols.to(padded.device)[:, None] + offsets
    patches = padded[:, r[:, :, None], c[:, None, :]]  # (C, N, size, size)
    return patches.permute(1, 0, 2, 3).contiguous()


def cut_inputs(
    optical: Tensor, reduced: Tensor, aux: Tensor, rows: Tensor, cols: Tensor,
    geometry: PatchGeometry,
) -> tuple[Tensor, Tensor, Tensor]:
    """The network's (spectral, spatial, active) inputs for the centres ``rows``/``cols``."""
    return (
        gather_patches(optical, rows, cols, geometry.spectral_window),
        gather_patches(reduced, rows, cols, geometry.patch_size),
        gather_patches(aux, rows, cols, geometry.patch_size),
    )
