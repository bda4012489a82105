"""CamVid (11-class SegNet version) semantic segmentation.

Layout: `{split}.txt` lists the file stems of each split (train / val / test);
`{split}/images/{stem}.jpg` (RGB) and `{split}/labels/{stem}.png` (8-bit class indices).
Values 0..num_classes-1 are classes; 11 is CamVid's void and becomes `data.ignore_index`
(configs set `ignore_index: 11`, so it stays 11). Any other value is an error naming the file.
Images resize bilinearly to `data.input_size`, labels with nearest neighbour.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.data.base import TaskDataset
from toolchain.data.layout import require_root
from toolchain.data.splits import ordered
from toolchain.data.transforms import load_label, load_rgb
from toolchain.errors import ToolchainError

CAMVID_VOID = 11


def split_stems(root: Path, split: str) -> list[str]:
    """Stems listed in `{split}.txt` (or, without it, the images in `{split}/images`)."""
    listing = root / f"{split}.txt"
    if listing.is_file():
        stems = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    else:
        folder = root / split / "images"
        stems = sorted(p.stem for p in folder.glob("*.jpg")) if folder.is_dir() else []
    if not stems:
        raise ToolchainError(f"CamVid split '{split}' in {root} is empty or missing ({listing.name} and "
                             f"{split}/images/ have no images); expected {split}.txt and {split}/images/*.jpg")
    return stems


def check_label_values(label: np.ndarray, path: Path, num_classes: int, ignore_index: int) -> np.ndarray:
    """Map void to ignore_index; any value outside 0..num_classes-1 is an error naming the file."""
    label = label.astype(np.int64, copy=True)
    if num_classes <= CAMVID_VOID:
        label[label == CAMVID_VOID] = ignore_index
    bad = np.unique(label[((label < 0) | (label >= num_classes)) & (label != ignore_index)])
    if bad.size:
        raise ToolchainError(f"label {path} has values {bad.tolist()} outside the classes 0..{num_classes - 1} "
                             f"(void={CAMVID_VOID}, ignore_index={ignore_index}); fix the label or "
                             f"data.num_classes/ignore_index")
    return label


class CamVidDataset(TaskDataset):
    def __init__(self, cfg, split: str, train: bool):
        super().__init__(cfg, split, train)
        self.root = require_root(cfg, "camvid")
        stems = ordered(split_stems(self.root, split), cfg.data.split_seed, cfg.data.max_images)
        self.samples: list[tuple[str, Path, Path]] = []
        for stem in stems:
            image = self.root / split / "images" / f"{stem}.jpg"
            label = self.root / split / "labels" / f"{stem}.png"
            if not image.is_file():
                raise ToolchainError(f"CamVid {split}.txt lists '{stem}' but {image} does not exist; "
                                     f"restore the image or remove the line")
            if not label.is_file():
                raise ToolchainError(f"image {image} has no label (expected {label}); add the label "
                                     f"or remove '{stem}' from {split}.txt")
            self.samples.append((stem, image, label))

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

    def load_raw(self, index: int):
        _, image_path, label_path = self.samples[index]
        image = load_rgb(image_path)
        label = check_label_values(load_label(label_path), label_path, self.cfg.data.num_classes,
                                   self.cfg.data.ignore_index)
        if label.shape != image.shape[:2]:
            raise ToolchainError(f"label {label_path} is {label.shape[0]}x{label.shape[1]} but its image is "
                                 f"{image.shape[0]}x{image.shape[1]}; labels must match their images")
        return image, label

    def label_path(self, index: int) -> Path:
        return self.samples[index][2]

    def image_path(self, index: int) -> Path:
        return self.samples[index][1]
