"""The elements of the limited-label training recipe, each on tiny synthetic data: the step
floor, radiometric augmentation, the weight average, the auto validation strategy, the stem
normalisation, and the height above ground derived through the one block+halo+context reader
(training patches, scoring and prediction agree; model files with and without it)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from scipy import ndimage

from models import S2Fin, S2FinConfig
from models.layers import ConvStem
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import ConfigError
from s2fin_cli.hashing import tensors_digest
from s2fin_cli.inference import BlockPredictor, BlockResult, predict_scene, scene_blocks
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.io.windows import reflect_indices
from s2fin_cli.io.writer import write_raster
from s2fin_cli.model_file import ModalitySpec, ModelBundle, load_model_file, save_model_file
from s2fin_cli.patches import PatchGeometry, gather_patches
from s2fin_cli.preprocessing import (
    GROUND_RULES,
    DerivedInputs,
    Preprocessor,
    fit_preprocessor,
    height_above_ground,
)
from s2fin_cli.sampling import (
    AUTO_VAL_MIN_PER_CLASS,
    DEFAULT_VAL_FRACTION,
    Samples,
    resolve_val_fraction,
)
from s2fin_cli.scoring import predict_class_ids
from s2fin_cli.training import (
    TrainingStopped,
    TrainSettings,
    checkpoint_path_for,
    fit,
    parse_stem_norm,
    run_training,
)
from s2fin_cli.training.loop import WeightAverage, planned_schedule
from s2fin_cli.training.steps import augment_batch
from s2fin_cli.training_data import (
    HeightChannel,
    PatchSet,
    extract_patch_set,
    radiometric_draws,
    scale_heights,
    uniform_gains,
)
from tests.helpers import (
    make_training_data,
    tiny_config,
    tiny_request,
    torch_threads,
    utm_grid,
    write_scene,
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_training_data(tmp_path_factory.mktemp("recipe"))


# -- derived inputs: height above ground ------------------------------------------------------

def _reflected(array: np.ndarray, margin: int) -> np.ndarray:
    rows = reflect_indices(-margin, array.shape[0] + 2 * margin, array.shape[0])
    cols = reflect_indices(-margin, array.shape[1] + 2 * margin, array.shape[1])
    return array[np.ix_(rows, cols)]


def test_height_above_ground_is_the_dsm_minus_its_opening() -> None:
    rng = np.random.default_rng(0)
    dsm = (rng.normal(scale=0.1, size=(23, 19))
           + np.linspace(500, 530, 19)[None]).astype(np.float32)  # 1.7 m per pixel
    dsm[8:12, 6:10] += 15.0  # a 4 x 4 px "building"
    window = 7
    hag = height_above_ground(torch.from_numpy(_reflected(dsm, window - 1)), window).numpy()
    ground = ndimage.grey_opening(dsm, size=window, mode="mirror")
    np.testing.assert_allclose(hag, dsm - ground, atol=1e-4)
    # The slope adds no height (the terrain's noise does, a little); the building keeps its.
    # Not near the upper edge, where the mirrored slope is a ridge narrower than the window.
    building = np.zeros(dsm.shape, bool)
    building[8:12, 6:10] = True
    terrain = ~building
    terrain[:, -(window // 2):] = False
    assert np.abs(hag[terrain]).max() < 0.6 and hag[building].min() > 14.0


def test_the_minimum_ground_rule_of_older_model_files_is_kept() -> None:
    """Model files from before the opening computed dsm - box(min(dsm)): they still do."""
    rng = np.random.default_rng(0)
    dsm = (rng.normal(size=(23, 19)) + np.linspace(500, 510, 19)[None]).astype(np.float32)
    dsm[8:12, 6:10] += 15.0
    window = 7
    hag = height_above_ground(torch.from_numpy(_reflected(dsm, window - 1)), window,
                              "minimum").numpy()
    ground = ndimage.uniform_filter(ndimage.minimum_filter(dsm.astype(np.float64), window,
                                                           mode="mirror"), window, mode="mirror")
    np.testing.assert_allclose(hag, dsm - ground, atol=1e-4)
    # On a slope the minimum lies below the ground: the opening does not.
    opened = height_above_ground(torch.from_numpy(_reflected(dsm, window - 1)), window).numpy()
    assert np.median(hag) > np.median(opened) + 1.0


@pytest.mark.parametrize("ground", GROUND_RULES)
def test_height_above_ground_ignores_nodata_in_the_ground_estimate(ground: str) -> None:
    dsm = np.full((15, 15), 100.0, np.float32)
    dsm[3:5, 3:5] = np.nan
    hag = height_above_ground(torch.from_numpy(_reflected(dsm, 4)), 5, ground).numpy()
    assert np.isnan(hag[3:5, 3:5]).all() and np.isnan(hag).sum() == 4
    np.testing.assert_allclose(hag[~np.isnan(hag)], 0.0)
    assert hag.dtype == np.float32


def test_derived_inputs_check_their_window() -> None:
    assert DerivedInputs(0).context == 0 and DerivedInputs(0).channels_for(2) == 0
    assert DerivedInputs(9).context == 8 and DerivedInputs(9).channels_for(2) == 0  # replaces
    assert DerivedInputs(9, replace_dsm=False).channels_for(2) == 1  # appended
    assert DerivedInputs(9, replace_dsm=False).raw_bands(3) == 2
    assert DerivedInputs(sar_window=5).context == 2
    assert DerivedInputs(sar_window=5).channels_for(2) == 2
    assert DerivedInputs(sar_window=5).raw_bands(4) == 2 and DerivedInputs(9).raw_bands(3) == 3
    assert DerivedInputs(sar_window=3).names(("VV", "VH")) == ("VV mean 3x3", "VH mean 3x3")
    for bad in (-1, 1, 4):
        with pytest.raises(ValueError):
            DerivedInputs(bad)
        with pytest.raises(ValueError):
            DerivedInputs(sar_window=bad)
    assert DerivedInputs.from_json(None) == DerivedInputs()
    for derived in (DerivedInputs(5), DerivedInputs(5, ground="minimum", replace_dsm=False),
                    DerivedInputs(5, replace_dsm=False), DerivedInputs(sar_window=3)):
        assert DerivedInputs.from_json(derived.to_json()) == derived
    assert DerivedInputs(5).to_json() == {"height_window": 5, "ground": "opening",
                                          "replace_dsm": True}
    assert DerivedInputs(sar_window=3).to_json() == {"sar_window": 3}
    # What a file from before these keys says: the height appended, over the minimum.
    assert DerivedInputs.from_json({"height_window": 5}) == DerivedInputs(
        5, ground="minimum", replace_dsm=False)
    for bad_json in ({"height_window": "5"}, {"height_window": 5, "ground": "median"},
                     {"height_window": 5, "replace_dsm": "yes"}):
        with pytest.raises(ValueError):
            DerivedInputs.from_json(bad_json)


def test_sar_local_means_are_box_means_of_every_band() -> None:
    from s2fin_cli.preprocessing import derive

    rng = np.random.default_rng(2)
    sar = rng.normal(-12, 3, size=(2, 14, 17)).astype(np.float32)
    derived = DerivedInputs(sar_window=5)
    padded = np.stack([_reflected(b, 2) for b in sar])
    out = derive(torch.from_numpy(padded), derived).numpy()
    assert out.shape == (4, 14, 17)
    np.testing.assert_array_equal(out[:2], sar)
    for b in range(2):
        np.testing.assert_allclose(out[2 + b], ndimage.uniform_filter(
            sar[b].astype(np.float64), 5, mode="mirror"), atol=1e-4)


def _derived_scene(tmp_path: Path, size: tuple[int, int] = (29, 26)) -> Path:
    return write_scene(tmp_path / "scene.tif", utm_grid(*size), bands=5, aux_bands=2)


@pytest.mark.parametrize("replace_dsm", [True, False])
def test_patches_with_derived_inputs_do_not_depend_on_the_blocks(tmp_path: Path,
                                                                 replace_dsm: bool) -> None:
    path = _derived_scene(tmp_path)
    geometry, derived = PatchGeometry(7, 3), DerivedInputs(5, replace_dsm=replace_dsm)
    rng = np.random.default_rng(1)
    samples = Samples(rng.integers(0, 26, 40), rng.integers(0, 29, 40), rng.integers(1, 3, 40))
    with open_stacked_scene(path) as scene:
        pre = fit_preprocessor(scene, 3, seed=0, derived=derived)
        assert pre.aux_bands == (2 if replace_dsm else 3) and pre.raw_aux_bands == 2
        assert pre.context == 4
        small = extract_patch_set(scene, samples, pre, geometry, [1, 2], torch.device("cpu"),
                                  block_size=6)
        large = extract_patch_set(scene, samples, pre, geometry, [1, 2], torch.device("cpu"))
        whole = scene.read(scene.grid.full_window(), geometry.halo + pre.context)
    for a, b in ((small.spectral, large.spectral), (small.spatial, large.spatial),
                 (small.active, large.active)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    # The whole scene read once with halo + context, derived and cropped, gives the same.
    _, _, z_aux = pre.device_tensors(torch.device("cpu"))(torch.from_numpy(whole.optical),
                                                          torch.from_numpy(whole.aux))
    rows, cols = torch.from_numpy(samples.rows + 3), torch.from_numpy(samples.cols + 3)
    torch.testing.assert_close(large.active, gather_patches(z_aux, rows, cols, 7), rtol=0,
                               atol=1e-5)
    # The z-scored height above ground of band 1 is channel 1 of the active input in place of
    # the DSM, or channel 3 beside it; band 2 stays channel 2.
    def z_scored(x: np.ndarray, channel: int) -> np.ndarray:
        return (x - pre.aux_mean[channel]) / pre.aux_std[channel]

    hag = height_above_ground(torch.from_numpy(whole.aux[0]), 5).numpy()
    at = 0 if replace_dsm else 2
    np.testing.assert_allclose(z_aux[at].numpy(), z_scored(hag, at), atol=1e-4)
    np.testing.assert_allclose(z_aux[1].numpy(), z_scored(whole.aux[1, 4:-4, 4:-4], 1),
                               atol=1e-4)
    if not replace_dsm:
        np.testing.assert_allclose(z_aux[0].numpy(), z_scored(whole.aux[0, 4:-4, 4:-4], 0),
                                   atol=1e-4)


def _derived_bundle(path: Path, derived: DerivedInputs) -> ModelBundle:
    with open_stacked_scene(path) as scene:
        pre = fit_preprocessor(scene, 3, seed=0, derived=derived)
        cfg = tiny_config(scene.optical.count, pre.aux_bands, 3, active_stem_norm="none")
        torch.manual_seed(0)
        model = S2Fin(cfg)
        last = [m for m in model.head.modules() if isinstance(m, torch.nn.Linear)][-1]
        with torch.no_grad():
            last.weight.mul_(20.0)
        return ModelBundle(cfg, {k: v.detach().clone() for k, v in model.state_dict().items()},
                           pre, ClassTable.from_ids([1, 2, 3]),
                           ModalitySpec("optical", scene.optical.count,
                                        scene.optical.band_names, None),
                           ModalitySpec("lidar", scene.aux.count, scene.aux.band_names, None))


def _predict_map(path: Path, bundle: ModelBundle, block_size: int) -> np.ndarray:
    predictor = BlockPredictor(bundle, "cpu")
    with open_stacked_scene(path) as scene:
        out = np.zeros(scene.grid.shape, np.int64)

        def sink(r: BlockResult) -> None:
            w = r.window
            out[int(w.row_off):int(w.row_off + w.height),
                int(w.col_off):int(w.col_off + w.width)] = r.classes

        predict_scene(scene, predictor, sink, scene_blocks(scene.grid, block_size),
                      progress=False)
    return out


def test_prediction_scoring_and_the_model_file_agree_on_derived_inputs(tmp_path: Path) -> None:
    path = _derived_scene(tmp_path)
    with torch_threads(1):
        bundle = _derived_bundle(path, DerivedInputs(5))
        saved = save_model_file(tmp_path / "m.s2fin", bundle)
        with safe_open(str(saved), framework="pt") as f:
            meta = f.metadata()
        assert meta["format_version"] == "3"
        assert json.loads(meta["s2fin"])["preprocessing"]["derived"] == {
            "height_window": 5, "ground": "opening", "replace_dsm": True}
        loaded = load_model_file(saved)
        assert loaded.preprocessor.derived == DerivedInputs(5)
        maps = [_predict_map(path, loaded, b) for b in (7, 64)]
        np.testing.assert_array_equal(maps[0], maps[1])
        assert len(np.unique(maps[0])) > 1
        rows, cols = np.mgrid[0:26, 0:29]
        samples = Samples(rows.ravel(), cols.ravel(), np.ones(rows.size, np.int64))
        with open_stacked_scene(path) as scene:
            scored = predict_class_ids(loaded.build_model(), scene, samples,
                                       loaded.preprocessor, loaded.geometry, loaded.classes,
                                       torch.device("cpu"))
    np.testing.assert_array_equal(scored.reshape(maps[0].shape), maps[0])


def test_a_format_2_model_file_predicts_as_it_did(tmp_path: Path) -> None:
    """A file written before the ground rule (format 2: no ``ground``, no ``replace_dsm``)
    loads with the height appended over the minimum and predicts what it predicted then."""
    path = _derived_scene(tmp_path)
    with torch_threads(1):
        old = _derived_bundle(path, DerivedInputs(5, ground="minimum", replace_dsm=False))
        saved = save_model_file(tmp_path / "m.s2fin", old)
        with safe_open(str(saved), framework="pt") as f:
            meta = dict(f.metadata())
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        document = json.loads(meta["s2fin"])
        document["preprocessing"]["derived"] = {"height_window": 5}  # as format 2 wrote it
        text = json.dumps(document, sort_keys=True, allow_nan=False)
        meta.update({"format_version": "2", "s2fin": text,
                     "checksum": tensors_digest(tensors, prefix=text)})
        save_file(tensors, str(tmp_path / "v2.s2fin"), metadata=meta)
        loaded = load_model_file(tmp_path / "v2.s2fin")
        assert loaded.preprocessor.derived == old.preprocessor.derived
        kept = _predict_map(path, loaded, 64)
        np.testing.assert_array_equal(kept, _predict_map(path, old, 64))
        opened = dataclasses.replace(old, preprocessor=dataclasses.replace(
            old.preprocessor, derived=DerivedInputs(5, replace_dsm=False)))
        assert (_predict_map(path, opened, 64) != kept).any()


def test_a_model_without_derived_inputs_is_written_as_before(tmp_path: Path) -> None:
    path = _derived_scene(tmp_path)
    bundle = _derived_bundle(path, DerivedInputs())
    saved = save_model_file(tmp_path / "m.s2fin", bundle)
    with safe_open(str(saved), framework="pt") as f:
        meta = f.metadata()
    document = json.loads(meta["s2fin"])
    assert meta["format_version"] == "1" and "derived" not in document["preprocessing"]
    assert load_model_file(saved).preprocessor.context == 0
    # A config from before the stem options (no keys) builds the old network.
    old = {k: v for k, v in document["architecture"].items() if "stem_norm" not in k}
    assert S2FinConfig.from_dict(old).active_stem_norm == "group"


@pytest.mark.parametrize(("derived", "channels"), [(DerivedInputs(3), 2),
                                                   (DerivedInputs(3, replace_dsm=False), 3)])
def test_preprocessor_tensors_round_trip_with_derived_inputs(
        tmp_path: Path, derived: DerivedInputs, channels: int) -> None:
    path = _derived_scene(tmp_path)  # 2 LiDAR bands
    with open_stacked_scene(path) as scene:
        pre = fit_preprocessor(scene, 3, seed=0, derived=derived)
    again = Preprocessor.from_tensors(pre.tensors(), derived)
    assert again.aux_bands == channels and again.derived == pre.derived
    with pytest.raises(ValueError):  # too few statistics for one raw band (and the height)
        Preprocessor.from_tensors({**pre.tensors(),
                                   "aux_mean": pre.tensors()["aux_mean"][:channels - 2],
                                   "aux_std": pre.tensors()["aux_std"][:channels - 2]}, derived)


# -- stems ------------------------------------------------------------------------------------

def test_stem_norm_state_dict_keys() -> None:
    keys = {norm: set(ConvStem(1, 8, norm).state_dict()) for norm in ("group", "batch", "none")}
    assert keys["group"] == {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias",
                             "body.3.weight", "body.3.bias", "body.4.weight", "body.4.bias"}
    assert keys["none"] == {"body.0.weight", "body.0.bias", "body.3.weight", "body.3.bias"}
    assert "body.1.running_mean" in keys["batch"]
    with pytest.raises(ValueError, match="active_stem_norm"):
        S2FinConfig(active_stem_norm="layer")
    assert S2FinConfig.from_dict({"optical_stem_norm": "none"}).optical_stem_norm == "none"
    with pytest.raises(ValueError, match="type str"):
        S2FinConfig.from_dict({"optical_stem_norm": 1})


def test_group_norm_stem_forgets_a_flat_patch_level_and_no_norm_keeps_it() -> None:
    """Why the default active stem has no normalisation: GroupNorm over a patch maps a flat
    5 m roof and a flat 20 m roof (z-scored heights 1 and 4) to features of the same size."""
    torch.manual_seed(0)
    low, high = torch.full((1, 1, 7, 7), 1.0), torch.full((1, 1, 7, 7), 4.0)
    ratios = {}
    for norm in ("group", "none"):
        stem = ConvStem(1, 16, norm).eval()
        with torch.no_grad():
            ratios[norm] = float(stem(high).norm() / stem(low).norm())
    assert abs(ratios["group"] - 1.0) < 0.1 and ratios["none"] > 2.0, ratios


def test_parse_stem_norm() -> None:
    assert parse_stem_norm("none") == ("none", "none")
    assert parse_stem_norm("group,batch") == ("group", "batch")
    with pytest.raises(ConfigError):
        parse_stem_norm("layer")


# -- schedule, augmentation, weight average ----------------------------------------------------

def test_min_steps_is_a_floor_that_does_not_shrink_with_the_labels() -> None:
    settings = TrainSettings(epochs=2, min_steps=10)
    assert settings.epochs_for(3, 4) == 4 and settings.epochs_for(10, 4) == 2
    assert settings.epochs_for(3, 11) == 4  # a given floor does not depend on the classes
    assert TrainSettings(epochs=5, min_steps=0).epochs_for(1, 4) == 5  # 0: epochs only
    with pytest.raises(ConfigError):
        TrainSettings(min_steps=-1).validate()


def test_the_default_step_floor_grows_with_the_classes_not_the_labels() -> None:
    per_class = TrainSettings.STEPS_PER_CLASS
    default = TrainSettings(epochs=5)
    assert default.min_steps is None
    assert [default.step_floor(c) for c in (2, 4, 11)] == [2 * per_class, 4 * per_class,
                                                           11 * per_class]
    # Two classes of 5 or of 20 labels (one batch per epoch): the same number of steps.
    assert default.epochs_for(1, 2) == 2 * per_class
    # 11 classes x 10 labels, batch 32: 4 batches per epoch, ceil(198 / 4) epochs.
    assert default.epochs_for(4, 11) == -(-11 * per_class // 4)
    # Many labels: the epochs are the longer schedule.
    assert TrainSettings(epochs=30).epochs_for(11, 11) == 30
    TrainSettings().validate()


def test_the_planned_schedule_counts_the_batches_an_epoch_really_has() -> None:
    """33 samples in batches of 32 are one batch (a lone trailing sample joins the previous
    one), so two classes' floor of 36 steps takes 36 epochs, not 18: what train announces."""
    settings = TrainSettings(epochs=5)
    assert planned_schedule(33, 2, settings) == (1, 2 * TrainSettings.STEPS_PER_CLASS)
    assert planned_schedule(34, 2, settings) == (2, TrainSettings.STEPS_PER_CLASS)
    assert planned_schedule(34, 2, settings, world_size=2) == (1, 2 * TrainSettings.STEPS_PER_CLASS)
    assert planned_schedule(33 * 32, 11, TrainSettings(epochs=45)) == (33, 45)


