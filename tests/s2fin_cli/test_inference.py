"""Whole-scene inference against a naive reference, and the pipeline's error handling."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from s2fin_cli.acceleration import BatchWorkers
from s2fin_cli.inference import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_CPU_BATCH_SIZE,
    BlockPredictor,
    BlockResult,
    PredictionSummary,
    default_batch_size,
    predict_scene,
    scene_blocks,
)
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.model_file import ModelBundle
from s2fin_cli.sharding import Shard
from tests.helpers import tiny_bundle, torch_threads, utm_grid, write_scene

CLASS_IDS = [2, 3, 5, 9]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with torch_threads(1):
        yield  # not 1..N: output index i must map to classes.classes[i].id


def _collect(scene_path: Path, bundle: ModelBundle, *, block_size: int = 256,
             shard: Shard | None = None, device: str = "cpu", batch_size: int | None = None,
             probabilities: bool = False, confidence: bool = False,
             workers: BatchWorkers | None = None) -> tuple[
        np.ndarray, np.ndarray | None, np.ndarray | None, PredictionSummary]:
    """Run predict_scene and paste the blocks into whole-scene arrays."""
    predictor = BlockPredictor(bundle, device, batch_size=batch_size,
                               probabilities=probabilities, confidence=confidence,
                               workers=workers)
    with open_stacked_scene(scene_path) as scene:
        h, w = scene.grid.shape
        classes = np.full((h, w), -1, np.int64)
        probs: np.ndarray | None = None
        conf: np.ndarray | None = None

        def sink(r: BlockResult) -> None:
            nonlocal probs, conf
            rs, cs = (slice(int(r.window.row_off), int(r.window.row_off + r.window.height)),
                      slice(int(r.window.col_off), int(r.window.col_off + r.window.width)))
            classes[rs, cs] = r.classes
            if r.probabilities is not None:
                probs = probs if probs is not None else np.zeros((len(CLASS_IDS), h, w))
                probs[:, rs, cs] = r.probabilities
            if r.confidence is not None:
                conf = conf if conf is not None else np.zeros((h, w))
                conf[rs, cs] = r.confidence

        windows = (scene_blocks(scene.grid, block_size) if shard is None
                   else shard.windows(h, w, block_size))
        summary = predict_scene(scene, predictor, sink, windows, progress=False)
    return classes, probs, conf, summary


def _reference_logits(scene_path: Path, bundle: ModelBundle,
                      pixels: list[tuple[int, int]]) -> np.ndarray:
    """Naive path: preprocess the whole scene, np.pad(reflect), cut each patch, forward one by
    one."""
    with open_stacked_scene(scene_path) as scene:
        block = scene.read(scene.grid.full_window())
    pre = bundle.preprocessor.device_tensors(torch.device("cpu"))
    z_opt, reduced, z_aux = (t.numpy() for t in pre(torch.from_numpy(block.optical),
                                                    torch.from_numpy(block.aux)))
    half = bundle.config.patch_size // 2
    s_half = bundle.config.spectral_window // 2
    pads = [np.pad(a, ((0, 0), (half, half), (half, half)), mode="reflect")
            for a in (z_opt, reduced, z_aux)]
    model = bundle.build_model("cpu")
    out = []
    with torch.inference_mode():
        for r, c in pixels:
            pr, pc = r + half, c + half
            spectral = pads[0][:, pr - s_half:pr + s_half + 1, pc - s_half:pc + s_half + 1]
            spatial = pads[1][:, pr - half:pr + half + 1, pc - half:pc + half + 1]
            active = pads[2][:, pr - half:pr + half + 1, pc - half:pc + half + 1]
            logits = model(*(torch.from_numpy(np.ascontiguousarray(x))[None]
                             for x in (spectral, spatial, active)))
            out.append(logits[0].numpy())
    return np.array(out)


def _sample_pixels(h: int, w: int, n_random: int, seed: int = 0) -> list[tuple[int, int]]:
    """Every corner, pixels on every border, and random interior pixels."""
    rng = np.random.default_rng(seed)
    pts = {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1)}
    for _ in range(2):
        pts |= {(0, int(rng.integers(w))), (h - 1, int(rng.integers(w))),
                (int(rng.integers(h)), 0), (int(rng.integers(h)), w - 1)}
    while len(pts) < 12 + n_random and len(pts) < h * w:
        pts.add((int(rng.integers(h)), int(rng.integers(w))))
    return sorted(pts)


@pytest.mark.parametrize(
    ("height", "width", "block_size", "batch_size"),
    [(13, 11, 5, 7),  # blocks and batches that divide nothing
     (37, 29, 16, 100),
     (4, 3, 2, 512)],  # a scene smaller than one 7x7 patch
)
def test_map_matches_naive_reference(tmp_path: Path, height: int, width: int, block_size: int,
                                     batch_size: int) -> None:
    nodata = np.zeros((height, width), bool)
    if height > 5:
        nodata[2, 3] = nodata[height - 1, width - 1] = nodata[6, 0] = True
    path = write_scene(tmp_path / "scene.tif", utm_grid(width, height), nodata_pixels=nodata)
    bundle = tiny_bundle(path, class_ids=CLASS_IDS)
    classes, _, _, summary = _collect(path, bundle, block_size=block_size,
                                      batch_size=batch_size)

    assert (classes[nodata] == 0).all()
    assert set(np.unique(classes[~nodata])) <= set(CLASS_IDS)
    assert summary.classified == int((~nodata).sum()) and summary.nodata == int(nodata.sum())
    assert sum(summary.histogram.values()) == summary.classified

    pixels = [p for p in _sample_pixels(height, width, 30) if not nodata[p]]
    logits = _reference_logits(path, bundle, pixels)
    for (r, c), ref in zip(pixels, logits, strict=True):
        got = CLASS_IDS.index(int(classes[r, c]))
        # Equal up to float ties: the chosen class's reference logit is the maximum.
        assert ref[got] >= ref.max() - 1e-4, ((r, c), ref, classes[r, c])
    # A random network that predicts one class everywhere would make this test vacuous.
    assert len(np.unique(classes[~nodata])) > 1 or height * width < 20


def test_probabilities_and_confidence_agree_with_classes(tmp_path: Path) -> None:
    nodata = np.zeros((9, 8), bool)
    nodata[4, 4] = True
    path = write_scene(tmp_path / "scene.tif", utm_grid(8, 9), nodata_pixels=nodata)
    bundle = tiny_bundle(path, class_ids=CLASS_IDS)
    classes, probs, conf, _ = _collect(path, bundle, block_size=4, probabilities=True,
                                       confidence=True)
    assert probs is not None and conf is not None
    assert np.isnan(probs[:, 4, 4]).all() and np.isnan(conf[4, 4])
    valid = ~nodata
    np.testing.assert_allclose(probs[:, valid].sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_allclose(conf[valid], probs[:, valid].max(axis=0), atol=1e-6)
    ids = np.asarray(CLASS_IDS)[probs[:, valid].argmax(axis=0)]
    np.testing.assert_array_equal(ids, classes[valid])


def test_all_nodata_scene_writes_zeros(tmp_path: Path) -> None:
    nodata = np.ones((6, 5), bool)
    nodata[0, 0] = False  # one valid pixel so the preprocessing can be fitted
    path = write_scene(tmp_path / "scene.tif", utm_grid(5, 6), nodata_pixels=nodata)
    bundle = tiny_bundle(path, class_ids=CLASS_IDS)
    classes, _, _, summary = _collect(path, bundle, block_size=3)
    assert (classes[nodata] == 0).all() and classes[0, 0] in CLASS_IDS
    assert summary.blocks == 4 and summary.classified == 1


def _threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("s2fin-")}


def test_model_error_midway_propagates_and_stops_threads(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(12, 12))
    bundle = tiny_bundle(path)
    predictor = BlockPredictor(bundle, "cpu", batch_size=64)
    calls = {"n": 0}
    forward = predictor.model.forward

    def failing(*args: torch.Tensor) -> torch.Tensor:
        calls["n"] += 1
        if calls["n"] > 2:
            raise RuntimeError("injected failure")
        return forward(*args)

    predictor.model.forward = failing
    written: list[BlockResult] = []
    with open_stacked_scene(path) as scene, pytest.raises(RuntimeError, match="injected"):
        predict_scene(scene, predictor, written.append, scene_blocks(scene.grid, 4),
                      progress=False)
    assert len(written) <= 2
    assert not _threads()


def test_batches_side_by_side_give_the_same_map_as_one_at_a_time(tmp_path: Path) -> None:
    nodata = np.zeros((13, 11), bool)
    nodata[2, 3] = nodata[12, 10] = True
    path = write_scene(tmp_path / "scene.tif", utm_grid(11, 13), nodata_pixels=nodata)
    bundle = tiny_bundle(path, class_ids=CLASS_IDS)
    serial = _collect(path, bundle, block_size=8, batch_size=7, probabilities=True,
                      confidence=True, workers=BatchWorkers(1, 1))
    parallel = _collect(path, bundle, block_size=8, batch_size=7, probabilities=True,
                        confidence=True, workers=BatchWorkers(3, 1))
    for one, three in zip(serial[:3], parallel[:3], strict=True):
        np.testing.assert_array_equal(one, three)  # bit for bit: same ops, same thread count
    assert parallel[3].classified == serial[3].classified == int((~nodata).sum())
    assert not _threads()


def test_batch_workers_run_on_their_own_thread_count(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(12, 12))
    bundle = tiny_bundle(path)
    predictor = BlockPredictor(bundle, "cpu", batch_size=16, workers=BatchWorkers(2, 3))
    forward = predictor.model.forward
    seen: list[tuple[str, int]] = []

    def recording(*args: torch.Tensor) -> torch.Tensor:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        out: torch.Tensor = forward(*args)
        return out

    predictor.model.forward = recording
    with open_stacked_scene(path) as scene:
        predict_scene(scene, predictor, lambda r: None, scene_blocks(scene.grid, 12),
                      progress=False)
    assert len(seen) == 9  # 144 centres in batches of 16
    assert all(name.startswith("s2fin-batch") and n == 3 for name, n in seen)
    assert torch.get_num_threads() == 1  # the caller's own setting is untouched
    assert not _threads()


def test_default_batch_workers_follow_the_commands_threads(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(6, 6))
    bundle = tiny_bundle(path)
    assert BlockPredictor(bundle, "cpu").workers == BatchWorkers(1, 1)
    with torch_threads(2):
        assert BlockPredictor(bundle, "cpu").workers == BatchWorkers(2, 1)


def test_predictor_names_the_precision_it_computes_in(tmp_path: Path) -> None:
    bundle = tiny_bundle(write_scene(tmp_path / "scene.tif", utm_grid(6, 6)))
    assert BlockPredictor(bundle, "cpu").precision == "float32"
    assert BlockPredictor(bundle, "cpu", cpu_bf16=True).precision == "bfloat16"
    assert BlockPredictor(bundle, "cpu", cpu_bf16=True, amp=False).precision == "float32"


def test_model_error_in_a_batch_worker_propagates_and_stops_the_rest(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(16, 16))
    bundle = tiny_bundle(path)
    predictor = BlockPredictor(bundle, "cpu", batch_size=4, workers=BatchWorkers(2, 1))
    calls = {"n": 0}
    lock = threading.Lock()
    forward = predictor.model.forward

    def failing(*args: torch.Tensor) -> torch.Tensor:
        with lock:
            calls["n"] += 1
            n = calls["n"]
        if n == 3:
            raise RuntimeError("injected failure")
        out: torch.Tensor = forward(*args)
        return out

    predictor.model.forward = failing
    written: list[BlockResult] = []
    with open_stacked_scene(path) as scene, pytest.raises(RuntimeError, match="injected"):
        predict_scene(scene, predictor, written.append, scene_blocks(scene.grid, 16),
                      progress=False)
    assert not written
    assert calls["n"] < 64 // 2  # batches not yet started were dropped (64 in the block)
    assert not _threads()


def test_writer_error_propagates(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(6, 6))
    bundle = tiny_bundle(path)

    def sink(result: BlockResult) -> None:
        raise OSError("disk on fire")

    with open_stacked_scene(path) as scene, pytest.raises(OSError, match="disk on fire"):
        predict_scene(scene, BlockPredictor(bundle), sink, scene_blocks(scene.grid, 2),
                      progress=False)
    assert not _threads()


def test_writer_error_on_last_block_propagates(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(5, 5))
    bundle = tiny_bundle(path)
    seen: list[BlockResult] = []

    def sink(result: BlockResult) -> None:
        seen.append(result)
        if len(seen) == 4:
            raise OSError("last block lost")

    with open_stacked_scene(path) as scene, pytest.raises(OSError, match="last block lost"):
        predict_scene(scene, BlockPredictor(bundle), sink, scene_blocks(scene.grid, 3),
                      progress=False)
    assert not _threads()


def test_reader_error_propagates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(6, 6))
    bundle = tiny_bundle(path)
    with open_stacked_scene(path) as scene:
        original = scene.read
        count = {"n": 0}

        def read(window: object, halo: int = 0) -> object:
            count["n"] += 1
            if count["n"] == 3:
                raise ValueError("bad block")
            return original(window, halo)

        monkeypatch.setattr(scene, "read", read)
        with pytest.raises(ValueError, match="bad block"):
            predict_scene(scene, BlockPredictor(bundle), lambda r: None,
                          scene_blocks(scene.grid, 2), progress=False)
    assert not _threads()


def test_default_batch_size_follows_device() -> None:
    assert default_batch_size("cpu") == DEFAULT_CPU_BATCH_SIZE
    assert default_batch_size(torch.device("cuda", 0)) == DEFAULT_BATCH_SIZE


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_with_amp_matches_cpu(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "scene.tif", utm_grid(30, 20))
    bundle = tiny_bundle(path, class_ids=CLASS_IDS)
    cpu, _, _, _ = _collect(path, bundle, block_size=8)
    gpu, probs, _, summary = _collect(path, bundle, block_size=8, device="cuda",
                                      probabilities=True)
    assert summary.device.startswith("cuda")
    assert probs is not None and np.isfinite(probs).all()
    # bf16/fp16 autocast may flip near-ties only.
    assert (cpu == gpu).mean() > 0.95


def test_shards_classify_each_block_once_as_a_single_run_does(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "s.tif", utm_grid(width=13, height=11))
    bundle = tiny_bundle(path, class_ids=CLASS_IDS)
    single, _, _, summary = _collect(path, bundle, block_size=4)
    merged = np.full(single.shape, -1, np.int64)
    blocks = 0
    for i in range(3):
        part, _, _, shard_summary = _collect(path, bundle, block_size=4, shard=Shard(i, 3))
        written = part >= 0
        assert not (written & (merged >= 0)).any()  # no block twice
        merged[written] = part[written]
        blocks += shard_summary.blocks
    assert np.array_equal(merged, single) and blocks == summary.blocks == 12
    # more shards than blocks: a shard may own nothing
    empty, _, _, nothing = _collect(path, bundle, block_size=4, shard=Shard(12, 13))
    assert nothing.blocks == 0 and (empty == -1).all()
