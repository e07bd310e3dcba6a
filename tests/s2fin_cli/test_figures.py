"""PNG figures: valid files of sensible size, decimated reading, atomic/overwrite behaviour."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import OutputError
from s2fin_cli.figures import confusion_figure, figure_paths, map_quicklook, read_decimated
from s2fin_cli.io.writer import write_raster
from s2fin_cli.metrics import AccuracyReport
from tests.helpers import REPO_ROOT, utm_grid

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TABLE = ClassTable.from_ids([1, 2, 3], {1: "water", 2: "trees", 3: "a rather long class name "
                                        "that gets shortened"})


def _png_shape(path: Path) -> tuple[int, ...]:
    import matplotlib.image

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    return tuple(image.shape)


def _report(unpredicted: bool = True) -> AccuracyReport:
    matrix = np.array([[40, 3, 0, 2 if unpredicted else 0], [5, 60, 1, 0], [0, 0, 0, 0]])
    return AccuracyReport.from_matrix(matrix, TABLE)


@pytest.mark.parametrize("unpredicted", [True, False])
def test_confusion_figure_is_a_png(tmp_path: Path, unpredicted: bool) -> None:
    out = confusion_figure(_report(unpredicted), tmp_path / "cm.png", title="test")
    h, w, channels = _png_shape(out)
    assert 400 < h < 4000 and 400 < w < 4000 and channels in (3, 4)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary left behind


def test_confusion_figure_many_classes_without_annotations(tmp_path: Path) -> None:
    k = 30
    table = ClassTable.from_ids(range(1, k + 1))
    matrix = np.diag(np.arange(1, k + 1)) + 1
    out = confusion_figure(AccuracyReport.from_matrix(matrix, table), tmp_path / "cm.png")
    h, w, _ = _png_shape(out)
    assert h < 4000 and w < 4000


def test_existing_figure_refused_without_overwrite(tmp_path: Path) -> None:
    out = confusion_figure(_report(), tmp_path / "cm.png")
    with pytest.raises(OutputError, match="exists"):
        confusion_figure(_report(), out)
    confusion_figure(_report(False), out, overwrite=True)
    _png_shape(out)


def _map(tmp_path: Path, width: int = 60, height: int = 30, *, classes: ClassTable | None = TABLE,
         name: str = "map.tif") -> Path:
    grid = utm_grid(width=width, height=height)
    yy, xx = np.mgrid[0:height, 0:width]
    data = (1 + (xx * 3 // width)).astype(np.uint8)
    data[yy < 3] = 0  # nodata stripe
    return write_raster(tmp_path / name, data, grid, nodata=0, classes=classes)


def test_read_decimated_bounds_the_size(tmp_path: Path) -> None:
    path = _map(tmp_path, 60, 30)
    with rasterio.open(path) as ds:
        small = read_decimated(ds, 16)
        full = read_decimated(ds, 1000)
    assert max(small.shape) <= 16 and small.shape == (8, 15)
    assert full.shape == (30, 60)
    assert set(np.unique(small)) <= {0, 1, 2, 3}


def test_map_quicklook_with_and_without_class_table(tmp_path: Path) -> None:
    out = map_quicklook(_map(tmp_path), tmp_path / "look.png", max_size=20)
    h, w, _ = _png_shape(out)
    assert w > h > 100
    plain = _map(tmp_path, 20, 40, classes=None, name="plain.tif")
    out2 = map_quicklook(plain, tmp_path / "plain.png", classes=ClassTable.from_ids([1]))
    _png_shape(out2)


def test_figure_paths() -> None:
    assert [p.name for p in figure_paths("figs", quicklook=True)] == [
        "confusion_matrix.png", "map_quicklook.png"]
    assert [p.name for p in figure_paths("figs", quicklook=False)] == ["confusion_matrix.png"]


def test_cli_and_evaluation_do_not_import_matplotlib() -> None:
    code = ("import sys, s2fin_cli.cli.app, s2fin_cli.evaluation, s2fin_cli.figures; "
            "sys.exit(1 if 'matplotlib' in sys.modules else 0)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
