"""The one check of where a command may write: :func:`check_outputs`.

Every command calls it once, with everything it will write and everything it reads, before any
work (opening the model, reading a block). The rule:

1. No output, and no sidecar of one, may be, or resolve to, a file the command reads: the same
   path, a symbolic link to it (or from it), or a hard link (same ``st_dev``/``st_ino``). The files
   read include the files behind an input (a VRT's sources, GDAL's ``.aux.xml``/``.ovr``, a
   Shapefile's ``.shx``/``.dbf``/``.prj``), model files, labels and checkpoints. This holds even
   with ``--overwrite``: replacing an input destroys it.
2. An output that exists and is not a regular file (a directory, a device node, a FIFO, a
   socket) is refused, even with ``--overwrite``.
3. An output or sidecar that exists is refused without ``--overwrite``; a ``.qml`` that would also
   style another existing raster (``-o map.tiff`` beside ``map.tif``: QGIS styles both with
   ``map.qml``) is refused even with it.
4. Two outputs (sidecars included) may not be the same file.
5. A name ending in a path separator names a directory, not an output file; a raster output's
   extension must be one its driver writes (``map.png`` would hold GeoTIFF bytes); the directory
   must exist and be writable.

Every refusal is an :class:`~s2fin_cli.errors.OutputError` (exit 8) naming both files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from s2fin_cli.errors import OutputError
from s2fin_cli.io.writer import (
    check_extension,
    check_output_path,
    gdal_sidecars,
    qml_path_for,
)

# Files a Shapefile (and friends) reads beside the named one.
_VECTOR_COMPANIONS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".qmd")
# Inputs that are never rasters: not opened with GDAL to list their files.
_NOT_RASTER_SUFFIXES = (".s2fin", ".safetensors", ".ckpt", ".json", ".geojson", ".csv", ".txt",
                        ".mat", ".pt", ".pth", ".npz", ".npy", ".shp", ".fgb", ".kml", ".gml")
# Raster extensions a .qml beside an output could also belong to.
_STYLED_SUFFIXES = (".tif", ".tiff", ".vrt", ".img", ".jp2", ".png", ".jpg", ".nc", ".hdr",
                    ".dat", ".bil", ".asc", ".gpkg")


@dataclass(frozen=True)
class Output:
    """One file a command writes.

    ``path``: the output as given (a ``str`` keeps a trailing separator, which names a
    directory). ``driver``: the GDAL driver that writes it (``"GTiff"``, ``"COG"``, ``"VRT"``)
    when it is a raster: its extension is checked and GDAL's sidecars (``.aux.xml``, ``.ovr``,
    ``.msk``) are outputs too. ``style``: a QGIS ``.qml`` is written beside it.
    """

    path: str | os.PathLike[str]
    driver: str | None = None
    style: bool = False

    @property
    def final(self) -> Path:
        return Path(os.fspath(self.path))

    def sidecars(self) -> list[Path]:
        out = gdal_sidecars(self.final) if self.driver else []
        return [*out, *([qml_path_for(self.final)] if self.style else [])]

    def files(self) -> list[Path]:
        """The output and its sidecars."""
        return [self.final, *self.sidecars()]


def given_path(text: str | os.PathLike[str], option: str = "-o") -> Path:
    """An output path as the user gave it; a trailing path separator names a directory, which
    must exist (a :class:`Path` would silently drop the separator and write a file)."""
    raw = os.fspath(text)
    path = Path(raw)
    if raw.endswith(("/", os.sep)) and not path.is_dir():
        raise OutputError(f"{option} {raw} ends with a path separator, so it names a directory, "
                          "and there is none", hint="create the directory first, or give a "
                          "file name")
    return path


def raster_output(path: str | os.PathLike[str], *, style: bool = False,
                  driver: str = "GTiff") -> Output:
    """A GeoTIFF (or ``driver``) output, with GDAL's sidecars and optionally a ``.qml``."""
    return Output(path, driver, style)


