"""Built-in synthetic demo data: no files, generated in well under a second, deterministic.

Used when `data.kind: synthetic` (or `data.root: null`), so `make deploy` and the unit tests run
on a fresh clone. Images are generated at `data.input_size` and go through the same eval path
(`preprocess`) and augmentation as the real datasets. Each task is easy for a tiny CNN:

- segmentation: a textured background (class 0) with 2-5 rectangles and discs; class k >= 1
  has its own colour (hue k / (K-1)), so colour decides the class.
- counting: dark textured background with bright Gaussian blobs ("heads"); the points are known,
  so density maps come from the same density code as ShanghaiTech.
- classification: one large shape on a textured background; class k has its own colour and
  shape (disc / square / bar alternate).

Split sizes: 96 train / 24 val / 24 test (`data.max_images` caps each); every split has its own
seed derived from `data.split_seed`, so a split is identical every time it is built.
"""
from __future__ import annotations

import colorsys

import numpy as np

from toolchain.data.base import TaskDataset
from toolchain.data.density import density_map
from toolchain.errors import ToolchainError

SPLIT_SIZES = {"train": 96, "val": 24, "test": 24}
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}


def class_colours(num: int) -> np.ndarray:
    """`num` well separated saturated RGB colours (uint8)."""
    colours = [colorsys.hsv_to_rgb(i / max(num, 1), 0.9, 0.95) for i in range(num)]
    return (np.array(colours) * 255).astype(np.uint8)


def _background(rng: np.random.Generator, size: tuple[int, int], level: float, spread: float) -> np.ndarray:
    """Low-contrast texture: a smooth gradient plus pixel noise, grey-ish."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height) * spread
    base = level + ramp[..., None] + rng.normal(0, spread / 3, (height, width, 3)).astype(np.float32)
    return base


def _shape_mask(kind: int, size, rng: np.random.Generator, min_frac: float, max_frac: float) -> np.ndarray:
    """A disc (kind 0), rectangle (1) or bar (2) at a random place."""
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width]
    extent = rng.uniform(min_frac, max_frac) * min(height, width)
    cy, cx = rng.uniform(0.15, 0.85) * height, rng.uniform(0.15, 0.85) * width
    if kind == 0:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= (extent / 2) ** 2
    half_h, half_w = (extent / 2, extent / 2) if kind == 1 else (extent / 6, extent / 1.5)
    return (np.abs(yy - cy) <= half_h) & (np.abs(xx - cx) <= half_w)


def _segmentation_sample(rng, size, num_classes):
    colours = class_colours(num_classes - 1)
    image = _background(rng, size, 110.0, 40.0)
    label = np.zeros(size, dtype=np.int64)
    for _ in range(int(rng.integers(2, 6))):
        cls = int(rng.integers(1, num_classes))
        mask = _shape_mask(cls % 2, size, rng, 0.2, 0.45)
        image[mask] = colours[cls - 1] + rng.normal(0, 12, (int(mask.sum()), 3))
        label[mask] = cls
    return np.clip(image, 0, 255).astype(np.uint8), label


def _counting_sample(rng, size, max_heads: int):
    height, width = size
    image = _background(rng, size, 45.0, 25.0)
    count = int(rng.integers(0, max_heads + 1))
    points = np.stack([rng.uniform(0, width, count), rng.uniform(0, height, count)], axis=1)
    blob_sigma = max(1.0, min(height, width) / 40)
    # unit-mass Gaussians scaled so a lone blob peaks at ~180 grey levels above the background
    blobs = density_map(points, size, blob_sigma, stride=1) * (180.0 * 2 * np.pi * blob_sigma ** 2)
    image += np.minimum(blobs, 200.0)[..., None]
    return np.clip(image, 0, 255).astype(np.uint8), points


def _classification_sample(rng, size, num_classes, label):
    colours = class_colours(num_classes)
    image = _background(rng, size, 110.0, 30.0)
    mask = _shape_mask(label % 3, size, rng, 0.45, 0.7)
    image[mask] = colours[label] + rng.normal(0, 12, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), label


class SyntheticDataset(TaskDataset):
    def __init__(self, cfg, split: str, train: bool):
        super().__init__(cfg, split, train)
        if split not in SPLIT_SIZES:
            raise ToolchainError(f"unknown split '{split}'; use one of {', '.join(SPLIT_SIZES)}")
        count = SPLIT_SIZES[split]
        if cfg.data.max_images:
            count = min(count, cfg.data.max_images)
        if cfg.task == "counting":
            stride = cfg.data.density_stride
            if self.input_size[0] % stride or self.input_size[1] % stride:
                raise ToolchainError(f"data.input_size {list(self.input_size)} is not a multiple of "
                                     f"data.density_stride={stride}; pick a size divisible by {stride}")
        rng = np.random.default_rng([int(cfg.data.split_seed), SPLIT_OFFSETS[split], 20240601])
        self.samples = [self._make(rng, i) for i in range(count)]

    def _make(self, rng: np.random.Generator, index: int):
        size, num_classes = self.input_size, self.cfg.data.num_classes
        if self.task == "segmentation":
            return _segmentation_sample(rng, size, num_classes)
        if self.task == "counting":
            max_heads = max(4, size[0] * size[1] // 150)
            return _counting_sample(rng, size, min(max_heads, 60))
        return _classification_sample(rng, size, num_classes, index % num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return f"synthetic_{self.split}_{index:04d}"

    def load_raw(self, index: int):
        image, target = self.samples[index]
        return image, target

    def carve_description(self) -> str:
        return (f"synthetic: fixed generated splits {SPLIT_SIZES} from split_seed={self.cfg.data.split_seed}"
                f" (max_images={self.cfg.data.max_images})")
