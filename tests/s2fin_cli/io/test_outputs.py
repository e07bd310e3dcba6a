"""check_outputs: the one output-path check every command shares (its contract, rule by rule)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from s2fin_cli.errors import OutputError
from s2fin_cli.io.outputs import Output, check_outputs, files_read, raster_output
from s2fin_cli.io.reader import open_scene
from s2fin_cli.io.stack import write_stack_vrt
from s2fin_cli.io.writer import AtomicGroup, write_raster, write_text
from tests.helpers import utm_grid


@pytest.fixture
def rasters(tmp_path: Path) -> Path:
    grid = utm_grid(8, 8)
    write_raster(tmp_path / "hsi.tif", np.ones((3, 8, 8), np.float32), grid)
    write_raster(tmp_path / "lidar.tif", np.ones((1, 8, 8), np.float32), grid)
    return tmp_path


def test_an_input_is_never_an_output(rasters: Path) -> None:
    hsi = rasters / "hsi.tif"
    (rasters / "link.tif").symlink_to(hsi)
    os.link(hsi, rasters / "hard.tif")
    for target in ("hsi.tif", "link.tif", "hard.tif", "./hsi.tif"):
        with pytest.raises(OutputError, match="input"):
            check_outputs([raster_output(rasters / target)], [hsi], overwrite=True)
    # A sidecar of an output that is an input (a model next to a map, say) is refused too.
    (rasters / "m.qml").write_text("<qgis/>")
    with pytest.raises(OutputError, match=r"m\.qml"):
        check_outputs([raster_output(rasters / "m.tif", style=True)], [rasters / "m.qml"],
                      overwrite=True)


def test_files_behind_a_vrt_are_inputs(rasters: Path) -> None:
    with open_scene(rasters / "hsi.tif", rasters / "lidar.tif", "lidar") as scene:
        write_stack_vrt(scene, rasters / "scene.vrt")
    read = {p.resolve() for p in files_read([rasters / "scene.vrt"])}
    assert {rasters / "hsi.tif", rasters / "lidar.tif", rasters / "scene.vrt"} <= read
    with pytest.raises(OutputError, match=r"lidar\.tif"):
        check_outputs([raster_output(rasters / "lidar.tif")], [rasters / "scene.vrt"],
                      overwrite=True)


def test_existing_outputs_and_sidecars(rasters: Path) -> None:
    out = raster_output(rasters / "map.tif", style=True)
    assert check_outputs([out, None, rasters / "r.json"], [], overwrite=False) == [
        rasters / "map.tif", rasters / "map.tif.aux.xml", rasters / "map.tif.ovr",
        rasters / "map.tif.msk", rasters / "map.qml", rasters / "r.json"]
    (rasters / "map.qml").write_text("<qgis/>")
    with pytest.raises(OutputError, match=r"map\.qml exists"):
        check_outputs([out], [], overwrite=False)
    check_outputs([out], [], overwrite=True)
    # A style that also belongs to another raster: never replaced.
    with pytest.raises(OutputError, match="also styles"):
        check_outputs([raster_output(rasters / "hsi.tiff", style=True)], [], overwrite=True)
    (rasters / "hsi.qml").write_text("<qgis/>")
    with pytest.raises(OutputError, match="also styles"):
        check_outputs([raster_output(rasters / "hsi.tiff", style=True)], [], overwrite=True)


def test_outputs_that_are_one_file(rasters: Path) -> None:
    with pytest.raises(OutputError, match="twice"):
        check_outputs([raster_output(rasters / "a.tif", style=True),
                       raster_output(rasters / "a.tiff", style=True)], [], overwrite=True)
    with pytest.raises(OutputError, match="twice"):
        check_outputs([rasters / "x.csv", str(rasters / "x.csv")], [], overwrite=True)


def test_non_regular_files_names_and_extensions(rasters: Path) -> None:
    os.mkfifo(rasters / "fifo.tif")
    with pytest.raises(OutputError, match="not a regular file"):
        check_outputs([raster_output(rasters / "fifo.tif")], [], overwrite=True)
    with pytest.raises(OutputError, match="path separator"):
        check_outputs([Output(str(rasters / "newdir") + "/", "GTiff")], [], overwrite=True)
    with pytest.raises(OutputError, match=r"\.png"):
        check_outputs([raster_output(rasters / "map.png")], [], overwrite=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_outputs([rasters], [], overwrite=True)
    check_outputs([raster_output(rasters / "map.TIFF"), raster_output(rasters / "noext")], [],
                  overwrite=False)


def test_group_commits_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), AtomicGroup() as group:
        write_text(tmp_path / "a.txt", "new a", overwrite=True, group=group)
        write_text(tmp_path / "b.txt", "new b", group=group)
        raise RuntimeError("the third file failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
    assert (tmp_path / "a.txt").read_text() == "old a"
    with AtomicGroup() as group:
        write_text(tmp_path / "a.txt", "new a", overwrite=True, group=group)
        write_text(tmp_path / "b.txt", "new b", group=group)
        assert (tmp_path / "a.txt").read_text() == "old a"  # nothing before the end
    assert (tmp_path / "a.txt").read_text() == "new a" and (tmp_path / "b.txt").exists()
