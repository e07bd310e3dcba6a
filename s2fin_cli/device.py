"""Device selection, mixed precision and CPU threads: CUDA when present, the CPU otherwise.

Importing this module before torch makes torch's OpenMP threads wait passively
and keeps freed memory for reuse (:func:`s2fin_cli.acceleration.configure_runtime`); the CLI
also does so first thing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from s2fin_cli.acceleration import configure_runtime, default_threads

configure_runtime()  # before torch loads its OpenMP runtime, when this is the first import of it

import torch  # noqa: E402

from s2fin_cli import console  # noqa: E402
from s2fin_cli.errors import ConfigError  # noqa: E402


def select_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA device 0 when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    text = spec.strip().lower()
    if text == "auto":
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
        console.info(f"device: {device}")
        return device
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {spec}: CUDA is not available on this machine",
                              hint="use --device cpu or auto")
        index = int(text.partition(":")[2] or 0) if text[5:].isdigit() or text == "cuda" else -1
        if not 0 <= index < torch.cuda.device_count():
            raise ConfigError(f"--device {spec}: there are {torch.cuda.device_count()} CUDA "
                              "device(s)")
        return torch.device(f"cuda:{index}")
    raise ConfigError(f"--device {spec} is not one of auto, cpu, cuda, cuda:N")


def autocast_dtype(device: torch.device, enabled: bool = True,
                   cpu_bf16: bool = False) -> torch.dtype:
    """The precision the network computes in on ``device``: on CUDA bf16 where supported, else
    fp16 (``enabled``: mixed precision wanted); on the CPU bfloat16 only with ``cpu_bf16`` (see
    :func:`s2fin_cli.acceleration.resolve_cpu_bf16`); float32 otherwise."""
    if not enabled or device.type not in ("cpu", "cuda"):
        return torch.float32
    if device.type == "cpu":
        return torch.bfloat16 if cpu_bf16 else torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(dtype: torch.dtype) -> str:
    """How reports name a precision: float32, bfloat16, float16."""
    return str(dtype).removeprefix("torch.")


def autocast(device: torch.device, enabled: bool = True,
             cpu_bf16: bool = False) -> contextlib.AbstractContextManager[None]:
    """Autocast to :func:`autocast_dtype` where that is not float32, else nothing.

    The network keeps its FFTs, DFT products and selective scan in float32 under autocast itself
    (models/spectral_ops.py, models/long_range.py).
    """
    dtype = autocast_dtype(device, enabled, cpu_bf16)
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch intra-op threads for the duration of a command, restored after.

    Default (``threads`` None): :func:`s2fin_cli.acceleration.default_threads`, i.e. the CPUs
    this process may use (affinity mask, cgroup quota) when torch's OpenMP threads wait
    passively, 1 otherwise. The old default of 1 came from a prediction of the sample scene that
    took 651 s with torch's default threads against 79 s with one on this project's busy 2-core
    machine: the cause was OpenMP's spinning waits under oversubscription (measured: with
    OMP_WAIT_POLICY=PASSIVE the 2-thread slowdown on a busy machine drops from 3-10x to at most
    ~1.3x, and 2 threads are faster when the cores are free). On a machine shared with other
    CPU-bound jobs, ``--threads 1`` can still be the fastest choice.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)
