"""AFCM: adaptive frequency channel module (shallow fusion of the two spatial branches).

CONFIRMED (paper): in shallow layers, fuses low-frequency structure with enhanced high-frequency
detail, with adaptive per-channel weighting.

OURS (reconstruction):
- rfft2 of both shallow maps; a soft radial mask sigmoid((r0 - r) / T) with learnable r0 splits
  each spectrum into low and high parts (high = map - low, the masks sum to one);
- the low parts of BOTH modalities are summed (shared scene structure, e.g. LiDAR outlines help
  the optical branch and vice versa); each modality's own high part is enhanced by a depthwise 3x3;
- per modality and channel, weights for low vs high come from the band energies (mean squares)
  of all four parts through a small MLP, softmax over {low, high};
- residual: map + w_low * (low_opt + low_act) + w_high * enhanced_high.

Speed: the low-pass is a fixed linear map of each h x w channel, so it is applied as one
[h*w, h*w] matrix (built each call from the learnable mask through the exact rfft2/irfft2 matrices
of ``spectral_ops.real_dft2_matrices``) to the pixel axis of channels-last maps, instead of an FFT
round trip per channel. ``dense_dft = False`` selects the FFT form (same result to float32
rounding; the reference for tests and for FLOP counts, which then do not count the DFT).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .spectral_ops import (
    RealDFT2Matrices,
    autocast_disabled,
    map_tokens,
    radial_frequency,
    tokens_map,
)


class AFCM(nn.Module):
    dense_dft: bool  # low-pass as one matrix product (True) or as an FFT round trip

    def __init__(
        self, dim: int, radius_init: float, temperature: float, size: int | None = None
    ) -> None:
        """``size``: the side of the maps, when known, to keep the DFT matrices as buffers
        (:class:`~models.spectral_ops.RealDFT2Matrices`)."""
        super().__init__()
        self.dense_dft = True
        self.dft = RealDFT2Matrices(size)
        self.temperature = temperature
        self.radius_logit = nn.Parameter(torch.tensor(math.log(radius_init / (1 - radius_init))))
        self.high_optical = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.high_active = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.weights = nn.Sequential(nn.Linear(4 * dim, dim), nn.GELU(), nn.Linear(dim, 4 * dim))

    def low_mask(self, h: int, w: int, device: torch.device) -> Tensor:
        """Soft low-pass mask over rfft2 bins [h, w // 2 + 1] (1 at DC, -> 0 above the radius).

        The DC bin (channel mean) is forced fully into the low part, mirroring the high-pass
        masks of HFSET and HFRM that exclude it."""
        r = radial_frequency(h, w, device)
        mask = torch.sigmoid((torch.sigmoid(self.radius_logit) - r) / self.temperature)
        return torch.where(r > 0, mask, torch.ones_like(mask))

    def low_operator(self, h: int, w: int, device: torch.device) -> Tensor:
        """The low-pass as a real [h*w, h*w] matrix on row-major pixels: irfft2(rfft2(.) * mask)."""
        forward, inverse = self.dft.matrices(h, w, device)
        mask = self.low_mask(h, w, device).reshape(-1)
        return inverse @ (torch.cat([mask, mask])[:, None] * forward)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(low, high) parts of maps x [B, C, H, W], computed in float32; low + high == x."""
        h, w = x.shape[-2:]
        with autocast_disabled(x.device.type):
            xf = x.float()
            if self.dense_dft:
                operator = self.low_operator(h, w, x.device)
                low = tokens_map(torch.matmul(operator, map_tokens(xf)), h, w)
            else:
                low = torch.fft.irfft2(
                    torch.fft.rfft2(xf) * self.low_mask(h, w, x.device), s=(h, w)
                )
            high = xf - low
        return low.to(x.dtype), high.to(x.dtype)

    def forward(self, optical: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
        b, c = optical.shape[:2]
        low_o, high_o = self.split(optical)
        low_a, high_a = self.split(active)
        high_o = self.high_optical(high_o)
        high_a = self.high_active(high_a)
        # log1p of band energies: scale-robust inputs for the weighting MLP (z-scored data and
        # 1e4-magnitude data both give O(1)..O(20) features).
        energy = torch.cat(
            [t.float().square().mean(dim=(-2, -1)) for t in (low_o, low_a, high_o, high_a)], dim=1
        )
        logits = self.weights(torch.log1p(energy).to(optical.dtype)).view(b, 2, c, 2)
        w = logits.softmax(dim=-1)[..., None, None]  # [B, modality, C, {low, high}, 1, 1]
        low = low_o + low_a
        optical = torch.addcmul(optical, w[:, 0, :, 0], low).addcmul_(w[:, 0, :, 1], high_o)
        active = torch.addcmul(active, w[:, 1, :, 0], low).addcmul_(w[:, 1, :, 1], high_a)
        return optical, active
