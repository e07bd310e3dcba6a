"""Writing class maps (and optional probability / confidence rasters) block by block.

Everything ``s2fin predict`` and ``s2fin merge`` write goes through :class:`ClassMapWriter`:

- **class map**: one band on the HSI grid (its GCPs and their CRS when the HSI is georeferenced
  by ground control points), uint8 (uint16 when a class id exceeds 255), nodata 0, classes 1..N,
  tiled 512, DEFLATE, BIGTIFF=IF_SAFER (``--co`` overrides), 4 bits per pixel while every id is
  at most 15 (so the colour table has 16 entries, not 256 mostly black ones), an embedded colour
  table with palette interpretation, the band description ``land-cover class``, band metadata
  ``CLASS_<id>=<name>``, and tags naming the model (``S2FIN_MODEL``: its file name,
  ``S2FIN_MODEL_SHA256``) and the classes (``S2FIN_CLASSES``, JSON). Beside it: a QGIS ``.qml``
  style (class names and colours; QGIS applies it on load) and GDAL's PAM sidecar
  ``map.tif.aux.xml`` with category names and a thematic raster attribute table (value, class,
  colour), written as XML by s2fin (no GDAL Python bindings needed).
- **probabilities** (``--probabilities``): one uint8 band per class (band i = output i, described
  ``P(name)``, band tags ``class_id``/``class_name``), **confidence** (``--confidence``): one uint8
  band, the highest class probability. Both use the same encoding: ``value = round(250 * p)``
  for p in [0, 1], so 0..250 are probabilities and **255 is nodata** (pixels that were not
  classified); 251..254 are never written. GDAL scale 1/250 and offset 0 are set, so
  ``gdal_translate -unscale``, QGIS and ``read(masked=True) * scales + offsets`` give p back
  (within 1/500), and no valid value equals nodata before or after scaling (p = 0 is 0, a
  value, not nodata). Each gets a ``.qml`` with a 0-1 colour ramp (single-band pseudocolour).
- **COG** (``cog=True``): the raster is first written as a tiled GeoTIFF block by block, then
  overviews are built (mode for classes, average for probabilities), then it is copied with the
  COG driver (GDAL CreateCopy). The COG driver is never opened for writing: that would buffer the
  whole raster in memory.

Every file (sidecars included) is checked before anything is written
(:func:`s2fin_cli.io.outputs.check_outputs`), written under a temporary name, closed and read
back, and all of them are renamed into place together only when the writer exits without an
exception (:class:`s2fin_cli.io.writer.AtomicGroup`): an error while opening, writing or
finishing, a full disk or a signal leaves no partial output, no temporary file and no stale
sidecar, and replaces nothing.
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

from s2fin_cli.classes import ClassTable
from s2fin_cli.io.gdal import check_copy_options, close_and_verify, gdal_messages, verify_raster
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.outputs import Output, check_outputs
from s2fin_cli.io.writer import (
    CLASSES_TAG,
    DEFAULT_CREATION_OPTIONS,
    AtomicFile,
    AtomicGroup,
    class_band_tags,
    class_nbits,
    gdal_sidecars,
    geotiff_profile,
    open_for_writing,
    qml_path_for,
    qml_text,
    ramp_qml_text,
    write_categories,
)

NODATA = 0
CLASS_BAND_DESCRIPTION = "land-cover class"
CONFIDENCE_BAND_DESCRIPTION = "confidence (highest class probability)"
TAG_MODEL = "S2FIN_MODEL"
TAG_MODEL_SHA256 = "S2FIN_MODEL_SHA256"
TAG_ENCODING = "S2FIN_ENCODING"
PROBABILITY_STEPS = 250
PROBABILITY_NODATA = 255
PROBABILITY_ENCODING = "uint8 value = round(250 * p); 255 = nodata; scale 1/250, offset 0"
PROBABILITY_SCALE = 1.0 / PROBABILITY_STEPS
PROBABILITY_OFFSET = 0.0
# Overviews are added until the smallest level fits in this many pixels (gdaladdo -minsize).
OVERVIEW_MIN_SIZE = 256
COG_DEFAULT_OPTIONS: dict[str, str] = {
    "BLOCKSIZE": "512",
    "COMPRESS": "DEFLATE",
    "BIGTIFF": "IF_SAFER",
}
# GTiff-only options that the COG driver does not know (it tiles by BLOCKSIZE).
_GTIFF_ONLY = ("TILED", "BLOCKXSIZE", "BLOCKYSIZE", "PHOTOMETRIC", "INTERLEAVE", "SPARSE_OK")


def class_dtype(classes: ClassTable) -> str:
    """uint8, or uint16 when a class id does not fit in a byte."""
    return "uint8" if classes.max_id <= 255 else "uint16"


def encode_probability(p: np.ndarray) -> np.ndarray:
    """Probabilities in [0, 1] → uint8 0..250 (see the module docstring); NaN → 255 (nodata)."""
    finite = np.isfinite(p)
    scaled = np.rint(np.clip(np.where(finite, p, 0.0), 0.0, 1.0) * PROBABILITY_STEPS)
    return np.where(finite, scaled, PROBABILITY_NODATA).astype(np.uint8)


def decode_probability(values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_probability`: float32 probabilities, NaN where nodata."""
    v = values.astype(np.float32)
    return np.where(v == PROBABILITY_NODATA, np.nan, v / PROBABILITY_STEPS).astype(np.float32)


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
    """Where and how :class:`ClassMapWriter` writes. ``probabilities``/``confidence`` optional.

    ``inputs``: the files the run reads (scene, HSI, LiDAR/SAR, model, parts): the writer refuses
    to write over any of them (:func:`check_outputs`), whatever the caller checked before.
    """

    classes: Path
    probabilities: Path | None = None
    confidence: Path | None = None
    cog: bool = False
    creation_options: Mapping[str, str] = field(default_factory=dict)
    overwrite: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)  # e.g. model name and checksum
    # The .qml styles and the category names / RAT. Off for the part files of a sharded
    # prediction (intermediate files: `s2fin merge` styles the map it assembles).
    style: bool = True
    inputs: tuple[Path, ...] = ()

    def output_files(self) -> list[Output]:
        """Every raster written, as :func:`check_outputs` takes them (sidecars implied)."""
        driver = "COG" if self.cog else "GTiff"
        return [Output(p, driver, self.style)
                for p in (self.classes, self.probabilities, self.confidence) if p is not None]

    def paths(self) -> list[Path]:
        """Every file that will be written (sidecars included), class map first."""
        out: list[Path] = []
        for spec in self.output_files():
            out.append(spec.final)
            if self.style:
                out.append(qml_path_for(spec.final))
        return out


