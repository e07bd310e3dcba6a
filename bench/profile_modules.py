"""Where the default network's forward spends its time, per top-level module (not a test).

Times each child of S2Fin (HFSET, stems, AFCM, SSAF, deep convs, HFRM, long-range fusion, head)
with forward hooks, in float32 and under CPU bfloat16 autocast (the precision `s2fin predict`
picks on CPUs with native bfloat16), on random weights and inputs of `s2fin train`'s default
network for bench_speed.py's 64-band HSI + LiDAR scene (dim 32, depth 1, 11 classes):

    python3 bench/profile_modules.py [--batch-size 128] [--repeats 10] [--threads 1]

Hook times include the Python between a module's call and its first kernel; the per-module
milliseconds add up to the total within a few percent. Measure on an idle machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from s2fin_cli import acceleration

acceleration.configure_runtime()

import torch  # noqa: E402
from torch import nn  # noqa: E402

from models import S2Fin  # noqa: E402
from s2fin_cli.training.settings import NetworkOptions  # noqa: E402

# `s2fin train`'s default network for bench_speed.py's scene: 64 HSI bands (30 after PCA), 2
# LiDAR bands, 11 classes (85,018 parameters, as bench_speed.py reports).
DEFAULT_NETWORK = NetworkOptions().build_config(bands=64, reduced=30, aux=2, classes=11)


def profile(model: S2Fin, batch_size: int, repeats: int,
            dtype: torch.dtype) -> tuple[float, dict[str, float]]:
    """Seconds per forward of ``batch_size`` random patches, and seconds per top-level module."""
    cfg = model.config
    s, p = cfg.spectral_window, cfg.patch_size
    inputs = (torch.randn(batch_size, cfg.bands, s, s),
              torch.randn(batch_size, cfg.reduced_bands, p, p),
              torch.randn(batch_size, cfg.active_bands, p, p))
    spent: dict[str, float] = {}
    started: dict[str, float] = {}
    handles = []
    for name, child in model.named_children():
        def before(_m: nn.Module, _i: object, name: str = name) -> None:
            started[name] = time.perf_counter()

        def after(_m: nn.Module, _i: object, _o: object, name: str = name) -> None:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started[name]

        handles += [child.register_forward_pre_hook(before), child.register_forward_hook(after)]
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16,
                                                    enabled=dtype == torch.bfloat16):
            for _ in range(2):
                model(*inputs)
            spent.clear()
            start = time.perf_counter()
            for _ in range(repeats):
                model(*inputs)
            total = (time.perf_counter() - start) / repeats
    finally:
        for handle in handles:
            handle.remove()
    return total, {name: seconds / repeats for name, seconds in spent.items()}


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = S2Fin(DEFAULT_NETWORK).eval()
    results: dict[str, dict[str, float]] = {}
    for label, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        total, modules = profile(model, args.batch_size, args.repeats, dtype)
        results[label] = {"total": total, **modules}
        print(f"{label}: {total * 1e3:.1f} ms per batch of {args.batch_size} "
              f"({args.batch_size / total:.0f} px/s, {args.threads} thread(s))")
        print("  " + ", ".join(f"{name} {sec * 1e3:.1f}" for name, sec in modules.items()))
    return results


if __name__ == "__main__":
    main()
