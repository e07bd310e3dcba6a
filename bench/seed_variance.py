"""Training-seed variance of S²Fin at few labels, and what a seed ensemble would buy.

For every scene and draw (the accuracy benchmark's draw of N labelled pixels per class, its
test pixels and classes: :mod:`bench.accuracy.protocol`), S²Fin is trained ``--members`` times
through ``s2fin train``'s own function and defaults (:func:`bench.accuracy.s2fin_runs.
train_s2fin`), differing only in the training seed: member k of draw d is seeded d + 1000 k,
so member 0 is the S²Fin run ``python3 -m bench.accuracy --n N`` makes of that draw (a run
over several N builds its pools for the largest, which can leave out a class that this script
keeps: then its draws differ). Each member's class probabilities at the test pixels are kept;
an ensemble of the first k members averages them.

The table says, per scene: OA of single runs (mean, the spread over training seeds on one draw
and over draws), and OA / AA of the ensembles of 1..K members, with what they cost (K trainings
and K forward passes per pixel at predict). ``--set FIELD=VALUE`` changes the recipe of every
run, to measure whether a recipe change makes training steadier.

    python3 bench/seed_variance.py --scenes urban,msi-sar --draws 3 --members 3 --jobs 2
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: python3 bench/seed_variance.py
    sys.path.insert(0, str(REPO))

from bench.accuracy import protocol  # noqa: E402
from bench.accuracy.run import FULL, init_worker  # noqa: E402
from bench.accuracy.s2fin_runs import (  # noqa: E402
    Recipe,
    TrainedRun,
    parse_changes,
    train_s2fin,
)
from bench.accuracy.scenes import (  # noqa: E402
    ALL_SCENES,
    DEFAULT_DATA_ROOT,
    BenchScene,
    build_scene,
)
from bench.provenance import git_revision  # noqa: E402
from s2fin_cli.classes import ClassTable  # noqa: E402
from s2fin_cli.io.grid import Grid  # noqa: E402
from s2fin_cli.io.reader import open_scene  # noqa: E402
from s2fin_cli.metrics import AccuracyReport  # noqa: E402
from s2fin_cli.sampling import Samples  # noqa: E402

MEMBER_SEED_STRIDE = 1000  # member k of draw d trains with seed d + 1000 k


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 bench/seed_variance.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", default="urban,msi-sar,agricultural,sen1floods11,eolearn",
                   help=f"comma list from {','.join(ALL_SCENES)}")
    p.add_argument("--n", type=int, default=10, help="labelled pixels per class")
    p.add_argument("--draws", type=int, default=3, help="draws (seeds of the label draw)")
    p.add_argument("--members", type=int, default=3, help="training seeds per draw (>= 2)")
    p.add_argument("--set", dest="changes", action="append", default=[], metavar="FIELD=VALUE",
                   help="change the recipe of every run (a field of TrainSettings or "
                        "NetworkOptions, or val_fraction)")
    p.add_argument("--size", type=int, default=FULL["size"], help="generated scene side (px)")
    p.add_argument("--test-cap", type=int, default=FULL["test_cap"])
    p.add_argument("--train-per-class", type=int, default=60)
    p.add_argument("--min-test", type=int, default=10)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--jobs", type=int, default=1, help="trainings at once (1 thread each)")
    p.add_argument("--json", type=Path, default=None, help="also write every run as JSON")
    args = p.parse_args(argv)
    if args.members < 2 or args.draws < 1 or args.n < 1:
        p.error("--members must be >= 2, --draws and --n >= 1")
    bad = [s for s in args.scenes.split(",") if s not in ALL_SCENES]
    if bad:
        p.error(f"unknown scene(s) {bad}; choose from {', '.join(ALL_SCENES)}")
    try:
        args.recipe_changes = parse_changes(args.changes)
        Recipe.with_changes(args.recipe_changes)
    except ValueError as exc:
        p.error(str(exc))
    return args


@dataclass
class DrawResult:
    """The members of one draw: their test reports, probabilities and training times."""

    scene: str
    draw: int
    reference: np.ndarray  # class ids at the test pixels
    ids: np.ndarray  # the class id of each probability column
    members: list[TrainedRun]

    def ensemble_report(self, k: int, classes: ClassTable) -> AccuracyReport:
        """The report of the mean probabilities of the first ``k`` members."""
        probs = [m.probabilities for m in self.members[:k]]
        assert all(p is not None for p in probs)
        mean = np.mean(np.stack(probs), axis=0)  # type: ignore[arg-type]
        return AccuracyReport.from_arrays(self.reference, self.ids[mean.argmax(1)], classes)


def _member(bench: BenchScene, grid: Grid, train: Samples, test: Samples, classes: ClassTable,
            workdir: Path, seed: int, recipe: Recipe) -> TrainedRun:
    return train_s2fin(bench, grid, train, test, classes, workdir, seed=seed, recipe=recipe,
                       threads=1, probabilities=True)


def run_scene(bench: BenchScene, args: argparse.Namespace, workdir: Path,
              executor: cf.Executor | None) -> tuple[ClassTable, list[DrawResult]]:
    recipe = Recipe.with_changes(args.recipe_changes)
    with open_scene(bench.optical, bench.aux, bench.aux_kind) as scene:
        pools = protocol.build_pools(bench, scene, max_n=args.n, min_test=args.min_test,
                                     test_cap=args.test_cap)
        grid = scene.grid
    classes = pools.classes
    futures: dict[tuple[int, int], Any] = {}
    tests: dict[int, Samples] = {}
    for d in range(args.draws):
        draw = protocol.draw(pools, args.n, d, recipe.network.patch_size)
        tests[d] = test = draw.test(pools.candidates)
        for k in range(args.members):
            task = (bench, grid, draw.train, test, classes,
                    workdir / bench.key / f"draw{d}-member{k}", d + MEMBER_SEED_STRIDE * k, recipe)
            futures[d, k] = (executor.submit(_member, *task) if executor is not None
                             else _member(*task))
    ids = np.asarray(classes.ids, np.int64)
    results = []
    for d in range(args.draws):
        members = [f.result() if isinstance(f, cf.Future) else f
                   for f in (futures[d, k] for k in range(args.members))]
        result = DrawResult(bench.key, d, tests[d].classes, ids, members)
        for k, member in enumerate(members):
            # The columns follow the class table: a one-member "ensemble" is the member itself.
            alone = DrawResult(bench.key, d, result.reference, ids, [member])
            assert abs(alone.ensemble_report(1, classes).overall_accuracy
                       - member.report.overall_accuracy) < 1e-9, (bench.key, d, k)
        _log(f"{bench.key} draw {d}: single OA "
             + " ".join(f"{100 * m.report.overall_accuracy:.2f}" for m in members)
             + " | ensembles " + " ".join(
                 f"{100 * result.ensemble_report(k, classes).overall_accuracy:.2f}"
                 for k in range(1, args.members + 1)))
        results.append(result)
    return classes, results


def summarize(classes: ClassTable, draws: list[DrawResult]) -> dict[str, Any]:
    """Single-run OA statistics and the ensembles' mean OA / AA (%) over draws."""
    singles = [[100 * m.report.overall_accuracy for m in d.members] for d in draws]
    flat = [x for row in singles for x in row]
    members = len(draws[0].members)
    ensembles = []
    for k in range(1, members + 1):
        reports = [d.ensemble_report(k, classes) for d in draws]
        ensembles.append({"k": k,
                          "oa": statistics.mean(100 * r.overall_accuracy for r in reports),
                          "aa": statistics.mean(100 * r.average_accuracy for r in reports)})
    return {
        "single_oa": statistics.mean(flat),
        "single_aa": statistics.mean(100 * m.report.average_accuracy
                                     for d in draws for m in d.members),
        # spread over training seeds on one draw (mean over draws), and over draws of the
        # member-mean OA: which of the two dominates the error at few labels
        "seed_sd": statistics.mean(statistics.pstdev(row) for row in singles),
        "draw_sd": statistics.pstdev([statistics.mean(row) for row in singles]),
        "min": min(flat), "max": max(flat),
        "ensembles": ensembles,
        "train_seconds": statistics.mean(m.seconds for d in draws for m in d.members),
    }


