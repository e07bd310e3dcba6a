"""Checksums and derived seeds: the one home of every SHA-256 s2fin computes.

- :func:`file_sha256`: a file's checksum, streamed (provenance of a model's inputs, the
  ``S2FIN_MODEL_SHA256`` tag of a map, the checks of ``s2fin datasets import``).
- :func:`derived_seed`: a 63-bit seed derived from a namespace and some values, so that a
  per-epoch or per-rank random stream is a fixed function of the run's seed (a resumed or
  distributed run replays it exactly).
- :func:`tensors_digest` / :func:`state_digest`: the exact values of named tensors (the model
  file's checksum, the cross-rank check of distributed training).
- :func:`arrays_digest`: the exact values of integer arrays (the samples of a training run).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import Tensor

_CHUNK = 1 << 20
_SEED_MASK = (1 << 63) - 1


def file_sha256(path: str | os.PathLike[str], *, chunk: int = _CHUNK) -> str:
    """SHA-256 of a file's bytes (hex), read ``chunk`` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def derived_seed(namespace: str, *values: object) -> int:
    """A seed in [0, 2**63) from ``"namespace:v1:v2..."``: independent streams of one seed."""
    text = ":".join([namespace, *map(str, values)])
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") & _SEED_MASK


def update_with_tensors(digest: hashlib._Hash, tensors: Mapping[str, Tensor]) -> None:
    """Feed every tensor's name, dtype, shape and raw bytes to ``digest``, in name order.

    The byte layout is part of the model file format (its checksum): do not change it.
    """
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        # Raw bytes through a uint8 view: works for every dtype, bfloat16 included.
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def tensors_digest(tensors: Mapping[str, Tensor], *, prefix: str = "") -> str:
    """SHA-256 (hex) of ``prefix`` then the named tensors (:func:`update_with_tensors`)."""
    digest = hashlib.sha256(prefix.encode("utf-8"))
    update_with_tensors(digest, tensors)
    return digest.hexdigest()


def state_digest(state: Mapping[str, Tensor]) -> str:
    """SHA-256 of a state dict's names and exact values."""
    return tensors_digest(state)


def arrays_digest(groups: Iterable[Iterable[np.ndarray]]) -> str:
    """SHA-256 of groups of arrays as int64 (a ``|`` after each group)."""
    digest = hashlib.sha256()
    for group in groups:
        for array in group:
            digest.update(np.ascontiguousarray(array, np.int64).tobytes())
        digest.update(b"|")
    return digest.hexdigest()


__all__ = [
    "arrays_digest",
    "derived_seed",
    "file_sha256",
    "state_digest",
    "tensors_digest",
    "update_with_tensors",
]
