"""models.ssaf.attention: torch's scaled-dot-product attention, or its CPU inference form."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from models import ssaf
from models.ssaf import attention


def _qkv(batch: int, queries: int, keys: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    # [B, n, h, d] memory transposed to [B, h, n, d], as CrossAttention hands them over
    q = torch.randn(batch, queries, 4, 8, generator=g).transpose(1, 2)
    k, v = torch.randn(batch, keys, 2, 4, 8, generator=g).unbind(2)
    return q, k.transpose(1, 2), v.transpose(1, 2)


@pytest.mark.parametrize("exp2_pays", [True, False])  # AVX-512, or torch's kernel
@pytest.mark.parametrize("batch", [1, 2, 37])  # one part, exactly one, a partial last part
def test_cpu_inference_is_attention_to_float32_rounding(
    monkeypatch: pytest.MonkeyPatch, batch: int, exp2_pays: bool
) -> None:
    monkeypatch.setattr(ssaf, "exp2_attention_pays", lambda: exp2_pays)
    q, k, v = _qkv(batch, 121, 50, seed=batch)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode():
        out = attention(q, k, v)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
    # laid out token-major: the heads merge into [B, n, h * d] without a copy
    assert out.transpose(1, 2).is_contiguous()
    with torch.inference_mode():
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v),
                                   atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("exp2_pays", [True, False])
def test_cpu_inference_under_bfloat16_autocast_computes_in_float32_where_bfloat16_does_not_pay(
    monkeypatch: pytest.MonkeyPatch, exp2_pays: bool
) -> None:
    monkeypatch.setattr(ssaf, "bfloat16_products_pay", lambda: False)
    monkeypatch.setattr(ssaf, "exp2_attention_pays", lambda: exp2_pays)
    q, k, v = (t.bfloat16() for t in _qkv(5, 121, 121))
    # the bfloat16 inputs, exactly, in float64
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("exp2_pays", [True, False])
def test_float64_stays_float64(monkeypatch: pytest.MonkeyPatch, exp2_pays: bool) -> None:
    monkeypatch.setattr(ssaf, "exp2_attention_pays", lambda: exp2_pays)
    q, k, v = (t.double() for t in _qkv(3, 9, 9))
    with torch.inference_mode():
        out = attention(q, k, v)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v),
                               atol=1e-12, rtol=1e-12)


def test_with_autograd_it_stays_scaled_dot_product_attention() -> None:
    q, k, v = (t.detach().requires_grad_() for t in _qkv(3, 121, 121))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
        reference = F.scaled_dot_product_attention(q, k, v)
    assert torch.equal(out, reference)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("batch", [1, 8, 37])  # one part, exactly one, a partial last part
def test_bfloat16_products_under_bfloat16_autocast_where_they_pay(
    monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    monkeypatch.setattr(ssaf, "bfloat16_products_pay", lambda: True)
    q, k, v = (t.bfloat16() for t in _qkv(batch, 121, 121, seed=batch))
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16 and out.shape == expected.shape
    assert out.transpose(1, 2).is_contiguous()
    # bfloat16 products and probabilities: within a few bfloat16 roundings of the exact result
    torch.testing.assert_close(out.double(), expected, atol=2e-2, rtol=2e-2)
    # ... and no further from it than torch's own bfloat16 kernel is, by more than rounding
    with torch.inference_mode():
        torch_bf16 = F.scaled_dot_product_attention(q, k, v).double()
    ours = (out.double() - expected).abs().max().item()
    theirs = (torch_bf16 - expected).abs().max().item()
    assert ours <= 4 * theirs + 1e-2


def _use_cpu_features(monkeypatch: pytest.MonkeyPatch, features: dict[str, bool] | None) -> None:
    """torch's CPU feature table reads ``features`` (None: torch has no table)."""
    if features is None:
        monkeypatch.delattr(torch._C._cpu, "_get_cpu_capability")
    else:
        monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: features)