def test_the_step_floor_counts_the_classes_that_have_training_samples() -> None:
    patches = _patch_set(12)  # targets 0, 1, 2
    assert patches.class_count == 3
    one_class = PatchSet(patches.spectral, patches.spatial, patches.active,
                         torch.zeros(12, dtype=torch.long))
    assert one_class.class_count == 1


def _patch_set(n: int = 12, seed: int = 0) -> PatchSet:
    g = torch.Generator().manual_seed(seed)
    return PatchSet(torch.randn(n, 6, 3, 3, generator=g), torch.randn(n, 3, 7, 7, generator=g),
                    torch.randn(n, 1, 7, 7, generator=g), torch.arange(n) % 3)


def test_radiometric_augmentation_is_seeded_and_the_same_gain_for_both_optical_inputs() -> None:
    draws = radiometric_draws(200, (6, 3, 3), (3, 7, 7), torch.Generator().manual_seed(1),
                              0.1, 0.0)
    assert draws.gains.min() >= 0.9 and draws.gains.max() <= 1.1 and draws.spectral_noise is None
    again = radiometric_draws(200, (6, 3, 3), (3, 7, 7), torch.Generator().manual_seed(1),
                              0.1, 0.0)
    assert torch.equal(draws.gains, again.gains)
    p = _patch_set()
    spec, spat = radiometric_draws(12, (6, 3, 3), (3, 7, 7), torch.Generator().manual_seed(2),
                                   0.1, 0.0).apply(p.spectral, p.spatial)
    ratio_spec = (spec / p.spectral).flatten(1)
    ratio_spat = (spat / p.spatial).flatten(1)
    torch.testing.assert_close(ratio_spec.min(1).values, ratio_spat.max(1).values)
    noisy = radiometric_draws(4000, (6, 3, 3), (3, 7, 7), torch.Generator().manual_seed(3),
                              0.0, 0.05)
    assert noisy.spectral_noise is not None and noisy.spatial_noise is not None
    assert abs(float(noisy.spectral_noise.std()) - 0.05) < 0.002


