"""Training inputs cut on the fly from the scene: no pre-extracted patches on disk.

Blocks of the scene that hold samples are read with a halo of ``patch_size // 2`` (plus the
preprocessing's context for derived inputs; reflect padded at scene borders), preprocessed on
the device with the model's statistics and PCA (which crop the context off), and the three
network inputs are cut around the samples with :func:`s2fin_cli.patches.cut_inputs`. Training
keeps the per-sample inputs in memory (memory ~ samples, never the scene); prediction at labelled
pixels (validation, test) consumes them block by block instead.

Augmentation happens at batch time: a random flip and a random multiple of 90° per sample,
applied identically to the spectral, spatial and active patches, and optionally a radiometric
change of the optical inputs (a per-sample gain and Gaussian noise, :func:`radiometric_draws`),
all from a generator seeded per epoch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from s2fin_cli.io.reader import Scene
from s2fin_cli.patches import PatchGeometry, cut_inputs
from s2fin_cli.preprocessing import Preprocessor
from s2fin_cli.sampling import SAMPLE_READ_BLOCK, Samples, group_by_block


@dataclass
class PatchBatch:
    """Network inputs for some samples: ``index`` says which (positions in the sample set)."""

    index: np.ndarray
    spectral: Tensor  # (N, bands, s, s)
    spatial: Tensor  # (N, reduced, p, p)
    active: Tensor  # (N, aux, p, p)

    def __len__(self) -> int:
        return int(self.index.size)


def iter_sample_inputs(
    scene: Scene,
    samples: Samples,
    preprocessor: Preprocessor,
    geometry: PatchGeometry,
    device: torch.device,
    *,
    block_size: int = SAMPLE_READ_BLOCK,
    chunk: int = 4096,
) -> Iterator[PatchBatch]:
    """Inputs of every sample, block by block (at most ``chunk`` samples per batch), on ``device``.

    Only blocks holding samples are read, with the patch halo plus the preprocessing's context
    (derived inputs); each is preprocessed once on the device, which crops the context off.
    """
    prep = preprocessor.device_tensors(device)
    halo = geometry.halo
    for window, index in group_by_block(samples, block_size, scene.grid.shape):
        block = scene.read(window, halo + preprocessor.context)
        optical = torch.from_numpy(block.optical).to(device)
        aux = torch.from_numpy(block.aux).to(device)
        z_opt, reduced, z_aux = prep(optical, aux)
        rows = torch.from_numpy(samples.rows[index] - int(window.row_off) + halo)
        cols = torch.from_numpy(samples.cols[index] - int(window.col_off) + halo)
        for start in range(0, index.size, chunk):
            part = slice(start, start + chunk)
            spectral, spatial, active = cut_inputs(z_opt, reduced, z_aux, rows[part], cols[part],
                                                   geometry)
            yield PatchBatch(index[part], spectral, spatial, active)


@dataclass(frozen=True)
class HeightChannel:
    """The height above ground in the active input: its channel and z-score statistics (metres),
    so that augmentation can change heights in metres (:func:`scale_heights`)."""

    index: int
    mean: float
    std: float


@dataclass
class PatchSet:
    """The network inputs of every training (or validation) sample, in sample order, in memory."""

    spectral: Tensor
    spatial: Tensor
    active: Tensor
    targets: Tensor  # (N,) int64 output index (position in the class table)
    height: HeightChannel | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    @property
    def class_count(self) -> int:
        """Classes with at least one sample here."""
        return int(torch.unique(self.targets).numel())

    @property
    def nbytes(self) -> int:
        return sum(t.element_size() * t.nelement()
                   for t in (self.spectral, self.spatial, self.active, self.targets))

    def batch(self, index: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.spectral[index], self.spatial[index], self.active[index],
                self.targets[index])


def class_indexes(samples: Samples, class_ids: list[int]) -> np.ndarray:
    """Output index (position in the class table) of every sample's class id."""
    lut = np.full(max(class_ids) + 1, -1, np.int64)
    lut[np.asarray(class_ids)] = np.arange(len(class_ids))
    out = lut[samples.classes]
    if (out < 0).any():
        raise ValueError("samples hold class ids outside the class table")
    return out


