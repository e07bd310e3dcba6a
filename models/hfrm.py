"""HFRM: high-frequency resonance mask (deep fusion of the two spatial branches).

CONFIRMED (paper): in deep layers, a mask built from the PHASE SIMILARITY of the two modalities'
high-frequency components emphasises sharp, modality-consistent edges.

OURS (reconstruction), per channel of the deep maps:
    P = rfft2(optical), A = rfft2(active)
    S = Re(P conj(A)) / (|P||A| + eps)        cos(phase difference), no torch.angle
    R = highpass(r) * sigmoid(gamma * S + b)  highpass(r) = sigmoid((r - r0) / T), learnable r0
    optical' = irfft2(P (1 + lambda R)),  active' = irfft2(A (1 + lambda R))
gamma = softplus(.) > 0 so that agreeing phases always raise the mask; gamma, b and lambda are
per channel. Because R is real and symmetric (S(-k) = S(k) for real maps), the half spectrum of
rfft2 is enough and the outputs stay real.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spectral_ops import autocast_disabled, phase_similarity, radial_frequency


class HFRM(nn.Module):
    def __init__(
        self,
        dim: int,
        radius_init: float,
        temperature: float,
        gamma_init: float = 4.0,
        bias_init: float = -2.0,
        lambda_init: float = 0.5,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.temperature = temperature
        self.eps = eps
        self.radius_logit = nn.Parameter(torch.tensor(math.log(radius_init / (1 - radius_init))))
        self.gamma_raw = nn.Parameter(torch.full((dim,), math.log(math.expm1(gamma_init))))
        self.bias = nn.Parameter(torch.full((dim,), bias_init))
        self.lam = nn.Parameter(torch.full((dim,), lambda_init))

    def highpass(self, h: int, w: int, device: torch.device) -> Tensor:
        """Soft radial high-pass over rfft2 bins; the DC bin (map mean) is excluded outright, as in
        HFSET's filter, so the resonance never rescales a channel's mean."""
        r = radial_frequency(h, w, device)
        mask = torch.sigmoid((r - torch.sigmoid(self.radius_logit)) / self.temperature)
        return mask * (r > 0).to(mask.dtype)

    def resonance_mask(self, p: Tensor, a: Tensor, h: int, w: int) -> Tensor:
        """R [B, C, h, w//2+1] from complex float32 spectra p, a of h x w maps."""
        s = phase_similarity(p, a, self.eps)
        gamma = F.softplus(self.gamma_raw)[:, None, None]
        agree = torch.sigmoid(gamma * s + self.bias[:, None, None])
        return self.highpass(h, w, p.device) * agree

    def mask_for(self, optical: Tensor, active: Tensor) -> Tensor:
        """The resonance mask for two real maps [B, C, H, W] (for inspection and tests)."""
        h, w = optical.shape[-2:]
        with autocast_disabled(optical.device.type):
            p = torch.fft.rfft2(optical.float())
            a = torch.fft.rfft2(active.float())
            return self.resonance_mask(p, a, h, w)

    def forward(self, optical: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
        h, w = optical.shape[-2:]
        with autocast_disabled(optical.device.type):
            p = torch.fft.rfft2(optical.float())
            a = torch.fft.rfft2(active.float())
            gain = 1 + self.lam[:, None, None] * self.resonance_mask(p, a, h, w)
            opt_out = torch.fft.irfft2(p * gain, s=(h, w))
            act_out = torch.fft.irfft2(a * gain, s=(h, w))
        return opt_out.to(optical.dtype), act_out.to(active.dtype)
