"""Writing class maps (and optional probability / confidence rasters) block by block.

Everything ``s2fin predict`` writes goes through :class:`ClassMapWriter`:

- **class map**: one band on the HSI grid, uint8 (uint16 when a class id exceeds 255), nodata 0,
  classes 1..N, tiled 512, DEFLATE, BIGTIFF=IF_SAFER (``--co`` overrides), an embedded colour table
  with palette interpretation, the band description ``land-cover class``, and tags naming the
  model (``S2FIN_MODEL``, ``S2FIN_MODEL_SHA256``) and the classes (``S2FIN_CLASSES``, JSON).
  Beside it: a QGIS ``.qml`` style (class names and colours; QGIS applies it on load) and, through
  GDAL's own Python bindings (``osgeo.gdal``; rasterio cannot write them), category names and a
  raster attribute table in the PAM sidecar ``map.tif.aux.xml``. Without osgeo: a warning, and the
  map is written without them.
- **probabilities** (``--probabilities``): one uint8 band per class (band i = output i, described
  ``P(name)``), **confidence** (``--confidence``): one uint8 band, the highest class probability.
  Both use the same encoding: ``value = 1 + round(254 * p)`` for p in [0, 1], so 1..255 are
  probabilities and **0 is nodata** (pixels that were not classified). GDAL scale/offset are set
  (scale 1/254, offset -1/254), so ``gdal_translate -unscale`` and rasterio's
  ``read(masked=True) * scales + offsets`` give p back (within 1/508).
- **COG** (``cog=True``): the raster is first written as a tiled GeoTIFF block by block, then
  overviews are built (mode for classes, average for probabilities), then it is copied with the
  COG driver (GDAL CreateCopy). The COG driver is never opened for writing: that would buffer the
  whole raster in memory.

Every file is written under a temporary name and renamed only when complete
(:func:`s2fin_cli.io.writer.atomic_output`): an error or Ctrl-C leaves no partial output, no
temporary file and no stale sidecar.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import Resampling
from rasterio.windows import Window

from s2fin_cli import console
from s2fin_cli.classes import ClassTable
from s2fin_cli.errors import OutputError
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.writer import (
    CLASSES_TAG,
    DEFAULT_CREATION_OPTIONS,
    atomic_output,
    geotiff_profile,
    qml_path_for,
    write_qml,
)

NODATA = 0
CLASS_BAND_DESCRIPTION = "land-cover class"
CONFIDENCE_BAND_DESCRIPTION = "confidence (highest class probability)"
TAG_MODEL = "S2FIN_MODEL"
TAG_MODEL_SHA256 = "S2FIN_MODEL_SHA256"
TAG_ENCODING = "S2FIN_ENCODING"
PROBABILITY_ENCODING = "uint8 value = 1 + round(254 * p); 0 = nodata"
PROBABILITY_SCALE = 1.0 / 254.0
PROBABILITY_OFFSET = -1.0 / 254.0
# Overviews are added until the smallest level fits in this many pixels (gdaladdo -minsize).
OVERVIEW_MIN_SIZE = 256
COG_DEFAULT_OPTIONS: dict[str, str] = {
    "BLOCKSIZE": "512",
    "COMPRESS": "DEFLATE",
    "BIGTIFF": "IF_SAFER",
}
# GTiff-only options that the COG driver does not know (it tiles by BLOCKSIZE).
_GTIFF_ONLY = ("TILED", "BLOCKXSIZE", "BLOCKYSIZE", "PHOTOMETRIC", "INTERLEAVE")


def class_dtype(classes: ClassTable) -> str:
    """uint8, or uint16 when a class id does not fit in a byte."""
    return "uint8" if classes.max_id <= 255 else "uint16"


def encode_probability(p: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] → uint8 1..255 (see the module docstring); NaN → 0 (nodata)."""
    finite = np.isfinite(p)
    scaled = np.rint(np.clip(np.where(finite, p, 0.0), 0.0, 1.0) * 254.0) + 1.0
    return np.where(finite, scaled, 0).astype(np.uint8)


