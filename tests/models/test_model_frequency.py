"""Frequency-domain blocks: HFSET's spectral high-pass, AFCM's split, HFRM's resonance mask,
and the float32 guard they share."""

from __future__ import annotations

import math

import pytest
import torch
from model_helpers import make_inputs, tiny_config

from models import AFCM, HFRM, HFSET, S2Fin, SpectralHighPass
from models.spectral_ops import phase_similarity, spectral_highpass


def _alternating(n: int) -> torch.Tensor:
    return torch.tensor([(-1.0) ** i for i in range(n)])


def test_highpass_removes_a_constant_spectrum_and_passes_a_high_frequency_one() -> None:
    n = 144
    tau = torch.tensor([0.3])
    constant = torch.full((1, n), 5.0)
    assert spectral_highpass(constant, tau, 0.05).abs().max() < 1e-5
    nyquist = _alternating(n)[None] * 2.0
    torch.testing.assert_close(spectral_highpass(nyquist, tau, 0.05), nyquist, atol=1e-4, rtol=0)
    # A smooth (one cycle across all bands) spectrum is mostly removed.
    smooth = torch.sin(torch.linspace(0, 2 * math.pi, n))[None]
    assert spectral_highpass(smooth, tau, 0.05).norm() < 0.05 * smooth.norm()


def test_highpass_cutoff_moves_the_passband() -> None:
    n = 64
    mid = torch.cos(torch.arange(n) * math.pi * 0.5)[None]  # normalised frequency 0.5
    low_cut = spectral_highpass(mid, torch.tensor([0.2]), 0.05)
    high_cut = spectral_highpass(mid, torch.tensor([0.8]), 0.05)
    assert low_cut.norm() > 0.95 * mid.norm()
    assert high_cut.norm() < 0.05 * mid.norm()


def test_filter_cutoff_and_gain_receive_gradients() -> None:
    filt = SpectralHighPass(tau_init=0.3, beta_init=1.0, temperature=0.05)
    x = torch.randn(4, 9, 40)
    tau, beta = filt.parameters_for(torch.zeros(4), torch.zeros(4))
    assert torch.allclose(tau, torch.full((4,), 0.3)) and torch.allclose(beta, torch.ones(4))
    filt(x, tau, beta).square().sum().backward()
    assert filt.tau_logit.grad is not None and filt.tau_logit.grad.abs() > 0
    assert filt.beta_raw.grad is not None and filt.beta_raw.grad.abs() > 0


def test_hfset_filter_parameters_get_gradients_through_the_whole_model() -> None:
    cfg = tiny_config()
    model = S2Fin(cfg)
    model(*make_inputs(cfg, 3)).sum().backward()
    hfset = model.hfset
    assert isinstance(hfset, HFSET)
    assert hfset.filter.tau_logit.grad is not None and hfset.filter.tau_logit.grad.abs() > 0
    assert hfset.filter.beta_raw.grad is not None and hfset.filter.beta_raw.grad.abs() > 0
    # the summary head that predicts the offsets from the attention output learns too
    last = hfset.summary[-1]
    assert isinstance(last, torch.nn.Linear) and last.weight.grad is not None
    assert last.weight.grad.abs().sum() > 0


def test_hfset_predicted_cutoff_depends_on_the_input() -> None:
    cfg = tiny_config()
    hfset = S2Fin(cfg).hfset
    assert isinstance(hfset, HFSET)
    with torch.no_grad():  # untrained summary weights are tiny (std 0.02): scale them up
        for layer in hfset.summary:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.mul_(10.0)
    spectral = torch.randn(2, cfg.bands, 3, 3)
    tau, beta = hfset.filter_parameters(spectral)
    assert tau.shape == (2,) and beta.shape == (2,)
    assert ((tau > 0) & (tau < 1)).all() and (beta > 0).all()
    assert (tau[0] - tau[1]).abs() > 1e-4
    smooth = torch.linspace(-1, 1, cfg.bands)[None, :, None, None].expand(1, -1, 3, 3)
    tau_smooth, _ = hfset.filter_parameters(smooth)
    tau_rough, _ = hfset.filter_parameters(
        _alternating(cfg.bands)[None, :, None, None].expand(1, -1, 3, 3)
    )
    assert (tau_smooth - tau_rough).abs() > 1e-4


def _scramble_phase(x: torch.Tensor, seed: int) -> torch.Tensor:
    """Same amplitude spectrum as x, random phases (a real map again)."""
    g = torch.Generator().manual_seed(seed)
    h, w = x.shape[-2:]
    amplitude = torch.fft.rfft2(x).abs()
    phase = torch.rand(amplitude.shape, generator=g) * 2 * math.pi
    return torch.fft.irfft2(torch.polar(amplitude, phase), s=(h, w))


