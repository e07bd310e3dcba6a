"""The network can learn: it fits a small structured problem to 100 % training accuracy."""

from __future__ import annotations

import math

import torch
from model_helpers import tiny_config

from models import S2Fin


def _structured_problem(
    n: int, classes: int, bands: int, patch: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Four classes = two bits: bit 1 is only visible in the spectral shape (a low vs. a high band
    frequency), bit 0 only in the active-sensor height of a blob at the centre. Fitting needs both
    modalities; the spatial optical patch is pure noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    band_axis = torch.arange(bands, dtype=torch.float32)
    freqs = torch.tensor([0.1, 0.4])
    spectra = torch.cos(2 * math.pi * freqs[labels // 2, None] * band_axis)  # [n, bands]
    optical_full = spectra[:, :, None, None] + 1.0 * torch.randn(
        n, bands, patch, patch, generator=g
    )
    yy, xx = torch.meshgrid(torch.arange(patch), torch.arange(patch), indexing="ij")
    blob = torch.exp(-((yy - patch // 2) ** 2 + (xx - patch // 2) ** 2) / 4.0)
    spatial = 0.5 * torch.randn(n, 4, patch, patch, generator=g)
    active = torch.randn(n, 1, patch, patch, generator=g)
    active[:, 0] += 0.7 * (labels % 2).float()[:, None, None] * blob
    return optical_full, spatial, active, labels


def test_fits_64_structured_patches_to_full_training_accuracy() -> None:
    torch.manual_seed(0)
    cfg = tiny_config(bands=16, num_classes=4, patch_size=7, spectral_window=3, dim=24)
    model = S2Fin(cfg)
    optical_full, spatial, active, labels = _structured_problem(64, 4, 16, 7, seed=1)
    spectral = model.spectral_window(optical_full)
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    accuracy = 0.0
    for step in range(300):
        model.train()
        loss = torch.nn.functional.cross_entropy(model(spectral, spatial, active), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 10 == 9:
            model.eval()
            with torch.inference_mode():
                accuracy = (
                    (model(spectral, spatial, active).argmax(1) == labels).float().mean().item()
                )
            if accuracy == 1.0:
                break
    assert accuracy == 1.0, f"training accuracy {accuracy:.3f} after {step + 1} steps"
    assert loss.item() < 1.0
