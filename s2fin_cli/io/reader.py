"""Open an optical raster and an auxiliary (LiDAR or SAR) raster as one scene on the optical grid.

The optical (HSI/MSI) grid is the reference. An auxiliary raster on another CRS, resolution or
extent is read through a ``WarpedVRT`` of that grid (bilinear), so nothing is resampled to disk.
A stacked raster (optical bands, then auxiliary bands, as written by ``s2fin stack``) is a scene
too. Reads are windowed: a block plus a halo, reflect-padded at scene borders, so memory follows
the block, never the scene.

Invalid values (the dataset's nodata or mask, NaN, Inf) come back as NaN. A pixel is nodata for a
modality when every band of it is invalid; an isolated invalid value in one band (a bad band, a
saturated detector) is left as NaN for preprocessing to fill.

Values are physical values: a band's GDAL scale and offset (``value = raw * scale + offset``, as
``gdal_translate -unscale`` applies them) are applied on read, after the nodata test on the raw
value. Complex bands (SAR in CFloat32/CInt16 ...) are refused: their phase means nothing to the
network, and dropping the imaginary part silently would be wrong.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from s2fin_cli import console
from s2fin_cli.errors import AlignmentError, InputError
from s2fin_cli.io.gdal import error_text, gdal_messages
from s2fin_cli.io.grid import Grid
from s2fin_cli.io.windows import reflect_indices

AuxKind = Literal["lidar", "sar"]
AUX_KINDS: tuple[str, ...] = ("lidar", "sar")

# Tags written by `s2fin stack` (and read here) that say which bands belong to which modality.
TAG_OPTICAL_BANDS = "S2FIN_OPTICAL_BANDS"
TAG_AUX_BANDS = "S2FIN_AUX_BANDS"
TAG_AUX_KIND = "S2FIN_AUX_KIND"
TAG_MODALITY = "S2FIN_MODALITY"  # per band


def open_raster(path: str | os.PathLike[str]) -> Any:
    """``rasterio.open`` with one-line errors for missing, directory and non-raster paths."""
    p = Path(path)
    if not p.exists() and not str(path).startswith(("/vsi", "http://", "https://")):
        raise InputError(f"{p} does not exist")
    if p.is_dir():
        raise InputError(f"{p} is a directory, not a raster file")
    try:
        with gdal_messages(), warnings.catch_warnings():
            # A raster without georeferencing is legal here; alignment decides what it means.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            dataset = rasterio.open(p)
    except RasterioIOError as exc:
        raise InputError(f"{p} is not a readable raster: {error_text(exc)}") from None
    if dataset.count < 1 or dataset.width < 1 or dataset.height < 1:
        dataset.close()
        raise InputError(f"{p} has no pixels or no bands")
    return dataset


def refuse_complex(dataset: Any, path: str | os.PathLike[str], what: str) -> None:
    """Refuse complex bands (CInt16, CFloat32 ...): reading them as real drops the imaginary
    part, a silently wrong input. :class:`InputError` (exit 3) saying how to convert them."""
    complex_types = sorted({d for d in dataset.dtypes if np.dtype(d).kind == "c"})
    if complex_types:
        raise InputError(
            f"{what} {Path(path).name} holds complex values ({', '.join(complex_types)}); "
            "s2fin reads real-valued bands only",
            hint="convert it to intensity or amplitude first, e.g. gdal_translate "
                 "-ot Float32 with a VRT pixel function (intensity, mod) or SNAP's "
                 "band maths",
        )


def band_scaling(dataset: Any, indexes: tuple[int, ...]) -> tuple[tuple[float, ...],
                                                               tuple[float, ...]]:
    """(scales, offsets) of ``indexes`` (GDAL's per-band scale/offset; 1 and 0 when unset)."""
    scales = tuple(float(dataset.scales[i - 1]) if dataset.scales[i - 1] is not None else 1.0
                   for i in indexes)
    offsets = tuple(float(dataset.offsets[i - 1]) if dataset.offsets[i - 1] is not None else 0.0
                    for i in indexes)
    return scales, offsets


def format_band_ranges(first: int, last: int) -> str:
    return f"{first}-{last}"


def parse_band_range(text: str) -> tuple[int, int]:
    first, _, last = text.partition("-")
    return int(first), int(last or first)


@dataclass(frozen=True)
class Modality:
    """One modality of a scene: which file, which bands, their names and nodata."""

    name: str  # "optical", "lidar" or "sar"
    path: Path
    band_indexes: tuple[int, ...]  # 1-based, in the dataset that holds them
    band_names: tuple[str, ...]
    dtype: str
    nodata: float | None
    # GDAL scale/offset per band (value = raw * scale + offset), applied on read.
    scales: tuple[float, ...] = ()
    offsets: tuple[float, ...] = ()

    @property
    def count(self) -> int:
        return len(self.band_indexes)

    @property
    def scaled(self) -> bool:
        return any(s != 1.0 for s in self.scales) or any(o != 0.0 for o in self.offsets)

    def describe(self) -> dict[str, Any]:
        return {
            "modality": self.name,
            "path": str(self.path),
            "bands": self.count,
            "band_indexes": list(self.band_indexes),
            "band_names": list(self.band_names),
            "dtype": self.dtype,
            "nodata": self.nodata,
            "scales": list(self.scales),
            "offsets": list(self.offsets),
        }


@dataclass
class SceneBlock:
    """A block of a scene with a halo: float32 (bands, rows, cols) arrays, NaN where invalid."""

    window: Window  # the core block, without halo, in scene pixel coordinates
    halo: int
    optical: np.ndarray
    aux: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """(rows, cols) bool: both modalities have data at this pixel (halo included)."""
        return valid_mask(self.optical) & valid_mask(self.aux)

    @property
    def core_valid(self) -> np.ndarray:
        h = self.halo
        v = self.valid
        return v[h:v.shape[0] - h, h:v.shape[1] - h]


def valid_mask(array: np.ndarray) -> np.ndarray:
    """A pixel is valid for a modality when at least one band holds a finite value."""
    return np.isfinite(array).any(axis=0)


def _band_names(dataset: Any, indexes: tuple[int, ...], prefix: str) -> tuple[str, ...]:
    names = []
    for i in indexes:
        desc = dataset.descriptions[i - 1]
        names.append(desc if desc else f"{prefix} band {i}")
    return tuple(names)


def _nodata(dataset: Any) -> float | None:
    value = dataset.nodata
    return None if value is None else float(value)


def _read_masked(dataset: Any, indexes: tuple[int, ...], window: Window,
                 scales: tuple[float, ...] = (), offsets: tuple[float, ...] = (),
                 out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read bands as float32 with every masked or non-finite value set to NaN, and GDAL's
    scale/offset applied (when given)."""
    kwargs: dict[str, Any] = {} if out_shape is None else {
        "out_shape": (len(indexes), *out_shape), "resampling": Resampling.nearest}
    data = dataset.read(list(indexes), window=window, masked=True, out_dtype="float32",
                        **kwargs)
    out = np.ma.filled(data.astype(np.float32, copy=False), np.nan)
    if scales and (any(v != 1.0 for v in scales) or any(v != 0.0 for v in offsets)):
        out *= np.asarray(scales, np.float32)[:, None, None]
        out += np.asarray(offsets, np.float32)[:, None, None]
    out[~np.isfinite(out)] = np.nan
    return out


def _read_or_fail(dataset: Any, modality: Modality, window: Window,
                  out_shape: tuple[int, int] | None = None) -> np.ndarray:
    """:func:`_read_masked`, with a corrupt or truncated file (a tile that fails to decode) as a
    one-line :class:`InputError` naming the file instead of GDAL's generic read failure."""
    try:
        return _read_masked(dataset, modality.band_indexes, window, modality.scales,
                            modality.offsets, out_shape)
    except RasterioIOError as exc:
        cause = exc.__cause__ or exc
        raise InputError(f"{modality.path} cannot be read (corrupt or truncated?): "
                         f"{error_text(cause)}", hint="check or re-export the file") from None


class Scene:
    """An optical raster and an auxiliary raster aligned on the optical grid.

    Use :func:`open_scene` or :func:`open_stacked_scene`; close with :meth:`close` or a ``with``.
    """

    def __init__(
        self,
        grid: Grid,
        optical: Modality,
        aux: Modality,
        aux_kind: AuxKind,
        optical_source: Any,
        aux_source: Any,
        notes: list[str],
        closers: list[Any],
        *,
        aux_warped: bool = False,
    ) -> None:
        self.grid = grid
        self.optical = optical
        self.aux = aux
        self.aux_kind: AuxKind = aux_kind
        self.notes = notes
        # True when the auxiliary raster is resampled onto the optical grid on the fly.
        self.aux_warped = aux_warped
        self._optical_source = optical_source
        self._aux_source = aux_source
        self._closers = closers

    def __enter__(self) -> Scene:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # Warped views first, then the datasets they wrap.
        for obj in reversed(self._closers):
            with contextlib.suppress(Exception):
                obj.close()
        self._closers = []

    def read(self, window: Window, halo: int = 0) -> SceneBlock:
        """Read ``window`` plus ``halo`` pixels on each side, mirror-reflected at scene borders."""
        row0, col0 = int(window.row_off), int(window.col_off)
        rows = reflect_indices(row0 - halo, int(window.height) + 2 * halo, self.grid.height)
        cols = reflect_indices(col0 - halo, int(window.width) + 2 * halo, self.grid.width)
        # Read only the bounding box of the needed rows/columns, then gather: memory follows
        # the block, and the reflection costs no extra read.
        r_lo, r_hi = int(rows.min()), int(rows.max()) + 1
        c_lo, c_hi = int(cols.min()), int(cols.max()) + 1
        box = Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)
        optical = _read_or_fail(self._optical_source, self.optical, box)
        aux = _read_or_fail(self._aux_source, self.aux, box)
        ri, ci = np.ix_(rows - r_lo, cols - c_lo)
        return SceneBlock(window, halo, optical[:, ri, ci], aux[:, ri, ci])

    def value_summary(self, max_pixels: int = 65536) -> dict[str, list[dict[str, float]]]:
        """Per-band statistics of the scene's values, cheaply: min, max, mean and standard
        deviation (of valid values, after scale/offset) over a decimated read of at most about
        ``max_pixels`` pixels (nearest, so no value is invented). For comparing a scene with the
        data a model was trained on; not exact statistics."""
        factor = max(1, int(np.ceil(np.sqrt(self.grid.width * self.grid.height / max_pixels))))
        shape = (max(1, self.grid.height // factor), max(1, self.grid.width // factor))
        out: dict[str, list[dict[str, float]]] = {}
        for key, modality, source in (("optical", self.optical, self._optical_source),
                                      ("aux", self.aux, self._aux_source)):
            data = _read_or_fail(source, modality, self.grid.full_window(), shape)
            bands = []
            for band in data:
                valid = band[np.isfinite(band)].astype(np.float64)
                if valid.size == 0:
                    bands.append({"min": float("nan"), "max": float("nan"),
                                  "mean": float("nan"), "std": float("nan"), "valid": 0.0})
                    continue
                bands.append({"min": float(valid.min()), "max": float(valid.max()),
                              "mean": float(valid.mean()), "std": float(valid.std()),
                              "valid": float(valid.size) / band.size})
            out[key] = bands
        return out

    def describe(self) -> dict[str, Any]:
        return {
            "grid": self.grid.describe(),
            "optical": self.optical.describe(),
            "aux_kind": self.aux_kind,
            "aux": self.aux.describe(),
            "aux_resampled": self.aux_warped,
            "notes": list(self.notes),
        }


@dataclass
class _Alignment:
    source: Any  # the dataset itself, or a WarpedVRT of the reference grid
    notes: list[str] = field(default_factory=list)
    closers: list[Any] = field(default_factory=list)


def align_to_grid(
    dataset: Any,
    reference: Grid,
    *,
    label: str,
    resampling: Resampling = Resampling.bilinear,
    reference_label: str = "the HSI grid",
) -> _Alignment:
    """Return ``dataset`` itself when it is on ``reference``, else a WarpedVRT onto it.

    Raises :class:`AlignmentError` when the two cannot be put together: no spatial overlap, or a
    missing CRS on one side with a different shape. Without any CRS, identical shapes are taken
    as co-registered (with a warning when only one side lacks it).
    """
    grid = Grid.of(dataset)
    if grid.same_as(reference):
        return _Alignment(dataset)
    if grid.crs is None or reference.crs is None:
        if grid.shape == reference.shape:
            if grid.crs is not None or reference.crs is not None or grid.gcps or reference.gcps:
                missing = label if grid.crs is None else reference_label
                how = ("is georeferenced by ground control points only (no map grid)"
                       if (grid if missing == label else reference).gcps else "has no CRS")
                console.warn(f"{missing} {how}; {label} has the same size as "
                             f"{reference_label} and is taken as co-registered")
            return _Alignment(dataset)
        missing = label if grid.crs is None else reference_label
        if (grid if missing == label else reference).gcps:
            raise AlignmentError(
                f"{missing} is georeferenced by ground control points only, and {label} "
                f"({grid.width}x{grid.height}) differs in size from {reference_label} "
                f"({reference.width}x{reference.height}): s2fin cannot resample onto GCPs",
                hint="orthorectify it onto a map grid first, e.g. gdalwarp -t_srs EPSG:<code> "
                     "-tps in.tif out.tif",
            )
        raise AlignmentError(
            f"{missing} has no CRS and {label} ({grid.width}x{grid.height}) differs in size from "
            f"{reference_label} ({reference.width}x{reference.height})",
            hint="georeference both rasters, or resample them to the same size",
        )
    try:
        with gdal_messages():
            coverage = reference.coverage_by(grid)
    except Exception as exc:  # PROJ cannot relate the two CRSs (rasterio raises several types)
        raise AlignmentError(
            f"{label} ({crs_label(grid.crs)}) cannot be transformed to the CRS of "
            f"{reference_label} ({crs_label(reference.crs)}): {_crs_error_text(exc)}",
            hint="reproject one raster onto the other's CRS (gdalwarp -t_srs), or check PROJ's "
                 "data (PROJ_DATA)",
        ) from None
    if coverage <= 0:
        with gdal_messages():
            west, south, east, north = transform_bounds(grid.crs, reference.crs, *grid.bounds)
        ref = reference.bounds
        raise AlignmentError(
            f"{label} does not overlap {reference_label}: {label} covers "
            f"({west:.6g}, {south:.6g}, {east:.6g}, {north:.6g}) and {reference_label} "
            f"({ref.left:.6g}, {ref.bottom:.6g}, {ref.right:.6g}, {ref.top:.6g}) in "
            f"{reference.crs.to_string()}",
            hint="check that both rasters show the same place",
        )
    vrt = WarpedVRT(
        dataset,
        crs=reference.crs,
        transform=reference.transform,
        width=reference.width,
        height=reference.height,
        resampling=resampling,
        dtype="float32",
        nodata=float("nan"),
    )
    notes = [
        f"aligned {label} ({_grid_text(grid)}) to {reference_label} ({_grid_text(reference)}) "
        f"with {resampling.name} resampling on the fly"
    ]
    if coverage < 0.999:
        notes.append(f"{label} covers {100 * min(coverage, 1.0):.1f} % of {reference_label}; "
                     "the rest is nodata")
    return _Alignment(vrt, notes, [vrt])


def _crs_error_text(exc: BaseException) -> str:
    """PROJ's reason in one line: its messages embed CRSs as multi-line PROJJSON, which is
    replaced by the CRS's type and name."""
    text = " ".join(str(exc).split()) or type(exc).__name__

    def short(match: re.Match[str]) -> str:
        blob = match.group(0)
        kind = re.search(r'"type": "(\w+)"', blob)
        name = re.search(r'"name": "([^"]*)"', blob)
        return f"{kind.group(1) if kind else 'CRS'} {name.group(1) if name else ''}".strip()

    return re.sub(r"\{.*?\}(?=')|\{.*\}", short, text)[:300]


def crs_label(crs: Any) -> str:
    """A CRS in a few words: ``EPSG:32632``, else its WKT type and name (never a WKT dump)."""
    if crs is None:
        return "no CRS"
    epsg = crs.to_epsg()
    if epsg:
        return f"EPSG:{epsg}"
    match = re.match(r'\s*(\w+)\["([^"]*)"', crs.to_wkt())
    return f'{match.group(1)} "{match.group(2)}"' if match else "a CRS without a code"


def _grid_text(grid: Grid) -> str:
    crs = grid.crs.to_string() if grid.crs else "no CRS"
    rx, ry = grid.resolution
    return f"{crs}, {rx:.6g}x{ry:.6g} px, {grid.width}x{grid.height}"


def _check_geographic(grid: Grid, label: str) -> list[str]:
    if grid.is_geographic:
        console.warn(f"{label} is in a geographic CRS ({grid.crs.to_string() if grid.crs else ''}):"
                     " pixel sizes are in degrees, so patch footprints vary with latitude")
        return [f"{label} is in a geographic CRS (degrees)"]
    return []


def open_scene(
    optical_path: str | os.PathLike[str],
    aux_path: str | os.PathLike[str],
    aux_kind: AuxKind,
) -> Scene:
    """Open an optical raster and an auxiliary raster, aligning the latter to the former's grid."""
    optical_ds = open_raster(optical_path)
    closers: list[Any] = [optical_ds]
    try:
        refuse_complex(optical_ds, optical_path, "the HSI")
        aux_ds = open_raster(aux_path)
        closers.append(aux_ds)
        refuse_complex(aux_ds, aux_path, f"the {aux_kind} raster")
        grid = Grid.of(optical_ds)
        notes = _check_geographic(grid, f"the HSI {Path(optical_path).name}")
        alignment = align_to_grid(aux_ds, grid, label=f"{aux_kind} raster {Path(aux_path).name}")
        for text in alignment.notes:
            console.note(text)
        notes += alignment.notes
        closers += alignment.closers
        optical_idx = tuple(range(1, optical_ds.count + 1))
        aux_idx = tuple(range(1, aux_ds.count + 1))
        optical = Modality("optical", Path(optical_path), optical_idx,
                           _band_names(optical_ds, optical_idx, "optical"),
                           optical_ds.dtypes[0], _nodata(optical_ds),
                           *band_scaling(optical_ds, optical_idx))
        aux = Modality(aux_kind, Path(aux_path), aux_idx, _band_names(aux_ds, aux_idx, aux_kind),
                       aux_ds.dtypes[0], _nodata(aux_ds), *band_scaling(aux_ds, aux_idx))
        return Scene(grid, optical, aux, aux_kind, optical_ds, alignment.source, notes, closers,
                     aux_warped=alignment.source is not aux_ds)
    except BaseException:
        for obj in reversed(closers):
            obj.close()
        raise


def stacked_layout(dataset: Any, aux_bands: int | None = None) -> tuple[int, int, AuxKind | None]:
    """(optical band count, auxiliary band count, aux kind or None) of a stacked raster.

    From the tags ``s2fin stack`` writes, else from ``aux_bands`` (the last N bands).
    """
    tags = dataset.tags()
    if TAG_OPTICAL_BANDS in tags and TAG_AUX_BANDS in tags:
        o_first, o_last = parse_band_range(tags[TAG_OPTICAL_BANDS])
        a_first, a_last = parse_band_range(tags[TAG_AUX_BANDS])
        kind = tags.get(TAG_AUX_KIND)
        if o_first != 1 or a_first != o_last + 1 or a_last != dataset.count:
            raise InputError(f"{dataset.name}: inconsistent s2fin band tags "
                             f"({tags[TAG_OPTICAL_BANDS]}, {tags[TAG_AUX_BANDS]}, "
                             f"{dataset.count} bands)")
        n_aux = a_last - a_first + 1
        if aux_bands is not None and aux_bands != n_aux:
            raise InputError(f"{dataset.name} records {n_aux} auxiliary bands, not {aux_bands}")
        return o_last, n_aux, kind if kind in AUX_KINDS else None
    if aux_bands is None:
        raise InputError(
            f"{dataset.name} is not a stacked scene written by s2fin stack (no band tags)",
            hint="say how many of its last bands are LiDAR/SAR with --aux-bands N, or pass "
                 "--hsi and --lidar/--sar",
        )
    if not 1 <= aux_bands < dataset.count:
        raise InputError(f"--aux-bands {aux_bands} does not fit a raster of {dataset.count} bands")
    return dataset.count - aux_bands, aux_bands, None


def open_stacked_scene(
    path: str | os.PathLike[str],
    *,
    aux_bands: int | None = None,
    aux_kind: AuxKind | None = None,
) -> Scene:
    """Open a stacked raster (optical bands first, then auxiliary bands) as a scene."""
    dataset = open_raster(path)
    try:
        refuse_complex(dataset, path, "the scene")
        n_opt, n_aux, recorded_kind = stacked_layout(dataset, aux_bands)
        kind: AuxKind = aux_kind or recorded_kind or "lidar"
        if aux_kind and recorded_kind and aux_kind != recorded_kind:
            raise InputError(f"{Path(path).name} holds {recorded_kind} bands, not {aux_kind}")
        grid = Grid.of(dataset)
        notes = _check_geographic(grid, f"the scene {Path(path).name}")
        opt_idx = tuple(range(1, n_opt + 1))
        aux_idx = tuple(range(n_opt + 1, n_opt + n_aux + 1))
        optical = Modality("optical", Path(path), opt_idx, _band_names(dataset, opt_idx, "optical"),
                           dataset.dtypes[0], _nodata(dataset), *band_scaling(dataset, opt_idx))
        aux = Modality(kind, Path(path), aux_idx, _band_names(dataset, aux_idx, kind),
                       dataset.dtypes[n_opt], _nodata(dataset), *band_scaling(dataset, aux_idx))
        return Scene(grid, optical, aux, kind, dataset, dataset, notes, [dataset])
    except BaseException:
        dataset.close()
        raise


def open_scene_from_options(
    scene: str | os.PathLike[str] | None,
    hsi: str | os.PathLike[str] | None,
    lidar: str | os.PathLike[str] | None,
    sar: str | os.PathLike[str] | None,
    *,
    aux_bands: int | None = None,
) -> Scene:
    """Resolve the CLI's scene options: a stacked SCENE, or --hsi with --lidar/--sar."""
    from s2fin_cli.errors import ConfigError

    if lidar is not None and sar is not None:
        raise ConfigError("give --lidar or --sar, not both")
    aux = lidar if lidar is not None else sar
    kind: AuxKind = "lidar" if lidar is not None else "sar"
    if scene is not None:
        if hsi is not None or aux is not None:
            raise ConfigError("give a stacked scene or --hsi with --lidar/--sar, not both")
        return open_stacked_scene(scene, aux_bands=aux_bands,
                                  aux_kind=None if aux is None else kind)
    if hsi is None or aux is None:
        raise ConfigError("missing input: give a stacked scene, or --hsi with --lidar or --sar")
    return open_scene(hsi, aux, kind)
