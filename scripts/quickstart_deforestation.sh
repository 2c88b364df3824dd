#!/usr/bin/env bash
# The deforestation quick start, on built-in synthetic pairs (no cluster, no download), CPU:
#   four synthetic areas (two Sentinel-2 L2A dates each, PRODES-like polygons) -> 128 px pair chips
#   -> ChangeFormer V6 trained for a few epochs -> its test scores.
# Run from the repository root after `bash scripts/setup.sh` (uses .venv). Everything it writes
# goes under data/ and outputs/. Extra arguments are passed to the training command as overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
python=.venv/bin/python
run_dir="outputs/deforestation/runs/quickstart_$(date +%Y-%m-%d_%H-%M-%S)_$$"

$python -m data_prep.synthetic_pairs out_dir=data/synthetic_pairs n_areas=4 size=768 seed=0
$python -m data_prep.deforestation areas_dir=data/synthetic_pairs/areas polygons=data/synthetic_pairs/prodes.gpkg \
  target_year=2021 chip.size=128 out_dir=data/chips/deforestation_synthetic/chips_128
$python -m apps.deforestation chip_size=128 epochs=3 trainer.enable_progress_bar=false \
  "hydra.run.dir=$run_dir" "$@"
$python -c "import json, sys; m = json.load(open(sys.argv[1]))['metrics']; print(json.dumps({k: round(v, 4) for k, v in m.items()}))" \
  "$run_dir/metrics.json"
