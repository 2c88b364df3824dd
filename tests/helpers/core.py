"""Helpers for every test: the repository's folders, config composition, the tiny-model overrides, child
processes and waiting."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

from apps.foundation.cli import CONF_DIR
from apps.core.config import compose_app_config
from helpers import LIMIT_S, REPO

__all__ = ["CONF_DIR", "FIXTURES", "LIMIT_S", "REPO", "TINY_MODEL", "compose_config", "run_module", "sweep_points", "wait_until",
           "kill_module_once"]

FIXTURES = REPO / "tests" / "fixtures"
"""Files the tests read as they are (a run written by older code)."""

TINY_MODEL = ["debug=tiny"]
"""The tiny-model config group (conf/<app>/debug/tiny.yaml): a network that trains in seconds on 32 px chips."""


def compose_config(config_name: str = "burned_area", overrides: list[str] = ()):
    """The composed app config, as the app would see it (without the hydra node)."""
    return compose_app_config(config_name, overrides)


def run_module(module: str, *args: str, cwd: Path | None = None, timeout: float = LIMIT_S) -> subprocess.CompletedProcess:
    """Run ``python -m module args`` in a child process; returns the finished process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def wait_until(predicate, timeout_s: float = LIMIT_S, what: str = "condition"):
    """Poll ``predicate`` every 50 ms until it returns something truthy (returned), or fail after ``timeout_s``."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def sweep_points(cfg) -> list[dict[str, str]]:
    """The points of a composed config's basic-sweeper grid (``hydra.sweeper.params``): one {key: value} each."""
    params = cfg.hydra.sweeper.params
    keys = list(params)
    values = [str(params[k]).split(",") for k in keys]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def kill_module_once(module: str, args: list[str], marker: Path, cwd: Path) -> subprocess.Popen:
    """Start ``python -m module args`` and SIGKILL it the moment ``marker`` exists (polled every 2 ms); returns
    the killed process. Fails when the process ended before it could be killed."""
    import signal
    import time

    process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + LIMIT_S
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, f"{module} finished before it could be killed"
    return process
