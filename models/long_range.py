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

from .layers import Dropout
from .spectral_ops import autocast_disabled

# Decay factors below exp(-30) ~ 1e-13 are set to exactly 0. Left alone, exp of very negative
# numbers (large learned steps dt) yields float32 subnormals, and arithmetic on subnormals is
# much slower on x86 CPUs. A contribution damped by 1e-13 is far below float32 resolution next to
# the undamped ones, so the result is unchanged.
_DECAY_FLOOR = -30.0

# Samples per piece of the long-range fusion during CPU inference. Measured (batch 128, one
# thread, the whole forward in bfloat16, six alternating rounds in one process): pieces of 32
# samples 1.02x (default network) and 1.07x (paper-sized) the whole batch at once, 64 alike.
_CPU_INFERENCE_SAMPLES = 32


def _decay(log_decay: Tensor) -> Tensor:
    """exp(log_decay) for log_decay <= 0, exactly 0 at and below the floor.

    exp(-inf) = 0 has a zero (not NaN) gradient, and the discarded entries get none.
    """
    return F.threshold(log_decay, _DECAY_FLOOR, float("-inf")).exp()


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
    length = x.shape[1]
    chunk = max(1, min(chunk, length))
    pad = (-length) % chunk
    if pad:
        # Padding at the end never influences earlier outputs of a causal scan.
        x = F.pad(x, (0, 0, 0, 0, 0, pad))
        dt = F.pad(dt, (0, 0, 0, pad))
        b = F.pad(b, (0, 0, 0, pad))
        c = F.pad(c, (0, 0, 0, pad))
    return _chunked_scan(x, dt, a, b, c, chunk)[:, :length]


