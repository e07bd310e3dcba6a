"""Helpers shared by the models tests: small configs keep the suite fast on a 2-core CPU.

A plain module (not conftest.py) so the test files can import it by a name no other test
directory uses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from models import S2FinConfig


def tiny_config(**overrides: object) -> S2FinConfig:
    """A small but complete network (every module on): ~30 k parameters."""
    base: dict[str, object] = dict(
        bands=12,
        reduced_bands=4,
        active_bands=1,
        num_classes=3,
        patch_size=7,
        spectral_window=3,
        dim=16,
        heads=2,
        hfset_depth=2,
        top_k=4,
        spatial_depth=1,
        long_range_depth=1,
        state_dim=4,
        ssm_heads=2,
        dropout=0.0,
    )
    base.update(overrides)
    return S2FinConfig(**base)  # type: ignore[arg-type]


def make_inputs(
    cfg: S2FinConfig, batch: int, seed: int = 0, scale: float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """Random (spectral, spatial, active) inputs with the shapes ``cfg`` expects."""
    g = torch.Generator().manual_seed(seed)
    p, s = cfg.patch_size, cfg.spectral_window
    spectral = torch.randn(batch, cfg.bands, s, s, generator=g) * scale
    spatial = torch.randn(batch, cfg.reduced_bands, p, p, generator=g) * scale
    active = torch.randn(batch, cfg.active_bands, p, p, generator=g) * scale
    return spectral, spatial, active
