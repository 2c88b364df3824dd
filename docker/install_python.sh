#!/usr/bin/env bash
# Python 3.11 from the deadsnakes PPA in a virtual environment at /opt/venv, first on PATH.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y --no-install-recommends software-properties-common gpg-agent ca-certificates git
add-apt-repository -y ppa:deadsnakes/ppa
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv python3.11-dev build-essential
rm -rf /var/lib/apt/lists/*
python3.11 -m venv /opt/venv
ln -s /opt/venv/bin/python /usr/local/bin/python
ln -s /opt/venv/bin/pip /usr/local/bin/pip
pip install --no-cache-dir --upgrade pip
