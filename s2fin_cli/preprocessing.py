"""Normalisation and PCA, fitted once on the training scene and stored in the model file.

Fitting streams the scene block by block (memory follows the block): per-band mean and standard
deviation from float64 sums of valid values, and a PCA of the z-scored optical bands from a seeded
sample of valid pixels. Applying it never refits anything: a scene is always seen through the
statistics of the scene the model was trained on, so maps of different scenes are comparable.

Invalid values (NaN from the reader) are replaced by 0 after z-scoring, i.e. by the training mean:
they never enter statistics, and they enter patches as the most neutral value there is.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from s2fin_cli.io.reader import Scene, valid_mask
from s2fin_cli.io.windows import block_count, iter_blocks

# A band whose spread is below this (after scaling) is treated as constant: divided by 1.
_MIN_STD = 1e-6


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

    @property
    def bands(self) -> int:
        return int(self.optical_mean.shape[0])

    @property
    def aux_bands(self) -> int:
        return int(self.aux_mean.shape[0])

    @property
    def reduced_bands(self) -> int:
        return int(self.pca_components.shape[0])

    def tensors(self) -> dict[str, Tensor]:
        """The arrays as float32 tensors, named for the model file."""
        return {name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), np.float32))
                for name in _FIELDS}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> Preprocessor:
        """Rebuild from :meth:`tensors`; raises ValueError when shapes do not fit together."""
        missing = [n for n in _FIELDS if n not in tensors]
        if missing:
            raise ValueError(f"preprocessing tensors missing: {', '.join(missing)}")
        arrays = {n: tensors[n].detach().cpu().numpy().astype(np.float32) for n in _FIELDS}
        pre = cls(**arrays)
        b, a, r = pre.bands, pre.aux_bands, pre.reduced_bands
        shapes_ok = (
            pre.optical_std.shape == (b,) and pre.aux_std.shape == (a,)
            and pre.pca_mean.shape == (b,) and pre.pca_components.shape == (r, b)
            and pre.pca_explained.shape == (r,)
        )
        if not shapes_ok:
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
        t = {k: v.to(device) for k, v in pre.tensors().items()}
        self.optical_mean = t["optical_mean"][:, None, None]
        self.optical_std = t["optical_std"][:, None, None]
        self.aux_mean = t["aux_mean"][:, None, None]
        self.aux_std = t["aux_std"][:, None, None]
        self.pca_mean = t["pca_mean"][:, None, None]
        self.pca_components = t["pca_components"]

    def __call__(self, optical: Tensor, aux: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(bands, H, W) and (aux, H, W) raw float32 with NaN → z-scored optical, PCA, aux."""
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
) -> Preprocessor:
    """Stream ``scene`` once: band statistics of both modalities and a PCA sample of pixels.

    ``reduced_bands`` is capped at the number of optical bands.
    """
    grid = scene.grid
    opt_moments = _RunningMoments(scene.optical.count)
    aux_moments = _RunningMoments(scene.aux.count)
    rng = np.random.default_rng(seed)
    n_blocks = block_count(grid.height, grid.width, block_size)
    per_block = max(1, -(-pca_samples // n_blocks))
    sample: list[np.ndarray] = []
    for window in iter_blocks(grid.height, grid.width, block_size):
        block = scene.read(window)
        opt_moments.update(block.optical)
        aux_moments.update(block.aux)
        valid = np.flatnonzero(valid_mask(block.optical))
        if valid.size:
            pick = rng.choice(valid, size=min(per_block, valid.size), replace=False)
            pixels = block.optical.reshape(block.optical.shape[0], -1)[:, np.sort(pick)]
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
                        components.astype(np.float32), explained.astype(np.float32))


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
