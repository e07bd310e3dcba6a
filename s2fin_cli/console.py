"""Messages and progress on stderr; stdout is kept for results (tables, ``--json``).

Verbosity is set once by the CLI's ``-v``/``-q`` counts: -1 quiet (errors only), 0 normal
(warnings and one-line notes such as "aligned lidar.tif to the HSI grid"), 1 info, 2 debug.
Progress bars are drawn only when stderr is a terminal; in batch jobs they become plain lines.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

_state = {"verbosity": 0}


def set_verbosity(level: int) -> None:
    _state["verbosity"] = max(-1, min(2, level))


def verbosity() -> int:
    return _state["verbosity"]


def note(message: str) -> None:
    """A one-line note shown at default verbosity (what s2fin decided on the user's behalf)."""
    if _state["verbosity"] >= 0:
        stderr.print(message, markup=False)


def warn(message: str) -> None:
    if _state["verbosity"] >= 0:
        stderr.print(f"warning: {message}", style="yellow", markup=False)


def info(message: str) -> None:
    if _state["verbosity"] >= 1:
        stderr.print(message, markup=False)


def debug(message: str) -> None:
    if _state["verbosity"] >= 2:
        stderr.print(message, style="dim", markup=False)


def error_line(message: str) -> None:
    """The one line printed for a user error, whatever the verbosity."""
    stderr.print(f"error: {message}", style="red", markup=False)


@dataclass
class Reporter:
    """Progress over a known number of steps: a rich bar on a TTY, plain or JSON lines otherwise.

    ``fields`` (loss, accuracy, pixels/s, ...) are shown beside the bar, printed on plain lines
    every ``every_s`` seconds, and emitted as one JSON object per update with ``json_lines``.
    """

    description: str
    total: int
    json_lines: bool = False
    every_s: float = 5.0
    _progress: Progress | None = None
    _task: Any = None
    _done: int = 0
    _last_line: float = field(default_factory=time.monotonic)
    _fields: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        if self.json_lines or not stderr.is_terminal or _state["verbosity"] < 0:
            return
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[status]}"),
            console=stderr, transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=self.total, status="")

    def advance(self, steps: int = 1, **fields: Any) -> None:
        self._done += steps
        self._fields.update(fields)
        status = "  ".join(f"{k} {_fmt(v)}" for k, v in self._fields.items())
        if self._progress is not None:
            self._progress.update(self._task, advance=steps, status=status)
            return
        if self.json_lines:
            print(json.dumps({"event": self.description, "done": self._done, "total": self.total,
                              **self._fields}), file=sys.stdout, flush=True)
            return
        now = time.monotonic()
        if _state["verbosity"] >= 0 and (now - self._last_line >= self.every_s
                                         or self._done >= self.total):
            self._last_line = now
            stderr.print(f"{self.description}: {self._done}/{self.total}  {status}", markup=False)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


@contextmanager
def progress(description: str, total: int, *, json_lines: bool = False) -> Iterator[Reporter]:
    reporter = Reporter(description, total, json_lines=json_lines)
    reporter.start()
    try:
        yield reporter
    finally:
        reporter.stop()
