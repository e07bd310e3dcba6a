"""The ``s2fin`` command line: one module per command, shared options in :mod:`.options`.

OpenMP's wait policy is read once, when torch loads libgomp: the command line sets it here,
before any command module imports torch, together with glibc malloc's thresholds (see
:mod:`s2fin_cli.acceleration`).
"""

from s2fin_cli.acceleration import configure_runtime

configure_runtime()
