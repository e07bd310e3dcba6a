"""The public multimodal benchmarks (Houston2013, Trento, MUUFL, Augsburg, Berlin) as s2fin inputs.

:data:`DATASETS` describes how each is distributed; :func:`import_dataset` turns the files into
GeoTIFFs (``s2fin datasets import``).
"""

from s2fin_cli.datasets.importer import ImportResult, find_files, import_dataset
from s2fin_cli.datasets.specs import DATASETS, OUTPUT_NAMES, DatasetSpec, Role, Source, get_spec

__all__ = [
    "DATASETS",
    "OUTPUT_NAMES",
    "DatasetSpec",
    "ImportResult",
    "Role",
    "Source",
    "find_files",
    "get_spec",
    "import_dataset",
]
