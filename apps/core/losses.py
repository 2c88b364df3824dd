"""Segmentation losses chosen by name in conf/loss/."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn


class WeightedSum(nn.Module):
    """A weighted sum of losses, each called as loss(logits, target)."""

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(losses)
        self.weights = dict(weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(self.weights[name] * loss(logits, target) for name, loss in self.losses.items())


def build_segmentation_loss(cfg: Mapping[str, Any], ignore_index: int) -> nn.Module:
    """A loss over logits (B, C, H, W) and class targets (B, H, W), pixels at ``ignore_index`` left out.

    ``cfg["name"]``: ``ce`` (cross-entropy), ``dice``, ``focal`` (``gamma``) or ``ce_dice``
    (``ce_weight`` x cross-entropy + ``dice_weight`` x Dice).
    """
    from segmentation_models_pytorch.losses import DiceLoss, FocalLoss

    name = cfg["name"]
    if name == "ce":
        return nn.CrossEntropyLoss(ignore_index=ignore_index)
    if name == "dice":
        return DiceLoss(mode="multiclass", ignore_index=ignore_index)
    if name == "focal":
        return FocalLoss(mode="multiclass", gamma=float(cfg.get("gamma", 2.0)), ignore_index=ignore_index)
    if name == "ce_dice":
        return WeightedSum(
            {"ce": nn.CrossEntropyLoss(ignore_index=ignore_index),
             "dice": DiceLoss(mode="multiclass", ignore_index=ignore_index)},
            {"ce": float(cfg.get("ce_weight", 1.0)), "dice": float(cfg.get("dice_weight", 1.0))},
        )
    from apps.core.errors import InputError

    raise InputError(f"loss.name={name!r}: unknown loss (expected ce, dice, focal or ce_dice)")
