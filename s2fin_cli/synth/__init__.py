"""Synthetic co-registered optical + LiDAR/SAR scenes with ground truth (``s2fin synth``).

>>> from s2fin_cli.synth import SynthConfig, generate_scene, write_scene
>>> scene = generate_scene(SynthConfig.for_preset("urban", size=128, bands=48, seed=3))
>>> paths = write_scene(scene, "out/urban")          # doctest: +SKIP

Modules: ``config`` (settings, presets, class catalogues), ``layout`` (terrain, roads, parcels,
objects), ``spectra`` (band sets, material spectra), ``sensors`` (optical imager, LiDAR, SAR),
``labels`` (ground truth and the train/test protocol), ``scene`` (``generate_scene``),
``writing`` (``write_scene``).
"""

from s2fin_cli.synth.config import PRESETS, ClassSpec, SynthConfig
from s2fin_cli.synth.scene import SynthScene, describe, generate_scene
from s2fin_cli.synth.writing import optical_array, scene_file_names, write_scene

__all__ = [
    "PRESETS",
    "ClassSpec",
    "SynthConfig",
    "SynthScene",
    "describe",
    "generate_scene",
    "optical_array",
    "scene_file_names",
    "write_scene",
]
