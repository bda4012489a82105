"""Explicit INT8: a Q/DQ ONNX from ONNX Runtime's `quantize_static` (QDQ format, symmetric INT8
activations and weights, per-channel weights, FP32 biases; MinMax / Entropy / Percentile calibration).

The same Q/DQ model runs on ONNX Runtime CPU here (so INT8 accuracy is measured for real) and is
what TensorRT builds explicitly (the path NVIDIA recommends from TensorRT 10 on). Activation ranges
are cached as JSON keyed by the ONNX hash + calibration set, so the per-layer fallback re-quantizes
without re-calibrating.
"""
from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from toolchain.calibration.calib_set import CalibrationSet, cache_key
from toolchain.errors import ToolchainError
from toolchain.utils.io import atomic_path, read_json, sha256_file, write_json

METHODS = ("minmax", "entropy", "percentile")
# TensorRT's Q/DQ rules (docs/TENSORRT.md): symmetric INT8 (zero point 0) activations per tensor and
# weights per output channel; biases stay FP32, because TensorRT's parser refuses an INT32
# DequantizeLinear ("input has type Int32 but must have type FP8, FP4, Int4, Int8, or UInt8") and
# fuses the FP32 bias into the INT8 convolution itself. ONNX Runtime runs the same file, so the
# accuracy gate measures exactly the model TensorRT builds.
TRT_QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


class ArrayReader:
    """`onnxruntime.quantization.CalibrationDataReader` over an N x C x H x W array, one image per call."""

    def __init__(self, arrays: np.ndarray, input_name: str, batch: int = 1) -> None:
        self.arrays, self.input_name, self.batch = arrays, input_name, batch
        self._next = 0

    def get_next(self) -> Optional[dict]:
        if self._next >= len(self.arrays):
            return None
        chunk = self.arrays[self._next:self._next + self.batch]
        self._next += self.batch
        return {self.input_name: np.ascontiguousarray(chunk, dtype=np.float32)}

    def rewind(self) -> None:
        self._next = 0

    def __len__(self) -> int:
        return (len(self.arrays) + self.batch - 1) // self.batch


def _calibrate_method(method: str):
    from onnxruntime.quantization import CalibrationMethod

    if method not in METHODS:
        raise ToolchainError(f"quantize.method must be one of {', '.join(METHODS)} (got {method})")
    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[method]


def compute_nodes(onnx_path: str | Path) -> list[str]:
    """Names of the nodes whose exclusion keeps a layer's arithmetic in FP32 (the fallback candidates)."""
    from toolchain.export.onnx_io import load_onnx

    return [n.name for n in load_onnx(onnx_path).graph.node if n.op_type in COMPUTE_OPS and n.name]


def _input_spec(onnx_path: Path) -> tuple[str, Optional[int]]:
    from toolchain.export.onnx_io import graph_inputs, load_onnx

    inp = graph_inputs(load_onnx(onnx_path))[0]
    first = inp.type.tensor_type.shape.dim[0]
    return inp.name, (first.dim_value if first.HasField("dim_value") and first.dim_value > 0 else None)


class RangeCache:
    """ONNX Runtime's calibration-range JSON plus a key file; a stale or corrupt cache is rebuilt."""

    def __init__(self, folder: str | Path, key: str) -> None:
        self.path = Path(folder) / "ort_calibration_ranges.json"
        self.key_path = Path(folder) / "ort_calibration_ranges.key.json"
        self.key = key
        self.note = ""

    def valid(self) -> bool:
        if not self.path.exists():
            self.note = "calibration ranges computed"
            return False
        try:
            stored = read_json(self.key_path).get("key")
            json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored != self.key:
            self.note = (f"calibration cache {self.path.name} did not match this model/calibration set "
                         "(or was corrupt): rebuilt it")
            self.path.unlink(missing_ok=True)
            return False
        self.note = f"calibration ranges reused from {self.path.name}"
        return True

    def commit(self) -> None:
        if self.path.is_file():  # ONNX Runtime writes the ranges in dict order: canonical (sorted) bytes instead
            with contextlib.suppress(ValueError, OSError):
                write_json(self.path, json.loads(self.path.read_text(encoding="utf-8")))
        write_json(self.key_path, {"key": self.key})


def quantize_qdq(fp32_onnx: str | Path, out_path: str | Path, calib: CalibrationSet, method: str = "minmax",
                 nodes_to_exclude: Sequence[str] = (), cache_dir: Optional[str | Path] = None) -> dict:
    """Write a Q/DQ INT8 model; returns {"path", "excluded", "calibration_cache", "note"}."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fp32_onnx, out_path = Path(fp32_onnx), Path(out_path)
    input_name, fixed_batch = _input_spec(fp32_onnx)
    reader = ArrayReader(calib.arrays, input_name, batch=fixed_batch or 1)
    kwargs = dict(quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=False,
                  activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                  calibrate_method=_calibrate_method(method), nodes_to_exclude=list(nodes_to_exclude),
                  extra_options=TRT_QDQ_OPTIONS)
    cache = None
    if cache_dir is not None and "calibration_cache_path" in inspect.signature(quantize_static).parameters:
        cache = RangeCache(cache_dir, cache_key(sha256_file(fp32_onnx), calib, method))
        cache.valid()
        kwargs["calibration_cache_path"] = str(cache.path)
    with atomic_path(out_path) as tmp, _quiet():
        try:
            quantize_static(str(fp32_onnx), str(tmp), reader, **kwargs)
        except (ValueError, RuntimeError, KeyError) as err:
            raise ToolchainError(f"INT8 quantization of {fp32_onnx.name} failed: {str(err).splitlines()[0]}") from None
    if cache is not None:
        cache.commit()
    return {"path": out_path, "excluded": list(nodes_to_exclude), "method": method,
            "calibration_cache": str(cache.path) if cache else None, "note": cache.note if cache else ""}


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's quantizer logs pre-processing advice and prints progress; keep the CLI readable."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)