def test_uniform_gains_scale_heights_in_metres_and_leave_the_ground_alone() -> None:
    heights_m = torch.tensor([0.0, 10.0, 20.0]).view(3, 1, 1, 1).expand(3, 1, 5, 5)
    other = torch.randn(3, 1, 5, 5, generator=torch.Generator().manual_seed(0))
    height = HeightChannel(index=1, mean=4.0, std=2.0)
    active = torch.cat([other, (heights_m - height.mean) / height.std], dim=1)
    out = scale_heights(active, height, torch.tensor([1.3, 0.8, 1.1]))
    np.testing.assert_allclose((out[:, 1] * height.std + height.mean)[:, 0, 0].numpy(),
                               [0.0, 8.0, 22.0], atol=1e-5)
    assert torch.equal(out[:, :1], other) and torch.equal(active[:, :1], other)  # input intact
    gains = uniform_gains(2000, torch.Generator().manual_seed(1), 0.3)
    assert 0.7 <= float(gains.min()) and float(gains.max()) <= 1.3


def test_height_jitter_needs_a_height_channel_and_leaves_other_draws_alone() -> None:
    p = _patch_set(10)
    plain = augment_batch(p.spectral, p.spatial, p.active, TrainSettings(),
                          torch.Generator().manual_seed(5), train=p)
    # No height channel (e.g. SAR): the option changes nothing.
    same = augment_batch(p.spectral, p.spatial, p.active, TrainSettings(height_jitter=0.3),
                         torch.Generator().manual_seed(5), train=p)
    for a, b in zip(plain, same, strict=True):
        assert torch.equal(a, b)
    with_height = dataclasses.replace(p, height=HeightChannel(0, 0.0, 1.0))
    jittered = augment_batch(p.spectral, p.spatial, p.active, TrainSettings(height_jitter=0.3),
                             torch.Generator().manual_seed(5), train=with_height)
    # Its draws come after the others: the optical inputs are those of the plain batch.
    assert torch.equal(jittered[0], plain[0]) and torch.equal(jittered[1], plain[1])
    assert not torch.equal(jittered[2], plain[2])
    with pytest.raises(ConfigError):
        TrainSettings(height_jitter=1.0).validate()


