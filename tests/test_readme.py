"""Every command the README shows runs as written, in a scratch folder, on tiny data.

Each command is taken from the README's bash blocks and run through a shell, with only what keeps it
small and off any cluster added or replaced (see ``adapt``): tiny synthetic sizes, one short epoch,
single training runs composed with ``--cfg job``, sweeps rendered as Kubernetes dry runs, and the
placeholders (RUN_DIR, SWEEP_DIR, ...) filled with what earlier commands made. Scene acquisition reads
from a local STAC stand-in (``STAC_URL``) serving synthetic items over the README's polygon files. A new README command
that no rule covers fails ``test_every_readme_command_is_covered``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator
from unittest import mock

import pytest

from helpers.core import LIMIT_S, REPO

TINY_TRAINING = "debug=tiny epochs=1"
TINY_CHANGE = "debug=tiny epochs=1 trainer.limit_train_batches=2"
TINY_DETECTION = "debug=tiny epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2 trainer.limit_test_batches=2"
DRY_RUN = "cluster=nautilus hydra.launcher.dry_run=true hydra.sweep.dir=outputs/dry_run"
SET_UP_AND_TESTS = ("bash scripts/setup.sh && bash scripts/main_job.sh",
                    "bash scripts/setup.sh --dev && .venv/bin/python -m pytest -q")
"""The README's first two commands: CI runs the second; the main job runs below without the set-up."""
DETECTION_SET_UP = "bash scripts/setup.sh --detection"
"""Part of the test command's set-up (``--dev`` includes the detection stack), so CI runs it too."""
REHEARSAL = "bash scripts/rehearse_study.sh"
"""Run as written by tests/test_rehearsal.py (minutes: not twice)."""


def readme_commands() -> list[str]:
    """The commands of the README's bash blocks: continuation lines joined, comments dropped."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def adapt(command: str) -> str | None:
    """The command as the test runs it, or None for the set-up lines that CI itself runs."""
    if command in SET_UP_AND_TESTS or command == DETECTION_SET_UP or command == REHEARSAL:
        return None
    if command.startswith("bash scripts/"):
        extra = (TINY_TRAINING + " trainer.limit_train_batches=2" if "main_job" in command
                 else TINY_DETECTION if "detection" in command else TINY_CHANGE)
        return f"{command} {extra}"
    command = command.replace("python -m", f"{sys.executable} -m")
    command = command.replace("n_scenes=6 size=1024", "n_scenes=5 size=360").replace("n_areas=4 size=768",
                                                                                     "n_areas=4 size=384")
    if "-m data_prep.detection" in command:
        command += " chip.size=128 progress=false"
    command = command.replace("RUN_DIR_OR_CHECKPOINT", "RUN_DIR").replace("path/to/scene", "data/synthetic/scenes/scene_00")
    command = command.replace("s3://BUCKET/PREFIX/SWEEP/0", "S3_RUN")
    command = command.replace("BEFORE AFTER", "data/synthetic_pairs/areas/area_00/before data/synthetic_pairs/areas/area_00/after")
    command = command.replace("scenes_dir=... polygons=... out_dir=...", "scenes_dir=data/synthetic/scenes "
                              "polygons=data/synthetic/burn_polygons.gpkg out_dir=data/chips/burned_area_synthetic")
    command = command.replace("scene=scene_00,scene_01", "scene=scene_00,scene_01 chip.size=64")
    command = command.replace("scene=a,b,c", "scene=scene_00,scene_01,scene_02 chip.size=64")
    # Optuna needs each trial's value, which a dry run cannot give: the trials train locally, tiny.
    command = command.replace("-m cluster=nautilus hydra/sweeper=optuna ...",
                              f"-m hydra/sweeper=optuna hydra.sweeper.n_trials=2 {TINY_TRAINING} "
                              "hydra.sweep.dir=outputs/optuna")
    if "-m data_prep.burned_area" in command and "chip.size" not in command:
        command += " chip.size=64 progress=false"
    if "-m data_prep.deforestation" in command:
        command += " chip.size=64 split.block_size_px=128"
    if "apps.burned_area.predict" in command or "apps.deforestation.predict" in command:
        command += " --chip-size 64 --device cpu"
    if "-m data_prep.acquire" in command:
        command += " catalog.url=STAC_URL progress=false download.backoff_s=0.05"
        if "app=deforestation" in command:  # the synthetic pairs are 2.56 km wide: no margin around the polygons
            command += " areas.margin_m=0"
    if "apps.detection.predict" in command:
        command += " --chip-size 128 --device cpu"
    if "-m apps.weights" in command:  # the catalogue's names, served from here
        command += " catalogue=WEIGHTS_CATALOGUE weights_dir=weights progress=false"
    tokens = command.split()
    module = tokens[tokens.index("-m") + 1]
    multirun = tokens.count("-m") > 1
    if "cluster=nautilus" in command and "dry_run" not in command:
        command += " hydra.launcher.dry_run=true"
    if module in ("apps.burned_area", "apps.deforestation", "apps.detection"):
        if multirun and "cluster=nautilus" not in command and "optuna" not in command:
            command += f" {DRY_RUN}"
        elif not multirun:
            command += " --cfg job"
    return command


def test_every_readme_command_is_covered():
    """Adapted, every command is runnable: no ``...`` and no placeholder but those filled at run time."""
    commands = readme_commands()
    assert len(commands) > 20
    for command in filter(None, map(adapt, commands)):
        placeholders = set(re.findall(r"\b[A-Z][A-Z_]{3,}\b", command)) - {"RUN_DIR", "SWEEP_DIR", "PWD", "STAC_URL", "S3_RUN",
                                                                         "WEIGHTS_CATALOGUE"}
        assert "..." not in command and not placeholders, f"no rule for: {command}"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A scratch folder holding the repository's scripts (which work from the repository root) and the
    environment running the tests as its .venv."""
    root = tmp_path_factory.mktemp("readme")
    shutil.copytree(REPO / "scripts", root / "scripts")
    (root / ".venv").symlink_to(sys.prefix)
    return root


