"""The report of ``bench/active_learning.py``: docs/active-learning.md and its PNG."""

from __future__ import annotations

import argparse
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Any

from s2fin_cli.sampling import AUTO_VAL_MIN_PER_CLASS

STRATEGY_NAMES = ("suggest", "random", "uncertainty")
_LABELS = {"suggest": "s2fin suggest", "random": "random",
           "uncertainty": "uncertainty alone"}
_COLOURS = {"suggest": "#d62728", "random": "#7f7f7f", "uncertainty": "#1f77b4"}
TARGET_SAVING = 0.30  # the bar: at least 30 % fewer labels than random's final count



# The recipe as a run's JSON recorded it; runs from before a field existed lack it.
def _schedule(train: dict[str, Any]) -> str:
    if train.get("min_steps") is None and train.get("steps_per_class"):
        return (f"max({train['epochs']} epochs, {train['steps_per_class']} optimiser steps per "
                "class)")
    if train.get("min_steps"):
        return f"max({train['epochs']} epochs, {train['min_steps']} optimiser steps)"
    return f"{train['epochs']} epochs at most"


def _radiometric(train: dict[str, Any]) -> str:
    if not (train.get("gain_jitter") or train.get("spectral_noise")):
        return ""
    return (f", gain jitter ±{train.get('gain_jitter', 0):g} and noise "
            f"{train.get('spectral_noise', 0):g}")


def _validation(train: dict[str, Any]) -> str:
    if "min_steps" not in train:  # before the auto rule: always a blocked split
        return (f"a blocked split of the labels, early stopping (patience {train['patience']})")
    return (f"none while some class has fewer than {AUTO_VAL_MIN_PER_CLASS} labels (every "
            "label trains for the schedule), else a blocked split with early stopping "
            f"(patience {train['patience']})")


def _inputs(net: dict[str, Any]) -> str:
    parts = []
    if "optical_stem_norm" in net:
        parts.append(f"stem normalisation {net['optical_stem_norm']}/{net['active_stem_norm']}")
    if net.get("height_window"):
        parts.append(f"height above ground over {net['height_window']} px (LiDAR scenes)")
    return "".join(f", {p}" for p in parts)

def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _need(summary: dict[str, Any], name: str) -> str:
    measured, interpolated = summary["need"][name]
    if measured is None:
        return "not reached"
    saving = summary["saving"][name]
    text = f"{measured}"
    if interpolated is not None and abs(interpolated - measured) > 1e-9:
        text += f" (~{interpolated:.0f})"
    if name != "random":
        text += (f", {100 * saving:.0f} % fewer" if saving > 0 else
                 f", {-100 * saving:.0f} % more" if saving < 0 else ", as many")
    return text


