"""The ``s2fin`` command line: one module per command, shared options in :mod:`.options`.

OpenMP's wait policy is read once, when torch loads libgomp: the command line sets it here,
before any command module imports torch (see :mod:`s2fin_cli.acceleration`).
"""

from s2fin_cli.acceleration import configure_openmp

configure_openmp()
