"""Typed exceptions, each with the exit code the CLI returns for it.

Every error a user can cause (a wrong path, rasters that do not align, a foreign model file, an
existing output) is one of these. The CLI prints ``str(error)`` on one line and exits with
``error.exit_code``; anything else is a bug and exits with ``EXIT_INTERNAL``. The codes are
documented in README.md ("Exit codes") and must stay stable: batch jobs branch on them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2  # Click/Typer's own code for bad options
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell convention
EXIT_SIGNAL_BASE = 128  # a run ended by signal N exits 128 + N (SIGHUP 129, SIGTERM 143)


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived: raised in the main thread by the CLI's signal handler so
    that every ``finally`` and atomic writer cleans up; the CLI exits ``128 + signum``. A
    KeyboardInterrupt, so code that handles Ctrl-C handles the other signals alike."""

    def __init__(self, signum: int, name: str) -> None:
        self.signum = signum
        self.name = name
        super().__init__(name)

    @property
    def exit_code(self) -> int:
        return EXIT_SIGNAL_BASE + self.signum


class S2finError(Exception):
    """Base class of every error caused by input, configuration or environment."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message} ({hint})")


class InputError(S2finError):
    """An input file is missing, unreadable, or not a raster/vector/model of the expected kind."""

    exit_code = 3


class PartsError(InputError):
    """Part files of a sharded prediction that do not make one map."""


class MissingPartError(PartsError):
    """A shard's part is missing (or a probability/confidence part beside it)."""


class DuplicatePartError(PartsError):
    """The same shard is given twice."""


class MixedPartsError(PartsError):
    """Parts of different runs (shard count, block size, model, classes, grid, scene)."""


class AlignmentError(S2finError):
    """Two rasters cannot be put on one grid: no overlap, no CRS, incompatible shapes."""

    exit_code = 4


class LabelError(S2finError):
    """Labels are empty, use unknown classes, or are too few for the sampling protocol."""

    exit_code = 5


class ModelFileError(S2finError):
    """A model or checkpoint file is truncated, foreign, tampered or of a newer format."""

    exit_code = 6


class CompatibilityError(S2finError):
    """A model and a scene do not fit together (band counts, modality, patch size)."""

    exit_code = 7


class OutputError(S2finError):
    """An output exists (without --overwrite), or cannot be written (permissions, full disk)."""

    exit_code = 8


class ConfigError(S2finError):
    """Options that contradict each other or are out of range (beyond what Typer checks)."""

    exit_code = 9
