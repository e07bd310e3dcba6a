"""HFSET: high-frequency sparse enhancement transformer (spectral branch).

CONFIRMED (paper): refines spectral signatures by enhancing their high-frequency components with a
high-pass filter whose frequency threshold is trainable; sparse spatial-spectral attention drives
the filter's parameters.

OURS (reconstruction):
- tokens = the s*s pixels of the spectral patch, each a full spectrum projected to ``dim``;
- sparse attention = top-k token attention (each query keeps its k largest scores) followed by
  channel attention (transposed, cross-covariance attention over feature channels);
- after the first attention block, a pooled summary predicts a per-sample cutoff tau in (0, 1) and
  gain beta > 0 around learnable base values; the raw spectra are high-passed along the band axis
  with the soft mask sigmoid((f - tau) / T) and the token embedding of x is swapped for that of
  x + beta * highpass(x) (same projection matrix). Remaining blocks refine the enhanced tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Dropout, FeedForward
from .spectral_ops import spectral_highpass


class TopKTokenAttention(nn.Module):
    """Multi-head self-attention where each query attends only to its ``top_k`` best keys.

    Sparsity keeps attention on the few most similar pixels of the window (same material) instead
    of averaging over mixed neighbours. Ties at the k-th score keep all tied keys.
    """

    def __init__(self, dim: int, heads: int, top_k: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.top_k = top_k
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, h, N, dh]
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        # Selection and softmax in float32 at least: under CPU bfloat16 autocast the scores
        # arrive in bfloat16, whose softmax is 4x slower on the CPU than float32's.
        scores = scores.to(torch.promote_types(scores.dtype, torch.float32))
        keep = min(self.top_k, n)
        if keep < n:
            kth = scores.topk(keep, dim=-1).values[..., -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        attn = scores.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, n, d)
        return x + self.drop(self.proj(out))


class ChannelAttention(nn.Module):
    """Cross-covariance ("spectral") attention: a d_h x d_h attention between feature channels
    per head, computed from L2-normalised channel responses across tokens."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        dh = d // self.heads
        qkv = self.qkv(self.norm(x))  # [B, N, 3d]
        # normalize(q) @ normalize(k)^T with the L2 normalisation over tokens (F.normalize:
        # x / max(|x|, 1e-12)) applied to the small [dh, dh] product instead of to q and k; the
        # norms are one reduction over the token axis of the projection.
        inv = torch.linalg.vector_norm(qkv[..., : 2 * d], dim=1).clamp_min(1e-12).reciprocal()
        inv_q, inv_k = inv.view(b, 2, self.heads, dh).unbind(1)  # [B, h, dh]
        q, k, v = qkv.view(b, n, 3, self.heads, dh).unbind(2)
        q, k, v = (t.permute(0, 2, 3, 1) for t in (q, k, v))  # [B, h, dh, N]
        scale = (inv_q * self.temperature.view(1, self.heads, 1)).unsqueeze(-1)
        scores = (q @ k.transpose(-2, -1)) * scale * inv_k.unsqueeze(-2)
        attn = scores.softmax(dim=-1)  # [B, h, dh, dh]
        out = (attn @ v).permute(0, 3, 1, 2).reshape(b, n, d)
        return x + self.drop(self.proj(out))


