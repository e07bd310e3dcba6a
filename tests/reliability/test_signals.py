"""Ctrl-C (SIGINT) midway: exit 130, no partial output; ``train --resume`` then completes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from s2fin_cli.model_file import load_model_file
from tests.helpers import scene_arrays, utm_grid, write_stacked
from tests.reliability.harness import (
    BANDS,
    CLI_TIMEOUT_S,
    TINY_TRAIN,
    TinyData,
    assert_nothing_new,
    assert_ok,
    assert_user_error,
    cli_env,
    leftovers,
    run_cli,
    snapshot,
)

POLL_S = 0.02


def _start(args: list[object], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "s2fin_cli", *map(str, args)], cwd=cwd,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _wait_for(proc: subprocess.Popen[str], found: object, what: str,
              timeout: float = CLI_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not found():  # type: ignore[operator]
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited {proc.returncode} before {what}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(POLL_S)


def _interrupt(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"still running 60 s after SIGINT:\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_sigint_midway_through_predict(tiny: TinyData, tmp_path: Path, out_dir: Path) -> None:
    size = 128  # 256 blocks of 8 x 8: seconds of work, long after the output is opened
    optical, aux = scene_arrays(size, size, BANDS, 1, seed=41)
    scene = write_stacked(tmp_path / "large.tif", optical, aux, utm_grid(size, size))
    before = snapshot(tmp_path)
    proc = _start(["predict", scene, "-m", tiny.model, "-o", out_dir / "map.tif",
                   "--probabilities", out_dir / "p.tif", "--device", "cpu", "--batch-size",
                   "64", "--block-size", "8"], tmp_path)
    _wait_for(proc, lambda: leftovers(out_dir), "the temporary output file")
    time.sleep(0.5)  # blocks are being written
    assert proc.poll() is None, "predict finished before it could be interrupted"
    result = _interrupt(proc)
    assert_user_error(result, 130, match="interrupted")
    assert_nothing_new(before, tmp_path)


def test_sigint_midway_through_train_then_resume(tiny: TinyData, tmp_path: Path,
                                                 out_dir: Path) -> None:
    model = out_dir / "m.s2fin"
    checkpoint = out_dir / "m.s2fin.ckpt"
    # A checkpoint after every epoch; SIGINT as soon as the first exists, long before the 12th.
    args: list[object] = ["train", tiny.scene, "--labels", tiny.labels, "-o", model,
                          *TINY_TRAIN, "--epochs", "12", "--patience", "1000"]
    proc = _start(args, tmp_path)
    _wait_for(proc, checkpoint.exists, "the first checkpoint")
    assert proc.poll() is None, "train finished before it could be interrupted"
    result = _interrupt(proc)
    assert_user_error(result, 130, match="interrupted")
    assert not model.exists()
    assert not (out_dir / "m.s2fin.report.json").exists()
    assert not leftovers(tmp_path)
    assert checkpoint.exists(), "the checkpoint to resume from is gone"

    resumed = run_cli([*args, "--resume"], cwd=tmp_path)
    assert_ok(resumed)
    assert "resuming from" in resumed.stderr
    assert model.is_file() and not checkpoint.exists()
    assert not leftovers(tmp_path)
    bundle = load_model_file(model)
    assert bundle.provenance["epochs_run"] == 12
