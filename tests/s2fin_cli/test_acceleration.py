"""OpenMP waiting, malloc thresholds, default threads, CPU bfloat16 detection and the
torch.compile switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from s2fin_cli import acceleration
from s2fin_cli.acceleration import (
    MAX_CPU_BATCH_WORKERS,
    BatchWorkers,
    CpuBf16,
    available_cpus,
    batch_workers,
    break_even_pixels,
    compile_cache_dir,
    cpu_bf16_support,
    maybe_compile,
    resolve_cpu_bf16,
    use_compile_cache,
)
from s2fin_cli.device import autocast, autocast_dtype, precision_name

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json, os, sys
{before}
from s2fin_cli import acceleration as a
a.configure_openmp()
import torch
print(json.dumps({{"policy": os.environ.get("OMP_WAIT_POLICY"),
                  "passive": a.openmp_waits_passively(), "threads": a.default_threads(),
                  "cpus": a.available_cpus()}}))
"""


def _run_probe(code: str, drop: Callable[[str], bool], env: dict[str, str]) -> dict[str, object]:
    """Run ``code`` in a fresh interpreter without the environment variables ``drop`` selects
    and with ``env`` added; its last line of output is JSON."""
    clean = {k: v for k, v in os.environ.items() if not drop(k)}
    clean.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True,
                         check=True, timeout=120)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _probe(before: str = "", **env: str) -> dict[str, object]:
    skip = {*acceleration.WAIT_POLICY_VARS, "OMP_NUM_THREADS"}
    return _run_probe(PROBE.format(before=before), lambda k: k in skip, env)


def test_openmp_waits_passively_when_configured_before_torch() -> None:
    result = _probe()
    assert result["policy"] == "PASSIVE" and result["passive"] is True
    assert result["threads"] == result["cpus"]


def test_torch_loaded_first_keeps_one_thread_by_default() -> None:
    result = _probe(before="import torch")
    assert result["passive"] is False and result["threads"] == 1


def test_a_users_wait_policy_is_respected() -> None:
    result = _probe(OMP_WAIT_POLICY="ACTIVE")
    assert result["policy"] == "ACTIVE"
    assert result["threads"] == result["cpus"]


MALLOC_PROBE = """
import json, resource
from s2fin_cli import acceleration as a
a.configure_runtime()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = b"\\x01" * (48 << 20)  # 48 MB written: every page touched
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"tuned": a.malloc_tuned(), "faults": sum(faults[2:])}))
"""


def _malloc_probe(**env: str) -> dict[str, object]:
    chooses = ("GLIBC_TUNABLES", "LD_PRELOAD", acceleration.MALLOC_SWITCH_VAR)
    return _run_probe(MALLOC_PROBE, lambda k: k.startswith("MALLOC_") or k in chooses, env)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_freed_memory_is_reused_instead_of_faulted_in_again() -> None:
    tuned = _malloc_probe()
    system = _malloc_probe(S2FIN_MALLOC="system")
    assert tuned["tuned"] is True and system["tuned"] is False
    assert isinstance(system["faults"], int) and isinstance(tuned["faults"], int)
    # glibc's defaults map and unmap a 48 MB block each time: ~12,000 4 KiB page faults per
    # block; kept in the heap, the block is reused without faulting.
    if system["faults"] < 10 * 1_000:
        pytest.skip("fresh mappings fault in huge pages here (transparent huge pages 'always'): "
                    f"{system['faults']} faults for 10 blocks, too few to compare")
    assert system["faults"] > 10 * 10_000
    assert tuned["faults"] < system["faults"] / 20


