"""Building blocks shared by the zoo: width scaling, argument checks and conv + BN + ReLU.

Every prunable convolution in the zoo is a `ConvBNReLU` (or a conv directly followed by a
BatchNorm2d), because ACSL gates channels by BN gammas. Convolutions followed by BN carry no bias
(BN's beta replaces it); only heads (classifier / density convs, linear layers) have a bias.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError

MIN_CHANNELS = 4  # a width multiplier never shrinks a layer below this many channels


def scaled_channels(channels: int, width: float) -> int:
    """`channels * width`, rounded, at least MIN_CHANNELS."""
    return max(MIN_CHANNELS, int(round(channels * width)))


def check_model_args(name: str, num_classes: int, width: float) -> None:
    """Reject a non-positive class count or width with a one-line ToolchainError."""
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ToolchainError(f"model '{name}': num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(width, (int, float)) or not width > 0:
        raise ToolchainError(f"model '{name}': width must be a positive number (e.g. 0.25 or 1.0), got {width!r}")


def check_input_size(x: torch.Tensor, multiple: int, name: str) -> None:
    """Raise a ToolchainError when H or W of an NCHW input is not a multiple of `multiple`.

    Skipped while tracing/exporting so the check adds nothing to exported graphs.
    """
    if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
        return
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ToolchainError(f"{name} needs input height and width that are multiples of {multiple}, "
                             f"got {h}x{w}; resize or crop the input")


class ConvBNReLU(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> ReLU; the prunable unit of the zoo."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 dilation: int = 1, relu: bool = True):
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if relu:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def vgg_layers(spec: list, width: float, in_channels: int, dilation: int = 1) -> tuple[nn.Sequential, int]:
    """A VGG-style stack from a spec like [64, 64, "M", 128, ...] ("M" = 2x2 max-pool).

    Returns the stack and its output channel count.
    """
    layers: list[nn.Module] = []
    channels = in_channels
    for item in spec:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(ConvBNReLU(channels, scaled_channels(item, width), dilation=dilation))
            channels = scaled_channels(item, width)
    return nn.Sequential(*layers), channels
