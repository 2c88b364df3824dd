"""Run facts and provenance: what a run directory records beside its checkpoints."""

from __future__ import annotations

import json
import os
import platform
import resource
import socket
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from apps.foundation.files import atomic_write_text
from apps.foundation.rundir import PROVENANCE_FILE

TRACKED_PACKAGES = (
    "geoscale", "torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core", "omegaconf",
    "segmentation-models-pytorch", "timm", "numpy", "rasterio", "mmdet", "mmengine", "mmcv",
)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a result depends on (absent ones are left out)."""
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def code_version() -> dict[str, Any]:
    """The git commit of the code and whether the working tree had uncommitted changes.

    Outside a git checkout (an installed image) the commit comes from GEOSCALE_GIT_COMMIT.
    """
    repo = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, check=True, timeout=10).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": os.environ.get("GEOSCALE_GIT_COMMIT"), "git_dirty": None}


def record_provenance(run_dir: Path) -> dict[str, Any]:
    """Append this attempt (command line, code and package versions, host) to provenance.json.

    A resumed run keeps one entry per attempt, the first being the original command.
    """
    path = Path(run_dir) / PROVENANCE_FILE
    attempts = json.loads(path.read_text())["attempts"] if path.is_file() else []
    attempts.append({
        "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command_line": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
        **code_version(),
        "packages": package_versions(),
    })
    record = {"attempts": attempts}
    atomic_write_text(path, json.dumps(record, indent=2))
    return record


def peak_memory() -> tuple[int, str]:
    """Peak memory of this run in bytes and how it was measured.

    CUDA's max allocated bytes where a GPU was used, else the process's peak resident set size.
    """
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return int(rss_kib) * 1024, "process_rss"