def render(summaries: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    k_max = len(next(iter(summaries.values()))["ensembles"])
    head = ("| scene | single run OA % (mean) | sd over training seeds | sd over draws | range | "
            + " | ".join(f"ensemble of {k} OA / AA %" for k in range(1, k_max + 1))
            + " | s per training |")
    lines = [f"Command: `{meta['command']}` (git {meta['git']}, {meta['wall_minutes']:.1f} min)",
             "", head, "|" + "---|" * (5 + k_max + 1)]
    for scene, s in summaries.items():
        ens = " | ".join(f"{e['oa']:.2f} / {e['aa']:.2f}" for e in s["ensembles"])
        lines.append(f"| {scene} | {s['single_oa']:.2f} | {s['seed_sd']:.2f} | "
                     f"{s['draw_sd']:.2f} | {s['min']:.1f}-{s['max']:.1f} | {ens} | "
                     f"{s['train_seconds']:.0f} |")
    gains = [s["ensembles"][-1]["oa"] - s["single_oa"] for s in summaries.values()]
    lines += ["", f"Ensemble of {k_max} minus the single-run mean, OA points: "
              + ", ".join(f"{scene} {g:+.2f}" for scene, g in zip(summaries, gains, strict=True))
              + f" (mean {statistics.mean(gains):+.2f}), for {k_max}x the training time and "
              f"{k_max}x the forward passes of `s2fin predict`."]
    return "\n".join(lines) + "\n"


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    t0 = time.perf_counter()
    executor: cf.Executor | None = None
    if args.jobs > 1:
        executor = cf.ProcessPoolExecutor(args.jobs,
                                          mp_context=multiprocessing.get_context("spawn"),
                                          initializer=init_worker, initargs=(1,))
    else:
        init_worker(1)
    summaries: dict[str, dict[str, Any]] = {}
    raw: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="s2fin-seeds-") as tmp:
            for key in args.scenes.split(","):
                bench = build_scene(key, Path(tmp), data_root=args.data_root, size=args.size,
                                    scene_seed=0, train_per_class=args.train_per_class)
                classes, draws = run_scene(bench, args, Path(tmp) / "runs", executor)
                summaries[key] = summarize(classes, draws)
                raw += [{"scene": key, "draw": d.draw,
                         "oa": [m.report.overall_accuracy for m in d.members],
                         "aa": [m.report.average_accuracy for m in d.members],
                         "seconds": [m.seconds for m in d.members]} for d in draws]
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    meta = {"command": "python3 bench/seed_variance.py" + (" " + shlex.join(argv) if argv
                                                           else ""),
            "git": git_revision(), "wall_minutes": (time.perf_counter() - t0) / 60}
    print(render(summaries, meta))
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "summaries": summaries, "runs": raw},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
