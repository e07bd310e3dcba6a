"""Smoke test of bench/seed_variance.py (one tiny generated scene, one draw, two members of two
epochs: a test of the script, not a measurement) and its ensemble arithmetic."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.accuracy.s2fin_runs import TrainedRun
from bench.seed_variance import DrawResult, main, summarize
from s2fin_cli.classes import ClassInfo, ClassTable
from s2fin_cli.metrics import AccuracyReport


def _member(probs: list[list[float]], reference: np.ndarray, classes: ClassTable) -> TrainedRun:
    p = np.asarray(probs, np.float32)
    ids = np.asarray(classes.ids)
    report = AccuracyReport.from_arrays(reference, ids[p.argmax(1)], classes)
    return TrainedRun(report, 10.0, 100, 2, 4, 0, p)


def test_ensembles_average_the_members_probabilities() -> None:
    classes = ClassTable((ClassInfo(3, "a", (255, 0, 0)), ClassInfo(7, "b", (0, 0, 255))))
    reference = np.array([3, 3, 7, 7])
    # Member 0 is right on 3 of 4 pixels, member 1 on 2 of 4; their mean on all 4.
    m0 = _member([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]], reference, classes)
    m1 = _member([[0.4, 0.6], [0.9, 0.1], [0.45, 0.55], [0.6, 0.4]], reference, classes)
    draw = DrawResult("s", 0, reference, np.asarray(classes.ids), [m0, m1])
    assert draw.ensemble_report(1, classes).overall_accuracy == pytest.approx(0.75)
    assert draw.ensemble_report(2, classes).overall_accuracy == pytest.approx(1.0)
    summary = summarize(classes, [draw])
    assert summary["single_oa"] == pytest.approx(62.5)
    assert summary["seed_sd"] == pytest.approx(12.5) and summary["draw_sd"] == 0
    assert [e["oa"] for e in summary["ensembles"]] == pytest.approx([75.0, 100.0])


def test_seed_variance_bench_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                             ) -> None:
    raw = tmp_path / "runs.json"
    threads = torch.get_num_threads()
    try:
        code = main(["--scenes", "urban", "--size", "48", "--draws", "1", "--members", "2",
                     "--n", "5", "--set", "epochs=2", "--set", "min_steps=0", "--set", "dim=8",
                     "--test-cap", "80", "--train-per-class", "12", "--json", str(raw)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    out = capsys.readouterr().out
    assert "| scene | single run OA % (mean) |" in out and "| urban |" in out
    assert "ensemble of 2 OA / AA %" in out and "2x the training time" in out
    assert "python3 bench/seed_variance.py --scenes urban" in out
    doc = json.loads(raw.read_text())
    (run,) = doc["runs"]
    assert run["scene"] == "urban" and len(run["oa"]) == 2
    assert all(0.0 <= oa <= 1.0 for oa in run["oa"])
    assert set(doc["summaries"]["urban"]) >= {"single_oa", "seed_sd", "draw_sd", "ensembles"}
