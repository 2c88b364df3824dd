"""The run-directory layout: every file name of a run, and reading and writing its records.

A run directory holds::

    .hydra/config.yaml, overrides.yaml   Hydra's record of the composed config
    checkpoints/last.ckpt                the latest epoch (resume point)
    checkpoints/best-epochNNN.ckpt       the best epoch by the run's monitor
    metrics.json                         written last (a RunRecord): its presence (status completed) marks the run done
    error.txt                            the one-line error of the last attempt, when it failed
    provenance.json                      one entry per attempt: command line, code and package versions
    test_examples.png                    test chips beside their truth and prediction
    upload.json                          where the run was copied, once it was
    pod.log                              the pod's log tail, for runs launched on Kubernetes
    reevaluation/                        apps.reproduce's work folder when it tests the saved checkpoint again

A sweep directory holds one run directory per point, ``multirun.yaml`` (Hydra's record of the
sweep), ``summary.md`` / ``summary.csv`` (the sweep's table, written when the sweep ends) and, for a
Kubernetes dry run, ``manifests/`` (each point's rendered Job, ``<job name>.yaml``).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
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
ERROR_FILE = "error.txt"
PROVENANCE_FILE = "provenance.json"
TEST_FIGURE = "test_examples.png"
UPLOAD_RECORD = "upload.json"
POD_LOG = "pod.log"
REEVALUATION_DIR = "reevaluation"
SWEEP_RECORD = "multirun.yaml"
SWEEP_SUMMARY_MARKDOWN = "summary.md"
SWEEP_SUMMARY_CSV = "summary.csv"
SWEEP_MANIFEST_DIR = "manifests"
RESULT_MARKER = "geoscale-result:"
"""Prefix of the line that carries a run's result (``ResultLine``), read back by launchers from pod logs."""
COMPLETED = "completed"
TRAIN, PREP = "train", "prep"
"""The two kinds of run record: a training run and a data-prep stage."""


@dataclass(frozen=True)
class RunRecord:
    """A finished run's ``metrics.json``.

    ``kind`` TRAIN: ``app``, ``objective`` {"name", "mode" (min|max), "value"}, the test ``metrics`` (and the
    best monitor value) and ``facts`` (parameters, wall_time_s, gpu_hours, epochs, peak_memory_bytes, precision,
    batch_size, images_processed, imagery_bytes, best_checkpoint relative to the run directory, seed, devices).
    ``kind`` PREP: ``stage`` (``app:stage``), no objective value, facts bytes_read, bytes_written, wall_time_s.
    """

    kind: str
    objective: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    app: str | None = None
    stage: str | None = None
    status: str = COMPLETED

    @property
    def value(self) -> float | None:
        """The objective's value (None for a prep stage)."""
        return self.objective.get("value")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``metrics.json``, a result line's ``record``), without unset ``app``/``stage``."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in ("app", "stage")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunRecord":
        """The record of its JSON form; a record written before ``kind`` existed is a training run's."""
        return cls(kind=data.get("kind", TRAIN), objective=dict(data.get("objective") or {}),
                   metrics=dict(data.get("metrics") or {}), facts=dict(data.get("facts") or {}),
                   app=data.get("app"), stage=data.get("stage"), status=data.get("status", COMPLETED))


@dataclass(frozen=True)
class ResultLine:
    """The line a finished run prints last, ``geoscale-result: {"objective", "value", "record", "uploaded_to"}``,
    so that a launcher which sees only the process's output (a pod log) gets what a local sweeper gets.
    Training prints it on stdout; a prep stage on stderr (its stdout is the stage's own output)."""

    objective: str | None
    value: float | None
    record: RunRecord | None
    uploaded_to: str | None = None

    def format(self) -> str:
        payload = {"objective": self.objective, "value": self.value,
                   "record": self.record.to_dict() if self.record else None, "uploaded_to": self.uploaded_to}
        return f"{RESULT_MARKER} {json.dumps(payload, default=float)}"

    @classmethod
    def last_in(cls, text: str) -> "ResultLine | None":
        """The last result line in ``text`` (a log), or None when it holds none that parses."""
        for line in reversed(text.splitlines()):
            if line.startswith(RESULT_MARKER):
                try:
                    payload = json.loads(line[len(RESULT_MARKER):])
                except json.JSONDecodeError:
                    return None
                record = payload.get("record")
                return cls(payload.get("objective"), payload.get("value"),
                           RunRecord.from_dict(record) if record else None, payload.get("uploaded_to"))
        return None


def read_completed(run_dir: str | os.PathLike) -> RunRecord | None:
    """The record of a completed run, or None if the run has not completed."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return RunRecord.from_dict(data) if data.get("status") == COMPLETED else None


def write_metrics(run_dir: str | os.PathLike, record: RunRecord) -> Path:
    """Write metrics.json atomically: readers see the complete record or none."""
    path = Path(run_dir) / METRICS_FILE
    atomic_write_text(path, json.dumps(record.to_dict(), indent=2, default=float))
    return path


def write_error(run_dir: str | os.PathLike, message: str) -> Path:
    """Record the one-line error of a failed attempt (``error.txt``)."""
    path = Path(run_dir) / ERROR_FILE
    atomic_write_text(path, message + "\n")
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
    best = record.facts.get("best_checkpoint") if record else None
    for candidate in ([path / best] if best else []) + [path / LAST_CHECKPOINT]:
        if candidate.is_file():
            return candidate
    raise InputError(f"run directory {path}: no best checkpoint in {METRICS_FILE} and no {LAST_CHECKPOINT}")
