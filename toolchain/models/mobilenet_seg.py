"""MobileNetV2 + LR-ASPP: the depthwise-separable segmenter robotics users deploy.

Encoder: MobileNetV2 (Sandler et al., CVPR 2018): a stride-2 3x3 stem, then inverted residual blocks
(1x1 expansion conv + BN + ReLU6 -> 3x3 depthwise conv + BN + ReLU6 -> 1x1 linear projection conv + BN,
with an identity shortcut when the block keeps stride and width). As in segmentation MobileNets the
last stride-2 stage is dilated instead (dilation 2), so the encoder has output stride 16.

Head: Lite R-ASPP (Howard et al., "Searching for MobileNetV3", ICCV 2019; torchvision's `lraspp`):
the stride-16 features go through a 1x1 conv + BN + ReLU, gated channel-wise by a global-average-pool ->
1x1 conv -> sigmoid branch, are upsampled bilinearly to the stride-8 features and classified; a 1x1
classifier on the stride-8 features is added, and the logits are upsampled to the input size.

Pruning structure (what the issue-11 group saliency has to handle): an expansion conv, its BN and the
depthwise conv + BN form one group with two BNs; the projection convs of a stage are coupled through
the residual adds into one group with one BN per block; the LR-ASPP gate conv shares the head conv's group.
Export: GlobalAveragePool, Sigmoid, Mul, Resize, Clip (ReLU6): ONNX opset 17, ONNX Runtime and TensorRT.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.models.layers import check_input_size, check_model_args, scaled_channels
from toolchain.models.registry import register_model

# (expansion t, channels c, blocks n, stride s) of MobileNetV2; the stride-2 stage of 160 channels is dilated.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
LOW_LEVEL_STAGE = 2  # output of the 32-channel stage: stride 8


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> ReLU6 (or no activation); `groups=channels` makes it depthwise."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 dilation: int = 1, groups: int = 1, act: bool = True):
        padding = dilation * (kernel_size - 1) // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int, dilation: int = 1):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNAct(in_channels, hidden, 1))
        layers += [ConvBNAct(hidden, hidden, 3, stride=stride, dilation=dilation, groups=hidden),
                   ConvBNAct(hidden, out_channels, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2Encoder(nn.Module):
    """MobileNetV2 features at output stride 16; returns (stride-8 features, stride-16 features)."""

    def __init__(self, width: float = 1.0, in_channels: int = 3):
        super().__init__()
        channels = scaled_channels(32, width)
        self.stem = ConvBNAct(in_channels, channels, 3, stride=2)
        stages = []
        dilation = 1
        for index, (t, c, n, s) in enumerate(INVERTED_RESIDUAL_SETTING):
            out_channels = scaled_channels(c, width)
            stage_dilation = dilation
            if s == 2 and index == 5:  # output stride 16: dilate instead of striding
                s, dilation = 1, dilation * 2
            blocks = []
            for block in range(n):
                blocks.append(InvertedResidual(channels, out_channels, s if block == 0 else 1, t,
                                               stage_dilation if block == 0 else dilation))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.low_channels = scaled_channels(INVERTED_RESIDUAL_SETTING[LOW_LEVEL_STAGE][1], width)
        self.high_channels = channels

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        low = x
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index == LOW_LEVEL_STAGE:
                low = x
        return low, x


class LRASPPHead(nn.Module):
    def __init__(self, low_channels: int, high_channels: int, inter_channels: int, num_classes: int):
        super().__init__()
        self.cbr = ConvBNAct(high_channels, inter_channels, 1)
        self.cbr[2] = nn.ReLU(inplace=True)
        self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(high_channels, inter_channels, 1, bias=False),
                                   nn.Sigmoid())
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter_channels, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = self.cbr(high) * self.scale(high)
        x = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(x)


class MobileNetV2LRASPP(nn.Module):
    task = "segmentation"
    output_stride = 1
    input_multiple = 16

    def __init__(self, num_classes: int, width: float = 1.0, head_channels: int = 128, in_channels: int = 3):
        super().__init__()
        self.encoder = MobileNetV2Encoder(width, in_channels)
        self.head = LRASPPHead(self.encoder.low_channels, self.encoder.high_channels,
                               scaled_channels(head_channels, width), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def output_layers(self) -> list[nn.Module]:
        return [self.head.low_classifier, self.head.high_classifier]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(x, self.input_multiple, "mobilenetv2_lraspp")
        size = x.shape[-2:]
        low, high = self.encoder(x)
        return F.interpolate(self.head(low, high), size=size, mode="bilinear", align_corners=False)


@register_model("mobilenetv2_lraspp", task="segmentation")
def mobilenetv2_lraspp(num_classes: int, width: float = 1.0, head_channels: int = 128, **kwargs) -> nn.Module:
    """MobileNetV2 (output stride 16) + Lite R-ASPP head; `width` scales every layer."""
    check_model_args("mobilenetv2_lraspp", num_classes, width)
    return MobileNetV2LRASPP(num_classes, width=width, head_channels=head_channels, **kwargs)
