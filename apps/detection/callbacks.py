"""The mmengine Runner hooks that detection recipes rely on, as Lightning callbacks.

A model config asks for them by ``_target_`` (``model.callbacks`` in conf/detection/model/*.yaml);
the detection task hands them to Lightning through ``configure_callbacks``.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import pytorch_lightning as pl
import torch

from apps.foundation.errors import InputError

log = logging.getLogger(__name__)


class YOLOXModeSwitch(pl.Callback):
    """mmdet's YOLOXModeSwitchHook: for the last epochs, drop the training transforms named in
    ``skip_types`` (mosaic, random affine, mixup) and add the L1 box loss.

    The last epochs are ``last_epochs_fraction`` of the run's (mmdet: 15 of 300, 0.05), at least one,
    so shorter runs keep the recipe's proportion. The switch happens at the start of the first epoch
    ``e`` with ``e + 1 >= max_epochs - last`` (mmdet's rule), again after a resume; the data module's
    loader workers are made anew each epoch, so they see the new transforms.
    """

    def __init__(self, last_epochs_fraction: float = 0.05,
                 skip_types: Sequence[str] = ("Mosaic", "RandomAffine", "MixUp")):
        if not 0 < last_epochs_fraction <= 1:
            raise InputError(f"YOLOXModeSwitch.last_epochs_fraction: must be in (0, 1], got {last_epochs_fraction}")
        self.last_epochs_fraction = float(last_epochs_fraction)
        self.skip_types = tuple(skip_types)

    def last_epochs(self, max_epochs: int) -> int:
        """Epochs at the end of a ``max_epochs`` run without the skipped transforms."""
        return max(1, round(self.last_epochs_fraction * max_epochs))

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch + 1 < trainer.max_epochs - self.last_epochs(trainer.max_epochs):
            return
        head = pl_module.detector.bbox_head
        if getattr(head, "use_l1", None) is True:
            return
        train = trainer.datamodule.splits["train"]
        train.transforms = [t for t in train.transforms if type(t).__name__ not in self.skip_types]
        head.use_l1 = True
        log.info("epoch %d: no %s from now on, L1 box loss added", trainer.current_epoch, "/".join(self.skip_types))


class SyncNorm(pl.Callback):
    """mmdet's SyncNormHook: before each validation, average the norm layers' running statistics
    over the processes of a distributed run (each process saw other images); nothing on one process."""

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.world_size == 1:
            return
        from mmdet.engine.hooks.sync_norm_hook import get_norm_states
        from mmdet.utils import all_reduce_dict

        states = get_norm_states(pl_module.detector)
        if states:
            pl_module.detector.load_state_dict(all_reduce_dict(states, op="mean"), strict=False)


class InvalidLossCheck(pl.Callback):
    """mmdet's CheckInvalidLossHook: every ``interval`` training steps, stop with an error naming the
    step when the loss is NaN or infinite (SSD's recipe)."""

    def __init__(self, interval: int = 50):
        self.interval = int(interval)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step % self.interval:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None and not math.isfinite(float(torch.as_tensor(loss).detach())):
            raise InputError(f"training step {trainer.global_step}: the loss is {float(loss)} (lower lr= or "
                             "check the boxes of the dataset)")
