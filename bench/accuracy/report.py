"""docs/benchmarks.md from the runs: every number in it comes from :mod:`s2fin_cli.metrics`."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from bench.accuracy.methods import ABLATED, BASELINES, LABELS, RECIPE_ELEMENTS, REVERTED, S2FIN
from bench.accuracy.scenes import BenchScene
from s2fin_cli.classes import ClassTable
from s2fin_cli.metrics import AccuracyReport, format_mean_std, mean_std

METRICS = (("overall_accuracy", "OA"), ("average_accuracy", "AA"), ("kappa", "κ"))


@dataclass
class Run:
    scene: str
    n: int
    seed: int
    method: str
    report: AccuracyReport
    train_seconds: float
    predict_seconds: float
    n_train: int
    n_test: int
    excluded: int
    # S²Fin runs: pixels that trained and validated after s2fin train's split, epochs run.
    n_fit: int | None = None
    n_val: int | None = None
    epochs: int | None = None

    def to_json(self) -> dict[str, Any]:
        r = self.report
        return {"scene": self.scene, "n": self.n, "seed": self.seed, "method": self.method,
                "oa": r.overall_accuracy, "aa": r.average_accuracy, "kappa": r.kappa,
                "train_seconds": round(self.train_seconds, 3),
                "predict_seconds": round(self.predict_seconds, 3), "n_train": self.n_train,
                "n_test": self.n_test, "excluded_near_training": self.excluded,
                "n_fit": self.n_fit, "n_val": self.n_val, "epochs": self.epochs,
                "report": r.to_json()}


@dataclass
class SceneResult:
    bench: BenchScene
    classes: ClassTable
    pool_counts: dict[int, int]
    test_available: dict[int, int]
    candidate_counts: dict[int, int]
    dropped_classes: list[tuple[int, str, str]]
    dropped_nodata: int
    seeds: list[int]
    ns: list[int]
    methods_at: dict[int, list[str]]
    wall_seconds: float = 0.0
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cell(self, method: str, n: int, seeds: set[int] | None = None) -> dict[str, Any] | None:
        reports = [r.report for r in self.runs if r.method == method and r.n == n
                   and (seeds is None or r.seed in seeds)]
        return mean_std(reports) if reports else None

    def ablation_seeds(self, n: int, methods: tuple[str, ...] = ABLATED) -> set[int]:
        """The seeds every ablation (or reversion) ran with at ``n`` (the full model is
        compared on these)."""
        sets = [{r.seed for r in self.runs if r.method == m and r.n == n} for m in methods]
        sets = [s for s in sets if s]
        return set.intersection(*sets) if sets else set()


def _fmt(stats: dict[str, Any] | None, metric: str) -> str:
    if stats is None:
        return "·"
    if metric == "kappa":
        return format_mean_std(stats[metric], percent=False, digits=3)
    return format_mean_std(stats[metric])


def _mean(stats: dict[str, Any] | None, metric: str) -> float:
    if stats is None or stats[metric]["mean"] is None:
        return math.nan
    return float(stats[metric]["mean"])


def _std(stats: dict[str, Any] | None, metric: str) -> float:
    if stats is None or stats[metric]["std"] is None:
        return math.nan
    return float(stats[metric]["std"])


def headline_n(ns: list[int]) -> int:
    return 10 if 10 in ns else ns[len(ns) // 2]


def verdict(result: SceneResult, n: int) -> tuple[bool | None, str]:
    """(S²Fin ahead of every baseline on OA, AA and Kappa?, one generated sentence)."""
    full = result.cell(S2FIN, n)
    baselines = [b for b in BASELINES if result.cell(b, n) is not None]
    if full is None or not baselines:
        return None, f"No S²Fin-versus-baseline comparison at N = {n} (not run)."
    losses = []
    for metric, short in METRICS:
        ours = _mean(full, metric)
        beaten_by = [(b, _mean(result.cell(b, n), metric)) for b in baselines
                     if _mean(result.cell(b, n), metric) >= ours]
        for b, value in beaten_by:
            scale = 1 if metric == "kappa" else 100
            digits = 3 if metric == "kappa" else 2
            losses.append(f"{short}: {LABELS[b]} {scale * value:.{digits}f} vs S²Fin "
                          f"{scale * ours:.{digits}f}")
    best = max(baselines, key=lambda b: _mean(result.cell(b, n), "overall_accuracy"))
    gap = 100 * (_mean(full, "overall_accuracy") - _mean(result.cell(best, n),
                                                         "overall_accuracy"))
    spread = 100 * max(_std(full, "overall_accuracy"),
                       _std(result.cell(best, n), "overall_accuracy"))
    if not losses:
        within = (" (the OA gap is within one standard deviation over seeds)"
                  if not math.isnan(spread) and abs(gap) <= spread else "")
        return True, (f"At N = {n}, S²Fin is **ahead of every baseline** on OA, AA and Kappa; "
                      f"the best baseline is {LABELS[best]} (OA {gap:+.2f} points for S²Fin)"
                      f"{within}.")
    return False, (f"At N = {n}, S²Fin is **not ahead of every baseline**: "
                   + "; ".join(losses) + ".")


def scored_per_draw(result: SceneResult) -> dict[int, dict[int, tuple[int, int]]]:
    """Test pixels of each class actually scored, per N: (min, max) over the seeds. Every
    method of one (N, seed) is scored on the same pixels, so any method's runs tell; the
    exclusion around training pixels can leave far fewer than the cap."""
    out: dict[int, dict[int, tuple[int, int]]] = {}
    for n in result.ns:
        per_seed: dict[int, NDArray[np.int64]] = {}
        for run in result.runs:
            if run.n == n:
                per_seed.setdefault(run.seed, run.report.support)
        for i, c in enumerate(result.classes):
            counts = [int(support[i]) for support in per_seed.values()]
            if counts:
                out.setdefault(c.id, {})[n] = (min(counts), max(counts))
    return out


def _class_table(result: SceneResult) -> list[str]:
    scored = scored_per_draw(result)
    heads = "".join(f" scored at N = {n} |" for n in result.ns)
    lines = ["| id | class | training-eligible | test available | test cap |" + heads,
             "|---:|---|---:|---:|---:|" + "---:|" * len(result.ns)]
    for c in result.classes:
        cells = ""
        for n in result.ns:
            lo_hi = scored.get(c.id, {}).get(n)
            cells += (" · |" if lo_hi is None else
                      f" {lo_hi[0]} |" if lo_hi[0] == lo_hi[1] else f" {lo_hi[0]}-{lo_hi[1]} |")
        lines.append(f"| {c.id} | {c.name} | {result.pool_counts.get(c.id, 0)} | "
                     f"{result.test_available.get(c.id, 0)} | "
                     f"{result.candidate_counts.get(c.id, 0)} |" + cells)
    return lines


def _main_table(result: SceneResult) -> list[str]:
    head = "| method |" + "".join(f" N={n} OA % | N={n} AA % | N={n} κ |" for n in result.ns)
    sep = "|---|" + "---:|" * (3 * len(result.ns))
    lines = [head, sep]
    methods = [m for m in (*BASELINES, S2FIN, *ABLATED, *REVERTED)
               if any(m in result.methods_at.get(n, []) for n in result.ns)]
    for m in methods:
        cells = []
        for n in result.ns:
            stats = result.cell(m, n)
            cells += [_fmt(stats, metric) for metric, _ in METRICS]
        name = f"**{LABELS[m]}**" if m == S2FIN else LABELS[m]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _per_class_table(result: SceneResult, n: int) -> list[str]:
    """Producer's accuracy per class at ``n`` (mean over seeds) of the baselines and S²Fin."""
    methods = [m for m in (*BASELINES, S2FIN) if result.cell(m, n) is not None]
    if not methods:
        return []
    stats = {m: result.cell(m, n) for m in methods}
    lines = [f"Producer's accuracy per class at N = {n} (%, mean over seeds):", "",
             "| class | " + " | ".join(LABELS[m] for m in methods) + " |",
             "|---|" + "---:|" * len(methods)]
    for i, c in enumerate(result.classes):
        cells = []
        for m in methods:
            value = stats[m]["classes"][i]["producers_accuracy"]["mean"]  # type: ignore[index]
            cells.append("–" if value is None else f"{100 * value:.1f}")
        lines.append(f"| {c.name} | " + " | ".join(cells) + " |")
    return lines


