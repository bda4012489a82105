"""Implicit INT8 calibration for TensorRT < 11 and DLA: an IInt8EntropyCalibrator2 (or MinMax) fed
from the calibration set, with a calibration cache keyed by ONNX hash and preprocessing.

The batching and the cache are plain Python (tested everywhere); `make_trt_calibrator` wraps them
in a subclass of TensorRT's calibrator class where `tensorrt` is installed.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from toolchain.utils.io import atomic_write_bytes, read_json, write_json

# First line of a TensorRT calibration table, e.g. "TRT-8601-EntropyCalibration2"
_HEADER = re.compile(rb"^TRT-\d+-[A-Za-z0-9]+\r?\n")


class CalibrationBatcher:
    """Fixed-size contiguous NCHW float32 batches; a short last batch is padded by repeating images
    (TensorRT's calibrator needs a constant batch size)."""

    def __init__(self, arrays: np.ndarray, batch_size: int) -> None:
        if len(arrays) == 0:
            raise ValueError("calibration set is empty")
        self.arrays = np.ascontiguousarray(arrays, dtype=np.float32)
        self.batch_size = int(batch_size)

    def __len__(self) -> int:
        return (len(self.arrays) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        for start in range(0, len(self.arrays), self.batch_size):
            batch = self.arrays[start:start + self.batch_size]
            if len(batch) < self.batch_size:
                pad = np.resize(np.arange(len(self.arrays)), self.batch_size - len(batch))
                batch = np.concatenate([batch, self.arrays[pad]])
            yield np.ascontiguousarray(batch)


class CalibrationCache:
    """A TensorRT calibration table (raw, usable by `trtexec --calib`) plus `<cache>.key.json`."""

    def __init__(self, path: str | Path, key: str) -> None:
        self.path = Path(path)
        self.key_path = self.path.with_name(self.path.name + ".key.json")
        self.key = key
        self.note = ""

    def read(self) -> Optional[bytes]:
        """The cached table when present, intact and made for this key; else None (and `note` says why)."""
        if not self.path.exists():
            self.note = "no calibration cache yet: calibrating"
            return None
        data = self.path.read_bytes()
        try:
            stored = read_json(self.key_path).get("key")
        except (OSError, ValueError, AttributeError):
            stored = None
        if not _HEADER.match(data):
            self.note = f"calibration cache {self.path} is corrupt (no TensorRT header): rebuilding it"
        elif stored != self.key:
            self.note = (f"calibration cache {self.path} was made for another model or preprocessing: "
                         "rebuilding it")
        else:
            self.note = f"reusing calibration cache {self.path}"
            return data
        self.path.unlink(missing_ok=True)
        return None

    def write(self, data: bytes) -> None:
        atomic_write_bytes(self.path, bytes(data))
        write_json(self.key_path, {"key": self.key})


def make_trt_calibrator(trt: Any, batcher: CalibrationBatcher, cache: CalibrationCache, method: str,
                        to_device: Callable[[np.ndarray], int], input_name: str = "input"):
    """An IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator over `batcher`; `to_device` copies a batch to
    GPU memory and returns its address."""
    base = trt.IInt8EntropyCalibrator2 if method == "entropy" else trt.IInt8MinMaxCalibrator

    class _Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._batches = iter(batcher)

        def get_batch_size(self) -> int:
            return batcher.batch_size

        def get_batch(self, names, *args):
            try:
                batch = next(self._batches)
            except StopIteration:
                return None
            return [to_device(batch)]

        def read_calibration_cache(self):
            return cache.read()

        def write_calibration_cache(self, data) -> None:
            cache.write(bytes(data))

    return _Calibrator()
