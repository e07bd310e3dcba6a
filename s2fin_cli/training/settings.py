"""What ``s2fin train`` can be asked: optimisation settings and network options, with their
defaults and range checks. The one home of the CLI's defaults (the CLI, the model file's
provenance and ``bench/`` read them from here).

:class:`NetworkOptions` builds the :class:`models.S2FinConfig` of a scene; the library's own
``S2FinConfig`` defaults describe the paper-sized network, the CLI's are smaller so that CPU
training takes minutes (README: ``--dim 80 --depth 2`` is the paper size).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from models import S2FinConfig
from models.config import STEM_NORMS
from s2fin_cli.errors import ConfigError
from s2fin_cli.preprocessing import DerivedInputs

# Seeds feed numpy (non-negative) and torch (64-bit) generators: 0 .. 2**63 - 1 fits both.
MAX_SEED = (1 << 63) - 1
# The modules an ablation can switch off: the names of S2FinConfig's ``use_*`` switches.
ABLATIONS = tuple(f.name.removeprefix("use_") for f in fields(S2FinConfig)
                  if f.name.startswith("use_"))


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings (everything that changes the weights besides data and network)."""

    # Limited-label recipe (docs/benchmarks.md, "recipe elements"): at least the step floor
    # whatever the labels (N = 10 labels of 11 classes: 198 steps), 45 epochs when there are
    # more (the sample scene's 330 labels: 495 steps; over its seeds 0-4 test OA 81.81 % on
    # average with 30 epochs, 83.94 % with 45, higher on every seed; at N = 20 on the generated
    # scenes 45 epochs were level with 30: docs/network.md, "Epochs"), AdamW with warm-up +
    # cosine, flips/rotations and radiometric augmentation.
    epochs: int = 45
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: int = 3
    # Validation sets of limited-label runs are small and noisy: on the sample scene patience 15
    # stopped at epoch 26 (best 11, test OA 77.3 %) where the same run went on to a best epoch 31
    # (test OA 84.2 %, found with --patience 60). 25 still reaches that epoch.
    patience: int = 25
    seed: int = 0
    label_smoothing: float = 0.1
    grad_clip: float = 1.0
    augment: bool = True
    # A floor on optimiser steps that does not shrink with the number of labels: a run lasts
    # max(epochs, ceil(floor / batches per epoch)) epochs. None: STEPS_PER_CLASS steps per
    # class trained (11 classes: 198 steps; 2 classes: 36); a number is the floor itself (0:
    # epochs only).
    min_steps: int | None = None
    # Radiometric augmentation of the optical inputs (beside flips/rotations): a per-sample gain
    # ~U(1 - gain_jitter, 1 + gain_jitter) and Gaussian noise of this std (z-score units), as
    # HyMuT's "radiation noise" (U(0.9, 1.1), N(0, 1) / 25).
    gain_jitter: float = 0.1
    spectral_noise: float = 0.04
    # A per-sample gain ~U(1 - height_jitter, 1 + height_jitter) on the height above ground, in
    # metres (0 = off): a few labelled roofs or crowns otherwise teach their own heights. Urban
    # scene, 3 seeds x N = 5/10/20: +2.59 OA, +4.76 AA (docs/network.md, "Height gains").
    height_jitter: float = 0.3
    # Context mixing: the probability that a training patch's surroundings (all but the centre
    # 3 x 3 pixels of the spatial and active patches) are those of another training sample.
    context_mix: float = 0.0
    # Self-training (--semi): after the fit, up to this many pseudo-labels per class (a
    # multiple of the class's training labels; 0 = off) from confident predictions at
    # unlabelled pixels, and a second fit on labels + pseudo-labels (training/pseudo.py).
    self_training: float = 0.0
    pseudo_threshold: float = 0.9
    # Consistency training on unlabelled pixels (--consistency W; 0 = off;
    # training/consistency.py): every step also trains strong views of as many unlabelled
    # patches as it has labelled ones on the confident classes of weak views, with weight W
    # ramped up over the first consistency_ramp of the steps; strong views: a flip/rotation, a
    # gain of ±strong_gain and noise of std strong_noise on the optical inputs. The weak views
    # are classified by a weight average of the network (decay consistency_teacher; 0: the
    # network itself). On by default: over docs/benchmarks.md's 45 runs it raised OA by 3.09
    # points (32 runs up), kappa by 3.95, AA by -0.27, and S²Fin led every baseline in 10 of
    # 15 (scene, N) cells instead of 8; training takes ~1.75x as long (docs/network.md,
    # "Consistency training on unlabelled pixels").
    consistency: float = 1.0
    # How confident a weak prediction must be to train, as a fraction of the way from chance
    # (1 / classes) to the most a network trained with label_smoothing predicts
    # (1 - label_smoothing + label_smoothing / classes): 0.8667 is a probability of 0.80 with
    # 11 classes and 0.89 with 2 (confidence_cut). One probability for every scene (0.8)
    # trained two-class Sen1Floods11 on uncertain water/land edges: OA against no consistency
    # training -1.34 / -0.00 / -0.63 points at N = 5 / 10 / 20, with this cut +0.22 / +0.95 /
    # -0.57.
    consistency_threshold: float = 0.8667
    consistency_teacher: float = 0.99
    consistency_ramp: float = 0.5
    # Class-adaptive thresholds (--class-thresholds, FlexMatch): each class's threshold is
    # the confidence cut scaled by how much of the pool the network already gives that
    # class with confidence, so the classes it has not learnt yet still get targets. Off by
    # default: on eo-learn (4 classes, one covering 76 %) AA fared better than with one
    # threshold at every N and OA rose more at N = 5 and 10; on urban and agricultural (11
    # classes each) and the sample scene both fell. On top of the teacher and the scaled cut
    # urban and agricultural still lose 0.8-10 points (-2.38 OA over the benchmark's 45 runs;
    # docs/network.md, "Consistency training on unlabelled pixels").
    consistency_adaptive: bool = False
    # Cap each class's unlabelled weight at its share of a class-balanced batch (1 / classes of
    # the drawn patches): a class that covers most of the scene cannot swamp the others.
    consistency_balance: bool = False
    strong_gain: float = 0.3
    strong_noise: float = 0.15

    # The ratio ``--semi`` sets (``--no-semi``: 0).
    SEMI_RATIO = 2.0
    # Unlabelled pixels cut for consistency training (their patches stay in memory: ~90 MB
    # with 64 bands and the default geometry).
    CONSISTENCY_POOL = 4096
    # The default floor per class. Few classes need fewer steps: a flat 200 showed each of
    # Sen1Floods11's 20 labels (2 classes, N = 10) 320 times and scored 2.5 points of OA below
    # 36 steps, over 9 runs (docs/network.md, "A step floor per class").
    STEPS_PER_CLASS = 18
    # Exponential moving average of the weights (decay per step; 0: off): the averaged weights
    # are validated, selected and written.
    ema: float = 0.0

    def step_floor(self, classes: int) -> int:
        """The fewest optimiser steps of a run that trains ``classes`` classes."""
        if self.min_steps is None:
            return self.STEPS_PER_CLASS * max(classes, 1)
        return self.min_steps

    def describe_schedule(self) -> str:
        """The schedule in words: ``max(45 epochs, 18 steps per class)``."""
        if self.min_steps is None:
            return f"max({self.epochs} epochs, {self.STEPS_PER_CLASS} steps per class)"
        if self.min_steps:
            return f"max({self.epochs} epochs, {self.min_steps} steps)"
        return f"{self.epochs} epochs"

    def epochs_for(self, steps_per_epoch: int, classes: int) -> int:
        """Epochs a run lasts when an epoch is ``steps_per_epoch`` optimiser steps over
        samples of ``classes`` classes."""
        floor = -(-self.step_floor(classes) // max(steps_per_epoch, 1))
        return max(self.epochs, floor)

    def confidence_cut(self, classes: int) -> float:
        """The probability a weak prediction among ``classes`` classes needs to train
        (``consistency_threshold`` of the way from chance to the label-smoothed ceiling)."""
        chance = 1.0 / max(classes, 1)
        return chance + self.consistency_threshold * (1.0 - self.label_smoothing) * (1.0 - chance)

    def validate(self) -> None:
        checks = [
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.batch_size >= 2, f"--batch-size must be >= 2, got {self.batch_size}"),
            (math.isfinite(self.lr) and self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.patience >= 1, f"--patience must be >= 1, got {self.patience}"),
            (0.0 <= self.label_smoothing < 1.0, "label smoothing must be in [0, 1)"),
            (0 <= self.seed <= MAX_SEED, f"--seed must be in 0..{MAX_SEED}, got {self.seed}"),
            (self.min_steps is None or self.min_steps >= 0,
             f"--min-steps must be >= 0, got {self.min_steps}"),
            (0.0 <= self.gain_jitter < 1.0, "the gain jitter must be in [0, 1)"),
            (0.0 <= self.height_jitter < 1.0, "the height jitter must be in [0, 1)"),
            (math.isfinite(self.spectral_noise) and self.spectral_noise >= 0,
             "the spectral noise must be >= 0"),
            (0.0 <= self.ema < 1.0, f"--ema must be in [0, 1), got {self.ema}"),
            (0.0 <= self.context_mix <= 1.0, "the context mixing probability must be in [0, 1]"),
            (math.isfinite(self.self_training) and self.self_training >= 0,
             "the self-training ratio must be >= 0"),
            (0.0 <= self.pseudo_threshold <= 1.0, "the pseudo-label threshold must be in [0, 1]"),
            (math.isfinite(self.consistency) and self.consistency >= 0,
             f"--consistency must be >= 0, got {self.consistency}"),
            (0.0 <= self.consistency_threshold <= 1.0,
             "the consistency threshold must be in [0, 1]"),
            (0.0 <= self.consistency_ramp <= 1.0, "the consistency ramp must be in [0, 1]"),
            (0.0 <= self.consistency_teacher < 1.0,
             "the consistency teacher's decay must be in [0, 1)"),
            (0.0 <= self.strong_gain < 1.0, "the strong views' gain jitter must be in [0, 1)"),
            (math.isfinite(self.strong_noise) and self.strong_noise >= 0,
             "the strong views' noise must be >= 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def to_json(self) -> dict[str, Any]:
        # The per-class floor is part of the recipe: a checkpoint's fingerprint and a model
        # file's provenance record it.
        return {**asdict(self), "steps_per_class": self.STEPS_PER_CLASS}


@dataclass(frozen=True)
class NetworkOptions:
    """The network options of ``s2fin train`` (patch geometry, PCA, widths, ablations).

    Defaults chosen so the bundled sample scene trains in minutes on a 2-core CPU (README).
    """

    patch_size: int = 11
    spectral_window: int = 5
    pca: int = 30
    dim: int = 32
    heads: int = 4
    depth: int = 1
    dropout: float = 0.1
    ablate: tuple[str, ...] = ()
    # No per-patch normalisation in the stems: GroupNorm over a patch removed its absolute level
    # (height, backscatter, brightness); the inputs are z-scored once per scene already.
    optical_stem_norm: str = "none"
    active_stem_norm: str = "none"
    # Height above ground derived from the LiDAR DSM over this window, in the DSM's place
    # (odd, pixels; 0 = off: the DSM itself).
    height_window: int = 31
    # Local means of the SAR bands over this window as extra inputs (odd, pixels; 0 = off).
    sar_window: int = 0

    def validate(self) -> None:
        """The option errors of :meth:`build_config`, before any data is read."""
        if self.pca < 1:
            raise ConfigError(f"--pca must be >= 1, got {self.pca}")
        self.derived_inputs("lidar")
        self.build_config(8, 1, 1, 2)

    def derived_inputs(self, aux_kind: str) -> DerivedInputs:
        """The inputs derived from the auxiliary raster of ``aux_kind`` (LiDAR: the height above
        ground; SAR: local means)."""
        try:
            DerivedInputs(self.height_window, self.sar_window)
        except ValueError as exc:
            raise ConfigError(f"derived inputs: {exc}") from None
        if aux_kind == "lidar":
            return DerivedInputs(height_window=self.height_window)
        return DerivedInputs(sar_window=self.sar_window)

    def build_config(self, bands: int, reduced: int, aux: int, classes: int) -> S2FinConfig:
        """The network for ``bands`` optical bands (``reduced`` after PCA), ``aux`` LiDAR/SAR
        bands and ``classes`` outputs; :class:`ConfigError` names a bad option."""
        p, s = self.patch_size, self.spectral_window
        if p % 2 == 0 or not 7 <= p <= 15:
            raise ConfigError(f"--patch-size must be odd and in 7..15, got {p}")
        if s % 2 == 0 or not 1 <= s <= p:
            raise ConfigError(f"--spectral-window must be odd and in 1..{p}, got {s}")
        if self.dim < 4 or self.dim % self.heads:
            raise ConfigError(f"--dim ({self.dim}) must be >= 4 and divisible by the "
                              f"{self.heads} attention heads")
        if self.depth < 1:
            raise ConfigError(f"--depth must be >= 1, got {self.depth}")
        try:
            return S2FinConfig(
                bands=bands, reduced_bands=reduced, active_bands=aux, num_classes=classes,
                patch_size=p, spectral_window=s, dim=self.dim, heads=self.heads,
                hfset_depth=self.depth, spatial_depth=self.depth,
                long_range_depth=self.depth, dropout=self.dropout,
                optical_stem_norm=self.optical_stem_norm,
                active_stem_norm=self.active_stem_norm,
                ssm_heads=math.gcd(S2FinConfig.ssm_heads, S2FinConfig.ssm_expand * self.dim),
                **{f"use_{name}": False for name in self.ablate},
            )
        except ValueError as exc:
            raise ConfigError(f"invalid network settings: {exc}") from None

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run must share with the checkpoint (PCA is fingerprinted apart)."""
        return {"patch_size": self.patch_size, "dim": self.dim, "heads": self.heads,
                "depth": self.depth, "spectral_window": self.spectral_window,
                "dropout": self.dropout, "ablate": list(self.ablate),
                "optical_stem_norm": self.optical_stem_norm,
                "active_stem_norm": self.active_stem_norm, "height_window": self.height_window,
                "sar_window": self.sar_window}

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ablate": list(self.ablate)}


def parse_ablate(text: str | None) -> tuple[str, ...]:
    """``hfset,afcm`` -> ("hfset", "afcm"); names of S2FinConfig ``use_*`` switches."""
    if not text:
        return ()
    names = [t.strip().lower().replace("-", "_") for t in text.split(",") if t.strip()]
    bad = [n for n in names if n not in ABLATIONS]
    if bad:
        raise ConfigError(f"--ablate: unknown module(s) {', '.join(bad)}",
                          hint=f"choose from {', '.join(ABLATIONS)}")
    return tuple(dict.fromkeys(names))


def parse_stem_norm(text: str | None) -> tuple[str, str]:
    """``--stem-norm``: one normalisation for both stems, or ``OPTICAL,ACTIVE``; None: the
    defaults of :class:`NetworkOptions`."""
    if not text:
        return NetworkOptions.optical_stem_norm, NetworkOptions.active_stem_norm
    names = [t.strip().lower() for t in text.split(",")]
    if len(names) == 1:
        names = names * 2
    bad = [n for n in names if n not in STEM_NORMS]
    if len(names) != 2 or bad:
        raise ConfigError(f"--stem-norm {text!r}: give one of {', '.join(STEM_NORMS)}, or two "
                          "separated by a comma (optical, active)")
    return names[0], names[1]


__all__ = ["ABLATIONS", "MAX_SEED", "NetworkOptions", "TrainSettings", "parse_ablate",
           "parse_stem_norm"]
