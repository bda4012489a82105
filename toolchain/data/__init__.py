"""Datasets: real loaders (CamVid, ShanghaiTech B, image folders), built-in synthetic demo data,
THE deployment preprocessing (`transforms.preprocess`), calibration images and `data check`.

`build_dataset(cfg, split, train)` picks the loader from `cfg.data.kind`; `kind: synthetic` or
`root: null` means the built-in generated data. Every dataset yields `(image, target)` with image
float32 3 x H x W normalised by `cfg.preprocessing()`; see `base.TaskDataset`.
"""
from __future__ import annotations

import numpy as np

from toolchain.data.base import TaskDataset
from toolchain.data.transforms import preprocess
from toolchain.errors import ToolchainError

KIND_TASK = {"camvid": "segmentation", "shanghaitech": "counting", "image_folder": "classification"}
KIND_LABEL = {"camvid": "CamVid", "shanghaitech": "ShanghaiTech B", "image_folder": "image folders"}

__all__ = ["build_dataset", "describe_source", "calibration_arrays", "check_dataset", "preprocess",
           "uses_synthetic", "TaskDataset"]


def uses_synthetic(cfg) -> bool:
    """True when the built-in generated data is used (kind synthetic, or no data folder given)."""
    return cfg.data.kind == "synthetic" or cfg.data.root is None


def _loader(cfg):
    if uses_synthetic(cfg):
        from toolchain.data.synthetic import SyntheticDataset
        return SyntheticDataset
    expected = KIND_TASK[cfg.data.kind]
    if cfg.task != expected:
        raise ToolchainError(f"data.kind '{cfg.data.kind}' is a {expected} dataset but task is '{cfg.task}'; "
                             f"set task: {expected} or use a {cfg.task} dataset kind")
    if cfg.data.kind == "camvid":
        from toolchain.data.camvid import CamVidDataset
        return CamVidDataset
    if cfg.data.kind == "shanghaitech":
        from toolchain.data.shanghaitech import ShanghaiTechDataset
        return ShanghaiTechDataset
    from toolchain.data.image_folder import ImageFolderDataset
    return ImageFolderDataset


def build_dataset(cfg, split: str, train: bool) -> TaskDataset:
    """The dataset of `split` ("train" | "val" | "test"); `train=True` applies seeded augmentation."""
    return _loader(cfg)(cfg, split, train)


def describe_source(cfg) -> str:
    """Which loader is used, e.g. "CamVid from /data/camvid (367 train images)"."""
    if uses_synthetic(cfg):
        return "built-in synthetic demo data"
    train = build_dataset(cfg, "train", train=False)
    capped = f", capped at max_images={cfg.data.max_images}" if cfg.data.max_images else ""
    return f"{KIND_LABEL[cfg.data.kind]} from {train.root} ({len(train)} train images{capped})"


def calibration_arrays(cfg, n: int, seed: int) -> list[np.ndarray]:
    """min(n, #train) preprocessed train images (no augmentation), chosen with a seeded draw.

    Each array is float32 3 x H x W, exactly `preprocess(image, cfg.preprocessing())`.
    """
    if n < 1:
        raise ToolchainError(f"calibration needs at least 1 image, got n={n}; set quantize.calib_images >= 1")
    dataset = build_dataset(cfg, "train", train=False)
    picks = np.random.default_rng(seed).permutation(len(dataset))[:n]
    pp = cfg.preprocessing()
    return [preprocess(dataset.raw_image(int(i)), pp) for i in picks]


def check_dataset(cfg, full: bool = False) -> dict:
    """Validate the data folder and return statistics (see check.py); `full` decodes every image."""
    from toolchain.data.check import check_dataset as _check
    return _check(cfg, full=full)
