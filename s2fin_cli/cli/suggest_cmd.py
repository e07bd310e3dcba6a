"""``s2fin suggest``: the pixels an analyst should label next, as a styled GeoPackage.

The command parses options and renders results; candidates, scores, selection and the file
are :mod:`s2fin_cli.suggestion`'s (and :mod:`s2fin_cli.io.suggestions`').
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from s2fin_cli import console
from s2fin_cli.acquisition import ACQUISITIONS, DEFAULT_POOL_FACTOR
from s2fin_cli.cli.helpers import model_path_or_default
from s2fin_cli.cli.options import (
    AuxBands,
    BlockSize,
    Device,
    HsiPath,
    InferenceBatchSize,
    JsonOutput,
    LabelField,
    LidarPath,
    ModelPath,
    Overwrite,
    SarPath,
    Seed,
    SkipValueCheck,
    Threads,
)
from s2fin_cli.errors import ConfigError
from s2fin_cli.inference import PREDICT_BLOCK_SIZE
from s2fin_cli.suggestion import DEFAULT_MAX_CANDIDATES, SuggestRequest, run_suggest


def suggest(
    scene: Annotated[
        Path | None,
        typer.Argument(help="Stacked scene (as for predict), or give --hsi with --lidar/--sar.",
                       show_default=False, metavar="SCENE"),
    ] = None,
    model: ModelPath = None,
    n: Annotated[int, typer.Option("-n", "--count", help="How many pixels to suggest.")] = 50,
    output: Annotated[
        str,
        typer.Option("--output", "-o", help="The GeoPackage of suggested points (styled for "
                     "QGIS; fill in its 'label' field)."),
    ] = "next.gpkg",
    labels: Annotated[
        list[Path] | None,
        typer.Option("--labels", help="Pixels already labelled (raster or vectors; repeatable): "
                     "never suggested, nor any pixel inside their patches."),
    ] = None,
    label_field: LabelField = None,
    hsi: HsiPath = None,
    lidar: LidarPath = None,
    sar: SarPath = None,
    aux_bands: AuxBands = None,
    csv: Annotated[
        str | None,
        typer.Option("--csv", help="Also write the suggestions as a CSV table (with x, y)."),
    ] = None,
    acquisition: Annotated[
        str,
        typer.Option("--acquisition", help="Uncertainty: margin (1 - (p1 - p2)) or entropy "
                     "(normalised) of the class probabilities."),
    ] = ACQUISITIONS[0],
    max_candidates: Annotated[
        int,
        typer.Option("--max-candidates", help="Score at most this many pixels: a seeded "
                     "uniform sample of the eligible ones (bounds the cost on large scenes)."),
    ] = DEFAULT_MAX_CANDIDATES,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    device: Device = "auto",
    threads: Threads = None,
    batch_size: InferenceBatchSize = None,
    block_size: BlockSize = PREDICT_BLOCK_SIZE,
    skip_value_check: SkipValueCheck = False,
    json_output: JsonOutput = False,
) -> None:
    """Suggest the pixels to label next: uncertain, none inside another's patch, spread over
    the predicted classes and the network's features."""
    if acquisition not in ACQUISITIONS:
        raise ConfigError(f"--acquisition {acquisition!r} is not one of "
                          f"{', '.join(ACQUISITIONS)}")
    model_path = model_path_or_default(model)
    request = SuggestRequest(
        output=output, n=n, model=model_path, scene=scene, hsi=hsi, lidar=lidar, sar=sar,
        aux_bands=aux_bands, labels=tuple(labels or ()), label_field=label_field, csv=csv,
        acquisition=acquisition,  # narrowed to the Literal by the check above
        max_candidates=max_candidates, pool_factor=DEFAULT_POOL_FACTOR, seed=seed,
        overwrite=overwrite, device=device, threads=threads, batch_size=batch_size,
        block_size=block_size, skip_value_check=skip_value_check)
    report = run_suggest(request)
    if json_output:
        console.stdout.print_json(json.dumps(report))
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['input']} → {report['output']}")
    for col, justify in (("rank", "right"), ("row", "right"), ("col", "right"),
                         ("predicted", "left"), ("or", "left"), ("confidence", "right"),
                         ("score", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    shown = report["suggestions"][:20]
    for s in shown:
        table.add_row(str(s["rank"]), str(s["row"]), str(s["col"]), s["pred_name"],
                      s["second_name"], f"{s['confidence']:.3f}", f"{s['score']:.3f}")
    spread = ", ".join(f"{c['name']} {c['suggested']}" for c in report["classes"]
                       if c["suggested"])
    more = len(report["suggestions"]) - len(shown)
    table.caption = ((f"... and {more} more; " if more > 0 else "")
                     + f"{report['suggested']} suggested ({spread}); "
                     f"{report['scored_pixels']:,} of {report['eligible_pixels']:,} eligible "
                     f"pixels scored ({report['acquisition']}), {report['seconds']:.1f} s")
    console.stdout.print(table)
    console.note(f"wrote {report['output']}" + (f" and {report['csv']}" if report["csv"] else "")
                 + ": open it in QGIS, fill in 'label', then train with --labels "
                 f"{report['output']}")
