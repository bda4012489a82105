"""VGG16-BN for 32x32 images (the Network Slimming CIFAR variant).

Thirteen 3x3 conv + BN + ReLU layers with five max pools (32x32 -> 1x1), global average pooling
and one linear classifier.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.models.layers import check_input_size, check_model_args, vgg_layers
from toolchain.models.registry import register_model

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class VGGCifar(nn.Module):
    task = "classification"
    output_stride = None
    input_multiple = 32

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.features, channels = vgg_layers(VGG16, width, in_channels)
        self.fc = nn.Linear(channels, num_classes)

    def output_layers(self) -> list[nn.Module]:
        return [self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_multiple, "vgg16_cifar")
        x = self.features(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


@register_model("vgg16_cifar", task="classification")
def vgg16_cifar(num_classes: int = 10, width: float = 1.0, **kwargs) -> VGGCifar:
    """VGG16-BN for CIFAR (14.7 M parameters at width 1.0, 10 classes)."""
    check_model_args("vgg16_cifar", num_classes, width)
    return VGGCifar(num_classes, width, **kwargs)