def headline(results: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    lines = ["| scene | classes | labels per round | random's final OA % (labels) | "
             "s2fin suggest | uncertainty alone | random |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for result, summary in zip(results, summaries, strict=True):
        lines.append(
            f"| {result['title']} | {len(result['classes'])} | "
            f"{', '.join(map(str, result['per_round']))} | "
            f"{_pct(summary['target'])} ({summary['random_final']}) | "
            f"{_need(summary, 'suggest')} | {_need(summary, 'uncertainty')} | "
            f"{_need(summary, 'random')} |")
    return lines


def verdict(results: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    met, short = [], []
    for result, summary in zip(results, summaries, strict=True):
        saving = summary["saving"]["suggest"]
        if saving is not None and saving >= TARGET_SAVING - 1e-9:
            met.append(f"{result['title']} ({100 * saving:.0f} % fewer)")
        else:
            why = ("never reached it" if saving is None
                   else f"{100 * saving:.0f} % fewer" if saving > 0
                   else "no fewer")
            short.append(f"{result['title']} ({why})")
    total = len(results)
    text = [f"**Measured rounds: `s2fin suggest` reached the random strategy's final OA with at "
            f"least {100 * TARGET_SAVING:.0f} % fewer labels on {len(met)} of {total} "
            "scene(s)**" + (f": {'; '.join(met)}" if met else "") + "."]
    if short:
        text.append(f"Not on: {'; '.join(short)}.")
    plain = [r["title"] for r, s in zip(results, summaries, strict=True)
             if s["saving"]["uncertainty"] is not None
             and s["saving"]["uncertainty"] >= TARGET_SAVING - 1e-9]
    text.append(f"For comparison, uncertainty alone (no spacing, no diversity) did so on "
                f"{len(plain)} of {total} scene(s)"
                + (": the saving comes from asking where the model is unsure; the spacing and "
                   "diversity rules do not add to it in these numbers (the mean OA table below)."
                   if len(plain) >= len(met) else "."))
    possible = sorted({round(100 * (1 - p['labels'] / s['random_final']))
                       for s in summaries for p in s["curves"]["suggest"][1:]})
    text.append("The rounds fix which savings can be measured at all: a strategy that reaches "
                "the target at round r saves 1 - labels(r) / labels(final); here the rounds "
                f"allow savings of {', '.join(f'{v} %' for v in possible)} (first measured "
                "round; the interpolated count in brackets assumes OA grows linearly between "
                "rounds).")
    return text


def noise(results: list[dict[str, Any]], summaries: list[dict[str, Any]],
          seeds: int) -> list[str]:
    """The largest fall of any strategy's (seed-mean) OA from one round to the next: every
    strategy only gains labels, so a fall is the training's own noise."""
    worst: tuple[float, str, str, float, float] | None = None
    for result, summary in zip(results, summaries, strict=True):
        for name in STRATEGY_NAMES:
            curve = summary["curves"][name]
            for a, b in pairwise(curve):
                fall = a["oa"] - b["oa"]
                if worst is None or fall > worst[0]:
                    worst = (fall, result["title"], name, a["labels"], b["labels"])
    if worst is None or worst[0] <= 0:
        return []
    fall, title, name, a, b = worst
    return [f"**Noise.** Every strategy only gains labels from round to round, yet OA falls by "
            f"up to {100 * fall:.1f} points between consecutive rounds ({_LABELS[name]} on "
            f"{title}, from {a:.0f} to {b:.0f} labels, mean of {seeds} seed(s)): with so few "
            "labels, differences of that size between strategies are within the training's "
            "noise. The mean OA over the added rounds (below) is steadier than any single "
            "round."]


def mean_table(results: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> list[str]:
    """Mean OA over rounds 1..R (the area under the learning curve, per added round)."""
    lines = ["| scene | " + " | ".join(_LABELS[n] for n in STRATEGY_NAMES) + " |",
             "|---|" + "---:|" * len(STRATEGY_NAMES)]
    totals = {n: 0.0 for n in STRATEGY_NAMES}
    for result, summary in zip(results, summaries, strict=True):
        means = {n: sum(p["oa"] for p in summary["curves"][n][1:])
                 / max(1, len(summary["curves"][n]) - 1) for n in STRATEGY_NAMES}
        best = max(means.values())
        lines.append(f"| {result['title']} | " + " | ".join(
            (f"**{_pct(means[n])}**" if means[n] == best else _pct(means[n]))
            for n in STRATEGY_NAMES) + " |")
        for n in STRATEGY_NAMES:
            totals[n] += means[n] / max(1, len(results))
    lines.append("| mean over scenes | " + " | ".join(_pct(totals[n]) for n in STRATEGY_NAMES)
                 + " |")
    return lines


def curve_table(result: dict[str, Any], summary: dict[str, Any]) -> list[str]:
    names = STRATEGY_NAMES
    head = ("| labels | " + " | ".join(f"{_LABELS[n]} OA" for n in names) + " | "
            + " | ".join(f"{_LABELS[n]} AA" for n in names) + " |")
    lines = [head, "|" + "---:|" * (1 + 2 * len(names))]
    curves = summary["curves"]
    def cell(name: str, i: int, metric: str) -> str:
        point = curves[name][i]
        # A strategy that found fewer pixels than asked (spacing) says how many labels it had.
        other = point["labels"] != curves["random"][i]["labels"]
        return _pct(point[metric]) + (f" ({point['labels']:.0f} labels)" if other else "")

    for i, point in enumerate(curves["random"]):
        oa = " | ".join(cell(n, i, "oa") for n in names)
        aa = " | ".join(cell(n, i, "aa") for n in names)
        lines.append(f"| {point['labels']:.0f} | {oa} | {aa} |")
    return lines


def added_per_class(result: dict[str, Any]) -> list[str]:
    """Labels added over all rounds per class and strategy (summed over seeds)."""
    totals = {name: Counter[str]() for name in STRATEGY_NAMES}
    for curves in result["seeds"].values():
        for name in STRATEGY_NAMES:
            for point in curves[name][1:]:
                totals[name].update(point.get("added", {}))
    lines = ["| class | " + " | ".join(_LABELS[n] for n in STRATEGY_NAMES) + " |",
             "|---|" + "---:|" * len(STRATEGY_NAMES)]
    for cls in result["classes"]:
        lines.append(f"| {cls} | " + " | ".join(str(totals[n][cls]) for n in STRATEGY_NAMES)
                     + " |")
    return lines


def _timing(result: dict[str, Any]) -> str:
    train = [p["train_s"] for c in result["seeds"].values() for n in STRATEGY_NAMES
             for p in c[n][1:]]
    sug = [p["suggest_s"] for c in result["seeds"].values() for n in ("suggest", "uncertainty")
           for p in c[n][1:]]
    scored = sorted({p["scored"] for c in result["seeds"].values() for n in ("suggest",)
                     for p in c[n][1:]})
    return (f"{result['minutes']} min for the scene (its seeds' runs added up); a training "
            f"took {min(train):.0f}-{max(train):.0f} s, a suggestion (network pass over the "
            f"candidates) {min(sug):.0f}-{max(sug):.0f} s for {', '.join(map(str, scored))} "
            "scored candidates")


def scene_section(result: dict[str, Any], summary: dict[str, Any], patch: int) -> list[str]:
    lines = [f"### {result['title']}", "", result["description"] + ".", ""]
    lines.append(f"* Classes ({len(result['classes'])}): {', '.join(result['classes'])}."
                 + (f" Left out: {'; '.join(result['dropped'])}." if result["dropped"] else ""))
    per_class = ", ".join(f"{k} {v}" for k, v in result["test_per_class"].items())
    lines.append(f"* Test pixels: {result['test']} ({per_class}). Answerable pixels (outside "
                 f"the test pixels' patch radius): {result['allowed']}.")
    lines.append(f"* {_timing(result)}.")
    if result["caveats"]:
        lines.append("* Caveats, from the accuracy benchmark's scene list (its patch is that "
                     f"benchmark's 9 x 9; this one trains with {patch} x {patch}):")
    for caveat in result["caveats"]:
        lines.append(f"  * {caveat}.")
    lines += ["", "OA and AA % on the test pixels (mean over seeds):", ""]
    lines += curve_table(result, summary)
    lines += ["", "Labels added over all rounds, per class of the answer:", ""]
    lines += added_per_class(result)
    return [*lines, ""]


def render(results: list[dict[str, Any]], summaries: list[dict[str, Any]],
           meta: dict[str, Any], args: argparse.Namespace) -> str:
    train, net = meta["train_defaults"], meta["network_defaults"]
    seeds = args.seeds
    lines = [
        "# Active learning: labels chosen by `s2fin suggest` against random and "
        "uncertainty alone", "",
        "Generated by `bench/active_learning.py` (do not edit by hand; rerun the command "
        "below). The protocol is the script's docstring; in short: the ground truth plays the "
        "analyst, every strategy starts from the same labels and the same model, and each "
        "round adds the same number of labels chosen its own way.", "",
        "## How this was produced", "", "```", meta["command"], "```", "",
        f"* Started {meta['started']}, wall time **{meta['minutes']} min** "
        f"(git {meta['git']}).",
        f"* Machine: {meta['machine']}; torch limited to 1 thread per process, "
        f"{args.jobs} (scene, seed) run(s) at a time; 1-minute load average "
        f"{meta['load'][0]} at the start and {meta['load'][1]} at the end (the machine is "
        "shared, so run times vary).",
        f"* Round 0: {args.schedule[0]} labels per class (seeded, stratified); then "
        f"{len(args.schedule) - 1} rounds bringing the labels to "
        f"{', '.join(map(str, args.schedule[1:]))} per class on average (`--schedule`; the "
        f"table says how many labels each round adds); {seeds} seed(s) (the seed draws round "
        "0 and seeds every suggestion).",
        "* Strategies, all through `s2fin_cli.suggestion.suggest_pixels` with the previous "
        "round's model and the same candidates (answerable pixels inside no labelled "
        f"pixel's patch, at most {args.max_candidates} of them, a seeded uniform "
        "sample; `s2fin suggest`'s own default is 20000): **s2fin suggest** (margin "
        "uncertainty, a pool of the 10 n most uncertain, greedy picks none inside another's "
        "patch, round-robin over predicted classes, uncertainty x feature distance), "
        "**random** (uniform over the candidates) and **uncertainty alone** (the n most "
        "uncertain, no spacing or diversity).",
        "* Training: `s2fin_cli.training.run_training` with `s2fin train`'s defaults as they "
        f"were when this ran: {_schedule(train)}, batch {train['batch_size']}, lr "
        f"{train['lr']:g}, weight decay {train['weight_decay']:g}, warm-up "
        f"{train['warmup_epochs']}, label smoothing {train['label_smoothing']:g}, "
        f"augmentation {train['augment']}{_radiometric(train)}, training seed {train['seed']} "
        "in every run (the benchmark's seeds vary the draw and the suggestions); "
        f"validation: {_validation(train)}; network patch "
        f"{net['patch_size']}, spectral window {net['spectral_window']}, PCA {net['pca']}, dim "
        f"{net['dim']}, depth {net['depth']}, dropout {net['dropout']:g}{_inputs(net)}.",
        f"* Test: a fixed subsample of about {args.test_cap} test pixels per scene (at least "
        "min(count, 100) per class), the same for every strategy and round: the test labels "
        "of a generated scene, the test half of the label map of a real scene (cells of "
        f"{args.test_block} px); no label is taken within the patch radius of a test pixel.",
    ]
    if meta.get("rendered_from"):
        lines.append("* This page was rebuilt from that run's JSON (`--from-json`); every "
                     "number is the run's.")
    if args.epochs is not None:
        lines.append(f"* **Smoke run: epochs overridden to {args.epochs}** and no step floor, "
                     "not `s2fin train`'s defaults; these numbers say nothing about active "
                     "learning.")
    if meta["skipped"]:
        lines.append(f"* Skipped (data not present): {', '.join(meta['skipped'])}.")
    lines += ["", "## Headline: labels needed to reach the random strategy's final OA", "",
              "Each cell: the first measured label count whose OA reaches the random strategy's "
              "final OA (mean over seeds), the count interpolated between rounds in brackets, "
              "and how many fewer labels the measured count is than the random strategy's final "
              "count.", ""]
    lines += headline(results, summaries)
    lines += ["", *verdict(results, summaries), "", *noise(results, summaries, args.seeds), "",
              "Mean OA % over the added rounds (rounds 1 to "
              f"{len(args.schedule) - 1}; the best of each scene in bold):", "",
              *mean_table(results, summaries), "",
              f"![OA and AA against labels]({Path(args.plot).name})", "",
              "## Scenes", ""]
    for result, summary in zip(results, summaries, strict=True):
        lines += scene_section(result, summary, int(net["patch_size"]))
    return "\n".join(lines).rstrip("\n") + "\n"


def plot(results: list[dict[str, Any]], summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(1, len(results))
    fig, axes = plt.subplots(rows, 2, figsize=(9, 2.8 * rows), squeeze=False)
    for i, (result, summary) in enumerate(zip(results, summaries, strict=True)):
        for j, metric in enumerate(("oa", "aa")):
            ax = axes[i][j]
            for name in STRATEGY_NAMES:
                curve = summary["curves"][name]
                ax.plot([p["labels"] for p in curve], [100 * p[metric] for p in curve],
                        marker="o", ms=3, color=_COLOURS[name], label=_LABELS[name])
            if metric == "oa":
                ax.axhline(100 * summary["target"], color="#7f7f7f", lw=0.8, ls=":")
            ax.set_title(f"{result['title']}: {metric.upper()}", fontsize=9)
            ax.set_xlabel("labels", fontsize=8)
            ax.set_ylabel(f"{metric.upper()} %", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
