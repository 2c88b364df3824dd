"""Change-detection baselines on segmentation-models-pytorch U-Nets, as torchgeo's change-detection task builds them.

Both are called ``net(before, after)`` with two (B, C, H, W) images, H and W multiples of 32, and return
a one-element list with the logits (B, num_classes, H, W): the list convention of ChangeFormer V6,
whose earlier elements serve deep supervision. Encoders start from random weights.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from apps.foundation.errors import InputError


def random_unet(in_channels: int, num_classes: int, encoder: str) -> smp.Unet:
    """An smp U-Net with a randomly initialized ``encoder``: (B, in_channels, H, W) -> (B, num_classes, H, W)."""
    if encoder not in smp.encoders.get_encoder_names():
        raise InputError(f"encoder={encoder!r}: not a segmentation-models-pytorch encoder")
    return smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=in_channels, classes=num_classes)


class EarlyFusionUnet(nn.Module):
    """FC-EF (Daudt et al., ICIP 2018): one U-Net on both dates stacked along channels, (B, 2C, H, W)."""

    def __init__(self, unet: smp.Unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        return [self.unet(torch.cat([before, after], dim=1))]


class SiamDiffUnet(nn.Module):
    """FC-Siam-diff (Daudt et al., ICIP 2018), as torchgeo's ``FCSiamDiff``: one encoder for both dates.

    The U-Net decoder gets, at every encoder scale, the after-minus-before difference of the two dates'
    features; at the input scale (smp's identity feature) it gets the after image itself.
    """

    def __init__(self, unet: smp.Unet) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        self.unet.check_input_shape(before)
        # Two encoder passes, not one on a stacked batch: BatchNorm statistics stay per date.
        before_features, after_features = self.unet.encoder(before), self.unet.encoder(after)
        features = [after_features[0]] + [a - b for b, a in zip(before_features[1:], after_features[1:])]
        return [self.unet.segmentation_head(self.unet.decoder(features))]


def build_early_fusion_unet(in_channels: int, num_classes: int, encoder: str = "resnet18") -> EarlyFusionUnet:
    """FC-EF for ``in_channels``-band images: a U-Net with 2 * in_channels inputs."""
    return EarlyFusionUnet(random_unet(2 * in_channels, num_classes, encoder))


def build_fc_siam_diff(in_channels: int, num_classes: int, encoder: str = "resnet18") -> SiamDiffUnet:
    """FC-Siam-diff for ``in_channels``-band images."""
    return SiamDiffUnet(random_unet(in_channels, num_classes, encoder))