def _cost_table(result: SceneResult, n: int, methods: tuple[str, ...], what: str) -> list[str]:
    """The full model minus each variant of ``methods`` at ``n``, on the seeds they share."""
    seeds = result.ablation_seeds(n, methods)
    full = result.cell(S2FIN, n, seeds)
    rows = [(m, result.cell(m, n, seeds)) for m in methods
            if result.cell(m, n, seeds) is not None]
    if full is None or not rows:
        return []
    lines = [f"Cost of {what} at N = {n} (full minus variant, mean over seeds "
             f"{', '.join(map(str, sorted(seeds)))} for both; positive = it helps):", "",
             "| variant | OA % | AA % | κ | ΔOA (points) | ΔAA (points) | Δκ |",
             "|---|---:|---:|---:|---:|---:|---:|",
             f"| S²Fin (full) | {_fmt(full, 'overall_accuracy')} | "
             f"{_fmt(full, 'average_accuracy')} | {_fmt(full, 'kappa')} | | | |"]
    for m, stats in rows:
        d_oa = 100 * (_mean(full, "overall_accuracy") - _mean(stats, "overall_accuracy"))
        d_aa = 100 * (_mean(full, "average_accuracy") - _mean(stats, "average_accuracy"))
        d_k = _mean(full, "kappa") - _mean(stats, "kappa")
        lines.append(f"| {LABELS[m]} | {_fmt(stats, 'overall_accuracy')} | "
                     f"{_fmt(stats, 'average_accuracy')} | {_fmt(stats, 'kappa')} | "
                     f"{d_oa:+.2f} | {d_aa:+.2f} | {d_k:+.3f} |")
    return lines


