"""Micro-benchmark of the S2Fin network (not a test).

Prints, for a Houston-like configuration (144 bands, 30 reduced, 1 LiDAR band, 15 classes,
patch 11): eval-mode forward throughput (patches/s under torch.inference_mode) of the full model
and of each ablation (one module off), the FLOPs per patch counted by
torch.utils.flop_counter.FlopCounterMode (matmuls, convolutions, attention; FFTs and elementwise
ops are not counted), the peak float32 matmul FLOP/s measured in the same run, and the ratio
achieved / peak.

    python3 bench/bench_model.py --batch-size 256 --repeats 5 --device cpu

Timings on a shared CPU depend on what else runs: the load average before the run is printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.measure import median_seconds, peak_matmul_flops, reference_flops_per_sample
from models import S2Fin, S2FinConfig, parameter_table

HOUSTON = S2FinConfig(bands=144, reduced_bands=30, active_bands=1, num_classes=15, patch_size=11)
VARIANTS: list[tuple[str, dict[str, bool]]] = [
    ("full", {}),
    ("no HFSET", {"use_hfset": False}),
    ("no AFCM", {"use_afcm": False}),
    ("no SSAF", {"use_ssaf": False}),
    ("no HFRM", {"use_hfrm": False}),
    ("no long-range", {"use_long_range": False}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = HOUSTON
    b, p, s = args.batch_size, cfg.patch_size, cfg.spectral_window
    inputs = (
        torch.randn(b, cfg.bands, s, s, device=device),
        torch.randn(b, cfg.reduced_bands, p, p, device=device),
        torch.randn(b, cfg.active_bands, p, p, device=device),
    )
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, device {device}, "
        f"threads {torch.get_num_threads()}, cpus {os.cpu_count()}"
    )
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        print("load average before run: " + " ".join(f"{x:.2f}" for x in os.getloadavg()))
    peak = peak_matmul_flops(device, args.repeats, args.matmul_size)
    print(f"peak float32 matmul ({args.matmul_size}x{args.matmul_size}): {peak / 1e9:.1f} GFLOP/s")
    print(
        f"config: bands={cfg.bands} reduced={cfg.reduced_bands} active={cfg.active_bands} "
        f"classes={cfg.num_classes} patch={p} window={s} dim={cfg.dim}; batch {b}, "
        f"median of {args.repeats}"
    )
    header = f"{'variant':<14} {'params':>8} {'MFLOP/patch':>12} {'ms/batch':>9} {'patches/s':>10}"
    print(header + f" {'GFLOP/s':>8} {'of peak':>8}")
    for name, switches in VARIANTS:
        model = S2Fin(dataclasses.replace(cfg, **switches)).to(device).eval()
        params = dict(parameter_table(model))["total"]
        flops = reference_flops_per_sample(model, inputs)

        def run(model: S2Fin = model) -> object:
            with torch.inference_mode():
                return model(*inputs)

        seconds = median_seconds(run, device, args.repeats, args.warmup)
        rate = b / seconds
        achieved = flops * rate
        print(
            f"{name:<14} {params:>8d} {flops / 1e6:>12.1f} {seconds * 1e3:>9.1f} {rate:>10.1f} "
            f"{achieved / 1e9:>8.2f} {achieved / peak:>8.1%}"
        )


if __name__ == "__main__":
    main()