class SparseBlock(nn.Module):
    """Top-k token attention, channel attention, feed-forward (all pre-norm residual)."""

    def __init__(self, dim: int, heads: int, top_k: int, ffn_ratio: float, dropout: float) -> None:
        super().__init__()
        self.token_attn = TopKTokenAttention(dim, heads, top_k, dropout)
        self.channel_attn = ChannelAttention(dim, heads, dropout)
        self.ffn = FeedForward(dim, ffn_ratio, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.ffn(self.channel_attn(self.token_attn(x)))


class SpectralHighPass(nn.Module):
    """x + beta * highpass(x; tau) along the band axis with learnable base tau and beta.

    The base values are learnable; per-sample offsets (from HFSET's attention) shift them:
    tau = sigmoid(logit(tau0) + d_tau), beta = softplus(softplus^-1(beta0) + d_beta).
    """

    def __init__(self, tau_init: float, beta_init: float, temperature: float) -> None:
        super().__init__()
        self.temperature = temperature
        self.tau_logit = nn.Parameter(torch.tensor(math.log(tau_init / (1.0 - tau_init))))
        self.beta_raw = nn.Parameter(torch.tensor(math.log(math.expm1(beta_init))))

    def parameters_for(self, d_tau: Tensor, d_beta: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample (tau, beta) from offsets; zero offsets give the base values."""
        return torch.sigmoid(self.tau_logit + d_tau), F.softplus(self.beta_raw + d_beta)

    def highpass(self, x: Tensor, tau: Tensor) -> Tensor:
        """High-frequency part of x [B, ..., bands] for per-sample tau [B]."""
        tau = tau.reshape(tau.shape[0], *([1] * (x.dim() - 2)))
        return spectral_highpass(x, tau, self.temperature)

    def boost(self, x: Tensor, tau: Tensor, beta: Tensor) -> Tensor:
        """beta * highpass(x; tau): what the filter adds to x."""
        beta = beta.reshape(beta.shape[0], *([1] * (x.dim() - 1)))
        return beta.to(x.dtype) * self.highpass(x, tau)

    def forward(self, x: Tensor, tau: Tensor, beta: Tensor) -> Tensor:
        """The enhanced spectra x + beta * highpass(x; tau)."""
        return x + self.boost(x, tau, beta)


class HFSET(nn.Module):
    """Spectral branch: [B, bands, s, s] spectral patch -> [B, s*s, dim] tokens."""

    def __init__(
        self,
        bands: int,
        window: int,
        dim: int,
        heads: int,
        depth: int,
        top_k: int,
        ffn_ratio: float,
        dropout: float,
        tau_init: float,
        beta_init: float,
        temperature: float,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(bands, dim)
        self.pos = nn.Parameter(torch.zeros(1, window * window, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            SparseBlock(dim, heads, top_k, ffn_ratio, dropout) for _ in range(depth)
        )
        self.summary = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim // 2), nn.GELU(), nn.Linear(dim // 2, 2)
        )
        self.filter = SpectralHighPass(tau_init, beta_init, temperature)

    @staticmethod
    def to_tokens(spectral: Tensor) -> Tensor:
        """[B, bands, s, s] -> [B, s*s, bands]: row-major pixels, centre at index s*s // 2."""
        return spectral.flatten(2).transpose(1, 2)

    def _first_block(self, x: Tensor) -> Tensor:
        t = self.embed(x) + self.pos
        out: Tensor = self.blocks[0](t)
        return out

    def filter_parameters(self, spectral: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample (tau [B], beta [B]) that the sparse attention predicts for this input."""
        x = self.to_tokens(spectral)
        return self._filter_parameters(self._first_block(x))

    def _filter_parameters(self, t: Tensor) -> tuple[Tensor, Tensor]:
        offsets = self.summary(t.mean(dim=1)).float()
        return self.filter.parameters_for(offsets[:, 0], offsets[:, 1])

    def forward(self, spectral: Tensor) -> Tensor:
        x = self.to_tokens(spectral)
        t = self._first_block(x)
        tau, beta = self._filter_parameters(t)
        # embed(x + beta * hp(x)) - embed(x) = W (beta * hp(x)): swap in the enhanced spectra's
        # embedding without a second projection matrix.
        boost = self.filter.boost(x, tau, beta)
        t = t + F.linear(boost.to(t.dtype), self.embed.weight.to(t.dtype))
        for block in self.blocks[1:]:
            t = block(t)
        return t


class SpectralEmbedding(nn.Module):
    """Neutral counterpart of HFSET (use_hfset=False): linear embedding + position, no attention,
    no filter."""

    def __init__(self, bands: int, window: int, dim: int) -> None:
        super().__init__()
        self.embed = nn.Linear(bands, dim)
        self.pos = nn.Parameter(torch.zeros(1, window * window, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, spectral: Tensor) -> Tensor:
        out: Tensor = self.embed(HFSET.to_tokens(spectral)) + self.pos
        return out
