"""Tiny networks for the pruning tests (not zoo models): chain, residual, concat, head."""
import torch
import torch.nn as nn
import torch.nn.functional as F


def cbr(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyResCat(nn.Module):
    """conv stem -> residual block -> concat with the stem -> classifier conv (the head)."""
    task = "segmentation"
    output_stride = 1
    input_multiple = 1

    def __init__(self, width=8, classes=3):
        super().__init__()
        self.stem = cbr(3, width)
        self.a = cbr(width, width)
        self.b = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width))
        self.side = cbr(width, width // 2)
        self.fuse = cbr(width + width // 2, width)
        self.head = nn.Conv2d(width, classes, 1)

    def output_layers(self):
        return [self.head]

    def forward(self, x):
        s = self.stem(x)
        r = F.relu(self.b(self.a(s)) + s)
        return self.head(self.fuse(torch.cat([r, self.side(s)], dim=1)))


class TinyUnpool(nn.Module):
    """SegNet-style unpooling written with MaxUnpool2d + indices: the tracer cannot see the coupling."""
    task = "segmentation"
    output_stride = 1
    input_multiple = 2

    def __init__(self, width=8, classes=3):
        super().__init__()
        self.enc = cbr(3, width)
        self.mid = cbr(width, width)
        self.dec = cbr(width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def output_layers(self):
        return [self.head]

    def forward(self, x):
        e = self.enc(x)
        p, idx = F.max_pool2d(e, 2, return_indices=True)
        y = self.mid(p)
        return self.head(self.dec(F.max_unpool2d(y, idx, 2, output_size=e.shape[-2:])))


class Scaler(nn.Module):
    """A custom layer with its own per-channel parameter: unknown to the tracer."""

    def __init__(self, channels):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        return x * self.scale.view(1, -1, 1, 1)


class TinyCustom(nn.Module):
    task = "segmentation"
    output_stride = 1
    input_multiple = 1

    def __init__(self):
        super().__init__()
        self.a = cbr(3, 8)
        self.scale = Scaler(8)
        self.head = nn.Conv2d(8, 2, 1)

    def output_layers(self):
        return [self.head]

    def forward(self, x):
        return self.head(self.scale(self.a(x)))
