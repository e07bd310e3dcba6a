"""Data-parallel training under ``torchrun``: the launch environment, the process group, and the
few collectives :mod:`s2fin_cli.training` needs. See docs/distributed.md.

``s2fin train`` is distributed when torchrun's variables say so (``WORLD_SIZE`` > 1 with
``RANK`` and ``LOCAL_RANK``); without them, or with ``WORLD_SIZE=1``, nothing here runs and no
process group exists. Each rank trains on ``cuda:LOCAL_RANK`` (NCCL) when CUDA is used, on the
CPU (gloo) otherwise. Rank 0 is the only one that talks (messages, progress) and writes files;
the others are quiet (errors still print).

Consistency: every decision that must be the same on all ranks either comes from rank 0
(:meth:`DistContext.from_main`: output checks, the preprocessing fit, the resume checkpoint) or is
computed everywhere from the same seed and then compared (:meth:`DistContext.check_same`: the
sample selection, the final weights).
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
import torch.distributed as tdist

from s2fin_cli import console
from s2fin_cli.errors import ConfigError, S2finError
from s2fin_cli.hashing import derived_seed

T = TypeVar("T")

# Hidden debug switch (tests): a directory where every rank writes rank<N>.json with digests of
# its final and best weights, so a test can check that the ranks ended in sync.
DEBUG_DIGEST_ENV = "S2FIN_DEBUG_RANK_DIGESTS"
# Minutes a collective may wait for a missing rank before failing (torch's default is 10-30).
TIMEOUT_ENV = "S2FIN_DIST_TIMEOUT_MIN"


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun (or srun + torchrun) says about this process."""

    rank: int
    world_size: int
    local_rank: int


def launch_env(environ: Mapping[str, str] | None = None) -> LaunchEnv | None:
    """The torchrun environment, or None for a single process (no ``WORLD_SIZE``, or 1)."""
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE") in (None, "", "1"):
        return None
    try:
        world = int(env["WORLD_SIZE"])
        rank = int(env.get("RANK", ""))
        local = int(env.get("LOCAL_RANK", ""))
    except ValueError:
        raise ConfigError("WORLD_SIZE is set but RANK/LOCAL_RANK are missing or not integers",
                          hint="launch with torchrun (python -m torch.distributed.run)") from None
    if not 0 <= rank < world or local < 0:
        raise ConfigError(f"inconsistent torchrun environment: RANK={rank}, "
                          f"WORLD_SIZE={world}, LOCAL_RANK={local}")
    return LaunchEnv(rank, world, local)


def rank_device(spec: str, local_rank: int) -> torch.device:
    """The device of one rank: ``cuda:LOCAL_RANK`` for auto/cuda when CUDA is there, else CPU."""
    text = spec.strip().lower()
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if text not in ("auto", "cuda"):
        raise ConfigError(f"--device {spec}: under torchrun each rank uses cuda:LOCAL_RANK",
                          hint="pass --device cuda, auto or cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: CUDA is not available on this machine",
                          hint="use --device cpu (gloo) or auto")
    if local_rank >= torch.cuda.device_count():
        raise ConfigError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} CUDA "
                          "device(s) on this node", hint="lower --nproc-per-node")
    return torch.device(f"cuda:{local_rank}")