def test_a_users_malloc_choice_is_respected() -> None:
    choice = acceleration.malloc_choice_in_environment
    assert choice({}) is None
    assert choice({"S2FIN_MALLOC": "system"}) == "S2FIN_MALLOC=system"
    assert choice({"S2FIN_MALLOC": "s2fin"}) is None
    assert choice({"MALLOC_ARENA_MAX": "2"}) == "MALLOC_ARENA_MAX"
    assert choice({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) == "GLIBC_TUNABLES"
    assert choice({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}) is None
    assert choice({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "LD_PRELOAD"
    assert _malloc_probe(MALLOC_ARENA_MAX="4")["tuned"] is False


def test_available_cpus_follows_affinity_and_cgroup_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5}, raising=False)
    monkeypatch.setattr(acceleration, "_cgroup_cpu_limit", lambda: None)
    assert available_cpus() == 6
    monkeypatch.setattr(acceleration, "_cgroup_cpu_limit", lambda: 2.5)
    assert available_cpus() == 3
    monkeypatch.setattr(acceleration, "_cgroup_cpu_limit", lambda: 0.2)
    assert available_cpus() == 1


def test_omp_num_threads_from_a_launcher_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(acceleration, "available_cpus", lambda: 8)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert acceleration.default_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "64")
    assert acceleration.default_threads() == 8
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert acceleration.default_threads() in (1, 8)


def test_cgroup_quota_parsing(tmp_path: Path) -> None:
    path = tmp_path / "cpu.max"
    path.write_text("250000 100000\n")
    assert acceleration._cgroup_cpu_limit(path) == 2.5
    path.write_text("max 100000\n")
    assert acceleration._cgroup_cpu_limit(path) is None
    assert acceleration._cgroup_cpu_limit(tmp_path / "absent") is None


def test_cpu_bf16_detection_reports_what_the_cpu_has(tmp_path: Path) -> None:
    info = cpu_bf16_support()
    assert isinstance(info, CpuBf16) and info.capability
    assert info.native == ("avx512_bf16" in info.features or "amx_bf16" in info.features)
    assert ("native" in info.describe()) == info.native
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16 amx_tile\n")
    assert acceleration._cpuinfo_flags(cpuinfo) >= {"avx512_bf16", "amx_tile"}
    assert resolve_cpu_bf16("auto") == info.native
    assert resolve_cpu_bf16("on") and not resolve_cpu_bf16("OFF")
    with pytest.raises(ValueError, match="bf16"):
        resolve_cpu_bf16("maybe")


def test_cpu_bf16_autocast_runs_matmuls_in_bf16_and_ffts_in_float32() -> None:
    from models import AFCM

    cpu = torch.device("cpu")
    x = torch.randn(2, 4, 11, 11)
    with autocast(cpu, cpu_bf16=True):
        assert (x.flatten(1) @ torch.randn(484, 3)).dtype == torch.bfloat16
        low, _ = AFCM(4, 0.35, 0.05).split(x)
    assert low.dtype == torch.float32  # the split runs with autocast off
    with autocast(cpu, cpu_bf16=False):
        assert (x.flatten(1) @ torch.randn(484, 3)).dtype == torch.float32
    assert autocast_dtype(cpu, cpu_bf16=True) == torch.bfloat16
    assert autocast_dtype(cpu, enabled=False, cpu_bf16=True) == torch.float32
    assert autocast_dtype(cpu) == torch.float32
    assert [precision_name(t) for t in (torch.float32, torch.bfloat16, torch.float16)] == [
        "float32", "bfloat16", "float16"]


