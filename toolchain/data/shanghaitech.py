"""ShanghaiTech Part B crowd counting: head points -> density maps (see density.py).

Layout: `{train,test}/images/IMG_{n}.jpg` and `{train,test}/points.json` = `{"IMG_n": [[x, y], ...]}`
in pixels of the stored image. The count of an image is its number of points.

Splits: `test` is the official test set. There is no val split, so val is carved out of train,
fixed and documented: the train image names are sorted, permuted with
`numpy.random.default_rng(data.split_seed)`, and the first `round(data.val_fraction * 400)`
(40 with the defaults val_fraction=0.1, split_seed=0) are val; the remaining 360 are train
(`toolchain.data.splits.carve_val`; `acsl data check` prints the split).

Targets are built lazily per item: points are scaled to `data.input_size`, each head is a
`density_sigma` Gaussian summing to 1, and the map is sum-pooled to `density_stride`.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from toolchain.data.base import TaskDataset
from toolchain.data.layout import image_files, require_root
from toolchain.data.splits import carve_val, describe_carve, ordered
from toolchain.data.transforms import load_rgb
from toolchain.errors import ToolchainError

OUTSIDE_TOLERANCE = 1.0  # pixels a point may lie outside the image (annotation rounding)


def read_points(path: Path) -> dict[str, np.ndarray]:
    """`{name: N x 2 float64}` from a points.json; the first malformed entry is a one-line error."""
    points, problems = parse_points(path)
    if problems:
        more = f" (and {len(problems) - 1} more; `acsl data check` lists them all)" if len(problems) > 1 else ""
        raise ToolchainError(problems[0] + more)
    return points


def parse_points(path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """The well-formed entries of a points.json and one line per malformed entry.

    Each entry must be a list of [x, y] pairs of finite numbers (an empty list for no heads): a row
    of 4 numbers is not two heads, a bare number is not a list, strings are not coordinates.
    """
    if not path.is_file():
        raise ToolchainError(f"head annotations not found: {path}; expected {{'IMG_n': [[x, y], ...]}} "
                             f"next to the images folder")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ToolchainError(f"{path} is not valid JSON ({err}); restore the annotation file") from None
    if not isinstance(raw, dict):
        raise ToolchainError(f"{path} must map image names to point lists, e.g. {{'IMG_1': [[x, y], ...]}}")
    points, problems = {}, []
    for name, pts in raw.items():
        problem = _entry_problem(pts)
        if problem:
            problems.append(f"{path}: '{name}' {problem}; write \"{name}\": [[x, y], ...] in pixels "
                            "([] for no heads)")
            continue
        points[name] = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return points, problems


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _entry_problem(pts) -> str | None:
    """Why an entry is not a list of [x, y] pairs of finite numbers (None when it is)."""
    if not isinstance(pts, list):
        return f"is {_short(pts)}, not a list of [x, y] points"
    for i, row in enumerate(pts):
        if not isinstance(row, list) or len(row) != 2:
            size = f"{len(row)} values" if isinstance(row, list) else "not a list"
            return f"point {i} is {_short(row)} ({size}); each point must be one [x, y] pair"
        if not all(_is_number(v) for v in row):
            return f"point {i} is {_short(row)}; x and y must be numbers"
        if not all(np.isfinite(float(v)) for v in row):
            return f"point {i} is {_short(row)}: contains NaN/inf"
    return None


def _short(value, limit: int = 40) -> str:
    text = json.dumps(value) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def split_names(root: Path, split: str, val_fraction: float, seed: int) -> list[str]:
    """Image stems of a split (val carved from train)."""
    source = "train" if split == "val" else split
    names = [p.stem for p in image_files(root / source / "images")]
    if not names:
        raise ToolchainError(f"no images in {root / source / 'images'}; expected {source}/images/IMG_n.jpg")
    if split == "test":
        return names
    train, val = carve_val(names, val_fraction, seed)
    return val if split == "val" else train


def carve_description(root: Path, cfg) -> str:
    names = [p.stem for p in image_files(root / "train" / "images")]
    train, val = carve_val(names, cfg.data.val_fraction, cfg.data.split_seed)
    return describe_carve("ShanghaiTech B", cfg.data.val_fraction, cfg.data.split_seed, len(train), len(val))


class ShanghaiTechDataset(TaskDataset):
    def __init__(self, cfg, split: str, train: bool):
        super().__init__(cfg, split, train)
        stride = cfg.data.density_stride
        if self.input_size[0] % stride or self.input_size[1] % stride:
            raise ToolchainError(f"data.input_size {list(self.input_size)} is not a multiple of "
                                 f"data.density_stride={stride}; pick a size divisible by {stride}")
        self.root = require_root(cfg, "shanghaitech")
        source = "train" if split == "val" else split
        annotations = read_points(self.root / source / "points.json")
        names = ordered(split_names(self.root, split, cfg.data.val_fraction, cfg.data.split_seed),
                        cfg.data.split_seed, cfg.data.max_images)
        self.samples: list[tuple[str, Path, np.ndarray]] = []
        for name in names:
            image = self.root / source / "images" / f"{name}.jpg"
            if not image.is_file():
                image = next(p for p in image_files(image.parent) if p.stem == name)
            if name not in annotations:
                raise ToolchainError(f"image {image} has no head points in {source}/points.json; add "
                                     f"\"{name}\": [[x, y], ...] (an empty list for no heads) or remove the image")
            self.samples.append((name, image, annotations[name]))

    def __len__(self) -> int:
        return len(self.samples)

    def sample_name(self, index: int) -> str:
        return self.samples[index][0]

    def image_path(self, index: int) -> Path:
        return self.samples[index][1]

    def count(self, index: int) -> int:
        return len(self.samples[index][2])

    def load_raw(self, index: int):
        name, path, points = self.samples[index]
        image = load_rgb(path)
        check_points(points, image.shape[:2], path)
        return image, points

    def carve_description(self) -> str:
        return carve_description(self.root, self.cfg)


def check_points(points: np.ndarray, size: tuple[int, int], path: Path) -> None:
    """Points must lie in the image (within a pixel of rounding)."""
    height, width = size
    out = ((points[:, 0] < -OUTSIDE_TOLERANCE) | (points[:, 0] > width + OUTSIDE_TOLERANCE)
           | (points[:, 1] < -OUTSIDE_TOLERANCE) | (points[:, 1] > height + OUTSIDE_TOLERANCE))
    if out.any():
        bad = points[out][:3].round(1).tolist()
        raise ToolchainError(f"{path.name}: {int(out.sum())} head points lie outside the {width}x{height} image "
                             f"(e.g. {bad}); points must be in pixels of the stored image")