@pytest.mark.parametrize(
    ("features", "pays"),
    [
        ({"avx512_bf16": True, "amx_bf16": False}, True),  # AMD Zen 4
        ({"avx512_bf16": True, "amx_bf16": True}, False),  # Intel Sapphire Rapids and later
        ({"avx512_bf16": False, "amx_bf16": False}, False),  # emulated bfloat16
        (None, False),  # a torch without the table
    ],
)
def test_bfloat16_products_pay_by_cpu_features(
    monkeypatch: pytest.MonkeyPatch, features: dict[str, bool] | None, pays: bool
) -> None:
    _use_cpu_features(monkeypatch, features)
    assert ssaf.bfloat16_products_pay.__wrapped__() is pays


@pytest.mark.parametrize(
    ("features", "pays"),
    [
        ({"avx512_f": True, "avx2": True}, True),  # AMD Zen 4, Intel Xeon
        ({"avx512_f": False, "avx2": True}, False),  # AVX2-only x86
        ({}, False),  # an aarch64 table
        (None, False),  # a torch without the table
    ],
)
def test_exp2_attention_pays_by_cpu_features(
    monkeypatch: pytest.MonkeyPatch, features: dict[str, bool] | None, pays: bool
) -> None:
    _use_cpu_features(monkeypatch, features)
    assert ssaf.exp2_attention_pays.__wrapped__() is pays


@pytest.mark.parametrize("exp2_pays", [True, False])
@pytest.mark.parametrize("bf16_pays", [False, True])
def test_only_cpu_inference_takes_the_chunked_paths(
    monkeypatch: pytest.MonkeyPatch, bf16_pays: bool, exp2_pays: bool
) -> None:
    calls: list[tuple[str, int]] = []

    def spy(name: str, kernel: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        def call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            calls.append((name, q.shape[0]))
            return kernel(q, k, v)

        return call

    monkeypatch.setattr(ssaf, "bfloat16_products_pay", lambda: bf16_pays)
    monkeypatch.setattr(ssaf, "_cpu_inference_attention",
                        spy("float32", ssaf._cpu_inference_attention))
    monkeypatch.setattr(ssaf, "_cpu_float32_attention",
                        spy("torch float32", ssaf._cpu_float32_attention))
    monkeypatch.setattr(ssaf, "exp2_attention_pays", lambda: exp2_pays)
    monkeypatch.setattr(ssaf, "_cpu_bf16_attention", spy("bfloat16", ssaf._cpu_bf16_attention))
    q, k, v = _qkv(2, 9, 9)
    attention(q, k, v)  # autograd on
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attention(q, k, v)  # autograd on, under autocast
    assert calls == []
    with torch.inference_mode():
        attention(q, k, v)
        with torch.autocast("cpu", dtype=torch.float16):
            attention(q, k, v)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        attention(q, k, v)
    float32 = "float32" if exp2_pays else "torch float32"
    under_bf16 = "bfloat16" if bf16_pays else float32
    assert calls == [(float32, 2), (float32, 2), (under_bf16, 2)]


@pytest.mark.parametrize("min_normaliser", [0.0, float("inf")])  # only exp2, only the softmax
def test_cpu_inference_both_forms_are_attention(
    monkeypatch: pytest.MonkeyPatch, min_normaliser: float
) -> None:
    monkeypatch.setattr(ssaf, "_MIN_NORMALISER", min_normaliser)
    q, k, v = _qkv(9, 121, 121, seed=3)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode():
        out = attention(q, k, v)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)


def test_cpu_inference_recomputes_queries_whose_scores_lie_far_below_their_bound() -> None:
    # Keys of large norm orthogonal to the query: |q|·max|k| overestimates every score by
    # ~10^5 (binary orders), so exp2 of the shifted scores underflows to zero.
    q = torch.zeros(5, 1, 3, 8, dtype=torch.float64)
    k = torch.zeros(5, 1, 4, 8, dtype=torch.float64)
    q[..., 0] = 1000.0
    k[:, :, 0, 1] = 1000.0
    k[:, :, 1:, 0] = torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64)
    v = torch.randn(5, 1, 4, 8, dtype=torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v)
    with torch.inference_mode():
        out = attention(q.float(), k.float(), v.float())
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=1e-5)


def test_cpu_inference_with_heads_wider_than_the_padded_values() -> None:
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(3, 2, 30, 20, generator=g) for _ in range(3))  # 20-channel heads
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    with torch.inference_mode():
        out = attention(q, k, v)
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)
