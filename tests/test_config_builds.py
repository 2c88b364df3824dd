"""Every choice of every config group of every training app builds (not only composes): networks,
initialisations, data, losses, optimizers and schedules, trainers, loggers and callbacks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from coretools import CONF_DIR, compose_config

from apps.core.config import build

pytestmark = pytest.mark.slow  # builds some 50 networks and loaders; compose-only checks run in the fast tier

SMALL_NETWORK = {"burned_area": ["model.encoder=resnet18"], "deforestation": ["model=fc_siam_diff"]}
"""The cheapest network of each app, for the groups that are not about the network."""
APP_GROUPS = ("model", "init", "data")
SHARED_GROUPS = ("optimizer", "scheduler", "loss", "trainer", "logger", "callbacks")


def options(app: str, group: str) -> list[str]:
    """The choices of ``group`` that ``app``'s config offers: its own folder, else the shared one."""
    root = Path(CONF_DIR)
    folders = [root / app / group, root / "segmentation" / group, root / group]
    return sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})


CASES = [(app, group, option) for app in ("burned_area", "deforestation")
         for group in (*APP_GROUPS, *SHARED_GROUPS) for option in options(app, group)]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    from data_prep.synthetic_chips import make_chip_dataset, make_pair_chip_dataset

    root = tmp_path_factory.mktemp("datasets")
    return {"burned_area": make_chip_dataset(root / "segmentation", chips_per_scene=2, size=32),
            "deforestation": make_pair_chip_dataset(root / "pairs", chips_per_scene=2, size=32)}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    """Local pretrained-weight files: a ResNet-18 ImageNet-style state dict and a MiT-style encoder checkpoint."""
    import segmentation_models_pytorch as smp

    from apps.deforestation.changeformer import build_changeformer_v6

    root = tmp_path_factory.mktemp("weights")
    torch.save(smp.encoders.get_encoder("resnet18", weights=None).state_dict(), root / "resnet18.imagenet.pth")
    torch.save(build_changeformer_v6().encoder.state_dict(), root / "mit.pth")
    return {"burned_area": root / "resnet18.imagenet.pth", "deforestation": root / "mit.pth"}


def overrides_for(app: str, group: str, option: str, datasets, weights) -> list[str]:
    small = [o for o in SMALL_NETWORK[app] if not (o.startswith("model=") and group in ("model", "init"))]
    extra = [*small, f"{group}={option}", f"data.root={datasets[app]}", "num_workers=0"]
    if group == "init" and option != "random":
        extra.append(f"init.weights_path={weights[app]}")
    return extra


@pytest.mark.parametrize("app, group, option", CASES, ids=["-".join(case) for case in CASES])
def test_every_choice_builds(app, group, option, datasets, weights, tmp_path):
    cfg = compose_config(app, overrides_for(app, group, option, datasets, weights))
    if group in ("model", "init", "data", "loss", "optimizer", "scheduler"):
        task = build(cfg.task)
        datamodule = build(cfg.data)
        datamodule.setup("fit")
        batch = next(iter(datamodule.train_dataloader()))
        task.configure_optimizers()
        loss = task.training_loss(batch)
        assert torch.isfinite(loss)
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
