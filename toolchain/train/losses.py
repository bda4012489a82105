"""Task losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def task_loss(cfg):
    """The training loss of a task: callable(output, target) -> scalar tensor.

    - segmentation: cross-entropy, void pixels (`data.ignore_index`) ignored;
    - counting: squared error of the density map summed over pixels, mean over the batch
      (CSRNet's loss), so an image's loss does not shrink with the map size;
    - classification: cross-entropy.
    """
    if cfg.task == "segmentation":
        ignore = cfg.data.ignore_index

        def seg_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(output, target, ignore_index=ignore)
        return seg_loss
    if cfg.task == "counting":
        def count_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(output, target, reduction="sum") / output.shape[0]
        return count_loss
    return lambda output, target: F.cross_entropy(output, target)
