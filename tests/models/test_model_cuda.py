"""CUDA paths (skipped without CUDA): mixed precision keeps the frequency and scan islands in
float32, the dense-DFT forms match the FFT forms on the GPU, large batches equal small ones."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_inputs, tiny_config

from models import AFCM, HFRM, S2Fin
from models.long_range import selective_scan

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(autouse=True)
def _no_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _half_dtypes() -> list[torch.dtype]:
    return [torch.float16] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])


@pytest.mark.parametrize("dtype", _half_dtypes())
def test_frequency_islands_run_in_float32_under_cuda_autocast(dtype: torch.dtype) -> None:
    x = torch.randn(4, 8, 11, 11, device="cuda")
    for dense in (True, False):
        afcm = AFCM(8, 0.35, 0.05, size=11).cuda()
        hfrm = HFRM(8, 0.25, 0.05, size=11).cuda()
        afcm.dense_dft = hfrm.dense_dft = dense
        with torch.autocast(device_type="cuda", dtype=dtype):
            low, high = afcm.split(x.to(dtype))
            opt, act = hfrm(x.to(dtype), x.to(dtype))
        assert low.dtype == high.dtype == opt.dtype == act.dtype == dtype
        ref_low, _ = afcm.split(x)
        ref_opt, _ = hfrm(x, x)
        torch.testing.assert_close(low.float(), ref_low, atol=0.05, rtol=0.05)
        torch.testing.assert_close(opt.float(), ref_opt, atol=0.05, rtol=0.05)


def test_dense_dft_forms_match_fft_forms_on_cuda() -> None:
    x = torch.randn(3, 6, 11, 11, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randn(3, 6, 11, 11, device="cuda").contiguous(memory_format=torch.channels_last)
    afcm, hfrm = AFCM(6, 0.35, 0.05, size=11).cuda(), HFRM(6, 0.25, 0.05, size=11).cuda()
    dense = (afcm.split(x), hfrm(x, y))
    afcm.dense_dft = hfrm.dense_dft = False
    fft = (afcm.split(x), hfrm(x, y))
    for a, b in zip([*dense[0], *dense[1]], [*fft[0], *fft[1]], strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_scan_on_cuda_matches_cpu_and_stays_float32_under_autocast() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 267, 2, 8, generator=g)
    dt = torch.nn.functional.softplus(torch.randn(2, 267, 2, generator=g))
    a = -torch.rand(2, generator=g) - 0.1
    b, c = torch.randn(2, 267, 16, generator=g), torch.randn(2, 267, 16, generator=g)
    cpu = selective_scan(x, dt, a, b, c, 16)
    gpu = selective_scan(*(t.cuda() for t in (x, dt, a, b, c)), 16)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", _half_dtypes())
def test_network_under_cuda_autocast_agrees_with_float32(dtype: torch.dtype) -> None:
    cfg = tiny_config(patch_size=11, spectral_window=5, dim=32, heads=4)
    model = S2Fin(cfg).cuda().eval()
    inputs = [t.cuda() for t in make_inputs(cfg, 64, seed=1)]
    with torch.inference_mode():
        reference = model(*inputs)
        with torch.autocast(device_type="cuda", dtype=dtype):
            mixed = model(*inputs)
    assert torch.isfinite(mixed).all()
    agreement = (mixed.float().argmax(1) == reference.argmax(1)).float().mean().item()
    assert agreement >= 0.9, agreement
    model.train()
    with torch.autocast(device_type="cuda", dtype=dtype):
        loss = torch.nn.functional.cross_entropy(model(*inputs).float(), torch.arange(64) % 3)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_large_batch_equals_small_batches_and_cpu() -> None:
    cfg = tiny_config(patch_size=11, spectral_window=5)
    model = S2Fin(cfg).eval()
    inputs = make_inputs(cfg, 2048, seed=2)
    gpu_model = S2Fin(cfg).cuda().eval()
    gpu_model.load_state_dict(model.state_dict())
    with torch.inference_mode():
        big = gpu_model(*(t.cuda() for t in inputs))
        parts = torch.cat([gpu_model(*(t[i:i + 256].cuda() for t in inputs))
                           for i in range(0, 2048, 256)])
        cpu = model(*(t[:256] for t in inputs))
    torch.testing.assert_close(big, parts, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(big[:256].cpu(), cpu, atol=1e-4, rtol=1e-4)


def test_pinned_non_blocking_copies_arrive_intact() -> None:
    host = torch.randn(4, 64, 40, 40).pin_memory()
    assert host.is_pinned()
    device = host.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    torch.testing.assert_close(device.cpu(), host)
