"""Everything s2fin writes to disk goes through here.

Outputs appear atomically: a file is written under a hidden temporary name in the destination
directory and renamed into place only when complete, so an error, a full disk or Ctrl-C never
leaves a half-written map behind. GeoTIFFs are tiled (512), compressed and BIGTIFF=IF_SAFER.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import stat
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import ConfigError, OutputError, S2finError
from s2fin_cli.io.gdal import (
    check_creation_profile,
    close_and_verify,
    error_text,
    gdal_messages,
    one_line,
)
from s2fin_cli.io.grid import Grid

# Sidecars GDAL may create next to a raster (PAM statistics, category names, overviews).
_SIDECAR_SUFFIXES = (".aux.xml", ".ovr", ".msk")

# Dataset tag holding the class table (JSON) of a class raster, so labels and maps carry their
# class names and colours with them (read back by s2fin_cli.io.labels).
CLASSES_TAG = "S2FIN_CLASSES"

DEFAULT_CREATION_OPTIONS: dict[str, str] = {
    "TILED": "YES",
    "BLOCKXSIZE": "512",
    "BLOCKYSIZE": "512",
    "COMPRESS": "DEFLATE",
    "BIGTIFF": "IF_SAFER",
}


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:  # a dangling symbolic link: nothing to read or destroy behind it
        return True


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool,
                      sidecars: Sequence[Path] = ()) -> None:
    """Refuse an output s2fin must not write: one that exists (without ``overwrite``), one that
    is not a regular file (a directory, a device, a FIFO, a socket: never, even with
    ``overwrite``), a name ending in a path separator (a directory), or a directory that cannot
    take it. ``sidecars`` (the ``.aux.xml``, ``.qml`` ... written beside it) obey the same rule.

    Collisions with the files a command reads are :func:`s2fin_cli.io.outputs.check_outputs`'s.
    """
    text = os.fspath(path)
    if text.endswith(("/", os.sep)) and not Path(text).is_dir():
        raise OutputError(f"output {text} ends with a path separator, so it names a directory",
                          hint="give a file name, e.g. " + text + "out.tif")
    final = Path(text)
    if final.is_dir():
        raise OutputError(f"output {final} is a directory", hint="give a file name")
    for target in (final, *sidecars):
        what = "output" if target == final else f"{final.name}'s sidecar"
        if not os.path.lexists(target):
            continue
        if not _is_regular(target):
            raise OutputError(f"{what} {target} exists and is not a regular file (a device, "
                              "FIFO, socket or directory)",
                              hint="s2fin writes regular files only; choose another name")
        if not overwrite:
            raise OutputError(f"{what} {target} exists", hint="pass --overwrite to replace it")
    parent = final.parent if str(final.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable")


def gdal_sidecars(path: Path) -> list[Path]:
    """The files GDAL may write beside a raster (PAM ``.aux.xml``, overviews, masks)."""
    return [path.with_name(path.name + suffix) for suffix in _SIDECAR_SUFFIXES]


def _temporary_name(path: Path) -> Path:
    # Same directory, so the final rename is atomic (no cross-device copy); hidden and unique per
    # process so two jobs writing different outputs in one directory never collide.
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}.s2fin-tmp-{token}{path.suffix}")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def _fsync(path: Path) -> None:
    """Flush a finished file to the disk before it replaces anything (a crash right after the
    rename must not leave an empty file where a good one was); a deferred write error (a full
    disk, EIO) surfaces here."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class AtomicFile:
    """One output written under a hidden temporary name and renamed into place by
    :meth:`commit`, and only by it: leaving a ``with`` block, closing, or any failure before
    ``commit`` discards the temporary file and its GDAL sidecars. The output path (and
    ``sidecars``) are checked when the object is made (:func:`check_output_path`).
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False,
                 sidecars: Sequence[Path] = ()) -> None:
        self.final = Path(os.fspath(path))
        check_output_path(path, overwrite=overwrite, sidecars=sidecars)
        self.overwrite = overwrite
        self.tmp = _temporary_name(self.final)
        self.done = False

    def commit(self) -> None:
        """Rename the finished temporary file (and GDAL's sidecars of it) into place."""
        if self.done:
            raise RuntimeError(f"{self.final} was already committed or discarded")
        if not self.tmp.exists():
            raise OutputError(f"nothing was written to {self.final}")
        _fsync(self.tmp)
        # Some writers (safetensors) create 0600 files; an output gets the mode any new file
        # gets under the user's umask, so colleagues on a shared server can read the model.
        os.chmod(self.tmp, 0o666 & ~_current_umask())
        for side_tmp, side_final in zip(gdal_sidecars(self.tmp), gdal_sidecars(self.final),
                                        strict=True):
            if side_tmp.exists():
                os.replace(side_tmp, side_final)
            elif os.path.lexists(side_final) and self.overwrite:
                # A stale sidecar would describe the old file (wrong categories, statistics).
                _remove_quietly(side_final)
        os.replace(self.tmp, self.final)
        self.done = True

    def discard(self) -> None:
        """Remove the temporary file and its sidecars (nothing at the final path changes)."""
        _remove_quietly(self.tmp)
        for side in gdal_sidecars(self.tmp):
            _remove_quietly(side)
        self.done = True

    def failed(self, exc: BaseException) -> BaseException:
        """Discard after ``exc`` and return the exception to raise: ``exc`` itself, or the
        :class:`OutputError` a write failure (full disk, permissions, I/O) becomes."""
        # Before the temporary file is removed (and frees its space): libraries report a full
        # disk in their own words (torch: "unexpected pos", GDAL: "not recognized as a supported
        # file format" on reopening what it failed to write), so ask the file system.
        full = (isinstance(exc, Exception) and not isinstance(exc, S2finError)
                and _disk_full(self.final.parent if str(self.final.parent) else Path(".")))
        self.discard()
        if full:
            return OutputError(f"disk full while writing {self.final}",
                               hint="free space or write elsewhere")
        if isinstance(exc, OSError | RasterioError) and not isinstance(exc, S2finError):
            return _as_output_error(exc, self.final)
        return exc


class AtomicGroup:
    """Several outputs that appear together or not at all: :meth:`add` checks and reserves each,
    :meth:`commit` renames them all once everything is written; an exception inside the ``with``
    block discards every one (so a failure in the third file leaves the first two untouched)."""

    def __init__(self) -> None:
        self.files: list[AtomicFile] = []

    def add(self, path: str | os.PathLike[str], *, overwrite: bool = False,
            sidecars: Sequence[Path] = ()) -> AtomicFile:
        target = AtomicFile(path, overwrite=overwrite, sidecars=sidecars)
        self.files.append(target)
        return target

    def __enter__(self) -> AtomicGroup:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            try:
                self.commit()
                return
            except BaseException as error:
                exc = error
        translated = self.failed(exc)
        if translated is not exc:
            raise translated from exc
        raise exc

    def commit(self) -> None:
        for target in self.files:
            if not target.done:
                target.commit()

    def failed(self, exc: BaseException) -> BaseException:
        translated = exc
        for target in self.files:
            if not target.done:
                this = target.failed(exc)
                if translated is exc:
                    translated = this
        return translated


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it (and its GDAL sidecars) to ``path``.

    On any exception, KeyboardInterrupt included, the temporary file and sidecars are removed and
    the exception propagates. Disk-full and permission errors become :class:`OutputError`.
    """
    target = AtomicFile(path, overwrite=overwrite)
    try:
        yield target.tmp
        target.commit()
    except BaseException as exc:
        translated = target.failed(exc)
        if translated is exc:
            raise
        raise translated from exc


# A write that failed with less than this free on its file system failed for want of space.
_FULL_DISK_BYTES = 16 << 20


def _disk_full(directory: Path) -> bool:
    try:
        st = os.statvfs(directory)
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    # f_bavail: what an unprivileged user may still use; root also gets the reserved blocks.
    free = st.f_bfree if os.name == "posix" and os.geteuid() == 0 else st.f_bavail
    return free * st.f_frsize < _FULL_DISK_BYTES


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _as_output_error(exc: BaseException, path: Path) -> OutputError:
    text = str(exc)
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left" in text:
        return OutputError(f"disk full while writing {path}", hint="free space or write elsewhere")
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM):
        return OutputError(f"permission denied writing {path}")
    if isinstance(exc, OSError) and exc.strerror:
        return OutputError(f"could not write {path}: {one_line(exc.strerror)}")
    return OutputError(f"could not write {path}: {error_text(exc)}")


def parse_creation_options(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``["KEY=VALUE", ...]`` (the CLI's repeatable ``--co``) into a dict.

    Only the form is checked here; what GDAL makes of each option is checked against the driver
    when a raster is about to be created (:func:`s2fin_cli.io.gdal.check_creation_profile`).
    """
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"creation option {pair!r} is not KEY=VALUE",
                              hint="e.g. --co ZLEVEL=9")
        out[key.strip().upper()] = value.strip()
    return out


