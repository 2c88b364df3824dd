"""The study's experiment sets as experiment= presets: each composes, on the cluster profile, to the study's
point count, epochs, GPUs per model, optimizers and initial weights."""

from __future__ import annotations

import itertools

import pytest
from omegaconf import OmegaConf

from helpers.core import CONF_DIR, compose_config

ADAMW_DETECTORS = {"swin_t_faster_rcnn", "deformable_detr"}
IMAGENET_DETECTORS = {"faster_rcnn_convnext", "swin_t_faster_rcnn", "vit_faster_rcnn"}


def sweep(app: str, experiment: str):
    """The preset's whole config on the cluster profile, and its sweep points (dicts of overrides)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(app, overrides=[f"experiment={experiment}", "cluster=nautilus"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    points = [dict(zip(params, combo)) for combo in itertools.product(*(str(v).split(",") for v in params.values()))]
    return cfg, points


def point_config(app: str, experiment: str, point: dict):
    return compose_config(app, [f"experiment={experiment}", *(f"{k}={v}" for k, v in point.items())])


@pytest.mark.parametrize("app, experiment, count, epochs, gpus", [
    ("burned_area", "burned_area_grid", 144, 100, 1),
    ("burned_area", "burned_area_final", 4, 200, 1),
    ("deforestation", "deforestation_grid", 72, 200, 1),
    ("detection", "detection_benchmark", 30, 300, 4),
])
def test_each_preset_has_the_studys_points_epochs_and_gpus_and_runs_them_all_at_once(app, experiment, count, epochs,
                                                                                       gpus):
    cfg, points = sweep(app, experiment)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert len(points) == count and len({tuple(p.items()) for p in points}) == count
    assert cfg.epochs == epochs and cfg.trainer.max_epochs == epochs
    assert launcher["gpus"] == gpus
    assert launcher["max_in_flight"] >= count


def test_deforestation_grid_spans_the_studys_values():
    _, points = sweep("deforestation", "deforestation_grid")
    values = {key: {p[key] for p in points} for key in points[0]}
    assert values == {"lr": {"1e-3", "1e-4", "1e-5"}, "loss": {"ce", "focal"}, "optimizer": {"adamw", "sgd"},
                      "data": {"nirrg", "ndvi", "evi"}, "chip_size": {"256", "512"}}
    assert len(points) > 60


@pytest.mark.slow
def test_detection_benchmark_optimizers_weights_and_batch_follow_the_study():
    from apps.foundation.catalogue import read_catalogue

    catalogue = read_catalogue()
    _, points = sweep("detection", "detection_benchmark")
    assert {p["data"] for p in points} == {"dota", "xview", "rareplanes"}
    for point in points[:10]:  # the ten detectors (each on every dataset)
        cfg = point_config("detection", "detection_benchmark", point)
        model = cfg.model.name
        optimizer = cfg.optimizer._target_.rsplit(".", 1)[-1]
        assert optimizer == ("AdamW" if model in ADAMW_DETECTORS else "SGD"), model
        assert cfg.init.weights == "pretrained" and cfg.task.model_name == model
        expected = "imagenet-1k" if model in IMAGENET_DETECTORS else "coco"
        assert catalogue[model].trained_on == expected, model
        assert catalogue[model].part == ("backbone" if expected == "imagenet-1k" else "")
        assert cfg.batch_size == "auto"
    assert len({p["model"] for p in points}) == 10


def test_burned_area_imagenet_points_find_their_encoder_in_the_catalogue():
    from apps.foundation.catalogue import read_catalogue

    _, points = sweep("burned_area", "burned_area_grid")
    imagenet = [p for p in points if p["init"] == "imagenet"]
    assert len(imagenet) == 72
    cfg = point_config("burned_area", "burned_area_grid", imagenet[0])
    assert f"{cfg.model.encoder}.{cfg.init.weights}" in read_catalogue()
