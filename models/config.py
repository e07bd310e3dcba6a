"""S2FinConfig: every hyperparameter of the network in one JSON-serialisable dataclass.

The model file stores ``to_dict()`` as metadata and rebuilds the network with ``from_dict()``, so
``from_dict`` treats its input as untrusted: unknown keys, wrong types and out-of-range values raise
``ValueError`` naming the offending key instead of building a network that cannot load its weights.
Missing keys take their defaults (older files stay readable when a field is added).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

# The normalisations a stem may use (models/layers.py builds them; kept here so that the config,
# which the model file stores, validates without importing torch).
STEM_NORMS = ("group", "batch", "none")


@dataclass(frozen=True)
class S2FinConfig:
    """Hyperparameters of :class:`models.S2Fin`. Defaults describe a Houston2013-like setup.

    Inputs:
        bands: optical bands in the spectral patch (all bands, z-scored).
        reduced_bands: channels of the spatial optical patch (e.g. PCA components).
        active_bands: channels of the active-sensor patch (LiDAR DSM, SAR polarisations), >= 1.
        num_classes: output classes.
        patch_size: odd side p of the spatial patches (p x p).
        spectral_window: odd side s <= p of the spectral patch (centre s x s of the p x p patch).

    Widths/depths:
        dim: feature width of every branch (spectral tokens, spatial maps, fused tokens).
        heads: attention heads (HFSET token/channel attention, SSAF cross-modal attention).
        hfset_depth: sparse-attention blocks in HFSET (the filter is driven by the first one).
        top_k: keys kept per query in HFSET's sparse token attention (clipped to s*s).
        ffn_ratio: hidden width of feed-forward/pointwise MLPs as a multiple of ``dim``.
        spatial_depth: deep conv blocks per spatial branch between SSAF and HFRM.
        long_range_depth: bidirectional selective-scan blocks.
        state_dim: state size N of the selective scan.
        ssm_expand: inner width of a scan block as a multiple of ``dim``.
        ssm_heads: scan heads (each with its own decay rate); must divide ssm_expand * dim.
        ssm_conv_kernel: causal depthwise conv length in front of each scan direction.
        scan_chunk: chunk length of the chunked scan (speed/memory trade-off, same result).
        dropout: dropout rate after attention/MLP/scan outputs and before the classifier.
        optical_stem_norm, active_stem_norm: normalisation after each conv of the optical (PCA)
            and active stems: ``group`` (GroupNorm(1, C) per patch, the original design),
            ``batch`` (BatchNorm2d) or ``none``. Per-patch normalisation removes a patch's
            absolute level (height, backscatter); see docs/network.md.

    Frequency modules:
        filter_temperature: softness T of HFSET's band-axis high-pass sigmoid((f - tau) / T).
        tau_init: initial base cutoff of that high-pass, in normalised frequency (0, 1).
        beta_init: initial base gain of the high-pass branch (> 0).
        afcm_radius_init: initial radial low/high split of AFCM, normalised radius in (0, 1).
        hfrm_radius_init: initial radial cutoff of HFRM's high-pass, in (0, 1).
        radial_temperature: softness of the radial masks of AFCM and HFRM.

    Ablation switches (off = neutral counterpart, see docs/network.md):
        use_hfset, use_afcm, use_ssaf, use_hfrm, use_long_range.
    """

    bands: int = 144
    reduced_bands: int = 30
    active_bands: int = 1
    num_classes: int = 15
    patch_size: int = 11
    spectral_window: int = 5
    dim: int = 80
    heads: int = 4
    hfset_depth: int = 2
    top_k: int = 8
    ffn_ratio: float = 2.0
    spatial_depth: int = 2
    long_range_depth: int = 2
    state_dim: int = 16
    ssm_expand: int = 1
    ssm_heads: int = 2
    ssm_conv_kernel: int = 4
    scan_chunk: int = 16
    dropout: float = 0.1
    optical_stem_norm: str = "group"
    active_stem_norm: str = "group"
    filter_temperature: float = 0.05
    tau_init: float = 0.3
    beta_init: float = 1.0
    afcm_radius_init: float = 0.35
    hfrm_radius_init: float = 0.25
    radial_temperature: float = 0.05
    use_hfset: bool = True
    use_afcm: bool = True
    use_ssaf: bool = True
    use_hfrm: bool = True
    use_long_range: bool = True

    def __post_init__(self) -> None:
        # Validate on every construction path (direct, replace(), from_dict) so a bad config
        # fails here with the key's name rather than deep inside a layer constructor.
        for f in fields(self):
            _check_type(f.name, getattr(self, f.name), f.type)
        self._check_sizes()
        self._check_divisibility()
        self._check_rates()
        for name in ("optical_stem_norm", "active_stem_norm"):
            if getattr(self, name) not in STEM_NORMS:
                raise ValueError(f"S2FinConfig.{name} must be one of {', '.join(STEM_NORMS)}, "
                                 f"got {getattr(self, name)!r}")

    def _check_sizes(self) -> None:
        positive_ints = (
            "bands", "reduced_bands", "active_bands", "dim", "heads", "hfset_depth", "top_k",
            "state_dim", "ssm_expand", "ssm_heads", "ssm_conv_kernel", "scan_chunk",
        )  # fmt: skip
        for name in positive_ints:
            if getattr(self, name) < 1:
                raise ValueError(f"S2FinConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("spatial_depth", "long_range_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"S2FinConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_classes < 2:
            raise ValueError(f"S2FinConfig.num_classes must be >= 2, got {self.num_classes}")
        # Odd sizes give every patch a unique centre pixel: the one being classified.
        if self.patch_size < 3 or self.patch_size % 2 == 0 or self.patch_size > 63:
            raise ValueError(
                f"S2FinConfig.patch_size must be odd and in [3, 63], got {self.patch_size}"
            )
        if (
            self.spectral_window < 1
            or self.spectral_window % 2 == 0
            or self.spectral_window > self.patch_size
        ):
            raise ValueError(
                "S2FinConfig.spectral_window must be odd and in [1, patch_size="
                f"{self.patch_size}], got {self.spectral_window}"
            )

    def _check_divisibility(self) -> None:
        if self.dim % self.heads != 0:
            raise ValueError(
                f"S2FinConfig.dim ({self.dim}) must be divisible by heads ({self.heads})"
            )
        if (self.ssm_expand * self.dim) % self.ssm_heads != 0:
            raise ValueError(
                f"S2FinConfig.ssm_expand * dim ({self.ssm_expand * self.dim}) must be divisible "
                f"by ssm_heads ({self.ssm_heads})"
            )

    def _check_rates(self) -> None:
        if not 0.5 <= self.ffn_ratio <= 16.0:
            raise ValueError(f"S2FinConfig.ffn_ratio must be in [0.5, 16], got {self.ffn_ratio}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"S2FinConfig.dropout must be in [0, 1), got {self.dropout}")
        for name in ("filter_temperature", "radial_temperature", "beta_init"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0.0):
                raise ValueError(f"S2FinConfig.{name} must be finite and > 0, got {value}")
        for name in ("tau_init", "afcm_radius_init", "hfrm_radius_init"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:
                raise ValueError(f"S2FinConfig.{name} must be in (0, 1), got {value}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict (ints, floats, bools and strings only)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> S2FinConfig:
        """Rebuild from ``to_dict()`` output, validating keys, types and ranges.

        Raises:
            ValueError: ``data`` is not a dict, has unknown keys, or a value has the wrong type
                or is out of range.
        """
        if not isinstance(data, dict):
            raise ValueError(f"S2FinConfig.from_dict expects a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"S2FinConfig: unknown key(s) {', '.join(unknown)}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in data:
                value = data[f.name]
                _check_type(f.name, value, f.type)
                # JSON writers may store 2.0 as 2; keep float fields float.
                kwargs[f.name] = float(value) if f.type in ("float", float) else value
        return cls(**kwargs)


def _check_type(name: str, value: object, annotation: object) -> None:
    # With `from __future__ import annotations` field types are the strings "int"/"float"/"bool".
    # bool is a subclass of int, so it is excluded explicitly from the numeric fields.
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise ValueError(f"S2FinConfig.{name} must be finite, got {value}")
    else:  # pragma: no cover - every field is one of the four kinds
        ok = True
    if not ok:
        raise ValueError(
            f"S2FinConfig.{name} must be of type {kind}, got {type(value).__name__} ({value!r})"
        )
