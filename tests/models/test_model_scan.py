"""The chunked selective scan equals the token-by-token recurrence, and the scan blocks behave."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from models import selective_scan
from models.long_range import (
    BiScanBlock,
    LongRangeFusion,
    _chunked_scan,
    _factored_chunked_scan,
    _masked_chunked_scan,
    selective_scan_reference,
)


def _random_scan_inputs(
    batch: int, length: int, heads: int, p: int, n: int, seed: int, dt_scale: float = 1.0
) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    x = torch.randn(batch, length, heads, p, generator=g, dtype=f64)
    dt = F.softplus(torch.randn(batch, length, heads, generator=g, dtype=f64)) * dt_scale
    a = -torch.rand(heads, generator=g, dtype=f64) * 2 - 0.05
    b = torch.randn(batch, length, n, generator=g, dtype=f64)
    c = torch.randn(batch, length, n, generator=g, dtype=f64)
    return x, dt, a, b, c


@settings(max_examples=30, deadline=None)
@given(
    length=st.integers(1, 50),
    chunk=st.integers(1, 20),
    heads=st.integers(1, 3),
    seed=st.integers(0, 1000),
)
def test_chunked_scan_matches_the_recurrence(
    length: int, chunk: int, heads: int, seed: int
) -> None:
    x, dt, a, b, c = _random_scan_inputs(2, length, heads, 3, 4, seed)
    expected = selective_scan_reference(x, dt, a, b, c)
    scanned = selective_scan(x, dt, a, b, c, chunk)
    torch.testing.assert_close(scanned, expected, atol=1e-9, rtol=1e-9)
    # Without autograd the scan works in place: the same numbers, bit for bit.
    with torch.inference_mode():
        assert torch.equal(selective_scan(x, dt, a, b, c, chunk), scanned)


def test_scan_is_causal_and_stable_for_huge_steps() -> None:
    x, dt, a, b, c = _random_scan_inputs(1, 40, 2, 4, 5, seed=7, dt_scale=1e4)
    x, dt, b, c = (t.float().requires_grad_() for t in (x, dt, b, c))
    y = selective_scan(x, dt, a.float(), b, c, chunk=16)
    assert torch.isfinite(y).all()
    y[:, 20].sum().backward()
    for t in (x, dt, b, c):
        assert t.grad is not None and torch.isfinite(t.grad).all()
        assert t.grad[:, 21:].abs().max() == 0  # the future never influences the past
    with torch.inference_mode():
        assert torch.equal(selective_scan(x, dt, a.float(), b, c, chunk=16), y.detach())


def _chunk_decays(dt: torch.Tensor, a: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cumsum((dt * a).view(dt.shape[0], -1, chunk, dt.shape[2]), dim=2)


def test_factored_scan_equals_the_masked_scan_with_gradients() -> None:
    # Steps as a trained network has them: every chunk decays by less than the floor.
    x, dt, a, b, c = _random_scan_inputs(3, 64, 2, 5, 4, seed=3, dt_scale=0.3)
    a_cum = _chunk_decays(dt, a, 16)
    assert bool((a_cum[:, :, -1] > -30).all()) and float(a_cum[:, :, -1].min()) < -3
    leaves = [t.clone().requires_grad_() for t in (x, dt, b, c)]
    outputs, gradients = [], []
    for scan in (_factored_chunked_scan, _masked_chunked_scan):
        xg, dtg, bg, cg = leaves
        y = scan(xg, dtg, _chunk_decays(dtg, a, 16), bg, cg, 16)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outputs.append(y.detach())
        gradients.append([t.grad.clone() for t in leaves if t.grad is not None])
        for t in leaves:
            t.grad = None
    torch.testing.assert_close(outputs[0], outputs[1], atol=1e-12, rtol=1e-12)
    for factored, masked in zip(*gradients, strict=True):
        torch.testing.assert_close(factored, masked, atol=1e-11, rtol=1e-11)
    # The scan takes the factored form here, and the same bits without autograd.
    assert torch.equal(_chunked_scan(x, dt, a, b, c, 16), outputs[0])
    with torch.inference_mode():
        assert torch.equal(_chunked_scan(x, dt, a, b, c, 16), outputs[0])


def test_chunks_decaying_past_the_floor_take_the_masked_scan() -> None:
    x, dt, a, b, c = _random_scan_inputs(1, 32, 2, 4, 5, seed=5, dt_scale=30.0)
    a_cum = _chunk_decays(dt, a, 16)
    assert not bool((a_cum[:, :, -1] > -30).all())
    assert torch.equal(_chunked_scan(x, dt, a, b, c, 16),
                       _masked_chunked_scan(x, dt, a_cum, b, c, 16))


def test_bidirectional_block_sees_both_directions() -> None:
    torch.manual_seed(0)
    block = BiScanBlock(dim=8, expand=1, state=4, heads=2, kernel=4, chunk=8, dropout=0.0)
    tokens = torch.randn(1, 30, 8, requires_grad=True)
    block(tokens)[:, 15].sum().backward()
    assert tokens.grad is not None
    grad = tokens.grad.abs().sum(-1)[0]
    assert grad[:15].sum() > 0 and grad[16:].sum() > 0


def test_cpu_inference_in_pieces_equals_the_whole_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.long_range

    torch.manual_seed(0)
    fusion = LongRangeFusion(dim=8, depth=2, expand=1, state=4, heads=2, kernel=4, chunk=8,
                             dropout=0.0).eval()
    tokens = torch.randn(7, 30, 8)
    with torch.inference_mode():
        whole = fusion(tokens)
        monkeypatch.setattr(models.long_range, "_CPU_INFERENCE_SAMPLES", 3)
        sizes: list[int] = []
        fuse = fusion._fuse
        monkeypatch.setattr(fusion, "_fuse", lambda t: sizes.append(len(t)) or fuse(t))
        pieces = fusion(tokens)
    assert sizes == [3, 3, 1]
    torch.testing.assert_close(pieces, whole, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(fusion(tokens), whole, atol=1e-6, rtol=1e-6)
