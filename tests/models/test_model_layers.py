"""models.layers.Dropout: nn.Dropout unless a thread has its own dropout generator."""

from __future__ import annotations

import threading

import torch
from torch import nn

from models.layers import Dropout, dropout_generator


def test_without_a_generator_it_is_nn_dropout() -> None:
    x = torch.randn(4, 64)
    ours, reference = Dropout(0.3).train(), nn.Dropout(0.3).train()
    torch.manual_seed(5)
    a = ours(x)
    torch.manual_seed(5)
    b = reference(x)
    assert torch.equal(a, b)


def test_a_generator_sets_the_masks_and_keeps_the_scaling() -> None:
    x = torch.ones(8, 1000)
    drop = Dropout(0.25).train()
    with dropout_generator(torch.Generator().manual_seed(3)):
        a = drop(x)
    with dropout_generator(torch.Generator().manual_seed(3)):
        b = drop(x)
    with dropout_generator(torch.Generator().manual_seed(4)):
        c = drop(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.unique(a), torch.tensor([0.0, 1 / 0.75]))
    assert abs(float((a == 0).float().mean()) - 0.25) < 0.02
    # The global generator is not consumed, and eval mode and p = 0 are the identity.
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    with dropout_generator(torch.Generator().manual_seed(3)):
        drop(x)
        assert torch.equal(drop.eval()(x), x) and torch.equal(Dropout(0.0).train()(x), x)
    assert torch.equal(torch.rand(1), expected)


def test_the_generator_belongs_to_the_thread_that_set_it() -> None:
    x = torch.ones(4, 256)
    drop = Dropout(0.5).train()

    def masks(seed: int) -> torch.Tensor:
        with dropout_generator(torch.Generator().manual_seed(seed)):
            return torch.stack([drop(x) for _ in range(20)])

    alone = {seed: masks(seed) for seed in (1, 2)}
    got: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda s=seed: got.__setitem__(s, masks(s)))
               for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(torch.equal(got[seed], alone[seed]) for seed in (1, 2))
    with dropout_generator(torch.Generator().manual_seed(1)):
        pass
    torch.manual_seed(7)
    a = drop(x)  # no generator left set in this thread
    torch.manual_seed(7)
    assert torch.equal(a, nn.Dropout(0.5).train()(x))
