"""Task metrics with additive states, so they reduce across DDP ranks by summing.

- segmentation: mIoU, per-class IoU and pixel accuracy from a confusion matrix (percent);
  pixels labelled `ignore_index` are skipped, and classes absent from both prediction and
  ground truth are left out of the mean.
- counting: MAE and RMSE of per-image counts (the sum of the density map).
- classification: top-1 accuracy (percent).
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _as_tensor(x) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        return torch.from_numpy(x)
    return x.detach().cpu()


class SegmentationMetric:
    name = "miou"

    def __init__(self, num_classes: int, ignore_index: int, class_names: list[str] | None = None):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)

    def update(self, output, target) -> None:
        output, target = _as_tensor(output), _as_tensor(target).long()
        pred = output.argmax(1) if output.dim() == target.dim() + 1 else output.long()
        valid = (target != self.ignore_index) & (target >= 0) & (target < self.num_classes)
        k = self.num_classes
        idx = target[valid] * k + pred[valid]
        self.confusion += torch.bincount(idx, minlength=k * k).reshape(k, k).double()

    def state(self) -> torch.Tensor:
        return self.confusion.flatten().clone()

    def load_state(self, state: torch.Tensor) -> None:
        self.confusion = state.reshape(self.num_classes, self.num_classes).double().cpu()

    def compute(self) -> dict:
        conf = self.confusion
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
        present = ~torch.isnan(iou)
        miou = float(iou[present].mean() * 100) if present.any() else 0.0
        total = conf.sum()
        return {
            "miou": miou,
            "pixel_acc": float(tp.sum() / total * 100) if total > 0 else 0.0,
            "per_class_iou": {n: (None if math.isnan(v) else round(v * 100, 4))
                              for n, v in zip(self.class_names, iou.tolist())},
        }


class CountingMetric:
    name = "mae"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64)  # |err| sum, err^2 sum, images

    def update(self, output, target) -> None:
        output, target = _as_tensor(output).double(), _as_tensor(target).double()
        pred = output.flatten(1).sum(1)
        true = target.flatten(1).sum(1)
        err = pred - true
        self.sums += torch.stack([err.abs().sum(), (err ** 2).sum(), torch.tensor(float(len(err)), dtype=torch.float64)])

    def state(self) -> torch.Tensor:
        return self.sums.clone()

    def load_state(self, state: torch.Tensor) -> None:
        self.sums = state.double().cpu()

    def compute(self) -> dict:
        n = max(float(self.sums[2]), 1.0)
        return {"mae": float(self.sums[0] / n), "rmse": math.sqrt(float(self.sums[1] / n))}


class ClassificationMetric:
    name = "top1"

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(2, dtype=torch.float64)  # correct, total

    def update(self, output, target) -> None:
        output, target = _as_tensor(output), _as_tensor(target).long()
        pred = output.argmax(1)
        self.sums += torch.tensor([float((pred == target).sum()), float(target.numel())], dtype=torch.float64)

    def state(self) -> torch.Tensor:
        return self.sums.clone()

    def load_state(self, state: torch.Tensor) -> None:
        self.sums = state.double().cpu()

    def compute(self) -> dict:
        return {"top1": float(self.sums[0] / max(float(self.sums[1]), 1.0) * 100)}


def make_metric(cfg):
    if cfg.task == "segmentation":
        return SegmentationMetric(cfg.data.num_classes, cfg.data.ignore_index, cfg.data.class_names or None)
    if cfg.task == "counting":
        return CountingMetric()
    return ClassificationMetric()


def primary_metric(task: str) -> tuple[str, bool]:
    """(metric name, higher is better) of a task."""
    return {"segmentation": ("miou", True), "counting": ("mae", False), "classification": ("top1", True)}[task]


def is_better(task: str, new: float, old: float | None) -> bool:
    if old is None:
        return True
    higher = primary_metric(task)[1]
    return new > old if higher else new < old
