"""Evaluation of a torch model, or of any predict function (an engine), on a split.

`evaluate(model_or_predict_fn, cfg, split)`: a predict function takes a float32 NCHW numpy batch
and returns the model output as a numpy array, so ONNX Runtime / TensorRT engines are measured on
exactly the same data and metric code as the PyTorch model.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from toolchain.train import distributed as dist_utils
from toolchain.train.metrics import make_metric


def eval_loader(cfg, split: str, max_images: int | None = None, batch_size: int | None = None):
    from toolchain.data import build_dataset

    dataset = build_dataset(cfg, split, train=False)
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    sampler = dist_utils.EpochSampler(len(dataset), shuffle=False)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size or cfg.train.batch_size, sampler=sampler,
                                       num_workers=cfg.train.num_workers)


@torch.no_grad()
def evaluate(model_or_fn: nn.Module | Callable[[np.ndarray], np.ndarray], cfg, split: str = "val",
             max_images: int | None = None, batch_size: int | None = None, progress: bool = False) -> dict:
    """Metrics of a model (or predict function) on `split`, reduced across DDP ranks."""
    loader = eval_loader(cfg, split, max_images, batch_size)
    metric = make_metric(cfg)
    if isinstance(model_or_fn, nn.Module):
        model = model_or_fn
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device

        def predict(images: torch.Tensor):
            return model(images.to(device)).float().cpu()
    else:
        model, was_training = None, False

        def predict(images: torch.Tensor):
            return torch.from_numpy(np.asarray(model_or_fn(images.numpy().astype(np.float32)), dtype=np.float32))

    for images, targets in tqdm(loader, desc=f"eval {split}", disable=not progress or not dist_utils.is_main(),
                                leave=False):
        metric.update(predict(images), targets)
    dist_utils.reduce_metric(metric)
    if model is not None and was_training:
        model.train()
    result = metric.compute()
    result["images"] = len(loader.dataset)
    return result
