"""The dataset base class every loader (CamVid, ShanghaiTech, image folders, synthetic) shares.

A loader only says how many samples it has, their names, and how to read one raw sample:
`(RGB uint8 H x W x 3, raw target)` where the raw target is a label map (segmentation, already
validated and with void mapped to `ignore_index`), head points N x 2 in pixels of the raw image
(counting) or a class index (classification). This class turns raw samples into network inputs:

- eval (`train=False`): image = `transforms.preprocess(image, cfg.preprocessing())` exactly; labels
  nearest-resized; points rescaled then turned into a density map at `density_stride`.
- train (`train=True`): seeded augmentation with `sample_rng(cfg.train.seed, epoch, index)`;
  call `set_epoch(epoch)` at the start of every epoch.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from toolchain.data import transforms as T
from toolchain.data.density import density_map, scale_points
from toolchain.errors import ToolchainError

CLS_PAD = 4  # pixels of padding for the CIFAR-style random crop


SPLITS = ("train", "val", "test")


class TaskDataset(Dataset):
    """Base class: subclasses implement `__len__`, `sample_name(i)` and `load_raw(i)`."""

    task: str = ""

    def __init__(self, cfg, split: str, train: bool):
        if split not in SPLITS:
            raise ToolchainError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        self.cfg = cfg
        self.split = split
        self.train = bool(train)
        self.epoch = 0
        self.preprocessing = cfg.preprocessing()
        self.input_size = tuple(int(v) for v in cfg.data.input_size)
        self.task = cfg.task

    # -- subclass interface ----------------------------------------------------------------------
    def __len__(self) -> int:
        raise NotImplementedError

    def sample_name(self, index: int) -> str:
        raise NotImplementedError

    def load_raw(self, index: int) -> tuple[np.ndarray, Any]:
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Augmentation differs per epoch but is reproducible for a given (seed, epoch, index)."""
        self.epoch = int(epoch)

    def raw_image(self, index: int) -> np.ndarray:
        """The decoded RGB uint8 image, as a deployed application would receive it."""
        return self.load_raw(index)[0]

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        image, target = self.load_raw(index)
        if self.train:
            rng = T.sample_rng(self.cfg.train.seed, self.epoch, index)
            image_chw, target = _AUGMENT[self.task](self, image, target, rng)
        else:
            image_chw = T.preprocess(image, self.preprocessing)
            target = _EVAL_TARGET[self.task](self, image.shape[:2], target)
        return torch.from_numpy(image_chw), target

    # -- targets ---------------------------------------------------------------------------------
    def _density(self, points: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        dmap = density_map(points, size, self.cfg.data.density_sigma, self.cfg.data.density_stride)
        return torch.from_numpy(dmap[None])


# ---------------------------------------------------------------------------------------------
# eval targets
def _eval_segmentation(ds: TaskDataset, raw_size, label):
    return torch.from_numpy(T.resize_nearest(label, ds.input_size).astype(np.int64))


def _eval_counting(ds: TaskDataset, raw_size, points):
    return ds._density(scale_points(points, raw_size, ds.input_size), ds.input_size)


def _eval_classification(ds: TaskDataset, raw_size, label):
    return torch.tensor(int(label), dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# seeded augmentation
def _resized_window(ds: TaskDataset, rng: np.random.Generator):
    """Scale then crop parameters: (scaled size, top, left)."""
    aug = ds.cfg.data.augment
    height, width = ds.input_size
    if not aug.crop:
        return (height, width), 0, 0
    sh, sw = T.scaled_size(rng, ds.input_size, aug.scale)
    return (sh, sw), T.random_window(rng, sh, height), T.random_window(rng, sw, width)


def _augment_segmentation(ds: TaskDataset, image, label, rng):
    height, width = ds.input_size
    size, top, left = _resized_window(ds, rng)
    pixels = T.resize_bilinear(image, size)
    label = T.resize_nearest(label, size)
    image_chw = T.normalise(pixels, ds.preprocessing)  # 3 x h x w
    image_chw = T.crop_or_pad(image_chw.transpose(1, 2, 0), top, left, height, width, 0.0).transpose(2, 0, 1)
    label = T.crop_or_pad(label, top, left, height, width, ds.cfg.data.ignore_index)
    if ds.cfg.data.augment.hflip and rng.random() < 0.5:
        image_chw, label = image_chw[:, :, ::-1], label[:, ::-1]
    return np.ascontiguousarray(image_chw), torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64))


def _augment_counting(ds: TaskDataset, image, points, rng):
    height, width = ds.input_size
    size, top, left = _resized_window(ds, rng)
    pixels = T.resize_bilinear(image, size)
    points = scale_points(points, image.shape[:2], size) - np.array([left, top], dtype=np.float64)
    keep = (points[:, 0] >= 0) & (points[:, 0] < width) & (points[:, 1] >= 0) & (points[:, 1] < height)
    points = points[keep]
    image_chw = T.normalise(pixels, ds.preprocessing)
    image_chw = T.crop_or_pad(image_chw.transpose(1, 2, 0), top, left, height, width, 0.0).transpose(2, 0, 1)
    if ds.cfg.data.augment.hflip and rng.random() < 0.5:
        image_chw = image_chw[:, :, ::-1]
        points = points.copy()
        points[:, 0] = width - points[:, 0]
    return np.ascontiguousarray(image_chw), ds._density(points, ds.input_size)


def _augment_classification(ds: TaskDataset, image, label, rng):
    height, width = ds.input_size
    aug = ds.cfg.data.augment
    size = T.scaled_size(rng, ds.input_size, aug.scale)
    image_chw = T.normalise(T.resize_bilinear(image, size), ds.preprocessing)
    if aug.crop:
        top = int(rng.integers(-CLS_PAD, size[0] - height + CLS_PAD + 1))
        left = int(rng.integers(-CLS_PAD, size[1] - width + CLS_PAD + 1))
    else:
        top, left = (size[0] - height) // 2, (size[1] - width) // 2
    image_chw = T.crop_or_pad(image_chw.transpose(1, 2, 0), top, left, height, width, 0.0).transpose(2, 0, 1)
    if aug.hflip and rng.random() < 0.5:
        image_chw = image_chw[:, :, ::-1]
    return np.ascontiguousarray(image_chw), torch.tensor(int(label), dtype=torch.int64)


_EVAL_TARGET = {"segmentation": _eval_segmentation, "counting": _eval_counting,
                "classification": _eval_classification}
_AUGMENT = {"segmentation": _augment_segmentation, "counting": _augment_counting,
            "classification": _augment_classification}
