"""The dense descriptor network: a fully-convolutional encoder with a feature-pyramid decoder.

Dense Object Nets use a ResNet-34 whose stride-8 output is upsampled to the input resolution.
Here an encoder from ``backbones.py`` (EfficientNet-lite0 by default, or ResNet-18/34) feeds a
top-down decoder that merges every stage from stride 32 down to the stem (stride 2) and a small
full-resolution branch, so that the descriptor can change from one pixel to the next: a match
must be found to about a pixel, and at reduced working resolutions a stride-4 descriptor
interpolated bilinearly cannot be that sharp. The decoder narrows as it gets finer to stay cheap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nerf_descriptor_ros.descriptors.backbones import DescriptorConfigError, backbone_spec, build_backbone

DEFAULT_BACKBONE = "efficientnet_lite0"
# Five stride-2 steps down to the deepest stage: inputs are padded to a multiple of this.
SIZE_MULTIPLE = 32
# Smallest image side the network accepts: half a cell of the deepest stage (the input is padded
# to whole cells; below this it would be mostly padding).
MIN_SIZE = 16


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DescriptorNet(nn.Module):
    """Image (N,3,H,W), normalised -> descriptors (N,D,H,W) at the same resolution."""

    def __init__(self, descriptor_dim: int, backbone: str = DEFAULT_BACKBONE, decoder_channels: int = 128):
        super().__init__()
        if not isinstance(descriptor_dim, int) or descriptor_dim < 1:
            raise DescriptorConfigError(f"descriptor dimension must be a positive integer, got {descriptor_dim!r}")
        if not isinstance(decoder_channels, int) or decoder_channels < 4:
            raise DescriptorConfigError(f"decoder_channels must be an integer >= 4, got {decoder_channels!r}")
        self.descriptor_dim = descriptor_dim
        self.backbone_name = backbone
        spec = backbone_spec(backbone)
        self.normalisation = spec.normalisation
        self.backbone = build_backbone(backbone)
        c4, c2, c1 = decoder_channels, decoder_channels // 2, decoder_channels // 4
        # Strides 32..4: lateral 1x1 convolutions to c4 channels, summed top-down (FPN).
        self.lateral = nn.ModuleList(nn.Conv2d(c, c4, 1) for c in spec.channels[1:])
        self.smooth4 = _conv_bn_relu(c4, c4)
        # Stride 2 (the stem) and stride 1 (a small branch on the image itself).
        self.reduce2, self.lateral2 = nn.Conv2d(c4, c2, 1), nn.Conv2d(spec.channels[0], c2, 1)
        self.smooth2 = _conv_bn_relu(c2, c2)
        self.full_resolution = _conv_bn_relu(3, c1)
        self.reduce1, self.smooth1 = nn.Conv2d(c2, c1, 1), _conv_bn_relu(c1, c1)
        self.head = nn.Conv2d(c1, descriptor_dim, 1)
        # Channels-last convolutions (and their bilinear upsampling's backward) run markedly faster
        # on a CPU; ``forward`` gives its inputs the same layout.
        self.to(memory_format=torch.channels_last)

    @property
    def decoder_channels(self) -> int:
        return self.lateral[0].out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise DescriptorConfigError(f"expected images shaped (N, 3, H, W), got {tuple(images.shape)}")
        height, width = images.shape[-2:]
        check_input_size(width, height)
        pad_h, pad_w = -height % SIZE_MULTIPLE, -width % SIZE_MULTIPLE
        if pad_h or pad_w:  # replicate the border so that any size works; cropped again below
            images = F.pad(images, (0, pad_w, 0, pad_h), mode="replicate")
        images = images.contiguous(memory_format=torch.channels_last)
        stem, *stages = self.backbone(images)
        x = self.lateral[3](stages[3])
        for level in (2, 1, 0):
            x = self.lateral[level](stages[level]) + _upsample(x, stages[level])
        x = self.smooth4(x)
        # A 1x1 convolution and bilinear upsampling commute: narrowing first upsamples fewer channels.
        x = self.smooth2(self.lateral2(stem) + _upsample(self.reduce2(x), stem))
        x = self.smooth1(self.full_resolution(images) + _upsample(self.reduce1(x), images))
        return self.head(x)[..., :height, :width].contiguous()


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def check_input_size(width: int, height: int) -> None:
    """Raise unless both sides are at least :data:`MIN_SIZE` pixels."""
    if width < MIN_SIZE or height < MIN_SIZE:
        raise DescriptorConfigError(
            f"image size {width}x{height} is too small for the network: both sides must be at least {MIN_SIZE} pixels"
        )
