"""Stacked scenes: the optical bands, then the auxiliary bands, in one GeoTIFF or VRT.

Tags record which bands belong to which modality, so a stacked scene is a complete input to
``train`` and ``predict``. A GeoTIFF stack is written block by block from the aligned scene
(memory follows the block); a VRT stack references the source files and needs co-registered
inputs, since a plain VRT cannot express the on-the-fly reprojection.
"""

from __future__ import annotations

import os
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

from s2fin_cli.errors import AlignmentError, OutputError
from s2fin_cli.io.gdal import close_and_verify
from s2fin_cli.io.reader import (
    TAG_AUX_BANDS,
    TAG_AUX_KIND,
    TAG_MODALITY,
    TAG_OPTICAL_BANDS,
    Scene,
    format_band_ranges,
)
from s2fin_cli.io.windows import iter_blocks
from s2fin_cli.io.writer import atomic_output, geotiff_profile, open_for_writing, write_text

STACK_BLOCK = 512


def band_tags(optical: int, aux: int, aux_kind: str) -> dict[str, str]:
    """The tags of a stacked raster: bands 1..optical are optical, the next ``aux`` bands are
    LiDAR or SAR (``aux_kind``)."""
    return {
        TAG_OPTICAL_BANDS: format_band_ranges(1, optical),
        TAG_AUX_BANDS: format_band_ranges(optical + 1, optical + aux),
        TAG_AUX_KIND: aux_kind,
    }


def stack_tags(scene: Scene) -> dict[str, str]:
    return band_tags(scene.optical.count, scene.aux.count, scene.aux_kind)


def _stack_dtype_and_nodata(scene: Scene) -> tuple[str, float | None]:
    """One dtype for all bands: integers only when both sides share dtype and nodata and hold
    raw values (no GDAL scale/offset: the stack holds the physical values read)."""
    o, a = scene.optical, scene.aux
    if (o.dtype == a.dtype and np.dtype(o.dtype).kind in "iu" and o.nodata == a.nodata
            and not scene.aux_warped and not o.scaled and not a.scaled):
        return o.dtype, o.nodata
    dtype = np.result_type(o.dtype, a.dtype, np.float32)
    return str(dtype), float("nan")


def write_stack_geotiff(scene: Scene, path: str | os.PathLike[str], *, overwrite: bool = False,
                        creation_options: dict[str, str] | None = None) -> Path:
    dtype, nodata = _stack_dtype_and_nodata(scene)
    n_opt, n_aux = scene.optical.count, scene.aux.count
    profile = geotiff_profile(scene.grid, count=n_opt + n_aux, dtype=dtype, nodata=nodata,
                              creation_options=creation_options)
    names = [f"optical: {n}" for n in scene.optical.band_names] + [
        f"{scene.aux_kind}: {n}" for n in scene.aux.band_names]
    final = Path(path)
    with atomic_output(final, overwrite=overwrite) as tmp:
        dst = open_for_writing(tmp, profile, creation_options)
        try:
            for window in iter_blocks(scene.grid.height, scene.grid.width, STACK_BLOCK):
                block = scene.read(window)
                data = np.concatenate([block.optical, block.aux])
                if np.dtype(dtype).kind in "iu":
                    # Without a nodata value a masked read returns no NaN; 0 is never used.
                    fill = nodata if nodata is not None else 0
                    data = np.where(np.isfinite(data), data, fill)
                dst.write(data.astype(dtype, copy=False), window=window)
            for i, name in enumerate(names, start=1):
                dst.set_band_description(i, name)
                dst.update_tags(i, **{TAG_MODALITY: "optical" if i <= n_opt else scene.aux_kind})
            dst.update_tags(**stack_tags(scene))
        except BaseException:
            dst.close()
            raise
        close_and_verify(dst, tmp)
    return final


