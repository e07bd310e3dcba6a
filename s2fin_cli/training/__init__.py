"""``s2fin train`` as a library, one module per concern:

- :mod:`~s2fin_cli.training.settings`: optimisation settings and network options (the CLI's
  defaults), :func:`parse_ablate`;
- :mod:`~s2fin_cli.training.steps`: schedule, per-epoch seed, the optimiser step, one epoch;
- :mod:`~s2fin_cli.training.loop`: :func:`fit` with early stopping and checkpoints;
- :mod:`~s2fin_cli.training.ddp`: the data-parallel epoch and validation (torchrun);
- :mod:`~s2fin_cli.training.checkpoint`: the checkpoint format, run fingerprint and resume;
- :mod:`~s2fin_cli.training.report`: split table, accuracy summaries, provenance pieces;
- :mod:`~s2fin_cli.training.run`: :func:`run_training`, from file paths to a model file.
"""

from s2fin_cli.training.checkpoint import (
    Checkpoint,
    LoopState,
    checkpoint_path_for,
    load_checkpoint,
    save_checkpoint,
)
from s2fin_cli.training.loop import FitResult, TrainingStopped, fit
from s2fin_cli.training.run import (
    TrainRequest,
    TrainSummary,
    check_request,
    report_path_for,
    run_training,
)
from s2fin_cli.training.settings import (
    ABLATIONS,
    NetworkOptions,
    TrainSettings,
    parse_ablate,
    parse_stem_norm,
)
from s2fin_cli.training.steps import epoch_seed, evaluate_patch_set, learning_rate

__all__ = [
    "ABLATIONS",
    "Checkpoint",
    "FitResult",
    "LoopState",
    "NetworkOptions",
    "TrainRequest",
    "TrainSettings",
    "TrainSummary",
    "TrainingStopped",
    "check_request",
    "checkpoint_path_for",
    "epoch_seed",
    "evaluate_patch_set",
    "fit",
    "learning_rate",
    "load_checkpoint",
    "parse_ablate",
    "parse_stem_norm",
    "report_path_for",
    "run_training",
    "save_checkpoint",
]
