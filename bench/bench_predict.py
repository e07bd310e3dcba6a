"""Throughput and memory of whole-scene prediction (``s2fin predict``) on this machine.

Measures, in one run, on a synthetic stacked scene (random-weight model: speed does not depend
on training):

(a) ``predict``: :func:`s2fin_cli.inference.predict_scene` writing through
    :class:`s2fin_cli.io.classmap.ClassMapWriter` in-process: the code the CLI runs (threads for
    reading and writing, patches cut on the device), without process start and model loading;
(b) a per-pixel Python patch loop at the same batch size: the whole scene preprocessed and
    reflect-padded once, then every patch sliced in a Python loop, stacked into batches, forward;
(c) the model forward alone on pre-extracted patches (the ceiling for (a));

and prints pixels/s (classified pixels) and the ratios (a)/(c) and (a)/(b). Then it runs
``python -m s2fin_cli predict`` as a subprocess on the scene and on one with ``--rss-scale``
squared times the area (same valid pixels, so the same computation), and compares peak RSS.

The default (Houston-like) S²Fin classifies only tens of pixels per second on a 2-core CPU, so
the scene has a nodata mask: ``--valid-fraction`` of its pixels, scattered, are classified (the
whole scene is still read, preprocessed per block and written). That is conservative for (a):
the I/O per classified pixel is 1/valid-fraction times higher than on a full scene.

Usage:
    python bench/bench_predict.py                       # default config, 512x512, 64 bands
    python bench/bench_predict.py --config tiny --valid-fraction 1   # overhead-dominated case
Numbers are noisy on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import S2Fin, S2FinConfig  # noqa: E402
from s2fin_cli.classes import ClassTable  # noqa: E402
from s2fin_cli.inference import (  # noqa: E402
    DEFAULT_CPU_BATCH_SIZE,
    BlockPredictor,
    predict_scene,
    scene_blocks,
)
from s2fin_cli.io.classmap import ClassMapWriter, MapOutputs  # noqa: E402
from s2fin_cli.io.grid import Grid  # noqa: E402
from s2fin_cli.io.reader import open_stacked_scene  # noqa: E402
from s2fin_cli.io.stack import band_tags  # noqa: E402
from s2fin_cli.io.windows import iter_blocks, window_slices  # noqa: E402
from s2fin_cli.io.writer import geotiff_profile  # noqa: E402
from s2fin_cli.model_file import ModalitySpec, ModelBundle, save_model_file  # noqa: E402
from s2fin_cli.preprocessing import fit_preprocessor  # noqa: E402

TINY = {"dim": 16, "heads": 2, "hfset_depth": 1, "spatial_depth": 1, "long_range_depth": 1,
        "ssm_heads": 2}


def write_scene(path: Path, size: int, bands: int, valid: np.ndarray | None, seed: int) -> Grid:
    """A stacked float32 scene, written block by block; ``valid`` (size, size) or None = all."""
    grid = Grid(CRS.from_epsg(32615), Affine(1.0, 0, 270_000.0, 0, -1.0, 3_290_000.0), size,
                size)
    profile = geotiff_profile(grid, count=bands + 1, dtype="float32", nodata=float("nan"),
                              creation_options={"COMPRESS": "NONE"})
    rng = np.random.default_rng(seed)
    with rasterio.open(path, "w", **profile) as dst:
        dst.update_tags(**band_tags(bands, 1, "lidar"))
        for window in iter_blocks(size, size, 512):
            rs, cs = window_slices(window)
            h, w = int(window.height), int(window.width)
            data = rng.normal(size=(bands + 1, h, w)).astype(np.float32)
            if valid is not None:
                data[:, ~valid[rs, cs]] = np.nan
            dst.write(data, window=window)
    return grid


def make_model(path: Path, scene: Path, config: S2FinConfig, seed: int) -> ModelBundle:
    torch.manual_seed(seed)
    model = S2Fin(config).eval()
    with open_stacked_scene(scene) as opened:
        pre = fit_preprocessor(opened, config.reduced_bands, seed=seed)
        optical = ModalitySpec("optical", opened.optical.count, opened.optical.band_names, None)
        aux = ModalitySpec("lidar", 1, opened.aux.band_names, None)
    classes = ClassTable.from_ids(range(1, config.num_classes + 1))
    bundle = ModelBundle(config, {k: v.clone() for k, v in model.state_dict().items()}, pre,
                         classes, optical, aux)
    save_model_file(path, bundle, overwrite=True)
    return bundle


def measure_a(scene: Path, bundle: ModelBundle, out: Path, batch: int,
              block: int) -> dict[str, Any]:
    predictor = BlockPredictor(bundle, "cpu", batch_size=batch)
    with open_stacked_scene(scene) as opened, \
            ClassMapWriter(opened.grid, bundle.classes, MapOutputs(out, overwrite=True)) as w:
        summary = predict_scene(opened, predictor, w, scene_blocks(opened.grid, block),
                                progress=False)
    return {"classified": summary.classified, "seconds": summary.seconds,
            "px_s": summary.classified / summary.seconds, "pixels": summary.pixels}


def _padded_scene(scene: Path, bundle: ModelBundle) -> tuple[list[np.ndarray], np.ndarray]:
    with open_stacked_scene(scene) as opened:
        block = opened.read(opened.grid.full_window())
        valid = block.valid
    pre = bundle.preprocessor.device_tensors(torch.device("cpu"))
    arrays = [t.numpy() for t in pre(torch.from_numpy(block.optical),
                                     torch.from_numpy(block.aux))]
    h = bundle.config.patch_size // 2
    return [np.pad(a, ((0, 0), (h, h), (h, h)), mode="reflect") for a in arrays], valid


def measure_b(padded: list[np.ndarray], pixels: np.ndarray, bundle: ModelBundle,
              model: torch.nn.Module, batch: int) -> dict[str, Any]:
    """Per-pixel Python loop: slice each patch, stack a batch, forward."""
    p, s = bundle.config.patch_size, bundle.config.spectral_window
    h, sh = p // 2, s // 2
    start = time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(pixels), batch):
            spec, spat, act = [], [], []
            for r, c in pixels[i:i + batch]:
                pr, pc = r + h, c + h
                spec.append(padded[0][:, pr - sh:pr + sh + 1, pc - sh:pc + sh + 1])
                spat.append(padded[1][:, pr - h:pr + h + 1, pc - h:pc + h + 1])
                act.append(padded[2][:, pr - h:pr + h + 1, pc - h:pc + h + 1])
            model(*(torch.from_numpy(np.stack(x)) for x in (spec, spat, act))).argmax(1)
    seconds = time.perf_counter() - start
    return {"classified": len(pixels), "seconds": seconds, "px_s": len(pixels) / seconds}


def measure_c(padded: list[np.ndarray], pixels: np.ndarray, bundle: ModelBundle,
              model: torch.nn.Module, batch: int) -> dict[str, Any]:
    """Forward alone: every batch of patches cut before the clock starts."""
    from s2fin_cli.patches import cut_inputs

    optical, reduced, aux = (torch.from_numpy(a) for a in padded)
    h = bundle.config.patch_size // 2
    rows = torch.from_numpy(pixels[:, 0] + h)
    cols = torch.from_numpy(pixels[:, 1] + h)
    batches = [cut_inputs(optical, reduced, aux, rows[i:i + batch], cols[i:i + batch],
                          bundle.geometry)
               for i in range(0, len(pixels), batch)]
    start = time.perf_counter()
    with torch.inference_mode():
        for spectral, spatial, active in batches:
            model(spectral, spatial, active).argmax(1)
    seconds = time.perf_counter() - start
    return {"classified": len(pixels), "seconds": seconds, "px_s": len(pixels) / seconds}


def rss_child(scene: Path, model: Path, out: Path, batch: int, block: int,
              threads: int | None) -> dict[str, Any]:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [sys.executable, "-c",
           "import resource, sys; from s2fin_cli.cli.app import app\n"
           "try:\n    app(sys.argv[1:], prog_name='s2fin')\n"
           "except SystemExit as e:\n    code = e.code\n"
           "print('MAXRSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
           "file=sys.stderr); sys.exit(code)",
           "predict", str(scene), "-m", str(model), "-o", str(out), "--overwrite", "--json",
           "--device", "cpu", "--batch-size", str(batch), "--block-size", str(block)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"predict failed: {proc.stderr}")
    own = int(proc.stderr.rsplit("MAXRSS_KB", 1)[1].split()[0])
    report = json.loads(proc.stdout)["scenes"][0]
    return {"maxrss_mb": own / 1024, "children_maxrss_mb":
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
            "wall_s": wall, "pixels": report["pixels"], "classified": report["classified"]}


def throughput(args: argparse.Namespace, rng: np.random.Generator, tmp: Path, scene: Path,
               bundle: ModelBundle) -> None:
    """(a), (b) and (c), interleaved, and their table."""
    model = bundle.build_model("cpu")
    padded, valid_mask = _padded_scene(scene, bundle)
    pixels = np.argwhere(valid_mask)
    pixels = pixels[rng.permutation(len(pixels))[:args.bc_pixels]]
    pixels = pixels[np.lexsort((pixels[:, 1], pixels[:, 0]))]
    measure_c(padded, pixels[:args.batch_size], bundle, model, args.batch_size)  # warm-up
    # Interleaved rounds, best of each: other processes on a shared CPU slow down whichever
    # measurement they happen to overlap.
    best: dict[str, dict[str, Any]] = {}
    for round_ in range(1, args.repeat + 1):
        runs = {
            "c": measure_c(padded, pixels, bundle, model, args.batch_size),
            "b": measure_b(padded, pixels, bundle, model, args.batch_size),
            "a": measure_a(scene, bundle, tmp / "map.tif", args.batch_size,
                           args.block_size),
        }
        print(f"round {round_}: " + "  ".join(f"({k}) {v['px_s']:.1f} px/s"
                                               for k, v in sorted(runs.items())), flush=True)
        for key, value in runs.items():
            if key not in best or value["px_s"] > best[key]["px_s"]:
                best[key] = value
    del padded
    a, b, c = best["a"], best["b"], best["c"]
    rows = [("(a) predict (predict_scene + ClassMapWriter, in-process)", a),
            ("(b) per-pixel Python patch loop, same batch", b),
            ("(c) model forward alone, pre-cut patches", c)]
    print(f"\nbest of {args.repeat} interleaved rounds")
    print(f"{'path':60s} {'classified px':>14s} {'seconds':>9s} {'px/s':>10s}")
    for name, r in rows:
        print(f"{name:60s} {r['classified']:14d} {r['seconds']:9.1f} {r['px_s']:10.1f}")
    print(f"(a)/(c) = {a['px_s'] / c['px_s']:.3f}   (goal >= 0.7)")
    print(f"(a)/(b) = {a['px_s'] / b['px_s']:.3f}")
    print(f"(a) whole scene: {a['pixels']} px read/written in {a['seconds']:.1f} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=512, help="scene side (pixels)")
    ap.add_argument("--bands", type=int, default=64)
    ap.add_argument("--config", choices=("default", "tiny"), default="default")
    ap.add_argument("--valid-fraction", type=float, default=0.008)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (best is kept)")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_CPU_BATCH_SIZE)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--bc-pixels", type=int, default=1024, help="pixels timed for (b) and (c)")
    ap.add_argument("--rss-scale", type=int, default=2, help="side factor of the RSS scene")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-throughput", action="store_true", help="only the RSS comparison")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides: dict[str, Any] = TINY if args.config == "tiny" else {}
    config = S2FinConfig(bands=args.bands, reduced_bands=30, active_bands=1, num_classes=15,
                         dropout=0.0, **overrides)
    rng = np.random.default_rng(args.seed)
    print(f"S2Fin {args.config} config (dim {config.dim}, patch {config.patch_size}, "
          f"{args.bands} bands, 15 classes), scene {args.size}x{args.size}, valid fraction "
          f"{args.valid_fraction}, batch {args.batch_size}, block {args.block_size}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="s2fin-bench-") as tmp_text:
        tmp = Path(tmp_text)
        size = args.size
        valid = (rng.random((size, size)) < args.valid_fraction
                 if args.valid_fraction < 1 else None)
        scene = tmp / "scene.tif"
        write_scene(scene, size, args.bands, valid, args.seed)
        bundle = make_model(tmp / "model.s2fin", scene, config, args.seed)

        if not args.skip_throughput:
            throughput(args, rng, tmp, scene, bundle)

        if args.skip_rss:
            return
        # The same valid pixels in both scenes (24x24 squares, each at least one full batch: in
        # the first block and in the last one, so the last forward pass runs after the whole
        # scene went through the pipeline): the computation is identical, only the area read
        # and written grows.
        results = []
        for factor in (1, args.rss_scale):
            side = size * factor
            mask = np.zeros((side, side), bool)
            mask[100:124, 100:124] = True
            mask[side - 30:side - 6, side - 30:side - 6] = True
            path = tmp / f"rss{factor}.tif"
            write_scene(path, side, args.bands, mask, args.seed)
            r = rss_child(path, tmp / "model.s2fin", tmp / f"rss{factor}.classes.tif",
                          args.batch_size, args.block_size, args.threads)
            results.append((side, r))
            path.unlink()
        print()
        print(f"{'scene (CLI subprocess)':24s} {'pixels':>10s} {'classified':>10s} "
              f"{'peak RSS MB':>12s} {'wall s':>8s}")
        for side, r in results:
            print(f"{f'{side}x{side}':24s} {r['pixels']:10d} {r['classified']:10d} "
                  f"{r['maxrss_mb']:12.1f} {r['wall_s']:8.1f}")
        growth = results[1][1]["maxrss_mb"] / results[0][1]["maxrss_mb"] - 1
        print(f"peak RSS growth for {args.rss_scale ** 2}x the area: {100 * growth:+.1f} % "
              "(goal < 25 %)")


if __name__ == "__main__":
    main()
