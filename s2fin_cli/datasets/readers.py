"""Reading the distributed benchmark files: MATLAB ``.mat`` variables and plain/Geo TIFFs.

MATLAB v4-v7.2 files are read with scipy; v7.3 files are HDF5 and need ``h5py`` (optional:
a clear error names it when it is missing). Arrays keep MATLAB's (rows, cols, bands) order here;
the importer moves bands first.
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import scipy.io
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from scipy.io.matlab import matfile_version

from s2fin_cli.errors import InputError
from s2fin_cli.io.grid import Grid

_TOKEN = re.compile(r"\.?([A-Za-z_]\w*)|\[(\d+)\]")


def _parse_key(key: str) -> list[str | int]:
    """``"hsi.Lidar[0].z"`` -> ``["hsi", "Lidar", 0, "z"]``."""
    tokens: list[str | int] = []
    pos = 0
    while pos < len(key):
        match = _TOKEN.match(key, pos)
        if match is None or (pos == 0 and match.group(0).startswith(".")):
            raise ValueError(f"bad variable path {key!r}")
        tokens.append(match.group(1) if match.group(1) is not None else int(match.group(2)))
        pos = match.end()
    if not tokens or not isinstance(tokens[0], str):
        raise ValueError(f"bad variable path {key!r}")
    return tokens


def _is_v73(path: Path) -> bool:
    try:
        major, _minor = matfile_version(str(path))
    except Exception as exc:  # scipy raises several types for non-MAT files
        raise InputError(f"{path} is not a MATLAB .mat file ({exc})") from exc
    return major == 2


def mat_variables(path: Path) -> list[str]:
    """The top-level variable names of a .mat file."""
    if _is_v73(path):
        with _open_h5(path) as fh:
            return [k for k in fh if not k.startswith("#")]
    try:
        return [name for name, _shape, _cls in scipy.io.whosmat(str(path))]
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc


def _h5py(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise InputError(f"{path} is a MATLAB v7.3 (HDF5) file",
                         hint="pip install h5py, or re-save it in MATLAB with -v7") from None
    return h5py


def _walk(value: Any, tokens: list[str | int], key: str, path: Path) -> Any:
    for token in tokens:
        if isinstance(token, int):
            if isinstance(value, np.ndarray) and value.dtype == object:
                flat = value.ravel()
                if token >= flat.size:
                    raise InputError(f"{path}: index {token} out of range in {key!r}")
                value = flat[token]
            elif token == 0:
                pass  # a 1x1 struct array squeezed to one struct
            else:
                raise InputError(f"{path}: {key!r} indexes something that is not an array")
        else:
            if not hasattr(value, token):
                raise InputError(f"{path}: no field {token!r} on the way to {key!r}")
            value = getattr(value, token)
    return value


def _read_v5(path: Path, key: str) -> np.ndarray:
    tokens = _parse_key(key)
    top = str(tokens[0])
    try:
        data = scipy.io.loadmat(str(path), variable_names=[top], squeeze_me=True,
                                struct_as_record=False)
    except Exception as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
    if top not in data:
        raise InputError(f"{path} has no variable {top!r}")
    value = _walk(data[top], tokens[1:], key, path)
    array = np.asarray(value)
    if array.dtype == object:
        raise InputError(f"{path}: {key!r} is a MATLAB struct or cell, not a numeric array")
    return array


@contextlib.contextmanager
def _open_h5(path: Path) -> Iterator[Any]:
    """A MATLAB v7.3 (HDF5) file opened with h5py; a truncated or corrupt file (HDF5 raises
    OSError, or KeyError/ValueError deeper in) is a one-line :class:`InputError`."""
    h5py = _h5py(path)
    try:
        with h5py.File(path, "r") as fh:
            yield fh
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise InputError(f"cannot read {path} (truncated or corrupt MATLAB v7.3 file?): "
                         f"{reason}", hint="download it again") from None


def _read_v73(path: Path, key: str) -> np.ndarray:
    h5py = _h5py(path)
    tokens = _parse_key(key)
    if any(isinstance(t, int) for t in tokens):
        raise InputError(f"{path}: indexing struct arrays ({key!r}) in MATLAB v7.3 files is not "
                         "supported", hint="re-save the file in MATLAB with -v7")
    with _open_h5(path) as fh:
        node: Any = fh
        for token in tokens:
            if not hasattr(node, "keys") or token not in node:
                raise InputError(f"{path} has no variable {key!r}")
            node = node[token]
        if not isinstance(node, h5py.Dataset):
            raise InputError(f"{path}: {key!r} is a MATLAB struct, not a numeric array")
        # HDF5 stores MATLAB's column-major arrays with the axes reversed.
        array = np.asarray(node[()]).T
    return np.squeeze(array)  # as scipy's squeeze_me does for v5 files


def read_mat(path: Path, keys: tuple[str, ...]) -> tuple[np.ndarray, str]:
    """The first of ``keys`` present in ``path``, or the file's only variable; with its key."""
    names = mat_variables(path)
    for key in keys:
        if _parse_key(key)[0] in names:
            reader = _read_v73 if _is_v73(path) else _read_v5
            return reader(path, key), key
    if len(names) == 1:
        reader = _read_v73 if _is_v73(path) else _read_v5
        return reader(path, names[0]), names[0]
    expected = ", ".join(repr(k) for k in keys) or "one variable"
    raise InputError(f"{path} holds variables {names}, expected {expected}")


@dataclass(frozen=True)
class TiffData:
    array: np.ndarray  # (bands, rows, cols)
    grid: Grid | None  # None without georeferencing
    nodata: float | None
    descriptions: tuple[str | None, ...]


def read_tiff(path: Path) -> TiffData:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                array = src.read()
                grid = Grid.of(src) if src.crs else None
                return TiffData(array, grid, src.nodata, tuple(src.descriptions))
    except RasterioIOError as exc:
        raise InputError(f"cannot read {path}: {exc}") from exc
