"""S2Fin: the full network, and ``parameter_table``.

Data flow (shapes for the default Houston-like config, see docs/network.md):

    spectral [B, bands, s, s] --HFSET------------------------------> [B, s*s, D] --+
    spatial  [B, reduced, p, p] --stem--+                                           |
                                        +--AFCM--SSAF--deep convs--HFRM--+          |
    active   [B, aux, p, p] ----stem----+   (SSAF also mixes spectral)   |          |
                                                                          v          v
                              joint tokens [B, s*s + 2 p*p, D] --bidirectional scan--> head
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .afcm import AFCM
from .config import S2FinConfig
from .head import ClassifierHead
from .hfrm import HFRM
from .hfset import HFSET, SpectralEmbedding
from .layers import ConvStem, ConvTower, PairIdentity, center_crop
from .long_range import LongRangeFusion
from .ssaf import SSAF, SSAFIdentity


class TokenAssembler(nn.Module):
    """Spectral tokens + both spatial maps -> one sequence, with a learned type embedding per
    stream so the scan can tell the three streams apart."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.types = nn.Parameter(torch.zeros(3, dim))
        nn.init.trunc_normal_(self.types, std=0.02)

    def forward(self, spectral: Tensor, optical: Tensor, active: Tensor) -> Tensor:
        opt_t = optical.flatten(2).transpose(1, 2)
        act_t = active.flatten(2).transpose(1, 2)
        return torch.cat(
            [spectral + self.types[0], opt_t + self.types[1], act_t + self.types[2]], dim=1
        )


