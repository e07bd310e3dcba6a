"""Where s2fin may write (issue 12 #1-#4, #12, #14, #15): never over an input, never over a
non-regular file, sidecars like their output, GDAL's refusals before anything is replaced, and
signals that end a run without leaving anything behind. (#15, a full disk during predict without
osgeo, is a case of test_outputs.py::test_full_disk_for_real.)

Every refused case checks that no file changed: the SHA-256 of every file in the directories
involved is the same before and after the run, and no file appeared.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    BANDS,
    CLI_TIMEOUT_S,
    PREDICT_FAST,
    TINY_TRAIN,
    TinyData,
    assert_ok,
    assert_user_error,
    cli_env,
    cli_env_without_osgeo,
    digests,
    leftovers,
    run_cli,
)


def _refused(args: list[object], code: int, cwd: Path, *watched: Path,
             match: str | None = None) -> str:
    """Run the CLI; it must fail with ``code`` (one error line) and change no file."""
    before = digests(*watched)
    line = assert_user_error(run_cli(args, cwd=cwd), code, match=match)
    assert digests(*watched) == before, "a file changed, appeared or vanished"
    return line


@pytest.fixture
def inputs(tiny: TinyData, tmp_path: Path) -> Path:
    """A private copy of the session's inputs, which these cases try to destroy."""
    for path in (tiny.scene, tiny.hsi, tiny.lidar, tiny.labels, tiny.test_labels, tiny.model):
        shutil.copy2(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture(scope="module")
def good_map(tiny: TinyData, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished class map with its sidecars (and probabilities): what must survive."""
    d = tmp_path_factory.mktemp("good_map")
    assert_ok(run_cli(["predict", tiny.scene, "-m", tiny.model, "-o", d / "map.tif",
                       "--probabilities", d / "p.tif", *PREDICT_FAST], cwd=d))
    assert {"map.tif", "map.qml", "map.tif.aux.xml", "p.tif", "p.qml"} <= {
        p.name for p in d.iterdir()}
    return d


# -- #1: no output may be an input ------------------------------------------------------------

@pytest.mark.parametrize("how", ["same-path", "symlink", "hard-link", "behind-a-vrt"])
def test_stack_never_writes_over_an_input(how: str, inputs: Path) -> None:
    hsi = "hsi.tif"
    if how == "behind-a-vrt":
        assert_ok(run_cli(["stack", "--hsi", "hsi.tif", "--lidar", "lidar.tif", "-o",
                           "scene.vrt"], cwd=inputs))
        hsi = "scene.vrt"  # reads hsi.tif and lidar.tif
    target = {"same-path": "hsi.tif", "symlink": "link.tif", "hard-link": "hard.tif",
              "behind-a-vrt": "hsi.tif"}[how]
    if how == "symlink":
        (inputs / "link.tif").symlink_to(inputs / "hsi.tif")
    if how == "hard-link":
        os.link(inputs / "hsi.tif", inputs / "hard.tif")
    line = _refused(["stack", "--hsi", hsi, "--lidar", "lidar.tif", "-o", target, "--overwrite"],
                    8, inputs, inputs, match="input")
    assert "hsi.tif" in line


def test_predict_model_named_as_output(inputs: Path) -> None:
    # The map is a GeoTIFF: "-o model.s2fin" is refused by its extension before anything.
    _refused(["predict", "scene.tif", "-m", "model.s2fin", "-o", "model.s2fin", "--overwrite",
              *PREDICT_FAST], 8, inputs, inputs, match="model.s2fin")


def test_predict_never_writes_over_a_file_behind_a_vrt(inputs: Path) -> None:
    assert_ok(run_cli(["stack", "--hsi", "hsi.tif", "--lidar", "lidar.tif", "-o", "scene.vrt"],
                      cwd=inputs))
    _refused(["predict", "scene.vrt", "-m", "model.s2fin", "-o", "hsi.tif", "--overwrite",
              *PREDICT_FAST], 8, inputs, inputs, match="hsi.tif")


def test_evaluate_never_writes_over_its_labels(inputs: Path, good_map: Path) -> None:
    shutil.copy2(good_map / "map.tif", inputs / "map.tif")
    _refused(["evaluate", "map.tif", "--labels", "test.tif", "--csv", "test.tif",
              "--overwrite"], 8, inputs, inputs, match="test.tif")


def test_train_never_writes_over_its_labels(inputs: Path) -> None:
    _refused(["train", "scene.tif", "--labels", "train.tif", "-o", "train.tif", "--overwrite",
              *TINY_TRAIN], 8, inputs, inputs, match="train.tif")


def test_merge_never_writes_over_a_part(tiny: TinyData, tmp_path: Path) -> None:
    for i in range(2):
        assert_ok(run_cli(["predict", tiny.scene, "-m", tiny.model, "-o", "map.tif",
                           "--probabilities", "p.tif", "--shard", f"{i}/2", "--block-size", "8",
                           *PREDICT_FAST], cwd=tmp_path))
    parts = sorted(str(p.name) for p in tmp_path.glob("map.part-*.tif"))
    _refused(["merge", *parts, "-o", parts[0], "--overwrite"], 8, tmp_path, tmp_path,
             match=parts[0])
    # The probability parts are read too.
    _refused(["merge", *parts, "-o", "m.tif", "--probabilities", "p.part-0001-of-0002.tif",
              "--overwrite"], 8, tmp_path, tmp_path, match="p.part-0001-of-0002.tif")


def test_trailing_separator_names_a_directory(tiny: TinyData, tmp_path: Path) -> None:
    for args in (["predict", tiny.scene, "-m", tiny.model, *PREDICT_FAST],
                 ["train", tiny.scene, "--labels", tiny.labels, *TINY_TRAIN]):
        _refused([*args, "-o", "newdir/"], 8, tmp_path, tmp_path, match="path separator")
        assert not (tmp_path / "newdir").exists()


# -- #2, #13, #14: creation options GDAL refuses ----------------------------------------------

@pytest.mark.parametrize(("option", "reason"), [
    ("BLOCKXSIZE=7", "TileWidth"), ("BLOCKXSIZE=100", "TileWidth"),
    ("PREDICTOR=3", "only supported"), ("COMPRESS=FOO", "FOO"), ("NO_SUCH_OPTION=1", "support"),
])
def test_creation_option_gdal_refuses_replaces_nothing(option: str, reason: str,
                                                       tiny: TinyData, good_map: Path,
                                                       tmp_path: Path) -> None:
    for path in good_map.iterdir():
        shutil.copy2(path, tmp_path / path.name)
    line = _refused(["predict", tiny.scene, "-m", tiny.model, "-o", "map.tif", "--probabilities",
                     "p.tif", "--overwrite", "--co", option, *PREDICT_FAST], 9, tmp_path,
                    tmp_path, tiny.root, match=option)
    assert reason.lower() in line.lower() and "GDAL" in line


def test_creation_option_refused_by_stack_synth_and_cog(tiny: TinyData, tmp_path: Path) -> None:
    _refused(["stack", "--hsi", tiny.hsi, "--lidar", tiny.lidar, "-o", "s.tif", "--co",
              "COMPRESS=FOO"], 9, tmp_path, tmp_path, match="COMPRESS=FOO")
    _refused(["synth", "scene", "--size", "48", "--bands", "8", "--co", "BLOCKXSIZE=7"], 9,
             tmp_path, tmp_path, match="BLOCKXSIZE=7")
    assert not (tmp_path / "scene").exists()
    _refused(["predict", tiny.scene, "-m", tiny.model, "-o", "m.tif", "--cog", "--co",
              "COMPRESS=FOO", *PREDICT_FAST], 9, tmp_path, tmp_path, match="COMPRESS=FOO")


# -- #3: non-regular outputs ------------------------------------------------------------------

def _special_files(directory: Path) -> list[Path]:
    fifo = directory / "fifo.tif"
    os.mkfifo(fifo)
    out = [fifo]
    if os.geteuid() == 0:  # a character device like /dev/null (only root may make one)
        dev = directory / "null.tif"
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        out.append(dev)
    return out


def test_non_regular_output_is_refused_even_with_overwrite(tiny: TinyData,
                                                           tmp_path: Path) -> None:
    for special in _special_files(tmp_path):
        for args in (["predict", tiny.scene, "-m", tiny.model, *PREDICT_FAST],
                     ["stack", "--hsi", tiny.hsi, "--lidar", tiny.lidar]):
            _refused([*args, "-o", special, "--overwrite"], 8, tmp_path, tmp_path,
                     match="not a regular file")
        assert not stat.S_ISREG(os.lstat(special).st_mode)


# -- #4: sidecars follow their output's rule ---------------------------------------------------

def test_sidecars_obey_overwrite(inputs: Path, good_map: Path) -> None:
    # train.tif has train.qml beside it (s2fin wrote it with the class table) ...
    shutil.copy2(good_map / "map.qml", inputs / "train.qml")
    args = ["predict", "scene.tif", "-m", "model.s2fin", "-o", "train.tiff", *PREDICT_FAST]
    _refused(args, 8, inputs, inputs, match="train.qml exists")
    # ... and with --overwrite its style is still another raster's.
    _refused([*args, "--overwrite"], 8, inputs, inputs, match="also styles")
    # A stale PAM sidecar without its raster is an existing output too.
    (inputs / "fresh.tif.aux.xml").write_text("<PAMDataset/>")
    _refused(["predict", "scene.tif", "-m", "model.s2fin", "-o", "fresh.tif", *PREDICT_FAST],
             8, inputs, inputs, match="fresh.tif.aux.xml")


# -- #14: names --------------------------------------------------------------------------------

def test_output_names_say_what_is_written(tiny: TinyData, tmp_path: Path) -> None:
    _refused(["predict", tiny.scene, "-m", tiny.model, "-o", "map.png", *PREDICT_FAST], 8,
             tmp_path, tmp_path, match=".tif")
    _refused(["stack", "--hsi", tiny.hsi, "--lidar", tiny.lidar, "-o", "newdir/"], 8, tmp_path,
             tmp_path, match="directory")
    assert not (tmp_path / "newdir").exists()


# -- #12: SIGTERM and SIGHUP -------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_termination_signal_midway_through_predict(sig: signal.Signals, tiny: TinyData,
                                                   tmp_path: Path) -> None:
    size = 128  # 256 blocks of 8 x 8: seconds of work, long after the outputs are opened
    optical, aux = scene_arrays(size, size, BANDS, 1, seed=43)
    scene = write_stacked(tmp_path / "large.tif", optical, aux, utm_grid(size, size))
    out = tmp_path / "out"
    out.mkdir()
    (out / "map.tif").write_bytes(b"yesterday's map")  # replaced only by a finished map
    before = digests(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2fin_cli", "predict", str(scene), "-m", str(tiny.model), "-o",
         str(out / "map.tif"), "--probabilities", str(out / "p.tif"), "--overwrite", "--device",
         "cpu", "--batch-size", "64", "--block-size", "8"],
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + CLI_TIMEOUT_S
    while not leftovers(out):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no temporary output appeared"
        time.sleep(0.02)
    time.sleep(0.5)  # blocks are being written
    assert proc.poll() is None, "predict finished before the signal"
    proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"still running 60 s after {sig.name}") from None
    result = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert_user_error(result, 128 + int(sig), match=f"interrupted by {sig.name}")
    assert digests(tmp_path) == before
    assert not leftovers(tmp_path)


# -- #15: without GDAL's Python bindings (the full disk case: test_outputs.py) -----------------

def test_osgeo_can_be_hidden_from_the_cli() -> None:
    env = cli_env_without_osgeo()
    done = subprocess.run([sys.executable, "-c", "import osgeo"], env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode != 0 and "hidden" in done.stderr
