"""The detection task trains as mmengine's Runner would: frozen norms stay frozen under Lightning, and
mixing transforms (YOLOX's Mosaic, MixUp) from a Hydra config draw their extra chips untransformed."""

from __future__ import annotations

import random

import pytest

pytest.importorskip("mmdet", reason="the detection stack is not installed (scripts/setup.sh --detection)")

import pytorch_lightning as pl  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402
from torch.nn.modules.batchnorm import _BatchNorm  # noqa: E402

from apps.detection.task import DetectionTask  # noqa: E402
from apps.detection.data import DetectionDataModule  # noqa: E402
from helpers.detection import make_box_dataset  # noqa: E402

SGD = {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01}
NETWORK = {"_target_": "helpers.detection.tiny_retinanet", "_partial_": True}


@pytest.mark.slow
def test_a_backbone_with_frozen_norms_trains_with_them_in_eval_mode(tmp_path):
    module = DetectionDataModule(str(make_box_dataset(tmp_path / "chips")), batch_size=2, num_workers=0)
    task = DetectionTask(NETWORK, SGD, **module.task_arguments())
    assert task.detector.backbone.norm_eval  # mmdet's ResNet keeps its BatchNorm statistics frozen
    modes = []

    class Probe(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.extend(m.training for m in pl_module.detector.backbone.modules() if isinstance(m, _BatchNorm))

    trainer = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         callbacks=[Probe()])
    trainer.fit(task, datamodule=module)
    assert modes and not any(modes) and task.detector.bbox_head.training


def test_mixing_transforms_from_a_hydra_config_draw_untransformed_chips(tmp_path, monkeypatch):
    root = make_box_dataset(tmp_path / "chips", size=64)
    transforms = OmegaConf.create([  # as Hydra hands them over: ListConfig, not the tuples mmdet asserts
        {"type": "Mosaic", "img_scale": [64, 64], "pad_val": 114.0},
        {"type": "MixUp", "img_scale": [64, 64], "ratio_range": [0.8, 1.6], "pad_val": 114.0}])
    module = DetectionDataModule(str(root), batch_size=2, num_workers=0, train_transforms=transforms)
    module.setup("fit")
    split = module.splits["train"]
    # mmdet's Mosaic and MixUp draw random.randint(0, len(dataset)), both ends included: the index one past the end
    monkeypatch.setattr(random, "randint", lambda low, high: high)
    sample = split[0]
    height, width = sample["image"].shape[-2:]
    assert sample["image"].shape[0] == 3 and len(sample["boxes"]) > 0
    assert (sample["boxes"][:, 2] <= width).all() and (sample["boxes"][:, 3] <= height).all()