def costs(result: SceneResult, n: int, methods: tuple[str, ...] = ABLATED) -> dict[str, float]:
    """OA points the full model is ahead of each variant of ``methods`` at ``n``."""
    seeds = result.ablation_seeds(n, methods)
    full = result.cell(S2FIN, n, seeds)
    out = {}
    for m in methods:
        stats = result.cell(m, n, seeds)
        if full is not None and stats is not None:
            out[m] = 100 * (_mean(full, "overall_accuracy") - _mean(stats, "overall_accuracy"))
    return out


def ablation_costs(result: SceneResult, n: int) -> dict[str, float]:
    """OA cost of removing each module (by module name)."""
    return {m.removeprefix("s2fin-no-"): v for m, v in costs(result, n).items()}


def _timing_lines(results: list[SceneResult]) -> list[str]:
    train: dict[str, list[float]] = defaultdict(list)
    pred: dict[str, list[float]] = defaultdict(list)
    for res in results:
        for r in res.runs:
            train[r.method].append(r.train_seconds)
            pred[r.method].append(r.predict_seconds)
    lines = ["Baselines: training and prediction at the test pixels. S²Fin: the whole "
             "`run_training` call (preprocessing fit, patches, training, scoring the test "
             "pixels, writing the model file), as `s2fin train` runs it.", "",
             "| method | runs | mean train s | mean predict s |", "|---|---:|---:|---:|"]
    for m in (*BASELINES, S2FIN, *ABLATED, *REVERTED):
        if train.get(m):
            predict = f"{np.mean(pred[m]):.2f}" if m in BASELINES else "(in train)"
            lines.append(f"| {LABELS[m]} | {len(train[m])} | {np.mean(train[m]):.2f} | "
                         f"{predict} |")
    return lines


