"""Every choice of every config group of every training app builds (not only composes): networks,
initialisations, data, losses, optimizers and schedules, trainers, loggers and callbacks. A choice
that trains (all but detection's networks, which are built only) takes one optimizer step."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml

from helpers.core import CONF_DIR, compose_config

from apps.core.config import build

pytestmark = pytest.mark.slow  # composes and builds some 60 choices: networks, loaders, losses, optimizers, trainers, loggers

APPS = ("burned_area", "deforestation", "detection")
SMALL_NETWORK = {"burned_area": ["model.encoder=resnet18"], "deforestation": ["model=fc_siam_diff"],
                 "detection": ["model=fcos_small"]}
"""The cheapest network of each app, for the groups that are not about the network."""
INIT_NETWORK = {**SMALL_NETWORK, "deforestation": []}
"""The network of the init choices: deforestation's pretrained weights (MiT) fit its default ChangeFormer only."""
PRESETS = ("experiment", "cluster")
"""Groups of the defaults lists that choose whole setups rather than one object (tests/test_study_presets.py)."""


def primary_config(app: str) -> dict:
    return yaml.safe_load((Path(CONF_DIR) / f"{app}.yaml").read_text())


def groups(app: str) -> list[str]:
    """The config groups of ``app``'s defaults list, presets aside."""
    return [group for entry in primary_config(app)["defaults"] if isinstance(entry, dict)
            for group in entry if group not in PRESETS]


def options(app: str, group: str) -> list[str]:
    """The choices of ``group`` that ``app``'s config offers: its search path's folders (``pkg://apps.conf.X``
    is conf/X) and the shared one."""
    root = Path(CONF_DIR)
    searched = [root / path.removeprefix("pkg://apps.conf.").replace(".", "/")
                for path in primary_config(app)["hydra"]["searchpath"]]
    folders = [folder / group for folder in (*searched, root)]
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


CASES = [(app, group, option) for app in APPS for group in groups(app) for option in options(app, group)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    from data_prep.synthetic_chips import make_chip_dataset, make_pair_chip_dataset
    from helpers.detection import make_box_dataset

    root = tmp_path_factory.mktemp("datasets")
    return {"burned_area": make_chip_dataset(root / "segmentation", chips_per_scene=2, size=32),
            "deforestation": make_pair_chip_dataset(root / "pairs", chips_per_scene=2, size=32),
            "detection": make_box_dataset(root / "boxes", chips_per_scene=2, size=64)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory, datasets) -> dict[str, Path]:
    """Local pretrained-weight files: a ResNet-18 ImageNet-style state dict, a MiT-style encoder checkpoint
    and a whole small detector for the detection dataset's classes."""
    import segmentation_models_pytorch as smp

    from apps.deforestation.changeformer import build_changeformer_v6
    from apps.detection.task import build_detector
    from apps.foundation.chips import ChipDataset

    root = tmp_path_factory.mktemp("weights")
    torch.save(smp.encoders.get_encoder("resnet18", weights=None).state_dict(), root / "resnet18.imagenet.pth")
    torch.save(build_changeformer_v6().encoder.state_dict(), root / "mit.pth")
    network = compose_config("detection", INIT_NETWORK["detection"]).model.network
    classes = ChipDataset(datasets["detection"]).classes
    torch.save(build_detector(build(network)(num_classes=len(classes))).state_dict(), root / "detector.pth")
    return {"burned_area": root / "resnet18.imagenet.pth", "deforestation": root / "mit.pth",
            "detection": root / "detector.pth"}


def overrides_for(app: str, group: str, option: str, datasets, weights) -> list[str]:
    network = INIT_NETWORK[app] if group == "init" else SMALL_NETWORK[app]
    if group == "model":
        network = [o for o in network if not o.startswith("model=")]
    extra = [*network, f"{group}={option}", f"data.root={datasets[app]}", "num_workers=0"]
    if group == "init" and option != "random":
        extra.append(f"init.weights_path={weights[app]}")
    return extra


def one_step_loss(task: pl.LightningModule, datamodule: pl.LightningDataModule, root: Path) -> torch.Tensor:
    """The training loss of one optimizer step on one batch, fitted by a bare CPU Trainer (the task's own
    optimizer and schedule; no validation, logger or checkpoint)."""
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=root)
    trainer.fit(task, datamodule)
    return trainer.callback_metrics["train/loss"]


def test_the_cases_cover_every_app_and_detection_has_its_eleven_networks():
    assert {app for app, _, _ in CASES} == set(APPS)
    assert len(options("detection", "model")) == 11 and "sgd_nesterov" in options("detection", "optimizer")
    assert "loss" in groups("burned_area") and "loss" not in groups("detection")


@pytest.mark.parametrize("app, group, option", CASES, ids=["-".join(case) for case in CASES])
def test_every_choice_builds(app, group, option, datasets, weights, tmp_path):
    cfg = compose_config(app, overrides_for(app, group, option, datasets, weights))
    if app == "detection" and group == "model":
        datamodule = build(cfg.data)
        task = build(cfg.task, **datamodule.task_arguments())
        classes = len(task.class_names)
        heads = {m.num_classes for m in task.detector.modules() if isinstance(getattr(m, "num_classes", None), int)}
        assert classes in heads and task.num_parameters > 0
        assert type(task.detector).__name__ == build(cfg.model.network)(num_classes=classes)["type"]
        assert len(task.configure_callbacks()) == len(cfg.model.callbacks)
    elif group in ("model", "init", "data", "loss", "optimizer", "scheduler"):
        datamodule = build(cfg.data)
        task = build(cfg.task, **datamodule.task_arguments())
        assert torch.isfinite(one_step_loss(task, datamodule, tmp_path))
    elif group == "trainer":
        if cfg.trainer.accelerator == "gpu" and not torch.cuda.is_available():
            pytest.skip(f"trainer={option} needs a GPU")
        from apps.core.training.train import build_trainer

        trainer, checkpoint, _ = build_trainer(cfg, tmp_path)
        assert checkpoint.monitor == cfg.monitor and trainer.max_epochs == cfg.epochs
    elif group == "logger":
        logger = build(cfg.logger, save_dir=str(tmp_path))
        assert Path(logger.log_dir).is_relative_to(tmp_path)
    else:
        built = {name: build(c) for name, c in cfg.callbacks.items() if c and "_target_" in c}
        assert {name: type(callback).__name__ for name, callback in built.items()} == {
            "lr_monitor": "LearningRateMonitor", "test_examples": "TestExamplesFigure"}
