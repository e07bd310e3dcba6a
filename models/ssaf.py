"""SSAF: spatial-spectral attention fusion (intermediate layers).

CONFIRMED (paper): a spatial-spectral attention fusion module in the intermediate layers.

OURS (reconstruction), three interactions in order:
1. spectral -> spatial: the pooled spectral tokens gate the channels of both spatial maps,
   x * (1 + tanh(W pool)) (identity when the gate logits are zero);
2. spatial -> spectral: a 7x7 conv over [mean, max] channel statistics of both spatial maps gives
   an attention map; its centre s x s window (where the spectral tokens sit) re-weights the
   spectral tokens the same way;
3. cross-modal spatial attention: optical pixels attend to active pixels and vice versa
   (multi-head, pre-norm, residual), so each branch borrows the other's context.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Dropout, center_crop, torch_cpu_features
from .spectral_ops import autocast_disabled

# Samples per step of the CPU inference attention: the scores of 4 samples x 4 heads x 121 x 121
# (0.9 MB in float32) stay in the core's cache between the passes (scores, shift and exp2,
# product). In the default network's forward (batch 128, one thread, AMD Zen 4) 2 / 4 / 8
# samples ran 1.08x / 1.11x / 1.15x the softmax form of before in one comparison each.
_CPU_ATTENTION_SAMPLES = 4
# The value matrix gets a column of ones (its product with the unnormalised weights is each
# query's normaliser) and is padded with zeros to a multiple of this many columns: MKL multiplies
# [121, 121] by [121, 16] 2.5x faster than by [121, 8] (53 against 136 us for 2 samples x 4
# heads, float32, one thread, AMD Zen 4); the paper-sized network's 20-channel heads ran 1.09x
# faster padded to 32 columns, 0.99x padded to 21.
_VALUE_COLUMNS = 16
# A query whose normaliser falls below this after the shift (scores far below their bound)
# would lose precision or divide by zero: the samples of its part are recomputed with a
# softmax.
_MIN_NORMALISER = 2.0**-100
_LOG2_E = math.log2(math.e)
# Samples per step of the bfloat16 products (AMD Zen 4, the default network's shapes): 8 and 16
# samples fastest (12.4 / 12.7 ms per call), 2 samples 15.8 ms.
_CPU_BF16_ATTENTION_SAMPLES = 8


def attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """softmax(q kᵀ / √d) v for q [B, h, n, d] and k, v [B, h, m, d] (any strides).

    Scaled-dot-product attention, except for inference on the CPU, which picks by CPU what ran
    fastest there (measured in docs/network.md, "Speed"): under bfloat16 autocast on a CPU whose
    bfloat16 products pay (:func:`bfloat16_products_pay`), :func:`_cpu_bf16_attention`;
    otherwise float32, with :func:`_cpu_inference_attention` (a few samples at a time) where it
    pays (:func:`exp2_attention_pays`) and torch's kernel (:func:`_cpu_float32_attention`)
    elsewhere.
    """
    if q.device.type == "cpu" and not torch.is_grad_enabled():
        if (
            torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
            and bfloat16_products_pay()
        ):
            return _cpu_bf16_attention(q, k, v)
        if exp2_attention_pays():
            return _cpu_inference_attention(q, k, v)
        return _cpu_float32_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v)


@functools.cache
def bfloat16_products_pay() -> bool:
    """Whether this CPU runs the attention's small bfloat16 products faster than float32 ones:
    with AVX512-BF16 and no AMX. Measured per call (batch 128, 4 heads of 8 channels, 121
    tokens, one thread): on AMD Zen 4 (AVX512-BF16) bfloat16 products 12.4 ms against 20.5 ms in
    float32; on an Intel Xeon with AMX float32 1.3-1.4x faster than the bfloat16 products;
    without either, bfloat16 is emulated. Read from torch's CPU feature table (no I/O)."""
    features = torch_cpu_features()
    if features is None:
        return False
    return bool(features.get("avx512_bf16")) and not features.get("amx_bf16")


@functools.cache
def exp2_attention_pays() -> bool:
    """Whether :func:`_cpu_inference_attention` beats torch's float32 attention kernel on this
    CPU: with AVX-512. Measured in the default network's float32 forward (batch 128, one
    thread): on AMD Zen 4 (AVX-512) 1.11-1.15x the forward with torch's kernel; on an Intel Xeon
    with AMX alike per call (18.4 against 18.3-19.0 ms); on an AVX2-only AMD EPYC torch's kernel
    ran 1.17-1.28x faster per call (31.0-35.4 against 38.6-45.3 ms) and the forward 1.02-1.06x.
    Read from torch's CPU feature table (no I/O)."""
    features = torch_cpu_features()
    return bool(features and features.get("avx512_f"))


