"""U-Net (Ronneberger et al., MICCAI 2015) with BatchNorm: 4 downsamplings, skip concatenations.

Each decoder step upsamples (nearest, x2), halves the channels with a 3x3 conv + BN + ReLU (the
"up-convolution", written this way so every prunable conv is followed by BN), concatenates the
encoder feature of the same resolution and applies two 3x3 conv + BN + ReLU. Pooling uses ceil
mode and upsampling targets the skip's size, so any input size works (e.g. 120x160 or 240x320).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.models.layers import ConvBNReLU, check_model_args, scaled_channels
from toolchain.models.registry import register_model

LEVEL_CHANNELS = (64, 128, 256, 512, 1024)


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(ConvBNReLU(in_channels, out_channels), ConvBNReLU(out_channels, out_channels))


class UpStep(nn.Module):
    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.up_conv = ConvBNReLU(in_channels, out_channels)
        self.convs = _double_conv(out_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up_conv(F.interpolate(x, size=skip.shape[-2:], mode="nearest"))
        return self.convs(torch.cat([skip, x], dim=1))


class UNet(nn.Module):
    task = "segmentation"
    output_stride = 1
    input_multiple = 1

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        channels = [scaled_channels(c, width) for c in LEVEL_CHANNELS]
        self.down = nn.ModuleList()
        previous = in_channels
        for c in channels:
            self.down.append(_double_conv(previous, c))
            previous = c
        self.up = nn.ModuleList(UpStep(channels[i + 1], channels[i], channels[i])
                                for i in reversed(range(len(channels) - 1)))
        self.classifier = nn.Conv2d(channels[0], num_classes, 1)

    def output_layers(self) -> list[nn.Module]:
        return [self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, level in enumerate(self.down):
            if index:
                x = F.max_pool2d(x, kernel_size=2, stride=2, ceil_mode=True)
            x = level(x)
            skips.append(x)
        skips.pop()  # the bottleneck output is x itself
        for step in self.up:
            x = step(x, skips.pop())
        return self.classifier(x)


@register_model("unet", task="segmentation")
def unet(num_classes: int, width: float = 1.0, **kwargs) -> UNet:
    """U-Net (64..1024 channels at width 1.0) with BN and nearest-upsample up-convolutions."""
    check_model_args("unet", num_classes, width)
    return UNet(num_classes, width, **kwargs)
