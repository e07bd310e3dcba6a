"""Smoke test of bench/profile_modules.py: per-module forward times of the default network."""

from __future__ import annotations

import torch

from bench.profile_modules import main


def test_profile_times_every_top_level_module_in_both_precisions() -> None:
    threads = torch.get_num_threads()
    try:
        results = main(["--batch-size", "4", "--repeats", "1", "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    assert set(results) == {"float32", "bfloat16"}
    for row in results.values():
        modules = {name: sec for name, sec in row.items() if name != "total"}
        assert {"hfset", "ssaf", "afcm", "hfrm", "long_range", "head"} <= set(modules)
        assert all(sec > 0 for sec in modules.values())
        # The hooks nest in no other module's: their sum cannot exceed the whole forward.
        assert sum(modules.values()) <= row["total"] * 1.01
