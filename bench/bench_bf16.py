"""bfloat16 autocast on the CPU: speed and class-map agreement with float32 (not a test).

Classifies a scene twice with the code `s2fin predict` runs (s2fin_cli.inference.predict_scene,
its batch size and threads), once in float32 and once under CPU bfloat16 autocast (the network
keeps its DFT products, FFTs and selective scan in float32), and prints both speeds, the share
of pixels whose class agrees, and the largest logit difference on the first batch. Use a trained
model: an untrained one has near-uniform logits, whose argmax flips at the smallest change.

    python3 bench/bench_bf16.py sample_scenes/scene.tif -m model.s2fin [--threads N]

Only where the CPU computes bfloat16 natively (AVX512-BF16, AMX) is bf16 expected to be faster;
elsewhere oneDNN emulates it. The CPU's support is printed first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s2fin_cli.acceleration import (  # noqa: E402 - before torch: OpenMP waits passively
    configure_runtime,
    cpu_bf16_support,
    default_threads,
)

configure_runtime()

import torch  # noqa: E402

from s2fin_cli.device import autocast  # noqa: E402
from s2fin_cli.inference import (  # noqa: E402
    BlockPredictor,
    BlockResult,
    predict_scene,
    scene_blocks,
)
from s2fin_cli.io.reader import open_stacked_scene  # noqa: E402
from s2fin_cli.model_file import ModelBundle, load_model_file  # noqa: E402


def classify(scene_path: Path, bundle: ModelBundle, model: torch.nn.Module,
             cpu_bf16: bool) -> tuple[np.ndarray, float]:
    """The class map of the scene through the predictor `s2fin predict` builds (its batch size
    and batch workers), in float32 or under its CPU bfloat16 autocast."""
    predictor = BlockPredictor(bundle, "cpu", model=model, cpu_bf16=cpu_bf16)
    blocks: list[BlockResult] = []
    with open_stacked_scene(scene_path) as scene:
        start = time.perf_counter()
        predict_scene(scene, predictor, blocks.append, scene_blocks(scene.grid), progress=False)
        seconds = time.perf_counter() - start
        classes = np.zeros((scene.grid.height, scene.grid.width), dtype=np.int64)
    for block in blocks:
        rows = slice(int(block.window.row_off), int(block.window.row_off + block.window.height))
        cols = slice(int(block.window.col_off), int(block.window.col_off + block.window.width))
        classes[rows, cols] = block.classes
    return classes, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scene", type=Path)
    parser.add_argument("-m", "--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=0, help="0: the CLI's default")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or default_threads())
    print(cpu_bf16_support().describe(), f"| threads {torch.get_num_threads()}")
    bundle = load_model_file(args.model)
    model = bundle.build_model("cpu")
    fp32, t32 = classify(args.scene, bundle, model, cpu_bf16=False)
    bf16, t16 = classify(args.scene, bundle, model, cpu_bf16=True)
    valid = fp32 > 0
    agree = float((fp32[valid] == bf16[valid]).mean())
    cfg = model.config
    g = torch.Generator().manual_seed(0)
    p, s = cfg.patch_size, cfg.spectral_window
    x = (torch.randn(128, cfg.bands, s, s, generator=g),
         torch.randn(128, cfg.reduced_bands, p, p, generator=g),
         torch.randn(128, cfg.active_bands, p, p, generator=g))
    with torch.inference_mode():
        reference = model(*x)
        with autocast(torch.device("cpu"), True, cpu_bf16=True):
            dlogit = (model(*x).float() - reference).abs().max().item()
    n = int(valid.sum())
    print(f"{args.model.name}: {n} px; float32 {n / t32:.1f} px/s, bf16 {n / t16:.1f} px/s "
          f"(x{t32 / t16:.2f}); class agreement {agree:.4%}; max |d logit| (random "
          f"patches) {dlogit:.3g}")


if __name__ == "__main__":
    main()
