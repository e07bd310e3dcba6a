"""Smoke test of bench/bench_speed.py: the default network on a tiny scene, through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.bench_speed import main


@pytest.mark.slow
def test_speed_bench_reports_predict_forward_and_training(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    try:
        result = main(["--size", "48", "--networks", "default", "--repeats", "1", "--threads",
                       "1", "--json", str(tmp_path / "speed.json"), "--work-dir",
                       str(tmp_path / "work")])
    finally:
        torch.set_num_threads(threads)
    row = result["networks"][0]
    assert row["network"] == "default" and row["predict_pixels"] == 48 * 48
    assert row["predict_px_s"] > 0 and row["forward_px_s"] > 0 and row["train_steps_s"] > 0
    assert 5 < row["mflop_per_px"] < 50  # ~16.8 for 64 bands
    assert 0 < row["predict_util"] < 1 and result["peak_flops"] > 0
    assert json.loads((tmp_path / "speed.json").read_text())["networks"][0]["network"] == "default"
