#!/usr/bin/env bash
# The main job, on built-in synthetic data (no cluster, no download), CPU:
#   synthetic Sentinel-2 scenes + burn polygons -> chip dataset -> a local sweep of the
#   burned-area U-Net over two learning rates -> the sweep's table.
# Run from the repository root after `bash scripts/setup.sh` (uses .venv). Everything it writes
# goes under data/ and outputs/. Extra arguments are passed to the training command as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
sweep_dir="outputs/burned_area/sweeps/main_job_$(date +%Y-%m-%d_%H-%M-%S)_$$"

$python -m data_prep.synthetic out_dir=data/synthetic n_scenes=6 size=1024 seed=0
$python -m data_prep.burned_area scenes_dir=data/synthetic/scenes polygons=data/synthetic/burn_polygons.gpkg \
  out_dir=data/chips/burned_area_synthetic progress=false
$python -m apps.burned_area -m model=unet model.encoder=resnet18 init=random epochs=8 lr=1e-3,1e-4 \
  trainer.enable_progress_bar=false trainer.log_every_n_steps=1 "hydra.sweep.dir=$sweep_dir" "$@"
$python -m apps.report "$sweep_dir" --metrics test/iou,test/f1,test/precision,test/recall --plot
