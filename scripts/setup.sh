#!/usr/bin/env bash
# Create .venv and install geoscale into it (editable). `--detection` adds MMDetection and mmcv
# with compiled ops (built once, about 7 minutes on 2 cores; see scripts/build_mmcv.sh); `--dev`
# adds the test tools and the detection stack. Safe to re-run: an up-to-date environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
case "${1:-}" in
  --dev) extras="[dev,detection]" ;;
  --detection) extras="[detection]" ;;
  "") ;;
  *) echo "setup: unknown option ${1} (expected --dev or --detection)" >&2; exit 2 ;;
esac
python3 -m venv .venv
# A find-links folder (from the environment or a pip config file) may hold a CPU-only torch
# for which no torchvision build exists: resolve torch and torchvision as a matching pair
# from the package index alone.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -c "import torch, torchvision.ops, segmentation_models_pytorch, rasterio, hydra" \
  || { echo "setup: the installed torch/torchvision pair does not import" >&2; exit 1; }
if [[ "$extras" == *detection* ]]; then bash scripts/build_mmcv.sh .venv/bin/python; fi
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
