"""Pixel-wise losses that the segmentation configs (conf/segmentation/loss/) name by ``_target_``.

Each loss config is a partial: the task completes it with its ``ignore_index``, so every loss
leaves out the pixels without a label. Losses are called as ``loss(logits, target)`` with logits
(B, C, H, W) and class targets (B, H, W) int64.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class CrossEntropy(nn.CrossEntropyLoss):
    """Cross-entropy with optional per-class weights (``class_weights``, one per class)."""

    def __init__(self, ignore_index: int, class_weights: Sequence[float] | None = None) -> None:
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        super().__init__(weight=weight, ignore_index=ignore_index)


class FocalLoss(nn.Module):
    """Softmax focal loss (Lin et al. 2017): each labelled pixel's cross-entropy -log p_t times
    (1 - p_t)^``gamma``, optionally times its class's weight, averaged over labelled pixels.

    Written here because segmentation-models-pytorch's multiclass focal loss is one-vs-rest sigmoid,
    which does not match the softmax probabilities the tasks and whole-scene prediction use.
    """

    def __init__(self, ignore_index: int, gamma: float = 2.0, class_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.ignore_index, self.gamma = ignore_index, float(gamma)
        weight = torch.tensor(list(class_weights), dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        labelled = target != self.ignore_index
        safe_target = torch.where(labelled, target, 0)
        log_p_t = F.log_softmax(logits.float(), dim=1).gather(1, safe_target[:, None])[:, 0]
        loss = -(1 - log_p_t.exp()).pow(self.gamma) * log_p_t
        if self.weight is not None:
            loss = loss * self.weight[safe_target]
        return loss[labelled].mean() if labelled.any() else loss.sum() * 0


class WeightedSum(nn.Module):
    """``sum(weights[name] * loss(logits, target))`` over named losses, each built with ``ignore_index``."""

    def __init__(self, ignore_index: int, losses: Mapping[str, Callable[..., nn.Module]],
                 weights: Mapping[str, float]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict({name: make(ignore_index=ignore_index) for name, make in losses.items()})
        self.weights = {name: float(weights[name]) for name in self.losses}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())


def build_loss(cfg: Mapping, ignore_index: int) -> nn.Module:
    """The loss of config ``cfg`` (a partial ``_target_`` node) for targets with ``ignore_index``."""
    from apps.core.config import build

    return build(dict(cfg))(ignore_index=ignore_index)
