"""Output problems (8): an existing output, an unwritable or missing directory, a full disk.

A full disk is tested twice: for real, on a tiny tmpfs filled to the last byte (where ``mount``
works, i.e. as root outside a restricted container), and always by injection: a wrapper runs
s2fin's CLI with ``rasterio.open(..., "w")`` datasets whose writes raise ``ENOSPC`` midway.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.harness import (
    CLI_TIMEOUT_S,
    PREDICT_FAST,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_user_error,
    cli_env,
    cli_env_without_osgeo,
    run_cli,
    snapshot,
)


@pytest.mark.parametrize("command", ["predict", "train"])
def test_existing_output_without_overwrite(command: str, tiny: TinyData, tmp_path: Path) -> None:
    existing = tmp_path / ("map.tif" if command == "predict" else "model.s2fin")
    existing.write_bytes(b"precious")
    before = snapshot(tmp_path)
    if command == "predict":
        args = ["predict", tiny.scene, "-m", tiny.model, "-o", existing, *PREDICT_FAST]
    else:
        args = ["train", tiny.scene, "--labels", tiny.labels, "-o", existing, *TINY_TRAIN]
    result = run_cli(args, cwd=tmp_path)
    assert_user_error(result, 8, match="--overwrite")
    assert existing.read_bytes() == b"precious"
    assert_nothing_new(before, tmp_path)


# (predict -o DIR is not an error: it writes DIR/<scene>.classes.tif.)
@pytest.mark.parametrize(("case", "command"), [
    ("missing-directory", "predict"), ("missing-directory", "train"),
    ("directory-as-file", "train")])
def test_output_path_that_cannot_be_a_file(case: str, command: str, tiny: TinyData,
                                           tmp_path: Path) -> None:
    if case == "missing-directory":
        target = tmp_path / "no" / "such" / "dir" / "out.tif"
    else:
        target = tmp_path / "model.s2fin"
        target.mkdir()
    before = snapshot(tmp_path)
    if command == "predict":
        args = ["predict", tiny.scene, "-m", tiny.model, "-o", target, *PREDICT_FAST]
    else:
        args = ["train", tiny.scene, "--labels", tiny.labels, "-o", target, *TINY_TRAIN]
    assert_user_error(run_cli(args, cwd=tmp_path), 8)
    assert_nothing_new(before, tmp_path)


# -- mounts (root only) -----------------------------------------------------------------------

def _mount(target: Path, options: str) -> bool:
    if os.geteuid() != 0:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)],
                          capture_output=True, check=False)
    return done.returncode == 0


@contextlib.contextmanager
def _tmpfs(target: Path, options: str) -> Iterator[bool]:
    target.mkdir(exist_ok=True)
    mounted = _mount(target, options)
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


@contextlib.contextmanager
def _unwritable_directory(parent: Path) -> Iterator[Path]:
    """A directory this process cannot write: chmod 555, or (as root, where chmod does not
    bind) a read-only tmpfs; skips when neither is possible."""
    d = parent / "readonly"
    d.mkdir()
    d.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH
            | stat.S_IXOTH)
    try:
        if not os.access(d, os.W_OK):
            yield d
            return
        with _tmpfs(d, "ro,size=64k") as mounted:
            if not mounted or os.access(d, os.W_OK):
                pytest.skip("cannot make an unwritable directory here (root, and no mount)")
            yield d
    finally:
        d.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("command", ["predict", "train"])
def test_unwritable_directory(command: str, tiny: TinyData, tmp_path: Path) -> None:
    with _unwritable_directory(tmp_path) as d:
        before = snapshot(tmp_path)
        if command == "predict":
            args = ["predict", tiny.scene, "-m", tiny.model, "-o", d / "map.tif",
                    *PREDICT_FAST]
        else:
            args = ["train", tiny.scene, "--labels", tiny.labels, "-o", d / "m.s2fin",
                    *TINY_TRAIN]
        assert_user_error(run_cli(args, cwd=tmp_path), 8, match="not writable")
        assert_nothing_new(before, tmp_path)


def _fill(directory: Path) -> None:
    """Write into ``directory`` until the file system is full (unbuffered: to the last byte)."""
    for name, chunk in (("filler", 4096), ("filler-tail", 1)):
        with contextlib.suppress(OSError), (directory / name).open("wb", buffering=0) as f:
            while True:
                f.write(b"\0" * chunk)
    with pytest.raises(OSError):
        (directory / "probe").write_bytes(b"\0")
    (directory / "probe").unlink(missing_ok=True)


# predict-without-osgeo: nothing reopened the map after writing it without GDAL's Python
# bindings, so a failed close (GDAL reports it only as a message) left a partial map.tif
# (issue 12 #15). Now every raster is read back before it replaces anything.
@pytest.mark.parametrize("command", ["predict", "predict-without-osgeo", "train"])
def test_full_disk_for_real(command: str, tiny: TinyData, tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    env = cli_env_without_osgeo() if command == "predict-without-osgeo" else cli_env()
    with _tmpfs(disk, "size=256k") as mounted:
        if not mounted:
            pytest.skip("mounting a tmpfs needs root (the injected full disk still runs)")
        _fill(disk)
        before = snapshot(disk)
        if command.startswith("predict"):
            args = ["predict", tiny.scene, "-m", tiny.model, "-o", disk / "map.tif",
                    *PREDICT_FAST]
        else:
            args = ["train", tiny.scene, "--labels", tiny.labels, "-o", disk / "m.s2fin",
                    *TINY_TRAIN]
        assert_user_error(run_cli(args, cwd=tmp_path, env=env), 8, match="disk full")
        assert_nothing_new(before, disk)


# The wrapper: every dataset rasterio opens for writing raises ENOSPC on its second write (the
# first block goes through, so the temporary file exists when the disk "fills up"), then the
# real CLI runs.
_FULL_DISK_WRAPPER = """
import errno, sys
import rasterio

_open = rasterio.open


class _FillingDataset:
    def __init__(self, dataset):
        object.__setattr__(self, "_ds", dataset)
        object.__setattr__(self, "_writes", 0)

    def __getattr__(self, name):
        return getattr(self._ds, name)

    def __setattr__(self, name, value):
        setattr(self._ds, name, value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._ds.close()

    def write(self, *args, **kwargs):
        object.__setattr__(self, "_writes", self._writes + 1)
        if self._writes > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self._ds.write(*args, **kwargs)


def _filling_open(path, mode="r", *args, **kwargs):
    dataset = _open(path, mode, *args, **kwargs)
    return _FillingDataset(dataset) if mode == "w" else dataset


rasterio.open = _filling_open
from s2fin_cli.cli.app import main
sys.argv[0] = "s2fin"
main()
"""


def test_full_disk_injected_midway_through_predict(tiny: TinyData, tmp_path: Path,
                                                   out_dir: Path) -> None:
    before = snapshot(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_WRAPPER, "predict", str(tiny.scene), "-m",
         str(tiny.model), "-o", str(out_dir / "map.tif"), *PREDICT_FAST, "--block-size", "8",
         "--probabilities", str(out_dir / "p.tif")],
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        check=False)
    assert_user_error(result, 8, match="disk full")
    assert_nothing_new(before, tmp_path)
