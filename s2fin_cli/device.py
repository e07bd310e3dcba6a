"""Device selection and mixed precision: CUDA when present, the CPU otherwise."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from s2fin_cli import console
from s2fin_cli.errors import ConfigError


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


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[None]:
    """Mixed precision on CUDA (bf16 where supported, else fp16); full float32 on the CPU.

    The network keeps its FFTs in float32 under autocast itself (models/spectral_ops.py).
    """
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


@contextlib.contextmanager
def cpu_threads(threads: int | None) -> Iterator[None]:
    """torch intra-op threads for the duration of a command (default 1), restored after.

    One thread by default: S²Fin's ops on patch batches are small, and on a busy machine a
    descheduled sibling thread stalls every op. On this project's 2-core CI machine an epoch of
    the sample scene ran 6-50x slower with 2 threads than with 1, and a prediction of the sample
    scene took 651 s with torch's default against 79 s with one thread (s2fin predict
    sample_scenes/scene.tif, measured while other jobs ran). On a dedicated multi-core server,
    raise it with --threads.
    """
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {threads}")
    before = torch.get_num_threads()
    torch.set_num_threads(threads or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