def extract_patch_set(
    scene: Scene,
    samples: Samples,
    preprocessor: Preprocessor,
    geometry: PatchGeometry,
    class_ids: list[int],
    device: torch.device,
    *,
    storage: torch.device | None = None,
    block_size: int = SAMPLE_READ_BLOCK,
) -> PatchSet:
    """Cut the inputs of ``samples`` (computed on ``device``, kept on ``storage``, CPU default)."""
    storage = storage or torch.device("cpu")
    n = len(samples)
    s, p = geometry.spectral_window, geometry.patch_size
    spectral = torch.zeros((n, preprocessor.bands, s, s), dtype=torch.float32, device=storage)
    spatial = torch.zeros((n, preprocessor.reduced_bands, p, p), dtype=torch.float32,
                          device=storage)
    active = torch.zeros((n, preprocessor.aux_bands, p, p), dtype=torch.float32, device=storage)
    for part in iter_sample_inputs(scene, samples, preprocessor, geometry, device,
                                   block_size=block_size):
        idx = torch.from_numpy(part.index).to(storage)
        spectral[idx] = part.spectral.to(storage)
        spatial[idx] = part.spatial.to(storage)
        active[idx] = part.active.to(storage)
    targets = torch.from_numpy(class_indexes(samples, class_ids)).to(storage)
    at = preprocessor.height_channel
    height = None if at is None else HeightChannel(at, float(preprocessor.aux_mean[at]),
                                                   float(preprocessor.aux_std[at]))
    return PatchSet(spectral, spatial, active, targets, height)


def augment_choices(n: int, generator: torch.Generator) -> Tensor:
    """The transform (0..7) of each of ``n`` samples: the one draw :func:`augment` makes."""
    return torch.randint(0, 8, (n,), generator=generator)


