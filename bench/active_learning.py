"""Simulated active learning: does ``s2fin suggest`` reach a given accuracy with fewer labels?

``python3 bench/active_learning.py`` writes ``docs/active-learning.md`` and a PNG of OA and AA
against the number of labels. Per scene of the accuracy benchmark (``bench/accuracy/scenes.py``:
the generated scenes, and the real ones where ``../shared/data`` holds them):

* **The analyst** is the ground truth: ``ground_truth.tif`` of a generated scene (every valid
  pixel), the label map of a real scene (only its labelled pixels can be answered).
* **Test pixels**: generated scenes test on their test labels (objects disjoint from, and
  buffered away from, the training objects); real scenes split their label map into cells of
  ``--test-block`` px, a seeded half for testing and the other half answerable. A fixed seeded
  subsample of about ``--test-cap`` test pixels is kept, proportional per class with a floor of
  ``min(count, 100)``. No label is ever taken within the patch radius of a test pixel
  (Chebyshev distance <= patch // 2, the accuracy benchmark's rule), so no test centre lies
  inside a training patch.
* **Classes** that cannot supply round 0's labels and ``--min-test`` test pixels are left out
  (listed); the analyst is never asked about their pixels.
* **Round 0**: the first entry of ``--schedule`` (labels per class, default 5), seeded and
  stratified (:func:`s2fin_cli.sampling.apply_protocol`, the ``s2fin train --per-class`` draw).
* **Rounds 1..R**: ``--schedule`` gives the labels per class on average after each round
  (default ``5,7,10,14,20``: each round adds about 40 % more, so that reaching the random
  strategy's final OA one round early is a saving of 30 % and two rounds early 50 %); round r
  adds ``(schedule[r] - schedule[r - 1]) x classes`` labels, chosen by
  :func:`s2fin_cli.suggestion.suggest_pixels` with the previous round's model: ``suggest``
  (what ``s2fin suggest`` does: uncertain, none inside another's patch, spread over classes
  and features), ``random`` (uniform over the same candidates) and ``uncertainty`` (the most
  uncertain candidates, no diversity). All
  strategies see the same candidates: valid answerable pixels inside no labelled pixel's
  patch, at most ``--max-candidates`` of them (a seeded uniform sample).
* **Training**: :func:`s2fin_cli.training.run_training` with ``s2fin train``'s defaults
  (whatever they are when the bench runs: the report prints them), scored on the test pixels.

The headline: how many labels each strategy needs to reach the random strategy's final OA (the
first measured round that reaches it, and a linear interpolation between rounds).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shlex
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script: python3 bench/active_learning.py
    sys.path.insert(0, str(REPO))

from bench.accuracy.scenes import (  # noqa: E402
    ALL_SCENES,
    DEFAULT_DATA_ROOT,
    REAL_SCENES,
    BenchScene,
    build_scene,
)
from bench.provenance import git_revision, machine  # noqa: E402
from s2fin_cli import console  # noqa: E402
from s2fin_cli.classes import ClassTable  # noqa: E402
from s2fin_cli.device import cpu_threads  # noqa: E402
from s2fin_cli.io.labels import read_label_points  # noqa: E402
from s2fin_cli.io.reader import Scene, open_scene  # noqa: E402
from s2fin_cli.io.writer import write_raster  # noqa: E402
from s2fin_cli.sampling import (  # noqa: E402
    Protocol,
    Samples,
    apply_protocol,
    drop_invalid_centres,
    within_distance,
)
from s2fin_cli.suggestion import suggest_pixels  # noqa: E402
from s2fin_cli.training import NetworkOptions, TrainRequest, TrainSettings, run_training  # noqa: E402

# (name in the report, strategy of suggest_pixels)
STRATEGIES: tuple[tuple[str, str], ...] = (("suggest", "diverse"), ("random", "random"),
                                          ("uncertainty", "uncertainty"))
TEST_FLOOR = 100
DEFAULT_SCHEDULE = (5, 7, 10, 14, 20)
_TEST_STREAM, _ROUND_STREAM = 7919, 104729


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python3 bench/active_learning.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", default=",".join(ALL_SCENES),
                   help=f"comma list from {','.join(ALL_SCENES)} (real scenes are skipped "
                        "when --data-root lacks them)")
    p.add_argument("--schedule", type=parse_schedule, default=DEFAULT_SCHEDULE,
                   help="labels per class (on average) after round 0, 1, ...: increasing "
                        "integers, comma-separated (default "
                        f"{','.join(map(str, DEFAULT_SCHEDULE))})")
    p.add_argument("--seeds", type=int, default=1, help="seeds (initial draw and suggestions)")
    p.add_argument("--max-candidates", type=int, default=2000,
                   help="candidates scored per suggestion (s2fin suggest's default is 20000)")
    p.add_argument("--test-cap", type=int, default=1000)
    p.add_argument("--min-test", type=int, default=10)
    p.add_argument("--test-block", type=int, default=32,
                   help="real scenes: cell size (px) of the test/answerable split")
    p.add_argument("--size", type=int, default=160,
                   help="generated scene side (px; the sample scene's 160: labels exclude their "
                        "patch neighbourhoods, and 96 px would run out of answerable pixels)")
    p.add_argument("--scene-seed", type=int, default=0)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT)
    p.add_argument("--jobs", type=int, default=1,
                   help="(scene, seed) runs in parallel processes")
    p.add_argument("--epochs", type=int, default=None,
                   help="smoke tests only: this many epochs and no step floor instead of "
                        "s2fin train's defaults")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "active-learning.md")
    p.add_argument("--plot", type=Path, default=None,
                   help="the PNG (default: --out with .png)")
    p.add_argument("--json", type=Path, default=None, help="also write every round as JSON")
    p.add_argument("--from-json", type=Path, default=None,
                   help="run nothing: rebuild --out and --plot from a run's --json")
    args = p.parse_args(argv)
    if args.plot is None:
        args.plot = args.out.with_suffix(".png")
    return args


def parse_schedule(text: str) -> tuple[int, ...]:
    """``--schedule``: labels per class after each round, positive and strictly increasing."""
    try:
        schedule = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma list of integers: {text!r}") from None
    if len(schedule) < 2 or schedule[0] < 1 or any(b <= a for a, b in pairwise(schedule)):
        raise argparse.ArgumentTypeError(
            f"needs at least two positive, strictly increasing counts: {text!r}")
    return schedule


def added_per_round(schedule: tuple[int, ...] | list[int], classes: int) -> list[int]:
    """Labels each round adds (rounds 1..R): the schedule's per-class step times the classes."""
    return [(b - a) * classes for a, b in pairwise(schedule)]


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _cap(samples: Samples, cap: int, seed: int) -> Samples:
    """A seeded per-class subsample of about ``cap`` pixels (proportional, floor per class)."""
    if len(samples) <= cap:
        return samples.sorted()
    rng = np.random.default_rng([seed, _TEST_STREAM])
    counts = samples.counts()
    keep = []
    for class_id, n in sorted(counts.items()):
        k = min(n, max(min(n, TEST_FLOOR), round(cap * n / len(samples))))
        keep.append(rng.choice(np.flatnonzero(samples.classes == class_id), k, replace=False))
    return samples.subset(np.sort(np.concatenate(keep))).sorted()


