"""CPU threads, OpenMP waiting and glibc malloc, bfloat16 on CPUs that support it natively,
torch.compile with a persistent on-disk cache.

Why OpenMP waiting matters (measured on this project's shared 2-core machine): torch's OpenMP
runtime (GNU libgomp) lets idle threads spin for a while before sleeping. When other processes
keep the cores busy, a spinning thread occupies the core its sibling needs to finish the same
parallel region, and every one of the few hundred regions per forward pass then waits for a
scheduler time slice: with 2 threads, a forward pass ran 3 to 10x slower than with one (a sample
scene prediction took 651 s against 79 s). With OMP_WAIT_POLICY=PASSIVE, threads sleep as soon as
they wait, and 2 threads cost at most ~1.3x one thread's time on the same loaded machine instead.
libgomp reads the policy once, when torch loads it: :func:`configure_openmp` must run before the
first ``import torch`` of the process. This module therefore imports torch only inside functions.

Default threads (:func:`default_threads`): the CPUs this process may use (its affinity mask,
capped by a cgroup CPU quota) when OpenMP waits passively; 1 when torch was loaded with spinning
waits (the safe choice then).

Why malloc matters (measured here, default network, forward at batch 256, 2 threads): every
forward pass allocates and frees a few hundred intermediate tensors of 1-20 MB. glibc serves
blocks above its mmap threshold with fresh mmap'd pages and returns freed heap tops to the
system, so each pass page-faults its working set in again: over the same ~20 passes of a
profiling script, 600,000-890,000 minor faults and 584-674 px/s against ~100,000 faults and
817-904 px/s with freed memory kept for reuse (in a virtual machine a fault is expensive).
:func:`configure_allocator` raises both thresholds through ``mallopt`` (results unchanged;
resident memory stays at the process's high-water mark instead of shrinking between batches;
predict's high-water mark is what stays flat in scene size). :func:`configure_runtime` does
both settings.

torch.compile (:func:`maybe_compile`): inductor compiles the network into fused C++/Triton kernels
once per process and shape; its artefacts go to a persistent cache (:func:`compile_cache_dir`,
``~/.cache/s2fin/inductor`` by default), so a second process compiles from cache in a fraction of
the time. ``auto`` compiles only where the measured saving exceeds the compile cost.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

WAIT_POLICY_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# S2FIN_MALLOC=system keeps glibc's own malloc thresholds (e.g. for an A/B measurement).
MALLOC_SWITCH_VAR = "S2FIN_MALLOC"
# glibc mallopt parameters (malloc.h) and the values s2fin sets: blocks below 1 GiB come from the
# heap, and freed memory is never trimmed back to the system while the process runs.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_BYTES = 1 << 30
_TRIM_THRESHOLD_BYTES = 2**31 - 1
_state: dict[str, bool] = {"configured": False, "passive": False, "malloc_tuned": False}
# Whether the user's environment already chose a wait policy when s2fin first looked.
_USER_WAIT_POLICY = any(v in os.environ for v in WAIT_POLICY_VARS)


def configure_openmp() -> bool:
    """Make OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE) unless the environment already
    chose a policy. Call before torch is imported; children (e.g. ``train --nproc`` workers)
    inherit it. Returns :func:`openmp_waits_passively`.
    """
    if not _USER_WAIT_POLICY and "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if not _state["configured"]:
        _state["configured"] = True
        # Effective only if torch (and so libgomp) is not loaded yet, or the user's environment
        # set a policy before this process started (then torch saw it too).
        _state["passive"] = "torch" not in sys.modules or _USER_WAIT_POLICY
    return openmp_waits_passively()


def malloc_choice_in_environment(env: dict[str, str] | None = None) -> str | None:
    """Why s2fin leaves malloc alone, or None: S2FIN_MALLOC=system, glibc malloc variables
    (``MALLOC_*``, ``glibc.malloc`` tunables) or a preloaded library (maybe another allocator)
    mean the user's environment chose."""
    env = dict(os.environ) if env is None else env
    if env.get(MALLOC_SWITCH_VAR, "").strip().lower() == "system":
        return f"{MALLOC_SWITCH_VAR}=system"
    chosen = sorted(k for k in env if k.startswith("MALLOC_"))
    if chosen:
        return chosen[0]
    if "glibc.malloc." in env.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    if env.get("LD_PRELOAD", "").strip():
        return "LD_PRELOAD"
    return None


