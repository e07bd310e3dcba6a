"""Small building blocks shared by the S2Fin modules.

Normalisation is LayerNorm (tokens) or GroupNorm(1, C) (maps, = LayerNorm over C, H, W): both are
per-sample, so eval outputs never depend on batch neighbours and small training batches are fine.
The stems may instead use BatchNorm or no normalisation (:data:`STEM_NORMS`): GroupNorm over a
whole patch removes its absolute level (a flat 3 m roof and a flat 20 m roof look alike).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .config import STEM_NORMS


def torch_cpu_features() -> dict[str, bool] | None:
    """torch's table of this CPU's instruction-set features ("avx512_bf16", "amx_bf16", ...),
    or None where torch has none (it is private API from torch 2.3 on, hence the guard). The
    one place that reads it: SSAF's choice of attention kernel and s2fin's ``--bf16 auto``."""
    table_fn = getattr(getattr(torch._C, "_cpu", None), "_get_cpu_capability", None)
    table = table_fn() if callable(table_fn) else None
    return table if isinstance(table, dict) else None


_dropout_stream = threading.local()


@contextmanager
def dropout_generator(generator: torch.Generator | None) -> Iterator[None]:
    """Dropout masks drawn in this thread come from ``generator`` (None: torch's global one).

    Why: torch's global generator is shared by all threads, so two threads training parts of a
    batch side by side would draw their masks in a scheduling-dependent order. With a generator
    of its own per part, each part's masks are a function of that generator's seed alone.
    """
    previous = getattr(_dropout_stream, "generator", None)
    _dropout_stream.generator = generator
    try:
        yield
    finally:
        _dropout_stream.generator = previous


class Dropout(nn.Dropout):
    """``nn.Dropout`` that draws its mask from this thread's :func:`dropout_generator` when one
    is set (same scaling: kept values are divided by 1 - p), else exactly ``nn.Dropout``."""

    def forward(self, input: Tensor) -> Tensor:
        generator: torch.Generator | None = getattr(_dropout_stream, "generator", None)
        if generator is None or not self.training or self.p == 0:
            out: Tensor = super().forward(input)
            return out
        if self.p == 1:
            return input * 0
        keep = 1.0 - self.p
        mask = torch.empty_like(input).bernoulli_(keep, generator=generator)
        return input * mask / keep


def center_crop(x: Tensor, size: int) -> Tensor:
    """Centre ``size`` x ``size`` window of [B, C, p, p] patches (p and size odd, size <= p)."""
    p_h, p_w = x.shape[-2], x.shape[-1]
    if size > min(p_h, p_w) or (p_h - size) % 2 or (p_w - size) % 2:
        raise ValueError(f"cannot centre-crop a {p_h}x{p_w} patch to {size}x{size}")
    top, left = (p_h - size) // 2, (p_w - size) // 2
    return x[..., top : top + size, left : left + size]


class FeedForward(nn.Module):
    """Pre-norm token MLP with residual: x + W2(GELU(W1(LN(x))))."""

    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.drop(self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x)))))




def stem_norm(kind: str, dim: int) -> nn.Module:
    """``group``: GroupNorm(1, C) per patch; ``batch``: BatchNorm2d; ``none``: identity (no
    parameters, so the stem's convolutions keep their state-dict keys)."""
    if kind == "group":
        return nn.GroupNorm(1, dim)
    if kind == "batch":
        return nn.BatchNorm2d(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown stem normalisation {kind!r}; choose from {', '.join(STEM_NORMS)}")


class ConvStem(nn.Module):
    """Two 3x3 convs (same padding) lifting a spatial patch to ``dim`` channels, each followed by
    ``norm`` (:func:`stem_norm`) and GELU."""

    def __init__(self, in_channels: int, dim: int, norm: str = "group") -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, dim, 3, padding=1),
            stem_norm(norm, dim),
            nn.GELU(),
            nn.Conv2d(dim, dim, 3, padding=1),
            stem_norm(norm, dim),
            nn.GELU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.body(x)
        return out


class ConvBlock(nn.Module):
    """ConvNeXt-style residual block: depthwise 3x3, GroupNorm, pointwise MLP."""

    def __init__(self, dim: int, ratio: float, dropout: float) -> None:
        super().__init__()
        hidden = max(1, round(dim * ratio))
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm = nn.GroupNorm(1, dim)
        self.pw1 = nn.Conv2d(dim, hidden, 1)
        self.pw2 = nn.Conv2d(hidden, dim, 1)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.pw2(torch.nn.functional.gelu(self.pw1(self.norm(self.dw(x)))))
        return x + self.drop(y)


class ConvTower(nn.Module):
    """``depth`` ConvBlocks for one spatial branch (identity at depth 0)."""

    def __init__(self, dim: int, depth: int, ratio: float, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(dim, ratio, dropout) for _ in range(depth))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PairIdentity(nn.Module):
    """Neutral stand-in for a two-map fusion module switched off: returns both maps unchanged."""

    def forward(self, optical: Tensor, active: Tensor) -> tuple[Tensor, Tensor]:
        return optical, active
