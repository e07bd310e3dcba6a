"""Normalisation and PCA, fitted once on the training scene and stored in the model file.

Fitting streams the scene block by block (memory follows the block): per-band mean and standard
deviation from float64 sums of valid values, and a PCA of the z-scored optical bands from a seeded
sample of valid pixels. Applying it never refits anything: a scene is always seen through the
statistics of the scene the model was trained on, so maps of different scenes are comparable.

Invalid values (NaN from the reader) are replaced by 0 after z-scoring, i.e. by the training mean:
they never enter statistics, and they enter patches as the most neutral value there is.

Derived inputs (:class:`DerivedInputs`): channels computed from the raw LiDAR on the fly, before
z-scoring, and appended to the active input; today the height above ground (the DSM minus a
large-window ground estimate). They need pixels beyond the patch: a **context** margin. Every
reader of network inputs (training patches, scoring, prediction) reads ``halo + context`` pixels
around its block and :class:`DevicePreprocessor` crops the context off after deriving, so the
three compute the same values, and a block's values do not depend on where the block lies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from s2fin_cli.io.reader import Scene, valid_mask
from s2fin_cli.io.windows import block_count, iter_blocks

# A band whose spread is below this (after scaling) is treated as constant: divided by 1.
_MIN_STD = 1e-6


# How the ground under a DSM is estimated for the height above ground (DerivedInputs.ground):
# "opening": the morphological opening (a maximum filter of the minimum filter) over the
# window, which follows sloping terrain; "minimum": the minimum filter smoothed by a box of the
# window, which lies below sloping terrain by up to half the window times the slope (the rule of
# model files written before "opening"; they keep it).
GROUND_RULES = ("opening", "minimum")


@dataclass(frozen=True)
class DerivedInputs:
    """Channels derived from the raw LiDAR/SAR on the fly (stored in the model file).

    ``height_window`` (odd, pixels; 0 = none): the height above ground of the first LiDAR band
    (the DSM): the DSM minus a ground estimate over a ``height_window``-square window
    (``ground``, one of :data:`GROUND_RULES`), which removes objects narrower than the window.
    A patch sees a few metres around its pixel; the ground under a wide roof lies further out.
    With ``replace_dsm`` the height takes the DSM's place in the active input: the DSM's
    absolute elevation is where a pixel lies in hilly terrain more than what it is, and a
    network trained on a few labelled objects learns their elevations (docs/network.md,
    "Height instead of elevation"). Without it (files from before) the height is appended.

    ``sar_window`` (odd, pixels; 0 = none): append the local mean of every SAR band over a
    ``sar_window``-square box (a multi-look estimate: speckle averaged out).
    """

    height_window: int = 0
    sar_window: int = 0
    ground: str = "opening"
    replace_dsm: bool = True

    def __post_init__(self) -> None:
        for name in ("height_window", "sar_window"):
            w = getattr(self, name)
            if not isinstance(w, int) or isinstance(w, bool) or w < 0 \
                    or (w and (w % 2 == 0 or w < 3)):
                raise ValueError(f"the {name.replace('_', ' ')} must be 0 or an odd number "
                                 f">= 3, got {w!r}")
        if not isinstance(self.replace_dsm, bool):
            raise ValueError(f"replace_dsm must be true or false, got {self.replace_dsm!r}")
        if self.ground not in GROUND_RULES:
            raise ValueError(f"the ground rule must be one of {', '.join(GROUND_RULES)}, "
                             f"got {self.ground!r}")

    @property
    def active(self) -> bool:
        return bool(self.height_window or self.sar_window)

    @property
    def _appended_height(self) -> bool:
        return bool(self.height_window) and not self.replace_dsm

    def channels_for(self, raw_bands: int) -> int:
        """Channels appended to ``raw_bands`` auxiliary bands."""
        return (1 if self._appended_height else 0) + (raw_bands if self.sar_window else 0)

    def raw_bands(self, total: int) -> int:
        """The raw auxiliary bands behind ``total`` channels of the active input."""
        rest = total - (1 if self._appended_height else 0)
        return rest // 2 if self.sar_window else rest

    @property
    def context(self) -> int:
        """Pixels needed beyond a block's halo (the filters' half widths)."""
        return max(self.height_window - 1 if self.height_window else 0, self.sar_window // 2)

    def names(self, band_names: tuple[str, ...] = ()) -> tuple[str, ...]:
        """Names of the appended channels (``band_names``: the raw auxiliary bands)."""
        out: tuple[str, ...] = ("height above ground",) if self._appended_height else ()
        if self.sar_window:
            w = self.sar_window
            out += tuple(f"{b} mean {w}x{w}" for b in band_names)
        return out

    def describe(self) -> str:
        parts = []
        if self.height_window:
            parts.append(f"height above ground {'in place of' if self.replace_dsm else 'beside'}"
                         f" the DSM (window {self.height_window} px, ground: {self.ground})")
        if self.sar_window:
            parts.append(f"local means of the SAR bands ({self.sar_window} x "
                         f"{self.sar_window} px)")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in (("height_window", self.height_window),
                                                 ("sar_window", self.sar_window)) if v}
        if self.height_window:
            out.update(ground=self.ground, replace_dsm=self.replace_dsm)
        return out

    @classmethod
    def from_json(cls, data: Any) -> DerivedInputs:
        if data is None:
            return cls()
        if not isinstance(data, dict) or set(data) - {"height_window", "sar_window", "ground",
                                                      "replace_dsm"}:
            raise ValueError(f"bad derived inputs {data!r}")
        height = data.get("height_window", 0)
        # A height without these keys: a file from before them (format 2), which appended the
        # height over the minimum.
        return cls(height, data.get("sar_window", 0),
                   data.get("ground", "minimum" if height else cls.ground),
                   data.get("replace_dsm", not height))


def _box(x: Tensor, size: int) -> Tensor:
    """Mean over ``size``-square windows of (N, 1, H, W) maps, NaN ignored ('valid' output)."""
    finite = torch.isfinite(x)
    total = F.avg_pool2d(torch.where(finite, x, 0.0), size, stride=1)
    count = F.avg_pool2d(finite.to(x.dtype), size, stride=1)
    return torch.where(count > 0, total / count.clamp_min(1e-12), torch.nan)


def height_above_ground(dsm: Tensor, window: int, ground: str = "opening") -> Tensor:
    """(H, W) DSM → (H - 2c, W - 2c) height above ground, c = window - 1 ('valid' filters: the
    margin is consumed, so the result is exact wherever the input covers the context), over the
    ground estimate ``ground`` (:data:`GROUND_RULES`). NaN (nodata) is ignored by the ground
    estimate and stays NaN in the result."""
    x = dsm[None, None]
    low = _minimum(torch.where(torch.isfinite(x), x, torch.inf), window)  # +inf: no data
    c = window - 1
    core = x[..., c:x.shape[-2] - c, c:x.shape[-1] - c]
    if ground == "opening":
        # Minimum then maximum over the window (c = 2 half widths): exact on planar terrain,
        # so a slope adds no height, while anything narrower than the window is removed.
        opened = _maximum(torch.where(torch.isinf(low), -torch.inf, low), window)
        return (core - torch.where(torch.isinf(opened), torch.nan, opened))[0, 0]
    # The box mean in float64: elevations of hundreds of metres summed over a large window
    # would lose centimetres in float32.
    smoothed = _box(torch.where(torch.isinf(low), torch.nan, low).double(), window)
    return (core.double() - smoothed)[0, 0].to(dsm.dtype)


def _maximum(x: Tensor, size: int) -> Tensor:
    """Maximum over ``size``-square windows of (N, 1, H, W) maps ('valid'; separable: exact)."""
    return F.max_pool2d(F.max_pool2d(x, (1, size), stride=1), (size, 1), stride=1)


def _minimum(x: Tensor, size: int) -> Tensor:
    return -_maximum(-x, size)


def _crop(x: Tensor, c: int) -> Tensor:
    return x[..., c:x.shape[-2] - c, c:x.shape[-1] - c] if c else x


def derive(aux: Tensor, derived: DerivedInputs) -> Tensor:
    """(a, H, W) raw auxiliary bands with ``derived.context`` extra pixels on each side →
    (a + channels, H - 2 context, W - 2 context): the raw bands cropped, then the derived ones."""
    c = derived.context
    if not c:
        return aux
    raw, extra = _crop(aux, c), []
    if derived.height_window:
        height = height_above_ground(_crop(aux[0], c - (derived.height_window - 1)),
                                     derived.height_window, derived.ground)[None]
        if derived.replace_dsm:
            raw = torch.cat([height, raw[1:]])
        else:
            extra.append(height)
    if derived.sar_window:
        half = derived.sar_window // 2
        extra.append(_box(_crop(aux, c - half)[:, None], derived.sar_window)[:, 0])
    return torch.cat([raw, *extra])


@dataclass(frozen=True)
class Preprocessor:
    """z-score statistics of both modalities and the PCA of the optical bands (float32 arrays)."""

    optical_mean: np.ndarray  # (bands,)
    optical_std: np.ndarray  # (bands,)
    aux_mean: np.ndarray  # (aux_bands,)
    aux_std: np.ndarray  # (aux_bands,)
    pca_mean: np.ndarray  # (bands,) mean of the z-scored sample
    pca_components: np.ndarray  # (reduced, bands) rows are unit principal axes
    pca_explained: np.ndarray  # (reduced,) fraction of variance explained by each axis
    # Channels derived from the raw aux bands; aux_mean/aux_std cover them after the raw ones.
    derived: DerivedInputs = field(default_factory=DerivedInputs)

    @property
    def bands(self) -> int:
        return int(self.optical_mean.shape[0])

    @property
    def aux_bands(self) -> int:
        """Channels of the network's active input: the raw aux bands, then the derived ones."""
        return int(self.aux_mean.shape[0])

    @property
    def raw_aux_bands(self) -> int:
        """Auxiliary bands read from the scene."""
        return self.derived.raw_bands(self.aux_bands)

    @property
    def height_channel(self) -> int | None:
        """Where the height above ground sits in the active input (None without it)."""
        if not self.derived.height_window:
            return None
        return 0 if self.derived.replace_dsm else self.raw_aux_bands

    @property
    def context(self) -> int:
        """Pixels a reader adds to a block's halo for the derived inputs (0 without them)."""
        return self.derived.context

    @property
    def reduced_bands(self) -> int:
        return int(self.pca_components.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """The arrays as float32 tensors, named for the model file."""
        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), np.float32))
                for name in _FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor],
                     derived: DerivedInputs | None = None) -> Preprocessor:
        """Rebuild from :meth:`tensors` (``derived``: the derived inputs the statistics cover,
        stored beside the tensors); raises ValueError when shapes do not fit together."""
        missing = [n for n in _FIELDS if n not in tensors]
        if missing:
            raise ValueError(f"preprocessing tensors missing: {', '.join(missing)}")
        arrays = {n: tensors[n].detach().cpu().numpy().astype(np.float32) for n in _FIELDS}
        pre = cls(**arrays, derived=derived or DerivedInputs())
        b, a, r = pre.bands, pre.aux_bands, pre.reduced_bands
        shapes_ok = (
            pre.optical_std.shape == (b,) and pre.aux_std.shape == (a,)
            and pre.pca_mean.shape == (b,) and pre.pca_components.shape == (r, b)
            and pre.pca_explained.shape == (r,)
        )
        raw = pre.raw_aux_bands
        if not shapes_ok or raw < 1 or raw + pre.derived.channels_for(raw) != a:
            raise ValueError("preprocessing tensors have inconsistent shapes")
        if not all(np.isfinite(v).all() for v in arrays.values()):
            raise ValueError("preprocessing tensors hold NaN or Inf")
        return pre

    def device_tensors(self, device: torch.device) -> DevicePreprocessor:
        return DevicePreprocessor(self, device)