def test_augmented_batch_of_a_rank_share_equals_the_share_of_the_global_batch() -> None:
    """Data-parallel ranks draw the global batch's transforms and radiometric changes and apply
    their share: the union equals the single-process batch."""
    from s2fin_cli.training_data import augment_choices, rank_share

    p = _patch_set(10)
    p = dataclasses.replace(p, height=HeightChannel(0, 1.0, 2.0))
    settings = TrainSettings(gain_jitter=0.1, spectral_noise=0.05, height_jitter=0.2)
    single = augment_batch(p.spectral, p.spatial, p.active, settings,
                           torch.Generator().manual_seed(5), train=p)
    for rank in range(2):
        g = torch.Generator().manual_seed(5)
        choice = augment_choices(10, g)
        share = rank_share(torch.arange(10), rank, 2)
        part = augment_batch(p.spectral[share], p.spatial[share], p.active[share], settings, g,
                             choice=choice, share=share, global_size=10, train=p)
        for a, b in zip(part, single, strict=True):
            torch.testing.assert_close(a, b[share])


def test_rank_shares_deal_every_batch_size_over_the_ranks() -> None:
    from s2fin_cli.training_data import rank_share

    # a last batch can be smaller than the world: the ranks past its end get empty shares
    for world in (1, 2, 4):
        for size in range(7):
            shares = [rank_share(torch.arange(size), rank, world) for rank in range(world)]
            assert sorted(torch.cat(shares).tolist()) == list(range(size))
    assert rank_share(torch.arange(2), 3, 4).numel() == 0


