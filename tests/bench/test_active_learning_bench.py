"""Smoke test of bench/active_learning.py (one tiny generated scene, one round, two epochs) and
its arithmetic (labels needed to reach a target on hand-made curves)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch

from bench.active_learning import (
    added_per_round,
    labels_to_reach,
    main,
    merge_seeds,
    parse_schedule,
    summarise,
)


def test_labels_to_reach_on_hand_made_curves() -> None:
    curve = [{"labels": 50, "oa": 0.60}, {"labels": 70, "oa": 0.70}, {"labels": 90, "oa": 0.80}]
    assert labels_to_reach(curve, 0.65) == (70, pytest.approx(60.0))
    assert labels_to_reach(curve, 0.80) == (90, pytest.approx(90.0))
    assert labels_to_reach(curve, 0.55) == (50, 50.0)
    assert labels_to_reach(curve, 0.81) == (None, None)


def test_schedule_is_labels_per_class_after_each_round() -> None:
    assert parse_schedule("5,7,10,14,20") == (5, 7, 10, 14, 20)
    assert added_per_round((5, 7, 10, 14, 20), 11) == [22, 33, 44, 66]
    # One round early saves 30 % of the final labels with the default schedule, two 50 %.
    assert 1 - 14 / 20 == pytest.approx(0.3) and 1 - 10 / 20 == 0.5
    for bad in ("5", "5,5", "7,5", "0,3", "5,x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_schedule(bad)


def test_seeds_run_apart_merge_into_one_scene() -> None:
    run = {"key": "urban", "classes": ["a"], "per_round": [2]}
    merged = merge_seeds([{**run, "seeds": {0: "c0"}, "minutes": 1.25},
                          {**run, "seeds": {1: "c1"}, "minutes": 2.0}])
    assert merged["seeds"] == {0: "c0", 1: "c1"} and merged["minutes"] == 3.2
    assert merged["per_round"] == [2] and merged["key"] == "urban"


def test_summary_compares_with_the_random_final_oa() -> None:
    def run(oas: list[float]) -> list[dict[str, float]]:
        return [{"labels": 10 + 10 * i, "oa": oa, "aa": oa} for i, oa in enumerate(oas)]

    result = {"seeds": {0: {"suggest": run([0.5, 0.7, 0.8, 0.8]),
                            "random": run([0.5, 0.55, 0.6, 0.7]),
                            "uncertainty": run([0.5, 0.6, 0.65, 0.68])}}}
    summary = summarise(result)
    assert summary["target"] == 0.7 and summary["random_final"] == 40
    assert summary["need"]["suggest"][0] == 20
    assert summary["saving"]["suggest"] == pytest.approx(0.5)
    assert summary["need"]["uncertainty"] == (None, None)
    assert summary["need"]["random"][0] == 40 and summary["saving"]["random"] == 0.0


def test_active_learning_bench_writes_its_report(tmp_path: Path) -> None:
    out, raw = tmp_path / "al.md", tmp_path / "al.json"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        code = main(["--scenes", "msi-sar", "--size", "64", "--schedule", "2,3", "--epochs", "2",
                     "--max-candidates", "150",
                     "--test-cap", "60", "--min-test", "5", "--out", str(out), "--json",
                     str(raw)])
    finally:
        torch.set_num_threads(threads)
    seconds = time.perf_counter() - t0
    assert code == 0
    text = out.read_text()
    assert "## Headline: labels needed to reach the random strategy's final OA" in text
    assert "Smoke run: epochs overridden to 2" in text
    assert "python3 bench/active_learning.py --scenes msi-sar" in text
    assert (tmp_path / "al.png").stat().st_size > 1000
    result = json.loads(raw.read_text())["results"][0]
    curves = result["seeds"]["0"]
    k = len(result["classes"])
    for name in ("suggest", "random", "uncertainty"):
        start, end = (p["labels"] for p in curves[name])
        assert start == 2 * k
        # On a 64 px scene the spacing rule may leave room for fewer picks than asked.
        assert 2 * k < end <= 3 * k and (name == "suggest" or end == 3 * k)
        assert all(0.0 <= p["oa"] <= 1.0 for p in curves[name])
    assert curves["random"][1]["scored"] == 0 and curves["suggest"][1]["scored"] > 0
    # --from-json rebuilds the same page (plus the line that says so) from the run's JSON.
    again = tmp_path / "again.md"
    assert main(["--from-json", str(raw), "--out", str(again)]) == 0
    rebuilt = again.read_text().replace(
        "* This page was rebuilt from that run's JSON (`--from-json`); every number is the "
        "run's.\n", "").replace("(again.png)", "(al.png)")
    assert rebuilt == text and (tmp_path / "again.png").stat().st_size > 1000
    assert seconds < 240
