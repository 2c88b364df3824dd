#!/usr/bin/env bash
# The detection quick start, on built-in synthetic scenes (no cluster, no download), CPU:
#   eight synthetic 1024 px scenes (vehicles, storage tanks, buildings, aircraft; a few difficult)
#   -> 256 px chips and COCO JSON -> a small FCOS (ResNet-18 at half width) trained from random
#   weights -> its COCO test scores -> detections over one whole scene (GeoJSON, COCO results).
# Run from the repository root after `bash scripts/setup.sh --detection` (uses .venv). Everything it
# writes goes under data/ and outputs/. Extra arguments are passed to the training command as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
run_dir="outputs/detection/runs/quickstart_$(date +%Y-%m-%d_%H-%M-%S)_$$"

$python -m data_prep.synthetic_objects out_dir=data/synthetic_objects n_scenes=8 size=1024 seed=0
$python -m data_prep.detection format=dota images=data/synthetic_objects/images \
  labels=data/synthetic_objects/labelTxt "classes=[vehicle,storage_tank,building,aircraft]" chip.size=256 \
  out_dir=data/chips/synthetic
$python -m apps.detection model=fcos_small epochs=12 batch_size=8 trainer.enable_progress_bar=false \
  "hydra.run.dir=$run_dir" "$@"
$python -c "import json, sys; m = json.load(open(sys.argv[1]))['metrics']; print(json.dumps({k: round(v, 4) for k, v in m.items()}))" \
  "$run_dir/metrics.json"
$python -m apps.detection.predict "$run_dir" data/synthetic_objects/images/scene_07.tif --chip-size 256 \
  --out "$run_dir/scene_07_detections"