def augment(spectral: Tensor, spatial: Tensor, active: Tensor, generator: torch.Generator, *,
            choice: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """A random flip and 90° rotation per sample, the same one for all three inputs.

    Eight dihedral transforms; samples are grouped by transform so each group is one tensor op.
    ``generator`` lives on the CPU; the draws do not depend on the inputs' device. ``choice``
    (from :func:`augment_choices`) gives the transforms instead of drawing them: distributed
    training draws them for a whole global batch and each rank applies its share.
    """
    n = spectral.shape[0]
    if choice is None:
        choice = augment_choices(n, generator)
    elif choice.shape != (n,):
        raise ValueError(f"choice holds {tuple(choice.shape)} transforms for {n} samples")
    outs = [spectral.clone(), spatial.clone(), active.clone()]
    for t in range(1, 8):
        sel = torch.nonzero(choice == t).flatten()
        if sel.numel() == 0:
            continue
        sel = sel.to(spectral.device)
        k, flip = t % 4, t >= 4
        for out, src in zip(outs, (spectral, spatial, active), strict=True):
            x = src[sel]
            if flip:
                x = torch.flip(x, dims=(-1,))
            if k:
                x = torch.rot90(x, k, dims=(-2, -1))
            out[sel] = x
    return outs[0], outs[1], outs[2]


@dataclass(frozen=True)
class Radiometric:
    """Radiometric changes of a batch's optical inputs: per-sample gains and additive noise.

    Inputs are z-scored (spectral) and PCA of z-scored bands (spatial, an orthonormal
    projection), so a gain on the spectrum is the same gain on its components and white noise
    of std sigma on the bands is white noise of std sigma on the components (as in HyMuT's
    "radiation noise" on z-scored data). The active (LiDAR/SAR) patch is left unchanged.
    """

    gains: Tensor  # (N,)
    spectral_noise: Tensor | None  # (N, bands, s, s)
    spatial_noise: Tensor | None  # (N, reduced, p, p)

    def subset(self, index: Tensor) -> Radiometric:
        return Radiometric(self.gains[index],
                           None if self.spectral_noise is None else self.spectral_noise[index],
                           None if self.spatial_noise is None else self.spatial_noise[index])

    def apply(self, spectral: Tensor, spatial: Tensor) -> tuple[Tensor, Tensor]:
        g = self.gains.to(spectral.device)[:, None, None, None]
        spectral, spatial = spectral * g, spatial * g
        if self.spectral_noise is not None and self.spatial_noise is not None:
            spectral = spectral + self.spectral_noise.to(spectral.device)
            spatial = spatial + self.spatial_noise.to(spatial.device)
        return spectral, spatial


def uniform_gains(n: int, generator: torch.Generator, jitter: float) -> Tensor:
    """Per-sample gains ~U(1 - jitter, 1 + jitter) (radiometric and height gains)."""
    return 1.0 + jitter * (2.0 * torch.rand(n, generator=generator) - 1.0)


def radiometric_draws(n: int, spectral_shape: tuple[int, ...], spatial_shape: tuple[int, ...],
                      generator: torch.Generator, gain_jitter: float,
                      noise: float) -> Radiometric:
    """The draws of :class:`Radiometric` for ``n`` samples (on the CPU, from ``generator``):
    gains ~U(1 - gain_jitter, 1 + gain_jitter), noise ~N(0, noise^2) (none when 0)."""
    gains = uniform_gains(n, generator, gain_jitter)
    if noise <= 0:
        return Radiometric(gains, None, None)
    spectral = noise * torch.randn((n, *spectral_shape), generator=generator)
    spatial = noise * torch.randn((n, *spatial_shape), generator=generator)
    return Radiometric(gains, spectral, spatial)


def scale_heights(active: Tensor, height: HeightChannel, gains: Tensor) -> Tensor:
    """``active`` with each sample's height above ground multiplied by its gain, in metres:
    z' = g z + (g - 1) mean / std. Ground (height 0) stays ground; a 10 m roof labelled once
    also trains as an 8 or 12 m one, so a network does not learn the labelled objects'
    heights as their class."""
    g = gains.to(active.device, active.dtype)[:, None, None]
    out = active.clone()
    out[:, height.index] = g * active[:, height.index] + (g - 1) * (height.mean / height.std)
    return out


# Context mixing keeps the centre (2 * CONTEXT_KEEP + 1) pixels square of a patch.
CONTEXT_KEEP = 1


def context_draws(n: int, n_donors: int, probability: float,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Which of ``n`` samples get another sample's context (bool), and whose (donor indexes)."""
    mixed = torch.rand(n, generator=generator) < probability
    donor = torch.randint(0, n_donors, (n,), generator=generator)
    return mixed, donor


def mix_context(spatial: Tensor, active: Tensor, donors: PatchSet, mixed: Tensor,
                donor: Tensor) -> tuple[Tensor, Tensor]:
    """The spatial and active patches with everything outside the centre square replaced, where
    ``mixed``, by the patches of training sample ``donor``: the label stays the centre's, so the
    network learns to classify the centre whatever surrounds it (few labelled objects otherwise
    teach it their surroundings)."""
    sel = torch.nonzero(mixed).flatten()
    if sel.numel() == 0:
        return spatial, active
    p = spatial.shape[-1]
    lo, hi = p // 2 - CONTEXT_KEEP, p // 2 + CONTEXT_KEEP + 1
    ring = torch.ones(p, p, dtype=torch.bool)
    ring[lo:hi, lo:hi] = False
    ring = ring.to(spatial.device)
    outs = []
    for x, bank in ((spatial, donors.spatial), (active, donors.active)):
        x = x.clone()
        other = bank[donor[sel].to(bank.device)].to(x.device)
        x[sel] = torch.where(ring, other, x[sel])
        outs.append(x)
    return outs[0], outs[1]


def epoch_batches(n: int, batch_size: int, generator: torch.Generator, *, shuffle: bool = True
                  ) -> list[Tensor]:
    """Index batches for one epoch; a trailing batch of one sample joins the previous batch
    (batch statistics of a single sample are undefined)."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = list(torch.split(order, batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1:
        batches[-2] = torch.cat([batches[-2], batches[-1]])
        batches.pop()
    return batches


def rank_share(batch: Tensor, rank: int, world_size: int) -> Tensor:
    """Positions (in ``batch``) of the samples one rank trains on: every ``world_size``-th one
    from ``rank``, as torch's DistributedSampler deals them. May be empty when the batch holds
    fewer samples than there are ranks (an epoch's small last batch)."""
    # torch.arange refuses a start past the end: ranks beyond the batch get nothing
    return torch.arange(rank, max(rank, int(batch.numel())), world_size)
