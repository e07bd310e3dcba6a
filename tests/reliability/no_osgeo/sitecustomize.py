"""Hide GDAL's Python bindings (``osgeo``), as in a virtual environment without them.

The reliability matrix runs s2fin's CLI both ways: with ``S2FIN_TEST_WITHOUT_OSGEO=1`` in the
environment, ``tests/reliability/harness.py`` puts this folder first on the CLI subprocesses'
``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up) and runs this file in the test
process too, so ``import osgeo`` raises ImportError everywhere.
"""

import importlib.abc
import sys


class _HideOsgeo(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name == "osgeo" or name.startswith("osgeo."):
            raise ImportError(f"{name} is hidden (S2FIN_TEST_WITHOUT_OSGEO=1)")
        return None


if not any(isinstance(f, _HideOsgeo) for f in sys.meta_path):
    sys.meta_path.insert(0, _HideOsgeo())
