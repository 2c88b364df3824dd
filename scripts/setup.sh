#!/usr/bin/env bash
# Create .venv and install geoscale into it (editable). `--dev` adds the test tools.
# Safe to re-run: an up-to-date environment is left as it is.
set -euo pipefail
cd "$(dirname "$0")/.."
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"
python3 -m venv .venv
# A find-links folder (from the environment or a pip config file) may hold a CPU-only torch
# for which no torchvision build exists: resolve torch and torchvision as a matching pair
# from the package index alone.
export PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS=
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".${extras}"
.venv/bin/python -c "import torch, torchvision.ops, segmentation_models_pytorch, rasterio, hydra" \
  || { echo "setup: the installed torch/torchvision pair does not import" >&2; exit 1; }
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
