"""Two batch jobs writing different outputs into one directory at the same time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import rasterio

from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    BANDS,
    CLI_TIMEOUT_S,
    TinyData,
    assert_ok,
    cli_env,
    leftovers,
    run_cli,
)

ARGS = ["--device", "cpu", "--batch-size", "64", "--block-size", "8"]


def _read(path: Path) -> tuple[np.ndarray, dict[str, str]]:
    with rasterio.open(path) as ds:
        tags = ds.tags()
        return ds.read(1), {k: v for k, v in tags.items() if k != "S2FIN_MODEL"}


def test_two_predicts_into_one_directory(tiny: TinyData, tmp_path: Path) -> None:
    size = 32
    optical, aux = scene_arrays(size, size, BANDS, 1, seed=51)
    scene = write_stacked(tmp_path / "scene.tif", optical, aux, utm_grid(size, size))
    shared = tmp_path / "maps"
    shared.mkdir()
    procs = [subprocess.Popen([sys.executable, "-m", "s2fin_cli", "predict", str(scene), "-m",
                               str(tiny.model), "-o", str(shared / f"{name}.tif"),
                               "--confidence", str(shared / f"{name}.confidence.tif"), *ARGS],
                              cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for name in ("a", "b")]
    for proc in procs:
        out, err = proc.communicate(timeout=CLI_TIMEOUT_S)
        assert_ok(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))

    single = tmp_path / "single.tif"
    assert_ok(run_cli(["predict", scene, "-m", tiny.model, "-o", single, "--confidence",
                       tmp_path / "single.confidence.tif", *ARGS], cwd=tmp_path))
    reference, tags = _read(single)
    assert np.isin(reference, [1, 2, 3]).all()
    for name in ("a", "b"):
        classes, map_tags = _read(shared / f"{name}.tif")
        np.testing.assert_array_equal(classes, reference)
        assert map_tags == tags
        confidence, _ = _read(shared / f"{name}.confidence.tif")
        np.testing.assert_array_equal(confidence, _read(tmp_path / "single.confidence.tif")[0])
        assert (shared / f"{name}.qml").read_text() == (tmp_path / "single.qml").read_text()
    assert sorted(p.name for p in shared.iterdir() if not p.name.endswith(".aux.xml")) == [
        "a.confidence.qml", "a.confidence.tif", "a.qml", "a.tif", "b.confidence.qml",
        "b.confidence.tif", "b.qml", "b.tif"]
    assert not leftovers(tmp_path)
