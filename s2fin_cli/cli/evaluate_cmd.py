"""``s2fin evaluate``: accuracy of a class map, or of a model at labelled pixels, against labels.

    s2fin evaluate MAP.tif --labels test.tif                 # a map written by s2fin predict
    s2fin evaluate -m model.s2fin scene.tif --labels test.gpkg --label-field class
    s2fin evaluate -m model.s2fin --hsi hsi.tif --lidar dsm.tif --labels test.tif

Prints a per-class table (support, producer's/user's accuracy, F1; OA, AA, Kappa) and the
confusion matrix, or ``--json``; writes ``--csv PATH`` (metrics) plus ``PATH.confusion.csv``, and
``--figures DIR`` (confusion-matrix heat map; a quick-look of the map in map mode). Every output
is checked before anything is computed and written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from s2fin_cli import console
from s2fin_cli.cli.options import (
    AuxBands,
    Device,
    HsiPath,
    JsonOutput,
    LabelField,
    LidarPath,
    Overwrite,
    SarPath,
    SkipValueCheck,
    Threads,
)
from s2fin_cli.errors import ConfigError, OutputError
from s2fin_cli.evaluation import MAP_READ_BLOCK, MODEL_BATCH_SIZE, Evaluation
from s2fin_cli.io.outputs import check_outputs
from s2fin_cli.io.writer import write_text


def confusion_csv_path(csv_path: Path) -> Path:
    """``metrics.csv`` → ``metrics.confusion.csv`` (any other name gets ``.confusion.csv``)."""
    if csv_path.suffix.lower() == ".csv":
        return csv_path.with_name(csv_path.stem + ".confusion.csv")
    return csv_path.with_name(csv_path.name + ".confusion.csv")


def _planned_outputs(csv: Path | None, figures: Path | None, *, quicklook: bool) -> list[Path]:
    outputs: list[Path] = []
    if csv is not None:
        outputs += [csv, confusion_csv_path(csv)]
    if figures is not None:
        if figures.exists() and not figures.is_dir():
            raise OutputError(f"--figures {figures} is a file, not a directory")
        from s2fin_cli.figures import figure_paths  # no matplotlib import: figures is lazy

        outputs += figure_paths(figures, quicklook=quicklook)
    return outputs


def _check_outputs(outputs: list[Path], inputs: list[Path | None], overwrite: bool) -> None:
    """Refuse, before anything is computed, outputs that exist (without --overwrite) or that are
    any file the command reads (the map, labels, model, scene): :func:`check_outputs`."""
    # A missing --figures directory is created later: nothing in it exists or is read yet.
    check_outputs([p for p in outputs if p.suffix.lower() != ".png" or p.parent.is_dir()],
                  inputs, overwrite=overwrite)


def evaluate(
    labels: Annotated[
        Path,
        typer.Option("--labels", "-l", help="Reference labels: a raster (0 = unlabeled) or "
                     "vectors (GeoJSON, GeoPackage, Shapefile); put on the map's (or scene's) "
                     "grid.", show_default=False),
    ],
    input_path: Annotated[
        Path | None,
        typer.Argument(help="A class map (uint8/uint16, 0 = nodata, as written by s2fin "
                       "predict); with -m, a stacked scene instead.",
                       show_default=False, metavar="MAP_OR_SCENE"),
    ] = None,
    label_field: LabelField = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Assess a model file instead of a map: it classifies "
                     "only the labelled pixels of the scene.",
                     show_default=False),
    ] = None,
    hsi: HsiPath = None,
    lidar: LidarPath = None,
    sar: SarPath = None,
    aux_bands: AuxBands = None,
    exclude_unknown: Annotated[
        bool,
        typer.Option("--exclude-unknown", help="Leave out labelled pixels whose class the "
                     "map/model does not know (with a warning) instead of failing."),
    ] = False,
    csv: Annotated[
        Path | None,
        typer.Option("--csv", help="Write the metrics as CSV here, and the confusion matrix "
                     "beside it (NAME.confusion.csv).", show_default=False),
    ] = None,
    figures: Annotated[
        Path | None,
        typer.Option("--figures", help="Write PNG figures into this directory (created when "
                     "missing): confusion_matrix.png and, for a map, map_quicklook.png.",
                     file_okay=False, show_default=False),
    ] = None,
    overwrite: Overwrite = False,
    json_output: JsonOutput = False,
    device: Device = "auto",
    threads: Threads = None,
    batch_size: Annotated[
        int, typer.Option("--batch-size", min=1, help="Model mode: patches per forward pass.")
    ] = MODEL_BATCH_SIZE,
    block_size: Annotated[
        int, typer.Option("--block-size", min=1, help="Map mode: side of the blocks of map and "
                          "labels read at a time (memory follows it).")
    ] = MAP_READ_BLOCK,
    skip_value_check: SkipValueCheck = False,
) -> None:
    """Accuracy of a class map (or of a model at labelled pixels) against reference labels."""
    model_mode = model is not None
    if not model_mode:
        if input_path is None:
            raise ConfigError("missing input: give a class map, or -m MODEL with a scene")
        for name, value in (("--hsi", hsi), ("--lidar", lidar), ("--sar", sar),
                            ("--aux-bands", aux_bands)):
            if value is not None:
                raise ConfigError(f"{name} applies with -m MODEL (assessing a model on a scene)",
                                  hint="to assess a map, give only the map and --labels")
    outputs = _planned_outputs(csv, figures, quicklook=not model_mode)
    _check_outputs(outputs, [input_path, labels, model, hsi, lidar, sar], overwrite)

    if model_mode:
        assert model is not None
        evaluation = _evaluate_model(model, input_path, hsi, lidar, sar, aux_bands, labels,
                                     label_field, exclude_unknown, device, threads, batch_size,
                                     skip_value_check)
    else:
        assert input_path is not None
        from s2fin_cli.evaluation import evaluate_map

        evaluation = evaluate_map(input_path, labels, label_field=label_field,
                                  exclude_unknown=exclude_unknown, block_size=block_size,
                                  progress=not json_output)
    written = _write_outputs(evaluation, csv, figures, input_path if not model_mode else None,
                             overwrite)
    if json_output:
        data: dict[str, Any] = {**evaluation.to_json(), "outputs": [str(p) for p in written]}
        console.stdout.print_json(json.dumps(data, allow_nan=False))
        return
    report = evaluation.report
    source = Path(evaluation.inputs["map"]).name if not model_mode else Path(str(model)).name
    console.stdout.print(report.table(title=f"Accuracy of {source}"))
    console.stdout.print(report.confusion_table())
    if evaluation.excluded:
        console.note(f"{evaluation.n_excluded} labelled pixel(s) of classes unknown to the "
                     f"{evaluation.mode} were left out")
    for path in written:
        console.note(f"wrote {path}")


def _evaluate_model(model: Path, scene_path: Path | None, hsi: Path | None, lidar: Path | None,
                    sar: Path | None, aux_bands: int | None, labels: Path,
                    label_field: str | None, exclude_unknown: bool, device: str,
                    threads: int | None, batch_size: int, skip_value_check: bool) -> Evaluation:
    from s2fin_cli.device import cpu_threads, select_device
    from s2fin_cli.evaluation import evaluate_model
    from s2fin_cli.io.reader import open_scene_from_options
    from s2fin_cli.model_file import load_model_file

    bundle = load_model_file(model)
    with open_scene_from_options(scene_path, hsi, lidar, sar, aux_bands=aux_bands) as scene:
        bundle.check_scene(scene)
        torch_device = select_device(device)
        with cpu_threads(threads):
            return evaluate_model(bundle, scene, labels, label_field=label_field,
                                  exclude_unknown=exclude_unknown, device=torch_device,
                                  batch_size=batch_size, model_path=model,
                                  skip_value_check=skip_value_check)


def _write_outputs(evaluation: Evaluation, csv: Path | None, figures: Path | None,
                   map_path: Path | None, overwrite: bool) -> list[Path]:
    written: list[Path] = []
    report = evaluation.report
    if csv is not None:
        written.append(write_text(csv, report.to_csv(), overwrite=overwrite))
        written.append(write_text(confusion_csv_path(csv), report.confusion_csv(),
                                  overwrite=overwrite))
    if figures is not None:
        from s2fin_cli.figures import CONFUSION_FIGURE, QUICKLOOK_FIGURE, confusion_figure

        try:
            figures.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the figure directory {figures}: "
                              f"{exc.strerror or exc}") from None
        what = Path(str(evaluation.inputs.get("map") or evaluation.inputs.get("model"))).name
        written.append(confusion_figure(report, figures / CONFUSION_FIGURE,
                                        title=f"Confusion matrix of {what} (row-normalised)",
                                        overwrite=overwrite))
        if map_path is not None:
            from s2fin_cli.figures import map_quicklook

            # A map without a class table is drawn with the classes the assessment found.
            from_tag = "tag" in str(evaluation.inputs.get("classes_from", ""))
            written.append(map_quicklook(map_path, figures / QUICKLOOK_FIGURE,
                                         classes=None if from_tag else report.classes,
                                         overwrite=overwrite))
    return written
