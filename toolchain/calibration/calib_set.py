"""The INT8 calibration set: N train images (seeded draw, no augmentation), preprocessed exactly as at
deployment (`data.calibration_arrays`), saved as `calibration_set.npy` + a JSON manifest.

Its key (`cache_key`) combines the ONNX sha256, the preprocessing, the image count, seed and
method: every calibration cache (ONNX Runtime ranges, TensorRT calibration table) is stored with
that key and rebuilt when it does not match.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from toolchain.utils.io import atomic_path, sha256_json, write_json


@dataclass
class CalibrationSet:
    arrays: np.ndarray            # N x 3 x H x W float32
    seed: int
    preprocessing: dict
    split: str = "train"

    @property
    def count(self) -> int:
        return int(self.arrays.shape[0])

    def manifest(self) -> dict:
        return {"images": self.count, "seed": self.seed, "split": self.split, "shape": list(self.arrays.shape),
                "preprocessing": self.preprocessing, "preprocessing_sha256": sha256_json(self.preprocessing),
                "how": "seeded draw of train images without augmentation, preprocessed as at deployment"}

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        with atomic_path(folder / "calibration_set.npy") as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, self.arrays)
        write_json(folder / "calibration_set.json", self.manifest())
        return folder / "calibration_set.npy"


def calibration_set(cfg, n: Optional[int] = None, seed: Optional[int] = None) -> CalibrationSet:
    from toolchain.data import calibration_arrays

    n = n or cfg.quantize.calib_images
    seed = cfg.quantize.calib_seed if seed is None else seed
    arrays = np.stack(calibration_arrays(cfg, n, seed)).astype(np.float32)
    return CalibrationSet(arrays, seed, cfg.preprocessing())


def cache_key(onnx_sha256: str, calib: CalibrationSet, method: str, **extra) -> str:
    return sha256_json({"onnx_sha256": onnx_sha256, "preprocessing": calib.preprocessing, "images": calib.count,
                        "seed": calib.seed, "method": method, **extra})
