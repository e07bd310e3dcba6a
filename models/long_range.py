"""Long-range fusion: bidirectional selective state-space (Mamba-style) blocks in plain PyTorch.

CONFIRMED (paper): Mamba-style selective state-space blocks fuse the features over long range.

OURS (reconstruction): the joint sequence [spectral tokens; optical pixels; active pixels] goes
through ``depth`` bidirectional blocks. Each direction is a selective scan with input-dependent
step dt, input/output projections B, C (Mamba-2 style: one scalar decay per head),
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T,   y_t = h_t C_t + D x_t,
evaluated with the chunked "state-space dual" form (quadratic inside chunks of ``chunk`` tokens,
a short recurrence across chunks). That is exact, needs only a handful of batched matmuls instead
of one Python step per token (no mamba_ssm / CUDA kernel needed), and only ever exponentiates
non-positive numbers, so it cannot overflow. The scan runs in float32 with autocast disabled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .spectral_ops import autocast_disabled

# Decay factors below exp(-30) ~ 1e-13 are set to exactly 0. Left alone, exp of very negative
# numbers (large learned steps dt) yields float32 subnormals, and arithmetic on subnormals is
# much slower on x86 CPUs. A contribution damped by 1e-13 is far below float32 resolution next to
# the undamped ones, so the result is unchanged.
_DECAY_FLOOR = -30.0


def _decay(log_decay: Tensor, keep: Tensor | None = None) -> Tensor:
    """exp(log_decay) for log_decay <= 0, exactly 0 below the floor or where ``keep`` is False.

    exp(-inf) = 0 has a zero (not NaN) gradient, and the discarded entries get none.
    """
    ok = log_decay > _DECAY_FLOOR
    if keep is not None:
        ok &= keep
    return log_decay.masked_fill(~ok, float("-inf")).exp()


def selective_scan(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int) -> Tensor:
    """Chunked selective scan (without the D skip term), float32.

    Args:
        x: [Bt, L, H, P] inputs per head.
        dt: [Bt, L, H] positive step sizes.
        a: [H] negative decay rates.
        b, c: [Bt, L, N] input / output projections (shared by the heads).
        chunk: chunk length (16 is fastest on CPU for a few hundred tokens).

    Returns:
        y [Bt, L, H, P] with h_t = exp(dt_t a) h_{t-1} + dt_t x_t b_t^T and y_t = h_t c_t.
    """
    bt, length, heads, p = x.shape
    n = b.shape[-1]
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    if pad:
        # Padding at the end never influences earlier outputs of a causal scan.
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
        c = F.pad(c, (0, 0, 0, pad))
    nc = x.shape[1] // chunk
    # Layouts are chosen so the matmuls below need no broadcast copies: B and C are shared by
    # the heads, so heads and head channels are folded into one axis where B or C is contracted.
    log_a = (dt * a).view(bt, nc, chunk, heads)  # <= 0
    a_cum = torch.cumsum(log_a, dim=2)  # [Bt, nc, l, H]
    xs = (x * dt.unsqueeze(-1)).reshape(bt, nc, chunk, heads, p)  # [Bt, nc, l, H, P]
    b = b.reshape(bt * nc, chunk, n)
    c = c.reshape(bt * nc, chunk, n)

    # 1. within-chunk outputs: y[i] = sum_{j<=i} (c_i . b_j) exp(a_cum[i] - a_cum[j]) xs[j].
    # The exponent is <= 0 on and below the diagonal; above it, the entries are dropped (not
    # exponentiated: the positive difference could overflow and give a NaN gradient).
    a_cum_h = a_cum.transpose(2, 3)  # [Bt, nc, H, l]
    lower = torch.ones(chunk, chunk, dtype=torch.bool, device=x.device).tril()
    diff = a_cum_h.unsqueeze(-1) - a_cum_h.unsqueeze(-2)  # [Bt, nc, H, l(i), l(j)]
    decay = _decay(diff, lower)
    cb = (c @ b.transpose(-1, -2)).view(bt, nc, 1, chunk, chunk)
    y_diag = (cb * decay) @ xs.transpose(2, 3)  # [Bt, nc, H, l, P]

    # 2. state at the end of each chunk from its own inputs: [Bt, nc, H * P, N]
    to_end = _decay(a_cum[:, :, -1:] - a_cum).unsqueeze(-1)  # [Bt, nc, l, H, 1]
    states = (xs * to_end).reshape(bt * nc, chunk, heads * p).transpose(-1, -2) @ b
    states = states.view(bt, nc, heads, p, n)

    # 3. recurrence across chunks (L / chunk steps on small states): state entering each chunk.
    chunk_decay = _decay(a_cum[:, :, -1])  # [Bt, nc, H]
    carried = [torch.zeros_like(states[:, 0])]
    for i in range(nc - 1):
        carried.append(chunk_decay[:, i, :, None, None] * carried[-1] + states[:, i])
    entering = torch.stack(carried, dim=1)  # [Bt, nc, H, P, N]

    # 4. contribution of the entering state: exp(a_cum[i]) * (c_i . state)
    entering = entering.view(bt * nc, heads * p, n).transpose(-1, -2)  # [Bt*nc, N, H*P]
    y_off = (c @ entering).view(bt, nc, chunk, heads, p) * _decay(a_cum).unsqueeze(-1)
    y = y_off + y_diag.transpose(2, 3)  # [Bt, nc, l, H, P]
    return y.reshape(bt, nc * chunk, heads, p)[:, :length]


def selective_scan_reference(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """Token-by-token loop of the same recurrence (slow; for tests)."""
    bt, length, heads, p = x.shape
    h = x.new_zeros(bt, heads, p, b.shape[-1])
    ys = []
    for t in range(length):
        decay = torch.exp(dt[:, t] * a)[:, :, None, None]
        h = decay * h + (dt[:, t, :, None] * x[:, t])[..., None] * b[:, t, None, None, :]
        ys.append((h * c[:, t, None, None, :]).sum(-1))
    return torch.stack(ys, dim=1)


class ScanDirection(nn.Module):
    """One direction: causal depthwise conv, SiLU, data-dependent (B, C, dt), selective scan."""

    def __init__(self, inner: int, state: int, heads: int, kernel: int, chunk: int) -> None:
        super().__init__()
        self.heads = heads
        self.state = state
        self.chunk = chunk
        self.conv = nn.Conv1d(inner, inner, kernel, groups=inner, padding=kernel - 1)
        self.bcdt = nn.Linear(inner, 2 * state + heads)
        # Mamba's initialisation: dt in [1e-3, 1e-1] log-uniformly, decay rates 1..heads.
        dt = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), heads))
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.a_log = nn.Parameter(torch.log(torch.arange(1, heads + 1, dtype=torch.float32)))
        self.skip = nn.Parameter(torch.ones(heads))

    def forward(self, x: Tensor) -> Tensor:
        """x [B, L, E] (already in this direction's order) -> [B, L, E]."""
        bsz, length, inner = x.shape
        xc = F.silu(self.conv(x.transpose(1, 2))[..., :length].transpose(1, 2).contiguous())
        b, c, dt = self.bcdt(xc).split([self.state, self.state, self.heads], dim=-1)
        with autocast_disabled(x.device.type):
            xh = xc.float().view(bsz, length, self.heads, inner // self.heads)
            dt = F.softplus(dt.float() + self.dt_bias)
            a = -torch.exp(self.a_log)
            y = selective_scan(xh, dt, a, b.float(), c.float(), self.chunk)
            y = y + self.skip[:, None] * xh
        return y.reshape(bsz, length, inner).to(x.dtype)


class BiScanBlock(nn.Module):
    """Pre-norm bidirectional selective-scan block with SiLU gate and residual.

    Two directions with separate scan parameters share the input/output projections; a pixel
    sequence has no natural causal order, so both directions are summed.
    """

    def __init__(
        self, dim: int, expand: int, state: int, heads: int, kernel: int, chunk: int, dropout: float
    ) -> None:
        super().__init__()
        inner = expand * dim
        self.norm = nn.LayerNorm(dim)
        self.in_proj = nn.Linear(dim, 2 * inner)
        self.forward_scan = ScanDirection(inner, state, heads, kernel, chunk)
        self.backward_scan = ScanDirection(inner, state, heads, kernel, chunk)
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        x, z = self.in_proj(self.norm(tokens)).chunk(2, dim=-1)
        y = self.forward_scan(x) + self.backward_scan(x.flip(1)).flip(1)
        y = self.out_norm(y) * F.silu(z)
        return tokens + self.drop(self.out_proj(y))


class LongRangeFusion(nn.Module):
    """``depth`` BiScanBlocks over the joint token sequence [B, L, D]."""

    def __init__(
        self,
        dim: int,
        depth: int,
        expand: int,
        state: int,
        heads: int,
        kernel: int,
        chunk: int,
        dropout: float,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            BiScanBlock(dim, expand, state, heads, kernel, chunk, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        out: Tensor = self.norm(tokens)
        return out
