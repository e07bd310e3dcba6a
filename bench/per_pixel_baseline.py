"""Per-pixel random-forest baseline on synthetic scenes: optical only, LiDAR/SAR only, both.

Trains on ``train_labels`` and scores on ``test_labels`` of scenes made by ``s2fin synth``
(generated in memory with the same API), per preset, and prints a markdown table with OA, AA and
Kappa (from :mod:`s2fin_cli.metrics`). A pixel's features are its raw values: optical
reflectance bands, the LiDAR DSM (+ intensity) or SAR bands; no patches, no height
normalisation. The point is to show that neither modality alone is enough.

    python bench/per_pixel_baseline.py                       # all presets, 256 px, seed 0
    python bench/per_pixel_baseline.py --preset urban --size 160 --bands 64 --seeds 0 1 2
    python bench/per_pixel_baseline.py --scene-dir sample_scenes   # a written scene
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from sklearn.ensemble import RandomForestClassifier

from s2fin_cli.classes import ClassTable
from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.synth import PRESETS, SynthConfig, generate_scene

MODALITIES = ("optical", "active", "both")


def features(optical: np.ndarray, active: np.ndarray, modality: str) -> np.ndarray:
    """(pixels, features) for the modality; NaN (optical nodata) becomes 0."""
    parts = {"optical": [optical], "active": [active], "both": [optical, active]}[modality]
    stack = np.concatenate([np.nan_to_num(p.reshape(p.shape[0], -1).T) for p in parts], axis=1)
    return stack.astype(np.float32)


def run_rf(optical: np.ndarray, active: np.ndarray, train: np.ndarray, test: np.ndarray,
           classes: ClassTable, *, seed: int = 0, trees: int = 200, jobs: int = 1
           ) -> dict[str, AccuracyReport]:
    """Fit a random forest per modality on the training pixels, score on the test pixels."""
    tr, te = train.ravel() > 0, test.ravel() > 0
    out = {}
    for modality in MODALITIES:
        x = features(optical, active, modality)
        rf = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=jobs)
        rf.fit(x[tr], train.ravel()[tr])
        pred = rf.predict(x[te])
        out[modality] = AccuracyReport.from_arrays(test.ravel()[te], pred, classes)
    return out


def read_scene_dir(path: Path) -> tuple[dict[str, Any], np.ndarray, np.ndarray, np.ndarray,
                                        np.ndarray, ClassTable]:
    meta = json.loads((path / "scene.json").read_text())
    with rasterio.open(path / meta["files"]["hsi"]) as src:
        raw = src.read()
        optical = raw.astype(np.float32) * float(meta["optical"]["scale_factor"])
        if src.nodata is not None and not np.isnan(src.nodata):
            optical[raw == src.nodata] = np.nan
    with rasterio.open(path / meta["active"]["file"]) as src:
        active = src.read().astype(np.float32)
    with rasterio.open(path / "train_labels.tif") as src:
        train = src.read(1)
    with rasterio.open(path / "test_labels.tif") as src:
        test = src.read(1)
    table = ClassTable.from_json([{k: c[k] for k in ("id", "name", "color")}
                                  for c in meta["classes"]])
    return meta, optical, active, train, test, table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=PRESETS, nargs="*", default=list(PRESETS))
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--bands", type=int, default=None, help="optical bands (preset default)")
    ap.add_argument("--difficulty", type=float, default=0.5)
    ap.add_argument("--train-per-class", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--trees", type=int, default=200)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--scene-dir", type=Path, default=None,
                    help="score a written scene directory instead of generating presets")
    args = ap.parse_args(argv)

    rows: list[tuple[str, str, str, list[AccuracyReport]]] = []
    if args.scene_dir is not None:
        meta, optical, active, train, test, table = read_scene_dir(args.scene_dir)
        reports = run_rf(optical, active, train, test, table, seed=0, trees=args.trees,
                         jobs=args.jobs)
        for m in MODALITIES:
            rows.append((str(args.scene_dir), m, meta["active"]["kind"], [reports[m]]))
    else:
        for preset in args.preset:
            per_mod: dict[str, list[AccuracyReport]] = {m: [] for m in MODALITIES}
            kind = ""
            for seed in args.seeds:
                t0 = time.perf_counter()
                bands = None if preset == "msi-sar" else args.bands  # msi: Sentinel-2 set
                cfg = SynthConfig.for_preset(preset, size=args.size, bands=bands, seed=seed,
                                             difficulty=args.difficulty,
                                             train_per_class=args.train_per_class)
                scene = generate_scene(cfg)
                kind = cfg.active
                reports = run_rf(scene.optical, scene.active, scene.train_labels,
                                 scene.test_labels, scene.classes, seed=seed, trees=args.trees,
                                 jobs=args.jobs)
                for m in MODALITIES:
                    per_mod[m].append(reports[m])
                print(f"# {preset} seed {seed}: {time.perf_counter() - t0:.1f} s",
                      file=sys.stderr)
            for m in MODALITIES:
                rows.append((preset, m, kind, per_mod[m]))

    print("| scene | features | OA % | AA % | Kappa |")
    print("|---|---|---|---|---|")
    for scene_name, modality, kind, reps in rows:
        label = {"optical": "optical only", "active": f"{kind} only",
                 "both": f"optical + {kind}"}[modality]

        def fmt(values: list[float], scale: float, digits: int) -> str:
            a = np.array(values) * scale
            return (f"{a.mean():.{digits}f}" if a.size == 1
                    else f"{a.mean():.{digits}f} ± {a.std(ddof=1):.{digits}f}")

        oa = fmt([r.overall_accuracy for r in reps], 100, 1)
        aa = fmt([r.average_accuracy for r in reps], 100, 1)
        kappa = fmt([r.kappa for r in reps], 1, 3)
        print(f"| {scene_name} | {label} | {oa} | {aa} | {kappa} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
