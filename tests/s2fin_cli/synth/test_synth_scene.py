"""generate_scene: determinism, classes, the train/test protocol, sensors, config checks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from s2fin_cli.errors import ConfigError
from s2fin_cli.synth import PRESETS, SynthConfig, SynthScene, generate_scene
from s2fin_cli.synth.spectra import SENTINEL2_BANDS

ARRAYS = ("optical", "active", "ground_truth", "train_labels", "test_labels", "objects", "dem")


def small(preset: str, **kw: object) -> SynthConfig:
    defaults: dict[str, object] = {"size": 72, "seed": 1}
    if preset != "msi-sar":
        defaults["bands"] = 32
    defaults.update(kw)
    return SynthConfig.for_preset(preset, **defaults)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def scenes() -> dict[str, SynthScene]:
    return {p: generate_scene(small(p)) for p in PRESETS}


def test_same_seed_gives_identical_arrays() -> None:
    cfg = small("agricultural", size=56, seed=7)
    a, b = generate_scene(cfg), generate_scene(cfg)
    for name in ARRAYS:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name


def test_different_seed_gives_different_arrays(scenes: dict[str, SynthScene]) -> None:
    other = generate_scene(small("urban", seed=2))
    base = scenes["urban"]
    for name in ("optical", "active", "ground_truth", "train_labels"):
        assert not np.array_equal(getattr(base, name), getattr(other, name)), name


@pytest.mark.parametrize("preset", PRESETS)
def test_every_class_in_ground_truth_train_and_test(scenes: dict[str, SynthScene],
                                                    preset: str) -> None:
    scene = scenes[preset]
    ids = set(scene.classes.ids)
    assert 8 <= len(ids) <= 12
    assert set(np.unique(scene.ground_truth)) == ids  # full map: no 0 without a nodata edge
    assert set(np.unique(scene.train_labels)) - {0} == ids
    assert set(np.unique(scene.test_labels)) - {0} == ids
    for lab in (scene.ground_truth, scene.train_labels, scene.test_labels):
        assert lab.dtype == np.uint8 and lab.shape == scene.grid.shape


@pytest.mark.parametrize("preset", PRESETS)
def test_train_and_test_are_disjoint_and_separated(scenes: dict[str, SynthScene],
                                                   preset: str) -> None:
    scene = scenes[preset]
    train, test = scene.train_labels, scene.test_labels
    assert not ((train > 0) & (test > 0)).any()
    # Labels agree with the ground truth.
    assert (train[train > 0] == scene.ground_truth[train > 0]).all()
    assert (test[test > 0] == scene.ground_truth[test > 0]).all()
    counts = np.bincount(train.ravel(), minlength=scene.classes.max_id + 1)[1:]
    assert counts.max() <= scene.config.train_per_class
    # No test pixel within the buffer of a training pixel (unless relaxed for that class).
    b = scene.config.label_buffer
    near = ndimage.binary_dilation(train > 0, np.ones((2 * b + 1, 2 * b + 1), bool))
    strict = ~np.isin(test, scene.label_report.relaxed)
    assert not (near & (test > 0) & strict).any()
    assert test[test > 0].size > 2 * train[train > 0].size  # sparse train, denser test


def test_train_per_class_is_respected() -> None:
    scene = generate_scene(small("urban", size=64, train_per_class=5))
    counts = np.bincount(scene.train_labels.ravel(), minlength=12)[1:]
    assert (counts == 5).all()


def test_grid_and_bands(scenes: dict[str, SynthScene]) -> None:
    urban = scenes["urban"]
    assert urban.grid.crs is not None and urban.grid.crs.to_epsg() == 32632
    assert urban.grid.resolution == (1.0, 1.0)
    assert urban.optical.shape == (32, 72, 72) and urban.optical.dtype == np.float32
    assert 400 < urban.wavelengths.min() and urban.wavelengths.max() < 1000
    assert urban.bands.descriptions()[11].startswith("b012 ")
    assert urban.bands.descriptions()[11].endswith(" nm")
    assert urban.active_names == ["DSM (m)", "intensity"]
    agri = scenes["agricultural"]
    assert agri.wavelengths.max() > 2300
    assert agri.active_names == ["VV (dB)", "VH (dB)"]
    msi = scenes["msi-sar"]
    assert msi.grid.resolution == (10.0, 10.0)
    assert list(msi.bands.names) == [b[0] for b in SENTINEL2_BANDS if b[0] != "B10"]


def test_value_ranges(scenes: dict[str, SynthScene]) -> None:
    urban = scenes["urban"]
    refl = urban.optical
    assert np.isfinite(refl).all()
    assert 0.0 < np.median(refl) < 0.5 and np.percentile(refl, 99.9) < 1.0
    dsm = urban.active[0]
    assert 400 < dsm.min() and dsm.max() - dsm.min() < 60  # metres: terrain + buildings/trees
    # Roofs stand above roads.
    roof = urban.ground_truth == urban.config.class_id("roof_bitumen")
    road = urban.ground_truth == urban.config.class_id("road")
    assert np.median((dsm - urban.dem)[roof]) > np.median((dsm - urban.dem)[road]) + 3
    sar = scenes["agricultural"].active
    assert -40 < sar.min() and sar.max() < 25  # dB


def test_membrane_and_concrete_differ_only_in_narrow_bands() -> None:
    from s2fin_cli.synth.spectra import Material, hyperspectral_bands, library

    bands = hyperspectral_bands(144, "vnir")
    lib = library(bands, difficulty=0.5)
    diff = lib.mean[Material.CONCRETE] - lib.mean[Material.MEMBRANE]
    feature = np.abs(bands.centers - 915) < 20
    assert diff[feature].max() > 0.015
    assert np.abs(diff[~feature]).max() < 0.002
    assert np.array_equal(lib.mean[Material.ASPHALT], lib.mean[Material.ASPHALT])


def test_nodata_edge_masks_optical_and_labels() -> None:
    scene = generate_scene(small("urban", size=64, nodata_edge=0.1))
    invalid = ~scene.valid
    assert 0.05 < invalid.mean() < 0.15
    assert np.isnan(scene.optical[:, invalid]).all()
    assert (scene.ground_truth[invalid] == 0).all() and (scene.train_labels[invalid] == 0).all()
    assert (scene.test_labels[invalid] == 0).all()


@pytest.mark.parametrize("overrides", [
    {"preset": "nowhere"}, {"size": 16}, {"difficulty": 1.5}, {"bands": 4},
    {"optical": "msi", "bands": 11}, {"sar_bands": 3}, {"active": "radar"},
    {"train_per_class": 0},
])
def test_bad_config_is_a_config_error(overrides: dict[str, object]) -> None:
    preset = str(overrides.pop("preset", "urban"))
    with pytest.raises(ConfigError):
        SynthConfig.for_preset(preset, **overrides)  # type: ignore[arg-type]


def test_command_round_trips_the_config() -> None:
    cfg = SynthConfig.for_preset("agricultural", size=96, bands=48, seed=4, difficulty=0.7)
    cmd = cfg.command("out")
    assert cmd.startswith("s2fin synth out --preset agricultural --size 96 --seed 4")
    assert "--bands 48" in cmd and "--difficulty 0.7" in cmd
