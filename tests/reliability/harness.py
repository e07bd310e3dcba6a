"""The reliability matrix's harness: the real CLI as a subprocess and what a batch job on a GIS
server checks of it (the exit code of README's table, one ``error: ...`` line on stderr and no
traceback, no output or temporary file left behind), and the session's tiny inputs.

``S2FIN_TEST_WITHOUT_OSGEO=1`` runs the whole matrix as in a virtual environment without GDAL's
Python bindings: ``import osgeo`` fails in the CLI subprocesses and in this process
(``no_osgeo/sitecustomize.py``). CI runs the matrix both ways.
"""

from __future__ import annotations

import hashlib
import os
import runpy
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tests.helpers import REPO_ROOT, utm_grid

SIZE = 24
BANDS = 8
# A model small enough to train in seconds on a shared 2-core CPU.
TINY_TRAIN = ["--epochs", "2", "--dim", "8", "--depth", "1", "--patch-size", "7",
              "--spectral-window", "3", "--pca", "4", "--batch-size", "16", "--warmup-epochs",
              "0", "--split-block", "8", "--val-fraction", "0.25", "--min-steps", "0",
              "--device", "cpu"]
PREDICT_FAST = ["--device", "cpu", "--batch-size", "256"]
CLI_TIMEOUT_S = 180
WITHOUT_OSGEO = os.environ.get("S2FIN_TEST_WITHOUT_OSGEO") == "1"
_HIDE_OSGEO = Path(__file__).resolve().parent / "no_osgeo"
if WITHOUT_OSGEO:
    runpy.run_path(str(_HIDE_OSGEO / "sitecustomize.py"))


def cli_env(**extra: str) -> dict[str, str]:
    """The environment of a CLI subprocess: one torch/BLAS thread (2 shared cores), the
    repository importable, no colours (and no osgeo with ``S2FIN_TEST_WITHOUT_OSGEO=1``)."""
    env = dict(os.environ)
    paths = [*([str(_HIDE_OSGEO)] if WITHOUT_OSGEO else []), str(REPO_ROOT),
             env.get("PYTHONPATH")]
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", NO_COLOR="1", TERM="dumb",
               PYTHONPATH=os.pathsep.join(filter(None, paths)))
    env.pop("GDAL_CACHEMAX", None)
    env.update(extra)
    return env


def cli_env_without_osgeo(**extra: str) -> dict[str, str]:
    """:func:`cli_env` with GDAL's Python bindings hidden, whatever S2FIN_TEST_WITHOUT_OSGEO."""
    env = cli_env(**extra)
    if not WITHOUT_OSGEO:
        env["PYTHONPATH"] = os.pathsep.join([str(_HIDE_OSGEO), env["PYTHONPATH"]])
    return env


def run_cli(args: Sequence[str | os.PathLike[str]], *, cwd: Path | None = None,
            env: dict[str, str] | None = None,
            timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """``python -m s2fin_cli ARGS`` as a subprocess, stdout and stderr captured."""
    return subprocess.run([sys.executable, "-m", "s2fin_cli", *map(str, args)], cwd=cwd,
                          env=env or cli_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def snapshot(*directories: Path) -> set[Path]:
    """Every file under ``directories`` (recursively), to compare before and after a run."""
    out: set[Path] = set()
    for d in directories:
        if d.is_dir():
            out |= {p for p in d.rglob("*")}
    return out


def digests(*directories: Path) -> dict[str, str]:
    """Every file under ``directories`` with its SHA-256 (other kinds of files, FIFOs and
    devices, with their kind): compare before and after a run to prove nothing changed."""
    out: dict[str, str] = {}
    for d in directories:
        for p in sorted(d.rglob("*")) if d.is_dir() else []:
            mode = os.lstat(p).st_mode
            if stat.S_ISREG(mode):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif not stat.S_ISDIR(mode):
                out[str(p)] = f"mode {stat.S_IFMT(mode):o}"
    return out


def leftovers(directory: Path) -> list[str]:
    """Temporary files of s2fin's atomic writes (or COG staging files) under ``directory``."""
    return sorted(p.name for p in directory.rglob("*")
                  if ".s2fin-tmp-" in p.name or ".stage" in p.name)


def assert_user_error(result: subprocess.CompletedProcess[str], code: int, *,
                      match: str | None = None) -> str:
    """Exit ``code``, the last stderr line ``error: ...`` (the only error line), no traceback,
    any other line a warning or a note; returns the error line."""
    err = result.stderr
    context = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{err}"
    assert result.returncode == code, context
    assert "Traceback" not in err, context
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines, context
    errors = [line for line in lines if line.lower().startswith("error")]
    assert errors == [lines[-1]], context
    line = lines[-1]
    assert line.startswith("error: "), context
    assert "internal error" not in line, context
    assert len(line) > len("error: ") + 15, context  # says what is wrong, not just "failed"
    if match is not None:
        assert match.lower() in line.lower(), context
    return line


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, (f"exit {result.returncode}\nstdout:\n{result.stdout}\n"
                                    f"stderr:\n{result.stderr}")
    assert "Traceback" not in result.stderr, result.stderr


def assert_nothing_new(before: set[Path], *directories: Path) -> None:
    """No file appeared under ``directories`` since ``before``, temporary files included."""
    after = snapshot(*directories)
    new = sorted(str(p) for p in after - before)
    assert not new, f"files left behind: {new}"
    for d in directories:
        assert not leftovers(d), leftovers(d)


@dataclass(frozen=True)
class TinyData:
    """The session's inputs: a stacked scene, the same as an HSI + LiDAR pair, labels, a model."""

    root: Path
    scene: Path  # 8 optical + 1 LiDAR band, s2fin band tags
    hsi: Path
    lidar: Path
    labels: Path  # 3 classes, sparse
    test_labels: Path
    model: Path

    @property
    def grid(self):  # type: ignore[no-untyped-def]
        return utm_grid(SIZE, SIZE)


def class_stripes(size: int = SIZE) -> np.ndarray:
    cols = np.mgrid[0:size, 0:size][1]
    return (cols * 3 // size + 1).astype(np.uint8)
