#!/usr/bin/env bash
# The whole study at toy scale on this machine, through the real launcher and manifests, with no cluster:
# weights, acquisition and prep Jobs writing the data volume, a sweep of each app (and a two-pod DDP Job)
# reading it read-only, uploads to a local S3 server, reproduce from s3://, and the study's tables.
# Prints the wall time and Jobs of each stage as JSON. Needs root (mount namespaces); exit 77 where unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/rehearse_study.py "$@"
