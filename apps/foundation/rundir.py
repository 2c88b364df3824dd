"""The run-directory layout: every file name of a run, and reading and writing its records.

A run directory holds::

    .hydra/config.yaml, overrides.yaml   Hydra's record of the composed config
    checkpoints/last.ckpt                the latest epoch (resume point)
    checkpoints/best-epochNNN.ckpt       the best epoch by the run's monitor
    metrics.json                         written last: its presence (status completed) marks the run done
    provenance.json                      one entry per attempt: command line, code and package versions
    test_examples.png                    test chips beside their truth and prediction
    upload.json                          where the run was copied, once it was
    pod.log                              the pod's log tail, for runs launched on Kubernetes
    reevaluation/                        apps.reproduce's work folder when it tests the saved checkpoint again

A sweep directory holds one run directory per point, ``multirun.yaml`` (Hydra's record of the
sweep) and ``summary.md`` / ``summary.csv`` (the sweep's table, written when the sweep ends).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from apps.foundation.errors import InputError
from apps.foundation.files import atomic_write_text

HYDRA_DIR = ".hydra"
"""Hydra's ``output_subdir`` (its default); the three names below are the files Hydra writes there."""
CONFIG_NAME, HYDRA_CONFIG_NAME, OVERRIDES_NAME = "config.yaml", "hydra.yaml", "overrides.yaml"
CONFIG_FILE = f"{HYDRA_DIR}/{CONFIG_NAME}"
HYDRA_CONFIG_FILE = f"{HYDRA_DIR}/{HYDRA_CONFIG_NAME}"
OVERRIDES_FILE = f"{HYDRA_DIR}/{OVERRIDES_NAME}"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = f"{CHECKPOINT_DIR}/last.ckpt"
BEST_CHECKPOINT_NAME = "best-epoch{epoch:03d}"
"""Lightning ModelCheckpoint filename template of the best checkpoint (without ``.ckpt``)."""
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
TEST_FIGURE = "test_examples.png"
UPLOAD_RECORD = "upload.json"
POD_LOG = "pod.log"
REEVALUATION_DIR = "reevaluation"
SWEEP_RECORD = "multirun.yaml"
SWEEP_SUMMARY_MARKDOWN = "summary.md"
SWEEP_SUMMARY_CSV = "summary.csv"
RESULT_MARKER = "geoscale-result:"
"""Prefix of the stdout line that carries a run's result, read back by launchers from pod logs."""


def read_completed(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The metrics record of a completed run, or None if the run has not completed."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return record if record.get("status") == "completed" else None


def write_metrics(run_dir: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write metrics.json atomically: readers see the complete record or none."""
    path = Path(run_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps(record, indent=2, default=float))
    return path


def write_upload_record(run_dir: str | os.PathLike, url: str) -> Path:
    """Record where the run directory was copied (``upload.json``)."""
    path = Path(run_dir) / UPLOAD_RECORD
    atomic_write_text(path, json.dumps({"uploaded_to": url}))
    return path


def read_upload_record(run_dir: str | os.PathLike) -> str | None:
    """Where the run directory was copied, or None."""
    path = Path(run_dir) / UPLOAD_RECORD
    return json.loads(path.read_text())["uploaded_to"] if path.is_file() else None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint to load: ``path`` itself if it is a file, or for a run directory its best
    checkpoint (as metrics.json records it), else its last one. InputError if there is none."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise InputError(f"checkpoint {path}: not found")
    record = read_completed(path)
    best = record["facts"].get("best_checkpoint") if record else None
    for candidate in ([path / best] if best else []) + [path / LAST_CHECKPOINT]:
        if candidate.is_file():
            return candidate
    raise InputError(f"run directory {path}: no best checkpoint in {METRICS_FILE} and no {LAST_CHECKPOINT}")