def test_weight_average_follows_the_model_with_a_ramped_decay() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    avg = WeightAverage(model, 0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    avg.update()  # decay min(0.9, 2 / 11)
    d = 2 / 11
    torch.testing.assert_close(avg.state["weight"], torch.full((1, 2), 1 - d))
    with avg.swapped_in():
        torch.testing.assert_close(model.weight.detach(), torch.full((1, 2), 1 - d))
    assert float(model.weight.detach()[0, 0]) == 1.0


def test_fit_keeps_the_averaged_weights(tmp_path: Path) -> None:
    p = _patch_set(24)
    with torch_threads(1):
        torch.manual_seed(0)
        model = S2Fin(tiny_config(6, 1, 3))
        result = fit(model, p, None, TrainSettings(epochs=3, batch_size=8, warmup_epochs=0,
                                                   ema=0.8, min_steps=0), torch.device("cpu"))
    assert result.epochs_run == 3
    differs = [not torch.equal(result.best_state[k], result.final_state[k])
               for k in result.best_state if result.best_state[k].is_floating_point()]
    assert any(differs)


def test_fit_runs_the_default_floor_of_the_classes_it_trains(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(TrainSettings, "STEPS_PER_CLASS", 3)
    settings = TrainSettings(epochs=1, batch_size=32, warmup_epochs=0)  # 12 samples: 1 batch
    p = _patch_set(12)
    two = PatchSet(p.spectral, p.spatial, p.active, p.targets % 2)
    runs = []
    for patches in (p, two):
        with torch_threads(1):
            torch.manual_seed(0)
            runs.append(fit(S2Fin(tiny_config(6, 1, 3)), patches, None, settings,
                            torch.device("cpu")).epochs_run)
    assert runs == [9, 6]  # 3 steps per class, one step per epoch


# -- validation strategy -----------------------------------------------------------------------

def test_auto_validation_holds_out_only_with_enough_labels() -> None:
    few = {1: 10, 2: AUTO_VAL_MIN_PER_CLASS}
    many = {1: AUTO_VAL_MIN_PER_CLASS, 2: 500}
    assert resolve_val_fraction(None, few) == 0.0
    assert resolve_val_fraction(None, many) == DEFAULT_VAL_FRACTION
    assert resolve_val_fraction(0.3, few) == 0.3 and resolve_val_fraction(0.0, many) == 0.0


def test_few_labels_train_on_every_label_and_many_labels_validate(data: dict[str, Path],
                                                                  tmp_path: Path) -> None:
    with torch_threads(1):
        few = run_training(tiny_request(data, tmp_path / "few.s2fin", val_fraction=None,
                                        per_class=8))
    assert few.validation is None and sum(r["train"] for r in few.split_rows) == 24
    assert few.bundle.provenance["protocol"]["val_strategy"] == "auto"
    assert few.bundle.provenance["checkpoint_selection"] == "last epoch"
    full = np.repeat(np.arange(1, 4, dtype=np.uint8), 11)[None].repeat(32, 0)[:, :32]
    labels = write_raster(tmp_path / "dense.tif", full, utm_grid(32, 32), nodata=0)
    with torch_threads(1):
        many = run_training(tiny_request(data, tmp_path / "many.s2fin", val_fraction=None,
                                         labels=labels, test_labels=None,
                                         settings=TrainSettings(epochs=1, batch_size=64,
                                                                warmup_epochs=0, min_steps=0)))
    assert many.validation is not None
    assert many.bundle.provenance["protocol"]["val_fraction"] == DEFAULT_VAL_FRACTION


# -- every element at once: deterministic, and an exact resume ---------------------------------

def test_resume_is_exact_with_every_recipe_element(data: dict[str, Path],
                                                   tmp_path: Path) -> None:
    settings = TrainSettings(epochs=2, batch_size=32, warmup_epochs=1, seed=3, min_steps=14,
                             gain_jitter=0.1, spectral_noise=0.05, ema=0.9)
    extra = {"settings": settings, "height_window": 5, "optical_stem_norm": "none",
             "active_stem_norm": "batch", "val_fraction": None}
    with torch_threads(1):
        full = run_training(tiny_request(data, tmp_path / "full.s2fin", **extra))
        out = tmp_path / "resumed.s2fin"
        with pytest.raises(TrainingStopped):
            run_training(tiny_request(data, out, stop_after=2, **extra))
        assert checkpoint_path_for(out).exists()
        resumed = run_training(tiny_request(data, out, resume=True, **extra))
    assert full.bundle.provenance["epochs_run"] == 4  # ceil(14 / 4 batches) > 2 epochs
    assert full.bundle.preprocessor.derived == DerivedInputs(5)
    a, b = load_model_file(full.output).state_dict, load_model_file(resumed.output).state_dict
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert full.bundle.metrics == resumed.bundle.metrics
    assert dataclasses.asdict(settings)["ema"] == 0.9


# -- self-training -------------------------------------------------------------------------------

def test_unlabelled_pool_avoids_labels_and_validation_patches(data: dict[str, Path]) -> None:
    from s2fin_cli.sampling import Split
    from s2fin_cli.training.pseudo import unlabelled_pool

    labelled = Samples(np.array([0, 5, 10]), np.array([0, 5, 10]), np.array([1, 2, 3]))
    val = Samples(np.array([20]), np.array([20]), np.array([1]))
    split = Split(labelled, val)
    with open_stacked_scene(data["scene"]) as scene:
        pool = unlabelled_pool(scene, labelled, split, 7, 300, seed=4)
        again = unlabelled_pool(scene, labelled, split, 7, 300, seed=4)
    assert 200 < len(pool) <= 300 and np.array_equal(pool.rows, again.rows)
    flat = pool.rows * 32 + pool.cols
    assert len(np.unique(flat)) == len(pool)
    assert not np.isin(flat, labelled.rows * 32 + labelled.cols).any()
    assert (np.maximum(abs(pool.rows - 20), abs(pool.cols - 20)) >= 7).all()


def test_pseudo_labels_are_confident_and_class_balanced() -> None:
    from s2fin_cli.training.pseudo import choose

    classes = ClassTable.from_ids([4, 7])
    pool = Samples(np.arange(6), np.zeros(6, np.int64), np.zeros(6, np.int64))
    probs = np.array([[0.99, 0.01], [0.95, 0.05], [0.97, 0.03], [0.2, 0.8], [0.05, 0.95],
                      [0.5, 0.5]], np.float32)
    chosen = choose(probs, pool, classes, {4: 2, 7: 2}, 0.9)
    # Class 4: the two most confident of three; class 7: only the one above the threshold.
    assert chosen.rows.tolist() == [0, 2, 4] and chosen.classes.tolist() == [4, 4, 7]


def test_self_training_resumes_exactly_from_either_fit(data: dict[str, Path],
                                                       tmp_path: Path) -> None:
    # 36 labels, batch 32: 2 steps per epoch, 10 epochs in the first fit.
    settings = TrainSettings(epochs=2, batch_size=32, warmup_epochs=0, seed=1, min_steps=20,
                             self_training=1.0, pseudo_threshold=0.4)
    extra = {"settings": settings, "val_fraction": None, "per_class": 12}
    out = tmp_path / "resumed.s2fin"
    with torch_threads(1):
        full = run_training(tiny_request(data, tmp_path / "full.s2fin", **extra))
        with pytest.raises(TrainingStopped):  # killed in the first fit
            run_training(tiny_request(data, out, stop_after=9, **extra))
        with pytest.raises(TrainingStopped):  # first fit finished, killed in the second
            run_training(tiny_request(data, out, stop_after=1, resume=True, **extra))
        assert torch.load(checkpoint_path_for(out), weights_only=True)["stage"] == 2
        resumed = run_training(tiny_request(data, out, resume=True, **extra))
    info = full.bundle.provenance["self_training"]
    assert 0 < sum(info["pseudo_labels"].values()) <= 36 and info["pool"] > 0
    assert info["first_fit"]["epochs_run"] == 10 and info["first_fit"]["steps"] == 20
    a, b = load_model_file(full.output).state_dict, load_model_file(resumed.output).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert full.bundle.metrics == resumed.bundle.metrics
    again = resumed.bundle.provenance["self_training"]
    assert again["pseudo_labels"] == info["pseudo_labels"] and again["pool"] == info["pool"]

    def losses(history: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert losses(again["first_fit"]["history"]) == losses(info["first_fit"]["history"])
