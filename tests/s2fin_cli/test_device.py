"""Device helpers: thread defaults and restoration, CPU bfloat16 autocast switch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s2fin_cli import device
from s2fin_cli.errors import ConfigError


def test_cpu_threads_default_explicit_and_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    before = torch.get_num_threads()
    monkeypatch.setattr(device, "default_threads", lambda: 1)
    with device.cpu_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with device.cpu_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    with pytest.raises(ConfigError, match="--threads"), device.cpu_threads(0):
        pass


def test_autocast_is_float32_on_the_cpu_unless_bf16_is_asked_for() -> None:
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with device.autocast(cpu):
        assert (a @ b).dtype == torch.float32
    with device.autocast(cpu, cpu_bf16=True):
        assert (a @ b).dtype == torch.bfloat16
    with device.autocast(cpu, enabled=False, cpu_bf16=True):
        assert (a @ b).dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_on_cuda_uses_half_precision() -> None:
    cuda = torch.device("cuda:0")
    a, b = torch.randn(4, 4, device=cuda), torch.randn(4, 4, device=cuda)
    with device.autocast(cuda):
        assert (a @ b).dtype in (torch.bfloat16, torch.float16)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_staging_is_pinned_and_copies_asynchronously(tmp_path: Path) -> None:
    import numpy as np

    from s2fin_cli.inference import BlockPredictor
    from tests.s2fin_cli.helpers import tiny_bundle, write_scene

    predictor = BlockPredictor(tiny_bundle(write_scene(tmp_path / "scene.tif")), "cuda")
    array = np.random.default_rng(0).normal(size=(5, 30, 30)).astype(np.float32)
    staged = predictor.stage(array)
    assert staged.is_pinned()
    on_device = predictor.to_device(staged)
    torch.cuda.synchronize()
    assert on_device.device.type == "cuda"
    np.testing.assert_array_equal(on_device.cpu().numpy(), array)