_FIELDS = ("optical_mean", "optical_std", "aux_mean", "aux_std", "pca_mean", "pca_components",
           "pca_explained")


class DevicePreprocessor:
    """The preprocessing on a torch device, applied to whole blocks before patches are cut."""

    def __init__(self, pre: Preprocessor, device: torch.device) -> None:
        self.derived = pre.derived
        t = {k: v.to(device) for k, v in pre.tensors().items()}
        self.optical_mean = t["optical_mean"][:, None, None]
        self.optical_std = t["optical_std"][:, None, None]
        self.aux_mean = t["aux_mean"][:, None, None]
        self.aux_std = t["aux_std"][:, None, None]
        self.pca_mean = t["pca_mean"][:, None, None]
        self.pca_components = t["pca_components"]

    def __call__(self, optical: Tensor, aux: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(bands, H, W) and (aux, H, W) raw float32 with NaN → z-scored optical, PCA, aux.

        With derived inputs the arrays hold ``context`` extra pixels on each side (read with
        ``halo + context``); they are derived, then cropped off: the outputs are
        (H - 2 context, W - 2 context)."""
        c = self.derived.context
        if c:
            aux = derive(aux, self.derived)
            optical = optical[:, c:optical.shape[-2] - c, c:optical.shape[-1] - c]
        z_opt = torch.nan_to_num((optical - self.optical_mean) / self.optical_std, nan=0.0,
                                 posinf=0.0, neginf=0.0)
        z_aux = torch.nan_to_num((aux - self.aux_mean) / self.aux_std, nan=0.0, posinf=0.0,
                                 neginf=0.0)
        reduced = torch.einsum("rb,bhw->rhw", self.pca_components, z_opt - self.pca_mean)
        return z_opt, reduced, z_aux


class _RunningMoments:
    """Per-band count, sum and sum of squares in float64, ignoring NaN (streaming, exact)."""

    def __init__(self, bands: int) -> None:
        self.count = np.zeros(bands, np.float64)
        self.total = np.zeros(bands, np.float64)
        self.total_sq = np.zeros(bands, np.float64)
        self.shift: np.ndarray | None = None  # first block's mean: keeps sums well conditioned

    def update(self, block: np.ndarray) -> None:
        flat = block.reshape(block.shape[0], -1).astype(np.float64)
        finite = np.isfinite(flat)
        if self.shift is None:
            with np.errstate(invalid="ignore"):
                counts = finite.sum(axis=1)
                self.shift = np.where(counts > 0, np.nansum(flat, axis=1) / np.maximum(counts, 1),
                                      0.0)
        centred = np.where(finite, flat - self.shift[:, None], 0.0)
        self.count += finite.sum(axis=1)
        self.total += centred.sum(axis=1)
        self.total_sq += (centred * centred).sum(axis=1)

    def mean_std(self) -> tuple[np.ndarray, np.ndarray]:
        shift = self.shift if self.shift is not None else np.zeros_like(self.total)
        n = np.maximum(self.count, 1)
        mean_c = self.total / n
        var = np.maximum(self.total_sq / n - mean_c**2, 0.0)
        std = np.sqrt(var)
        mean = np.where(self.count > 0, mean_c + shift, 0.0)
        std = np.where((self.count > 1) & (std > _MIN_STD * np.maximum(np.abs(mean), 1.0)), std,
                       1.0)
        return mean.astype(np.float32), std.astype(np.float32)


def fit_preprocessor(
    scene: Scene,
    reduced_bands: int,
    *,
    pca_samples: int = 20000,
    block_size: int = 512,
    seed: int = 0,
    derived: DerivedInputs | None = None,
) -> Preprocessor:
    """Stream ``scene`` once: band statistics of both modalities (and of the ``derived``
    inputs, computed as every reader computes them) and a PCA sample of pixels.

    ``reduced_bands`` is capped at the number of optical bands.
    """
    derived = derived or DerivedInputs()
    grid = scene.grid
    opt_moments = _RunningMoments(scene.optical.count)
    aux_moments = _RunningMoments(scene.aux.count + derived.channels_for(scene.aux.count))
    rng = np.random.default_rng(seed)
    n_blocks = block_count(grid.height, grid.width, block_size)
    per_block = max(1, -(-pca_samples // n_blocks))
    sample: list[np.ndarray] = []
    c = derived.context
    for window in iter_blocks(grid.height, grid.width, block_size):
        block = scene.read(window, c)
        optical = block.optical[:, c:block.optical.shape[1] - c, c:block.optical.shape[2] - c]
        aux = derive(torch.from_numpy(block.aux), derived).numpy() if c else block.aux
        opt_moments.update(optical)
        aux_moments.update(aux)
        valid = np.flatnonzero(valid_mask(optical))
        if valid.size:
            pick = rng.choice(valid, size=min(per_block, valid.size), replace=False)
            pixels = optical.reshape(optical.shape[0], -1)[:, np.sort(pick)]
            sample.append(pixels.T.astype(np.float64))
    optical_mean, optical_std = opt_moments.mean_std()
    aux_mean, aux_std = aux_moments.mean_std()
    bands = scene.optical.count
    reduced = max(1, min(reduced_bands, bands))
    if sample:
        # Invalid values in single bands enter the PCA as the band mean, as they enter patches.
        z = np.nan_to_num((np.concatenate(sample) - optical_mean) / optical_std, nan=0.0)
    else:  # no valid optical pixel at all: an identity-like PCA keeps shapes consistent
        z = np.zeros((1, bands))
    pca_mean, components, explained = _pca(z, reduced)
    return Preprocessor(optical_mean, optical_std, aux_mean, aux_std, pca_mean.astype(np.float32),
                        components.astype(np.float32), explained.astype(np.float32), derived)


def _pca(z: np.ndarray, reduced: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Principal axes of the rows of ``z`` with a deterministic sign (largest loading positive)."""
    mean = z.mean(axis=0)
    centred = z - mean
    cov = centred.T @ centred / max(len(z) - 1, 1)
    values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:reduced]
    values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    total = values.sum() if values.sum() > 0 else 1.0
    explained = values / max(np.trace(cov), total)
    return mean, vectors.T, explained
