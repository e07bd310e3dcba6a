#!/usr/bin/env bash
# Install s2fin into ./.venv, then run the main job on the bundled sample scene:
# train a model on its limited labels, map the whole scene, and score the map on the test labels.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
S2FIN=.venv/bin/s2fin
mkdir -p out
"$S2FIN" train sample_scenes/scene.tif --labels sample_scenes/train_labels.tif \
  --test-labels sample_scenes/test_labels.tif -o out/model.s2fin --overwrite
"$S2FIN" predict sample_scenes/scene.tif -m out/model.s2fin -o out/scene.classes.tif --overwrite
"$S2FIN" evaluate out/scene.classes.tif --labels sample_scenes/test_labels.tif \
  --figures out/figures --overwrite
"$S2FIN" inspect out/model.s2fin
echo "demo: map written to out/scene.classes.tif (open it in QGIS: out/scene.classes.qml styles it)"
