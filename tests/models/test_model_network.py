"""Behaviour of the assembled S2Fin network: shapes, gradients, numerics, invariances, ablations."""

from __future__ import annotations

import pytest
import torch
from model_helpers import make_inputs, tiny_config

from models import S2Fin, S2FinConfig, center_crop, parameter_table


@pytest.mark.parametrize(
    ("bands", "reduced", "aux", "classes", "patch", "window", "batch"),
    [
        (12, 4, 1, 3, 7, 3, 1),
        (31, 6, 4, 7, 11, 5, 3),
        (9, 3, 2, 2, 15, 1, 2),
        (20, 5, 1, 5, 15, 15, 1),
    ],
)
def test_forward_backward_shapes_and_gradients(
    bands: int, reduced: int, aux: int, classes: int, patch: int, window: int, batch: int
) -> None:
    cfg = tiny_config(
        bands=bands,
        reduced_bands=reduced,
        active_bands=aux,
        num_classes=classes,
        patch_size=patch,
        spectral_window=window,
    )
    model = S2Fin(cfg)
    spectral, spatial, active = make_inputs(cfg, batch)
    logits = model(spectral, spatial, active)
    assert logits.shape == (batch, classes)
    torch.nn.functional.cross_entropy(logits, torch.arange(batch) % classes).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]  # type: ignore[arg-type]
    assert not bad


def test_forward_patches_crops_the_centre_window() -> None:
    cfg = tiny_config(patch_size=9, spectral_window=3)
    model = S2Fin(cfg).eval()
    full = torch.randn(2, cfg.bands, 9, 9)
    _, spatial, active = make_inputs(cfg, 2)
    expected = model(full[:, :, 3:6, 3:6], spatial, active)
    torch.testing.assert_close(model.forward_patches(full, spatial, active), expected)
    torch.testing.assert_close(center_crop(full, 3), full[:, :, 3:6, 3:6])
    with pytest.raises(ValueError, match="centre-crop"):
        center_crop(full, 11)


def test_wrong_input_shapes_raise_clear_errors() -> None:
    cfg = tiny_config()
    model = S2Fin(cfg)
    spectral, spatial, active = make_inputs(cfg, 2)
    with pytest.raises(ValueError, match="spectral"):
        model(spectral[:, :-1], spatial, active)
    with pytest.raises(ValueError, match="spatial"):
        model(spectral, spatial[..., :-1, :-1], active)
    with pytest.raises(ValueError, match="active"):
        model(spectral, spatial, torch.randn(2, 3, 7, 7))
    with pytest.raises(ValueError, match="batch"):
        model(spectral, spatial[:1], active)


@pytest.mark.parametrize("kind", ["zeros", "constant", "large"])
def test_degenerate_inputs_stay_finite(kind: str) -> None:
    cfg = tiny_config()
    model = S2Fin(cfg)
    spectral, spatial, active = make_inputs(cfg, 3, scale=1e4 if kind == "large" else 1.0)
    if kind == "zeros":
        spectral, spatial, active = (torch.zeros_like(t) for t in (spectral, spatial, active))
    elif kind == "constant":
        spectral, spatial, active = (torch.full_like(t, 3.0) for t in (spectral, spatial, active))
    logits = model(spectral, spatial, active)
    assert torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    model.eval()
    with torch.inference_mode():
        assert torch.isfinite(model(spectral, spatial, active)).all()


def test_forward_and_backward_under_cpu_bfloat16_autocast() -> None:
    cfg = tiny_config(patch_size=11, spectral_window=5)  # 11 x 11: not a power of two
    model = S2Fin(cfg).eval()
    inputs = make_inputs(cfg, 4)
    reference = model(*inputs)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits = model(*inputs)
    assert torch.isfinite(logits).all()
    # bfloat16 keeps ~3 significant digits; the logits must still agree coarsely.
    torch.testing.assert_close(logits.float(), reference, atol=0.15, rtol=0.1)
    model.train()
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(*inputs), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_eval_outputs_are_batch_invariant() -> None:
    cfg = tiny_config(patch_size=11, spectral_window=5, dim=32, dropout=0.2)
    model = S2Fin(cfg).eval()
    spectral, spatial, active = make_inputs(cfg, 8, seed=3)
    with torch.inference_mode():
        together = model(spectral, spatial, active)
        for i in range(8):
            alone = model(spectral[i : i + 1], spatial[i : i + 1], active[i : i + 1])
            torch.testing.assert_close(alone[0], together[i], atol=1e-5, rtol=1e-5)
        # and neighbours do not matter either: same sample, different companions
        mixed = model(
            torch.cat([spectral[:1], spectral[4:]]),
            torch.cat([spatial[:1], spatial[4:]]),
            torch.cat([active[:1], active[4:]]),
        )
    torch.testing.assert_close(mixed[0], together[0], atol=1e-5, rtol=1e-5)


