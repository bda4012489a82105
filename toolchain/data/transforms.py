"""Image loading, THE deployment preprocessing (defined, step by step, in the bottom layer
`toolchain.artifacts.preprocess`, so the shipped runtime uses it without the data side; re-exported
here for the datasets), and the seeded training augmentation.

Labels are resized with nearest neighbour (half-pixel centres: source index
`floor((i + 0.5) * in / out)`). Every dataset's eval path calls `preprocess`, so an engine fed with
`preprocess` output sees exactly what the network saw during validation.

Training augmentation (`augment_*`) is seeded per sample: `sample_rng(seed, epoch, index)`, so a
run is reproducible and each epoch sees different crops/flips. Padding uses the mean colour
(0 after normalisation) for images, `ignore_index` for labels and nothing (zero density) for heads.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from toolchain.artifacts.preprocess import normalise, preprocess, resize_bilinear  # noqa: F401  (THE preprocessing)
from toolchain.errors import ToolchainError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


# ---------------------------------------------------------------------------------------------
# loading
def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file to RGB uint8 H x W x 3; a corrupt file is a one-line error naming it."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError:
        raise ToolchainError(f"image not found: {path}; check the data folder") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ToolchainError(f"corrupt or unreadable image {path} ({err.__class__.__name__}: {err}); "
                             f"replace or delete it and rerun `acsl data check`") from None


def load_label(path: str | Path) -> np.ndarray:
    """Decode a single-channel label PNG to a uint8 H x W array."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16"):
                raise ToolchainError(f"label {path} has mode {img.mode}; labels must be single-channel "
                                     f"class-index images (8-bit PNG)")
            return np.asarray(img).astype(np.int64)
    except FileNotFoundError:
        raise ToolchainError(f"label not found: {path}; every image needs a label file") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ToolchainError(f"corrupt or unreadable label {path} ({err.__class__.__name__}: {err}); "
                             f"replace it and rerun `acsl data check`") from None


def verify_image(path: str | Path, full: bool = False) -> tuple[int, int]:
    """Quick header check (or a full decode with `full`); returns (H, W)."""
    if full:
        return load_rgb(path).shape[:2]
    try:
        with Image.open(path) as img:
            img.verify()
            width, height = img.size
        return height, width
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ToolchainError(f"corrupt or unreadable image {path} ({err.__class__.__name__}: {err}); "
                             f"replace or delete it and rerun `acsl data check`") from None


# ---------------------------------------------------------------------------------------------
# resizing (labels; images are resized by THE preprocessing, toolchain.artifacts.preprocess)
def resize_nearest(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an H x W label map (half-pixel centres)."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = label.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return label
    rows = np.minimum(((np.arange(out_h) + 0.5) * (in_h / out_h)).astype(np.int64), in_h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * (in_w / out_w)).astype(np.int64), in_w - 1)
    return label[rows[:, None], cols[None, :]]


# ---------------------------------------------------------------------------------------------
# seeded augmentation
def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one sample in one epoch: reproducible, different per epoch and per index."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index)])


def crop_or_pad(array: np.ndarray, top: int, left: int, height: int, width: int, fill: float) -> np.ndarray:
    """Window [top, top+height) x [left, left+width) of the first two axes; outside is `fill`.

    Negative offsets or a window larger than the array pad with `fill`.
    """
    out = np.full((height, width) + array.shape[2:], fill, dtype=array.dtype)
    src_h, src_w = array.shape[:2]
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, src_h), min(left + width, src_w)
    if y1 > y0 and x1 > x0:
        out[y0 - top:y1 - top, x0 - left:x1 - left] = array[y0:y1, x0:x1]
    return out


def random_window(rng: np.random.Generator, size: int, window: int) -> int:
    """Offset of a random crop of `window` out of `size` (negative = pad when size < window)."""
    lo, hi = min(0, size - window), max(0, size - window)
    return int(rng.integers(lo, hi + 1))


def scaled_size(rng: np.random.Generator, input_size: tuple[int, int], scale_range: tuple[float, float]):
    """Draw a scale in `scale_range`; return the (H, W) to resize to before cropping."""
    lo, hi = float(scale_range[0]), float(scale_range[1])
    scale = lo if hi <= lo else float(rng.uniform(lo, hi))
    return max(1, round(input_size[0] * scale)), max(1, round(input_size[1] * scale))
