"""Fixtures for the models tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers import torch_threads


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    """Run each test on one intra-op thread (see :func:`tests.helpers.torch_threads`)."""
    with torch_threads(1):
        yield