def test_same_seed_same_model_and_deterministic_outputs() -> None:
    cfg = tiny_config()
    torch.manual_seed(123)
    a = S2Fin(cfg)
    torch.manual_seed(123)
    b = S2Fin(cfg)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    torch.manual_seed(124)
    c = S2Fin(cfg)
    assert not torch.equal(a.head.fc.weight, c.head.fc.weight)
    inputs = make_inputs(cfg, 4)
    a.eval()
    b.eval()
    with torch.inference_mode():
        out = a(*inputs)
        assert torch.equal(out, a(*inputs))
        assert torch.equal(out, b(*inputs))


@pytest.mark.parametrize(
    "switch", ["use_hfset", "use_afcm", "use_ssaf", "use_hfrm", "use_long_range"]
)
def test_each_ablation_switch_removes_its_module(switch: str) -> None:
    cfg = tiny_config()
    full = S2Fin(cfg).eval()
    ablated = S2Fin(S2FinConfig.from_dict({**cfg.to_dict(), switch: False})).eval()
    full_params = dict(parameter_table(full))
    ablated_params = dict(parameter_table(ablated))
    assert ablated_params["total"] < full_params["total"]
    module = {
        "use_hfset": "hfset",
        "use_afcm": "afcm",
        "use_ssaf": "ssaf",
        "use_hfrm": "hfrm",
        "use_long_range": "long_range",
    }[switch]
    assert ablated_params[module] < full_params[module]
    # Give the ablated network every weight it shares with the full one, so the only difference
    # left is the switched-off module: the outputs must still differ.
    own = ablated.state_dict()
    shared = {k: v for k, v in full.state_dict().items() if k in own and own[k].shape == v.shape}
    ablated.load_state_dict(shared, strict=False)
    inputs = make_inputs(cfg, 4, seed=5)
    with torch.inference_mode():
        diff = (full(*inputs) - ablated(*inputs)).abs().max()
    assert diff > 1e-4


def test_all_modules_off_still_trains() -> None:
    cfg = tiny_config(
        use_hfset=False, use_afcm=False, use_ssaf=False, use_hfrm=False, use_long_range=False
    )
    model = S2Fin(cfg)
    logits = model(*make_inputs(cfg, 2))
    logits.sum().backward()
    assert logits.shape == (2, cfg.num_classes)


def test_houston_like_parameter_count_and_table() -> None:
    cfg = S2FinConfig(bands=144, reduced_bands=30, active_bands=1, num_classes=15, patch_size=11)
    model = S2Fin(cfg)
    table = parameter_table(model)
    names = [name for name, _ in table]
    assert names[-1] == "total"
    for module in ("hfset", "afcm", "ssaf", "hfrm", "long_range", "head"):
        assert module in names
    total = dict(table)["total"]
    assert total == sum(p.numel() for p in model.parameters())
    assert sum(n for name, n in table[:-1]) == total
    assert 400_000 <= total <= 900_000, total


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_forward_backward(dtype: torch.dtype) -> None:
    cfg = tiny_config(patch_size=11, spectral_window=5)
    model = S2Fin(cfg).cuda()
    inputs = [t.cuda() for t in make_inputs(cfg, 4)]
    with torch.autocast(device_type="cuda", dtype=dtype):
        logits = model(*inputs)
    assert torch.isfinite(logits).all()
    logits.float().sum().backward()
    model.eval()
    with torch.inference_mode():
        reference = model(*inputs).cpu()
    torch.testing.assert_close(
        reference, model.cpu()(*[t.cpu() for t in inputs]), atol=1e-4, rtol=1e-4
    )
