"""The ``s2fin`` command line: one module per command, shared options in :mod:`.options`."""
