"""FP16 as an ONNX file: what TensorRT >= 10 strongly typed, TensorRT 11 and TensorRT-RTX build for
"fp16" (they have no FP16 builder flag; precision comes from the tensor types).

`onnxconverter-common`'s `convert_float_to_float16(keep_io_types=True)`: weights and activations in
FP16, the graph inputs/outputs stay FP32 (Cast nodes at the edges), so callers feed and read FP32
exactly as with the FP32 model. Before it is built, the FP16 ONNX is compared with the FP32 ONNX
on ONNX Runtime CPU at the FP16 tolerance on the mean error (`compare.py`); a mismatch is a one-line error.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from toolchain.errors import MissingDependency, ToolchainError
from toolchain.utils.io import atomic_path


def convert_fp16(fp32_onnx: str | Path, out_path: str | Path) -> Path:
    try:
        from onnxconverter_common import float16
    except ImportError:
        raise MissingDependency("onnxconverter-common", "an FP16 ONNX for a strongly typed TensorRT build",
                                install="pip install -e '.[trt]'") from None
    import onnx

    model = onnx.load(str(fp32_onnx))
    # stale FP32 value_info (onnxslim writes it) makes the converter emit mistyped Casts around the ops it
    # keeps in FP32 (Resize: "Type (tensor(float)) of output arg ... does not match"): let it re-infer
    del model.graph.value_info[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number 1e-08 will be truncated": expected for FP16
        half = float16.convert_float_to_float16(model, keep_io_types=True)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp:
        onnx.save(half, str(tmp))
    return out_path


def fp16_onnx_checked(fp32_onnx: Path, out_path: Path, shape: list, input_name: str = "input", log=print) -> dict:
    """Write the FP16 ONNX and check it against the FP32 ONNX; returns the comparison dict."""
    from toolchain.build.compare import compare_onnx_files

    convert_fp16(fp32_onnx, out_path)
    # mean error: FP16 rounding moves a few elements of a barely trained or random-weight model past an
    # element-wise bound; a wrong conversion (a layer overflowing, a mistyped cast) moves the mean
    result = compare_onnx_files(out_path, fp32_onnx, "fp16", shape, input_name, log=log, error_stat="mean")
    if not result.passed:
        raise ToolchainError(f"the FP16 ONNX {out_path.name} does not match the FP32 model on ONNX Runtime: "
                             f"{result.worst().format()}; build fp32, or keep the offending layers in FP32")
    return result.to_dict()
