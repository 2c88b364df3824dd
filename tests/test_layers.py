"""The layers of ARCHITECTURE.md hold: imports point down only, and the foundation stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import LIMIT_S, REPO


def test_imports_point_down_only():
    """The import-linter contract in pyproject.toml: apps, commands, launcher > core > data_prep > foundation."""
    lint_imports = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint_imports), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout, proc.stdout


def test_foundation_imports_neither_torch_nor_hydra():
    code = ("import sys\n"
            "import apps.foundation.chips, apps.foundation.cli, apps.foundation.errors, apps.foundation.files, "
            "apps.foundation.rundir\n"
            "heavy = sorted(m for m in ('torch', 'hydra', 'omegaconf', 'pytorch_lightning') if m in sys.modules)\n"
            "print(','.join(heavy))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=LIMIT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"the foundation imported {proc.stdout.strip()}"
