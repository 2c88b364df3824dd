"""ChangeFormer V6 (Bandara & Patel, IGARSS 2022): bi-temporal change detection with a Siamese MiT encoder.

Layer for layer the authors' ``ChangeFormerV6(input_nc, output_nc, decoder_softmax=False, embed_dim=256)``:
41,026,674 parameters for 3 input channels and 2 classes.

- Encoder, shared by both dates: a Mix Transformer (MiT) with widths 64/128/320/512, depths 3/3/4/3,
  1/2/4/8 heads, key/value spatial reduction 8/4/2/1, MLP ratio 4 with a depth-wise 3x3 convolution.
  Every stage starts with an overlapping 7x7 patch embedding: stride 4 in the first stage, 2 after
  (the authors pass their 7x7 patch size to all four stages, where MiT-B* has 3x3 after the first).
  Dropout 0.1 (attention weights, attention and MLP outputs); stochastic depth rising from 0 to 0.1
  over the 13 blocks.
- Decoder: per scale, both dates' features are projected to 256 channels and compared by a
  convolutional difference module, to which the upsampled difference of the coarser scale is added;
  a small head predicts change at every scale. The four differences, fused at H/4, go through two
  x2 transposed convolutions with residual blocks to the full-resolution prediction.

Initialization as in the authors' modules: MiT's in the encoder (``init_mit_weights``), PyTorch's
defaults in the decoder.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_
from timm.models import adapt_input_conv
from torch import nn

from apps.core.tasks.weights import read_state_dict
from apps.foundation.errors import InputError

EMBED_DIMS = (64, 128, 320, 512)
DEPTHS = (3, 3, 4, 3)
NUM_HEADS = (1, 2, 4, 8)
SPATIAL_REDUCTION = (8, 4, 2, 1)
PATCH_STRIDES = (4, 2, 2, 2)
PATCH_KERNEL = 7
MLP_RATIO = 4
DROPOUT = 0.1
DROP_PATH = 0.1
DECODER_DIM = 256

#: Leading parts of checkpoint keys dropped before matching encoder tensors (DataParallel, Lightning
#: modules, mmsegmentation/SegFormer models, this network's own state dict).
CHECKPOINT_PREFIXES = ("module.", "model.", "net.", "backbone.", "encoder.")
MIT_KEY = re.compile(r"(patch_embed|block|norm)([1-4])\.(.+)")
MIT_PARTS = {"patch_embed": "patch_embed", "block": "blocks", "norm": "norm"}


def init_mit_weights(module: nn.Module) -> None:
    """The MiT initialization: Linear truncated-normal (std 0.02), LayerNorm 1/0, Conv2d normal by fan-out."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


@functools.cache
def channels_last_weight_gradients_are_slow(device_type: str) -> bool:
    """Whether oneDNN computes convolution weight gradients of channels-last maps far slower than of
    NCHW ones on ``device_type``: on CPUs without AVX512, where it has no brgemm kernel for them
    (about 4x for the decoder's full-resolution 3x3 256->256 convolutions on AVX2)."""
    return device_type == "cpu" and torch.backends.cpu.get_cpu_capability() not in ("AVX512", "AMX")


