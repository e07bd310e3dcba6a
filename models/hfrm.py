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

Speed: rfft2 and irfft2 of the small maps are applied as real matrix products on the pixel axis of
channels-last maps (``spectral_ops.real_dft2_matrices``: the exact linear maps of the FFTs), with
the spectra kept as separate real and imaginary blocks; ``dense_dft = False`` selects the FFT form
(same result to float32 rounding; the reference for tests and for FLOP counts).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spectral_ops import (
    RealDFT2Matrices,
    autocast_disabled,
    map_tokens,
    phase_similarity,
    radial_frequency,
    tokens_map,
)


class HFRM(nn.Module):
    dense_dft: bool  # DFTs as matrix products (True) or torch.fft (False)

    def __init__(
        self,
        dim: int,
        radius_init: float,
        temperature: float,
        gamma_init: float = 4.0,
        bias_init: float = -2.0,
        lambda_init: float = 0.5,
        eps: float = 1e-6,
        size: int | None = None,
    ) -> None:
        super().__init__()
        self.dense_dft = True
        self.dft = RealDFT2Matrices(size)  # the DFT matrices of size x size maps, as buffers
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
        if self.dense_dft:
            return self._forward_dense(optical, active)
        h, w = optical.shape[-2:]
        with autocast_disabled(optical.device.type):
            p = torch.fft.rfft2(optical.float())
            a = torch.fft.rfft2(active.float())
            gain = 1 + self.lam[:, None, None] * self.resonance_mask(p, a, h, w)
            opt_out = torch.fft.irfft2(p * gain, s=(h, w))
            act_out = torch.fft.irfft2(a * gain, s=(h, w))
        return opt_out.to(optical.dtype), act_out.to(active.dtype)

    def _forward_dense(self, optical: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
        """The same computation with the DFTs as matrix products on [B, pixels, C] tokens."""
        b, c, h, w = optical.shape
        with autocast_disabled(optical.device.type):
            forward, inverse = self.dft.matrices(h, w, optical.device)
            bins = forward.shape[0] // 2
            p = torch.matmul(forward, map_tokens(optical.float())).view(b, 2, bins, c)
            a = torch.matmul(forward, map_tokens(active.float())).view(b, 2, bins, c)
            # phase_similarity on (real, imaginary) blocks: Re(p conj(a)) / sqrt(...)
            num = (p * a).sum(dim=1)
            pp = p.square().sum(dim=1).add_(self.eps)
            aa = a.square().sum(dim=1).add_(self.eps)
            s = num / torch.sqrt(pp.mul_(aa))  # [B, bins, C]
            agree = torch.sigmoid(torch.addcmul(self.bias, F.softplus(self.gamma_raw), s))
            gain = 1 + self.lam * (self.highpass(h, w, optical.device).reshape(bins, 1) * agree)
            gain = gain.unsqueeze(1)  # the same real gain for both parts
            opt_out = torch.matmul(inverse, (p * gain).view(b, 2 * bins, c))
            act_out = torch.matmul(inverse, (a * gain).view(b, 2 * bins, c))
        return (
            tokens_map(opt_out, h, w).to(optical.dtype),
            tokens_map(act_out, h, w).to(active.dtype),
        )
