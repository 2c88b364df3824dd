"""Burned-area segmentation networks: segmentation-models-pytorch architectures."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import torch

from apps.foundation.errors import InputError
from apps.core.config import build
from apps.core.tasks.segmentation import SegmentationTask
from apps.core.tasks.base import plain
from apps.core.tasks.weights import find_weights_file, load_encoder_weights

log = logging.getLogger(__name__)

ARCHITECTURES = ("unet", "unetplusplus", "deeplabv3", "deeplabv3plus")


def smp_network(in_channels: int, num_classes: int, arch: str, encoder: str, init: Mapping[str, Any] | None = None,
                **arch_kwargs: Any) -> torch.nn.Module:
    """The smp network ``arch`` (one of ``ARCHITECTURES``) on ``encoder``: (B, in_channels, H, W) -> logits
    (B, num_classes, H, W); ``arch_kwargs`` go to the architecture (``encoder_depth``, ``decoder_channels``, ...).

    The ``_target_`` of conf/burned_area/model/*.yaml (partial: the task gives ``in_channels``,
    ``num_classes`` and ``init``). ``init["weights"]``: None (random) or "imagenet", read from a local
    file (see conf/init).
    """
    import segmentation_models_pytorch as smp

    init = init or {}
    if arch not in ARCHITECTURES:
        raise InputError(f"model.arch={arch!r}: unknown architecture (expected one of {', '.join(ARCHITECTURES)})")
    if encoder not in smp.encoders.get_encoder_names():
        raise InputError(f"model.encoder={encoder!r}: not a segmentation-models-pytorch encoder")
    net = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3, classes=num_classes,
                           **arch_kwargs)
    weights = init.get("weights")
    if weights:
        settings = smp.encoders.encoders[encoder]["pretrained_settings"].get(weights)
        if settings is None:
            raise InputError(f"init={weights}: encoder {encoder!r} has no such pretrained weights")
        path = find_weights_file(
            init.get("weights_path"), init["weights_dir"], f"{encoder}.{weights}",
            what=f"init={weights} for encoder {encoder}",
            source_hint=f"get model.safetensors of the Hugging Face repo {settings['repo_id']}",
        )
        log.info("%s", load_encoder_weights(net.encoder, path))
    if in_channels != 3:
        net.encoder.set_in_channels(in_channels, pretrained=bool(weights))
    return net


class BurnedAreaTask(SegmentationTask):
    """Burned / unburned per pixel from a 3-band chip (B, 3, H, W) in [0, 1].

    ``model`` (conf/burned_area/model) is a partial ``_target_`` config completed with ``in_channels``,
    ``num_classes`` and ``init``, by default ``smp_network``. ``input_set`` (normalized or tci) is recorded
    so that whole-scene prediction prepares imagery the way the network was trained.
    """

    #: The checkpoint's weights replace any pretrained encoder file.
    CHECKPOINT_OVERRIDES = {"init": {"weights": None}}

    def __init__(
        self,
        model: Mapping[str, Any],
        init: Mapping[str, Any],
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any] | None = None,
        loss: Mapping[str, Any] | None = None,
        input_set: str = "normalized",
        class_names: Sequence[str] = ("unburned", "burned"),
        in_channels: int = 3,
    ) -> None:
        model, init, optimizer, scheduler, loss, class_names = map(
            plain, (model, init, optimizer, scheduler, loss, class_names))
        super().__init__(optimizer, scheduler, loss, class_names=class_names, positive_class=1)
        self.save_hyperparameters()
        self.input_set = input_set
        self.net = build(dict(model))(in_channels=in_channels, num_classes=len(class_names), init=dict(init))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> logits (B, classes, H, W)."""
        return self.net(self.standardize(image))

    def forward_batch(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return self(batch["image"])