def tokens_to_map(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, height*width, C) tokens -> (B, C, height, width) feature map.

    A channels-last view of the tokens (the layout the authors' network runs its convolutions in),
    copied to NCHW where gradients will flow back through it and
    ``channels_last_weight_gradients_are_slow``: the same values in another memory layout.
    """
    maps = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, height, width)
    if tokens.requires_grad and channels_last_weight_gradients_are_slow(tokens.device.type):
        return maps.contiguous()
    return maps


class OverlapPatchEmbedding(nn.Module):
    """Strided 7x7 convolution (padding 3) + LayerNorm: (B, C_in, H, W) -> tokens (B, h*w, dim), h, w."""

    def __init__(self, in_channels: int, dim: int, stride: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, PATCH_KERNEL, stride=stride, padding=PATCH_KERNEL // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        features = self.proj(image)
        height, width = features.shape[-2:]
        return self.norm(features.flatten(2).transpose(1, 2)), height, width


class EfficientSelfAttention(nn.Module):
    """Multi-head self-attention whose keys and values come from a map shrunk by ``reduction`` per side.

    tokens (B, h*w, dim) -> (B, h*w, dim).
    """

    def __init__(self, dim: int, num_heads: int, reduction: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(DROPOUT)
        self.reduction = reduction
        if reduction > 1:
            self.sr = nn.Conv2d(dim, dim, reduction, stride=reduction)
            self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        batch, length, dim = tokens.shape
        head_dim = dim // self.num_heads
        q = self.q(tokens).reshape(batch, length, self.num_heads, head_dim).transpose(1, 2)
        context = tokens
        if self.reduction > 1:
            context = self.norm(self.sr(tokens_to_map(tokens, height, width)).flatten(2).transpose(1, 2))
        k, v = self.kv(context).reshape(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=DROPOUT if self.training else 0.0)
        return self.proj_drop(self.proj(attended.transpose(1, 2).reshape(batch, length, dim)))


class MixFeedForward(nn.Module):
    """Linear -> depth-wise 3x3 conv -> GELU -> Linear, with dropout: tokens (B, h*w, dim) -> same shape."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.dwconv = nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, groups=hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop = nn.Dropout(DROPOUT)

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        hidden = self.dwconv(tokens_to_map(self.fc1(tokens), height, width)).flatten(2).transpose(1, 2)
        return self.drop(self.fc2(self.drop(self.act(hidden))))


class TransformerBlock(nn.Module):
    """Pre-norm attention and feed-forward, each a residual with stochastic depth: (B, h*w, dim) -> same."""

    def __init__(self, dim: int, num_heads: int, reduction: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = EfficientSelfAttention(dim, num_heads, reduction)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MixFeedForward(dim, MLP_RATIO * dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens), height, width))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens), height, width))


class EncoderStage(nn.Module):
    """Patch embedding, transformer blocks and LayerNorm: (B, C_in, H, W) -> (B, dim, H/stride, W/stride)."""

    def __init__(self, in_channels: int, dim: int, stride: int, num_heads: int, reduction: int,
                 drop_paths: list[float]) -> None:
        super().__init__()
        self.patch_embed = OverlapPatchEmbedding(in_channels, dim, stride)
        self.blocks = nn.ModuleList(TransformerBlock(dim, num_heads, reduction, rate) for rate in drop_paths)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens, height, width = self.patch_embed(image)
        for block in self.blocks:
            tokens = block(tokens, height, width)
        return tokens_to_map(self.norm(tokens), height, width)


class MixTransformerEncoder(nn.Module):
    """The MiT encoder of ChangeFormer V6: (B, C, H, W) -> 4 maps (B, 64|128|320|512, H/4|8|16|32, W/4|8|16|32)."""

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        drop_paths = torch.linspace(0, DROP_PATH, sum(DEPTHS)).tolist()
        starts = [sum(DEPTHS[:stage]) for stage in range(len(DEPTHS))]
        self.stages = nn.ModuleList(
            EncoderStage(stage_in, dim, stride, heads, reduction, drop_paths[start:start + depth])
            for stage_in, dim, stride, heads, reduction, start, depth in zip(
                (in_channels, *EMBED_DIMS[:-1]), EMBED_DIMS, PATCH_STRIDES, NUM_HEADS, SPATIAL_REDUCTION,
                starts, DEPTHS)
        )
        self.apply(init_mit_weights)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for stage in self.stages:
            image = stage(image)
            features.append(image)
        return features


def difference_module(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv3x3 -> ReLU -> BatchNorm -> Conv3x3 -> ReLU: (B, in, h, w) -> (B, out, h, w)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(out_channels),
        nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.ReLU(),
    )


def prediction_head(in_channels: int, num_classes: int) -> nn.Sequential:
    """Conv3x3 -> ReLU -> BatchNorm -> Conv3x3: (B, in, h, w) -> logits (B, num_classes, h, w)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, num_classes, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(num_classes),
        nn.Conv2d(num_classes, num_classes, 3, padding=1),
    )


class ResidualBlock(nn.Module):
    """x + 0.1 * Conv3x3(ReLU(Conv3x3(x))): (B, C, h, w) -> same shape."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.add(features, self.conv2(F.relu(self.conv1(features))), alpha=0.1)


