"""Helpers shared by command modules (never a command itself): argument expansion, the
default model."""

from __future__ import annotations

import glob
from pathlib import Path

from s2fin_cli import console
from s2fin_cli.errors import InputError
from s2fin_cli.model_file import DEFAULT_MODEL_PATH

_GLOB_CHARS = set("*?[")


def expand_paths(patterns: list[str]) -> list[Path]:
    """Path arguments with glob patterns expanded (when the shell did not), in sorted order."""
    out: list[Path] = []
    for text in patterns:
        if not Path(text).exists() and _GLOB_CHARS & set(text):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise InputError(f"no file matches {text!r}")
            out += [Path(m) for m in matches]
        else:
            out.append(Path(text))
    return out


def model_path_or_default(model: Path | None) -> Path:
    """``--model``, or the default model file (said, so a forgotten ``-m`` is visible)."""
    if model is not None:
        return model
    console.note(f"using the default model {DEFAULT_MODEL_PATH} (pass -m to choose another)")
    return Path(DEFAULT_MODEL_PATH)