# The extensions each output driver's files carry (GDAL's DMD_EXTENSIONS of GTiff and COG).
DRIVER_EXTENSIONS: dict[str, tuple[str, ...]] = {
    "GTiff": (".tif", ".tiff"),
    "COG": (".tif", ".tiff"),
    "VRT": (".vrt",),
}


def check_extension(path: str | os.PathLike[str], driver: str) -> None:
    """Refuse an output whose extension says another format than ``driver`` writes (``map.png``
    would hold GeoTIFF bytes). A name without an extension is accepted."""
    suffix = Path(os.fspath(path)).suffix.lower()
    allowed = DRIVER_EXTENSIONS.get(driver, ())
    if suffix and allowed and suffix not in allowed:
        raise OutputError(f"output {Path(os.fspath(path)).name}: s2fin writes {driver} here, "
                          f"and a {suffix} name would hide that",
                          hint=f"name it {' or '.join(allowed)}")


def geotiff_profile(
    grid: Grid,
    *,
    count: int,
    dtype: str,
    nodata: float | None,
    creation_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A rasterio profile for a tiled, compressed GeoTIFF on ``grid`` (GCPs and their CRS for a
    grid georeferenced by ground control points)."""
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "count": count,
        "dtype": dtype,
        "transform": grid.transform,
        "nodata": nodata,
        **{k.lower(): v for k, v in DEFAULT_CREATION_OPTIONS.items()},
    }
    # A 512 tile of a small many-band raster is mostly padding that still gets compressed (and
    # each tile holds every band): shrink tiles to the raster, in GeoTIFF's multiples of 16.
    side = min(512, max(16, -(-max(grid.width, grid.height) // 16) * 16))
    profile["blockxsize"] = profile["blockysize"] = str(side)
    if grid.crs is not None:
        profile["crs"] = grid.crs
    if grid.gcps:
        del profile["transform"]
        profile["gcps"] = list(grid.gcps)
        profile["crs"] = grid.gcp_crs
    if np.dtype(dtype).kind == "f":
        profile["predictor"] = "3"  # floating-point predictor: much better DEFLATE ratio
    for key, value in (creation_options or {}).items():
        profile[key.lower()] = value
    return profile


def open_for_writing(path: Path, profile: Mapping[str, Any],
                     creation_options: Mapping[str, str] | None = None) -> Any:
    """``rasterio.open(path, "w", **profile)`` after GDAL has accepted ``profile`` in memory
    (:func:`check_creation_profile`: a refused ``--co`` is a :class:`ConfigError`, exit 9, with
    GDAL's reason). A failure to create the file itself (permissions, space) is raised as
    ``OSError`` with GDAL's reason, for the atomic writer to report."""
    check_creation_profile(profile, creation_options)
    with gdal_messages() as messages, warnings.catch_warnings():
        # GCP-georeferenced rasters have no geotransform, which is what rasterio warns about.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return rasterio.open(path, "w", **profile)
        except RasterioError as exc:
            reason = next((m.text for m in messages if m.kind == "error"), error_text(exc))
            raise OSError(errno.EIO, reason) from None


def write_raster(
    path: str | os.PathLike[str],
    data: np.ndarray,
    grid: Grid,
    *,
    nodata: float | None = None,
    band_descriptions: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    band_tags: Sequence[Mapping[str, str]] | None = None,
    classes: ClassTable | None = None,
    overwrite: bool = False,
    creation_options: Mapping[str, str] | None = None,
    group: AtomicGroup | None = None,
) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a GeoTIFF on ``grid``, atomically.

    With ``classes``, a single-band class raster gets an embedded colour table (palette
    interpretation), its class names (band metadata, category names and a raster attribute
    table in ``.aux.xml``) and a QGIS ``.qml`` sidecar naming every class; the raster and its
    sidecars are checked before anything is written and appear together. With ``group``, they
    are committed with the group's other outputs instead of on return.
    """
    array = data[np.newaxis] if data.ndim == 2 else data
    if array.ndim != 3 or array.shape[1:] != grid.shape:
        raise ValueError(f"array of shape {data.shape} does not fit grid {grid.shape}")
    final = Path(path)
    check_extension(final, "GTiff")
    profile = geotiff_profile(grid, count=array.shape[0], dtype=str(array.dtype), nodata=nodata,
                              creation_options=creation_options)
    if classes is not None:
        profile["photometric"] = "PALETTE"
        nbits = class_nbits(max(classes.max_id, int(array.max(initial=0))))
        if nbits is not None:
            profile.setdefault("nbits", nbits)
    own = group is None
    outputs = group if group is not None else AtomicGroup()
    try:
        raster = outputs.add(final, overwrite=overwrite, sidecars=gdal_sidecars(final))
        style = (outputs.add(qml_path_for(final), overwrite=overwrite)
                 if classes is not None else None)
        dst = open_for_writing(raster.tmp, profile, creation_options)
        try:
            _fill(dst, array, band_descriptions, tags, band_tags, classes)
        except BaseException:
            with contextlib.suppress(Exception):
                dst.close()
            raise
        close_and_verify(dst, raster.tmp)
        if classes is not None:
            assert style is not None
            write_categories(raster.tmp, classes)
            style.tmp.write_text(qml_text(classes), encoding="utf-8")
    except BaseException as exc:
        if not own:
            raise
        translated = outputs.failed(exc)
        if translated is exc:
            raise
        raise translated from exc
    if own:
        with outputs:
            pass
    return final


def _fill(dst: Any, array: np.ndarray, band_descriptions: Sequence[str] | None,
          tags: Mapping[str, str] | None, band_tags: Sequence[Mapping[str, str]] | None,
          classes: ClassTable | None) -> None:
    """Write the pixels, band descriptions, tags and (for a class raster) the colour table and
    class names of an open dataset."""
    dst.write(array)
    for i, desc in enumerate(band_descriptions or (), start=1):
        dst.set_band_description(i, desc)
    all_tags = dict(tags or {})
    if classes is not None:
        all_tags[CLASSES_TAG] = json.dumps(classes.to_json())
    if all_tags:
        dst.update_tags(**all_tags)
    for i, btags in enumerate(band_tags or (), start=1):
        dst.update_tags(i, **btags)
    if classes is not None:
        dst.update_tags(1, **class_band_tags(classes))
        dst.write_colormap(1, classes.colormap())


def class_nbits(max_id: int) -> str | None:
    """GeoTIFF ``NBITS`` of a class raster whose largest value is ``max_id``: 4 while every id
    fits, so the colour table has 16 entries instead of 256 mostly black ones (4-bit palette
    images are baseline TIFF); None (the data type's own bits) above 15."""
    return "4" if 0 <= max_id <= 15 else None


def class_band_tags(classes: ClassTable) -> dict[str, str]:
    """Band metadata naming every class inside the GeoTIFF: ``CLASS_<id>=<name>``."""
    return {f"CLASS_{c.id}": c.name for c in classes}


def qml_path_for(raster_path: Path) -> Path:
    """QGIS applies ``name.qml`` automatically when it opens ``name.tif``."""
    return raster_path.with_suffix(".qml")


_QML_HEAD = ("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
             "<qgis version=\"3.28\" styleCategories=\"Symbology\">\n"
             "  <pipe>\n")
_QML_TAIL = "  </pipe>\n</qgis>\n"


def qml_text(classes: ClassTable) -> str:
    """A QGIS paletted-renderer style naming and colouring every class."""
    entries = "\n".join(
        f"        <paletteEntry value=\"{c.id}\" color=\"#{c.color[0]:02x}{c.color[1]:02x}"
        f"{c.color[2]:02x}\" alpha=\"255\" label={quoteattr(c.name)}/>"
        for c in classes
    )
    return (
        _QML_HEAD
        + "    <rasterrenderer type=\"paletted\" band=\"1\" opacity=\"1\" nodataColor=\"\">\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        + _QML_TAIL
    )


# A perceptually uniform ramp (viridis) for values 0..1: probabilities and confidence.
_RAMP: tuple[tuple[float, str], ...] = (
    (0.0, "#440154"), (0.25, "#3b528b"), (0.5, "#21918c"), (0.75, "#5ec962"), (1.0, "#fde725"))


def ramp_qml_text(band: int = 1, minimum: float = 0.0, maximum: float = 1.0) -> str:
    """A QGIS single-band pseudocolour style: ``band`` on a 0-1 ramp (after GDAL scale/offset,
    which QGIS applies), labelled with its values."""
    items = "\n".join(
        f"          <item value=\"{minimum + v * (maximum - minimum):g}\" color=\"{color}\" "
        f"alpha=\"255\" label=\"{minimum + v * (maximum - minimum):g}\"/>"
        for v, color in _RAMP)
    return (
        _QML_HEAD
        + f"    <rasterrenderer type=\"singlebandpseudocolor\" band=\"{band}\" opacity=\"1\" "
        f"alphaBand=\"-1\" classificationMin=\"{minimum:g}\" classificationMax=\"{maximum:g}\" "
        "nodataColor=\"\">\n"
        "      <rastershader>\n"
        f"        <colorrampshader colorRampType=\"INTERPOLATED\" classificationMode=\"1\" "
        f"clip=\"0\" minimumValue=\"{minimum:g}\" maximumValue=\"{maximum:g}\">\n"
        f"{items}\n"
        "        </colorrampshader>\n"
        "      </rastershader>\n"
        "    </rasterrenderer>\n"
        + _QML_TAIL
    )


def write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False,
               group: AtomicGroup | None = None) -> Path:
    """Write a small text file (JSON report, CSV, sidecar) atomically (with ``group``: when the
    group commits)."""
    final = Path(path)
    if group is not None:
        group.add(final, overwrite=overwrite).tmp.write_text(text, encoding="utf-8")
        return final
    with atomic_output(final, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return final


def write_qml(path: Path, classes: ClassTable, *, overwrite: bool = False) -> Path:
    return write_text(path, qml_text(classes), overwrite=overwrite)


# GDAL's raster attribute table codes (gdal.h: GDALRATFieldType, GDALRATFieldUsage).
_GFT_INTEGER, _GFT_STRING = 0, 2
_GFU_NAME, _GFU_MINMAX, _GFU_RED, _GFU_GREEN, _GFU_BLUE = 2, 5, 6, 7, 8


def write_categories(path: Path, classes: ClassTable, *, band: int = 1) -> None:
    """Category names and a thematic raster attribute table (value, class name, colour) for
    ``band`` of the raster at ``path``, in GDAL's PAM sidecar ``path.aux.xml`` (GeoTIFF has no
    place for them inside the file). Merged into the sidecar when GDAL already wrote one.

    Written as XML here, so the map gets them whether or not GDAL's Python bindings (osgeo)
    are installed; GDAL (and QGIS) read them back as category names and a RAT.
    """
    side = path.with_name(path.name + ".aux.xml")
    if side.exists():
        root = ET.parse(side).getroot()
    else:
        root = ET.Element("PAMDataset")
    element = next((e for e in root.findall("PAMRasterBand") if e.get("band") == str(band)),
                   None)
    if element is None:
        element = ET.SubElement(root, "PAMRasterBand", band=str(band))
    for old in element.findall("CategoryNames") + element.findall("GDALRasterAttributeTable"):
        element.remove(old)
    names = [""] * (classes.max_id + 1)
    for c in classes:
        names[c.id] = c.name
    names[0] = "nodata"
    categories = ET.SubElement(element, "CategoryNames")
    for name in names:
        ET.SubElement(categories, "Category").text = name
    rat = ET.SubElement(element, "GDALRasterAttributeTable", tableType="thematic")
    fields = (("Value", _GFT_INTEGER, _GFU_MINMAX), ("Class", _GFT_STRING, _GFU_NAME),
              ("Red", _GFT_INTEGER, _GFU_RED), ("Green", _GFT_INTEGER, _GFU_GREEN),
              ("Blue", _GFT_INTEGER, _GFU_BLUE))
    for index, (name, kind, usage) in enumerate(fields):
        defn = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(defn, "Name").text = name
        ET.SubElement(defn, "Type").text = str(kind)
        ET.SubElement(defn, "Usage").text = str(usage)
    for row, c in enumerate(classes):
        entry = ET.SubElement(rat, "Row", index=str(row))
        for value in (c.id, c.name, *c.color):
            ET.SubElement(entry, "F").text = str(value)
    ET.indent(root, space="  ")
    side.write_text(ET.tostring(root, encoding="unicode") + "\n", encoding="utf-8")
