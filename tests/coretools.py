"""Shared helpers for tests of the training core: config composition and tiny-model overrides."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from apps.foundation.cli import CONF_DIR  # noqa: F401  (re-exported for tests)
from apps.core.config import compose_app_config

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = ["debug=tiny"]
"""The tiny-model config group (conf/<app>/debug/tiny.yaml): a network that trains in seconds on 32 px chips."""


def compose_config(config_name: str = "burned_area", overrides: list[str] = ()):
    """The composed app config, as the app would see it (without the hydra node)."""
    return compose_app_config(config_name, overrides)


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a child process; returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_until(predicate, timeout_s: float, what: str = "condition"):
    """Poll ``predicate`` every 50 ms until it returns something truthy (returned), or fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
