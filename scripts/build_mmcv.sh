#!/usr/bin/env bash
# Build mmcv 2.1.0 with its compiled ops (the version mmdet 3.3 accepts) for the torch in a Python
# environment, and install it there. Usage: bash scripts/build_mmcv.sh [PYTHON] (default .venv/bin/python)
#
# mmcv publishes 2.1.0 as source only. Its setup.py asks for C++17, while torch 2.10 and later
# need C++20 to compile against, so the source is patched to C++20 before the build. The build
# takes about 7 minutes on 2 cores (MAX_JOBS=2); the wheel is kept in
# ${XDG_CACHE_HOME:-~/.cache}/geoscale/wheels/<torch version>/, so later installs take seconds.
# With FORCE_CUDA=1 (and a CUDA toolkit) it builds the CUDA ops too; MMCV_WHEEL_DIR=<dir> builds
# the wheel into <dir> without installing it (the Docker image does that).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${1:-.venv/bin/python}
version=2.1.0
torch_version=$("$python" -c 'import torch; print(torch.__version__)')
variant=$([[ "${FORCE_CUDA:-0}" == "1" ]] && echo cuda || echo cpu)
wheels=${MMCV_WHEEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/geoscale/wheels/torch-${torch_version}-${variant}}
pip=("$python" -m pip)
if ! compgen -G "$wheels/mmcv-$version-*.whl" >/dev/null; then
  echo "build_mmcv: building mmcv $version for torch $torch_version ($variant ops, about 7 minutes on 2 cores)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # setup.py imports pkg_resources (gone from setuptools 70+) and torch: build in this environment
  # with an older setuptools, then give torch back the setuptools it asks for.
  "${pip[@]}" install -q "setuptools==69.5.1" wheel ninja
  "${pip[@]}" download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$version" -d "$work"
  tar -xzf "$work/mmcv-$version.tar.gz" -C "$work"
  sed -i 's/-std=c++1[47]/-std=c++20/g' "$work/mmcv-$version/setup.py"
  mkdir -p "$wheels"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} "${pip[@]}" wheel -q --no-build-isolation --no-deps -w "$work/dist" \
    "$work/mmcv-$version"
  mv "$work"/dist/mmcv-$version-*.whl "$wheels/"
  "${pip[@]}" install -q "setuptools>=77"
fi
if [[ -z "${MMCV_WHEEL_DIR:-}" ]]; then
  "${pip[@]}" install -q "$wheels"/mmcv-$version-*.whl
  "$python" -c "import mmcv.ops" || { echo "build_mmcv: mmcv.ops does not import" >&2; exit 1; }
  echo "build_mmcv: mmcv $version with compiled ops installed"
fi
