"""Image-folder classification (e.g. the CIFAR-10 subset): `{split}/{class}/*.jpg`.

Class index = position in `data.class_names` when given, else the sorted class folder names.
If `val/` exists it is used; otherwise val is carved out of train per class (stratified):
each class's sorted file names are permuted with `numpy.random.default_rng(split_seed + class)`
and the first `round(val_fraction * n_class)` go to val (60 of 600 per class with the defaults).
"""
from __future__ import annotations

from pathlib import Path

from toolchain.data.base import TaskDataset
from toolchain.data.layout import image_files, require_root
from toolchain.data.splits import carve_val_stratified, describe_carve, ordered
from toolchain.data.transforms import load_rgb
from toolchain.errors import ToolchainError


def class_names_for(root: Path, cfg) -> list[str]:
    folders = sorted(d.name for d in (root / "train").iterdir() if d.is_dir()) if (root / "train").is_dir() else []
    names = list(cfg.data.class_names) or folders
    if len(names) != cfg.data.num_classes:
        raise ToolchainError(f"{root / 'train'} has {len(folders)} class folders ({', '.join(folders[:12])}) but "
                             f"data.num_classes is {cfg.data.num_classes}; make them agree")
    return names


def list_split(root: Path, split: str, class_names: list[str]) -> list[tuple[str, int]]:
    """(relative path, class index) for every image of a folder split; strays are errors."""
    folder = root / split
    if not folder.is_dir():
        raise ToolchainError(f"split folder {folder} not found; expected {split}/<class>/*.jpg")
    index = {name: i for i, name in enumerate(class_names)}
    items = []
    loose = image_files(folder)
    if loose:
        raise ToolchainError(f"image {loose[0]} has no label: it is not inside a class folder; move it into "
                             f"{split}/<class>/")
    for sub in sorted(d for d in folder.iterdir() if d.is_dir()):
        files = image_files(sub)
        if sub.name not in index:
            if files:
                raise ToolchainError(f"class folder {sub} is not one of the {len(class_names)} classes "
                                     f"({', '.join(class_names)}); its label is out of range: remove it or "
                                     f"add it to data.class_names and data.num_classes")
            continue
        items += [(f"{split}/{sub.name}/{f.name}", index[sub.name]) for f in files]
    if not items:
        raise ToolchainError(f"no images in {folder}; expected {split}/<class>/*.jpg")
    return items


def split_items(root: Path, split: str, class_names: list[str], val_fraction: float, seed: int):
    if split == "test" or (split == "val" and (root / "val").is_dir()):
        return list_split(root, split, class_names)
    train, val = carve_val_stratified(list_split(root, "train", class_names), val_fraction, seed)
    return val if split == "val" else train


class ImageFolderDataset(TaskDataset):
    def __init__(self, cfg, split: str, train: bool):
        super().__init__(cfg, split, train)
        self.root = require_root(cfg, "image_folder")
        self.class_names = class_names_for(self.root, cfg)
        items = split_items(self.root, split, self.class_names, cfg.data.val_fraction, cfg.data.split_seed)
        self.samples = ordered(items, cfg.data.split_seed, cfg.data.max_images)

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

    def image_path(self, index: int) -> Path:
        return self.root / self.samples[index][0]

    def label(self, index: int) -> int:
        return self.samples[index][1]

    def load_raw(self, index: int):
        return load_rgb(self.image_path(index)), self.samples[index][1]

    def carve_description(self) -> str:
        if (self.root / "val").is_dir():
            return "image folders: val read from val/"
        train, val = carve_val_stratified(list_split(self.root, "train", self.class_names),
                                          self.cfg.data.val_fraction, self.cfg.data.split_seed)
        return describe_carve("image folders (stratified per class)", self.cfg.data.val_fraction,
                              self.cfg.data.split_seed, len(train), len(val))