def decode_probability(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_probability`: float32 probabilities, NaN where nodata."""
    v = values.astype(np.float32)
    return np.where(v == 0, np.nan, (v - 1.0) / 254.0).astype(np.float32)


def overview_factors(width: int, height: int, min_size: int = OVERVIEW_MIN_SIZE) -> list[int]:
    """Powers of two until the overview fits in ``min_size``; at least one level (2) when the
    raster has more than one pixel on its shorter side, so every COG has an overview."""
    factors: list[int] = []
    factor = 2
    while min(width, height) // factor >= 1:
        factors.append(factor)
        if -(-max(width, height) // factor) <= min_size:
            break
        factor *= 2
    return factors


@dataclass(frozen=True)
class MapOutputs:
    """Where and how :class:`ClassMapWriter` writes. ``probabilities``/``confidence`` optional."""

    classes: Path
    probabilities: Path | None = None
    confidence: Path | None = None
    cog: bool = False
    creation_options: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)  # e.g. model path and checksum
    # The .qml style and the category names / RAT. Off for the part files of a sharded
    # prediction (intermediate files: `s2fin merge` styles the map it assembles).
    style: bool = True

    def paths(self) -> list[Path]:
        """Every file that will be written (sidecars included), class map first."""
        out = [self.classes, *([qml_path_for(self.classes)] if self.style else [])]
        out += [p for p in (self.probabilities, self.confidence) if p is not None]
        return out


def model_tags(model_path: str | os.PathLike[str], sha256: str) -> dict[str, str]:
    """The tags naming the model that made a map."""
    return {TAG_MODEL: str(model_path), TAG_MODEL_SHA256: sha256}


@dataclass
class _Raster:
    """One output raster being written: its final path, temporary path and open dataset."""

    final: Path
    tmp: Path  # what atomic_output renames into place
    stage: Path  # where blocks are written (== tmp unless COG)
    dataset: Any
    resampling: Resampling


class ClassMapWriter:
    """Context manager writing a class map (and optional probability/confidence rasters).

    ``write_block`` may be called from one thread other than the one that opened the writer (the
    prediction pipeline's writer thread); calls are serialised by a lock. On a clean exit every
    output is finished (overviews, COG copy, category names, .qml) and renamed into place; on an
    exception nothing is left behind.
    """

    def __init__(self, grid: Grid, classes: ClassTable, outputs: MapOutputs) -> None:
        self.grid = grid
        self.classes = classes
        self.outputs = outputs
        self.dtype = class_dtype(classes)
        self._stack = contextlib.ExitStack()
        self._rasters: dict[str, _Raster] = {}
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------
    def __enter__(self) -> ClassMapWriter:
        try:
            o = self.outputs
            classes_tags = {**o.tags, CLASSES_TAG: json.dumps(self.classes.to_json())}
            self._open("classes", o.classes, count=1, dtype=self.dtype, palette=True,
                       descriptions=[CLASS_BAND_DESCRIPTION], tags=classes_tags,
                       resampling=Resampling.mode)
            prob_tags = {**o.tags, TAG_ENCODING: PROBABILITY_ENCODING}
            if o.probabilities is not None:
                names = [f"P({c.name})" for c in self.classes]
                self._open("probabilities", o.probabilities, count=len(self.classes),
                           dtype="uint8", palette=False, descriptions=names,
                           tags={**prob_tags, CLASSES_TAG: classes_tags[CLASSES_TAG]},
                           resampling=Resampling.average, scaled=True)
            if o.confidence is not None:
                self._open("confidence", o.confidence, count=1, dtype="uint8", palette=False,
                           descriptions=[CONFIDENCE_BAND_DESCRIPTION], tags=prob_tags,
                           resampling=Resampling.average, scaled=True)
        except BaseException:
            self._abort()
            raise
        return self

    def _open(self, key: str, final: Path, *, count: int, dtype: str, palette: bool,
              descriptions: list[str], tags: Mapping[str, str], resampling: Resampling,
              scaled: bool = False) -> None:
        o = self.outputs
        tmp = self._stack.enter_context(atomic_output(final, overwrite=o.overwrite))
        stage = tmp.with_name(f"{tmp.stem}.stage{tmp.suffix}") if o.cog else tmp
        # The staging GeoTIFF of a COG keeps GDAL's tiling defaults; --co applies to the COG.
        options = {} if o.cog else dict(o.creation_options)
        profile = geotiff_profile(self.grid, count=count, dtype=dtype, nodata=NODATA,
                                  creation_options=options)
        if palette:
            profile["photometric"] = "PALETTE"
        if count > 1:
            profile.setdefault("interleave", "band")
        raster = _Raster(final, tmp, stage, None, resampling)
        self._rasters[key] = raster
        raster.dataset = rasterio.open(stage, "w", **profile)
        ds = raster.dataset
        for i, desc in enumerate(descriptions, start=1):
            ds.set_band_description(i, desc)
        ds.update_tags(**tags)
        if palette:
            ds.write_colormap(1, self.classes.colormap())
        if scaled:
            ds.scales = (PROBABILITY_SCALE,) * count
            ds.offsets = (PROBABILITY_OFFSET,) * count
        if key == "probabilities":
            for i, c in enumerate(self.classes, start=1):
                ds.update_tags(i, class_id=str(c.id), class_name=c.name)

    # -- writing ---------------------------------------------------------------------------
    def write_block(self, window: Window, class_ids: np.ndarray,
                    probabilities: np.ndarray | None = None,
                    confidence: np.ndarray | None = None) -> None:
        """Write one block: class ids (rows, cols) with 0 = nodata; probabilities (classes, rows,
        cols) and confidence (rows, cols) as floats in [0, 1] with NaN = nodata."""
        self.write_encoded(window, class_ids,
                           None if probabilities is None else encode_probability(probabilities),
                           None if confidence is None else encode_probability(confidence))

    def write_encoded(self, window: Window, class_ids: np.ndarray,
                      probabilities: np.ndarray | None = None,
                      confidence: np.ndarray | None = None) -> None:
        """Like :meth:`write_block`, with probabilities and confidence already encoded as uint8
        (:func:`encode_probability`), as read back from another map (``s2fin merge``)."""
        with self._lock:
            self._rasters["classes"].dataset.write(class_ids.astype(self.dtype, copy=False), 1,
                                                   window=window)
            if "probabilities" in self._rasters:
                if probabilities is None:
                    raise ValueError("this writer needs probabilities for every block")
                self._rasters["probabilities"].dataset.write(probabilities, window=window)
            if "confidence" in self._rasters:
                if confidence is None:
                    raise ValueError("this writer needs a confidence for every block")
                if confidence.ndim == 3:
                    confidence = confidence[0]
                self._rasters["confidence"].dataset.write(confidence, 1, window=window)

    # -- finishing -------------------------------------------------------------------------
    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            translated = self._abort(exc_type, exc, tb)
            if translated is not None:
                raise translated from None
            return
        try:
            for key, raster in self._rasters.items():
                raster.dataset.close()
                if self.outputs.cog:
                    self._to_cog(raster)
                if key == "classes" and self.outputs.style:
                    write_categories(raster.tmp, self.classes)
        except BaseException as error:
            translated = self._abort(type(error), error, error.__traceback__)
            if translated is not None:
                raise translated from None
            raise
        self._stack.close()  # renames every temporary into place
        if self.outputs.style:
            write_qml(qml_path_for(self.outputs.classes), self.classes, overwrite=True)

    def _to_cog(self, raster: _Raster) -> None:
        with rasterio.open(raster.stage, "r+") as ds:
            factors = overview_factors(ds.width, ds.height)
            if factors:
                ds.build_overviews(factors, raster.resampling)
                ds.update_tags(ns="rio_overview", resampling=raster.resampling.name)
        options = {**COG_DEFAULT_OPTIONS,
                   **{k: v for k, v in self.outputs.creation_options.items()
                      if k.upper() not in _GTIFF_ONLY}}
        options.setdefault("OVERVIEW_RESAMPLING", raster.resampling.name.upper())
        rasterio.shutil.copy(str(raster.stage), str(raster.tmp), driver="COG", **options)
        _remove_with_sidecars(raster.stage)

    def _abort(self, exc_type: Any = None, exc: Any = None,
               tb: Any = None) -> OutputError | None:
        """Close and remove every temporary. Returns the :class:`OutputError` that
        ``atomic_output`` made of a write failure (disk full, permissions), to raise instead of
        the raw I/O error."""
        for raster in self._rasters.values():
            if raster.dataset is not None:
                with contextlib.suppress(Exception):
                    raster.dataset.close()
            if raster.stage != raster.tmp:
                _remove_with_sidecars(raster.stage)
        translated: OutputError | None = None
        if exc_type is None:
            self._stack.close()
        else:
            # atomic_output removes its temporary file and sidecars when it sees the exception,
            # and turns I/O failures into one-line OutputErrors.
            try:
                self._stack.__exit__(exc_type, exc, tb)
            except OutputError as error:
                translated = None if error is exc else error
            except BaseException:  # the original exception is what the caller raises
                pass
        self._rasters = {}
        return translated


def _remove_with_sidecars(path: Path) -> None:
    for p in (path, *(path.with_name(path.name + s) for s in (".aux.xml", ".ovr", ".msk"))):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def write_categories(path: Path, classes: ClassTable) -> bool:
    """Category names and a raster attribute table for ``path`` (PAM ``.aux.xml``) via osgeo.

    Returns False (with a warning) when GDAL's Python bindings are not installed.
    """
    try:
        from osgeo import gdal
    except ImportError:
        console.warn("GDAL's Python bindings (osgeo) are not installed: the map has no category "
                     "names / attribute table (its colours and the .qml still name the classes)")
        return False
    names = [""] * (classes.max_id + 1)
    for c in classes:
        names[c.id] = c.name
    names[0] = "nodata"
    use_exceptions = gdal.GetUseExceptions()
    gdal.UseExceptions()
    try:
        ds = gdal.Open(str(path), gdal.GA_ReadOnly)
        band = ds.GetRasterBand(1)
        band.SetCategoryNames(names)
        rat = gdal.RasterAttributeTable()
        rat.CreateColumn("Value", gdal.GFT_Integer, gdal.GFU_MinMax)
        rat.CreateColumn("Class", gdal.GFT_String, gdal.GFU_Name)
        for column in ("Red", "Green", "Blue"):
            rat.CreateColumn(column, gdal.GFT_Integer, getattr(gdal, f"GFU_{column}"))
        rat.SetRowCount(len(classes))
        for row, c in enumerate(classes):
            rat.SetValueAsInt(row, 0, c.id)
            rat.SetValueAsString(row, 1, c.name)
            for col, value in enumerate(c.color, start=2):
                rat.SetValueAsInt(row, col, int(value))
        band.SetDefaultRAT(rat)
        band = None
        ds = None  # closing writes the PAM sidecar
    finally:
        if not use_exceptions:
            gdal.DontUseExceptions()
    return True


@contextlib.contextmanager
def class_map_writer(grid: Grid, classes: ClassTable,
                     outputs: MapOutputs) -> Iterator[ClassMapWriter]:
    """Functional spelling of ``with ClassMapWriter(...) as writer``."""
    with ClassMapWriter(grid, classes, outputs) as writer:
        yield writer


__all__ = [
    "CLASS_BAND_DESCRIPTION",
    "DEFAULT_CREATION_OPTIONS",
    "NODATA",
    "ClassMapWriter",
    "MapOutputs",
    "class_dtype",
    "class_map_writer",
    "decode_probability",
    "encode_probability",
    "model_tags",
    "overview_factors",
    "write_categories",
]
