"""CIFAR ResNets (He et al., CVPR 2016, section 4.2): resnet20 and resnet56.

A 3x3 stem with 16 channels, three stages of BasicBlocks with 16/32/64 channels (stride 2 at the
second and third), global average pooling and a linear classifier. Shortcuts are option B: a 1x1
conv + BN where the shape changes, the identity elsewhere.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.models.layers import ConvBNReLU, check_model_args, scaled_channels
from toolchain.models.registry import register_model

STAGE_CHANNELS = (16, 32, 64)


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = ConvBNReLU(in_channels, out_channels, 3, stride=stride)
        self.conv2 = ConvBNReLU(out_channels, out_channels, 3, relu=False)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(self.conv2(self.conv1(x)) + identity)


class CifarResNet(nn.Module):
    task = "classification"
    output_stride = None
    input_multiple = 4

    def __init__(self, blocks_per_stage: int, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        channels = scaled_channels(STAGE_CHANNELS[0], width)
        self.stem = ConvBNReLU(in_channels, channels)
        stages = []
        for index, base in enumerate(STAGE_CHANNELS):
            out_channels = scaled_channels(base, width)
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(channels, num_classes)

    def output_layers(self) -> list[nn.Module]:
        return [self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("resnet20", task="classification")
def resnet20(num_classes: int = 10, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNet-20 for 32x32 images (0.27 M parameters at width 1.0)."""
    check_model_args("resnet20", num_classes, width)
    return CifarResNet(3, num_classes, width, **kwargs)


@register_model("resnet56", task="classification")
def resnet56(num_classes: int = 10, width: float = 1.0, **kwargs) -> CifarResNet:
    """ResNet-56 for 32x32 images (0.86 M parameters at width 1.0)."""
    check_model_args("resnet56", num_classes, width)
    return CifarResNet(9, num_classes, width, **kwargs)
