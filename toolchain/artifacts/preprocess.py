"""THE deployment preprocessing: what a bundle's `preprocessing` table means, step by step.

`preprocess(image, preprocessing)` is the one function deployment must reproduce:

1. `image` is RGB uint8 H x W x 3.
2. Resize to `input_size` (H, W) with bilinear interpolation, half-pixel centres, no antialiasing
   (the same as `cv2.resize(..., interpolation=cv2.INTER_LINEAR)` without rounding, and as
   `torch.nn.functional.interpolate(mode="bilinear", align_corners=False)`), computed in float32.
   No resize when the size already matches.
3. `x = x * scale` (1/255), then `(x - mean) / std` per channel, in float32.
4. Transpose to C x H x W (layout NCHW once batched).

Every dataset's eval path (`toolchain.data`) and the shipped runtime (`toolchain.runtime.load`)
call this function, so an engine fed with its output sees exactly what the network saw during
validation.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from toolchain.errors import ToolchainError


# ---------------------------------------------------------------------------------------------
# resizing
def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and weight of hi for half-pixel-centre linear interpolation."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    pos = np.clip(pos, 0.0, n_in - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, (pos - lo).astype(np.float32)


def resize_bilinear(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of H x W x C (any dtype) to `size` (H, W); float32 result, not rounded."""
    out_h, out_w = int(size[0]), int(size[1])
    x = image.astype(np.float32, copy=False)
    in_h, in_w = x.shape[:2]
    if (in_h, in_w) == (out_h, out_w):
        return x.copy() if x is image else x
    y0, y1, wy = _linear_taps(in_h, out_h)
    x0, x1, wx = _linear_taps(in_w, out_w)
    wy = wy[:, None, None]
    wx = wx[None, :, None]
    rows = x[y0] * (1 - wy) + x[y1] * wy
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32, copy=False)


# ---------------------------------------------------------------------------------------------
# THE preprocessing
def normalise(pixels_hwc: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """float H x W x 3 in [0, 255] -> normalised float32 C x H x W (steps 3-4 of `preprocess`)."""
    scale = np.float32(preprocessing.get("scale", 1 / 255.0))
    mean = np.asarray(preprocessing["mean"], dtype=np.float32)
    std = np.asarray(preprocessing["std"], dtype=np.float32)
    x = pixels_hwc.astype(np.float32, copy=False) * scale
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def preprocess(image_rgb_uint8_hwc: np.ndarray, preprocessing: dict[str, Any]) -> np.ndarray:
    """THE deployment preprocessing: RGB uint8 H x W x 3 -> float32 3 x H' x W' (see module docstring)."""
    image = np.asarray(image_rgb_uint8_hwc)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ToolchainError(f"preprocess expects an RGB image H x W x 3, got shape {image.shape}; "
                             f"convert grayscale/RGBA images to RGB first")
    if image.dtype != np.uint8:
        raise ToolchainError(f"preprocess expects uint8 pixels, got {image.dtype}; pass the decoded image as is")
    if preprocessing.get("color", "RGB") != "RGB" or preprocessing.get("layout", "NCHW") != "NCHW":
        raise ToolchainError(f"unsupported preprocessing color/layout {preprocessing.get('color')}/"
                             f"{preprocessing.get('layout')}; only RGB/NCHW is implemented")
    if preprocessing.get("resize", "bilinear") != "bilinear":
        raise ToolchainError(f"unsupported preprocessing resize '{preprocessing.get('resize')}'; use bilinear")
    height, width = preprocessing["input_size"]
    return normalise(resize_bilinear(image, (height, width)), preprocessing)
