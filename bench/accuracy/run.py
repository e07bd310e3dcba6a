"""The command line and the loop of the accuracy benchmark (``python3 -m bench.accuracy``).

For every scene: fit the baselines' preprocessing (z-score + PCA, unsupervised, as ``s2fin
train`` does) and cut the test candidates' patches once; then for every N and seed draw N
labelled pixels per class and run every method on exactly those pixels: the baselines on the
cut patches, S²Fin through ``s2fin train``'s own function and defaults
(:mod:`bench.accuracy.s2fin_runs`; ``--jobs`` runs several at once). Results go to ``--out``
(markdown) and, with ``--json``, every run's report as JSON.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import datetime as _dt
import json
import multiprocessing
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.accuracy import protocol
from bench.accuracy.methods import (
    ABLATED,
    ALL_METHODS,
    BASELINES,
    CONTEXT_BASELINES,
    RECIPE_ELEMENTS,
    REVERTED,
    S2FIN,
    applies,
    is_s2fin,
    run_baseline,
)
from bench.accuracy.report import Run, SceneResult, merge_trial, render, render_trial
from bench.accuracy.s2fin_runs import Recipe, TrainedRun, parse_changes, train_s2fin
from bench.accuracy.scenes import (
    ALL_SCENES,
    DEFAULT_DATA_ROOT,
    REAL_SCENES,
    BenchScene,
    build_scene,
    dataset_scene,
)
from bench.provenance import git_revision, machine
from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import Scene, open_scene
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.patches import PatchGeometry
from s2fin_cli.preprocessing import fit_preprocessor, height_above_ground
from s2fin_cli.sampling import AUTO_VAL_MIN_PER_CLASS, Samples

REPO = Path(__file__).resolve().parents[2]

# Defaults of the full run, chosen from run times measured on the shared 2-core CPU (one
# `s2fin train` of a 96 x 96 px scene at N = 10 takes 1.5-2.5 min there, depending on the load).
FULL = {"size": 96, "test_cap": 600, "seeds": 3, "real_seeds": 3, "ablation_seeds": 2}
QUICK = {"size": 64, "test_cap": 300, "seeds": 2, "real_seeds": 1, "ablation_seeds": None,
         "n": "5,10", "scenes": "urban,sen1floods11"}
DEFAULT_METHODS = (*BASELINES, S2FIN, *ABLATED, *REVERTED)
# The window of the analyst's height-above-ground features when S²Fin's default has none.
CONTEXT_HEIGHT_WINDOW = 31


def _ints(text: str) -> list[int]:
    return [int(t) for t in text.split(",") if t.strip()]


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 -m bench.accuracy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a few-minute smoke run (small scenes, few seeds)")
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
                   help="a folder written by `s2fin datasets import` (repeatable): runs the "
                        "same protocol on it (its train labels, or its ground truth)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma list from " + ",".join(ALL_METHODS) + " (the s2fin-without-* "
                        "runs revert one element of the default recipe each)")
    p.add_argument("--ablation-n", default="10",
                   help="N at which ablations and recipe reversions run ('all' for every N)")
    p.add_argument("--ablation-seeds", type=int, default=None,
                   help="seeds of the ablation and reversion runs (the first K seeds; default "
                        f"{FULL['ablation_seeds']}, all seeds with --quick)")
    p.add_argument("--set", dest="changes", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the recipe of every S²Fin run (and the CNN's training "
                        "settings): a field of TrainSettings or NetworkOptions, or "
                        "val_fraction. For --trial runs and smoke tests: the benchmark itself "
                        "runs the defaults")
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
    p.add_argument("--test-cap", type=int, default=None, help="test pixels scored per scene")
    p.add_argument("--min-test", type=int, default=10)
    p.add_argument("--class-min-n", type=int, default=None,
                   help="keep the classes that can supply this many training pixels (default: "
                        "the largest N); give the full run's largest N to a --trial run at one "
                        "N so it keeps the same classes, draws and test pixels")
    p.add_argument("--threads", type=int, default=1, help="torch/BLAS threads per run")
    p.add_argument("--jobs", type=int, default=1,
                   help="S²Fin runs at once (separate processes, --threads each)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    for key in ("size", "test_cap", "seeds", "real_seeds", "ablation_seeds"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    if args.n is None:
        args.n = QUICK["n"] if args.quick else "5,10,20"
    if args.scenes is None:
        args.scenes = ("none" if args.dataset else
                       (QUICK["scenes"] if args.quick else ",".join(ALL_SCENES)))
    try:
        args.recipe_changes = parse_changes(args.changes)
        Recipe.with_changes(args.recipe_changes)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return args


def _machine() -> str:
    import sklearn

    return machine({"torch": torch.__version__, "numpy": np.__version__,
                    "scikit-learn": sklearn.__version__})


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def methods_at(args: argparse.Namespace, ns: list[int]) -> dict[int, list[str]]:
    chosen = _names(args.methods)
    bad = [m for m in chosen if m not in ALL_METHODS]
    if bad:
        raise SystemExit(f"unknown method(s) {bad}; choose from {', '.join(ALL_METHODS)}")
    ab_ns = ns if args.ablation_n == "all" else _ints(args.ablation_n)
    extra = (*ABLATED, *REVERTED)
    return {n: [m for m in chosen if m not in extra or n in ab_ns] for n in ns}


def recipe_for(method: str, changes: dict[str, Any]) -> Recipe:
    """The recipe of one S²Fin method: the defaults (with a trial's changes), a module off, or
    one element of the recipe reverted."""
    if method in ABLATED:
        return Recipe.with_changes({**changes, "ablate": (method.removeprefix("s2fin-no-"),)})
    if method in REVERTED:
        return Recipe.with_changes({**changes,
                                    **RECIPE_ELEMENTS[method.removeprefix("s2fin-without-")][1]})
    return Recipe.with_changes(changes)


def init_worker(threads: int) -> None:
    """A benchmark process: quiet console, torch and BLAS limited to ``threads``."""
    console.set_verbosity(-1)
    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover - scikit-learn depends on it
        pass


def _s2fin_task(bench: BenchScene, grid: Grid, train: Samples, test: Samples,
                classes: ClassTable, workdir: Path, seed: int, recipe: Recipe,
                threads: int) -> TrainedRun:
    return train_s2fin(bench, grid, train, test, classes, workdir, seed=seed, recipe=recipe,
                       threads=threads)


def height_features(scene: Scene, samples: Samples, window: int) -> np.ndarray:
    """(samples, 2): height above ground at each pixel and its 5 x 5 mean, from the first LiDAR
    band of the whole scene (the benchmark's scenes are small), reflect-padded at the borders."""
    c = window - 1 + 2
    block = scene.read(scene.grid.full_window(), c)
    hag = height_above_ground(torch.from_numpy(block.aux[0]), window).numpy()  # halo 2 left
    hag = np.nan_to_num(hag, nan=0.0)
    rows, cols = samples.rows + 2, samples.cols + 2
    mean5 = np.mean([hag[rows + dr, cols + dc] for dr in range(-2, 3) for dc in range(-2, 3)],
                    axis=0)
    return np.stack([hag[rows, cols], mean5], axis=1).astype(np.float64)


@dataclass
class _Pending:
    n: int
    seed: int
    method: str
    draw: protocol.Draw
    future: cf.Future[TrainedRun] | None = None
    done: TrainedRun | None = None


def run_scene(bench: BenchScene, args: argparse.Namespace, ns: list[int], seeds: list[int],
              workdir: Path, executor: cf.Executor | None) -> SceneResult:
    t0 = time.perf_counter()
    plan = methods_at(args, ns)
    changes = args.recipe_changes
    network = Recipe.with_changes(changes).network
    geometry = PatchGeometry(network.patch_size, network.spectral_window)
    baselines = sorted({m for ms in plan.values() for m in ms if not is_s2fin(m)})
    with open_scene(bench.optical, bench.aux, bench.aux_kind) as scene:
        pools = protocol.build_pools(bench, scene, max_n=max([*ns, args.class_min_n or 0]),
                                     min_test=args.min_test, test_cap=args.test_cap)
        classes = pools.classes
        if len(classes) < 2:
            raise SystemExit(f"{bench.key}: fewer than 2 classes can supply {max(ns)} "
                             "training pixels")
        result = SceneResult(bench, classes, pools.pool.counts(classes), pools.test_available,
                             pools.candidates.counts(classes), pools.dropped_classes,
                             pools.dropped_nodata, seeds, ns, plan)
        ids = np.asarray(classes.ids, np.int64)
        pre = candidates = None
        if baselines:
            pre = fit_preprocessor(scene, network.pca, seed=0)
            candidates = protocol.cut(scene, pools.candidates, pre, geometry, classes)
        window = network.height_window or CONTEXT_HEIGHT_WINDOW
        lidar_context = bench.aux_kind == "lidar" and any(b in CONTEXT_BASELINES
                                                          for b in baselines)
        cand_height = (height_features(scene, pools.candidates, window) if lidar_context
                       else None)
        pending: list[_Pending] = []
        excluded: list[int] = []
        for n in ns:
            for seed in seeds:
                d = protocol.draw(pools, n, seed, network.patch_size)
                excluded.append(d.excluded)
                reference = d.test(pools.candidates).classes
                train = test = None
                if baselines:
                    assert pre is not None and candidates is not None
                    train = protocol.cut(scene, d.train, pre, geometry, classes)
                    test = protocol.subset(candidates, d.test_mask)
                height = None
                if cand_height is not None:
                    height = (height_features(scene, d.train, window), cand_height[d.test_mask])
                for method in plan[n]:
                    if _skipped(method, seed, args, bench):
                        continue
                    if is_s2fin(method):
                        pending.append(_submit(bench, scene.grid, d, n, seed, method, classes,
                                               pools.candidates, workdir, args, executor))
                        continue
                    assert train is not None and test is not None
                    out = run_baseline(method, train, test, len(classes), seed=seed,
                                       height=height, overrides=changes)
                    report = AccuracyReport.from_arrays(reference, ids[out.pred], classes)
                    _record(result, Run(bench.key, n, seed, method, report, out.train_seconds,
                                        out.predict_seconds, len(d.train), len(reference),
                                        d.excluded))
        for job in pending:
            trained = job.done if job.future is None else job.future.result()
            assert trained is not None
            reference = job.draw.test(pools.candidates).classes
            _record(result, Run(bench.key, job.n, job.seed, job.method, trained.report,
                                trained.seconds, 0.0, len(job.draw.train), len(reference),
                                job.draw.excluded, trained.n_train, trained.n_val,
                                trained.epochs_run))
            if job.method == S2FIN and not any("parameters" in n for n in result.notes):
                result.notes.append(
                    f"S²Fin here has {trained.parameters:,} parameters ({len(classes)} "
                    "classes).")
        _scene_notes(result, bench, network.patch_size, excluded, len(pools.candidates))
    result.wall_seconds = time.perf_counter() - t0
    return result


def _skipped(method: str, seed: int, args: argparse.Namespace, bench: BenchScene) -> bool:
    """Ablations and reversions beyond their seeds, or reversions that change nothing here."""
    beyond = (method in (*ABLATED, *REVERTED) and args.ablation_seeds is not None
              and seed >= args.ablation_seeds)
    return beyond or not applies(method, bench.aux_kind)


def _submit(bench: BenchScene, grid: Grid, d: protocol.Draw, n: int, seed: int, method: str,
            classes: ClassTable, candidates: Samples, workdir: Path,
            args: argparse.Namespace, executor: cf.Executor | None) -> _Pending:
    job = _Pending(n, seed, method, d)
    task = (bench, grid, d.train, d.test(candidates), classes,
            workdir / bench.key / f"n{n}-seed{seed}-{method}", seed,
            recipe_for(method, args.recipe_changes), args.threads)
    if executor is None:
        job.done = _s2fin_task(*task)
    else:
        job.future = executor.submit(_s2fin_task, *task)
    return job


def _record(result: SceneResult, run: Run) -> None:
    result.runs.append(run)
    r = run.report
    _log(f"{run.scene} N={run.n} seed={run.seed} {run.method:<28} OA "
         f"{100 * r.overall_accuracy:6.2f}  AA {100 * r.average_accuracy:6.2f}  "
         f"{run.train_seconds:6.1f} s")


def _scene_notes(result: SceneResult, bench: BenchScene, patch_size: int, excluded: list[int],
                 n_candidates: int) -> None:
    if bench.test_labels is None:
        result.notes.append(
            f"Test pixels: the other labelled pixels of the map, minus those within "
            f"{patch_size // 2} px (Chebyshev) of a training pixel: "
            f"{min(excluded)}-{max(excluded)} of the {n_candidates} test "
            "candidates were removed per draw (the training pixels among them included).")
    elif max(excluded):
        result.notes.append(f"{min(excluded)}-{max(excluded)} test pixels within the patch "
                            "radius of a training pixel were removed per draw.")


def _recipe_line(changes: dict[str, Any]) -> str:
    defaults = Recipe()
    net, st = defaults.network, defaults.settings
    val = ("a blocked validation split when every class has at least "
           f"{AUTO_VAL_MIN_PER_CLASS} labels, else none (this protocol: none)")
    text = (f"S²Fin: `s2fin_cli.training.run_training` with `s2fin train`'s defaults, the "
            f"draw's seed as `--seed`: patch {net.patch_size}, spectral window "
            f"{net.spectral_window}, PCA {net.pca}, dim {net.dim}, depth {net.depth}, dropout "
            f"{net.dropout}, stems {net.optical_stem_norm}/{net.active_stem_norm}, the DSM "
            f"replaced by its height above ground over a {net.height_window or 'off'} px "
            f"opening; AdamW lr {st.lr:g}, weight decay "
            f"{st.weight_decay:g}, batch {st.batch_size}, {st.describe_schedule()}, "
            f"warm-up {st.warmup_epochs} epochs + cosine, label "
            f"smoothing {st.label_smoothing:g}, flips/rotations"
            + (f", gain jitter ±{st.gain_jitter:g} and noise {st.spectral_noise:g}"
               if st.gain_jitter or st.spectral_noise else "")
            + (f", height gain ±{st.height_jitter:g}" if st.height_jitter else "")
            + (f", weight average (EMA {st.ema:g})" if st.ema else "")
            + (f", consistency training on {st.CONSISTENCY_POOL} unlabelled pixels (weight "
               f"{st.consistency:g} ramped over the first {st.consistency_ramp:.0%} of the "
               f"steps; weak views classified by "
               + (f"a weight average of the network (decay {st.consistency_teacher:g})"
                  if st.consistency_teacher else "the network")
               + f", confident at {st.consistency_threshold:g} of the way from chance to the "
               f"label-smoothed ceiling (a probability of {st.confidence_cut(11):.2f} with 11 "
               f"classes, {st.confidence_cut(2):.2f} with 2); strong views gain "
               f"±{st.strong_gain:g} and noise {st.strong_noise:g})" if st.consistency else "")
            + f"; validation: {val}. Its test score is `summary.test`, the `--test-labels` "
            "report of `s2fin train`.")
    if changes:
        text += (" **This run changes the recipe:** "
                 + ", ".join(f"`{k}={v}`" for k, v in sorted(changes.items())) + ".")
    return text


def _protocol_lines(args: argparse.Namespace, ns: list[int]) -> list[str]:
    network = Recipe.with_changes(args.recipe_changes).network
    p = network.patch_size
    return [
        f"N = {', '.join(map(str, ns))} labelled pixels per class, drawn seeded and stratified "
        "with `s2fin_cli.sampling.apply_protocol` (the `s2fin train --per-class N` draw). "
        "Generated scenes draw from `train_labels.tif` and test on `test_labels.tif` (disjoint "
        "objects, buffered). Real scenes draw from the label map and test on its other "
        f"labelled pixels, minus every pixel within {p // 2} px of a training pixel (no test "
        "centre inside a training patch; neighbouring patches can still overlap).",
        f"Test pixels: a fixed seeded subsample of about {args.test_cap} per scene, "
        f"proportional per class but at least min(count, {protocol.TEST_FLOOR}) per class, the "
        "same subsample for every method, N and seed (the 'test cap' of each scene's class "
        "table); on real scenes the pixels near a draw's training pixels are then left out, so "
        "fewer are scored: the class tables give the pixels scored per class at each N (min-max "
        "over the seeds).",
        "Every method of one (scene, N, seed) gets the same training pixels and is scored on "
        "the same test pixels. S²Fin gets them as files: the draw is written as a label "
        "raster and the test pixels as a test raster on the scene grid.",
        _recipe_line(args.recipe_changes),
        "Ablations (`S²Fin − module`) are the same runs with `NetworkOptions(ablate=...)`; "
        "recipe reversions (`S²Fin without element`) the same runs with one element of the "
        "default recipe set back: "
        + "; ".join(f"*{k}*: {v[0]}" + (f" ({v[2]} scenes only)" if v[2] else "")
                    for k, v in RECIPE_ELEMENTS.items()) + ".",
        "Baselines see the inputs `s2fin train` computes (per-band z-score of the scene and "
        f"PCA to {network.pca} components, `s2fin_cli.preprocessing.fit_preprocessor`, "
        f"patches cut by `extract_patch_set`). RF / SVM (pixel): every z-scored optical band "
        "and active band of the pixel; RF 200 trees (sqrt features), SVM RBF C = 10, gamma = "
        "'scale' after standardisation; no tuning. RF / SVM (+ neighbourhood + height): the "
        "same plus the 3 x 3 and 5 x 5 means and 5 x 5 standard deviation of the first 10 PCA "
        "components and of every active band and, with LiDAR, the height above ground at the "
        "pixel and its 5 x 5 mean (`s2fin_cli.preprocessing.height_above_ground` over "
        f"{network.height_window or CONTEXT_HEIGHT_WINDOW} px). 2-D CNN: 3 conv blocks "
        f"(32-64-64, BatchNorm, ReLU, one max-pool) + global average pool on the PCA + active "
        f"{p} x {p} patch, trained by `s2fin_cli.training.fit` for a fixed ~64 steps of batch "
        "32 at N <= 10 (64 x N / 10 above), the last weights kept (the previous benchmark's "
        "budget: with S²Fin's longer schedule this CNN scored lower).",
        "Metrics: `s2fin_cli.metrics.AccuracyReport` (OA, AA, Cohen's Kappa) and `mean_std` "
        "(population std over seeds, ddof 0). No method ever sees a test pixel before scoring.",
    ]


def _reduction_lines(args: argparse.Namespace, ns: list[int], plan: dict[int, list[str]],
                     scenes: list[str]) -> list[str]:
    ab = sorted({n for n, ms in plan.items() if any(m in (*ABLATED, *REVERTED) for m in ms)})
    lines = [
        f"Generated scenes are {args.size} x {args.size} px (scene seed {args.scene_seed}); "
        "the real scenes are used whole.",
        f"Test sets are subsampled to about {args.test_cap} pixels per scene plus the "
        "per-class floor (see protocol).",
        "S²Fin runs `s2fin train`'s default recipe unchanged; nothing in it is reduced for "
        "the benchmark.",
    ]
    if ab and ab != ns:
        lines.append("Ablations and recipe reversions run only at N = "
                     f"{', '.join(map(str, ab))}"
                     + (f", with the first {args.ablation_seeds} seeds only (their costs "
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
    init_worker(args.threads)
    ns = sorted(set(_ints(args.n)))
    scenes = [] if args.scenes == "none" else _names(args.scenes)
    bad = [s for s in scenes if s not in ALL_SCENES]
    if bad:
        raise SystemExit(f"unknown scene(s) {bad}; choose from {', '.join(ALL_SCENES)}")
    plan = methods_at(args, ns)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    results: list[SceneResult] = []
    executor: cf.Executor | None = None
    if args.jobs > 1:
        executor = cf.ProcessPoolExecutor(args.jobs,
                                          mp_context=multiprocessing.get_context("spawn"),
                                          initializer=init_worker, initargs=(args.threads,))
    try:
        with tempfile.TemporaryDirectory(prefix="s2fin-accuracy-") as tmp:
            work = Path(tmp)
            benches = [build_scene(key, work, data_root=args.data_root, size=args.size,
                                   scene_seed=args.scene_seed,
                                   train_per_class=args.train_per_class) for key in scenes]
            benches += [dataset_scene(d) for d in args.dataset]
            for bench in benches:
                n_seeds = args.real_seeds if bench.key in REAL_SCENES else args.seeds
                _log(f"scene {bench.key}: {n_seeds} seeds, N {ns}")
                results.append(run_scene(bench, args, ns, list(range(n_seeds)), work / "runs",
                                         executor))
                if args.json is not None:
                    _write_json(args.json, results)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    wall = time.perf_counter() - t0
    load_end = os.getloadavg()
    meta = {
        "command": "python3 -m bench.accuracy" + (" " + shlex.join(argv) if argv else ""),
        "quick": args.quick, "ns": ns, "changed": bool(args.recipe_changes),
        "finished": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_minutes": wall / 60, "git": git_revision(), "machine": _machine(),
        "threads_note": (f"{args.jobs} S²Fin run(s) at a time, torch and BLAS limited to "
                         f"{args.threads} thread(s) per run; 1-minute load average "
                         f"{load_start[0]:.1f} at the start and {load_end[0]:.1f} at the end "
                         "(the machine is shared, so run times vary)."),
        "protocol_lines": _protocol_lines(args, ns),
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


__all__ = ["main", "parse_args"]
