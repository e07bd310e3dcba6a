"""Fixtures for the models tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Run each test on one intra-op thread, then restore the previous setting.

    The test networks are tiny: on a small shared CPU, two OpenMP threads spinning against other
    processes made the learning test 3x slower than one thread (11.8 s vs 3.6 s measured).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
