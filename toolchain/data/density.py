"""Head points -> density maps whose sum is the head count.

Convention: a point (x, y) is in pixel units of the image, pixel (row i, col j) covers
[j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5).

Each head is a fixed-sigma Gaussian evaluated at the pixel centres within 3 sigma, truncated and
normalised to sum exactly 1. A head near a border keeps only the in-image part of its kernel and is
renormalised, so every head still contributes exactly 1 (the map's sum equals the count up to float
error). Points slightly outside the image (up to one pixel, rounding in annotations) are clipped
onto the border; callers drop points that a crop moved out of the image before calling.

The full-resolution map is then sum-pooled by `stride` (the model's output stride), which keeps the
sum, so the target is `1 x H/stride x W/stride`. The kernel is separable, so a head's weights are an
outer product of two normalised 1-D windows; all heads are scattered at once with `np.bincount`.
"""
from __future__ import annotations

import math

import numpy as np

from toolchain.errors import ToolchainError


def _axis_weights(centres: np.ndarray, length: int, sigma: float, radius: int):
    """Per head: pixel indices (N x K) and normalised 1-D Gaussian weights (0 outside the image)."""
    offsets = np.arange(-radius, radius + 1)
    index = np.floor(centres).astype(np.int64)[:, None] + offsets[None, :]
    dist = (index + 0.5) - centres[:, None]
    weights = np.exp(-0.5 * (dist / sigma) ** 2)
    inside = (index >= 0) & (index < length)
    weights = np.where(inside, weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(index, 0, length - 1), weights


def density_map(points: np.ndarray, size: tuple[int, int], sigma: float, stride: int = 1) -> np.ndarray:
    """Density map (float32, H/stride x W/stride) of `points` (N x 2, x/y in pixels of an H x W image)."""
    height, width = int(size[0]), int(size[1])
    if height % stride or width % stride:
        raise ToolchainError(f"input size {height}x{width} is not a multiple of data.density_stride={stride}; "
                             f"choose data.input_size divisible by the model's output stride")
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    out_h, out_w = height // stride, width // stride
    if len(points) == 0:
        return np.zeros((out_h, out_w), dtype=np.float32)
    xs = np.clip(points[:, 0], 0.0, np.nextafter(width, 0))
    ys = np.clip(points[:, 1], 0.0, np.nextafter(height, 0))
    radius = max(1, int(math.ceil(3 * sigma)))
    cols, wx = _axis_weights(xs, width, sigma, radius)
    rows, wy = _axis_weights(ys, height, sigma, radius)
    # pool indices first (sum-pooling commutes with the scatter), then scatter all heads at once
    flat = (rows[:, :, None] // stride) * out_w + (cols[:, None, :] // stride)
    weights = wy[:, :, None] * wx[:, None, :]
    dense = np.bincount(flat.ravel(), weights=weights.ravel(), minlength=out_h * out_w)
    return dense.reshape(out_h, out_w).astype(np.float32)


def scale_points(points: np.ndarray, from_size: tuple[int, int], to_size: tuple[int, int]) -> np.ndarray:
    """Rescale x/y of points from an image of `from_size` (H, W) to one of `to_size`."""
    points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    factor = np.array([to_size[1] / from_size[1], to_size[0] / from_size[0]])
    return points * factor
