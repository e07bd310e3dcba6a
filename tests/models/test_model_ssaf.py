"""models.ssaf.attention: torch's scaled-dot-product attention, or its CPU bfloat16 form."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.ssaf import attention


def _qkv(batch: int, queries: int, keys: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    # [B, n, h, d] memory transposed to [B, h, n, d], as CrossAttention hands them over
    q = torch.randn(batch, queries, 4, 8, generator=g).transpose(1, 2)
    k, v = torch.randn(batch, keys, 2, 4, 8, generator=g).unbind(2)
    return q, k.transpose(1, 2), v.transpose(1, 2)


def test_float32_is_scaled_dot_product_attention() -> None:
    q, k, v = _qkv(5, 121, 121)
    with torch.inference_mode():
        assert torch.equal(attention(q, k, v), F.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("batch", [1, 16, 37])  # one part, exactly one, a partial last part
def test_cpu_bfloat16_inference_agrees_with_float64(batch: int) -> None:
    q, k, v = _qkv(batch, 121, 50, seed=batch)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    # bfloat16 keeps 8 bits of mantissa: outputs of size ~1 agree to about 2e-2
    torch.testing.assert_close(out.double(), expected, atol=3e-2, rtol=0)
    # and no worse than torch's own bfloat16 kernel, within a bfloat16 step
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sdpa = F.scaled_dot_product_attention(q, k, v)
    assert (out.double() - expected).abs().max() <= (sdpa.double() - expected).abs().max() + 2e-2


def test_with_autograd_it_stays_scaled_dot_product_attention() -> None:
    q, k, v = (t.detach().requires_grad_() for t in _qkv(3, 121, 121))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
        reference = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, reference)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_only_cpu_bfloat16_inference_takes_the_chunked_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from models import ssaf

    calls: list[int] = []
    chunked = ssaf._cpu_bf16_attention

    def spy(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        calls.append(q.shape[0])
        return chunked(q, k, v)

    monkeypatch.setattr(ssaf, "_cpu_bf16_attention", spy)
    q, k, v = _qkv(2, 9, 9)
    with torch.inference_mode():
        attention(q, k, v)  # float32
        with torch.autocast("cpu", dtype=torch.float16):
            attention(q, k, v)  # another autocast type
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attention(q, k, v)  # autograd on
    assert calls == []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attention(q, k, v)
    assert calls == [2]
