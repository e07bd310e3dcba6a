"""``s2fin suggest`` as a library: candidates (validity, exclusion around labels, the seeded
cap), scores at candidates (probabilities and the head's features), and the whole suggestion
on a tiny scene and model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from s2fin_cli.errors import ConfigError, LabelError, OutputError
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.io.writer import write_raster
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.sampling import Samples, within_distance
from s2fin_cli.scoring import predict_indexes, predict_probabilities
from s2fin_cli.suggestion import (
    SuggestRequest,
    _near_labels,
    feature_layer,
    labelled_samples,
    run_suggest,
    sample_candidates,
    score_pixels,
    spacing_for,
    suggest_pixels,
)
from tests.helpers import save_tiny_model, tiny_bundle, torch_threads, utm_grid, write_scene

SIZE = 36


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    nodata = np.zeros((SIZE, SIZE), bool)
    nodata[:4, :] = True  # a nodata strip along the top
    nodata[20, 20] = True
    return write_scene(tmp_path_factory.mktemp("suggest") / "scene.tif", utm_grid(SIZE, SIZE),
                       nodata_pixels=nodata, seed=4)


@pytest.fixture(scope="module")
def bundle(scene_path: Path) -> ModelBundle:
    return tiny_bundle(scene_path, num_classes=3, class_ids=[2, 5, 9])


def _labelled() -> Samples:
    return Samples(np.array([10, 30]), np.array([10, 5]), np.array([2, 5]))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 29), st.integers(0, 29)), max_size=12),
       st.integers(1, 9), st.integers(0, 20), st.integers(0, 20), st.integers(1, 12),
       st.integers(1, 12))
def test_near_labels_matches_within_distance(points: list[tuple[int, int]], distance: int,
                                             row0: int, col0: int, h: int, w: int) -> None:
    rows = np.array([p[0] for p in points], np.int64)
    cols = np.array([p[1] for p in points], np.int64)
    mask = _near_labels(Window(col0, row0, w, h), rows, cols, distance)
    r, c = (a.ravel() for a in np.mgrid[row0:row0 + h, col0:col0 + w])
    expected = within_distance(r, c, rows, cols, distance).reshape(h, w)
    assert np.array_equal(mask, expected)


def test_candidates_are_valid_outside_label_neighbourhoods(scene_path: Path) -> None:
    labelled = _labelled()
    with open_stacked_scene(scene_path) as scene:
        sample = sample_candidates(scene, labelled, spacing=7, cap=10_000, seed=0, block_size=16)
    rows, cols = sample.rows, sample.cols
    assert sample.valid == SIZE * SIZE - 4 * SIZE - 1
    assert not np.any(rows < 4) and not np.any((rows == 20) & (cols == 20))  # never nodata
    assert not within_distance(rows, cols, labelled.rows, labelled.cols, 7).any()
    # Every valid pixel outside the neighbourhoods is a candidate (the cap is not reached).
    r, c = (a.ravel() for a in np.mgrid[0:SIZE, 0:SIZE])
    valid = (r >= 4) & ~((r == 20) & (c == 20))
    far = ~within_distance(r, c, labelled.rows, labelled.cols, 7)
    assert len(sample) == sample.eligible == int((valid & far).sum())


def test_the_cap_is_a_seeded_sample_whatever_the_blocks(scene_path: Path) -> None:
    with open_stacked_scene(scene_path) as scene:
        a = sample_candidates(scene, Samples.empty(), spacing=7, cap=100, seed=3, block_size=8)
        b = sample_candidates(scene, Samples.empty(), spacing=7, cap=100, seed=3,
                              block_size=256)
        c = sample_candidates(scene, Samples.empty(), spacing=7, cap=100, seed=4, block_size=8)
        allowed = Samples(np.array([5, 6, 2]), np.array([5, 6, 2]), np.ones(3, np.int64))
        d = sample_candidates(scene, Samples.empty(), spacing=7, cap=100, seed=3,
                              allowed=allowed)
    assert len(a) == 100 and a.eligible == SIZE * SIZE - 4 * SIZE - 1
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert not (np.array_equal(a.rows, c.rows) and np.array_equal(a.cols, c.cols))
    assert d.rows.tolist() == [5, 6] and d.valid == 2  # (2, 2) is nodata


def test_scores_hold_probabilities_and_head_features(scene_path: Path,
                                                     bundle: ModelBundle) -> None:
    model = bundle.build_model("cpu")
    samples = Samples(np.array([5, 12, 30, 35]), np.array([0, 17, 33, 35]), np.zeros(4, np.int64))
    with torch_threads(), open_stacked_scene(scene_path) as scene:
        probs, feats = score_pixels(model, scene, samples, bundle.preprocessor, bundle.geometry,
                                    torch.device("cpu"), batch_size=3)
        index = predict_indexes(model, scene, samples, bundle.preprocessor, bundle.geometry,
                                torch.device("cpu"))
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.array_equal(probs.argmax(axis=1), index)  # the same network as scoring's
    assert feats is not None and feats.shape == (4, feature_layer(model).in_features)
    # The features are what the classifier sees: its Linear layer gives back the logits.
    fc = feature_layer(model)
    with torch.no_grad():
        logits = fc(torch.from_numpy(feats)).numpy()
    assert np.allclose(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), probs, atol=1e-4)
    assert not model.training and not fc._forward_pre_hooks  # the hook is removed


def test_scores_are_the_same_with_batches_side_by_side(scene_path: Path,
                                                        bundle: ModelBundle) -> None:
    """Two torch threads: two batch workers, each batch on one thread, bit for bit the batches
    of a one-thread run (features captured per worker thread, not mixed up)."""
    model = bundle.build_model("cpu")
    flat = np.random.default_rng(0).choice((SIZE - 4) * SIZE, 40, replace=False)  # distinct
    samples = Samples(4 + flat // SIZE, flat % SIZE, np.zeros(40, np.int64))
    samples = samples.subset((samples.rows != 20) | (samples.cols != 20))  # not nodata
    runs = []
    for threads in (1, 2):
        with torch_threads(threads), open_stacked_scene(scene_path) as scene:
            runs.append(score_pixels(model, scene, samples, bundle.preprocessor,
                                     bundle.geometry, torch.device("cpu"), batch_size=3))
            runs.append((predict_probabilities(model, scene, samples, bundle.preprocessor,
                                               bundle.geometry, torch.device("cpu"), 3,
                                               batch_size=3), None))
    (probs1, feats1), (scored1, _), (probs2, feats2), (scored2, _) = runs
    assert feats1 is not None and feats2 is not None
    np.testing.assert_array_equal(probs1, probs2)
    np.testing.assert_array_equal(feats1, feats2)
    np.testing.assert_array_equal(scored1, scored2)
    np.testing.assert_allclose(probs1, scored1, atol=1e-6)  # one network, two code paths
    assert len(np.unique(feats2.round(4), axis=0)) == len(samples)  # no row written twice


def test_suggestion_is_deterministic_spaced_and_excludes_labels(scene_path: Path,
                                                                bundle: ModelBundle) -> None:
    labelled = _labelled()
    with torch_threads(), open_stacked_scene(scene_path) as scene:
        a = suggest_pixels(bundle, scene, 6, labelled=labelled, seed=1)
        b = suggest_pixels(bundle, scene, 6, labelled=labelled, seed=1, block_size=8)
        capped = suggest_pixels(bundle, scene, 6, labelled=labelled, seed=1, max_candidates=50)
        by_entropy = suggest_pixels(bundle, scene, 6, acquisition="entropy", seed=1)
        alone = suggest_pixels(bundle, scene, 6, strategy="uncertainty", seed=1)
        rand = suggest_pixels(bundle, scene, 6, strategy="random", seed=1)
    assert len(a) == 6 and np.array_equal(a.rows, b.rows) and np.array_equal(a.cols, b.cols)
    assert a.scored == a.eligible and capped.scored == 50 and capped.eligible == a.eligible
    spacing = spacing_for(bundle.geometry.patch_size)
    assert spacing == 4  # patch 7: no suggestion inside the patch of a label or suggestion
    assert not within_distance(a.rows, a.cols, labelled.rows, labelled.cols, spacing).any()
    cheb = np.maximum(np.abs(a.rows[:, None] - a.rows[None]), np.abs(a.cols[:, None]
                                                                       - a.cols[None]))
    assert cheb[~np.eye(6, dtype=bool)].min() >= spacing
    assert np.all(a.score >= 0) and np.all(a.score <= 1)
    assert np.allclose(a.probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert by_entropy.acquisition == "entropy" and len(by_entropy) == 6
    assert np.all(np.diff(alone.score) <= 1e-6)  # uncertainty alone: best first
    assert rand.scored == 0 and len(rand) == 6
    table = a.table(bundle.classes)
    assert set(table.pred_id.tolist()) <= {2, 5, 9}
    assert np.allclose(table.confidence, a.probabilities.max(axis=1))
    assert np.all(table.margin >= 0) and np.all(table.pred_id != table.second_id)


def test_labelled_samples_merge_files(tmp_path: Path, scene_path: Path) -> None:
    grid = utm_grid(SIZE, SIZE)
    first = np.zeros((SIZE, SIZE), np.uint8)
    first[10, 10] = 2
    second = np.zeros((SIZE, SIZE), np.uint8)
    second[30, 5] = 5
    a = write_raster(tmp_path / "a.tif", first, grid, nodata=0)
    b = write_raster(tmp_path / "b.tif", second, grid, nodata=0)
    second[10, 10] = 5  # the pixel (10, 10) is class 2 in a.tif
    c = write_raster(tmp_path / "c.tif", second, grid, nodata=0)
    with open_stacked_scene(scene_path) as scene:
        merged = labelled_samples([a, b], scene)
        pixels = zip(merged.rows.tolist(), merged.cols.tolist(), strict=True)
        assert sorted(pixels) == [(10, 10), (30, 5)]
        assert len(labelled_samples([], scene)) == 0
        with pytest.raises(LabelError, match="two different classes"):
            labelled_samples([a, c], scene)


def test_run_suggest_checks_before_any_work(tmp_path: Path, scene_path: Path) -> None:
    model = save_tiny_model(tmp_path / "m.s2fin", scene_path, num_classes=3)
    base = SuggestRequest(output=tmp_path / "next.gpkg", n=4, model=model, scene=scene_path,
                          device="cpu", threads=1)
    with pytest.raises(OutputError, match=r"\.gpkg"):
        run_suggest(SuggestRequest(**{**base.__dict__, "output": tmp_path / "next.shp"}))
    with pytest.raises(ConfigError, match="-n"):
        run_suggest(SuggestRequest(**{**base.__dict__, "n": 0}))
    with pytest.raises(ConfigError, match="max-candidates"):
        run_suggest(SuggestRequest(**{**base.__dict__, "max_candidates": 3}))
    with pytest.raises(OutputError, match="input"):
        run_suggest(SuggestRequest(**{**base.__dict__, "csv": scene_path, "overwrite": True}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.s2fin"]
    report = run_suggest(base)
    assert report["suggested"] == 4 and report["scored_pixels"] == report["eligible_pixels"]
    assert [s["rank"] for s in report["suggestions"]] == [1, 2, 3, 4]
    assert sum(c["suggested"] for c in report["classes"]) == 4
    with pytest.raises(OutputError, match="exists"):
        run_suggest(base)