@dataclass(frozen=True)
class DistContext:
    """This rank's place in an initialised process group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "backend": self.backend}

    # -- collectives (every rank must call them, in the same order) ---------------------------

    def _comm_device(self) -> torch.device:
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def barrier(self) -> None:
        if self.backend == "nccl":
            tdist.barrier(device_ids=[self.local_rank])
        else:
            tdist.barrier()

    def all_reduce_sum(self, values: np.ndarray | list[float]) -> np.ndarray:
        """Element-wise sum over ranks, in float64."""
        t = torch.as_tensor(np.asarray(values, np.float64), device=self._comm_device())
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.cpu().numpy()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        return bool(self.all_reduce_sum([1.0 if flag else 0.0])[0] > 0)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects; tensors travel on the CPU)."""
        box: list[Any] = [obj if self.is_main else None]
        tdist.broadcast_object_list(box, src=0, device=self._comm_device())
        return box[0]

    def from_main(self, compute: Callable[[], T]) -> T:
        """Run ``compute`` on rank 0 only; its result, or its user error, reaches every rank."""
        result: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                result = ("ok", compute())
            except S2finError as exc:
                result = ("error", exc)
        status, value = self.broadcast(result)
        if status == "error":
            raise value
        return value

    def check_same(self, value: str, what: str) -> None:
        """Raise on every rank unless ``value`` (a digest) is the same on all ranks."""
        values: list[Any] = [None] * self.world_size
        tdist.all_gather_object(values, value)
        if len(set(values)) != 1:
            raise RuntimeError(f"the ranks disagree on {what}: "
                               + ", ".join(f"rank {i}: {v[:12]}" for i, v in enumerate(values)))

    def shard(self, n: int) -> slice:
        """This rank's contiguous share of ``n`` items (sizes differ by at most one)."""
        bounds = np.linspace(0, n, self.world_size + 1).round().astype(int)
        return slice(int(bounds[self.rank]), int(bounds[self.rank + 1]))

    def seed_for_rank(self, seed: int) -> int:
        """The torch seed (dropout) of this rank for an epoch's ``seed``: ranks draw different
        masks."""
        return rank_seed(seed, self.rank)


@dataclass(frozen=True)
class LocalContext:
    """A single process: the same interface as :class:`DistContext`, with nothing to
    synchronise, so code that runs either way reads without ``if distributed`` branches."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return True

    def describe(self) -> dict[str, Any]:
        return {}

    def barrier(self) -> None:
        pass

    def all_reduce_sum(self, values: np.ndarray | list[float]) -> np.ndarray:
        return np.asarray(values, np.float64)

    def any(self, flag: bool) -> bool:
        return flag

    def from_main(self, compute: Callable[[], T]) -> T:
        return compute()

    def check_same(self, value: str, what: str) -> None:
        pass

    def shard(self, n: int) -> slice:
        return slice(0, n)

    def seed_for_rank(self, seed: int) -> int:
        return seed


class RunContext(Protocol):
    """Where a run takes place: :class:`LocalContext` or one rank's :class:`DistContext`."""

    @property
    def rank(self) -> int: ...
    @property
    def world_size(self) -> int: ...
    @property
    def is_main(self) -> bool: ...
    def describe(self) -> dict[str, Any]: ...
    def barrier(self) -> None: ...
    def all_reduce_sum(self, values: np.ndarray | list[float]) -> np.ndarray: ...
    def any(self, flag: bool) -> bool: ...
    def from_main(self, compute: Callable[[], T]) -> T: ...
    def check_same(self, value: str, what: str) -> None: ...
    def shard(self, n: int) -> slice: ...
    def seed_for_rank(self, seed: int) -> int: ...


LOCAL = LocalContext()


def rank_seed(seed: int, rank: int) -> int:
    """The torch seed (dropout) of one rank in one epoch, so ranks draw different masks."""
    return derived_seed("s2fin-rank", seed, rank)


@contextmanager
def process_group(env: LaunchEnv, device_spec: str) -> Iterator[DistContext]:
    """Initialise the process group for ``env`` (env:// rendezvous set up by torchrun), quiet the
    ranks other than 0, and tear it all down on exit."""
    device = rank_device(device_spec, env.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        minutes = float(os.environ.get(TIMEOUT_ENV, "30"))
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV} must be a number of minutes") from None
    tdist.init_process_group(backend, rank=env.rank, world_size=env.world_size,
                             timeout=_dt.timedelta(minutes=minutes))
    ctx = DistContext(env.rank, env.world_size, env.local_rank, device, backend)
    verbosity = console.verbosity()
    if not ctx.is_main:
        console.set_verbosity(-1)
    try:
        yield ctx
    finally:
        console.set_verbosity(verbosity)
        if tdist.is_initialized():
            tdist.destroy_process_group()


__all__ = [
    "DEBUG_DIGEST_ENV",
    "LOCAL",
    "DistContext",
    "LaunchEnv",
    "LocalContext",
    "RunContext",
    "launch_env",
    "process_group",
    "rank_device",
    "rank_seed",
]
