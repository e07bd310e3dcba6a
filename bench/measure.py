"""Timing and FLOP counting shared by the speed benchmarks (bench_model.py, bench_speed.py).

Import after ``s2fin_cli.acceleration.configure_runtime()`` where that matters: this module
loads torch."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import AFCM, HFRM, S2Fin, ssaf


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int,
                   warmup: int = 1) -> float:
    """Median wall time of ``fn`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_matmul_flops(device: torch.device, repeats: int, size: int = 2048) -> float:
    """FLOP/s of a large square float32 matmul with the current threads (the practical peak)."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    return 2.0 * size**3 / median_seconds(lambda: a @ b, device, repeats)


def _reference_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q kᵀ / √d) v as two plain products, which the FLOP counter counts at their
    mathematical size (torch's CPU attention kernel is not counted at all, and the CPU
    inference kernel pads its values to 16 columns)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def reference_flops_per_sample(model: S2Fin, inputs: tuple[torch.Tensor, ...]) -> float:
    """FLOPs per sample of the network's own work, whatever kernels compute it: AFCM/HFRM in
    their FFT form (their DFT matrix products, the fast CPU form, are not counted, like the
    FFTs) and SSAF's attention as its two products (:func:`_reference_attention`)."""
    blocks = [m for m in model.modules() if isinstance(m, AFCM | HFRM)]
    for m in blocks:
        m.dense_dft = False
    kernel = ssaf.attention
    ssaf.attention = _reference_attention
    try:
        counter = FlopCounterMode(display=False)
        with torch.inference_mode(), counter:
            model(*inputs)
    finally:
        ssaf.attention = kernel
        for m in blocks:
            m.dense_dft = True
    return counter.get_total_flops() / inputs[0].shape[0]
