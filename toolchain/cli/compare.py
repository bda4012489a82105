"""`acsl compare A B`: run two models on the same inputs and compare every output (Polygraphy-style).

A and B are each a PyTorch checkpoint (.pt, from `acsl train` / `acsl prune`), an ONNX model (ONNX
Runtime CPU) or a TensorRT engine (.engine / .plan, needs its sidecar and a GPU it was built for). A is
the candidate, B the reference. Tolerances follow the candidate's precision (fp32 / fp16 / int8; read
from an engine's sidecar or the file name, or --precision); on a mismatch the worst tensor, its index
and both values are printed and the exit status is 1.
"""
from __future__ import annotations

import json
from pathlib import Path

from toolchain.errors import ToolchainError


def register(sub) -> None:
    p = sub.add_parser("compare", help="compare two models (checkpoint / ONNX / engine) output by output")
    p.add_argument("candidate", help="model A: .pt checkpoint, .onnx, or .engine/.plan")
    p.add_argument("reference", help="model B (the reference): .pt checkpoint, .onnx, or .engine/.plan")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"],
                   help="tolerance set (default: A's precision from its sidecar or name, else fp32)")
    p.add_argument("--atol", type=float, help="absolute tolerance as a fraction of max |reference| (overrides)")
    p.add_argument("--rtol", type=float, help="element-wise relative tolerance (overrides)")
    p.add_argument("--error-stat", choices=["elementwise", "mean"], default="elementwise",
                   help="elementwise: every element within tolerance (default); mean: the mean error")
    p.add_argument("--shape", help="input shape NxCxHxW when neither model fixes it, e.g. 1x3x96x128")
    p.add_argument("--inputs", type=int, default=2, help="random inputs to compare on (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", dest="json_out", help="also write the comparison as JSON here")
    p.set_defaults(func=run)


def _kind(path: Path) -> str:
    if not path.is_file():
        raise ToolchainError(f"{path} not found; pass a .pt checkpoint, an .onnx model or an .engine file")
    from toolchain.artifacts.kinds import ONNX, TENSORRT_ENGINE, TORCH_CHECKPOINT, model_kind

    kind = model_kind(path, (TORCH_CHECKPOINT, ONNX, TENSORRT_ENGINE))
    return {TORCH_CHECKPOINT: "torch", ONNX: "onnx", TENSORRT_ENGINE: "engine"}[kind]


def guess_precision(path: Path) -> str:
    if _kind(path) == "engine":
        from toolchain.artifacts.sidecar import sidecar_path

        side = sidecar_path(path)
        if side.is_file():
            return json.loads(side.read_text()).get("precision", "fp32")
    name = path.name.lower()
    if "int8" in name or "qdq" in name:
        return "int8"
    return "fp16" if "fp16" in name else "fp32"


def _fixed_shape(path: Path, kind: str):
    if kind == "onnx":
        from toolchain.export.onnx_io import graph_inputs, load_onnx

        inp = graph_inputs(load_onnx(path))[0]
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in inp.type.tensor_type.shape.dim]
        return inp.name, dims
    if kind == "engine":
        from toolchain.artifacts.sidecar import read_sidecar

        name, prof = next(iter(read_sidecar(path)["input_shapes"].items()))
        return name, list(prof["opt"])
    from toolchain.train.checkpoint import load_checkpoint

    cfg = load_checkpoint(path).get("config") or {}
    size = (cfg.get("data") or {}).get("input_size")
    return "input", [None, 3, *size] if size else [None, 3, None, None]


def _runner(path: Path, kind: str, shape: list):
    if kind == "onnx":
        from toolchain.runtime.ort_runner import OrtRunner

        return OrtRunner(path, ["CPUExecutionProvider"]).load()
    if kind == "engine":
        from toolchain.runtime.trt_runner import TrtRunner

        return TrtRunner(path).load()
    from toolchain.runtime.torch_runner import TorchRunner
    from toolchain.train.checkpoint import load_model

    model, _ = load_model(path)
    return TorchRunner(model.eval(), tuple(shape)).load()


def resolve_shape(a: tuple, b: tuple, given: str | None) -> list[int]:
    if given:
        try:
            return [int(d) for d in given.lower().split("x")]
        except ValueError:
            raise ToolchainError(f"--shape {given}: write it as NxCxHxW, e.g. 1x3x96x128") from None
    dims = []
    for da, db in zip(a[1], b[1]):
        if da is not None and db is not None and da != db:
            raise ToolchainError(f"the models take different inputs ({a[1]} vs {b[1]}); they cannot be compared")
        dims.append(da if da is not None else db)
    if dims and dims[0] is None:
        dims[0] = 1
    if any(d is None for d in dims):
        raise ToolchainError(f"input shape {dims} is not fixed by either model; pass --shape NxCxHxW")
    return dims


def run(args) -> int:
    import numpy as np

    from toolchain.build.compare import compare_outputs, random_feeds

    a, b = Path(args.candidate), Path(args.reference)
    kinds = (_kind(a), _kind(b))
    fixed = (_fixed_shape(a, kinds[0]), _fixed_shape(b, kinds[1]))
    shape = resolve_shape(fixed[0], fixed[1], args.shape)
    precision = args.precision or guess_precision(a)
    runners = []
    try:
        for path, kind in zip((a, b), kinds):
            runners.append(_runner(path, kind, shape))
        feeds = random_feeds(fixed[1][0], shape, max(1, args.inputs), args.seed)
        renamed = [{runners[0].input_names[0]: f[fixed[1][0]]} for f in feeds]
        got = []
        for feed_a, feed_b in zip(renamed, feeds):
            got.append((runners[0].infer(feed_a), runners[1].infer(feed_b)))
    finally:
        for r in runners:
            r.close()
    cand = {k: np.concatenate([g[0][k] for g in got]) for k in got[0][0]}
    ref = {k: np.concatenate([g[1][k] for g in got]) for k in got[0][1]}
    result = compare_outputs(cand, ref, precision, args.atol, args.rtol, args.error_stat)
    result.inputs = len(feeds)
    print(f"compare {a.name} ({kinds[0]}) vs {b.name} ({kinds[1]}) on {len(feeds)} random input(s) {shape}, "
          f"{precision} tolerance:")
    for t in result.tensors:
        print(f"  {t.format()}")
    print(result.summary().split(":")[0])
    if args.json_out:
        from toolchain.utils.io import write_json

        write_json(args.json_out, result.to_dict())
    return 0 if result.passed else 1