def upsample_x2(channels: int) -> nn.ConvTranspose2d:
    """4x4 transposed convolution, stride 2: (B, C, h, w) -> (B, C, 2h, 2w)."""
    return nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)


def resize(features: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Bilinear resampling of (B, C, h, w) to (B, C, *size), corners not aligned."""
    return F.interpolate(features, size=size, mode="bilinear", align_corners=False)


class DifferenceDecoder(nn.Module):
    """The ChangeFormer V6 decoder: the two dates' encoder features -> 5 logit maps, coarsest first.

    Given features of H/4, H/8, H/16, H/32 for each date, returns logits (B, num_classes, h, w) at
    H/32, H/16, H/8, H/4 and H (width alike): the per-scale predictions from the coarsest up, then
    the final full-resolution prediction.
    """

    def __init__(self, encoder_dims: tuple[int, ...], dim: int, num_classes: int) -> None:
        super().__init__()
        self.embed = nn.ModuleList(nn.Linear(encoder_dim, dim) for encoder_dim in encoder_dims)
        self.difference = nn.ModuleList(difference_module(2 * dim, dim) for _ in encoder_dims)
        self.predict = nn.ModuleList(prediction_head(dim, num_classes) for _ in encoder_dims)
        self.fuse = nn.Sequential(nn.Conv2d(len(encoder_dims) * dim, dim, 1), nn.BatchNorm2d(dim))
        self.upsample = nn.Sequential(upsample_x2(dim), ResidualBlock(dim), upsample_x2(dim), ResidualBlock(dim))
        self.classify = nn.Conv2d(dim, num_classes, 3, padding=1)

    def project(self, scale: int, features: torch.Tensor) -> torch.Tensor:
        """Per-pixel Linear of one scale: (B, encoder_dim, h, w) -> (B, dim, h, w)."""
        height, width = features.shape[-2:]
        return tokens_to_map(self.embed[scale](features.flatten(2).transpose(1, 2)), height, width)

    def forward(self, before: list[torch.Tensor], after: list[torch.Tensor]) -> list[torch.Tensor]:
        logits, differences = [], []
        for scale in reversed(range(len(before))):
            pair = torch.cat([self.project(scale, before[scale]), self.project(scale, after[scale])], dim=1)
            difference = self.difference[scale](pair)
            if differences:
                difference = difference + resize(differences[-1], difference.shape[-2:])
            logits.append(self.predict[scale](difference))
            differences.append(difference)
        finest = differences[-1].shape[-2:]
        fused = self.fuse(torch.cat([resize(difference, finest) for difference in differences], dim=1))
        logits.append(self.classify(self.upsample(fused)))
        return logits


class ChangeFormerV6(nn.Module):
    """``net(before, after)``: two (B, C, H, W) images -> 5 logit maps (B, num_classes, h, w), coarsest first.

    The maps are at H/32, H/16, H/8, H/4 and H (W alike, for H and W multiples of 32); the last one
    is the prediction, the others serve deep supervision. Logits: no softmax is applied.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2) -> None:
        super().__init__()
        self.encoder = MixTransformerEncoder(in_channels)
        self.decoder = DifferenceDecoder(EMBED_DIMS, DECODER_DIM, num_classes)

    def forward(self, before: torch.Tensor, after: torch.Tensor) -> list[torch.Tensor]:
        # One encoder pass over both dates: it has no batch statistics, so this equals two passes.
        features = self.encoder(torch.cat([before, after]))
        pairs = [scale.chunk(2) for scale in features]
        return self.decoder([b for b, _ in pairs], [a for _, a in pairs])


def build_changeformer_v6(in_channels: int = 3, num_classes: int = 2) -> ChangeFormerV6:
    """ChangeFormer V6 for ``in_channels``-band images (1 for NDVI/EVI, 3 for NIR-R-G, more for stacks)."""
    return ChangeFormerV6(in_channels, num_classes)


