"""The command line and the loop of the accuracy benchmark (``python3 -m bench.accuracy``).

For every scene: fit the preprocessing (z-score + PCA, unsupervised, as ``s2fin train`` does),
cut the test candidates' patches once, then for every N and seed draw N labelled pixels per
class, cut their patches, and train/score every method on exactly those patches. Results go to
``--out`` (markdown) and, with ``--json``, every run's report as JSON.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.accuracy import protocol
from bench.accuracy.methods import (
    ABLATED,
    ALL_METHODS,
    BASELINES,
    LABELS,
    S2FIN,
    Recipe,
    parameter_count,
    run_method,
)
from bench.accuracy.report import Run, SceneResult, merge_trial, render, render_trial
from bench.accuracy.scenes import (
    ALL_SCENES,
    DEFAULT_DATA_ROOT,
    REAL_SCENES,
    build_scene,
    dataset_scene,
)
from s2fin_cli import console
from s2fin_cli.io.reader import open_scene
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import fit_preprocessor
from s2fin_cli.training import NetworkOptions

REPO = Path(__file__).resolve().parents[2]

# Defaults of the full run, chosen from run times measured on the shared 2-core CPU: one S²Fin
# step (batch 32, patch 9, dim 32, depth 1, one thread) takes 0.12-0.5 s depending on the load,
# one test patch ~2.5 ms. At N = 10 S²Fin fits its training pixels within ~64 steps.
FULL = {"size": 96, "steps": 64, "test_cap": 600, "seeds": 5, "real_seeds": 3,
        "ablation_seeds": 3}
QUICK = {"size": 64, "steps": 25, "test_cap": 300, "seeds": 2, "real_seeds": 1,
         "ablation_seeds": None, "n": "5,10", "scenes": "urban,sen1floods11"}

_NETWORK = NetworkOptions()


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few-minute smoke run (small scenes, few steps and seeds)")
    p.add_argument("--seeds", type=int, default=None,
                   help=f"seeds per (scene, N) for generated/imported scenes "
                        f"(default {FULL['seeds']})")
    p.add_argument("--real-seeds", type=int, default=None,
                   help=f"seeds for the real scenes (default {FULL['real_seeds']})")
    p.add_argument("--n", default=None, help="labelled pixels per class (default 5,10,20)")
    p.add_argument("--scenes", default=None,
                   help=f"comma list from {','.join(ALL_SCENES)} (default all; 'none' with "
                        "--dataset)")
    p.add_argument("--dataset", action="append", default=[], type=Path,
                   help="a folder written by `s2fin datasets import` (repeatable)")
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="comma list from " + ",".join(ALL_METHODS))
    p.add_argument("--ablation-n", default="10",
                   help="N at which the ablations run ('all' for every N; default 10)")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    p.add_argument("--json", type=Path, default=None, help="also write every run as JSON")
    p.add_argument("--trial", default=None, metavar="TITLE",
                   help="append this run to --out as a 'Recipe trial: TITLE' section (replacing "
                        "an earlier one of the same title) instead of rewriting the file")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--size", type=int, default=None, help="generated scene side (px)")
    p.add_argument("--scene-seed", type=int, default=0)
    p.add_argument("--train-per-class", type=int, default=60,
                   help="training-eligible pixels per class in generated scenes")
    p.add_argument("--steps", type=int, default=None, help="optimisation steps per deep model")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--test-cap", type=int, default=None, help="test pixels scored per scene")
    p.add_argument("--min-test", type=int, default=10)
    p.add_argument("--class-min-n", type=int, default=None,
                   help="keep the classes that can supply this many training pixels (default: "
                        "the largest N); give the full run's largest N to a --trial run at one "
                        "N so it keeps the same classes, draws and test pixels")
    # The network of `s2fin train` (NetworkOptions' defaults), but a 9 x 9 patch: the CPU budget.
    p.add_argument("--patch-size", type=int, default=9)
    p.add_argument("--spectral-window", type=int, default=_NETWORK.spectral_window)
    p.add_argument("--pca", type=int, default=_NETWORK.pca)
    p.add_argument("--dim", type=int, default=_NETWORK.dim)
    p.add_argument("--depth", type=int, default=_NETWORK.depth)
    p.add_argument("--dropout", type=float, default=_NETWORK.dropout)
    p.add_argument("--ablation-seeds", type=int, default=None,
                   help="seeds of the ablation runs (the first K seeds; default "
                        f"{FULL['ablation_seeds']}, all seeds with --quick)")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("size", "steps", "test_cap", "seeds", "real_seeds", "ablation_seeds"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.n is None:
        args.n = QUICK["n"] if args.quick else "5,10,20"
    if args.scenes is None:
        args.scenes = ("none" if args.dataset else
                       (QUICK["scenes"] if args.quick else ",".join(ALL_SCENES)))
    return args


def _machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import sklearn

    return (f"{os.cpu_count()} CPU cores ({model}), {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}, torch {torch.__version__}"
            f", numpy {np.__version__}, scikit-learn {sklearn.__version__}")


def _git() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def methods_at(args: argparse.Namespace, ns: list[int]) -> dict[int, list[str]]:
    chosen = _names(args.methods)
    bad = [m for m in chosen if m not in ALL_METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {', '.join(ALL_METHODS)}")
    ab_ns = ns if args.ablation_n == "all" else _ints(args.ablation_n)
    return {n: [m for m in chosen if m not in ABLATED or n in ab_ns] for n in ns}


def run_scene(bench: Any, args: argparse.Namespace, ns: list[int], seeds: list[int],
              recipe: Recipe, network: NetworkOptions) -> SceneResult:
    t0 = time.perf_counter()
    plan = methods_at(args, ns)
    geometry = PatchGeometry(network.patch_size, network.spectral_window)
    with open_scene(bench.optical, bench.aux, bench.aux_kind) as scene:
        pools = protocol.build_pools(bench, scene, max_n=max([*ns, args.class_min_n or 0]),
                                     min_test=args.min_test, test_cap=args.test_cap)
        classes = pools.classes
        if len(classes) < 2:
            raise SystemExit(f"{bench.key}: fewer than 2 classes can supply {max(ns)} "
                             "training pixels")
        pre = fit_preprocessor(scene, network.pca, seed=0)
        candidates = protocol.cut(scene, pools.candidates, pre, geometry, classes)
        result = SceneResult(bench, classes, pools.pool.counts(classes), pools.test_available,
                             pools.candidates.counts(classes), pools.dropped_classes,
                             pools.dropped_nodata, seeds, ns, plan)
        ids = np.asarray(classes.ids, np.int64)
        excluded: list[int] = []
        for n in ns:
            for seed in seeds:
                d = protocol.draw(pools, n, seed, network.patch_size)
                excluded.append(d.excluded)
                train = protocol.cut(scene, d.train, pre, geometry, classes)
                test = protocol.subset(candidates, d.test_mask)
                reference = d.test(pools.candidates).classes
                for method in plan[n]:
                    if method in ABLATED and args.ablation_seeds is not None \
                            and seed >= args.ablation_seeds:
                        continue
                    out = run_method(method, train, test, len(classes), recipe=recipe,
                                     network=network, seed=seed, n_per_class=n)
                    report = AccuracyReport.from_arrays(reference, ids[out.pred], classes)
                    result.runs.append(Run(bench.key, n, seed, method, report,
                                           out.train_seconds, out.predict_seconds, len(d.train),
                                           len(reference), d.excluded))
                    _log(f"{bench.key} N={n} seed={seed} {method:<20} OA "
                         f"{100 * report.overall_accuracy:6.2f}  AA "
                         f"{100 * report.average_accuracy:6.2f}  train {out.train_seconds:5.1f}"
                         f" s  predict {out.predict_seconds:5.1f} s")
        if network and S2FIN in plan[ns[0]]:
            n_params = parameter_count(S2FIN, train, len(classes), network)
            result.notes.append(f"S²Fin here has {n_params:,} parameters "
                                f"({pre.bands} optical bands, {pre.reduced_bands} PCA "
                                f"components, {pre.aux_bands} {bench.aux_kind} bands, "
                                f"{len(classes)} classes).")
        if bench.test_labels is None:
            result.notes.append(
                f"Test pixels: the other labelled pixels of the map, minus those within "
                f"{network.patch_size // 2} px (Chebyshev) of a training pixel: "
                f"{min(excluded)}-{max(excluded)} of the {len(pools.candidates)} test "
                "candidates were removed per draw (the training pixels among them included).")
        elif max(excluded):
            result.notes.append(f"{min(excluded)}-{max(excluded)} test pixels within the patch "
                                "radius of a training pixel were removed per draw.")
    result.wall_seconds = time.perf_counter() - t0
    return result


def _protocol_lines(args: argparse.Namespace, ns: list[int], recipe: Recipe,
                    network: NetworkOptions) -> list[str]:
    return [
        f"N = {', '.join(map(str, ns))} labelled pixels per class, drawn seeded and stratified "
        "with `s2fin_cli.sampling.apply_protocol` (the `s2fin train --per-class N` draw). "
        "Generated scenes draw from `train_labels.tif` and test on `test_labels.tif` (disjoint "
        "objects, buffered). Real scenes draw from the label map and test on its other "
        f"labelled pixels, minus every pixel within {network.patch_size // 2} px of a training "
        "pixel (no test centre inside a training patch; neighbouring patches can still "
        "overlap).",
        f"Test pixels: a fixed seeded subsample of about {args.test_cap} per scene, "
        f"proportional per class but at least min(count, {protocol.TEST_FLOOR}) per class (so "
        "scenes with many small classes score more pixels; the per-class counts are listed), "
        "the same for every method, N and seed.",
        "All methods of one (scene, N, seed) use the same training pixels and the same test "
        "pixels; inputs are cut by `s2fin_cli.training_data.extract_patch_set` after "
        "`s2fin_cli.preprocessing.fit_preprocessor` (per-band z-score of the whole scene and "
        f"PCA to {network.pca} components, unsupervised, as `s2fin train` does).",
        "Metrics: `s2fin_cli.metrics.AccuracyReport` (OA, AA, Cohen's Kappa) and `mean_std` "
        "(population std over seeds, ddof 0).",
        "RF / SVM: per-pixel features = all z-scored optical bands + all z-scored active "
        "bands of the pixel; RF 200 trees (sqrt features), SVM RBF C = 10, gamma = 'scale' "
        "after standardisation. Fixed hyperparameters: no tuning.",
        "2-D CNN: 3 conv blocks (32-64-64, BatchNorm, ReLU, one max-pool) + global average "
        f"pool on the PCA + active {network.patch_size} x {network.patch_size} patch, defined in "
        "`bench/accuracy/methods.py`.",
        f"S²Fin: `build_config` of `s2fin train` with patch {network.patch_size}, spectral window "
        f"{network.spectral_window}, dim {network.dim}, depth {network.depth}, "
        f"dropout {network.dropout}; ablations switch one `use_*` flag off.",
        f"Training (CNN and every S²Fin variant): `s2fin_cli.training.fit` with a **fixed budget "
        f"of ~{recipe.steps} optimisation steps at N <= {recipe.reference_n}, "
        f"{recipe.steps} x N / {recipe.reference_n} above** (N = 20: "
        f"{recipe.steps_at(20)}; epochs = steps / batches per epoch), batch "
        f"{recipe.batch_size}, AdamW lr {recipe.lr:g}, weight decay {recipe.weight_decay:g}, "
        f"linear warm-up ({recipe.warmup_fraction:.0%} of the epochs) + cosine decay, label "
        f"smoothing {recipe.label_smoothing:g}, "
        f"{'random flips/rotations' if recipe.augment else 'no augmentation'}. "
        "**No validation split and no checkpoint selection**: the last weights are scored; "
        "no method ever sees a test pixel before scoring.",
    ]


def _reduction_lines(args: argparse.Namespace, ns: list[int], plan: dict[int, list[str]],
                     scenes: list[str]) -> list[str]:
    ab = sorted({n for n, ms in plan.items() if any(m in ABLATED for m in ms)})
    lines = [
        f"Generated scenes are {args.size} x {args.size} px (scene seed {args.scene_seed}); "
        "the real scenes are used whole.",
        f"Deep models train for a fixed ~{args.steps} steps of batch {args.batch_size} at "
        "N <= 10 (more at N = 20, see protocol), far fewer than the 100+ epochs of published "
        "recipes; at N = 10 that is enough for S²Fin to fit its training pixels (training "
        "accuracy ~1.0 after ~64 steps in a trial run).",
        f"S²Fin is small: dim {args.dim}, depth {args.depth}, patch {args.patch_size}.",
        f"Test sets are subsampled to about {args.test_cap} pixels per scene plus the "
        "per-class floor (see protocol).",
    ]
    if ab != ns:
        lines.append("Ablations (S²Fin with one module off) run only at N = "
                     f"{', '.join(map(str, ab)) or 'none'}"
                     + (f", with the first {args.ablation_seeds} seeds only (ablation costs "
                        "compare them with the full model on the same seeds)"
                        if args.ablation_seeds is not None else "") + ".")
    real = [s for s in scenes if s in REAL_SCENES]
    if real and args.real_seeds != args.seeds:
        lines.append(f"Real scenes ({', '.join(real)}) use {args.real_seeds} seeds, generated "
                     f"and imported scenes {args.seeds}.")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        pass
    console.set_verbosity(-1)
    ns = sorted(set(_ints(args.n)))
    scenes = [] if args.scenes == "none" else _names(args.scenes)
    bad = [s for s in scenes if s not in ALL_SCENES]
    if bad:
        raise SystemExit(f"unknown scene(s) {bad}; choose from {', '.join(ALL_SCENES)}")
    recipe = Recipe(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                    augment=not args.no_augment)
    network = NetworkOptions(patch_size=args.patch_size, spectral_window=args.spectral_window,
                             pca=args.pca, dim=args.dim, depth=args.depth, dropout=args.dropout)
    plan = methods_at(args, ns)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    results: list[SceneResult] = []
    with tempfile.TemporaryDirectory(prefix="s2fin-accuracy-") as tmp:
        work = Path(tmp)
        benches = []
        for key in scenes:
            benches.append(build_scene(key, work, data_root=args.data_root, size=args.size,
                                       scene_seed=args.scene_seed,
                                       train_per_class=args.train_per_class))
        benches += [dataset_scene(d) for d in args.dataset]
        for bench in benches:
            n_seeds = args.real_seeds if bench.key in REAL_SCENES else args.seeds
            _log(f"scene {bench.key}: {n_seeds} seeds, N {ns}")
            results.append(run_scene(bench, args, ns, list(range(n_seeds)), recipe, network))
            if args.json is not None:
                _write_json(args.json, results)
    wall = time.perf_counter() - t0
    load_end = os.getloadavg()
    meta = {
        "command": "python3 -m bench.accuracy" + (" " + shlex.join(argv) if argv else ""),
        "quick": args.quick, "ns": ns,
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_minutes": wall / 60, "git": _git(), "machine": _machine(),
        "threads_note": (f"torch and BLAS limited to {args.threads} thread(s); 1-minute load "
                         f"average {load_start[0]:.1f} at the start and {load_end[0]:.1f} at "
                         "the end (the machine is shared, so run times vary)."),
        "protocol_lines": _protocol_lines(args, ns, recipe, network),
        "reduction_lines": _reduction_lines(args, ns, plan, scenes),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.trial:
        existing = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        text = merge_trial(existing, render_trial(results, meta, args.trial), args.trial)
    else:
        text = render(results, meta)
    args.out.write_text(text, encoding="utf-8")
    _log(f"wrote {args.out} ({wall / 60:.1f} min)")
    return 0


def _write_json(path: Path, results: list[SceneResult]) -> None:
    doc = [{"scene": r.bench.key, "classes": r.classes.to_json(), "seeds": r.seeds,
            "wall_seconds": r.wall_seconds, "runs": [run.to_json() for run in r.runs]}
           for r in results]
    path.write_text(json.dumps(doc, allow_nan=True) + "\n")


__all__ = ["BASELINES", "LABELS", "main", "parse_args"]