def _cpu_float32_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """torch's scaled-dot-product attention in float32 (float64 stays float64), autocast off:
    under emulated bfloat16 autocast, float32 is the faster precision. torch's CPU kernel
    returns [B, h, n, d] laid out token-major, like :func:`_cpu_inference_attention`."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    with autocast_disabled("cpu"):
        return F.scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))


def _cpu_inference_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention in float32 (float64 stays float64), :data:`_CPU_ATTENTION_SAMPLES` samples at a
    time. The result is [B, h, n, d] in float32 and laid out token-major ([B, n, h, d] in
    memory), so that merging the heads afterwards is a view, not a copy.

    Instead of a softmax (whose `exp` runs at a third of `exp2`'s speed on the CPU and whose row
    maximum is a slow reduction over 121 keys), scores are taken in base-2 units (log2(e) folded
    into the query scale), shifted by an upper bound of each query's scores (|q|·max|k|, so no
    exp2 overflows; softmax does not change under a shift), exponentiated with exp2 and
    multiplied by [v | 1 | 0...], whose ones column gives each query's normaliser; the division
    comes last, on [n, d] instead of [n, m]. Queries whose normaliser underflows (scores more
    than ~100 binary orders below the bound) are recomputed with a softmax."""
    dtype = torch.promote_types(q.dtype, torch.float32)
    batch, heads, queries, channels = q.shape
    keys = k.shape[2]
    with autocast_disabled("cpu"):
        q = q.to(dtype) * (channels**-0.5 * _LOG2_E)
        k = k.to(dtype)
        bound = q.norm(dim=-1, keepdim=True) * k.norm(dim=-1).amax(-1)[..., None, None]
        columns = -(-(channels + 1) // _VALUE_COLUMNS) * _VALUE_COLUMNS
        values = v.new_zeros(batch, heads, keys, columns, dtype=dtype)
        values[..., :channels] = v
        values[..., channels] = 1
        out = q.new_empty(batch, queries, heads, channels).transpose(1, 2)
        for start in range(0, batch, _CPU_ATTENTION_SAMPLES):
            part = slice(start, start + _CPU_ATTENTION_SAMPLES)
            scores = torch.matmul(q[part], k[part].transpose(-1, -2))
            weights = scores.sub_(bound[part]).exp2_()
            summed = torch.matmul(weights, values[part])
            normaliser = summed[..., channels : channels + 1]
            if bool((normaliser < _MIN_NORMALISER).any()):
                scores = torch.matmul(q[part], k[part].transpose(-1, -2)) * math.log(2)
                probs = torch.softmax(scores, dim=-1)
                torch.matmul(probs, values[part, :, :, :channels], out=out[part])
            else:
                torch.div(summed[..., :channels], normaliser, out=out[part])
    return out


def _cpu_bf16_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Attention with bfloat16 products and a float32 softmax (its probabilities rounded to
    bfloat16 for the second product), :data:`_CPU_BF16_ATTENTION_SAMPLES` samples at a time;
    the result is [B, h, n, d] in bfloat16, laid out token-major like
    :func:`_cpu_inference_attention`'s."""
    batch, heads, queries, channels = q.shape
    with autocast_disabled("cpu"):
        q = q.to(torch.bfloat16) * channels**-0.5
        k, v = k.to(torch.bfloat16), v.to(torch.bfloat16)
        out = q.new_empty(batch, queries, heads, channels).transpose(1, 2)
        for start in range(0, batch, _CPU_BF16_ATTENTION_SAMPLES):
            part = slice(start, start + _CPU_BF16_ATTENTION_SAMPLES)
            scores = torch.matmul(q[part], k[part].transpose(-1, -2))
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(torch.bfloat16)
            torch.matmul(probs, v[part], out=out[part])
    return out


class CrossAttention(nn.Module):
    """Pre-norm multi-head attention of query tokens over context tokens, with residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = Dropout(dropout)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        b, n, d = x.shape
        m = context.shape[1]
        dh = d // self.heads
        q = self.q(self.norm_q(x)).view(b, n, self.heads, dh).transpose(1, 2)
        k, v = self.kv(self.norm_kv(context)).view(b, m, 2, self.heads, dh).unbind(2)
        out = attention(q, k.transpose(1, 2), v.transpose(1, 2))
        return x + self.drop(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class SSAF(nn.Module):
    def __init__(self, dim: int, heads: int, window: int, dropout: float) -> None:
        super().__init__()
        self.window = window
        self.channel_gate = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim))
        self.spatial_gate = nn.Conv2d(4, 1, 7, padding=3)
        self.optical_from_active = CrossAttention(dim, heads, dropout)
        self.active_from_optical = CrossAttention(dim, heads, dropout)

    def forward(
        self, spectral: Tensor, optical: Tensor, active: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """spectral [B, s*s, D], optical/active [B, D, p, p] -> same shapes."""
        b, d, h, w = optical.shape
        # 1. spectral tokens re-weight spatial channels.
        gates = torch.tanh(self.channel_gate(spectral.mean(dim=1))).view(b, 2, d, 1, 1)
        optical = optical * (1 + gates[:, 0])
        active = active * (1 + gates[:, 1])
        # 2. spatial attention map re-weights spectral tokens (centre window = spectral pixels).
        stats = torch.cat(
            [
                optical.mean(dim=1, keepdim=True),
                optical.amax(dim=1, keepdim=True),
                active.mean(dim=1, keepdim=True),
                active.amax(dim=1, keepdim=True),
            ],
            dim=1,
        )
        attn_map = torch.tanh(self.spatial_gate(stats))  # [B, 1, p, p]
        weights = center_crop(attn_map, self.window).flatten(2).transpose(1, 2)  # [B, s*s, 1]
        spectral = spectral * (1 + weights)
        # 3. cross-modal spatial attention between the two spatial branches.
        opt_t = optical.flatten(2).transpose(1, 2)
        act_t = active.flatten(2).transpose(1, 2)
        opt_new = self.optical_from_active(opt_t, act_t)
        act_new = self.active_from_optical(act_t, opt_t)
        optical = opt_new.transpose(1, 2).reshape(b, d, h, w)
        active = act_new.transpose(1, 2).reshape(b, d, h, w)
        return spectral, optical, active


class SSAFIdentity(nn.Module):
    """Neutral counterpart of SSAF (use_ssaf=False): no interaction between the branches."""

    def forward(
        self, spectral: Tensor, optical: Tensor, active: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        return spectral, optical, active
