"""``s2fin train``: limited-label training of S²Fin into one self-describing model file."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from s2fin_cli import console
from s2fin_cli.acceleration import available_cpus
from s2fin_cli.cli.options import (
    AuxBands,
    Device,
    HsiPath,
    JsonOutput,
    LabelField,
    LidarPath,
    Overwrite,
    SarPath,
    Seed,
    Threads,
)
from s2fin_cli.distributed import launch_env, process_group, rank_device
from s2fin_cli.errors import EXIT_INTERRUPTED, ConfigError
from s2fin_cli.model_file import DEFAULT_MODEL_PATH
from s2fin_cli.sampling import AUTO_VAL_MIN_PER_CLASS, DEFAULT_SPLIT_BLOCK, DEFAULT_VAL_FRACTION
from s2fin_cli.training import (
    NetworkOptions,
    TrainingStopped,
    TrainRequest,
    TrainSettings,
    TrainSummary,
    check_request,
    checkpoint_path_for,
    parse_ablate,
    parse_stem_norm,
    run_training,
)

_D = TrainSettings()
_N = NetworkOptions()


def train(
    ctx: typer.Context,
    labels: Annotated[
        list[Path],
        typer.Option("--labels", help="Training labels: a class raster (0 = unlabeled) or "
                     "vectors (GeoJSON/Shapefile/GeoPackage). Repeat it to merge several files "
                     "(e.g. the labels and the points labelled after s2fin suggest); a pixel "
                     "with two different classes is refused."),
    ],
    scene: Annotated[
        Path | None,
        typer.Argument(help="Stacked scene (optical bands, then LiDAR/SAR bands), e.g. written "
                       "by s2fin stack. Or give --hsi with --lidar/--sar."),
    ] = None,
    hsi: HsiPath = None,
    lidar: LidarPath = None,
    sar: SarPath = None,
    aux_bands: AuxBands = None,
    label_field: LabelField = None,
    test_labels: Annotated[
        Path | None,
        typer.Option("--test-labels", help="Disjoint test labels: scored with the selected "
                     "model (never used to select it); report in <output>.report.json."),
    ] = None,
    output: Annotated[
        # A str keeps a trailing '/' (a directory, refused as a model file name).
        str, typer.Option("--output", "-o", help="The model file to write.")
    ] = str(DEFAULT_MODEL_PATH),
    overwrite: Overwrite = False,
    per_class: Annotated[
        int | None,
        typer.Option("--per-class", help="Limited-label protocol: N labelled pixels per class "
                     "(seeded); train and validation are split from them."),
    ] = None,
    train_fraction: Annotated[
        float | None,
        typer.Option("--train-fraction", help="Use this fraction of each class's labelled "
                     "pixels (seeded)."),
    ] = None,
    val_fraction: Annotated[
        float | None,
        typer.Option("--val-fraction", help="Share of the labels held out for validation "
                     "and early stopping (spatially blocked; 0 = none, keep the last epoch). "
                     f"Default: {DEFAULT_VAL_FRACTION:g} when every class has at least "
                     f"{AUTO_VAL_MIN_PER_CLASS} labelled pixels, else none (every label "
                     "trains for a fixed schedule)."),
    ] = None,
    split_block: Annotated[
        int, typer.Option("--split-block", help="Cell size in pixels of the blocked "
                          "train/validation split.")
    ] = DEFAULT_SPLIT_BLOCK,
    epochs: Annotated[int, typer.Option("--epochs", help="Maximum epochs.")] = _D.epochs,
    batch_size: Annotated[int, typer.Option("--batch-size")] = _D.batch_size,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate (linear warm-up, "
                                      "then cosine decay).")] = _D.lr,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = _D.weight_decay,
    warmup_epochs: Annotated[int, typer.Option("--warmup-epochs")] = _D.warmup_epochs,
    patience: Annotated[
        int, typer.Option("--patience", help="Stop after this many epochs without validation "
                          "improvement.")
    ] = _D.patience,
    min_steps: Annotated[
        int | None, typer.Option("--min-steps", help="At least this many optimiser steps, "
                                 "however few the labels (the run lasts max(--epochs, steps / "
                                 "batches per epoch) epochs); 0: --epochs only. Default: "
                                 f"{TrainSettings.STEPS_PER_CLASS} per class.",
                                 show_default=False)
    ] = _D.min_steps,
    semi: Annotated[
        bool, typer.Option("--semi/--no-semi", help="Self-training: after the fit, label the "
                           "unlabelled pixels the network is most sure of (at most "
                           f"{TrainSettings.SEMI_RATIO:g} x the labels of each class) and train "
                           "a second network on labels and pseudo-labels (about twice the "
                           "training time).")
    ] = _D.self_training > 0,
    ema: Annotated[
        float, typer.Option("--ema", help="Decay of an exponential moving average of the "
                            "weights, which is validated and written (0 = off).")
    ] = _D.ema,
    consistency: Annotated[
        float, typer.Option("--consistency", help="Weight of consistency training on the "
                            "scene's unlabelled pixels (0 = off): every step also teaches "
                            "strongly augmented unlabelled patches the class a weight average "
                            "of the network confidently gives a lightly augmented view (about "
                            "1.75x the training time of --consistency 0).")
    ] = _D.consistency,
    consistency_threshold: Annotated[
        float, typer.Option("--consistency-threshold", help="How sure the network must be "
                            "of an unlabelled patch's class for it to train, as a fraction "
                            "(0..1) of the way from chance to its most confident output "
                            f"({_D.consistency_threshold:g}: a probability of "
                            f"{_D.confidence_cut(11):.2f} with 11 classes, "
                            f"{_D.confidence_cut(2):.2f} with 2); with class thresholds, that "
                            "of the class it gives most often.")
    ] = _D.consistency_threshold,
    class_thresholds: Annotated[
        bool, typer.Option("--class-thresholds/--one-threshold", help="Consistency training: "
                           "lower the threshold of the classes the network gives unlabelled "
                           "pixels less often with confidence (FlexMatch), or one threshold "
                           "for every class.")
    ] = _D.consistency_adaptive,
    seed: Seed = _D.seed,
    device: Device = "auto",
    threads: Threads = None,
    patch_size: Annotated[
        int, typer.Option("--patch-size", help="Spatial patch side, odd, 7..15.")
    ] = _N.patch_size,
    spectral_window: Annotated[
        int, typer.Option("--spectral-window", help="Side of the spectral patch (odd, <= "
                          "patch size).")
    ] = _N.spectral_window,
    pca: Annotated[
        int, typer.Option("--pca", help="PCA components of the spatial optical patch (capped "
                          "at the band count).")
    ] = _N.pca,
    dim: Annotated[int, typer.Option("--dim", help="Feature width of the network.")
                   ] = _N.dim,
    depth: Annotated[
        int, typer.Option("--depth", help="Blocks per stage (HFSET, spatial, long-range).")
    ] = _N.depth,
    dropout: Annotated[
        float, typer.Option("--dropout", help="Dropout rate of the network (0 for none).")
    ] = _N.dropout,
    height_window: Annotated[
        int, typer.Option("--height-window", help="With LiDAR: the network sees the height "
                          "above ground instead of the DSM (first LiDAR band): the DSM minus "
                          "its morphological opening over this window (odd, pixels, wider than "
                          "the widest building; 0 = off: the DSM itself).")
    ] = _N.height_window,
    sar_window: Annotated[
        int, typer.Option("--sar-window", help="With SAR: add the local mean of every SAR band "
                          "over this window (odd, pixels; 0 = off) as inputs.")
    ] = _N.sar_window,
    stem_norm: Annotated[
        str | None,
        typer.Option("--stem-norm", help="Normalisation in the stems of the optical and "
                     "active branches: group (per patch), batch or none; 'OPTICAL,ACTIVE' sets "
                     f"them apart. Default: {_N.optical_stem_norm},{_N.active_stem_norm}."),
    ] = None,
    ablate: Annotated[
        str | None,
        typer.Option("--ablate", help="Switch modules off, comma separated: hfset, afcm, ssaf, "
                     "hfrm, long_range."),
    ] = None,
    no_augment: Annotated[
        bool, typer.Option("--no-augment", help="No random flips/rotations.")
    ] = False,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from <output>.ckpt (written after every "
                           "epoch) to the same result as an uninterrupted run.")
    ] = False,
    keep_checkpoint: Annotated[
        bool, typer.Option("--keep-checkpoint", help="Keep <output>.ckpt after success.")
    ] = False,
    stop_after_epoch: Annotated[
        int | None, typer.Option("--stop-after-epoch", hidden=True,
                                 help="Stop as if killed after this epoch (testing).")
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option("--nproc", help="Train data parallel on N local processes (GPUs, or CPU "
                     "processes): runs torchrun --standalone --nproc-per-node N with the same "
                     "arguments. --batch-size is per process (effective batch = N x it). See "
                     "docs/distributed.md for multi-node."),
    ] = None,
    json_output: JsonOutput = False,
) -> None:
    """Train S²Fin on labelled pixels of a scene and write one self-describing model file.

    Under torchrun (RANK/WORLD_SIZE/LOCAL_RANK set) it trains data parallel (DDP): rank 0
    writes the files, the other ranks are quiet.
    """
    settings = dataclasses.replace(
        _D, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
        warmup_epochs=warmup_epochs, patience=patience, seed=seed, augment=not no_augment,
        min_steps=min_steps, ema=ema, consistency=consistency,
        consistency_threshold=consistency_threshold, consistency_adaptive=class_thresholds,
        self_training=(_D.self_training or TrainSettings.SEMI_RATIO) if semi else 0.0)
    optical_norm, active_norm = parse_stem_norm(stem_norm)
    request = TrainRequest(
        labels=tuple(labels), scene=scene, hsi=hsi, lidar=lidar, sar=sar, aux_bands=aux_bands,
        label_field=label_field, test_labels=test_labels, output=output, overwrite=overwrite,
        per_class=per_class, train_fraction=train_fraction, val_fraction=val_fraction,
        split_block=split_block,
        network=dataclasses.replace(
            _N, patch_size=patch_size, spectral_window=spectral_window, pca=pca, dim=dim,
            depth=depth, dropout=dropout, ablate=parse_ablate(ablate),
            height_window=height_window, sar_window=sar_window, optical_stem_norm=optical_norm,
            active_stem_norm=active_norm),
        settings=settings,
        device=device, threads=threads, resume=resume, keep_checkpoint=keep_checkpoint,
        json_lines=json_output, stop_after=stop_after_epoch,
    )
    env = launch_env()
    if nproc is not None:
        if env is not None:
            raise ConfigError("--nproc launches torchrun itself: drop it when running under "
                              "torchrun")
        if nproc < 1:
            raise ConfigError(f"--nproc must be >= 1, got {nproc}")
        if nproc > 1:
            check_request(request)  # option errors with their own exit codes, before launching
            rank_device(device, nproc - 1)  # enough GPUs for --device cuda
            raise typer.Exit(launch_local(nproc, relaunch_args(ctx), threads=threads))
    try:
        if env is None:
            summary = run_training(request)
        else:
            with process_group(env, device) as dist:
                summary = run_training(request, ctx=dist)
                if not dist.is_main:
                    return
    except TrainingStopped as stop:
        console.note(f"stopped after epoch {stop.epoch}; checkpoint "
                     f"{checkpoint_path_for(Path(output))}; continue with --resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _print_summary(summary, json_output)


def _print_summary(summary: TrainSummary, json_output: bool) -> None:
    prov = summary.bundle.provenance
    if json_output:
        print(json.dumps({
            "event": "done", "output": str(summary.output),
            "report": str(summary.report_path) if summary.report_path else None,
            "epochs_run": prov.get("epochs_run"), "best_epoch": prov.get("best_epoch"),
            "wall_seconds": round(summary.wall_seconds, 2),
            "metrics": summary.bundle.metrics, "samples": summary.split_rows,
        }, allow_nan=False), flush=True)
        return
    if summary.validation is not None:
        console.stdout.print(summary.validation.table(
            f"Validation (blocked split, best epoch {prov.get('best_epoch')})"))
    if summary.test is not None:
        console.stdout.print(summary.test.table("Test"))
        console.stdout.print(summary.test.confusion_table())
    console.note(f"wrote {summary.output} ({prov.get('epochs_run')} epochs, best "
                 f"{prov.get('best_epoch')})"
                 + (f" and {summary.report_path}" if summary.report_path else "")
                 + f" in {summary.wall_seconds:.1f} s")


def relaunch_args(ctx: typer.Context) -> list[str]:
    """The command line of this ``s2fin train`` call without ``--nproc``: global verbosity, then
    ``train`` and every parameter given on the command line (or environment), in declaration
    order. (Typer vendors its own click: parameters are told apart by kind, not class.)"""
    level = console.verbosity()
    args = ["-v"] * level if level > 0 else ["-q"] * -level
    args.append(ctx.info_name or "train")
    for param in ctx.command.params:
        name = param.name
        if name is None or name == "nproc":
            continue
        source = ctx.get_parameter_source(name)
        if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        value = ctx.params[name]
        if param.param_type_name == "argument":
            if value is not None:
                args.append(str(value))
            continue
        opts: list[str] = list(param.opts)
        if getattr(param, "is_flag", False):
            secondary: list[str] = list(getattr(param, "secondary_opts", []))
            if value:
                args.append(opts[0])
            elif secondary:
                args.append(secondary[0])
            continue
        for item in value if isinstance(value, list | tuple) else (value,):
            if item is not None:
                args += [opts[0], str(item)]
    return args


def launch_local(nproc: int, args: list[str], *, threads: int | None = None) -> int:
    """Run ``s2fin <args>`` on ``nproc`` local processes under torchrun; its exit code (torchrun
    answers 1 when any rank fails: that rank's error line is on stderr)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node", str(nproc), "-m", "s2fin_cli", *args]
    env: dict[str, Any] = dict(os.environ)
    # torchrun would set 1 itself, with a warning: share the CPUs this process may use instead.
    env.setdefault("OMP_NUM_THREADS", str(threads or max(1, available_cpus() // nproc)))
    console.note(f"launching {nproc} processes: torchrun --standalone --nproc-per-node "
                 f"{nproc} -m s2fin_cli {' '.join(args)}")
    code = subprocess.run(command, env=env, check=False).returncode
    return 128 + signal.Signals(-code).value if code < 0 else code