def run(command: str, cwd: Path, run_dirs: dict[str, Path]) -> subprocess.CompletedProcess:
    for name, path in run_dirs.items():
        command = command.replace(name, str(path))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=LIMIT_S,
                          executable="/bin/bash")


@pytest.mark.slow
def test_readme_commands_run_as_written(workspace):
    """The README's commands in order; RUN_DIR and SWEEP_DIR are the runs that the commands before made."""
    from apps.foundation.rundir import read_completed

    run_dirs: dict[str, Path] = {}
    failures = []
    with contextlib.ExitStack() as stack:
        for command in readme_commands():
            adapted = adapt(command)
            if adapted is None:
                continue
            if "STAC_URL" in adapted and "STAC_URL" not in run_dirs:
                run_dirs["STAC_URL"] = stack.enter_context(stac_catalog(workspace))
            if "WEIGHTS_CATALOGUE" in adapted and "WEIGHTS_CATALOGUE" not in run_dirs:
                run_dirs["WEIGHTS_CATALOGUE"] = stack.enter_context(weights_server(workspace))
            if "S3_RUN" in adapted and "S3_RUN" not in run_dirs:
                run_dirs["S3_RUN"] = stack.enter_context(uploaded_run(workspace))
            failures += run_one(command, adapted, workspace, run_dirs)
    assert not failures, "\n".join(failures)
    assert read_completed(workspace / run_dirs["RUN_DIR"]) is not None


def run_one(command: str, adapted: str, workspace: Path, run_dirs: dict) -> list[str]:
    """Run one adapted README command (making the runs it names first); its failure, if any."""
    if "apps.deforestation.predict" in adapted or "SWEEP_DIR" in adapted or "RUN_DIR" in adapted:
        app = next((a for a in ("deforestation", "detection") if f"apps.{a}" in adapted), "burned_area")
        run_dirs.update(made_runs(workspace, app))
    proc = run(adapted, workspace, run_dirs)
    return [] if proc.returncode == 0 else [f"{command}\n  -> exit {proc.returncode}: {proc.stderr.strip()[-800:]}"]


