"""What a scene's values look like, and whether a scene looks like the one a model learnt from.

A model normalises with the statistics of its training scene, so a scene stored in another
encoding (reflectance x 10000 against reflectance in 0..1, DN against radiance, dB against
linear backscatter) is classified silently wrong: on the sample scene such a swap agreed with
the right map on 47 % of the pixels. ``s2fin train`` therefore stores a :class:`ValueSummary`
per modality in the model file (dtype and, per band, the 1st, 50th and 99th percentiles of a
seeded sample of blocks), and ``predict`` / ``evaluate -m`` compare the scene's summary with it
before any work: a modality whose bands mostly sit far outside the training range is refused
(:class:`~s2fin_cli.errors.CompatibilityError`, exit 7) unless the user says to go on.

"Far" is generous on purpose (another scene of the same sensor has other land cover): a band is
off when its median lies more than one training range (1-99 %) below or above that range, or when
its own 1-99 % range is over 10 times wider or narrower than the training one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from s2fin_cli import console
from s2fin_cli.errors import CompatibilityError
from s2fin_cli.io.reader import Scene
from s2fin_cli.io.windows import iter_blocks

SAMPLE_BLOCK = 128  # side of the blocks read for a summary
SAMPLE_BLOCKS = 16  # at most this many blocks, spread over the scene (seeded)
PIXELS_PER_BLOCK = 2048  # at most this many valid pixels per block enter the percentiles
SPREAD_RATIO = 10.0  # a band's 1-99 % range may be this many times wider/narrower than trained
OFF_SHARE = 0.5  # a modality is refused when at least this share of its bands is off
SKIP_OPTION = "--skip-value-check"


@dataclass(frozen=True)
class ValueSummary:
    """Per-band 1st, 50th and 99th percentiles of a modality, and its stored dtype."""

    dtype: str
    low: tuple[float, ...]
    median: tuple[float, ...]
    high: tuple[float, ...]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "p01": list(self.low), "p50": list(self.median),
                "p99": list(self.high)}

    @classmethod
    def from_json(cls, data: Any, bands: int) -> ValueSummary:
        if not isinstance(data, dict) or not isinstance(data.get("dtype"), str):
            raise ValueError("bad value summary")
        columns = []
        for key in ("p01", "p50", "p99"):
            values = data.get(key)
            if not isinstance(values, list) or len(values) != bands or not all(
                    isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise ValueError(f"bad value summary column {key}")
            columns.append(tuple(float(v) for v in values))
        return cls(data["dtype"], columns[0], columns[1], columns[2])


def summarize_scene(scene: Scene, *, seed: int = 0
                    ) -> tuple[ValueSummary | None, ValueSummary | None]:
    """The optical and aux summaries of ``scene`` from a seeded sample of blocks (None for a
    modality without one valid pixel). Reads at most :data:`SAMPLE_BLOCKS` blocks."""
    windows = list(iter_blocks(scene.grid.height, scene.grid.width, SAMPLE_BLOCK))
    rng = np.random.default_rng([seed, 0x5CA1E])
    if len(windows) > SAMPLE_BLOCKS:
        pick = np.sort(rng.choice(len(windows), SAMPLE_BLOCKS, replace=False))
        windows = [windows[i] for i in pick]
    optical: list[np.ndarray] = []
    aux: list[np.ndarray] = []
    for window in windows:
        block = scene.read(window)
        for array, out in ((block.optical, optical), (block.aux, aux)):
            pixels = array.reshape(array.shape[0], -1)
            valid = np.flatnonzero(np.isfinite(pixels).any(axis=0))
            if valid.size > PIXELS_PER_BLOCK:
                valid = np.sort(rng.choice(valid, PIXELS_PER_BLOCK, replace=False))
            out.append(pixels[:, valid])
    return (_summary(optical, scene.optical.dtype), _summary(aux, scene.aux.dtype))


def _summary(parts: list[np.ndarray], dtype: str) -> ValueSummary | None:
    if not parts:
        return None
    pixels = np.concatenate(parts, axis=1).astype(np.float64)
    if pixels.shape[1] == 0 or not np.isfinite(pixels).any():
        return None
    with np.errstate(all="ignore"):
        low, median, high = np.nanpercentile(pixels, [1, 50, 99], axis=1)
    # A band without a finite value anywhere in the sample: take 0 (it will not be compared).
    clean = [tuple(float(v) if math.isfinite(v) else 0.0 for v in col)
             for col in (low, median, high)]
    return ValueSummary(dtype, clean[0], clean[1], clean[2])


def bands_off(trained: ValueSummary, seen: ValueSummary) -> list[int]:
    """0-based indexes of the bands of ``seen`` far outside ``trained`` (module docstring)."""
    off = []
    for i, (lo, hi, lo2, med2, hi2) in enumerate(zip(trained.low, trained.high, seen.low,
                                                      seen.median, seen.high, strict=True)):
        width = hi - lo
        if width <= 0:  # a constant band in training: nothing to compare a range with
            continue
        outside = med2 < lo - width or med2 > hi + width
        width2 = hi2 - lo2
        ratio = width2 / width
        if outside or (width2 > 0 and not 1 / SPREAD_RATIO <= ratio <= SPREAD_RATIO):
            off.append(i)
    return off


def check_values(modality: str, trained: ValueSummary | None, seen: ValueSummary | None, *,
                 skip: bool = False) -> None:
    """Refuse (or with ``skip`` warn about) a modality whose values do not look like the
    training data's; a note when only some bands are off."""
    if trained is None or seen is None or len(trained.low) != len(seen.low):
        return
    off = bands_off(trained, seen)
    if not off:
        return
    i = off[0]
    example = (f"band {i + 1}: median {seen.median[i]:.4g} here, {trained.median[i]:.4g} in "
               f"training (1-99 %: {trained.low[i]:.4g}..{trained.high[i]:.4g})")
    stored = (f"; stored as {seen.dtype}, the training data as {trained.dtype}"
              if seen.dtype != trained.dtype else "")
    message = (f"the scene's {modality} values do not look like the training data's: "
               f"{len(off)} of {len(trained.low)} band(s) far outside the training range "
               f"({example}{stored})")
    if len(off) < OFF_SHARE * len(trained.low):
        console.warn(message)
        return
    if skip:
        console.warn(f"{message}; classifying anyway ({SKIP_OPTION})")
        return
    raise CompatibilityError(message, hint="rescale the scene to the training data's units "
                             f"(e.g. reflectance x 10000 vs 0..1), or pass {SKIP_OPTION}")


__all__ = [
    "SKIP_OPTION",
    "ValueSummary",
    "bands_off",
    "check_values",
    "summarize_scene",
]
