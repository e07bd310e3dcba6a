"""Smoke test of bench/accuracy: one tiny generated scene, one seed, N = 5, two methods."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from bench.accuracy.run import main


def test_accuracy_bench_writes_markdown_table(tmp_path: Path) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "runs.json"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        code = main(["--scenes", "urban", "--size", "48", "--seeds", "1", "--n", "5",
                     "--methods", "rf,s2fin", "--steps", "3", "--test-cap", "80",
                     "--train-per-class", "12", "--out", str(out), "--json", str(raw)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert time.perf_counter() - t0 < 60
    text = out.read_text()
    assert "## Headline: N = 5 labelled pixels per class" in text
    assert "| scene | RF (pixel) | S²Fin | S²Fin ahead? |" in text
    assert "| method | N=5 OA % | N=5 AA % | N=5 κ |" in text
    assert "| RF (pixel) |" in text and "| **S²Fin** |" in text
    assert "At N = 5, S²Fin is" in text  # the generated verdict sentence
    assert "python3 -m bench.accuracy --scenes urban" in text
    runs = json.loads(raw.read_text())[0]["runs"]
    assert {r["method"] for r in runs} == {"rf", "s2fin"}
    assert all(r["n_train"] == 5 * len(json.loads(raw.read_text())[0]["classes"]) for r in runs)
    assert all(0.0 <= r["oa"] <= 1.0 for r in runs)

    # A recipe trial is appended as its own section, and replaced (not duplicated) on a rerun.
    trial = ["--scenes", "urban", "--size", "48", "--seeds", "1", "--n", "5", "--methods",
             "rf", "--train-per-class", "12", "--out", str(out), "--trial", "t1"]
    assert main(trial) == 0 and main(trial) == 0
    appended = out.read_text()
    assert appended.startswith(text.rstrip("\n"))
    assert appended.count("## Recipe trial: t1") == 1
