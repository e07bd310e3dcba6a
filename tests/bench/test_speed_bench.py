"""Smoke test of bench/bench_speed.py: the default network on a tiny scene, through the CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from bench.bench_speed import main
from s2fin_cli.acceleration import malloc_choice_in_environment


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
    assert 0 < row["train_consistency_steps_s"] < 1.1 * row["train_steps_s"]
    assert row["forward_one_batch_px_s"] > 0 and row["batch_workers"] == "1 x 1 thread(s)"
    assert 5 < row["mflop_per_px"] < 50  # ~20.0 for 64 bands
    assert 0 < row["predict_util"] < 1 and result["peak_flops"] > 0
    assert json.loads((tmp_path / "speed.json").read_text())["networks"][0]["network"] == "default"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    malloc_choice_in_environment() is not None,
                    reason="glibc malloc, with no malloc choice in the environment")
def test_compare_malloc_measures_glibc_defaults_in_a_child_with_its_own_work_dir(
    tmp_path: Path,
) -> None:
    threads = torch.get_num_threads()
    try:
        result = main(["--size", "48", "--networks", "default", "--repeats", "1", "--threads",
                       "1", "--skip-train", "--compare-malloc", "--work-dir",
                       str(tmp_path / "work"), "--json", str(tmp_path / "speed.json")])
    finally:
        torch.set_num_threads(threads)
    baseline = result["system_malloc"]
    assert baseline["environment"]["malloc_tuned"] is False
    assert result["environment"]["malloc_tuned"] is True
    assert baseline["networks"][0]["predict_pixels"] == result["networks"][0]["predict_pixels"]
    assert "system_malloc" in json.loads((tmp_path / "speed.json").read_text())


def test_reference_flops_count_the_attention_products_at_their_mathematical_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import measure
    from models import S2Fin, S2FinConfig, ssaf

    kernel = ssaf.attention

    config = S2FinConfig(bands=12, reduced_bands=6, active_bands=1, num_classes=3, dim=16,
                         heads=2, hfset_depth=1, spatial_depth=1, long_range_depth=1,
                         patch_size=7, spectral_window=3)
    model = S2Fin(config).eval()
    p, s = config.patch_size, config.spectral_window
    inputs = (torch.randn(2, 12, s, s), torch.randn(2, 6, p, p), torch.randn(2, 1, p, p))
    counted = measure.reference_flops_per_sample(model, inputs)
    # the same with the attention free of work: the difference is SSAF's two cross-attentions,
    # each q kᵀ and p v over p² tokens of `dim` channels (2 FLOPs per multiply-add)
    monkeypatch.setattr(measure, "_reference_attention", lambda q, k, v: v)
    without = measure.reference_flops_per_sample(model, inputs)
    assert counted - without == 2 * 2 * (2 * p * p * p * p * config.dim)
    assert ssaf.attention is kernel  # counting puts the model's own kernel back