def _key(path: Path) -> str:
    return os.path.normcase(os.path.realpath(path))


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def files_read(inputs: Iterable[str | os.PathLike[str] | None]) -> list[Path]:
    """Every file reading ``inputs`` touches: each input, and for rasters GDAL's list of the
    files behind it (a VRT's sources, recursively, its ``.aux.xml``/``.ovr``), for a Shapefile
    its companion files. Inputs that do not exist are skipped (their command refuses them)."""
    seen: dict[str, Path] = {}

    def add(path: Path) -> None:
        seen.setdefault(_key(path), path)

    for item in inputs:
        if item is None:
            continue
        path = Path(os.fspath(item))
        if not path.exists() or path.is_dir():
            continue
        add(path)
        suffix = path.suffix.lower()
        if suffix == ".shp":
            for companion in _VECTOR_COMPANIONS:
                for candidate in (path.with_suffix(companion),
                                  path.with_suffix(companion.upper())):
                    if candidate.exists():
                        add(candidate)
        # A pipe or device is read by the command itself: opening it here would block or
        # consume what the command needs.
        if suffix in _NOT_RASTER_SUFFIXES or not path.is_file():
            continue
        for behind in _gdal_files(path):
            add(behind)
    return list(seen.values())


def _gdal_files(path: Path, depth: int = 0) -> list[Path]:
    """GDAL's file list of a raster (empty when GDAL does not open it as one)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    from s2fin_cli.io.gdal import gdal_messages

    try:
        with gdal_messages(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                names = list(ds.files)
    except (RasterioError, OSError, ValueError):
        return []
    out = []
    for name in names:
        p = Path(name)
        if not p.is_absolute():
            p = path.parent / p
        out.append(p)
        # A VRT whose source is itself a VRT: GDAL lists the inner VRT, not what it reads.
        if depth < 8 and p.suffix.lower() == ".vrt" and _key(p) != _key(path):
            out += _gdal_files(p, depth + 1)
    return out


def _styled_siblings(qml: Path, output: Path) -> list[Path]:
    """Existing rasters other than ``output`` that QGIS would also style with ``qml``."""
    out = []
    for suffix in _STYLED_SUFFIXES:
        for candidate in (qml.with_suffix(suffix), qml.with_suffix(suffix.upper())):
            if candidate.exists() and _key(candidate) != _key(output):
                out.append(candidate)
    return out


def check_outputs(outputs: Iterable[Output | str | os.PathLike[str] | None],
                  inputs: Iterable[str | os.PathLike[str] | None], *,
                  overwrite: bool) -> list[Path]:
    """Refuse, before any work, outputs that would destroy an input or another output, or that
    cannot be written (the module docstring lists the rules). Returns the output files checked,
    sidecars included.

    ``outputs``: every file the command writes, as :class:`Output` (rasters: with their
    driver and whether a ``.qml`` goes beside them) or plain paths (model files, checkpoints,
    reports, CSV: no sidecars); ``None`` entries are ignored. Pass paths as the user gave them
    (``str``), so a trailing separator is seen.
    ``inputs``: every file the command reads (scene, HSI, LiDAR/SAR, labels, model, checkpoint
    to resume, parts to merge); ``None`` entries are ignored; what GDAL reads behind them is
    found here (:func:`files_read`).
    """
    specs = [o if isinstance(o, Output) else Output(o) for o in outputs if o is not None]
    read = files_read(inputs)
    read_keys = {_key(p): p for p in read}
    read_inodes = {i: p for p in read if (i := _inode(p)) is not None}
    written: dict[str, Path] = {}
    checked: list[Path] = []
    for spec in specs:
        text = os.fspath(spec.path)
        if spec.driver is not None and not text.endswith(("/", os.sep)):
            check_extension(spec.final, spec.driver)
        check_output_path(text, overwrite=overwrite, sidecars=spec.sidecars())
        for path in spec.files():
            what = "output" if path == spec.final else f"{spec.final.name}'s sidecar"
            key = _key(path)
            source = read_keys.get(key)
            inode = _inode(path)
            if source is None and inode is not None:
                source = read_inodes.get(inode)
            if source is not None:
                same = ("is an input" if str(source) == str(path)
                        else f"is the same file as input {source}")
                raise OutputError(f"{what} {path} {same} of this command",
                                  hint="write the output under another name; an input is never "
                                       "overwritten")
            if key in written:
                raise OutputError(f"{what} {path} would be written twice (also as "
                                  f"{written[key]})", hint="give the outputs different names")
            if inode is not None:
                for other in written.values():
                    if _inode(other) == inode:
                        raise OutputError(f"{what} {path} is the same file as output {other}",
                                          hint="give the outputs different names")
            written[key] = path
            checked.append(path)
        if spec.style:
            qml = qml_path_for(spec.final)
            siblings = _styled_siblings(qml, spec.final)
            if siblings:
                raise OutputError(f"{spec.final.name}'s style {qml} also styles {siblings[0]}",
                                  hint="name the output so that its .qml is its own")
    return checked