def test_compile_cache_location(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("S2FIN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache_dir() == tmp_path / "xdg" / "s2fin" / "inductor"
    monkeypatch.setenv("S2FIN_CACHE_DIR", str(tmp_path / "own"))
    assert compile_cache_dir() == tmp_path / "own" / "inductor"
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    assert use_compile_cache() == tmp_path / "own" / "inductor"
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "own" / "inductor")
    assert (tmp_path / "own" / "inductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    assert use_compile_cache() == tmp_path / "theirs"  # an explicit setting wins


def test_break_even_and_auto_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    rate, speedup = 500.0, 1.2
    need = break_even_pixels(rate, speedup, "cpu", warm=False)
    saved = need / rate * (1 - 1 / speedup)
    assert saved == pytest.approx(acceleration.CPU_COMPILE_SECONDS_COLD)
    assert break_even_pixels(rate, speedup, "cpu", warm=True) < need
    assert break_even_pixels(rate, 1.0) == float("inf")
    from models import S2Fin, S2FinConfig

    # On the CPU compiled code measured no faster than eager: auto never compiles there.
    assert acceleration.expected_compile_speedup("cpu") == 1.0
    assert acceleration.expected_compile_speedup("cuda") > 1.0
    network = S2Fin(S2FinConfig(dim=32))
    huge = maybe_compile(network, torch.device("cpu"), "auto", pixels=10**9,
                         eager_pixels_per_second=100.0)
    assert not huge.compiled and huge.model is network and "not faster" in huge.reason
    # Where a speed-up is expected, the break-even decides.
    monkeypatch.setattr(acceleration, "CPU_COMPILE_SPEEDUP", speedup)
    model = torch.nn.Linear(3, 2)
    device = torch.device("cpu")
    monkeypatch.setattr(acceleration, "compile_warm", lambda path=None: False)
    assert maybe_compile(model, device, "off").model is model
    small = maybe_compile(model, device, "auto", pixels=int(need / 2), eager_pixels_per_second=rate)
    assert not small.compiled and small.model is model and "below" in small.reason
    assert not maybe_compile(model, device, "auto").compiled  # no estimate: eager
    with pytest.raises(ValueError, match="compile mode"):
        maybe_compile(model, device, "sometimes")


@pytest.mark.slow
def test_compiled_model_matches_eager(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Compiling takes about a minute on a 2-core CPU even for a small module: slow."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("S2FIN_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4))
    decision = maybe_compile(model, torch.device("cpu"), "on")
    assert decision.compiled
    x = torch.randn(8, 16)
    with torch.inference_mode():
        torch.testing.assert_close(decision.model(x), model(x), atol=1e-6, rtol=1e-5)
    assert any((tmp_path / "inductor").iterdir())

    # Compiled in this thread, then run by batch workers side by side (as predict does).
    def in_worker(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = decision.model(batch)
            return out

    batches = [torch.randn(8, 16, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    with ThreadPoolExecutor(2, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        outs = list(pool.map(in_worker, batches))
    with torch.inference_mode():
        for batch, out in zip(batches, outs, strict=True):
            torch.testing.assert_close(out, model(batch), atol=1e-6, rtol=1e-5)


def test_static_batch_feeds_the_compiled_graph_one_batch_size(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Without compiling for real: torch.compile replaced by a recorder of batch sizes."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    seen: list[int] = []

    def fake_compile(model: torch.nn.Module, dynamic: bool) -> object:
        def call(*inputs: torch.Tensor) -> torch.Tensor:
            seen.append(inputs[0].shape[0])
            out: torch.Tensor = model(*inputs)
            return out

        return call

    monkeypatch.setattr(torch, "compile", fake_compile)
    model = torch.nn.Linear(3, 2).eval()
    cpu = torch.device("cpu")
    padded = maybe_compile(model, cpu, "on", batch_size=4).model
    x = torch.randn(10, 3)
    with torch.inference_mode():
        torch.testing.assert_close(padded(x), model(x))
        torch.testing.assert_close(padded(x[:3]), model(x[:3]))
    assert seen == [4, 4, 4, 4]  # 10 = 4 + 4 + 2 padded; then 3 padded
    assert list(padded.parameters()) == list(model.parameters())
    seen.clear()
    fallback = maybe_compile(model, cpu, "on", batch_size=4, pad=False).model
    fallback(x[:3])
    fallback(x[:4])
    assert seen == [4]  # the partial batch ran uncompiled


def test_batch_workers_give_each_cpu_thread_its_own_batch() -> None:
    assert batch_workers("cpu", 1) == BatchWorkers(1, 1)
    assert batch_workers("cpu", 2) == BatchWorkers(2, 1)
    assert batch_workers("cpu", MAX_CPU_BATCH_WORKERS) == BatchWorkers(MAX_CPU_BATCH_WORKERS, 1)
    # A many-core server: at most MAX_CPU_BATCH_WORKERS batches, the other threads shared out.
    assert batch_workers("cpu", 4 * MAX_CPU_BATCH_WORKERS + 3) == BatchWorkers(
        MAX_CPU_BATCH_WORKERS, 4)
    assert batch_workers("cuda", 16) == BatchWorkers(1, 16)  # a GPU runs one batch at a time
    assert batch_workers("cpu", 0) == BatchWorkers(1, 1)
