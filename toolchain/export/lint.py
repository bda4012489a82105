"""Graph lint per target: list the op types and flag what the target cannot parse or runs slowly.

Rules are data (op type -> what TensorRT does with it and from which version), so a user learns
before reaching the device that, say, MaxUnpool will not parse or a dynamic Resize will be slow.
ONNX Runtime CPU targets run every standard op; only custom domains are flagged there.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

# op type -> (severity, reason, first TensorRT version that parses it or None for "never")
TRT_OP_RULES: dict[str, tuple[str, str, Optional[str]]] = {
    "MaxUnpool": ("error", "not supported by TensorRT's ONNX parser", None),
    "Unique": ("error", "not supported by TensorRT's ONNX parser", None),
    "StringNormalizer": ("error", "string ops are not supported by TensorRT", None),
    "GridSample": ("error", "parsed by TensorRT from 8.6 on", "8.6"),
    "NonZero": ("warning", "data-dependent output shape: slow and blocks CUDA graphs", "8.5"),
    "NonMaxSuppression": ("warning", "data-dependent output shape: slow", "8.5"),
    "ScatterND": ("warning", "runs as a slow scatter kernel; avoid in hot paths", "8.5"),
    "ScatterElements": ("warning", "runs as a slow scatter kernel; avoid in hot paths", "8.5"),
    "Loop": ("warning", "control flow runs slowly in TensorRT", "8.5"),
    "If": ("warning", "control flow: both branches are built; usually a sign of a traced Python branch", "8.5"),
    "Einsum": ("warning", "limited Einsum support in TensorRT; prefer MatMul", "8.5"),
}
# Layers the DLA executes; everything else falls back to the GPU (with GPU_FALLBACK) and costs a copy.
DLA_OPS = {"Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Clip",
           "MaxPool", "AveragePool", "GlobalAveragePool", "Add", "Sub", "Mul", "Max", "Min", "Concat", "Resize",
           "Softmax", "PRelu", "Slice", "Gemm", "MatMul", "Flatten", "Reshape", "Identity", "Constant", "Pad",
           "Upsample", "Div", "Pow", "Sqrt", "Abs"}
INT64 = 7  # onnx.TensorProto.INT64
# onnx.TensorProto element types a TensorRT DequantizeLinear accepts as input (INT8, UINT8, INT4, FP8 E4M3,
# FP4 E2M1); INT32 (ONNX Runtime's quantized biases) is refused by the parser for every flavour
QDQ_DTYPES = {3: "INT8", 2: "UINT8", 22: "INT4", 17: "FLOAT8E4M3FN", 23: "FLOAT4E2M1"}
DTYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 10: "FLOAT16", 4: "UINT16", 5: "INT16"}


@dataclass
class LintIssue:
    severity: str    # "error" (the target cannot run it) or "warning" (runs slowly / with a caveat)
    op_type: str
    node: str
    message: str

    def format(self) -> str:
        return f"{self.severity}: {self.op_type} (node '{self.node}'): {self.message}"


@dataclass
class LintReport:
    target: str
    op_counts: dict[str, int]
    issues: list[LintIssue] = field(default_factory=list)

    @property
    def errors(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[LintIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    def format(self) -> str:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.op_counts.items()))
        lines = [f"graph lint for target '{self.target}': {sum(self.op_counts.values())} nodes: {ops}"]
        lines += ["  " + i.format() for i in self.issues] or ["  no problems found"]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"target": self.target, "op_counts": self.op_counts,
                "issues": [vars(i) for i in self.issues]}


def _version_tuple(v: str) -> tuple[int, ...]:
    from toolchain.artifacts.trt_compat import parse_version

    return parse_version(v)


def _constant_names(graph) -> set[str]:
    names = {i.name for i in graph.initializer}
    names |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return names


def _node_name(node, index: int) -> str:
    return node.name or f"{node.op_type}_{index}"


def _initializer_types(graph) -> dict:
    types = {i.name: (i.data_type, i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value" and a.HasField("t"):
                    types[n.output[0]] = (a.t.data_type, a.t)
    return types


def _value_types(graph) -> dict:
    out = {}
    for vi in list(graph.value_info) + list(graph.input) + list(graph.output):
        if vi.type.HasField("tensor_type"):
            out[vi.name] = vi.type.tensor_type.elem_type
    return out


def _qdq_issues(graph) -> list[LintIssue]:
    """Q/DQ that TensorRT's ONNX parser refuses: INT32 (or other non-8/4-bit) DequantizeLinear inputs
    (ONNX Runtime's quantized biases), non-zero zero points (TensorRT quantization is symmetric)."""
    import numpy as np
    from onnx import numpy_helper

    inits, values = _initializer_types(graph), _value_types(graph)
    issues = []
    for index, node in enumerate(graph.node):
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        name = _node_name(node, index)
        if node.op_type == "DequantizeLinear" and node.input:
            dtype = inits.get(node.input[0], (values.get(node.input[0]), None))[0]
            if dtype is not None and dtype not in QDQ_DTYPES:
                hint = " (a quantized bias: quantize with QuantizeBias=False)" if dtype == 6 else ""
                issues.append(LintIssue("error", node.op_type, name,
                                        f"input has type {DTYPE_NAMES.get(dtype, dtype)}; TensorRT's parser needs "
                                        f"INT8, UINT8, INT4, FP8 or FP4{hint}"))
        if len(node.input) > 2 and node.input[2] in inits:
            zp = numpy_helper.to_array(inits[node.input[2]][1])
            if np.any(zp != 0):
                issues.append(LintIssue("error", node.op_type, name,
                                        "non-zero zero point: TensorRT supports symmetric quantization only "
                                        "(quantize with ActivationSymmetric/WeightSymmetric)"))
    return issues


def _trt_issues(graph, target) -> list[LintIssue]:
    trt_min = target.tensorrt.min if target.tensorrt else "8.5"
    trt_max = target.tensorrt.max if target.tensorrt else "10.x"
    if getattr(target, "tensorrt_flavour", "tensorrt") == "tensorrt-rtx":
        trt_min, trt_max = "10.0", "10.x"  # TensorRT-RTX 1.x parses what TensorRT 10 parses (op rules)
    constants = _constant_names(graph)
    issues = []
    for index, node in enumerate(graph.node):
        name = _node_name(node, index)
        if node.domain not in ("", "ai.onnx"):
            issues.append(LintIssue("error", node.op_type, name, f"custom domain '{node.domain}' needs a TensorRT plugin"))
            continue
        rule = TRT_OP_RULES.get(node.op_type)
        if rule:
            severity, reason, since = rule
            unparsable = since is not None and _version_tuple(trt_min) < _version_tuple(since)
            if since is None or unparsable or severity == "warning":
                issues.append(LintIssue("error" if unparsable else severity, node.op_type, name,
                                        f"{reason} (target TensorRT {trt_min}-{trt_max})"))
        if node.op_type == "Cast" and any(a.name == "to" and a.i == INT64 for a in node.attribute) \
                and _version_tuple(trt_min) < (10, 0, 0):
            issues.append(LintIssue("warning", "Cast", name, "casts to INT64, which TensorRT < 10 lacks (narrowed to "
                                    "INT32 with a warning); export with static shapes to remove shape arithmetic"))
        if node.op_type == "Resize" and any(i and i not in constants for i in node.input[1:]):
            issues.append(LintIssue("warning", "Resize", name, "dynamic Resize (scales/sizes computed at run time): "
                                    "slower and rejected on DLA; export with static shapes"))
        if target.dla_core is not None and node.op_type not in DLA_OPS:
            issues.append(LintIssue("warning", node.op_type, name,
                                    f"not run by DLA core {target.dla_core}: falls back to the GPU"))
    return issues + _qdq_issues(graph)


def _ort_issues(graph) -> list[LintIssue]:
    return [LintIssue("error", n.op_type, _node_name(n, i), f"custom domain '{n.domain}' needs a custom op library")
            for i, n in enumerate(graph.node) if n.domain not in ("", "ai.onnx", "com.microsoft")]


def lint_onnx(model_or_path, target) -> LintReport:
    """Op counts of the graph and the issues for `target` (a Target)."""
    from pathlib import Path

    if isinstance(model_or_path, (str, Path)):
        from toolchain.export.onnx_io import load_onnx

        model_or_path = load_onnx(model_or_path)
    graph = model_or_path.graph
    counts = dict(Counter(n.op_type for n in graph.node))
    issues = _trt_issues(graph, target) if target.backend == "tensorrt" else _ort_issues(graph)
    return LintReport(target.name, counts, issues)