def _verdict_table(results: list[SceneResult], ns: list[int]) -> list[str]:
    """Ahead of every baseline on OA, AA and Kappa? per scene and N, with the OA margin."""
    lines = ["| scene | " + " | ".join(f"N = {n}" for n in ns) + " |",
             "|---|" + ":---:|" * len(ns)]
    for res in results:
        cells = []
        for n in ns:
            ok, _ = verdict(res, n)
            full = res.cell(S2FIN, n)
            base = [b for b in BASELINES if res.cell(b, n) is not None]
            if ok is None or full is None or not base:
                cells.append("–")
                continue
            best = max(base, key=lambda b: _mean(res.cell(b, n), "overall_accuracy"))
            gap = 100 * (_mean(full, "overall_accuracy")
                         - _mean(res.cell(best, n), "overall_accuracy"))
            cells.append(f"{'yes' if ok else '**no**'} ({gap:+.2f} vs {SHORT_LABELS[best]})")
        lines.append(f"| {res.bench.title} | " + " | ".join(cells) + " |")
    return lines


SHORT_LABELS = {"rf": "RF", "svm": "SVM", "rf-ctx": "RF+ctx", "svm-ctx": "SVM+ctx",
                "cnn": "CNN"}


def _cost_summary(results: list[SceneResult], n: int, methods: tuple[str, ...],
                  names: list[str], title: str) -> list[str]:
    table = {res.bench.key: costs(res, n, methods) for res in results}
    if not any(table.values()):
        return []
    out = ["", title, "", "| scene | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for res in results:
        c = table[res.bench.key]
        out.append(f"| {res.bench.title} | "
                   + " | ".join(f"{c[m]:+.2f}" if m in c else "·" for m in methods) + " |")
    return out


def render(results: list[SceneResult], meta: dict[str, Any]) -> str:
    """The whole markdown document."""
    ns = meta["ns"]
    hn = headline_n(ns)
    out = ["# Accuracy benchmark: limited labels, baselines, ablations", "",
           "Generated by `bench/accuracy` (do not edit by hand; rerun the command below).", ""]
    if meta.get("quick"):
        out += ["> **Quick run** (`--quick`): tiny scenes, few seeds. These numbers check the "
                "machinery; they are not the benchmark.", ""]
    if meta.get("changed"):
        out += ["> **Changed recipe** (`--set`): S²Fin did not run `s2fin train`'s defaults "
                "here (see the protocol).", ""]
    out += ["## How this was produced", "",
            "```", meta["command"], "```", "",
            f"* Finished {meta['finished']}, wall time **{meta['wall_minutes']:.1f} min** "
            f"(git {meta['git']}).",
            f"* Machine: {meta['machine']}.",
            f"* {meta['threads_note']}",
            "", "### Protocol", ""]
    out += [f"* {line}" for line in meta["protocol_lines"]]
    out += ["", "### Reductions to fit the CPU budget", ""]
    out += [f"* {line}" for line in meta["reduction_lines"]]
    out += ["", "## Verdict: is S²Fin ahead of every baseline?", "",
            "Yes when S²Fin's mean over seeds beats every baseline's mean on all of OA, AA and "
            "Kappa; in brackets S²Fin's OA margin over the baseline with the best mean OA.", "",
            *_verdict_table(results, ns)]
    out += ["", f"## Headline: N = {hn} labelled pixels per class", "",
            "OA % (mean ± std over seeds).", ""]
    methods = [m for m in (*BASELINES, S2FIN)
               if any(r.cell(m, hn) is not None for r in results)]
    out.append("| scene | " + " | ".join(LABELS[m] for m in methods) + " | S²Fin ahead? |")
    out.append("|---|" + "---:|" * len(methods) + ":---:|")
    for res in results:
        ok, _ = verdict(res, hn)
        flag = "–" if ok is None else ("yes" if ok else "**no**")
        out.append(f"| {res.bench.title} | "
                   + " | ".join(_fmt(res.cell(m, hn), "overall_accuracy") for m in methods)
                   + f" | {flag} |")
    out += _cost_summary(results, hn, ABLATED, [m.removeprefix("s2fin-no-") for m in ABLATED],
                         f"OA cost of removing each module at N = {hn} (S²Fin full minus "
                         "ablated, OA points, on the same seeds; positive = the module helps):")
    out += _cost_summary(results, hn, REVERTED, list(RECIPE_ELEMENTS),
                         f"OA cost of reverting each element of the training recipe at N = {hn}"
                         " (S²Fin minus S²Fin without it, OA points, on the same seeds; "
                         "positive = the element helps):")
    for res in results:
        out += ["", f"## {res.bench.title}", "", res.bench.description + ".", ""]
        for n in ns:
            out += [verdict(res, n)[1], ""]
        if res.bench.caveats:
            out += ["Caveats:", ""] + [f"* {c}" for c in res.bench.caveats] + [""]
        for note in res.notes:
            out.append(f"* {note}")
        if res.dropped_classes:
            out.append("* Classes left out: " + "; ".join(
                f"{name} (id {cid}): {why}" for cid, name, why in res.dropped_classes) + ".")
        if res.dropped_nodata:
            out.append(f"* {res.dropped_nodata} labelled pixels on scene nodata dropped.")
        out.append(f"* Seeds {', '.join(str(s) for s in res.seeds)}; "
                   f"{res.bench.split_kind}; scene wall time {res.wall_seconds / 60:.1f} min.")
        out += ["", *_class_table(res), "", *_main_table(res), "",
                "`·` = not run at this N (see the reductions above).", "",
                *_per_class_table(res, hn), ""]
        for methods_, what in ((ABLATED, "removing each module"),
                               (REVERTED, "reverting each recipe element")):
            table = _cost_table(res, hn, methods_, what)
            if table:
                out += [*table, ""]
    out += ["", "## Run times (this machine, per run)", "", *_timing_lines(results), ""]
    return "\n".join(out) + "\n"


TRIAL_MARKER = "<!-- bench.accuracy trial: "


def render_trial(results: list[SceneResult], meta: dict[str, Any], title: str) -> str:
    """A section appended to an existing report: a second run with another recipe."""
    ns = meta["ns"]
    hn = headline_n(ns)
    out = [f"{TRIAL_MARKER}{title} -->", f"## Recipe trial: {title}", "",
           "A second run of the same protocol (same scenes, draws and test pixels for the same "
           "seeds) with a changed S²Fin/CNN recipe, to check whether the verdict above "
           "depends on it:", "", "```", meta["command"], "```", "",
           f"* Finished {meta['finished']}, wall time {meta['wall_minutes']:.1f} min "
           f"(git {meta['git']}); {meta['threads_note']}"]
    out += [f"* {line}" for line in meta["protocol_lines"][3:4]]
    methods = [m for m in (*BASELINES, S2FIN)
               if any(r.cell(m, hn) is not None for r in results)]
    out += ["", f"OA / AA / κ at N = {hn} (mean ± std over seeds):", "",
            "| scene | " + " | ".join(LABELS[m] for m in methods) + " | S²Fin ahead? |",
            "|---|" + "---|" * len(methods) + ":---:|"]
    for res in results:
        ok, _ = verdict(res, hn)
        flag = "–" if ok is None else ("yes" if ok else "**no**")
        cells = [" / ".join(_fmt(res.cell(m, hn), metric) for metric, _ in METRICS)
                 for m in methods]
        out.append(f"| {res.bench.title} | " + " | ".join(cells) + f" | {flag} |")
    out.append("")
    for res in results:
        out.append(f"* {res.bench.title}: {verdict(res, hn)[1]}")
    return "\n".join(out) + "\n"


def merge_trial(existing: str, section: str, title: str) -> str:
    """``existing`` with the trial section of ``title`` replaced (or appended)."""
    marker = f"{TRIAL_MARKER}{title} -->"
    start = existing.find(marker)
    if start >= 0:
        end = existing.find(TRIAL_MARKER, start + len(marker))
        tail = existing[end:] if end >= 0 else ""
        existing = existing[:start].rstrip("\n") + "\n" + (("\n" + tail) if tail else "")
    return existing.rstrip("\n") + "\n\n" + section
