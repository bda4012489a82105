"""CSRNet-style crowd counter (Li et al., CVPR 2018): the "VGG16-Decoder" of the ACSL paper.

Front end: the first 10 conv layers of VGG16 (with BN) and 3 max pools, so the features have
stride 8. Back end: six 3x3 conv + BN + ReLU with dilation 2 (512, 512, 512, 256, 128, 64), then a
1x1 density conv. The output is the density map at H/8 x W/8 (the count is its sum); it has no
output activation (as in CSRNet), so an MSE loss always has a gradient; clamp at use if needed.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from toolchain.models.layers import check_input_size, check_model_args, vgg_layers
from toolchain.models.registry import register_model

FRONT_END = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
BACK_END = [512, 512, 512, 256, 128, 64]


class CSRNet(nn.Module):
    task = "counting"
    output_stride = 8
    input_multiple = 8

    def __init__(self, num_classes: int = 1, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.front_end, channels = vgg_layers(FRONT_END, width, in_channels)
        self.back_end, channels = vgg_layers(BACK_END, width, channels, dilation=2)
        self.density = nn.Conv2d(channels, num_classes, kernel_size=1)

    def output_layers(self) -> list[nn.Module]:
        return [self.density]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_multiple, "csrnet")
        return self.density(self.back_end(self.front_end(x)))


@register_model("csrnet", task="counting")
def csrnet(num_classes: int = 1, width: float = 1.0, **kwargs) -> CSRNet:
    """CSRNet counter; `num_classes` is the number of density channels (1 for crowd counting)."""
    check_model_args("csrnet", num_classes, width)
    return CSRNet(num_classes, width, **kwargs)
