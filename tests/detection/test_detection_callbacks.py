"""The Runner hooks that detection recipes rely on, as Lightning callbacks, and the weights' moving average."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("mmdet", reason="the detection stack is not installed (scripts/setup.sh --detection)")

from apps.detection.callbacks import InvalidLossCheck, YOLOXModeSwitch  # noqa: E402
from apps.foundation.errors import InputError  # noqa: E402


def named(name: str):
    return type(name, (), {})()


def fake_run(epoch: int, max_epochs: int):
    transforms = [named("Mosaic"), named("RandomAffine"), named("MixUp"), named("YOLOXHSVRandomAug"), named("Resize")]
    train = SimpleNamespace(transforms=transforms)
    trainer = SimpleNamespace(current_epoch=epoch, max_epochs=max_epochs,
                              datamodule=SimpleNamespace(splits={"train": train}))
    module = SimpleNamespace(detector=SimpleNamespace(bbox_head=SimpleNamespace(use_l1=False)))
    return trainer, module, train


@pytest.mark.parametrize("max_epochs, first_switched", [(300, 284), (20, 18), (4, 2)])
def test_yolox_mode_switch_turns_off_mixing_and_adds_l1_at_mmdets_epoch(max_epochs, first_switched):
    switch = YOLOXModeSwitch(last_epochs_fraction=0.05)
    for epoch in (first_switched - 1, first_switched):
        trainer, module, train = fake_run(epoch, max_epochs)
        switch.on_train_epoch_start(trainer, module)
        switched = epoch == first_switched
        assert module.detector.bbox_head.use_l1 is switched
        names = [type(t).__name__ for t in train.transforms]
        assert names == (["YOLOXHSVRandomAug", "Resize"] if switched else
                         ["Mosaic", "RandomAffine", "MixUp", "YOLOXHSVRandomAug", "Resize"])


def test_invalid_loss_stops_training_with_the_step():
    check = InvalidLossCheck(interval=2)
    trainer = SimpleNamespace(global_step=4)
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(1.5)}, None, 0)
    trainer.global_step = 5  # not a checked step
    check.on_train_batch_end(trainer, None, {"loss": torch.tensor(math.nan)}, None, 0)
    trainer.global_step = 6
    with pytest.raises(InputError, match="training step 6: the loss is nan"):
        check.on_train_batch_end(trainer, None, {"loss": torch.tensor(math.nan)}, None, 0)


@pytest.mark.slow
def test_moving_average_follows_training_and_is_what_detects(tmp_path):
    from apps.core.config import compose_app_config
    from apps.detection.task import DetectionTask
    from apps.detection.data import DetectionDataModule
    from helpers.detection import make_box_dataset

    cfg = compose_app_config("detection", ["model=fcos_small"])
    module = DetectionDataModule(str(make_box_dataset(tmp_path / "chips")), batch_size=2, num_workers=0)
    module.setup("fit")
    task = DetectionTask(cfg.model.network, {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
                         ema={"momentum": 0.5, "gamma": 1}, **module.task_arguments())
    batch = next(iter(module.train_dataloader()))
    optimizer = torch.optim.SGD(task.detector.parameters(), lr=0.1)
    for step in range(2):  # the first update copies the weights; the second averages
        optimizer.zero_grad()
        task.training_step(batch, step).backward()
        optimizer.step()
        task.on_train_batch_end(None, batch, step)
    trained = dict(task.detector.named_parameters())
    averaged = dict(task.ema.module.named_parameters())
    name = "bbox_head.conv_cls.weight"
    assert not torch.equal(trained[name], averaged[name])
    assert task.num_parameters == sum(p.numel() for p in task.detector.parameters())
    task.ema.module.bbox_head.conv_cls.bias.data.fill_(-100.0)  # the average scores nothing now
    assert all(len(found["boxes"]) == 0 for found in task.eval().detect(batch["image"]))
