"""Runs written before the core was split into subpackages still load: their checkpoints and saved
configs name classes by the old module paths (``tests/fixtures/legacy_detection_run`` was written by
that code: a one-epoch fcos_small at a quarter width, optimizer state dropped to keep it small)."""

from __future__ import annotations

import importlib
import json

import pytest
from omegaconf import OmegaConf

from apps.core.config import MOVED_MODULES, current_name, upgrade_targets
from helpers.core import FIXTURES

LEGACY_RUN = FIXTURES / "legacy_detection_run"


def test_every_old_module_maps_to_one_that_exists():
    for old, new in MOVED_MODULES.items():
        assert importlib.util.find_spec(new) is not None, f"{old} -> {new}: no such module"
        assert importlib.util.find_spec(old) is None, f"{old} still exists: nothing moved"
    assert current_name("apps.core.detection.DetectionTask") == "apps.detection.task.DetectionTask"
    assert current_name("apps.core.detection_data.DetectionDataModule") == "apps.detection.data.DetectionDataModule"
    assert current_name("torch.optim.SGD") == "torch.optim.SGD"


def test_a_saved_config_of_the_old_layout_names_todays_classes():
    saved = OmegaConf.load(LEGACY_RUN / ".hydra" / "config.yaml")
    assert saved.task._target_ == "apps.core.detection.DetectionTask"
    upgraded = upgrade_targets(saved)
    assert upgraded.task._target_ == "apps.detection.task.DetectionTask"
    assert upgraded.data._target_ == "apps.detection.data.DetectionDataModule"
    assert upgraded.callbacks.test_examples._target_ == "apps.core.training.callbacks.TestExamplesFigure"
    assert OmegaConf.to_container(upgraded.optimizer, resolve=False) == \
        OmegaConf.to_container(saved.optimizer, resolve=False)  # interpolations kept, other targets unchanged


def test_a_saved_burned_area_config_choosing_its_model_by_arch_builds_todays_network():
    """Burned area's model configs named the network by ``arch`` alone before they carried a ``_target_``."""
    from helpers.core import compose_config

    today = OmegaConf.to_container(compose_config("burned_area", ["model=deeplabv3"]), resolve=False)
    saved = {**today, "model": {k: v for k, v in today["model"].items() if k not in ("_target_", "_partial_")}}
    assert saved["model"] == {"arch": "deeplabv3", "encoder": "resnet50"}
    upgraded = upgrade_targets(OmegaConf.create(saved))
    assert OmegaConf.to_container(upgraded, resolve=False) == today
    assert upgrade_targets({"model": {"arch": "unet", "_target_": "my.net"}})["model"] == {"arch": "unet",
                                                                                        "_target_": "my.net"}


@pytest.mark.slow  # loads mmdet and a detector, then predicts a scene in a child process: about 11 s
def test_an_old_detection_checkpoint_loads_and_predicts(tmp_path):
    pytest.importorskip("mmdet", reason="the detection stack is not installed (scripts/setup.sh --detection)")
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    from apps.core.prediction.checkpoint import load_task
    from helpers.core import run_module

    task = load_task(LEGACY_RUN / "checkpoints" / "best-epoch000.ckpt", "cpu")
    assert type(task).__module__ == "apps.detection.task" and task.class_names[0] == "vehicle"
    scene = tmp_path / "scene.tif"
    image = np.random.default_rng(0).integers(0, 255, (3, 160, 160), dtype=np.uint8)
    with rasterio.open(scene, "w", driver="GTiff", width=160, height=160, count=3, dtype="uint8",
                       crs="EPSG:32610", transform=from_origin(500000, 4000000, 0.5, 0.5)) as dst:
        dst.write(image)
    # Windows as the training chips were cut (128 px, overlap 0.2: four over 160 px), unless a flag says otherwise.
    done = run_module("apps.detection.predict", str(LEGACY_RUN), str(scene), "--out", str(tmp_path / "boxes"),
                      "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["width"] == 160 and summary["windows"] == 4 and (tmp_path / "boxes.geojson").is_file()
    done = run_module("apps.detection.predict", str(LEGACY_RUN), str(scene), "--out", str(tmp_path / "whole"),
                      "--device", "cpu", "--chip-size", "160")
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["windows"] == 1
    assert "--chip-size 160 replaces the training chips' 128" in done.stderr