def test_phase_similarity_is_cosine_of_phase_difference() -> None:
    g = torch.Generator().manual_seed(0)
    mag = torch.rand(50, generator=g) + 0.5
    ph1 = torch.rand(50, generator=g) * 6
    ph2 = torch.rand(50, generator=g) * 6
    p, a = torch.polar(mag, ph1), torch.polar(mag * 3, ph2)
    torch.testing.assert_close(phase_similarity(p, a), torch.cos(ph1 - ph2), atol=1e-4, rtol=0)
    torch.testing.assert_close(phase_similarity(p, p), torch.ones(50), atol=1e-4, rtol=0)
    zero = torch.zeros(3, dtype=torch.complex64, requires_grad=True)
    s = phase_similarity(zero, zero)
    s.sum().backward()
    assert torch.equal(s.detach(), torch.zeros(3)) and torch.isfinite(zero.grad).all()  # type: ignore[arg-type]


def test_resonance_mask_peaks_on_identical_maps_and_drops_for_scrambled_phases() -> None:
    hfrm = HFRM(dim=4, radius_init=0.25, temperature=0.05)
    x = torch.randn(2, 4, 11, 11)
    same = hfrm.mask_for(x, x)
    scrambled = hfrm.mask_for(x, _scramble_phase(x, seed=1))
    # identical maps: every bin sits at the mask's ceiling highpass(r) * sigmoid(gamma + b)
    ceiling = (
        hfrm.highpass(11, 11, x.device)
        * torch.sigmoid(torch.nn.functional.softplus(hfrm.gamma_raw) + hfrm.bias)[:, None, None]
    )
    torch.testing.assert_close(same, ceiling.expand_as(same), atol=1e-4, rtol=0)
    assert (scrambled <= same + 1e-5).all()
    assert scrambled.mean() < 0.7 * same.mean()
    # per channel: identical channels keep the high mask, scrambled ones lose it
    mixed = x.clone()
    mixed[:, 2:] = _scramble_phase(x[:, 2:], seed=2)
    mask = hfrm.mask_for(x, mixed)
    assert mask[:, :2].mean() > 1.4 * mask[:, 2:].mean()
    # and the mask is a high-pass: the DC bin is (almost) untouched
    assert same[..., 0, 0].max() == 0


def test_hfrm_keeps_maps_real_and_amplifies_consistent_high_frequencies() -> None:
    hfrm = HFRM(dim=3, radius_init=0.25, temperature=0.05)
    x = torch.randn(1, 3, 9, 9)
    opt, act = hfrm(x, x)
    assert opt.dtype == x.dtype and opt.shape == x.shape
    # identical inputs: high-frequency energy grows, the mean (DC) stays
    torch.testing.assert_close(opt.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-4, rtol=0)
    assert (opt - opt.mean()).norm() > (x - x.mean()).norm()
    torch.testing.assert_close(opt, act)


def test_afcm_split_is_exact_and_keeps_the_mean_in_the_low_part() -> None:
    afcm = AFCM(dim=3, radius_init=0.35, temperature=0.05)
    x = torch.randn(2, 3, 11, 11)
    low, high = afcm.split(x)
    torch.testing.assert_close(low + high, x)
    torch.testing.assert_close(low.mean(dim=(-2, -1)), x.mean(dim=(-2, -1)), atol=1e-5, rtol=0)
    constant = torch.full((1, 3, 11, 11), 2.0)
    _, high_c = afcm.split(constant)
    assert high_c.abs().max() < 1e-4
    checker = _alternating(11)[:, None] * _alternating(11)[None, :]
    low_k, _ = afcm.split(checker.expand(1, 3, 11, 11))
    assert low_k.norm() < 0.05 * checker.expand(1, 3, 11, 11).norm()


@pytest.mark.parametrize("module", ["afcm", "hfrm"])
def test_fft_modules_run_in_float32_under_autocast_and_return_the_input_dtype(module: str) -> None:
    block = AFCM(4, 0.35, 0.05) if module == "afcm" else HFRM(4, 0.25, 0.05)
    x = torch.randn(2, 4, 11, 11, dtype=torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        opt, act = block(x, x)
    assert opt.dtype == torch.bfloat16 and act.dtype == torch.bfloat16
    ref_opt, _ = block(x.float(), x.float())
    torch.testing.assert_close(opt.float(), ref_opt, atol=0.1, rtol=0.05)


def test_spectral_highpass_keeps_dtype_under_autocast() -> None:
    x = torch.randn(2, 5, 33, dtype=torch.bfloat16)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = spectral_highpass(x, torch.tensor([0.3, 0.5])[:, None], 0.05)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