def model_tags(model_path: str | os.PathLike[str], sha256: str) -> dict[str, str]:
    """The tags naming the model that made a map: its file name (not the path as typed, which
    means nothing elsewhere) and its SHA-256, which identifies it wherever it is."""
    return {TAG_MODEL: Path(os.fspath(model_path)).name, TAG_MODEL_SHA256: sha256}


@dataclass
class _Raster:
    """One output raster being written: its final path, temporary path and open dataset."""

    final: Path
    tmp: Path  # what the atomic group renames into place
    stage: Path  # where blocks are written (== tmp unless COG)
    dataset: Any
    resampling: Resampling
    dtype: str = "uint8"
    nbits: str | None = None


class ClassMapWriter:
    """Context manager writing a class map (and optional probability/confidence rasters).

    ``write_block`` may be called from one thread other than the one that opened the writer (the
    prediction pipeline's writer thread); calls are serialised by a lock. On a clean exit every
    output is finished (overviews, COG copy, category names, .qml), read back, and renamed into
    place; on an exception, in ``__enter__`` as anywhere else, nothing is renamed and nothing is
    left behind.
    """

    def __init__(self, grid: Grid, classes: ClassTable, outputs: MapOutputs) -> None:
        self.grid = grid
        self.classes = classes
        self.outputs = outputs
        self.dtype = class_dtype(classes)
        self._group = AtomicGroup()
        self._rasters: dict[str, _Raster] = {}
        self._styles: list[tuple[AtomicFile, str]] = []
        self._lock = threading.Lock()

    # -- opening ---------------------------------------------------------------------------
    def __enter__(self) -> ClassMapWriter:
        try:
            o = self.outputs
            check_outputs(o.output_files(), o.inputs, overwrite=o.overwrite)
            classes_tags = {**o.tags, CLASSES_TAG: json.dumps(self.classes.to_json())}
            self._open("classes", o.classes, count=1, dtype=self.dtype, nodata=NODATA,
                       palette=True, descriptions=[CLASS_BAND_DESCRIPTION], tags=classes_tags,
                       resampling=Resampling.mode)
            prob_tags = {**o.tags, TAG_ENCODING: PROBABILITY_ENCODING}
            if o.probabilities is not None:
                names = [f"P({c.name})" for c in self.classes]
                self._open("probabilities", o.probabilities, count=len(self.classes),
                           dtype="uint8", nodata=PROBABILITY_NODATA, palette=False,
                           descriptions=names,
                           tags={**prob_tags, CLASSES_TAG: classes_tags[CLASSES_TAG]},
                           resampling=Resampling.average, scaled=True)
            if o.confidence is not None:
                self._open("confidence", o.confidence, count=1, dtype="uint8",
                           nodata=PROBABILITY_NODATA, palette=False,
                           descriptions=[CONFIDENCE_BAND_DESCRIPTION], tags=prob_tags,
                           resampling=Resampling.average, scaled=True)
            if o.style:
                for key, raster in self._rasters.items():
                    text = qml_text(self.classes) if key == "classes" else ramp_qml_text()
                    target = self._group.add(qml_path_for(raster.final), overwrite=o.overwrite)
                    self._styles.append((target, text))
        except BaseException as exc:
            translated = self._abort(exc)
            if translated is exc:
                raise
            raise translated from None
        return self

    def _open(self, key: str, final: Path, *, count: int, dtype: str, nodata: int,
              palette: bool, descriptions: list[str], tags: Mapping[str, str],
              resampling: Resampling, scaled: bool = False) -> None:
        o = self.outputs
        target = self._group.add(final, overwrite=o.overwrite, sidecars=gdal_sidecars(final))
        tmp = target.tmp
        stage = tmp.with_name(f"{tmp.stem}.stage{tmp.suffix}") if o.cog else tmp
        # The staging GeoTIFF of a COG keeps GDAL's tiling defaults; --co applies to the COG.
        options = {} if o.cog else dict(o.creation_options)
        profile = geotiff_profile(self.grid, count=count, dtype=dtype, nodata=nodata,
                                  creation_options=options)
        nbits = class_nbits(self.classes.max_id) if palette else None
        if palette:
            profile["photometric"] = "PALETTE"
            if nbits is not None:
                profile.setdefault("nbits", nbits)
        if count > 1:
            profile.setdefault("interleave", "band")
        raster = _Raster(final, tmp, stage, None, resampling, dtype,
                         str(profile.get("nbits")) if "nbits" in profile else None)
        self._rasters[key] = raster
        if o.cog:
            check_copy_options("COG", self._cog_options(raster), dtype=dtype, count=count,
                               user_options=o.creation_options or None)
        raster.dataset = open_for_writing(stage, profile, options or None)
        ds = raster.dataset
        for i, desc in enumerate(descriptions, start=1):
            ds.set_band_description(i, desc)
        ds.update_tags(**tags)
        if palette:
            ds.update_tags(1, **class_band_tags(self.classes))
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
        if exc is not None:
            translated = self._abort(exc)
            if translated is not exc:
                raise translated from None
            return
        try:
            for key, raster in self._rasters.items():
                dataset, raster.dataset = raster.dataset, None
                close_and_verify(dataset, raster.stage)
                if self.outputs.cog:
                    self._to_cog(raster)
                if key == "classes" and self.outputs.style:
                    write_categories(raster.tmp, self.classes)
            for target, text in self._styles:
                target.tmp.write_text(text, encoding="utf-8")
            self._group.commit()  # renames every temporary into place
        except BaseException as error:
            translated = self._abort(error)
            if translated is not error:
                raise translated from None
            raise

    def _cog_options(self, raster: _Raster) -> dict[str, str]:
        options = {**COG_DEFAULT_OPTIONS,
                   **{k.upper(): v for k, v in self.outputs.creation_options.items()
                      if k.upper() not in _GTIFF_ONLY}}
        options.setdefault("OVERVIEW_RESAMPLING", raster.resampling.name.upper())
        if raster.nbits is not None:
            options.setdefault("NBITS", raster.nbits)
        return options

    def _to_cog(self, raster: _Raster) -> None:
        with gdal_messages(), rasterio.open(raster.stage, "r+") as ds:
            factors = overview_factors(ds.width, ds.height)
            if factors:
                ds.build_overviews(factors, raster.resampling)
                ds.update_tags(ns="rio_overview", resampling=raster.resampling.name)
        with gdal_messages() as messages:
            try:
                rasterio.shutil.copy(str(raster.stage), str(raster.tmp), driver="COG",
                                     **self._cog_options(raster))
            except Exception as exc:
                reason = next((m.text for m in messages if m.kind == "error"), str(exc))
                raise OSError(5, f"GDAL's COG copy failed: {reason}") from None
        errors = [m.text for m in messages if m.kind == "error"]
        if errors:
            raise OSError(5, f"GDAL's COG copy failed: {errors[0]}")
        verify_raster(raster.tmp)
        _remove_with_sidecars(raster.stage)

    def _abort(self, exc: BaseException) -> BaseException:
        """Close and remove every temporary; nothing is committed. Returns the exception to
        raise: ``exc``, or the :class:`OutputError` a write failure (disk full, permissions,
        I/O) becomes."""
        for raster in self._rasters.values():
            if raster.dataset is not None:
                with contextlib.suppress(Exception), gdal_messages():
                    raster.dataset.close()
                raster.dataset = None
            if raster.stage != raster.tmp:
                _remove_with_sidecars(raster.stage)
        translated = self._group.failed(exc)
        self._rasters = {}
        return translated


def _remove_with_sidecars(path: Path) -> None:
    for p in (path, *gdal_sidecars(path)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


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
    "PROBABILITY_NODATA",
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
