"""Cost of an ONNX graph: parameters, multiply-accumulates and bytes moved, per layer and in total.

Computed from the graph itself (after ONNX shape inference), so it works on any bundle without the
PyTorch model. MACs count Conv, ConvTranspose, Gemm and MatMul. Bytes moved is an unfused upper
bound: every node reads its inputs and writes its outputs once (weights included).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.errors import ToolchainError

_MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _dims(value_info) -> list[int] | None:
    tt = value_info.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = []
    for d in tt.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        else:
            dims.append(1)  # symbolic (batch) dims count as 1: costs are per image
    return dims


def _load(path):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ToolchainError(f"ONNX file not found: {path}")
    model = onnx.load(str(path))
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as err:  # noqa: BLE001 - onnx raises several types; fall back to the raw graph
        print(f"warning: ONNX shape inference failed ({err}); costs may be incomplete")
    return model


def onnx_cost(path) -> dict:
    """{'params', 'macs', 'bytes_moved', 'layers': [{name, op, params, macs, bytes_moved}]} per image."""
    import onnx
    from onnx import helper

    model = _load(path)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    shapes: dict[str, list[int]] = {}
    elem: dict[str, int] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        d = _dims(vi)
        if d is not None:
            shapes[vi.name] = d
            elem[vi.name] = vi.type.tensor_type.elem_type
    for name, init in inits.items():
        shapes[name] = list(init.dims)
        elem[name] = init.data_type
    # Constant nodes hold weights too (some exporters fold initializers into them)
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            t = node.attribute[0].t
            if t is not None and t.dims is not None:
                shapes[node.output[0]] = list(t.dims)
                elem[node.output[0]] = t.data_type

    def nbytes(name: str) -> int:
        if name not in shapes:
            return 0
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(elem.get(name, onnx.TensorProto.FLOAT))).itemsize
        return int(np.prod(shapes[name], dtype=np.int64)) * itemsize

    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        params = sum(int(np.prod(shapes[i], dtype=np.int64)) for i in node.input if i in inits)
        macs = _node_macs(node, shapes)
        moved = sum(nbytes(i) for i in node.input if i) + sum(nbytes(o) for o in node.output if o)
        layers.append({"name": node.name or f"{node.op_type}_{index}", "op": node.op_type,
                       "params": params, "macs": macs, "bytes_moved": moved})
    params_total = sum(int(np.prod(i.dims, dtype=np.int64)) for i in graph.initializer)
    return {"params": params_total, "macs": sum(l["macs"] for l in layers),
            "bytes_moved": sum(l["bytes_moved"] for l in layers), "layers": layers,
            "bytes_moved_note": "unfused upper bound: each node reads inputs and writes outputs once"}


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return a.i if a.type == a.INT else list(a.ints)
    return default


def _node_macs(node, shapes) -> int:
    if node.op_type not in _MAC_OPS or len(node.input) < 2:
        return 0
    w = shapes.get(node.input[1])
    if node.op_type == "Conv":
        out = shapes.get(node.output[0])
        if not out or not w:
            return 0
        # w: Cout x Cin/g x kh x kw ; each output element costs Cin/g * kh * kw MACs
        return int(np.prod(out[1:], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    if node.op_type == "ConvTranspose":
        x = shapes.get(node.input[0])
        if not x or not w:
            return 0
        # w: Cin x Cout/g x kh x kw ; each input element scatters to Cout/g * kh * kw outputs
        return int(np.prod(x[1:], dtype=np.int64)) * int(np.prod(w[1:], dtype=np.int64))
    a, b = shapes.get(node.input[0]), w
    if not a or not b:
        return 0
    if node.op_type == "Gemm":
        k = a[0] if _attr(node, "transA", 0) else a[-1]
        n = b[0] if _attr(node, "transB", 0) else b[-1]
        return int(k * n)  # per row (per image)
    # MatMul: batch dims of `a` beyond the first multiply the cost
    rows = int(np.prod(a[1:-1], dtype=np.int64)) if len(a) > 2 else 1
    return rows * int(a[-1]) * int(b[-1])


def compare_layers(before: dict, after: dict) -> list[dict]:
    """Per-layer params/MACs of two costs of the same architecture (dense vs slim), matched by name."""
    after_by_name = {l["name"]: l for l in after["layers"]}
    rows = []
    for layer in before["layers"]:
        if layer["macs"] == 0 and layer["params"] == 0:
            continue
        other = after_by_name.get(layer["name"])
        rows.append({"name": layer["name"], "op": layer["op"],
                     "params_before": layer["params"], "params_after": other["params"] if other else None,
                     "macs_before": layer["macs"], "macs_after": other["macs"] if other else None})
    return rows
