"""Pixel-wise classification shared by the segmentation and change-detection apps."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from apps.core.tasks.losses import build_loss
from apps.core.tasks.base import BaseTask

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_LOSS = {"_target_": "apps.core.tasks.losses.CrossEntropy", "_partial_": True}


def segmentation_scores(confusion: torch.Tensor, positive_class: int) -> dict[str, float]:
    """Scores from a confusion matrix (rows: true class, columns: predicted class), in [0, 1].

    precision, recall, f1 and iou of ``positive_class``; accuracy over all pixels; miou, the mean
    IoU over classes. A ratio whose denominator is zero counts as 0.
    """
    cm = confusion.double()
    tp = cm[positive_class, positive_class]
    fp = cm[:, positive_class].sum() - tp
    fn = cm[positive_class, :].sum() - tp

    def ratio(num: torch.Tensor, den: torch.Tensor) -> float:
        return float(num / den) if den > 0 else 0.0

    diag = torch.diagonal(cm)
    union = cm.sum(0) + cm.sum(1) - diag
    per_class_iou = torch.where(union > 0, diag / union.clamp(min=1), torch.zeros_like(diag))
    return {
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "iou": ratio(tp, tp + fp + fn),
        "accuracy": ratio(diag.sum(), cm.sum()),
        "miou": float(per_class_iou.mean()),
    }


class SegmentationTask(BaseTask):
    """A network that maps a batch to per-pixel class logits (B, C, H, W), trained against class
    targets (B, H, W) in ``batch["mask"]`` with ``ignore_index`` where there is no data.

    Images arrive as floats in [0, 1]; the task standardises them with ``input_mean``/``input_std``
    itself, so a checkpoint carries everything needed to predict on new imagery. Subclasses build
    ``self.net`` and implement ``forward_batch``. Logged per stage (val, test): loss and
    precision, recall, f1, iou of ``positive_class``, accuracy and miou.
    """

    def __init__(
        self,
        optimizer: Mapping,
        scheduler: Mapping | None = None,
        loss: Mapping | None = None,
        class_names: Sequence[str] = ("background", "foreground"),
        positive_class: int = 1,
        ignore_index: int = 255,
        input_mean: Sequence[float] = IMAGENET_MEAN,
        input_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__(optimizer, scheduler)
        self.class_names = list(class_names)
        self.positive_class = positive_class
        self.ignore_index = ignore_index
        self.criterion = build_loss(loss or DEFAULT_LOSS, ignore_index)
        self.register_buffer("input_mean", torch.tensor(input_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("input_std", torch.tensor(input_std).view(1, -1, 1, 1), persistent=False)
        self.confusion = nn.ModuleDict({
            stage: MulticlassConfusionMatrix(len(self.class_names), ignore_index=ignore_index)
            for stage in ("val", "test")
        })

    def standardize(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> standardised per channel."""
        return (image - self.input_mean) / self.input_std

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits (B, C, H, W) for a batch."""
        raise NotImplementedError

    def display_images(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] to show beside the labels in the test figure."""
        return {"image": batch["image"][:, :3]}

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The loss that training minimizes for a batch (the criterion on ``forward_batch``'s logits)."""
        return self.criterion(self.forward_batch(batch), batch["mask"])

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self.training_loss(batch)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, sync_dist=True,
                 batch_size=len(batch["mask"]))
        return loss

    def _evaluate(self, batch: Mapping[str, torch.Tensor], stage: str) -> torch.Tensor:
        logits = self.forward_batch(batch)
        loss = self.criterion(logits, batch["mask"])
        prediction = logits.argmax(1)
        self.confusion[stage].update(prediction, batch["mask"])
        self.log(f"{stage}/loss", loss, on_epoch=True, sync_dist=True, batch_size=len(batch["mask"]))
        return prediction

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        prediction = self._evaluate(batch, "test")
        return {"examples": {**self.display_images(batch), "ground truth": batch["mask"], "prediction": prediction}}

    def _log_scores(self, stage: str) -> None:
        scores = segmentation_scores(self.confusion[stage].compute(), self.positive_class)
        # The confusion matrix is already summed over all processes: sync_dist averages equal values.
        self.log_dict({f"{stage}/{k}": v for k, v in scores.items()}, prog_bar=stage == "val", sync_dist=True)
        self.confusion[stage].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val")

    def on_test_epoch_end(self) -> None:
        self._log_scores("test")
