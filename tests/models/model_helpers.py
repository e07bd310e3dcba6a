"""The models tests' preset of :func:`tests.helpers.tiny_config` (12 bands, 3 classes, two
HFSET blocks: ~30 k parameters, every module on) and random inputs of a config's shapes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models import S2FinConfig
from tests import helpers

_PRESET: dict[str, Any] = {"bands": 12, "aux_bands": 1, "num_classes": 3, "reduced_bands": 4,
                           "hfset_depth": 2, "state_dim": 4}


def tiny_config(**overrides: Any) -> S2FinConfig:
    """:func:`tests.helpers.tiny_config` with the models tests' preset."""
    if "active_bands" in overrides:
        overrides["aux_bands"] = overrides.pop("active_bands")
    return helpers.tiny_config(**{**_PRESET, **overrides})


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
