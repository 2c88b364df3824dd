"""ViTDet's simple feature pyramid (Li et al. 2022), registered in mmdet's MODELS as ``SimpleFeaturePyramid``.

A plain ViT gives one feature map at stride 16; the pyramid derives strides 4, 8, 16 and 32 from
it (two deconvolutions, one deconvolution, identity, max-pooling), each followed by a 1x1 and a
3x3 convolution with channel-wise layer norm, plus a stride-64 level by subsampling the last, so
mmdet's FPN heads (RPN anchors at strides 4..64) take it as they take an FPN. mmdet ships
ViTDet's version in its repository's ``projects/``, which the wheel leaves out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.model import BaseModule
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """Layer norm over the channels of each position of a (B, C, H, W) map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
                         LayerNorm2d(out_channels))


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """(B, in_channels, H/16, W/16), the last map of the backbone's outputs -> ``num_outs`` maps
    (B, out_channels, H/s, W/s) at strides s = 4, 8, 16, 32 (and 64, ...: max-pooled by 2 from the
    previous level, as mmdet's FPN does)."""

    def __init__(self, in_channels: int = 768, out_channels: int = 256, num_outs: int = 5,
                 init_cfg: dict | list | None = None) -> None:
        if init_cfg is None:
            init_cfg = dict(type="Xavier", layer=["Conv2d", "ConvTranspose2d"], distribution="uniform")
        super().__init__(init_cfg)
        if num_outs < 4:
            raise ValueError(f"SimpleFeaturePyramid: num_outs {num_outs} < 4")
        half, quarter = in_channels // 2, in_channels // 4
        self.num_outs = num_outs
        self.scales = nn.ModuleList([
            nn.Sequential(nn.ConvTranspose2d(in_channels, half, 2, stride=2), LayerNorm2d(half), nn.GELU(),
                          nn.ConvTranspose2d(half, quarter, 2, stride=2)),   # stride 16 -> 4
            nn.ConvTranspose2d(in_channels, half, 2, stride=2),              # 16 -> 8
            nn.Identity(),                                                   # 16
            nn.MaxPool2d(2, stride=2),                                       # 16 -> 32
        ])
        self.lateral_convs = nn.ModuleList(_conv_norm(c, out_channels, 1) for c in (quarter, half, in_channels, in_channels))
        self.output_convs = nn.ModuleList(_conv_norm(out_channels, out_channels, 3) for _ in range(4))

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        features = inputs[-1]
        outs = [output(lateral(scale(features)))
                for scale, lateral, output in zip(self.scales, self.lateral_convs, self.output_convs)]
        while len(outs) < self.num_outs:
            outs.append(F.max_pool2d(outs[-1], 1, stride=2))
        return tuple(outs)
