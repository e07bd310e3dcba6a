"""``s2fin inspect``: what rasters, vector labels and model files hold, and whether they align."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from s2fin_cli import console
from s2fin_cli.cli.options import JsonOutput
from s2fin_cli.inspection import alignment, describe_path, grid_of


def inspect(
    paths: Annotated[list[Path], typer.Argument(help="Rasters, vector labels or model files.")],
    json_output: JsonOutput = False,
) -> None:
    """Show grid, CRS, bands, dtype and nodata of each input, and how several inputs align."""
    infos = [describe_path(p) for p in paths]
    rasters = [(p, info) for p, info in zip(paths, infos, strict=True)
               if info["kind"] == "raster"]
    aligns: list[dict[str, Any]] = []
    if len(rasters) > 1:
        ref_path, ref_info = rasters[0]
        ref_grid = grid_of(ref_info)
        assert ref_grid is not None
        for p, info in rasters[1:]:
            other = grid_of(info)
            assert other is not None
            aligns.append({"reference": str(ref_path), "path": str(p),
                           **alignment(ref_grid, other)})
    if json_output:
        console.stdout.print_json(json.dumps({"inputs": infos, "alignment": aligns}))
        return
    for info in infos:
        console.stdout.print(_table(info))
        if info["kind"] == "model":
            console.stdout.print(_parameter_table(info))
    if aligns:
        table = Table(title="Alignment to the first raster (the reference grid)")
        for col in ("raster", "status", "coverage"):
            table.add_column(col)
        for a in aligns:
            cov = f"{100 * a['coverage']:.1f} %" if "coverage" in a else ""
            style = None if a["ok"] else "red"
            table.add_row(Path(a["path"]).name, a["status"], cov, style=style)
        console.stdout.print(table)


def _parameter_table(info: dict[str, Any]) -> Table:
    table = Table(title="Parameters per module")
    table.add_column("module")
    table.add_column("parameters", justify="right")
    for row in info["parameters"]:
        style = "bold" if row["module"] == "total" else None
        table.add_row(row["module"], f"{row['parameters']:,}", style=style)
    return table


def _table(info: dict[str, Any]) -> Table:
    table = Table(title=f"{info['path']} ({info['kind']})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    if info["kind"] == "raster":
        g = info["grid"]
        table.add_row("size", f"{g['width']} x {g['height']} px, {info['bands']} bands")
        table.add_row("CRS", g["crs"] or "none")
        rotation = g.get("rotation_deg") or 0.0
        table.add_row("pixel size", f"{g['resolution'][0]:.6g} x {g['resolution'][1]:.6g}"
                      + (f" (grid rotated {rotation:.6g}°)" if rotation else ""))
        if g.get("gcps"):
            table.add_row("georeferencing", f"{g['gcps']} ground control points in "
                          f"{g.get('gcp_crs') or 'no CRS'} (no map grid)")
        table.add_row("bounds", ", ".join(f"{v:.6g}" for v in g["bounds"]))
        table.add_row("dtype", ", ".join(info["dtypes"]))
        table.add_row("nodata", str(info["nodata"]))
        table.add_row("driver", f"{info['driver']}, blocks {info['block_shapes']}, "
                      f"compression {info['compression']}")
        descs = [d for d in info["band_descriptions"] if d]
        if descs:
            shown = ", ".join(descs[:3]) + (f", ... {descs[-1]}" if len(descs) > 3 else "")
            table.add_row("bands", shown)
        if "stacked" in info:
            s = info["stacked"]
            table.add_row("stacked scene", f"optical bands {s['optical_bands']}, "
                          f"{s['aux_kind']} bands {s['aux_bands']}")
    elif info["kind"] == "vector":
        table.add_row("features", str(info["features"]))
        table.add_row("CRS", info["crs"] or "none")
        table.add_row("fields", ", ".join(info["fields"]) or "none")
        table.add_row("geometries", ", ".join(info["geometry_types"]))
    else:
        for key, value in info.get("summary", {}).items():
            table.add_row(key, str(value))
    for w in info.get("warnings", []):
        table.add_row("warning", w, style="yellow")
    return table
