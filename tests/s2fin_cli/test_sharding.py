"""Sharding: shard numbering and environment defaults, the block rule, part files (sparse,
tagged) and their merge (checks for missing, duplicated and foreign parts)."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import (
    ConfigError,
    DuplicatePartError,
    InputError,
    MissingPartError,
    MixedPartsError,
)
from s2fin_cli.inference import BlockPredictor, BlockResult, predict_scene, scene_blocks
from s2fin_cli.io.classmap import ClassMapWriter, MapOutputs, model_tags
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.reader import open_stacked_scene
from s2fin_cli.io.windows import iter_blocks, window_slices
from s2fin_cli.sharding import (
    TAG_SHARD,
    Shard,
    ShardInfo,
    check_parts,
    merge_parts,
    merge_tags,
    merged_path,
    part_path,
    read_part,
    resolve_shard,
    shard_from_env,
    tag_part_outputs,
)
from tests.helpers import tiny_bundle, torch_threads, utm_grid, write_scene

CLASSES = ClassTable.from_ids([1, 2, 5], {1: "water", 2: "trees", 5: "roads"})
GRID = utm_grid(width=40, height=35)
BLOCK = 16
SCHEDULER_VARS = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN",
                  "SLURM_ARRAY_TASK_STEP", "RANK", "WORLD_SIZE")


@pytest.fixture(autouse=True)
def _one_thread_no_scheduler(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in SCHEDULER_VARS:
        monkeypatch.delenv(name, raising=False)
    with torch_threads(1):
        yield


# -- numbering, environment, names -----------------------------------------------------------

def test_parse_and_label() -> None:
    shard = Shard.parse("3/8")
    assert (shard.index, shard.count, str(shard)) == (3, 8, "3/8")
    assert shard.label == "part-0003-of-0008"
    assert Shard(12345, 20000).label == "part-12345-of-20000"
    for bad in ("8/8", "-1/8", "0/0", "3", "a/b", "1/2/3"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)


def test_part_names_round_trip() -> None:
    path = Path("out/scene.classes.tif")
    part = part_path(path, Shard(3, 8))
    assert part == Path("out/scene.classes.part-0003-of-0008.tif")
    assert merged_path(part) == path
    with pytest.raises(ConfigError):
        merged_path(path)


def test_env_slurm_array_with_min_and_step() -> None:
    assert shard_from_env({}) is None
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert shard_from_env(env)[0] == Shard(5, 8)  # type: ignore[index]
    # --array=1-8: ids 1..8 are shards 0..7
    env = {"SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "1"}
    found = shard_from_env(env)
    assert found is not None and found[0] == Shard(7, 8) and "MIN=1" in found[1]
    # --array=0-14:2 (8 tasks)
    env = {"SLURM_ARRAY_TASK_ID": "6", "SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_MIN": "0",
           "SLURM_ARRAY_TASK_STEP": "2"}
    assert shard_from_env(env)[0] == Shard(3, 8)  # type: ignore[index]
    # --array=1,4,9: not a regular range
    with pytest.raises(ConfigError, match="--shard"):
        shard_from_env({"SLURM_ARRAY_TASK_ID": "9", "SLURM_ARRAY_TASK_COUNT": "3",
                        "SLURM_ARRAY_TASK_MIN": "1"})
    # SLURM wins over RANK/WORLD_SIZE; RANK/WORLD_SIZE alone work
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "2", "RANK": "0",
           "WORLD_SIZE": "4"}
    assert shard_from_env(env)[0] == Shard(1, 2)  # type: ignore[index]
    assert shard_from_env({"RANK": "2", "WORLD_SIZE": "4"})[0] == Shard(2, 4)  # type: ignore[index]
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "2"}) is None  # count unknown: no default
    with pytest.raises(ConfigError):
        shard_from_env({"RANK": "x", "WORLD_SIZE": "4"})


def test_resolve_shard_option_env_and_none(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert resolve_shard("1/4", env) == Shard(1, 4)  # the option wins
    assert resolve_shard("none", env) is None
    assert resolve_shard(None, {}) is None
    assert capsys.readouterr().err == ""
    # The environment alone never shards: one scene per array task is the common use.
    assert resolve_shard(None, env) is None
    assert "--shard auto" in capsys.readouterr().err
    assert resolve_shard("auto", env) == Shard(2, 3)
    assert "SLURM_ARRAY_TASK_ID=2" in capsys.readouterr().err  # announced
    with pytest.raises(ConfigError, match="--shard auto"):
        resolve_shard("auto", {})


@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 20), st.integers(1, 9))
def test_shards_partition_the_blocks(height: int, width: int, block: int, count: int) -> None:
    every = list(iter_blocks(height, width, block))
    owned = [Shard(i, count).windows(height, width, block) for i in range(count)]
    assert sorted((w.row_off, w.col_off) for ws in owned for w in ws) == sorted(
        (w.row_off, w.col_off) for w in every)
    sizes = [len(ws) for ws in owned]
    assert max(sizes) - min(sizes) <= 1  # balanced


# -- parts and merge (no model: parts written directly) ---------------------------------------

def _truth(grid: Grid = GRID, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).choice([0, *CLASSES.ids], size=grid.shape)


def _write_parts(directory: Path, count: int, *, truth: np.ndarray | None = None,
                 sha: str = "a" * 64, grid: Grid = GRID, block: int = BLOCK,
                 name: str = "map.tif", indices: list[int] | None = None) -> list[Path]:
    truth = _truth(grid) if truth is None else truth
    tags = model_tags("m.s2fin", sha)
    paths = []
    for i in indices if indices is not None else range(count):
        shard = Shard(i, count)
        named = MapOutputs(classes=part_path(directory / name, shard), tags=tags)
        outputs = tag_part_outputs(named, shard, block_size=block, grid=grid,
                                scene=Path("scene.tif"))
        with ClassMapWriter(grid, CLASSES, outputs) as writer:
            for window in shard.windows(grid.height, grid.width, block):
                writer.write_block(window, truth[window_slices(window)])
        paths.append(outputs.classes)
    return paths


def _merge(parts: list[Path], out: Path, **kwargs: object) -> None:
    checked = check_parts([read_part(p) for p in parts])
    merge_parts(checked, MapOutputs(classes=out, tags=merge_tags(checked[0]), **kwargs),  # type: ignore[arg-type]
                progress=False)


def test_parts_are_sparse_tagged_unstyled_and_merge_exactly(tmp_path: Path) -> None:
    truth = _truth()
    parts = _write_parts(tmp_path, 3, truth=truth)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "map.part-0000-of-0003.tif", "map.part-0001-of-0003.tif", "map.part-0002-of-0003.tif"]
    from osgeo import gdal

    ds = gdal.Open(str(parts[1]))
    band = ds.GetRasterBand(1)
    assert band.GetBlockSize() == [BLOCK, BLOCK]
    for k, window in enumerate(iter_blocks(GRID.height, GRID.width, BLOCK)):
        col, row = int(window.col_off) // BLOCK, int(window.row_off) // BLOCK
        stored = band.GetMetadataItem(f"BLOCK_OFFSET_{col}_{row}", "TIFF") is not None
        assert stored == (k % 3 == 1), k  # other shards' tiles are never written
    ds = band = None
    info = ShardInfo.from_tag(rasterio.open(parts[1]).tags()[TAG_SHARD])
    assert (info.index, info.count, info.block_size, info.blocks) == (1, 3, BLOCK, 9)
    assert info.scene == "scene.tif" and info.grid["width"] == GRID.width

    out = tmp_path / "merged.tif"
    _merge(list(reversed(parts)), out)  # any order
    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read(1), truth)
        assert TAG_SHARD not in ds.tags() and ds.tags()["S2FIN_MODEL_SHA256"] == "a" * 64
        assert ds.nodata == 0 and ds.colormap(1)[5][:3] == CLASSES.colormap()[5][:3]
    assert (tmp_path / "merged.qml").exists() and (tmp_path / "merged.tif.aux.xml").exists()


def test_missing_duplicated_and_foreign_parts_refused(tmp_path: Path) -> None:
    parts = _write_parts(tmp_path, 3)
    with pytest.raises(MissingPartError, match=re.escape(
            "1 of 3 parts missing (shards 1; e.g. map.part-0001-of-0003.tif)")):
        check_parts([read_part(p) for p in (parts[0], parts[2])])
    copy = tmp_path / "copy.tif"
    shutil.copy(parts[1], copy)
    with pytest.raises(DuplicatePartError, match="shard 1/3 given twice"):
        check_parts([read_part(p) for p in (*parts, copy)])
    other = tmp_path / "other"
    other.mkdir()
    for kwargs, what in (({"sha": "b" * 64}, "model checksum"), ({"block": 8}, "block size"),
                         ({"grid": utm_grid(width=40, height=35, res=2.0)}, "grid")):
        foreign = _write_parts(other, 3, indices=[1], name=f"{what[:5]}.tif",
                               **kwargs)
        with pytest.raises(MixedPartsError, match=f"different runs: {what}"):
            check_parts([read_part(p) for p in (parts[0], foreign[0], parts[2])])
    four = _write_parts(other, 4, indices=[1], name="four.tif")
    with pytest.raises(MixedPartsError, match="shard count"):
        check_parts([read_part(p) for p in (parts[0], four[0], parts[2])])
    assert issubclass(MixedPartsError, InputError)  # exit code 3


def test_not_a_part_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.tif"
    with ClassMapWriter(GRID, CLASSES, MapOutputs(classes=plain)) as writer:
        writer.write_block(GRID.full_window(), _truth())
    with pytest.raises(InputError, match="not a part"):
        read_part(plain)
    with pytest.raises(InputError, match="does not exist"):
        read_part(tmp_path / "nope.tif")


# -- predict_scene with a shard against a single-process prediction -------------------------

def test_sharded_predict_scene_merges_to_single_process_map(tmp_path: Path) -> None:
    grid = utm_grid(width=19, height=13)
    nodata = np.zeros(grid.shape, bool)
    nodata[2:5, 3:9] = True
    scene_path = write_scene(tmp_path / "scene.tif", grid, nodata_pixels=nodata)
    bundle = tiny_bundle(scene_path, num_classes=3, class_ids=[1, 2, 5])
    single = np.zeros(grid.shape, np.int64)

    def paste(result: BlockResult) -> None:
        single[window_slices(result.window)] = result.classes

    with open_stacked_scene(scene_path) as scene:
        summary = predict_scene(scene, BlockPredictor(bundle), paste, scene_blocks(grid, 6),
                                progress=False)
        parts, pixels = [], 0
        for i in range(3):
            shard = Shard(i, 3)
            named = MapOutputs(classes=part_path(tmp_path / "map.tif", shard),
                               probabilities=part_path(tmp_path / "p.tif", shard),
                               tags=model_tags("m", "c" * 64))
            outputs = tag_part_outputs(named, shard, block_size=6, grid=grid, scene=scene_path)
            with ClassMapWriter(grid, bundle.classes, outputs) as writer:
                part = predict_scene(scene, BlockPredictor(bundle, probabilities=True), writer,
                                     shard.windows(grid.height, grid.width, 6), progress=False)
            assert part.blocks == len(shard.windows(grid.height, grid.width, 6))
            pixels += part.pixels
            parts.append(outputs.classes)
    assert pixels == summary.pixels == grid.width * grid.height
    out = tmp_path / "merged.tif"
    _merge(parts, out, probabilities=tmp_path / "pm.tif")
    with rasterio.open(out) as ds:
        assert np.array_equal(ds.read(1), single)
    with rasterio.open(tmp_path / "pm.tif") as ds:
        probs = ds.read()
        assert probs.shape == (3, *grid.shape)
        assert ((probs == 255) == (single == 0)[None]).all()  # 255: probability nodata


def test_probability_parts_of_another_encoding_are_refused(tmp_path: Path) -> None:
    grid = utm_grid(width=12, height=9)
    scene_path = write_scene(tmp_path / "scene.tif", grid)
    bundle = tiny_bundle(scene_path, num_classes=3, class_ids=[1, 2, 5])
    parts = []
    with open_stacked_scene(scene_path) as scene:
        for i in range(2):
            shard = Shard(i, 2)
            named = MapOutputs(classes=part_path(tmp_path / "map.tif", shard),
                               probabilities=part_path(tmp_path / "p.tif", shard),
                               tags=model_tags("m", "c" * 64))
            outputs = tag_part_outputs(named, shard, block_size=4, grid=grid, scene=scene_path)
            with ClassMapWriter(grid, bundle.classes, outputs) as writer:
                predict_scene(scene, BlockPredictor(bundle, probabilities=True), writer,
                              shard.windows(grid.height, grid.width, 4), progress=False)
            parts.append(outputs.classes)
    with rasterio.open(tmp_path / "p.part-0001-of-0002.tif", "r+") as ds:
        ds.update_tags(S2FIN_ENCODING="uint8 value = 1 + round(254 * p); 0 = nodata")
    with pytest.raises(MixedPartsError, match="stores values as"):
        _merge(parts, tmp_path / "merged.tif", probabilities=tmp_path / "pm.tif")
    assert not (tmp_path / "merged.tif").exists() and not (tmp_path / "pm.tif").exists()
