"""A user model brought to the toolchain: a small MobileNetV2 / DeepLabV3+-style segmenter.

Nothing here imports the toolchain. The config names it as `seg_model.py:build` (relative to the
config file's folder). It deliberately declares only `task`: the toolchain finds the rest itself.

- `output_layers()` is absent: the layers producing the output (`classifier`) are found from the
  traced graph and kept unpruned;
- `input_multiple` is absent: probing finds 16 (the decoder joins the stride-16 feature, upsampled
  x4, with the stride-4 one, which only line up when H and W are multiples of 16);
- `output_stride` is absent: probing finds 1 (logits at the input resolution).

Check it before training:  acsl models --check examples/user_model/seg_model.py:build --task segmentation --input 64x64
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _c(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


class ConvBNAct(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU6 (or no activation): the prunable unit."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, dilation: int = 1,
                 act: bool = True):
        pad = dilation * (k - 1) // 2
        layers = [nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project (+ residual when shapes match)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [ConvBNAct(cin, hidden, k=1)]
        layers += [ConvBNAct(hidden, hidden, stride=stride, groups=hidden), ConvBNAct(hidden, cout, k=1, act=False)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


# (expand, channels, repeats, stride) per stage; stride 4 after stage 1, 16 after stage 3
STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2), (6, 64, 2, 2), (6, 96, 1, 1))


class MobileSeg(nn.Module):
    task = "segmentation"

    def __init__(self, num_classes: int, width: float = 1.0, expand: int = 6):
        super().__init__()
        cin = _c(32, width)
        self.stem = ConvBNAct(3, cin, stride=2)
        self.stages = nn.ModuleList()
        for t, c, n, s in STAGES:
            blocks = []
            for i in range(n):
                cout = _c(c, width)
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t if t == 1 else expand))
                cin = cout
            self.stages.append(nn.Sequential(*blocks))
        low, high, mid = _c(24, width), cin, _c(64, width)
        self.aspp_1x1 = ConvBNAct(high, mid, k=1)
        self.aspp_3x3 = ConvBNAct(high, mid, dilation=2)
        self.aspp_project = ConvBNAct(2 * mid, mid, k=1)
        self.low_project = ConvBNAct(low, _c(12, width), k=1)
        self.fuse = ConvBNAct(mid + _c(12, width), mid)
        self.classifier = nn.Conv2d(mid, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)                      # stride 2
        low = None
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index == 1:
                low = x                       # stride 4
        x = self.aspp_project(torch.cat([self.aspp_1x1(x), self.aspp_3x3(x)], dim=1))   # stride 16
        x = F.interpolate(x, scale_factor=4.0, mode="bilinear", align_corners=False)      # stride 4
        x = self.fuse(torch.cat([x, self.low_project(low)], dim=1))
        return F.interpolate(self.classifier(x), scale_factor=4.0, mode="bilinear", align_corners=False)


def build(num_classes: int, width: float = 1.0, **kwargs) -> nn.Module:
    """The factory the config names: `model.name: seg_model.py:build`."""
    return MobileSeg(num_classes, width=width, **kwargs)
