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
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import numpy as np
import rasterio
from rasterio.errors import RasterioIOError

from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import OutputError, S2finError
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


def check_output_path(path: Path, *, overwrite: bool) -> None:
    """Refuse an existing output without ``overwrite`` and a directory that cannot take it."""
    if path.is_dir():
        raise OutputError(f"output {path} is a directory", hint="give a file name")
    if path.exists() and not overwrite:
        raise OutputError(f"output {path} exists", hint="pass --overwrite to replace it")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist", hint="create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable")


def _temporary_name(path: Path) -> Path:
    # Same directory, so the final rename is atomic (no cross-device copy); hidden and unique per
    # process so two jobs writing different outputs in one directory never collide.
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.stem}.s2fin-tmp-{token}{path.suffix}")


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it (and its GDAL sidecars) to ``path``.

    On any exception, KeyboardInterrupt included, the temporary file and sidecars are removed and
    the exception propagates. Disk-full and permission errors become :class:`OutputError`.
    """
    final = Path(path)
    check_output_path(final, overwrite=overwrite)
    tmp = _temporary_name(final)
    try:
        yield tmp
        if not tmp.exists():
            raise OutputError(f"nothing was written to {final}")
        for suffix in _SIDECAR_SUFFIXES:
            side_tmp = tmp.with_name(tmp.name + suffix)
            side_final = final.with_name(final.name + suffix)
            if side_tmp.exists():
                os.replace(side_tmp, side_final)
            elif side_final.exists() and overwrite:
                # A stale sidecar would describe the old file (wrong categories, statistics).
                _remove_quietly(side_final)
        # Some writers (safetensors) create 0600 files; an output gets the mode any new file
        # gets under the user's umask, so colleagues on a shared server can read the model.
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, final)
    except BaseException as exc:
        # Before the temporary file is removed (and frees its space): libraries report a full
        # disk in their own words (torch: "unexpected pos", GDAL: "not recognized as a supported
        # file format" on reopening what it failed to write), so ask the file system.
        full = (isinstance(exc, Exception) and not isinstance(exc, S2finError)
                and _disk_full(final.parent if str(final.parent) else Path(".")))
        _remove_quietly(tmp)
        for suffix in _SIDECAR_SUFFIXES:
            _remove_quietly(tmp.with_name(tmp.name + suffix))
        if full:
            raise OutputError(f"disk full while writing {final}",
                              hint="free space or write elsewhere") from exc
        if isinstance(exc, OSError | RasterioIOError) and not isinstance(exc, OutputError):
            raise _as_output_error(exc, final) from exc
        raise


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
    return OutputError(f"could not write {path}: {text.splitlines()[0] if text else type(exc)}")


def parse_creation_options(pairs: Sequence[str]) -> dict[str, str]:
    """Turn ``["KEY=VALUE", ...]`` (the CLI's repeatable ``--co``) into a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise OutputError(f"creation option {pair!r} is not KEY=VALUE",
                              hint="e.g. --co ZLEVEL=9")
        out[key.strip().upper()] = value.strip()
    return out


def geotiff_profile(
    grid: Grid,
    *,
    count: int,
    dtype: str,
    nodata: float | None,
    creation_options: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A rasterio profile for a tiled, compressed GeoTIFF on ``grid``."""
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
    if np.dtype(dtype).kind == "f":
        profile["predictor"] = "3"  # floating-point predictor: much better DEFLATE ratio
    for key, value in (creation_options or {}).items():
        profile[key.lower()] = value
    return profile


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
) -> Path:
    """Write a (bands, rows, cols) or (rows, cols) array as a GeoTIFF on ``grid``, atomically.

    With ``classes``, a single-band class raster gets an embedded colour table (palette
    interpretation) and a QGIS ``.qml`` sidecar naming every class.
    """
    array = data[np.newaxis] if data.ndim == 2 else data
    if array.ndim != 3 or array.shape[1:] != grid.shape:
        raise ValueError(f"array of shape {data.shape} does not fit grid {grid.shape}")
    final = Path(path)
    profile = geotiff_profile(grid, count=array.shape[0], dtype=str(array.dtype), nodata=nodata,
                              creation_options=creation_options)
    if classes is not None:
        profile["photometric"] = "PALETTE"
    with atomic_output(final, overwrite=overwrite) as tmp:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(array)
            if band_descriptions is not None:
                for i, desc in enumerate(band_descriptions, start=1):
                    dst.set_band_description(i, desc)
            all_tags = dict(tags or {})
            if classes is not None:
                all_tags[CLASSES_TAG] = json.dumps(classes.to_json())
            if all_tags:
                dst.update_tags(**all_tags)
            for i, btags in enumerate(band_tags or (), start=1):
                dst.update_tags(i, **btags)
            if classes is not None:
                dst.write_colormap(1, classes.colormap())
    if classes is not None:
        write_qml(qml_path_for(final), classes, overwrite=True)
    return final


def qml_path_for(raster_path: Path) -> Path:
    """QGIS applies ``name.qml`` automatically when it opens ``name.tif``."""
    return raster_path.with_suffix(".qml")


def qml_text(classes: ClassTable) -> str:
    """A QGIS paletted-renderer style naming and colouring every class."""
    entries = "\n".join(
        f"        <paletteEntry value=\"{c.id}\" color=\"#{c.color[0]:02x}{c.color[1]:02x}"
        f"{c.color[2]:02x}\" alpha=\"255\" label={quoteattr(c.name)}/>"
        for c in classes
    )
    return (
        "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"
        "<qgis version=\"3.28\" styleCategories=\"Symbology\">\n"
        "  <pipe>\n"
        "    <rasterrenderer type=\"paletted\" band=\"1\" opacity=\"1\" nodataColor=\"\">\n"
        "      <colorPalette>\n"
        f"{entries}\n"
        "      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "</qgis>\n"
    )


def write_text(path: str | os.PathLike[str], text: str, *, overwrite: bool = False) -> Path:
    """Write a small text file (JSON report, CSV, sidecar) atomically."""
    final = Path(path)
    with atomic_output(final, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return final


def write_qml(path: Path, classes: ClassTable, *, overwrite: bool = False) -> Path:
    return write_text(path, qml_text(classes), overwrite=overwrite)
