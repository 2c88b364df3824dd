"""The LightningModule base that every app's task extends: optimizer and schedule from the config."""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf


def plain(cfg: Any) -> Any:
    """``cfg`` with every DictConfig/ListConfig turned into plain dicts and lists (checkpoints hold
    hyperparameters that load with ``torch.load(weights_only=True)``)."""
    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


class BaseTask(pl.LightningModule):
    """Optimizer and learning-rate schedule built from their config groups.

    ``optimizer`` is a partial ``_target_`` config (conf/optimizer/*.yaml) completed with the
    trainable parameters; ``scheduler`` likewise (conf/scheduler/*.yaml), stepped once per epoch,
    or ``_target_: null`` for a constant learning rate.

    A checkpoint names the task's class (``task_class``) and carries ``preparation``, how the training
    dataset was made (its ``dataset.json`` attrs and arrays), so prediction loads any app's checkpoint
    and prepares new imagery the same way.
    """

    #: Hyperparameters replaced when a checkpoint is loaded for prediction (e.g. a pretrained-weights
    #: file that only the start of training needs).
    CHECKPOINT_OVERRIDES: dict[str, Any] = {}

    def __init__(self, optimizer: Mapping, scheduler: Mapping | None = None) -> None:
        super().__init__()
        self.optimizer_cfg = dict(plain(optimizer))
        self.scheduler_cfg = dict(plain(scheduler) or {})
        self.preparation: dict[str, Any] = {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["task_class"] = f"{type(self).__module__}.{type(self).__qualname__}"
        checkpoint["preparation"] = self.preparation

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.preparation = checkpoint.get("preparation", {})

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """The step, then the gradients released (set to None) at once, as mmengine's OptimWrapper does:
        the next forward pass then runs without them in memory (one model's size less at its peak)."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        optimizer.zero_grad(set_to_none=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: Any) -> None:
        """Nothing: ``optimizer_step`` has released the gradients (Lightning would zero them before each
        accumulation window's first backward, keeping the last step's through the forward pass)."""

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = instantiate(self.optimizer_cfg)(params)
        if not self.scheduler_cfg.get("_target_"):
            return optimizer
        scheduler = instantiate(self.scheduler_cfg)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    @property
    def num_parameters(self) -> int:
        """Number of parameters of the model (trainable or not)."""
        return sum(p.numel() for p in self.parameters())
