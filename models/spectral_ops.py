"""Frequency-domain helpers shared by HFSET, AFCM and HFRM, and the float32 guard they run under.

Why a float32 guard: under autocast, activations arrive as bfloat16/float16. CPU has no half
precision FFT and cuFFT's half FFT only supports power-of-two sizes (an 11 x 11 patch fails), and
half precision phases/energies are too coarse anyway. Every FFT here therefore runs in float32
with autocast disabled, and results are cast back to the caller's dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor, nn

# Built once per size and device. A race between threads only builds the same matrices twice.
_DFT_MATRICES: dict[tuple[int, int, str], tuple[Tensor, Tensor]] = {}


@contextlib.contextmanager
def autocast_disabled(device_type: str) -> Iterator[None]:
    """Disable autocast for ``device_type`` inside the block (no-op where autocast is unknown)."""
    try:
        ctx: contextlib.AbstractContextManager[object] = torch.autocast(
            device_type=device_type, enabled=False
        )
    except RuntimeError:
        # e.g. the "meta" device has no autocast dtype; nothing to disable there.
        ctx = contextlib.nullcontext()
    with ctx:
        yield


def band_frequency(n: int, device: torch.device) -> Tensor:
    """Normalised frequencies of ``rfft`` over ``n`` samples: [n // 2 + 1] values in [0, 1].

    1 is the Nyquist frequency (a band-to-band alternating spectrum), 0 the spectral mean.
    """
    return torch.fft.rfftfreq(n, device=device, dtype=torch.float32) * 2.0


def radial_frequency(h: int, w: int, device: torch.device) -> Tensor:
    """Normalised radial frequency of each ``rfft2`` bin of an h x w map: [h, w // 2 + 1] in [0, 1].

    0 is the DC bin; 1 the corner (Nyquist in both axes) of an even-sized map.
    """
    fy = torch.fft.fftfreq(h, device=device, dtype=torch.float32)
    fx = torch.fft.rfftfreq(w, device=device, dtype=torch.float32)
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    return r / (0.5 * 2.0**0.5)


def soft_highpass_mask(freq: Tensor, cutoff: Tensor, temperature: float) -> Tensor:
    """sigmoid((freq - cutoff) / T): a differentiable high-pass (a hard step gives no gradient
    to ``cutoff``). Shapes broadcast."""
    return torch.sigmoid((freq - cutoff) / temperature)


def spectral_highpass(x: Tensor, tau: Tensor, temperature: float) -> Tensor:
    """High-frequency part of spectra along the last (band) axis, in float32.

    Args:
        x: [..., bands] spectra.
        tau: cutoff in normalised frequency (0, 1), broadcastable to x's leading dims
            (e.g. [B, 1] for x [B, N, bands]).
        temperature: mask softness T.

    Returns:
        irfft(rfft(x) * sigmoid((f - tau) / T)) with the DC bin removed, same shape/dtype as x.
        The DC bin (the spectral mean, i.e. brightness) is dropped outright: a high-pass should
        never pass it, and a soft mask alone would leak sigmoid(-tau / T) of it.
    """
    n = x.shape[-1]
    with autocast_disabled(x.device.type):
        xf = torch.fft.rfft(x.float(), dim=-1)
        f = band_frequency(n, x.device)
        mask = soft_highpass_mask(f, tau.float().unsqueeze(-1), temperature)
        mask = mask * (f > 0).to(mask.dtype)
        out = torch.fft.irfft(xf * mask, n=n, dim=-1)
    return out.to(x.dtype)


def phase_similarity(p: Tensor, a: Tensor, eps: float = 1e-6) -> Tensor:
    """cos(phase(p) - phase(a)) of two complex spectra, without ``torch.angle``.

    S = Re(p * conj(a)) / sqrt((|p|^2 + eps)(|a|^2 + eps)). ``angle`` has an undefined gradient
    at 0 and the square root of |p|^2 an infinite one; the eps inside the root keeps both finite,
    and S -> 0 (no evidence either way) where either spectrum vanishes.
    """
    num = p.real * a.real + p.imag * a.imag
    pp = p.real.square() + p.imag.square()
    aa = a.real.square() + a.imag.square()
    return num / torch.sqrt((pp + eps) * (aa + eps))


def real_dft2_matrices(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """``rfft2`` and ``irfft2`` of h x w maps as two real float32 matrices (cached per size/device).

    Returns:
        forward [2K, h*w]: rows 0..K-1 give the real parts, rows K..2K-1 the imaginary parts of the
            K = h * (w // 2 + 1) bins of ``rfft2`` (row-major over [h, w // 2 + 1]);
        inverse [h*w, 2K]: ``irfft2(s=(h, w))`` of such a (real; imaginary) vector.

    Both are obtained by transforming basis vectors with ``torch.fft`` itself, so a product with
    them is exactly the linear map the FFT computes (up to float32 rounding). For the small maps of
    this network (11 x 11) one matrix product is several times faster on a CPU than an FFT round
    trip, and it needs no layout copies: it contracts the pixel axis of token-major
    (channels-last) maps directly.
    """
    key = (h, w, str(device))
    cached = _DFT_MATRICES.get(key)
    if cached is not None:
        return cached
    # Built outside inference mode and autograd, so the constants work in every later context.
    with torch.inference_mode(False), torch.no_grad():
        n, bins = h * w, h * (w // 2 + 1)
        basis = torch.eye(n, dtype=torch.float64, device=device).view(n, h, w)
        spectra = torch.fft.rfft2(basis).reshape(n, bins)  # [pixel, bin]
        forward = torch.cat([spectra.real, spectra.imag], dim=1).t()  # [2K, n]
        unit = torch.eye(2 * bins, dtype=torch.float64, device=device)
        unit_spectra = torch.complex(unit[:, :bins], unit[:, bins:]).view(2 * bins, h, w // 2 + 1)
        inverse = torch.fft.irfft2(unit_spectra, s=(h, w)).reshape(2 * bins, n).t()  # [n, 2K]
        cached = (forward.float().contiguous(), inverse.float().contiguous())
        _DFT_MATRICES[key] = cached
    return cached


def map_tokens(x: Tensor) -> Tensor:
    """[B, C, H, W] maps -> [B, H*W, C] pixel tokens (a view when x is channels-last)."""
    b, c, h, w = x.shape
    return x.permute(0, 2, 3, 1).reshape(b, h * w, c)


def tokens_map(t: Tensor, h: int, w: int) -> Tensor:
    """[B, H*W, C] pixel tokens -> [B, C, H, W] maps (a channels-last view of contiguous t)."""
    b, _, c = t.shape
    return t.reshape(b, h, w, c).permute(0, 3, 1, 2)


class RealDFT2Matrices(nn.Module):
    """:func:`real_dft2_matrices` of one known map side, held as non-persistent buffers: they
    follow ``.to(device)``, are graph inputs under torch.compile and stay out of the state dict.
    Other sizes (or ``size=None``) come from the function's cache. Shared by AFCM and HFRM."""

    forward_matrix: Tensor
    inverse_matrix: Tensor

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size = size
        if size is not None:
            forward, inverse = real_dft2_matrices(size, size, torch.device("cpu"))
            self.register_buffer("forward_matrix", forward.clone(), persistent=False)
            self.register_buffer("inverse_matrix", inverse.clone(), persistent=False)

    def matrices(self, h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """(forward [2K, h*w], inverse [h*w, 2K]) in float32, as :func:`real_dft2_matrices`."""
        if self.size is not None and h == w == self.size:
            return self.forward_matrix.float(), self.inverse_matrix.float()
        return real_dft2_matrices(h, w, device)