def encoder_key(checkpoint_key: str) -> str:
    """The encoder's name for a checkpoint key, prefixes such as ``backbone.`` dropped.

    MiT names are mapped (``block2.0.mlp.dwconv.dwconv.weight`` -> ``stages.1.blocks.0.mlp.dwconv.weight``);
    other keys come back without their prefixes.
    """
    key = checkpoint_key
    while key.startswith(CHECKPOINT_PREFIXES):
        key = key.split(".", 1)[1]
    match = MIT_KEY.fullmatch(key)
    if match is None:
        return key
    part, stage, rest = match.groups()
    return f"stages.{int(stage) - 1}.{MIT_PARTS[part]}.{rest.replace('dwconv.dwconv.', 'dwconv.')}"


def fit_patch_kernel(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A checkpoint's patch-embedding kernel (out, in, k, k) fitted to ``shape`` where that keeps its meaning.

    - 3 input channels to another count: timm's ``adapt_input_conv`` (1 band: the sum over RGB;
      C bands: RGB repeated and scaled by 3/C).
    - A smaller odd kernel (MiT-B*'s 3x3, padding 1, after the first stage) is zero-padded around its
      centre to 7x7 (padding 3): the convolution computes exactly the same.

    Other shapes are returned unchanged for the caller to report.
    """
    if weight.shape[1] == 3 and shape[1] != 3:
        weight = adapt_input_conv(shape[1], weight)
    margin = (shape[-1] - weight.shape[-1]) // 2
    if margin > 0 and weight.shape[-1] % 2 == 1:
        weight = F.pad(weight, (margin,) * 4)
    return weight


def load_mit_encoder(net: ChangeFormerV6, path: str | Path) -> str:
    """Load the encoder of ``net`` from a local MiT / SegFormer checkpoint; returns a one-line summary.

    Reads .pth/.pt (plain state dict or under 'state_dict'/'model') or .safetensors, with MiT key names
    (``patch_embed1.proj.weight``, ``block1.0.attn.q.weight``, ``norm1.weight``, ...) or this encoder's
    own, optionally prefixed (``backbone.``, ``encoder.``, ``module.``, ...); other keys are ignored.
    Patch-embedding kernels are fitted by ``fit_patch_kernel``: the first one when the network has
    other than 3 input channels, and MiT's 3x3 kernels of stages 2-4. MiT-B2 and larger cover the
    encoder (depths 3/3/4/3); MiT-B0 (narrower) and MiT-B1 (2 blocks per stage) do not.

    Raises InputError when the file is missing or unreadable, or when any encoder tensor is missing
    from it or has another shape; the encoder is then left unchanged.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InputError(
            f"MiT encoder checkpoint {path} not found: provide a local MiT-B2 (or larger) or SegFormer-B2+ "
            f"checkpoint (.pth, .pt or .safetensors); nothing is downloaded")
    expected = net.encoder.state_dict()
    found = {encoder_key(key): tensor for key, tensor in read_state_dict(path).items()}
    state, adapted = {}, []
    for name, target in expected.items():
        if name not in found:
            continue
        tensor = found[name]
        if tensor.shape != target.shape and name.endswith("patch_embed.proj.weight"):
            tensor = fit_patch_kernel(tensor, target.shape)
            adapted.append(f"{name} {tuple(found[name].shape)}->{tuple(tensor.shape)}")
        state[name] = tensor
    missing = [name for name in expected if name not in state]
    reshaped = [f"{name} {tuple(state[name].shape)} != {tuple(target.shape)}"
                for name, target in expected.items() if name in state and state[name].shape != target.shape]
    problems = [f"{len(names)} of {len(expected)} tensors {what} (first: {', '.join(names[:3])})"
                for names, what in ((missing, "missing"), (reshaped, "of another shape")) if names]
    if problems:
        raise InputError(
            f"MiT encoder checkpoint {path} does not fit the ChangeFormer V6 encoder: {'; '.join(problems)}; "
            f"it takes MiT-B2 or larger, with MiT key names (patch_embed1.*, block1.0.*, norm1.*)")
    net.encoder.load_state_dict(state)
    summary = f"{len(state)} encoder tensors loaded from {path}"
    return f"{summary}; fitted {', '.join(adapted)}" if adapted else summary
