"""PSPNet (Zhao et al., CVPR 2017): dilated ResNet-18/50 backbone + pyramid pooling module.

The backbone keeps output stride 8 (layer3 and layer4 use dilation 2 and 4 instead of striding).
The pyramid pooling module average-pools the stride-8 map to 1x1, 2x2, 3x3 and 6x6 bins, reduces
each with a 1x1 conv + BN + ReLU, upsamples bilinearly and concatenates; a 3x3 conv + BN + ReLU and
a 1x1 classifier follow, and the logits are upsampled bilinearly to the input size.

Export: adaptive pooling is written with `avg_pool2d` when the map divides into the bins and as
explicit per-bin slices + means otherwise (identical numbers to `adaptive_avg_pool2d`), so the
model exports to ONNX opset 17 at any static input size that is a multiple of 8 (`input_multiple`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.errors import ToolchainError
from toolchain.models.layers import ConvBNReLU, check_input_size, check_model_args, scaled_channels
from toolchain.models.registry import register_model

PYRAMID_BINS = (1, 2, 3, 6)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = ConvBNReLU(in_channels, channels, 3, stride=stride, dilation=dilation)
        self.conv2 = ConvBNReLU(channels, out_channels, 3, dilation=dilation, relu=False)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        out_channels = channels * self.expansion
        self.conv1 = ConvBNReLU(in_channels, channels, 1)
        self.conv2 = ConvBNReLU(channels, channels, 3, stride=stride, dilation=dilation)
        self.conv3 = ConvBNReLU(channels, out_channels, 1, relu=False)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv3(self.conv2(self.conv1(x))) + identity)


RESNETS = {18: (BasicBlock, [2, 2, 2, 2]), 50: (Bottleneck, [3, 4, 6, 3])}


def adaptive_avg_pool_exportable(x: torch.Tensor, bins: int) -> torch.Tensor:
    """`F.adaptive_avg_pool2d(x, bins)` written with ops ONNX exports at a static size."""
    h, w = int(x.shape[-2]), int(x.shape[-1])
    if h % bins == 0 and w % bins == 0:
        return F.avg_pool2d(x, kernel_size=(h // bins, w // bins))
    if not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
        return F.adaptive_avg_pool2d(x, bins)
    rows = []
    for i in range(bins):
        top, bottom = (i * h) // bins, -((-(i + 1) * h) // bins)
        cols = []
        for j in range(bins):
            left, right = (j * w) // bins, -((-(j + 1) * w) // bins)
            cols.append(x[:, :, top:bottom, left:right].mean(dim=(2, 3), keepdim=True))
        rows.append(torch.cat(cols, dim=3))
    return torch.cat(rows, dim=2)


class PyramidPooling(nn.Module):
    def __init__(self, in_channels: int, branch_channels: int, bins=PYRAMID_BINS):
        super().__init__()
        self.bins = tuple(bins)
        self.branches = nn.ModuleList(ConvBNReLU(in_channels, branch_channels, 1) for _ in self.bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pyramid = [x]
        for bins, branch in zip(self.bins, self.branches):
            pooled = branch(adaptive_avg_pool_exportable(x, bins))
            pyramid.append(F.interpolate(pooled, size=size, mode="bilinear", align_corners=False))
        return torch.cat(pyramid, dim=1)


class PSPNet(nn.Module):
    task = "segmentation"
    output_stride = 1
    input_multiple = 8

    def __init__(self, num_classes: int, width: float = 1.0, depth: int = 18, in_channels: int = 3):
        super().__init__()
        if depth not in RESNETS:
            raise ToolchainError(f"pspnet: depth must be one of {sorted(RESNETS)}, got {depth!r}")
        block, counts = RESNETS[depth]
        stem = scaled_channels(64, width)
        self.stem = ConvBNReLU(in_channels, stem, 7, stride=2)
        channels = stem
        stages = []  # (width, stride, dilation) of layer1..layer4: output stride 8
        for base, stride, dilation, count in zip((64, 128, 256, 512), (1, 2, 1, 1), (1, 1, 2, 4), counts):
            planes = scaled_channels(base, width)
            blocks = []
            for index in range(count):
                blocks.append(block(channels, planes, stride if index == 0 else 1, dilation))
                channels = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pyramid = PyramidPooling(channels, max(1, channels // len(PYRAMID_BINS)))
        pyramid_channels = channels + len(PYRAMID_BINS) * max(1, channels // len(PYRAMID_BINS))
        self.fuse = ConvBNReLU(pyramid_channels, scaled_channels(512, width), 3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(scaled_channels(512, width), num_classes, 1)

    def output_layers(self) -> list[nn.Module]:
        return [self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_multiple, "pspnet")
        size = x.shape[-2:]
        features = F.max_pool2d(self.stem(x), kernel_size=3, stride=2, padding=1)
        features = self.layer4(self.layer3(self.layer2(self.layer1(features))))
        logits = self.classifier(self.dropout(self.fuse(self.pyramid(features))))
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


@register_model("pspnet", task="segmentation")
def pspnet(num_classes: int, width: float = 1.0, depth: int = 18, **kwargs) -> PSPNet:
    """PSPNet on a dilated ResNet-`depth` (18 or 50) backbone, output stride 8."""
    check_model_args("pspnet", num_classes, width)
    return PSPNet(num_classes, width, depth=depth, **kwargs)