def configure_allocator() -> bool:
    """Keep freed memory in glibc's heap for reuse (see the module docstring) unless the
    environment chose malloc settings. Safe at any time; applies to later allocations.
    Returns :func:`malloc_tuned`. A no-op (False) outside glibc."""
    if _state["malloc_tuned"] or malloc_choice_in_environment() is not None:
        return _state["malloc_tuned"]
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl or another libc without glibc's mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success. The mmap threshold first, so that a failure leaves glibc's
    # defaults: a raised trim threshold alone ran the forward pass slower (352-357 against
    # 584-629 px/s), not faster.
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES) == 1:
        _state["malloc_tuned"] = mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES) == 1
    return _state["malloc_tuned"]


def malloc_tuned() -> bool:
    """True when :func:`configure_allocator` changed glibc's malloc thresholds in this process."""
    return _state["malloc_tuned"]


def configure_runtime() -> None:
    """Everything s2fin sets up in its own process before work starts: OpenMP's wait policy
    (before torch is imported) and glibc malloc's thresholds."""
    configure_openmp()
    configure_allocator()


def openmp_waits_passively() -> bool:
    """True when torch's OpenMP threads sleep instead of spinning while they wait (or when the
    user's environment chose the policy: theirs to judge)."""
    if _USER_WAIT_POLICY:
        return True
    return _state["configured"] and _state["passive"]