class S2Fin(nn.Module):
    """Spatial-spectral-frequency interactive network (reconstruction of arXiv 2510.04628).

    Inputs (float tensors on the model's device; any batch size B >= 1):
        spectral: [B, bands, s, s] all optical bands on the centre s x s window
            (s = config.spectral_window); use :meth:`forward_patches` to crop it from a p x p patch.
        spatial: [B, reduced_bands, p, p] reduced optical bands (e.g. PCA) on the p x p patch.
        active: [B, active_bands, p, p] active-sensor channels (LiDAR/SAR) on the p x p patch.
    The pixel being classified is the centre of every patch. Output: logits [B, num_classes].
    """

    def __init__(self, config: S2FinConfig | None = None) -> None:
        super().__init__()
        cfg = config if config is not None else S2FinConfig()
        self.config = cfg
        d, p, s = cfg.dim, cfg.patch_size, cfg.spectral_window
        self.hfset: nn.Module
        if cfg.use_hfset:
            self.hfset = HFSET(
                cfg.bands, s, d, cfg.heads, cfg.hfset_depth, cfg.top_k, cfg.ffn_ratio,
                cfg.dropout, cfg.tau_init, cfg.beta_init, cfg.filter_temperature,
            )  # fmt: skip
        else:
            self.hfset = SpectralEmbedding(cfg.bands, s, d)
        self.optical_stem = ConvStem(cfg.reduced_bands, d, cfg.optical_stem_norm)
        self.active_stem = ConvStem(cfg.active_bands, d, cfg.active_stem_norm)
        # One learned position map shared by both spatial branches: it tells attention and the
        # scan where the centre pixel is (convs with zero padding only know the borders).
        self.spatial_pos = nn.Parameter(torch.zeros(1, d, p, p))
        nn.init.trunc_normal_(self.spatial_pos, std=0.02)
        self.afcm: nn.Module = PairIdentity()
        if cfg.use_afcm:
            self.afcm = AFCM(d, cfg.afcm_radius_init, cfg.radial_temperature, size=p)
        self.ssaf: nn.Module = SSAFIdentity()
        if cfg.use_ssaf:
            self.ssaf = SSAF(d, cfg.heads, s, cfg.dropout)
        self.optical_deep = ConvTower(d, cfg.spatial_depth, cfg.ffn_ratio, cfg.dropout)
        self.active_deep = ConvTower(d, cfg.spatial_depth, cfg.ffn_ratio, cfg.dropout)
        self.hfrm: nn.Module = PairIdentity()
        if cfg.use_hfrm:
            self.hfrm = HFRM(d, cfg.hfrm_radius_init, cfg.radial_temperature, size=p)
        self.tokens = TokenAssembler(d)
        # Neutral long-range counterpart: tokens go to the head unmixed (only normalised).
        self.long_range: nn.Module = nn.LayerNorm(d)
        if cfg.use_long_range:
            self.long_range = LongRangeFusion(
                d, cfg.long_range_depth, cfg.ssm_expand, cfg.state_dim, cfg.ssm_heads,
                cfg.ssm_conv_kernel, cfg.scan_chunk, cfg.dropout,
            )  # fmt: skip
        n = s * s
        centres = (n // 2, n + p * p // 2, n + p * p + p * p // 2)
        self.head = ClassifierHead(d, cfg.num_classes, centres, cfg.dropout)
        self.apply(_init_weights)

    def _check(self, name: str, x: Tensor, channels: int, size: int) -> None:
        if x.dim() != 4 or x.shape[1] != channels or x.shape[2] != size or x.shape[3] != size:
            raise ValueError(
                f"S2Fin: {name} must have shape [B, {channels}, {size}, {size}], "
                f"got {list(x.shape)}"
            )

    def forward(self, spectral: Tensor, spatial: Tensor, active: Tensor) -> Tensor:
        """Logits [B, num_classes] for the centre pixels (see the class docstring for shapes)."""
        cfg = self.config
        self._check("spectral", spectral, cfg.bands, cfg.spectral_window)
        self._check("spatial", spatial, cfg.reduced_bands, cfg.patch_size)
        self._check("active", active, cfg.active_bands, cfg.patch_size)
        if not spectral.shape[0] == spatial.shape[0] == active.shape[0]:
            raise ValueError("S2Fin: spectral, spatial and active must share the batch size")
        spec_tokens = self.hfset(spectral)
        # The spatial branches run channels-last ([B, H, W, C] in memory): the convolutions are
        # faster in that layout, and pixel tokens (SSAF, HFRM/AFCM's DFT products, the token
        # sequence) are then views instead of transposed copies.
        spatial = spatial.contiguous(memory_format=torch.channels_last)
        active = active.contiguous(memory_format=torch.channels_last)
        optical = self.optical_stem(spatial) + self.spatial_pos
        act = self.active_stem(active) + self.spatial_pos
        optical, act = self.afcm(optical, act)
        spec_tokens, optical, act = self.ssaf(spec_tokens, optical, act)
        optical = self.optical_deep(optical)
        act = self.active_deep(act)
        optical, act = self.hfrm(optical, act)
        tokens = self.long_range(self.tokens(spec_tokens, optical, act))
        logits: Tensor = self.head(tokens)
        return logits

    def forward_patches(self, optical_full: Tensor, spatial: Tensor, active: Tensor) -> Tensor:
        """Like :meth:`forward`, but takes the full-band optical patch [B, bands, p, p] and crops
        the spectral window (centre s x s) from it."""
        return self(self.spectral_window(optical_full), spatial, active)

    def spectral_window(self, optical_full: Tensor) -> Tensor:
        """Centre ``spectral_window`` x ``spectral_window`` crop of [B, bands, p, p] patches."""
        return center_crop(optical_full, self.config.spectral_window)


def _init_weights(module: nn.Module) -> None:
    # Small truncated-normal linear weights (transformer convention); convs keep PyTorch's default.
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def parameter_table(model: nn.Module) -> list[tuple[str, int]]:
    """Trainable parameters per top-level module (and direct parameters), then ("total", n)."""
    rows: list[tuple[str, int]] = []
    counted = 0
    for name, child in model.named_children():
        n = sum(p.numel() for p in child.parameters() if p.requires_grad)
        rows.append((name, n))
        counted += n
    for name, param in model.named_parameters(recurse=False):
        if param.requires_grad:
            rows.append((name, param.numel()))
            counted += param.numel()
    rows.append(("total", counted))
    return rows