def _chunked_scan(x: Tensor, dt: Tensor, a: Tensor, b: Tensor, c: Tensor, chunk: int) -> Tensor:
    """:func:`selective_scan` on inputs whose length is a multiple of ``chunk``.

    Returns a new contiguous [Bt, L, H, P] tensor (the caller may add to it in place when
    autograd is off).

    Where no chunk decays by more than the floor (the usual case: a trained network's chunks
    of 16 tokens decay by a few units at most), :func:`_factored_chunked_scan` computes the
    same numbers up to float rounding with a third fewer passes; otherwise
    :func:`_masked_chunked_scan`, which zeroes decays below the floor, does.
    """
    bt, length, heads, _ = x.shape
    a_cum = torch.cumsum((dt * a).view(bt, length // chunk, chunk, heads), dim=2)  # <= 0
    # a_cum falls within each chunk, so its last entry is the chunk's largest decay.
    if bool((a_cum[:, :, -1] > _DECAY_FLOOR).all()):
        return _factored_chunked_scan(x, dt, a_cum, b, c, chunk)
    return _masked_chunked_scan(x, dt, a_cum, b, c, chunk)


def _factored_chunked_scan(
    x: Tensor, dt: Tensor, a_cum: Tensor, b: Tensor, c: Tensor, chunk: int
) -> Tensor:
    """The chunked scan with each decay exp(a_cum[i] - a_cum[j]) factored into
    exp(a_cum[i]) exp(-a_cum[j]), for chunks whose decay stays above the floor.

    Why: the factors are per token, so the heads share every product and nothing is built per
    head and token pair: u_j = exp(-a_cum[j]) dt_j x_j is scaled token-major, and
        y_i = exp(a_cum[i]) (sum_{j<=i} (c_i . b_j) u_j + c_i . state entering the chunk),
        state at the chunk's end = exp(a_cum[-1]) sum_j u_j b_j^T (+ the decayed entering one)
    are three batched matmuls over all heads at once (1.8x the masked form's speed without
    autograd, 1.5-2.2x forward and backward; measured in docs/network.md, "Factored scan, exp2
    attention"). The same numbers up to
    float rounding, not an approximation: with every chunk's decay above the floor
    (a_cum[-1] > -30) the masked form zeroes no decay either, exp(-a_cum[j]) <= exp(30) and
    exp(a_cum[i]) >= exp(-30) stay normal floats, and each product's relative rounding error
    is the same as the direct one's.
    """
    bt, length, heads, p = x.shape
    n = b.shape[-1]
    nc = length // chunk
    grad = torch.is_grad_enabled()
    # B and C may be column slices of one projection: reshape keeps them views.
    b = b.reshape(bt * nc, chunk, n)
    c = c.reshape(bt * nc, chunk, n)
    scale = torch.exp(-a_cum) * dt.view(bt, nc, chunk, heads)  # [Bt, nc, l, H]
    u = (x.view(bt, nc, chunk, heads, p) * scale.unsqueeze(-1)).view(bt * nc, chunk, heads * p)
    end_decay = a_cum[:, :, -1].exp()[..., None, None]  # [Bt, nc, H, 1, 1]

    # Each chunk's own contribution to the state at its end, [Bt, nc, H, P, N].
    states = torch.bmm(u.transpose(1, 2), b).view(bt, nc, heads, p, n)
    states = states * end_decay if grad else states.mul_(end_decay)
    # The state entering each chunk: L / chunk steps on small states (unbind and stack with
    # autograd: one stack in the backward pass instead of a zero-filled gradient per index).
    if grad:
        chunk_states = states.unbind(1)
        chunk_decay = end_decay.unbind(1)
        carried = [torch.zeros_like(chunk_states[0])]
        for i in range(nc - 1):
            carried.append(torch.addcmul(chunk_states[i], chunk_decay[i], carried[-1]))
        entering = torch.stack(carried, dim=1)
    else:
        entering = torch.empty_like(states)
        entering[:, 0].zero_()
        for i in range(nc - 1):
            torch.addcmul(states[:, i], end_decay[:, i], entering[:, i], out=entering[:, i + 1])

    # y before its exp(a_cum[i]) factor: c_i . entering state + masked (c_i . b_j) u_j.
    cb = torch.bmm(c, b.transpose(1, 2)).tril_()  # [Bt*nc, i, j], shared by the heads
    y = torch.bmm(c, entering.view(bt * nc, heads * p, n).transpose(1, 2))  # [Bt*nc, l, H*P]
    y = torch.baddbmm(y, cb, u) if grad else y.baddbmm_(cb, u)
    y = y.view(bt, nc, chunk, heads, p)
    out_decay = a_cum.exp().unsqueeze(-1)
    y = y * out_decay if grad else y.mul_(out_decay)
    return y.view(bt, length, heads, p)


def _masked_chunked_scan(
    x: Tensor, dt: Tensor, a_cum: Tensor, b: Tensor, c: Tensor, chunk: int
) -> Tensor:
    """The chunked scan with the decays of each chunk as a masked [i, j] matrix per head, decays
    below the floor set to exactly 0 (any step sizes; the reference form).

    Layouts are chosen for the fewest copies: the per-head (quadratic) parts run head-major
    ([Bt, chunks, H, l, ...], what the batched matmuls need), everything that is shared by the
    heads (B, C and the output) stays token-major, and the output is produced token-major by a
    matmul plus two in-place passes.
    """
    bt, length, heads, p = x.shape
    n = b.shape[-1]
    nc = length // chunk
    neg_inf = float("-inf")
    a_cum_h = a_cum.transpose(2, 3).contiguous()  # [Bt, nc, H, l]
    # B and C may be column slices of one projection: reshape keeps them views.
    b = b.reshape(bt * nc, chunk, n)
    c = c.reshape(bt * nc, chunk, n)

    # 1. within-chunk outputs: y[i] = sum_{j<=i} (c_i . b_j) exp(a_cum[i] - a_cum[j]) dt_j x_j.
    # The exponent is <= 0 on and below the diagonal. Above it the entries are clamped to 0 (so
    # they are never exponentiated to something that could overflow) and zeroed through the
    # causal mask on c.b, which also gives them exactly zero gradient.
    # threshold: x where x > floor, else -inf (exp: exactly 0), in one pass. Without autograd
    # every pass works in place on the one [Bt, nc, H, i, j] buffer (1.2x the scan's speed).
    seg = a_cum_h.unsqueeze(-1) - a_cum_h.unsqueeze(-2)  # [Bt, nc, H, i, j]
    cb = torch.bmm(c, b.transpose(1, 2)).tril_()  # [Bt*nc, i, j], shared by the heads
    if torch.is_grad_enabled():
        decay = _decay(seg.clamp(max=0.0))
        weights = decay * cb.view(bt, nc, 1, chunk, chunk)
    else:
        decay = F.threshold(seg.clamp_(max=0.0), _DECAY_FLOOR, neg_inf, inplace=True).exp_()
        weights = decay.mul_(cb.view(bt, nc, 1, chunk, chunk))
    # dt_j x_j, head-major. dt first: the product then takes dt's (head-major) layout.
    dt_h = dt.view(bt, nc, chunk, heads).transpose(2, 3).contiguous()
    xs = dt_h.unsqueeze(-1) * x.view(bt, nc, chunk, heads, p).transpose(2, 3)  # [Bt,nc,H,l,P]
    y_diag = torch.matmul(weights, xs)  # [Bt, nc, H, l, P]

    # 2. state at the end of each chunk from its own inputs: [Bt, nc, H, P, N]
    to_end = _decay(a_cum_h[..., -1:] - a_cum_h)  # [Bt, nc, H, l]
    b_h = to_end.unsqueeze(-1) * b.view(bt, nc, 1, chunk, n)  # [Bt, nc, H, l, N]
    states = torch.matmul(xs.transpose(-1, -2), b_h)

    # 3. recurrence across chunks (L / chunk steps on small states): state entering each chunk.
    # unbind, not states[:, i]: the backward of one unbind is one stack, whereas each indexing
    # op's backward would zero-fill a full-size gradient (O(nc^2) memory traffic).
    chunk_decay = _decay(a_cum_h[..., -1])[..., None, None].unbind(1)  # nc x [Bt, H, 1, 1]
    chunk_states = states.unbind(1)  # nc x [Bt, H, P, N]
    carried = [torch.zeros_like(chunk_states[0])]
    for i in range(nc - 1):
        carried.append(torch.addcmul(chunk_states[i], chunk_decay[i], carried[-1]))
    entering = torch.stack(carried, dim=1)  # [Bt, nc, H, P, N]

    # 4. contribution of the entering state, exp(a_cum[i]) * (c_i . state), token-major; then
    # the within-chunk part is added in place (reading it head-major).
    y = torch.bmm(c, entering.view(bt * nc, heads * p, n).transpose(1, 2))  # [Bt*nc, l, H*P]
    y = y.view(bt, nc, chunk, heads, p)
    if torch.is_grad_enabled():
        # out of place: in-place ops on a view cost a full-size copy in the backward pass
        y = y * _decay(a_cum).unsqueeze(-1) + y_diag.transpose(2, 3)
    else:
        y.mul_(_decay(a_cum).unsqueeze(-1)).add_(y_diag.transpose(2, 3))
    return y.view(bt, length, heads, p)


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
        chunk = max(1, min(self.chunk, length))
        pad = (-length) % chunk
        padded = length + pad
        # Causal depthwise conv as a channels-last conv2d on the token-major input: no layout
        # copies in or out. The extra left padding (pad) shifts the output so that its first
        # ``padded`` positions are the causal conv of the tokens followed by ``pad`` tail
        # positions: the chunk padding comes for free, and a causal scan never lets the tail
        # influence real tokens.
        kernel = self.conv.weight.shape[-1]
        conv = F.conv2d(
            x.transpose(1, 2).unsqueeze(2), self.conv.weight.unsqueeze(2), self.conv.bias,
            padding=(0, kernel - 1 + pad), groups=inner,
        )  # fmt: skip
        xc = F.silu(conv.squeeze(2)[..., pad : pad + padded].transpose(1, 2))  # [B, Lp, E]
        b, c, dt = self.bcdt(xc).split([self.state, self.state, self.heads], dim=-1)
        # float32 at least (float64 stays float64, for tests against the token loop)
        dtype = torch.promote_types(xc.dtype, torch.float32)
        with autocast_disabled(x.device.type):
            xh = xc.to(dtype).view(bsz, padded, self.heads, inner // self.heads)
            dt = F.softplus(dt.to(dtype) + self.dt_bias)
            a = -torch.exp(self.a_log)
            y = _chunked_scan(xh, dt, a, b.to(dtype), c.to(dtype), chunk)
            skip = self.skip[:, None]
            y = torch.addcmul(y, xh, skip) if torch.is_grad_enabled() else y.addcmul_(xh, skip)
        return y.view(bsz, padded, inner)[:, :length].to(x.dtype)


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
        self.drop = Dropout(dropout)

    def forward(self, tokens: Tensor) -> Tensor:
        x, z = self.in_proj(self.norm(tokens)).chunk(2, dim=-1)
        y = self.forward_scan(x) + self.backward_scan(x.flip(1)).flip(1)
        # The gate in float32 at least: under CPU bfloat16 autocast z is a strided half of the
        # projection, on which torch's bfloat16 SiLU is 6x slower than a float32 copy's.
        y = self.out_norm(y) * F.silu(z.to(torch.promote_types(z.dtype, torch.float32)))
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
        if (
            tokens.device.type == "cpu"
            and not torch.is_grad_enabled()
            and tokens.shape[0] > _CPU_INFERENCE_SAMPLES
        ):
            # Inference on the CPU, a few samples at a time: each piece's scan buffers stay in
            # the core's cache from one pass to the next. Samples are independent, so the
            # pieces give the whole batch's result.
            pieces = torch.split(tokens, _CPU_INFERENCE_SAMPLES)
            return torch.cat([self._fuse(piece) for piece in pieces])
        return self._fuse(tokens)

    def _fuse(self, tokens: Tensor) -> Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        out: Tensor = self.norm(tokens)
        return out