def _cgroup_cpu_limit(path: Path = Path("/sys/fs/cgroup/cpu.max")) -> float | None:
    """CPUs allowed by a cgroup v2 quota ("200000 100000" -> 2.0), None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(float(quota) / float(period), 0.0)
    except (ValueError, ZeroDivisionError):
        return None


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (os.sched_getaffinity), capped by a
    cgroup v2 CPU quota (containers), at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, max(1, math.ceil(limit)))
    return max(1, cpus)


def default_threads() -> int:
    """torch intra-op threads when --threads is not given: OMP_NUM_THREADS when the environment
    sets it (a launcher such as ``train --nproc`` or torchrun sharing the cores out), else
    :func:`available_cpus` if OpenMP waits passively, else 1 (spinning waits made 2 threads
    3-10x slower on a busy machine).

    No core is held back for the prediction pipeline's reader and writer threads: they mostly
    wait on I/O, and on the 2-core machine one torch thread was not faster than two in any
    measurement with passive waits.
    """
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return min(int(env), available_cpus())
    return available_cpus() if openmp_waits_passively() else 1


# --- batches side by side on the CPU ----------------------------------------------------------

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")
# The most batches classified at once on the CPU (each holds one batch's activations: memory
# grows with the count, so a many-core server gives the rest of its threads to each batch).
MAX_CPU_BATCH_WORKERS = 8


@dataclass(frozen=True)
class BatchWorkers:
    """How a CPU classifies batches: ``count`` batches at once, each on ``threads_each`` torch
    intra-op threads (``count`` 1: one batch at a time on the command's threads)."""

    count: int
    threads_each: int


def batch_workers(device_type: str, threads: int) -> BatchWorkers:
    """Batches side by side for a command allowed ``threads`` torch threads on ``device_type``.

    Why: S²Fin's default network is made of small operations (8-channel attention heads, 16 x 16
    scan blocks, 32-channel convolutions) that do not split well over threads. Measured on this
    project's idle 2-core machine (eval forward, batch 128): the default network ran 496-535 px/s
    on one thread and 521-546 px/s on two, but 832-910 px/s as two batches at once on one thread
    each (1.6-1.8x); the paper-sized network 221-238 px/s on two threads against 292-325 px/s as
    two single-thread batches (1.35x). So on the CPU every thread gets its own batch, up to
    :data:`MAX_CPU_BATCH_WORKERS` batches; beyond that each batch gets ``threads // count``
    threads (the remainder of the division stays unused: 12 threads run 8 batches on 1 thread
    each; not measured above 2 cores).
    A GPU classifies one batch at a time. Each batch is computed the same way whichever worker
    runs it, so a map does not depend on scheduling.
    """
    threads = max(1, threads)
    if device_type != "cpu" or threads == 1:
        return BatchWorkers(1, threads)
    count = min(threads, MAX_CPU_BATCH_WORKERS)
    return BatchWorkers(count, threads // count)


def map_in_batch_workers(fn: Callable[[_Item], _Result], batches: Sequence[_Item],
                         workers: BatchWorkers) -> Iterator[_Result]:
    """``fn`` over ``batches``, results in order: one at a time in this thread, or
    ``workers.count`` at once in worker threads, each with ``workers.threads_each`` torch
    intra-op threads (torch's thread count is per thread)."""
    import torch

    if workers.count == 1 or len(batches) <= 1:
        yield from map(fn, batches)
        return
    pool = ThreadPoolExecutor(min(workers.count, len(batches)), thread_name_prefix="s2fin-batch",
                              initializer=torch.set_num_threads,
                              initargs=(workers.threads_each,))
    try:
        yield from pool.map(fn, batches)
    finally:
        # On an error or Ctrl-C, batches not started are dropped, not run to the end.
        pool.shutdown(wait=True, cancel_futures=True)


# --- bfloat16 on the CPU ----------------------------------------------------------------------


@dataclass(frozen=True)
class CpuBf16:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16) and what it has."""

    native: bool
    capability: str  # torch's vector ISA level, e.g. "AVX2", "AVX512"
    features: tuple[str, ...]  # the bf16-relevant features found

    def describe(self) -> str:
        have = ", ".join(self.features) or "no AVX512-BF16/AMX-BF16"
        kind = "native" if self.native else "emulated (slow)"
        return f"CPU bfloat16 {kind}: {self.capability}, {have}"


_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "amx_tile"})


def _cpuinfo_flags(path: Path = Path("/proc/cpuinfo")) -> set[str]:
    try:
        text = path.read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_support() -> CpuBf16:
    """Detect native bfloat16 arithmetic: torch's CPU feature table where it has one, else the
    kernel's /proc/cpuinfo flags. Only AVX512-BF16 and AMX-BF16 count as native: elsewhere
    oneDNN emulates bfloat16 with float32 conversions, slower than float32 itself."""
    import torch

    from models.layers import torch_cpu_features

    capability = str(torch.backends.cpu.get_cpu_capability())
    table = torch_cpu_features()
    if table is not None:
        found = {k for k in _BF16_FLAGS if table.get(k)}
    else:
        found = set(_BF16_FLAGS & _cpuinfo_flags())
    native = "avx512_bf16" in found or "amx_bf16" in found
    return CpuBf16(native, capability, tuple(sorted(found)))


def switch_mode(mode: str, what: str) -> str:
    """An auto/on/off switch (``--compile``, ``--bf16``), normalised; ValueError otherwise."""
    text = mode.strip().lower()
    if text not in ("auto", "on", "off"):
        raise ValueError(f"{what} mode must be auto, on or off, got {mode!r}")
    return text


def resolve_cpu_bf16(mode: str) -> bool:
    """``--bf16`` on the CPU: ``on``/``off``, or ``auto`` = on only where the CPU computes
    bfloat16 natively (there the class maps agreed with float32 on >= 99.5 % of pixels, see
    docs/network.md)."""
    text = switch_mode(mode, "bf16")
    if text == "auto":
        return cpu_bf16_support().native
    return text == "on"


# --- torch.compile ----------------------------------------------------------------------------

# Measured on the project's 2-core CPUs (docs/network.md, "torch.compile"; batch 128, one
# thread): compile seconds of the network with a cold and a warm on-disk cache, and the compiled
# forward's speed-up over the eager implementation. On the AVX2 machine, with the kernels of
# then, the default width (dim 32) compiled ran 1.09-1.29x eager; on the AVX512 (Zen 4) machine,
# with today's kernels, 0.94-0.96x in float32 and in bfloat16; the paper-sized network (dim 80)
# never gained. So ``auto`` does not compile on the CPU (``on`` still does): the expected
# speed-up is 1.0, for which :func:`break_even_pixels` is infinite.
CPU_COMPILE_SECONDS_COLD = 150.0
CPU_COMPILE_SECONDS_WARM = 15.0
CPU_COMPILE_SPEEDUP = 1.0
# ``auto`` never compiles a smaller job: even from a warm cache (~15 s) at a 1.2x speed-up, the
# eager CPU rate would have to be below ~200 px/s for fewer pixels to pay.
MIN_COMPILE_PIXELS = 20_000
# Not measured here (no GPU in this project's sessions): a conservative guess.
CUDA_COMPILE_SECONDS = 60.0
CUDA_COMPILE_SPEEDUP = 1.3


def expected_compile_speedup(device_type: str) -> float:
    """The compiled forward's expected speed-up over eager on ``device_type``."""
    return CUDA_COMPILE_SPEEDUP if device_type == "cuda" else CPU_COMPILE_SPEEDUP


def auto_compile_excluded(pixels: int | None, device_type: str) -> str | None:
    """Why ``--compile auto`` will not compile whatever the eager speed (no speed-up on the
    device, or fewer than :data:`MIN_COMPILE_PIXELS`), or None where the break-even decides: then
    the caller needs an eager rate (a probe)."""
    if expected_compile_speedup(device_type) <= 1.0:
        return f"auto: compiled code was not faster than eager on {device_type} (measured)"
    if pixels is not None and pixels < MIN_COMPILE_PIXELS:
        return (f"auto: {pixels:,} px is below the {MIN_COMPILE_PIXELS:,} px where compiling "
                "could pay")
    return None


def compile_cache_dir() -> Path:
    """Where inductor keeps compiled artefacts across processes: $S2FIN_CACHE_DIR/inductor, else
    $XDG_CACHE_HOME/s2fin/inductor, else ~/.cache/s2fin/inductor. An existing
    TORCHINDUCTOR_CACHE_DIR is respected by :func:`use_compile_cache`."""
    base = os.environ.get("S2FIN_CACHE_DIR")
    if base:
        return Path(base) / "inductor"
    xdg = os.environ.get("XDG_CACHE_HOME")
    root = Path(xdg) if xdg else Path.home() / ".cache"
    return root / "s2fin" / "inductor"


def use_compile_cache(path: Path | None = None) -> Path:
    """Point inductor's on-disk caches (FX graph, AOTAutograd, kernels) at ``path`` (default
    :func:`compile_cache_dir`) unless TORCHINDUCTOR_CACHE_DIR is already set; returns the
    directory in use."""
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current and path is None:
        return Path(current)
    target = path if path is not None else compile_cache_dir()
    target.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(target)
    return target


def compile_warm(path: Path | None = None) -> bool:
    """Whether the compile cache holds compiled artefacts (a previous process compiled)."""
    directory = path if path is not None else Path(
        os.environ.get("TORCHINDUCTOR_CACHE_DIR") or compile_cache_dir()
    )
    return (directory / "fxgraph").is_dir() and any((directory / "fxgraph").iterdir())


def break_even_pixels(eager_pixels_per_second: float, speedup: float,
                      device_type: str = "cpu", warm: bool = False) -> float:
    """Scene size (pixels) above which compiling saves time: the compile cost divided by the
    time saved per pixel ((1 - 1/speedup) / eager rate). Infinite without a speed-up."""
    if speedup <= 1.0:
        return math.inf
    if device_type == "cuda":
        seconds = CUDA_COMPILE_SECONDS
    else:
        seconds = CPU_COMPILE_SECONDS_WARM if warm else CPU_COMPILE_SECONDS_COLD
    saved_per_pixel = (1.0 - 1.0 / speedup) / eager_pixels_per_second
    return seconds / saved_per_pixel


@dataclass
class CompileDecision:
    model: Any  # the module to call: compiled or the original
    compiled: bool
    reason: str


def _static_batch_module(model: torch.nn.Module, compiled: Any, batch_size: int,
                         pad: bool) -> torch.nn.Module:
    import torch

    class StaticBatch(torch.nn.Module):
        """Calls the compiled graph with exactly ``batch_size`` samples, so it compiles once.

        Smaller batches are zero-padded (``pad``; exact for S²Fin in eval mode: every sample is
        normalised on its own, so neighbours never change a sample's output) or run by the
        uncompiled module (same parameters; for training, where padding would change the loss);
        larger ones are split."""

        def __init__(self) -> None:
            super().__init__()
            self.eager = model  # registered: .parameters(), .train()/.eval() reach the model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            n = inputs[0].shape[0]
            if n == batch_size:
                out: torch.Tensor = compiled(*inputs)
                return out
            if n > batch_size:
                parts = [self(*(t[i:i + batch_size] for t in inputs))
                         for i in range(0, n, batch_size)]
                return torch.cat(parts)
            if not pad:
                eager_out: torch.Tensor = self.eager(*inputs)
                return eager_out
            padded = [torch.cat([t, t.new_zeros((batch_size - n, *t.shape[1:]))])
                      for t in inputs]
            padded_out: torch.Tensor = compiled(*padded)
            return padded_out[:n]

    return StaticBatch()


def maybe_compile(model: torch.nn.Module, device: torch.device, mode: str = "auto", *,
                  pixels: int | None = None, eager_pixels_per_second: float | None = None,
                  batch_size: int | None = None, pad: bool = True) -> CompileDecision:
    """torch.compile ``model`` (inductor, static shapes) according to ``mode``.

    Args:
        mode: ``on``, ``off``, or ``auto``: compile only when ``pixels`` (the work ahead, e.g. the
            scene's pixel count) exceeds :func:`break_even_pixels` for the given eager rate.
            Without a rate or pixel count, ``auto`` does not compile.
        pixels, eager_pixels_per_second: the work ahead and the eager speed (pixels/s), for
            ``auto``.
        batch_size: the batch size the caller uses; with it, the returned module feeds the
            compiled graph only that size (see ``StaticBatch``) so that partial batches (the last
            one of every block) do not trigger recompilations. ``pad``: zero-pad partial batches
            (inference) instead of running them uncompiled (training).

    Compilation itself happens on the first call (inductor, minutes on a small CPU with a cold
    cache). The on-disk cache is set up first (:func:`use_compile_cache`).
    """
    import torch

    text = switch_mode(mode, "compile")
    if text == "off":
        return CompileDecision(model, False, "compile off")
    if text == "auto":
        excluded = auto_compile_excluded(pixels, device.type)
        if excluded is not None:
            return CompileDecision(model, False, excluded)
        speedup = expected_compile_speedup(device.type)
        if pixels is None or eager_pixels_per_second is None or eager_pixels_per_second <= 0:
            return CompileDecision(model, False, "auto: no estimate of the work ahead")
        warm = compile_warm()
        need = break_even_pixels(eager_pixels_per_second, speedup, device.type, warm)
        if pixels < need:
            return CompileDecision(model, False, f"auto: {pixels:,} px is below the break-even "
                                                 f"{need:,.0f} px ({'warm' if warm else 'cold'} "
                                                 "compile cache)")
        reason = f"auto: {pixels:,} px is above the break-even {need:,.0f} px"
    else:
        reason = "compile on"
    use_compile_cache()
    compiled = torch.compile(model, dynamic=False)
    if batch_size is not None:
        return CompileDecision(_static_batch_module(model, compiled, batch_size, pad), True,
                               reason)
    return CompileDecision(compiled, True, reason)