def _named(table: ClassTable, bench: BenchScene) -> ClassTable:
    names = {c.id: c for c in bench.classes} if bench.classes is not None else {}
    return ClassTable(tuple(names.get(c.id, c) for c in table))


def _block_split(samples: Samples, block: int, seed: int) -> np.ndarray:
    """Bool per sample: in a test block (a seeded half of the ``block`` px cells)."""
    cells = np.stack([samples.rows // block, samples.cols // block], 1)
    keys, cell_of = np.unique(cells, axis=0, return_inverse=True)
    rng = np.random.default_rng([seed, _TEST_STREAM])
    test_cells = rng.permutation(len(keys))[:len(keys) // 2]
    is_test = np.zeros(len(keys), bool)
    is_test[test_cells] = True
    return np.asarray(is_test[cell_of.reshape(-1)])


def prepare(bench: BenchScene, scene: Scene, args: argparse.Namespace, patch: int,
            workdir: Path) -> dict[str, Any]:
    """The analyst (truth array), the test file, the answerable pixels and the kept classes.

    Generated scenes: the analyst knows every pixel (ground truth); tests come from the test
    labels (objects disjoint from, and buffered away from, the training objects). Real scenes:
    the label map is split in cells of ``--test-block`` px, a seeded half for testing and the
    other half answerable (scattered test pixels would leave no pixel outside their patches).
    """
    generated = bench.test_labels is not None
    oracle_path = bench.pool_labels.parent / "ground_truth.tif" if generated else bench.pool_labels
    points, table = read_label_points(oracle_path, scene.grid)
    oracle, _ = drop_invalid_centres(Samples.from_points(points), scene)
    if generated:
        assert bench.test_labels is not None
        test_points, _ = read_label_points(bench.test_labels, scene.grid)
        test_all, _ = drop_invalid_centres(Samples.from_points(test_points), scene)
    else:
        in_test = _block_split(oracle, args.test_block, 0)
        test_all, oracle = oracle.subset(in_test), oracle.subset(~in_test)
    named = _named(table, bench)
    counts, test_counts = oracle.counts(), test_all.counts()
    kept = [c.id for c in named if test_counts.get(c.id, 0) >= args.min_test
            and counts.get(c.id, 0) >= args.schedule[0]]
    test = _cap(test_all.subset(np.isin(test_all.classes, kept)), args.test_cap, 0)
    near = within_distance(oracle.rows, oracle.cols, test.rows, test.cols, patch // 2 + 1)
    allowed = oracle.subset(~near & np.isin(oracle.classes, kept))
    # A class must also keep its initial labels outside the test pixels' neighbourhoods.
    answerable = allowed.counts()
    kept = [c for c in kept if answerable.get(c, 0) >= args.schedule[0]]
    dropped = [f"{c.name} ({counts.get(c.id, 0)} labelled, {answerable.get(c.id, 0)} "
               f"answerable, {test_counts.get(c.id, 0)} test pixels)"
               for c in named if c.id not in kept]
    classes = ClassTable(tuple(c for c in named if c.id in kept))
    test = test.subset(np.isin(test.classes, kept))
    allowed = allowed.subset(np.isin(allowed.classes, kept))
    truth = np.zeros(scene.grid.shape, np.int64)  # answers only where the analyst may be asked
    truth[allowed.rows, allowed.cols] = allowed.classes
    test_map = np.zeros(scene.grid.shape, np.uint16)
    test_map[test.rows, test.cols] = test.classes
    test_path = write_raster(workdir / "test.tif", test_map, scene.grid, nodata=0,
                             classes=classes, overwrite=True)
    return {"classes": classes, "truth": truth, "allowed": allowed, "test": test,
            "test_path": test_path, "dropped": dropped}


def _train(bench: BenchScene, labels: Samples, setup: dict[str, Any], workdir: Path,
           shape: tuple[int, int], grid: Any, epochs: int | None) -> Any:
    label_map = np.zeros(shape, np.uint16)
    label_map[labels.rows, labels.cols] = labels.classes
    path = write_raster(workdir / "labels.tif", label_map, grid, nodata=0,
                        classes=setup["classes"], overwrite=True)
    aux = {"lidar": bench.aux} if bench.aux_kind == "lidar" else {"sar": bench.aux}
    settings = TrainSettings()
    if epochs is not None:
        settings = replace(settings, epochs=epochs, warmup_epochs=0, min_steps=0)
    request = TrainRequest(labels=path, hsi=bench.optical, test_labels=setup["test_path"],
                           output=workdir / "model.s2fin", overwrite=True, device="cpu",
                           settings=settings, **aux)
    return run_training(request)


def _point(labels: Samples, summary: Any, seconds: float, added: dict[str, Any]) -> dict[str, Any]:
    test = summary.test
    return {"labels": len(labels), "oa": test.overall_accuracy, "aa": test.average_accuracy,
            "kappa": test.kappa, "epochs": summary.bundle.provenance.get("epochs_run"),
            "train_s": round(seconds, 1), **added}


def run_seed(bench: BenchScene, scene: Scene, setup: dict[str, Any], args: argparse.Namespace,
             seed: int, workdir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every strategy's curve for one seed (round 0 shared)."""
    classes = setup["classes"]
    allowed = setup["allowed"]
    initial = apply_protocol(allowed, Protocol("per-class", per_class=args.schedule[0]),
                             classes, seed=seed)
    grid, shape = scene.grid, scene.grid.shape
    t0 = time.perf_counter()
    summary0 = _train(bench, initial, setup, workdir, shape, grid, args.epochs)
    start = _point(initial, summary0, time.perf_counter() - t0, {})
    _log(f"{bench.key} seed {seed}: round 0, {len(initial)} labels, OA {start['oa']:.4f}")
    curves: dict[str, list[dict[str, Any]]] = {}
    for name, strategy in STRATEGIES:
        labels, bundle, curve = initial, summary0.bundle, [start]
        for r, n in enumerate(added_per_round(args.schedule, len(classes)), start=1):
            t1 = time.perf_counter()
            picks = suggest_pixels(bundle, scene, n, labelled=labels,
                                   strategy=strategy,  # type: ignore[arg-type]
                                   seed=seed * _ROUND_STREAM + r,
                                   max_candidates=args.max_candidates, allowed=allowed)
            new = Samples(picks.rows, picks.cols, setup["truth"][picks.rows, picks.cols])
            suggest_s = time.perf_counter() - t1
            labels = Samples(np.concatenate([labels.rows, new.rows]),
                             np.concatenate([labels.cols, new.cols]),
                             np.concatenate([labels.classes, new.classes]))
            t2 = time.perf_counter()
            summary = _train(bench, labels, setup, workdir, shape, grid, args.epochs)
            bundle = summary.bundle
            counts = new.counts()
            curve.append(_point(labels, summary, time.perf_counter() - t2, {
                "suggest_s": round(suggest_s, 1), "scored": picks.scored,
                "eligible": picks.eligible,
                "added": {classes.name_of(c): n for c, n in sorted(counts.items())}}))
            _log(f"{bench.key} seed {seed}: {name} round {r}, {len(labels)} labels, "
                 f"OA {curve[-1]['oa']:.4f}")
        curves[name] = curve
    return curves


def run_scene_seed(key: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    """One scene and one seed; runs in a worker process (the scene is built in each: the
    build is seeded, so every seed of a scene sees the same pixels)."""
    console.set_verbosity(-1)
    t0 = time.perf_counter()
    patch = NetworkOptions().patch_size
    with tempfile.TemporaryDirectory(prefix=f"al-{key}-{seed}-") as tmp, cpu_threads(1):
        workdir = Path(tmp)
        bench = build_scene(key, workdir, data_root=args.data_root, size=args.size,
                            scene_seed=args.scene_seed, train_per_class=60)
        with open_scene(bench.optical, bench.aux, bench.aux_kind) as scene:
            setup = prepare(bench, scene, args, patch, workdir)
            curves = run_seed(bench, scene, setup, args, seed, workdir)
    classes = setup["classes"]
    return {"key": key, "title": bench.title, "description": bench.description,
            "caveats": bench.caveats, "classes": [c.name for c in classes],
            "dropped": setup["dropped"], "test": len(setup["test"]),
            "test_per_class": {classes.name_of(c): n
                               for c, n in setup["test"].counts(classes).items()},
            "allowed": len(setup["allowed"]),
            "per_round": added_per_round(args.schedule, len(classes)),
            "seeds": {seed: curves}, "minutes": (time.perf_counter() - t0) / 60}


def merge_seeds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One scene's result from its per-seed runs (which agree on everything but the curves;
    ``minutes`` becomes the sum over seeds)."""
    merged = {**runs[0], "seeds": {}, "minutes": 0.0}
    for run in runs:
        merged["seeds"].update(run["seeds"])
        merged["minutes"] += run["minutes"]
    merged["minutes"] = round(merged["minutes"], 1)
    return merged


def mean_curve(result: dict[str, Any], name: str) -> list[dict[str, float]]:
    """The curve of one strategy averaged over seeds (labels too: where the spacing rule left
    ``suggest`` fewer pixels than asked, the seeds' counts differ)."""
    runs = [curves[name] for curves in result["seeds"].values()]
    return [{"labels": float(np.mean([r[i]["labels"] for r in runs])),
             "oa": float(np.mean([r[i]["oa"] for r in runs])),
             "aa": float(np.mean([r[i]["aa"] for r in runs]))} for i in range(len(runs[0]))]


def labels_to_reach(curve: list[dict[str, float]], target: float) -> tuple[int | None,
                                                                           float | None]:
    """The first measured label count whose OA reaches ``target``, and the count interpolated
    linearly between that round and the one before (None when never reached)."""
    for i, point in enumerate(curve):
        if point["oa"] >= target - 1e-12:
            if i == 0:
                return round(point["labels"]), float(point["labels"])
            prev = curve[i - 1]
            frac = (target - prev["oa"]) / (point["oa"] - prev["oa"])
            return round(point["labels"]), prev["labels"] + frac * (point["labels"]
                                                                  - prev["labels"])
    return None, None


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Labels each strategy needs to reach the random strategy's final OA."""
    curves = {name: mean_curve(result, name) for name, _ in STRATEGIES}
    target = curves["random"][-1]["oa"]
    final = round(curves["random"][-1]["labels"])
    need = {name: labels_to_reach(curve, target) for name, curve in curves.items()}
    saving = {name: (None if n is None else 1 - n / final) for name, (n, _) in need.items()}
    return {"curves": curves, "target": target, "random_final": final, "need": need,
            "saving": saving}


def _machine() -> str:
    import torch

    return machine({"torch": torch.__version__, "numpy": np.__version__})


def _scenes(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    keys, skipped = [], []
    for key in (k.strip() for k in args.scenes.split(",") if k.strip()):
        if key not in ALL_SCENES:
            raise SystemExit(f"unknown scene {key!r}; choose from {', '.join(ALL_SCENES)}")
        folder = {"sen1floods11": "sen1floods11_sample", "eolearn": "eolearn_testeopatch"}
        if key in REAL_SCENES and not (args.data_root / folder[key]).is_dir():
            skipped.append(key)
            continue
        keys.append(key)
    return keys, skipped


def _rerender(args: argparse.Namespace) -> int:
    """Rebuild the report and the PNG of a finished run from its ``--json`` (the run's own
    command, wall time and options are kept; only ``--out`` and ``--plot`` are taken from
    this command line)."""
    data = json.loads(Path(args.from_json).read_text())
    if "schedule" not in data["args"]:
        raise SystemExit(f"{args.from_json} comes from the bench before --schedule (fixed rounds "
                         "of --per-round labels): rebuild it with that version (git 6910e15)")
    run_args = argparse.Namespace(**data["args"])
    run_args.out, run_args.plot = args.out, args.plot
    results = data["results"]
    meta = {**data["meta"], "rendered_from": str(args.from_json)}
    from bench.active_learning_report import plot, render

    summaries = [summarise(r) for r in results]
    plot(results, summaries, args.plot)
    args.out.write_text(render(results, summaries, meta, run_args))
    _log(f"wrote {args.out} and {args.plot} from {args.from_json}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        return _rerender(args)
    keys, skipped = _scenes(args)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    started = _dt.datetime.now(_dt.timezone.utc)
    load0 = os.getloadavg()[0]
    git = git_revision()  # the code that runs, before anyone commits during the run
    t0 = time.perf_counter()
    _log(f"scenes {', '.join(keys)}" + (f" (skipped, no data: {', '.join(skipped)})"
                                         if skipped else "") + f"; {args.jobs} job(s)")
    tasks = [(key, seed) for key in keys for seed in range(args.seeds)]
    if args.jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            runs = list(pool.map(run_scene_seed, [k for k, _ in tasks], [s for _, s in tasks],
                                 [args] * len(tasks)))
    else:
        runs = [run_scene_seed(key, seed, args) for key, seed in tasks]
    results = [merge_seeds([run for run, (k, _) in zip(runs, tasks, strict=True) if k == key])
               for key in keys]
    meta = {
        "command": "python3 bench/active_learning.py " + shlex.join(sys.argv[1:] if argv is None
                                                                    else argv),
        "started": started.isoformat(timespec="seconds"),
        "minutes": round((time.perf_counter() - t0) / 60, 1), "git": git,
        "machine": _machine(), "load": (round(load0, 1), round(os.getloadavg()[0], 1)),
        "skipped": skipped, "train_defaults": TrainSettings().to_json(),
        "network_defaults": NetworkOptions().to_json(),
    }
    summaries = [summarise(r) for r in results]
    if args.json is not None:
        args.json.write_text(json.dumps({"meta": meta, "args": {
            k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": results}, indent=1, default=str) + "\n")
    from bench.active_learning_report import plot, render

    plot(results, summaries, args.plot)
    args.out.write_text(render(results, summaries, meta, args))
    _log(f"wrote {args.out} and {args.plot} in {meta['minutes']} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
