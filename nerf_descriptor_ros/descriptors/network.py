"""The dense descriptor network: a fully-convolutional ResNet with a feature-pyramid decoder.

Dense Object Nets use a ResNet-34 whose stride-8 output is upsampled to the input resolution.
Here the ResNet (18 or 34, written out so that torchvision is not needed) feeds a top-down
decoder that merges every stage from stride 32 down to the stem (stride 2) and a small
full-resolution branch, so that the descriptor can change from one pixel to the next: a match
must be found to about a pixel, and at reduced working resolutions a stride-4 descriptor
interpolated bilinearly cannot be that sharp. The decoder narrows as it gets finer to stay cheap.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from nerf_descriptor_ros.errors import NerfDescriptorError

# Blocks per stage of the two supported backbones (He et al. 2016, "basic" residual blocks).
BACKBONE_STAGES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
STAGE_CHANNELS = (64, 128, 256, 512)
# Five stride-2 steps down to the deepest stage: inputs are padded to a multiple of this.
SIZE_MULTIPLE = 32
# Smallest image side the network accepts (one cell of the deepest stage).
MIN_SIZE = 32


class DescriptorConfigError(NerfDescriptorError, ValueError):
    """A descriptor size, image size or backbone that the network cannot use."""


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity, inplace=True)


class ResNetBackbone(nn.Module):
    """ResNet-18/34 without the classifier; returns the stem and the four stage outputs
    (strides 2, 4, 8, 16, 32).

    Parameter names follow the common ImageNet checkpoints (conv1, bn1, layer1..4), so such a
    state dict loads with :func:`load_imagenet_weights`.
    """

    def __init__(self, name: str):
        super().__init__()
        if name not in BACKBONE_STAGES:
            raise DescriptorConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONE_STAGES)}")
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for i, (blocks, channels) in enumerate(zip(BACKBONE_STAGES[name], STAGE_CHANNELS)):
            stride = 1 if i == 0 else 2
            layers = [BasicBlock(in_channels, channels, stride)]
            layers += [BasicBlock(channels, channels, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
            in_channels = channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = self.maxpool(stem)
        features = [stem]
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            features.append(x)
        return features


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, 1, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class DescriptorNet(nn.Module):
    """Image (N,3,H,W), normalised -> descriptors (N,D,H,W) at the same resolution."""

    def __init__(self, descriptor_dim: int, backbone: str = "resnet18", decoder_channels: int = 128):
        super().__init__()
        if not isinstance(descriptor_dim, int) or descriptor_dim < 1:
            raise DescriptorConfigError(f"descriptor dimension must be a positive integer, got {descriptor_dim!r}")
        if not isinstance(decoder_channels, int) or decoder_channels < 4:
            raise DescriptorConfigError(f"decoder_channels must be an integer >= 4, got {decoder_channels!r}")
        self.descriptor_dim = descriptor_dim
        self.backbone_name = backbone
        self.backbone = ResNetBackbone(backbone)
        c4, c2, c1 = decoder_channels, decoder_channels // 2, decoder_channels // 4
        # Strides 32..4: lateral 1x1 convolutions to c4 channels, summed top-down (FPN).
        self.lateral = nn.ModuleList(nn.Conv2d(c, c4, 1) for c in STAGE_CHANNELS)
        self.smooth4 = _conv_bn_relu(c4, c4)
        # Stride 2 (the stem) and stride 1 (a small branch on the image itself).
        self.reduce2, self.lateral2, self.smooth2 = nn.Conv2d(c4, c2, 1), nn.Conv2d(64, c2, 1), _conv_bn_relu(c2, c2)
        self.full_resolution = _conv_bn_relu(3, c1)
        self.reduce1, self.smooth1 = nn.Conv2d(c2, c1, 1), _conv_bn_relu(c1, c1)
        self.head = nn.Conv2d(c1, descriptor_dim, 1)

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
        stem, *stages = self.backbone(images)
        x = self.lateral[3](stages[3])
        for level in (2, 1, 0):
            x = self.lateral[level](stages[level]) + _upsample(x, stages[level])
        x = self.smooth4(x)
        x = self.smooth2(self.lateral2(stem) + self.reduce2(_upsample(x, stem)))
        x = self.smooth1(self.full_resolution(images) + self.reduce1(_upsample(x, images)))
        return self.head(x)[..., :height, :width]


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def check_input_size(width: int, height: int) -> None:
    """Raise unless both sides are at least :data:`MIN_SIZE` pixels."""
    if width < MIN_SIZE or height < MIN_SIZE:
        raise DescriptorConfigError(
            f"image size {width}x{height} is too small for the network: both sides must be at least {MIN_SIZE} pixels"
        )


def load_imagenet_weights(net: DescriptorNet, path: str | Path) -> list[str]:
    """Initialise the backbone from a local ImageNet ResNet state dict; return the keys it lacked.

    Loaded with ``weights_only=True``; the classifier (``fc.*``) is ignored. Never downloads.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"ImageNet weights {path} not found (the option is a local file)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = net.backbone.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise DescriptorConfigError(
            f"{path} is not a {net.backbone_name} state dict (unexpected keys such as {result.unexpected_keys[:3]})"
        )
    return list(result.missing_keys)
