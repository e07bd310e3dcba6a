"""Model files that must be refused (6), models that do not fit the scene (7), and a scene
smaller than one patch (works: reflect padding)."""

from __future__ import annotations

import json
import pathlib
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s2fin_cli import model_file
from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    PREDICT_FAST,
    SIZE,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    run_cli,
    snapshot,
)

MARKER = "pickle-was-executed"


class _Evil:
    """Unpickling this creates the marker file: proof that pickled code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (pathlib.Path.touch, (self.marker,))


def _raw(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}


def _truncated(d: Path, tiny: TinyData) -> Path:
    data = tiny.model.read_bytes()
    p = d / "truncated.s2fin"
    p.write_bytes(data[: len(data) // 2])
    return p


def _not_safetensors(d: Path, tiny: TinyData) -> Path:
    p = d / "random.s2fin"
    p.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def _plain_safetensors(d: Path, tiny: TinyData) -> Path:
    p = d / "plain.s2fin"
    save_file({"weight": torch.zeros(3)}, str(p), metadata={"author": "someone else"})
    return p


def _newer_format(d: Path, tiny: TinyData) -> Path:
    """A consistent file (valid checksum) of format version 999."""
    meta, tensors = _raw(tiny.model)
    document = json.loads(meta["s2fin"])
    document["format_version"] = 999
    meta["s2fin"] = json.dumps(document, sort_keys=True, allow_nan=False)
    meta["format_version"] = "999"
    meta["checksum"] = model_file._checksum(meta["s2fin"], tensors)
    p = d / "future.s2fin"
    save_file(tensors, str(p), metadata=meta)
    return p


def _tampered(d: Path, tiny: TinyData) -> Path:
    meta, tensors = _raw(tiny.model)
    name = next(k for k in sorted(tensors) if k.startswith("model."))
    tensors[name] = tensors[name] + 0.5
    p = d / "tampered.s2fin"
    save_file(tensors, str(p), metadata=meta)
    return p


def _torch_pickle(d: Path, tiny: TinyData) -> Path:
    p = d / "model-pickle.s2fin"
    torch.save({"model": _Evil(d / MARKER)}, p)
    return p


def _plain_pickle(d: Path, tiny: TinyData) -> Path:
    p = d / "model.pt"
    with p.open("wb") as f:
        pickle.dump({"state_dict": _Evil(d / MARKER)}, f)
    return p


REFUSED: dict[str, Callable[[Path, TinyData], Path]] = {
    "truncated": _truncated,
    "not-safetensors": _not_safetensors,
    "no-s2fin-metadata": _plain_safetensors,
    "newer-format": _newer_format,
    "tampered": _tampered,
    "torch-pickle": _torch_pickle,
    "plain-pickle": _plain_pickle,
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_model_file_is_refused(case: str, tiny: TinyData, tmp_path: Path,
                               out_dir: Path) -> None:
    bad = REFUSED[case](tmp_path, tiny)
    before = snapshot(tmp_path)
    result = run_cli(["predict", tiny.scene, "-m", bad, "-o", out_dir / "map.tif",
                      *PREDICT_FAST], cwd=tmp_path)
    line = assert_user_error(result, 6, match=bad.name)
    if case == "newer-format":
        assert "newer" in line and "upgrade" in line
    assert not (tmp_path / MARKER).exists(), "the pickle in the model file was executed"
    assert_nothing_new(before, tmp_path)


def test_model_path_that_is_a_directory(tiny: TinyData, tmp_path: Path, out_dir: Path) -> None:
    model = tmp_path / "model.s2fin"
    model.mkdir()
    result = run_cli(["predict", tiny.scene, "-m", model, "-o", out_dir / "map.tif",
                      *PREDICT_FAST], cwd=tmp_path)
    assert_user_error(result, 3, match="directory")


def test_pickle_is_not_executed_by_inspect_either(tiny: TinyData, tmp_path: Path) -> None:
    bad = _torch_pickle(tmp_path, tiny)
    result = run_cli(["inspect", bad], cwd=tmp_path)
    assert result.returncode != 0 or "error" in result.stdout.lower(), result
    assert "Traceback" not in result.stderr
    assert not (tmp_path / MARKER).exists(), "the pickle in the model file was executed"


def _scene_with(d: Path, *, bands: int = 8, aux_kind: str = "lidar",
                size: int = SIZE) -> Path:
    optical, aux = scene_arrays(size, size, bands, 1, seed=21)
    return write_stacked(d / f"scene-{bands}-{aux_kind}-{size}.tif", optical, aux,
                         utm_grid(size, size), aux_kind=aux_kind)


@pytest.mark.parametrize("case", ["band-count", "lidar-vs-sar-stacked", "lidar-vs-sar-pair"])
def test_model_and_scene_do_not_fit(case: str, tiny: TinyData, tmp_path: Path,
                                    out_dir: Path) -> None:
    if case == "band-count":
        args = [_scene_with(tmp_path, bands=6)]
    elif case == "lidar-vs-sar-stacked":
        args = [_scene_with(tmp_path, aux_kind="sar")]
    else:
        args = ["--hsi", tiny.hsi, "--sar", tiny.lidar]
    before = snapshot(tmp_path)
    result = run_cli(["predict", *args, "-m", tiny.model, "-o", out_dir / "map.tif",
                      *PREDICT_FAST], cwd=tmp_path)
    line = assert_user_error(result, 7)
    assert ("8 optical bands" in line) if case == "band-count" else ("lidar" in line)
    assert_nothing_new(before, tmp_path)


def test_scene_smaller_than_a_patch_works(tiny: TinyData, tmp_path: Path) -> None:
    """The model's patches are 7 x 7: a 3 x 3 scene is reflect-padded (1 x 1: test_inputs)."""
    size = 3
    scene = _scene_with(tmp_path, size=size)
    out = tmp_path / "small.tif"
    result = run_cli(["predict", scene, "-m", tiny.model, "-o", out, *PREDICT_FAST],
                     cwd=tmp_path)
    assert_ok(result)
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (size, size)
        assert np.isin(ds.read(1), [1, 2, 3]).all()

