"""PNG figures of an accuracy assessment: a confusion-matrix heat map and a quick-look of a map.

matplotlib is imported inside the functions (the CLI pays for it only with ``--figures``), and
figures are drawn on matplotlib's Agg canvas directly, never through pyplot, so no global backend
is switched and nothing needs a display. Every file is written atomically.

The quick-look reads the map decimated (rasterio ``out_shape``, nearest: GDAL uses the map's
overviews when it has them), so a map of any size costs at most ``max_size`` squared pixels.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from s2fin_cli.classes import ClassInfo, ClassTable, default_color
from s2fin_cli.io.writer import atomic_output
from s2fin_cli.metrics import NO_PREDICTION, AccuracyReport

__all__ = [
    "CONFUSION_FIGURE",
    "QUICKLOOK_FIGURE",
    "confusion_figure",
    "figure_paths",
    "map_quicklook",
    "read_decimated",
]

CONFUSION_FIGURE = "confusion_matrix.png"
QUICKLOOK_FIGURE = "map_quicklook.png"
ANNOTATE_MAX_CLASSES = 25  # counts are written in the cells up to this many classes
_DPI = 150
_NAME_CHARS = 28
_UNKNOWN_RGBA = (0.55, 0.55, 0.55, 1.0)  # map values outside the class table


def figure_paths(directory: str | os.PathLike[str], *, quicklook: bool) -> list[Path]:
    """The files ``--figures DIR`` writes (the quick-look only when there is a map)."""
    d = Path(directory)
    return [d / CONFUSION_FIGURE, *([d / QUICKLOOK_FIGURE] if quicklook else [])]


def _short(text: str, limit: int = _NAME_CHARS) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: str | os.PathLike[str], overwrite: bool) -> Path:
    final = Path(path)
    with atomic_output(final, overwrite=overwrite) as tmp:
        # bbox_inches="tight": constrained layout alone clipped the y label beside a wide legend.
        fig.savefig(tmp, format="png", dpi=_DPI, facecolor="white", bbox_inches="tight")
    return final


def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f} %"


def confusion_figure(
    report: AccuracyReport,
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A row-normalised confusion-matrix heat map (rows: reference), counts in the cells.

    Cell colour = share of the reference class's labelled pixels; cells show counts when there
    are at most :data:`ANNOTATE_MAX_CLASSES` classes. A "no prediction" column appears when some
    labelled pixels had none. Classes absent from the reference have an empty (hatched) row.
    """
    from matplotlib.colors import Normalize

    k = len(report.classes)
    show_unpredicted = report.n_unpredicted > 0
    counts = report.matrix if show_unpredicted else report.matrix[:, :k]
    support = report.support.astype(np.float64)
    shares = np.full(counts.shape, np.nan)
    np.divide(counts, support[:, None], out=shares, where=support[:, None] > 0)
    names = [_short(f"{c.id} {c.name}") for c in report.classes]
    columns = names + ([NO_PREDICTION] if show_unpredicted else [])

    side = min(22.0, max(4.5, 1.6 + 0.42 * len(columns)))
    fig = _new_figure(side + 1.6, side)
    ax = fig.add_subplot()
    ax.set_facecolor("#eeeeee")  # NaN rows (no reference pixels) show the background
    ax.patch.set_hatch("//")
    ax.patch.set_edgecolor("#cccccc")
    image = ax.imshow(np.ma.masked_invalid(shares), cmap="Blues", norm=Normalize(0.0, 1.0),
                      interpolation="nearest", aspect="equal")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
    colorbar.set_label("share of the reference class")
    ax.set_xticks(range(len(columns)), labels=columns, rotation=45, ha="right",
                  rotation_mode="anchor")
    ax.set_yticks(range(k), labels=names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    if show_unpredicted:
        ax.axvline(k - 0.5, color="#444444", linewidth=1.0)
    if k <= ANNOTATE_MAX_CLASSES:
        size = max(5.0, min(9.0, 120.0 / max(len(columns), 1)))
        for (i, j), n in np.ndenumerate(counts):
            if n == 0:
                continue
            share = shares[i, j]
            color = "white" if not math.isnan(share) and share > 0.55 else "#222222"
            ax.text(j, i, str(int(n)), ha="center", va="center", fontsize=size, color=color)
    summary = (f"OA {_pct(report.overall_accuracy)}   AA {_pct(report.average_accuracy)}   "
               f"Kappa {'–' if math.isnan(report.kappa) else f'{report.kappa:.3f}'}   "
               f"{report.n_samples} labelled px")
    ax.set_title(f"{title or 'Confusion matrix (row-normalised)'}\n{summary}", fontsize=10)
    return _save(fig, path, overwrite)


def read_decimated(dataset: Any, max_size: int) -> np.ndarray:
    """Band 1 of ``dataset`` read at most ``max_size`` pixels on a side (nearest, decimated)."""
    from rasterio.enums import Resampling

    if max_size < 1:
        raise ValueError("max_size must be positive")
    factor = max(1, math.ceil(max(dataset.width, dataset.height) / max_size))
    shape = (max(1, math.ceil(dataset.height / factor)), max(1, math.ceil(dataset.width / factor)))
    data: np.ndarray = dataset.read(1, out_shape=shape, resampling=Resampling.nearest)
    return data


def _crs_units(dataset: Any) -> str:
    crs = dataset.crs
    if not crs:
        return "pixels"
    name = crs.to_string()
    unit = "degrees" if crs.is_geographic else (crs.linear_units or "units")
    return f"{name}, {unit}"


def map_quicklook(
    map_path: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    classes: ClassTable | None = None,
    max_size: int = 1024,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A quick-look PNG of a class map with a legend of class colours and names.

    Colours come from ``classes`` or the map's class table (``S2FIN_CLASSES`` tag), else the
    default palette. Nodata (0 or the map's nodata value) is transparent (white in the PNG);
    values outside the table are grey.
    """
    from matplotlib.patches import Patch

    from s2fin_cli.evaluation import map_class_table
    from s2fin_cli.io.reader import open_raster

    source = Path(map_path)
    with open_raster(source) as dataset:
        tagged = map_class_table(dataset) if classes is None else None
        table = classes or tagged
        data = read_decimated(dataset, max_size).astype(np.int64)
        nodata = dataset.nodata
        bounds = dataset.bounds
        units = _crs_units(dataset)
        georeferenced = bool(dataset.crs)
        full = (dataset.width, dataset.height)
    if nodata is not None and np.isfinite(nodata) and nodata != 0:
        data[data == int(nodata)] = 0
    data[data < 0] = 0
    if tagged is None:
        # No class table of the map's own: every id shown is a class (named "class N" when the
        # given table does not know it), so nothing is flagged as outside the table.
        known = {c.id: c for c in table} if table is not None else {}
        present = {int(v) for v in np.unique(data) if v > 0}
        extra = tuple(ClassInfo(i, f"class {i}", default_color(i)) for i in present - set(known))
        table = ClassTable(tuple(known.values()) + extra)
    assert table is not None
    size = max(int(data.max(initial=0)), table.max_id) + 1
    lut = np.tile(np.asarray(_UNKNOWN_RGBA), (size, 1))
    lut[0] = (1.0, 1.0, 1.0, 0.0)
    for c in table:
        lut[c.id] = (*(v / 255 for v in c.color), 1.0)
    rgba = lut[data]
    height, width = data.shape
    aspect = height / width
    map_w = 7.5 if aspect <= 1 else max(3.0, 7.5 / aspect)
    map_h = max(2.0, min(10.0, map_w * aspect))
    legend_cols = 1 if len(table) <= 18 else 2
    fig = _new_figure(map_w + 2.2 * legend_cols + 0.6, map_h + 0.9)
    ax = fig.add_subplot()
    if georeferenced:
        extent = (bounds.left, bounds.right, bounds.bottom, bounds.top)
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        ax.set_xlabel(f"x ({units})", fontsize=8)
        ax.set_ylabel(f"y ({units})", fontsize=8)
        ax.ticklabel_format(useOffset=False, style="plain")
        ax.tick_params(labelsize=7)
    else:
        ax.imshow(rgba, extent=(0, full[0], full[1], 0), interpolation="nearest")
        ax.set_xlabel("column", fontsize=8)
        ax.set_ylabel("row", fontsize=8)
    counts = np.bincount(data.ravel(), minlength=size)
    handles = [Patch(facecolor=(c.color[0] / 255, c.color[1] / 255, c.color[2] / 255),
                     edgecolor="#555555",
                     label=_short(f"{c.id} {c.name}")) for c in table]
    shown = {c.id for c in table}
    if any(counts[i] for i in range(1, size) if i not in shown):
        handles.append(Patch(facecolor=_UNKNOWN_RGBA, edgecolor="#555555",
                             label="not in the class table"))
    if counts[0]:
        handles.append(Patch(facecolor="white", edgecolor="#555555", label="nodata"))
    if handles:
        fig.legend(handles=handles, loc="outside right center", ncols=legend_cols, fontsize=8,
                   frameon=False, title="classes", title_fontsize=9)
    scale = full[0] / width
    note = f"{full[0]}x{full[1]} px" + (f", shown 1:{scale:.3g}" if scale > 1 else "")
    ax.set_title(f"{title or source.name}\n{note}", fontsize=10)
    return _save(fig, path, overwrite)