@contextlib.contextmanager
def stac_catalog(workspace: Path) -> Iterator[str]:
    """A STAC stand-in serving synthetic burned-area scenes (August 2021) and deforestation pairs, whose polygons
    are the README's ``data/burns.gpkg`` and ``data/prodes.gpkg``; yields its URL."""
    import geopandas as gpd

    from geoscale_standins.stac import StacStandin, synthetic_s2_catalog

    catalogs = {"burns": synthetic_s2_catalog(workspace / "stac" / "burns", app="burned_area", n_products=3, size=256),
                "prodes": synthetic_s2_catalog(workspace / "stac" / "prodes", app="deforestation", n_products=2,
                                               size=256)}
    (workspace / "data").mkdir(exist_ok=True)
    with StacStandin() as stac:
        for name, catalog in catalogs.items():
            gpd.read_file(catalog.polygons).to_file(workspace / "data" / f"{name}.gpkg")
            catalog.serve(stac)
        yield stac.url


@contextlib.contextmanager
def weights_server(workspace: Path) -> Iterator[Path]:
    """A catalogue with the real catalogue's names whose files (generated bytes) a local server serves;
    yields the catalogue file's path."""
    import hashlib

    import yaml

    from apps.foundation.catalogue import read_catalogue
    from geoscale_standins.stac import StacStandin

    folder = workspace / "served_weights"
    folder.mkdir(exist_ok=True)
    real = read_catalogue()
    files = {}
    for index, checkpoint in enumerate(real.values()):
        files[checkpoint.name] = folder / checkpoint.file
        files[checkpoint.name].write_bytes(hashlib.shake_256(str(index).encode()).digest(2000))
    with StacStandin() as stac:
        hrefs = stac.serve_files(files)
        catalogue = {name: {"url": hrefs[name], "file": path.name, "trained_on": real[name].trained_on,
                            "part": real[name].part, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
                     for name, path in files.items()}
        (workspace / "weights_catalogue.yaml").write_text(yaml.safe_dump(catalogue))
        yield workspace / "weights_catalogue.yaml"


@contextlib.contextmanager
def uploaded_run(workspace: Path) -> Iterator[str]:
    """A local S3 server (moto) holding the burned-area RUN_DIR, as a cluster run's upload.to would;
    its endpoint and test credentials in the environment while it runs. Yields the run's URL."""
    import boto3
    from moto.server import ThreadedMotoServer

    from apps.core.runs.storage import upload_run_dir

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    settings = {"AWS_ACCESS_KEY_ID": "readme", "AWS_SECRET_ACCESS_KEY": "readme", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    try:
        with mock.patch.dict(os.environ, settings):
            boto3.client("s3").create_bucket(Bucket="readme-runs")
            run_dir = workspace / made_runs(workspace, "burned_area")["RUN_DIR"]
            yield upload_run_dir(run_dir, "s3://readme-runs/study", relative_to=run_dir.parent.parent)
    finally:
        server.stop()


def made_runs(workspace: Path, app: str) -> dict[str, Path]:
    """RUN_DIR and SWEEP_DIR for ``app`` (relative to ``workspace``): a tiny sweep of two points trained on
    the chip dataset that the README's commands prepared."""
    sweep = Path("outputs") / app / "sweeps" / "readme"
    if not (workspace / sweep / "1" / "metrics.json").is_file():
        overrides = {"burned_area": TINY_TRAINING, "deforestation": TINY_CHANGE, "detection": TINY_DETECTION}[app]
        proc = run(f"{sys.executable} -m apps.{app} -m lr=1e-3,1e-4 {overrides} hydra.sweep.dir={sweep}"
                   + (" chip_size=256" if app == "deforestation" else ""), workspace, {})
        assert proc.returncode == 0, proc.stderr[-2000:]
    return {"SWEEP_DIR": sweep, "RUN_DIR": sweep / "0"}
