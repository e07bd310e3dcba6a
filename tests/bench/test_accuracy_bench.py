"""Smoke test of bench/accuracy: one tiny generated scene, one seed, N = 5, a few methods.

The S²Fin run is ``s2fin train``'s own function with two epochs (``--set``): a test of the
script, not a measurement."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.accuracy.run import main


def test_accuracy_bench_writes_markdown_table(tmp_path: Path) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "runs.json"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        code = main(["--scenes", "urban", "--size", "48", "--seeds", "1", "--n", "5",
                     "--methods", "rf,rf-ctx,s2fin", "--set", "epochs=2", "--set",
                     "min_steps=0", "--set", "dim=8", "--test-cap", "80",
                     "--train-per-class", "12", "--out", str(out), "--json", str(raw)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert time.perf_counter() - t0 < 60
    text = out.read_text()
    assert "## Headline: N = 5 labelled pixels per class" in text
    assert ("| scene | RF (pixel) | RF (pixel + neighbourhood + height) | S²Fin | S²Fin ahead? |"
            in text)
    assert "## Verdict: is S²Fin ahead of every baseline?" in text
    assert "**Changed recipe**" in text and "`epochs=2`" in text
    assert "| method | N=5 OA % | N=5 AA % | N=5 κ |" in text
    assert "| RF (pixel) |" in text and "| **S²Fin** |" in text
    assert "At N = 5, S²Fin is" in text  # the generated verdict sentence
    assert "python3 -m bench.accuracy --scenes urban" in text
    runs = json.loads(raw.read_text())[0]["runs"]
    assert {r["method"] for r in runs} == {"rf", "rf-ctx", "s2fin"}
    s2fin = next(r for r in runs if r["method"] == "s2fin")
    assert s2fin["epochs"] == 2 and s2fin["n_val"] == 0  # s2fin train's own run, no split
    assert all(r["n_train"] == 5 * len(json.loads(raw.read_text())[0]["classes"]) for r in runs)
    assert all(0.0 <= r["oa"] <= 1.0 for r in runs)
    # The class table says how many test pixels of each class were scored at each N.
    assert "| test cap | scored at N = 5 |" in text
    supports = [sum(c["support"] for c in r["report"]["classes"]) for r in runs]
    assert supports == [s2fin["n_test"]] * len(runs)
    row = next(line for line in text.splitlines()
               if line.startswith(f"| {json.loads(raw.read_text())[0]['classes'][0]['id']} |"))
    first = next(c for c in s2fin["report"]["classes"])
    assert row.rstrip(" |").rsplit("| ", 1)[-1] == str(first["support"])

    # A recipe trial is appended as its own section, and replaced (not duplicated) on a rerun.
    trial = ["--scenes", "urban", "--size", "48", "--seeds", "1", "--n", "5", "--methods",
             "rf", "--train-per-class", "12", "--out", str(out), "--trial", "t1"]
    assert main(trial) == 0 and main(trial) == 0
    appended = out.read_text()
    assert appended.startswith(text.rstrip("\n"))
    assert appended.count("## Recipe trial: t1") == 1


def test_accuracy_bench_runs_an_imported_dataset(tmp_path: Path) -> None:
    """--dataset DIR: the folder `s2fin datasets import` writes (here the Yellow River Estuary
    stand-in, HSI + SAR with a train/test split) runs the same protocol."""
    import importlib.util
    import sys

    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location(
        "make_benchmark_standins", repo / "tests" / "data_scripts" / "make_benchmark_standins.py")
    assert spec is not None and spec.loader is not None
    standins = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_benchmark_standins", standins)
    spec.loader.exec_module(standins)
    from s2fin_cli.datasets import import_dataset

    src = standins.write_standin(tmp_path / "src", "yellow-river", "asyffnet", (40, 40))
    folder = tmp_path / "yre"
    import_dataset("yellow-river", src, folder,
                   creation_options={"BLOCKXSIZE": "32", "BLOCKYSIZE": "32"})
    out, raw = tmp_path / "b.md", tmp_path / "b.json"
    threads = torch.get_num_threads()
    try:
        assert main(["--dataset", str(folder), "--seeds", "1", "--n", "5", "--methods",
                     "rf,svm-ctx", "--out", str(out), "--json", str(raw)]) == 0
    finally:
        torch.set_num_threads(threads)
    doc = json.loads(raw.read_text())[0]
    assert doc["scene"] == "yellow-river" and len(doc["classes"]) == 5
    assert {r["method"] for r in doc["runs"]} == {"rf", "svm-ctx"}
    assert "## yellow-river (imported)" in out.read_text()


def test_analyst_features_hold_neighbourhood_and_height() -> None:
    from bench.accuracy.methods import CONTEXT_PCA, context_features, pixel_features
    from s2fin_cli.training_data import PatchSet

    g = torch.Generator().manual_seed(0)
    patches = PatchSet(torch.randn(4, 20, 5, 5, generator=g), torch.randn(4, 30, 9, 9, generator=g),
                       torch.randn(4, 2, 9, 9, generator=g), torch.zeros(4, dtype=torch.long))
    height = np.arange(8, dtype=np.float64).reshape(4, 2)
    x = context_features(patches, height)
    # pixel (20 + 2) + 3 stats x (10 PCA + 2 active) + 2 height features
    assert x.shape == (4, 22 + 3 * (CONTEXT_PCA + 2) + 2)
    np.testing.assert_array_equal(x[:, :22], pixel_features(patches))
    np.testing.assert_array_equal(x[:, -2:], height)
    mean3 = patches.spatial[:, :CONTEXT_PCA, 3:6, 3:6].mean((-1, -2)).double().numpy()
    np.testing.assert_allclose(x[:, 22:22 + CONTEXT_PCA], mean3, atol=1e-6)
    assert context_features(patches, None).shape[1] == x.shape[1] - 2


def test_recipe_changes_are_typed_like_the_defaults() -> None:
    from bench.accuracy.s2fin_runs import parse_changes

    changes = parse_changes(["epochs=2", "lr=0.0005", "augment=false", "ablate=afcm,hfrm",
                             "min_steps=0"])
    assert changes == {"epochs": 2, "lr": 0.0005, "augment": False, "ablate": ("afcm", "hfrm"),
                       "min_steps": 0}
    # min_steps defaults to None (the per-class floor): a number, or none for the rule.
    assert parse_changes(["min_steps=72"]) == {"min_steps": 72}
    assert parse_changes(["min_steps=none"]) == {"min_steps": None}
