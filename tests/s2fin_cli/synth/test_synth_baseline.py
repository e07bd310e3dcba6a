"""A per-pixel random forest needs both modalities on the urban scene."""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

from s2fin_cli.metrics import AccuracyReport
from s2fin_cli.synth import SynthConfig, generate_scene


def test_fused_features_beat_each_single_modality() -> None:
    scene = generate_scene(SynthConfig.for_preset("urban", size=128, bands=32, seed=0))
    optical = scene.optical.reshape(scene.optical.shape[0], -1).T
    lidar = scene.active.reshape(scene.active.shape[0], -1).T
    tr = scene.train_labels.ravel() > 0
    te = scene.test_labels.ravel() > 0
    y_tr, y_te = scene.train_labels.ravel()[tr], scene.test_labels.ravel()[te]
    results = {}
    for name, x in (("hsi", optical), ("lidar", lidar), ("both", np.hstack([optical, lidar]))):
        rf = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1).fit(x[tr], y_tr)
        results[name] = AccuracyReport.from_arrays(y_te, rf.predict(x[te]), scene.classes)
    aa = {k: r.average_accuracy for k, r in results.items()}
    kappa = {k: r.kappa for k, r in results.items()}
    assert aa["both"] > aa["hsi"] + 0.05 and aa["both"] > aa["lidar"] + 0.05, aa
    assert kappa["both"] > max(kappa["hsi"], kappa["lidar"]), kappa
    # Neither modality is close to solving the scene per pixel.
    assert max(aa["hsi"], aa["lidar"]) < 0.75, aa