def write_stack_vrt(scene: Scene, path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    if scene.aux_warped:
        raise AlignmentError(
            "a VRT stack needs the auxiliary raster on exactly the HSI grid",
            hint="write a GeoTIFF stack (-o scene.tif), which resamples on the fly",
        )
    final = Path(path)
    gt = scene.grid.transform
    crs_xml = (f"  <SRS>{escape(scene.grid.crs.to_wkt())}</SRS>\n"
               if scene.grid.crs is not None else "")
    georef = (f"  <GeoTransform>{gt.c!r}, {gt.a!r}, {gt.b!r}, {gt.f!r}, {gt.d!r}, {gt.e!r}"
              f"</GeoTransform>\n")
    if scene.grid.gcps:  # georeferenced by ground control points: carry them, not a transform
        projection = scene.grid.gcp_crs.to_wkt() if scene.grid.gcp_crs is not None else ""
        points = "".join(f'    <GCP Id="{escape(str(g.id or i))}" Pixel="{g.col!r}" '
                         f'Line="{g.row!r}" X="{g.x!r}" Y="{g.y!r}" Z="{(g.z or 0.0)!r}"/>\n'
                         for i, g in enumerate(scene.grid.gcps, start=1))
        georef = (f'  <GCPList Projection="{escape(projection, {chr(34): "&quot;"})}">\n'
                  f"{points}  </GCPList>\n")
    meta = "".join(f'    <MDI key="{k}">{escape(v)}</MDI>\n' for k, v in stack_tags(scene).items())
    bands = []
    band_no = 0
    for modality in (scene.optical, scene.aux):
        src = os.path.relpath(modality.path.resolve(), final.resolve().parent)
        vrt_type = _vrt_type(modality.dtype)
        kind = "optical" if modality is scene.optical else scene.aux_kind
        for j, (src_index, name) in enumerate(zip(modality.band_indexes, modality.band_names,
                                                  strict=True)):
            band_no += 1
            nodata = (f"    <NoDataValue>{modality.nodata!r}</NoDataValue>\n"
                      if modality.nodata is not None else "")
            # The sources' raw values are referenced, so their scale/offset go with them.
            scaling = (f"    <Offset>{modality.offsets[j]!r}</Offset>\n"
                       f"    <Scale>{modality.scales[j]!r}</Scale>\n" if modality.scaled else "")
            bands.append(
                f'  <VRTRasterBand dataType="{vrt_type}" band="{band_no}">\n'
                f"    <Description>{escape(f'{kind}: {name}')}</Description>\n"
                f'    <Metadata><MDI key="{TAG_MODALITY}">{kind}</MDI></Metadata>\n'
                f"{nodata}"
                f"{scaling}"
                f"    <SimpleSource>\n"
                f'      <SourceFilename relativeToVRT="1">{escape(src)}</SourceFilename>\n'
                f"      <SourceBand>{src_index}</SourceBand>\n"
                f"    </SimpleSource>\n"
                f"  </VRTRasterBand>\n"
            )
    text = (
        f'<VRTDataset rasterXSize="{scene.grid.width}" rasterYSize="{scene.grid.height}">\n'
        f"{crs_xml}"
        f"{georef}"
        f"  <Metadata>\n{meta}  </Metadata>\n"
        + "".join(bands)
        + "</VRTDataset>\n"
    )
    return write_text(final, text, overwrite=overwrite)


def _vrt_type(dtype: str) -> str:
    mapping = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32", "float64": "Float64"}
    if dtype not in mapping:
        raise OutputError(f"cannot reference {dtype} bands from a VRT stack; write a GeoTIFF")
    return mapping[dtype]


def stack_driver(path: str | os.PathLike[str]) -> str:
    """The driver a stack named ``path`` is written with: VRT for .vrt, GTiff for .tif/.tiff."""
    suffix = Path(os.fspath(path)).suffix.lower()
    if suffix == ".vrt":
        return "VRT"
    if suffix in (".tif", ".tiff"):
        return "GTiff"
    raise OutputError(f"cannot tell the format of {Path(os.fspath(path)).name}",
                      hint="name the output .tif (GeoTIFF) or .vrt")


def write_stack(scene: Scene, path: str | os.PathLike[str], *, overwrite: bool = False,
                creation_options: dict[str, str] | None = None) -> Path:
    suffix = Path(path).suffix.lower()
    if suffix == ".vrt":
        if creation_options:
            raise OutputError("--co applies to GeoTIFF stacks, not VRT")
        return write_stack_vrt(scene, path, overwrite=overwrite)
    if suffix in (".tif", ".tiff"):
        return write_stack_geotiff(scene, path, overwrite=overwrite,
                                   creation_options=creation_options)
    raise OutputError(f"cannot tell the format of {Path(path).name}",
                      hint="name the output .tif (GeoTIFF) or .vrt")
