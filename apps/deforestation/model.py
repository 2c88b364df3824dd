"""The deforestation task: change / no change per pixel from a pair of dates, with deep supervision."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from apps.core.config import build
from apps.core.tasks.segmentation import SegmentationTask
from apps.core.tasks.base import plain
from apps.deforestation.changeformer import ChangeFormerV6, load_mit_encoder
from apps.deforestation.data import input_channels
from apps.foundation.errors import InputError

log = logging.getLogger(__name__)


class DeforestationTask(SegmentationTask):
    """A change-detection network called ``net(before, after)`` on (B, C, H, W) images in [0, 1],
    returning a list of logits (B, 2, h, w), coarsest first, the last at full resolution.

    Training minimizes ``sum_i supervision_weights[i] * loss(outputs[i], mask resized to h_i x w_i)``,
    the mask resized by nearest neighbour (ChangeFormer: five outputs, weights 0.5/0.5/0.5/0.8/1.0);
    validation, test and prediction use the last output. The network config (conf/deforestation/model)
    is a partial ``_target_`` completed with ``in_channels`` (from ``bands``) and ``num_classes``;
    ``init.weights_path`` optionally names a local MiT checkpoint for ChangeFormer's encoder.
    """

    #: What loading a checkpoint replaces: its weights make the encoder checkpoint unnecessary.
    CHECKPOINT_OVERRIDES = {"init": {"weights_path": None}}

    def __init__(
        self,
        model: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        init: Mapping[str, Any] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        bands: Sequence[str] = ("nirrg",),
        supervision_weights: Sequence[float] = (0.5, 0.5, 0.5, 0.8, 1.0),
        class_names: Sequence[str] = ("no_change", "change"),
    ) -> None:
        model, init, optimizer, scheduler, loss, bands, supervision_weights, class_names = map(
            plain, (model, init, optimizer, scheduler, loss, bands, supervision_weights, class_names))
        channels = input_channels(bands)
        # The authors' ChangeFormer scales inputs to [-1, 1].
        super().__init__(optimizer, scheduler, loss, class_names=class_names, positive_class=1,
                         input_mean=(0.5,) * channels, input_std=(0.5,) * channels)
        self.save_hyperparameters()
        self.bands = list(bands)
        self.supervision_weights = [float(w) for w in supervision_weights]
        self.net = build(dict(model))(in_channels=channels, num_classes=len(class_names))
        weights_path = (init or {}).get("weights_path")
        if weights_path:
            if not isinstance(self.net, ChangeFormerV6):
                raise InputError(f"init.weights_path: a MiT encoder checkpoint fits ChangeFormer only, not "
                                 f"{type(self.net).__name__}")
            log.info("%s", load_mit_encoder(self.net, weights_path))

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        """Two (B, C, H, W) images in [0, 1] -> the network's list of logits (B, classes, h, w)."""
        return self.net(self.standardize(before), self.standardize(after))

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["before"], batch["after"])[-1]

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        outputs = self(batch["before"], batch["after"])
        if len(outputs) != len(self.supervision_weights):
            raise InputError(f"model.supervision_weights: {len(self.supervision_weights)} weight(s) for a network of "
                             f"{len(outputs)} output(s) ({type(self.net).__name__}); give one per output")
        weights = self.supervision_weights
        mask = batch["mask"][:, None].float()
        total = 0.0
        for weight, logits in zip(weights, outputs):
            target = mask if logits.shape[-2:] == mask.shape[-2:] else F.interpolate(mask, logits.shape[-2:],
                                                                                  mode="nearest")
            total = total + weight * self.criterion(logits, target[:, 0].long())
        return total

    def display_images(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The two dates as RGB (B, 3, H, W): the first three channels, or one channel as grey."""
        def rgb(image: torch.Tensor) -> torch.Tensor:
            return image[:, :3] if image.shape[1] >= 3 else image[:, :1].expand(-1, 3, -1, -1)

        return {"before": rgb(batch["before"]), "after": rgb(batch["after"])}
