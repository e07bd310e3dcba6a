"""The training checkpoint: what ``--resume`` needs to continue a killed run exactly.

``<output>.ckpt`` is written atomically after every epoch with ``torch.save`` and read with
``torch.load(weights_only=True)``: tensors and primitives only, no arbitrary unpickling. It holds
the run's **fingerprint** (a JSON text of everything that decides the weights: input checksums,
protocol, samples digest, settings, network options, world size), the fitted preprocessing, and
the loop's :class:`LoopState`. A checkpoint resumes only a run with the same fingerprint; it is
removed once the model file is written (unless ``--keep-checkpoint``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from s2fin_cli import console
from s2fin_cli.errors import ConfigError, ModelFileError
from s2fin_cli.io.writer import atomic_output

CHECKPOINT_FORMAT = "s2fin-checkpoint"
CHECKPOINT_VERSION = 1


def checkpoint_path_for(output: Path) -> Path:
    """``model.s2fin`` → ``model.s2fin.ckpt``."""
    return output.with_name(output.name + ".ckpt")


@dataclass
class LoopState:
    """The training loop after ``epoch`` epochs (all it needs to continue exactly)."""

    epoch: int
    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    best_state: dict[str, Tensor]
    best_epoch: int
    best_score: tuple[float, float]
    bad_epochs: int
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False
    averaged: dict[str, Tensor] = field(default_factory=dict)  # the weight average (--ema)
    average_steps: int = 0
    # consistency training's learning status of its pool (class-adaptive thresholds)
    consistency_status: Tensor | None = None
    # consistency training's teacher: its averaged weights and updates so far
    teacher: dict[str, Tensor] = field(default_factory=dict)
    teacher_steps: int = 0

    def to_payload(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "model": self.model, "optimizer": self.optimizer,
                "scaler": self.scaler, "best_state": self.best_state,
                "best_epoch": self.best_epoch,
                "best_score": [float(self.best_score[0]), float(self.best_score[1])],
                "bad_epochs": self.bad_epochs, "history": self.history,
                "stopped_early": self.stopped_early, "averaged": self.averaged,
                "average_steps": self.average_steps,
                "consistency_status": self.consistency_status, "teacher": self.teacher,
                "teacher_steps": self.teacher_steps}

    @classmethod
    def from_payload(cls, data: dict[str, Any]) -> LoopState:
        return cls(int(data["epoch"]), data["model"], data["optimizer"], data.get("scaler") or {},
                   {k: v.clone() for k, v in data["best_state"].items()},
                   int(data["best_epoch"]),
                   (float(data["best_score"][0]), float(data["best_score"][1])),
                   int(data["bad_epochs"]), list(data["history"]),
                   bool(data.get("stopped_early", False)),
                   {k: v.clone() for k, v in (data.get("averaged") or {}).items()},
                   int(data.get("average_steps", 0)),
                   status.clone() if isinstance(status := data.get("consistency_status"), Tensor)
                   else None,
                   {k: v.clone() for k, v in (data.get("teacher") or {}).items()},
                   int(data.get("teacher_steps", 0)))


@dataclass
class Checkpoint:
    """A run's fingerprint and preprocessing, and the loop state (absent before epoch 1).

    Self-training runs two fits: ``stage`` 2 is the second, on the labels plus the
    ``pseudo``-labels (rows, cols, classes) chosen after the first, whose report is kept in
    ``stage_one``; a run killed in either stage resumes there.
    """

    fingerprint: str
    preprocessing: dict[str, Tensor]
    loop: LoopState | None = None
    stage: int = 1
    pseudo: dict[str, Tensor] = field(default_factory=dict)
    stage_one: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    """Write a checkpoint (tensors and primitives only) atomically."""
    payload: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
                               "fingerprint": checkpoint.fingerprint,
                               "preprocessing": checkpoint.preprocessing}
    if checkpoint.stage != 1:
        payload.update(stage=checkpoint.stage, pseudo=checkpoint.pseudo,
                       stage_one=checkpoint.stage_one)
    if checkpoint.loop is not None:
        payload.update(checkpoint.loop.to_payload())
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no arbitrary unpickling)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for foreign or truncated files
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "weights only load failed" in first.lower():
            # torch's own advice (weights_only=False) would execute the file's code: never.
            first = "it holds objects other than tensors and plain values (not unpickled)"
        raise ModelFileError(f"checkpoint {path} cannot be read: {first[:200]}",
                             hint="delete it to start over") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path} is not an s2fin training checkpoint")
    if data.get("version") != CHECKPOINT_VERSION:
        raise ModelFileError(f"checkpoint {path} has version {data.get('version')}, this s2fin "
                             f"writes {CHECKPOINT_VERSION}", hint="delete it to start over")
    return data


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The top-level keys in which two fingerprints differ."""
    keys = sorted(set(saved) | set(current))
    return [k for k in keys if saved.get(k) != current.get(k)]


def resume_checkpoint(path: Path, fingerprint: dict[str, Any], *,
                      resume: bool) -> Checkpoint | None:
    """The checkpoint to continue from: None to start over (no ``--resume``, or no file); a
    checkpoint of another run is a :class:`ConfigError` naming what differs."""
    if not resume:
        if path.exists():
            console.warn(f"{path} exists and will be replaced (pass --resume to continue it)")
        return None
    if not path.exists():
        console.note(f"no checkpoint {path} to resume; starting from epoch 1")
        return None
    data = load_checkpoint(path)
    try:
        saved = json.loads(data["fingerprint"])
        preprocessing = dict(data["preprocessing"])
        loop = LoopState.from_payload(data) if "epoch" in data else None
        stage = int(data.get("stage", 1))
        pseudo = {k: v.clone() for k, v in (data.get("pseudo") or {}).items()}
        stage_one = dict(data.get("stage_one") or {})
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"checkpoint {path} has no valid run fingerprint or state") from None
    diff = fingerprint_diff(saved, fingerprint)
    if diff:
        raise ConfigError(f"checkpoint {path} belongs to a run with other inputs or settings "
                          f"(differs in: {', '.join(diff)})",
                          hint="rerun with the same options, or drop --resume to start over")
    where = "at its start" if loop is None else f"after epoch {loop.epoch}"
    console.note(f"resuming from {path} {where}" + (" of the self-training fit" if stage == 2
                                                     else ""))
    return Checkpoint(data["fingerprint"], preprocessing, loop, stage, pseudo, stage_one)


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "Checkpoint",
    "LoopState",
    "checkpoint_path_for",
    "fingerprint_diff",
    "load_checkpoint",
    "resume_checkpoint",
    "save_checkpoint",
]
