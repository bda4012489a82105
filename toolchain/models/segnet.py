"""SegNet (Badrinarayanan et al., TPAMI 2017): VGG16-BN encoder, mirrored decoder, pooling indices.

Unpooling is written as `upsample_nearest(x) * (upsample_nearest(maxpool(e)) == e)` (see
ACSL.md, "Coupled channels"): it equals `nn.MaxUnpool2d` with the encoder's max-pool indices except
on exact ties inside a 2x2 window (where the value goes to every tied position), a graph tracer sees
that the encoder stage output `e` and the decoder feature `x` share channels, and it exports to
plain ONNX (Resize, Sub, Sign, Mul) instead of MaxUnpool. Pooling uses ceil mode and the
upsampling targets the encoder map's size, so odd intermediate sizes (e.g. 15 rows at 240x320 or
360x480 input) unpool exactly like `MaxUnpool2d(..., output_size=e.shape)`: any input size works.
At width 1.0 and 11 classes the model has 29.44 M parameters (the published SegNet: 29.45 M; our
convs before BN have no bias).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.models.layers import ConvBNReLU, check_model_args, scaled_channels
from toolchain.models.registry import register_model

# (output channels of each conv) per stage; the decoder mirrors the encoder.
ENCODER_STAGES = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
DECODER_STAGES = [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64]]


def unpool_like(x: torch.Tensor, encoder_output: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Place each value of `x` where the 2x2 max of `encoder_output` was (MaxUnpool2d without indices).

    `pooled` is `max_pool2d(encoder_output, 2, 2, ceil_mode=True)`; `x` has its shape. Nearest
    upsampling to the encoder map's size is the 2x upsampling (cropped when that size is odd).

    The mask is `1 - sign(upsampled_max - e)`: the difference is 0 at each window's maximum and
    positive elsewhere, so this is the float form of `upsampled_max == e`. It is written with
    `sign` rather than `==` because a boolean comparison has no autograd node: Torch-Pruning's
    tracer would then not see that `e` and `x` share channels. `sign` keeps the link (its gradient
    is zero, like the comparison's) and exports as plain Sub, Sign, Mul.
    """
    size = encoder_output.shape[-2:]
    mask = 1.0 - torch.sign(F.interpolate(pooled, size=size, mode="nearest") - encoder_output)
    return F.interpolate(x, size=size, mode="nearest") * mask.to(x.dtype)


def _stage(in_channels: int, channels: list[int]) -> tuple[nn.Sequential, int]:
    layers = []
    for out_channels in channels:
        layers.append(ConvBNReLU(in_channels, out_channels))
        in_channels = out_channels
    return nn.Sequential(*layers), in_channels


class SegNet(nn.Module):
    task = "segmentation"
    output_stride = 1
    input_multiple = 1  # ceil-mode pooling + size-matched unpooling handle any size

    def __init__(self, num_classes: int, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        self.encoder = nn.ModuleList()
        channels = in_channels
        for stage in ENCODER_STAGES:
            block, channels = _stage(channels, [scaled_channels(c, width) for c in stage])
            self.encoder.append(block)
        self.decoder = nn.ModuleList()
        for stage in DECODER_STAGES:
            block, channels = _stage(channels, [scaled_channels(c, width) for c in stage])
            self.decoder.append(block)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=3, padding=1)

    def output_layers(self) -> list[nn.Module]:
        return [self.classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        saved = []
        for stage in self.encoder:
            encoded = stage(x)
            x = F.max_pool2d(encoded, kernel_size=2, stride=2, ceil_mode=True)
            saved.append((encoded, x))
        for stage, (encoded, pooled) in zip(self.decoder, reversed(saved)):
            x = stage(unpool_like(x, encoded, pooled))
        return self.classifier(x)


@register_model("segnet", task="segmentation")
def segnet(num_classes: int, width: float = 1.0, **kwargs) -> SegNet:
    """SegNet with a VGG16-BN encoder; `width` scales every layer's channels."""
    check_model_args("segnet", num_classes, width)
    return SegNet(num_classes, width, **kwargs)
