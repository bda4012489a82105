"""The TensorRT build matrix: every zoo model, dense and slim, x {fp32, fp16, int8} x {static, dynamic
batch with the target's optimisation profile}, parsed and built by the real TensorRT-RTX builder
(`tensorrt-rtx-cu12`, on this CPU-only machine: engines are built ahead of time for the target's
compute capabilities, nothing is run).

FP32: the exported ONNX. FP16: its FP16 ONNX (keep_io_types, checked against FP32 on ONNX Runtime).
INT8: its Q/DQ ONNX from `toolchain.calibration.qdq.quantize_qdq` (TensorRT rules: symmetric, per-channel
weights, FP32 biases), calibrated on random images (weights are random too: this measures what builds
and how big it is, not accuracy). Slim: 50 % of every prunable channel group removed (lowest L1),
through the same pruning graph and surgery `acsl prune` uses.

    python benchmarks/trt_build_matrix.py                 # writes benchmarks/results/trt_build_matrix.{json,md}
    python benchmarks/trt_build_matrix.py --models segnet --width 0.5 --out /tmp/m
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from toolchain.errors import ToolchainError  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8")
SHAPES = ("static", "dynamic")
VARIANTS = ("dense", "slim")
# the project's export sizes: CIFAR models at 32x32, dense prediction at 96x128
MIN_WEIGHTS_FOR_SIZE_RULE = 100_000
INPUT_SIZES = {"classification": (32, 32), "segmentation": (96, 128), "counting": (96, 128)}


def model_config(name: str, width: float, input_size: Optional[tuple[int, int]], work: Path, dynamic: bool):
    from toolchain.config import validate_config
    from toolchain.models.registry import model_task

    task = model_task(name)
    size = list(input_size or INPUT_SIZES[task])
    data = {"kind": "synthetic", "input_size": size, "num_classes": 10 if task == "classification" else 4,
            "max_images": 4}
    if task == "counting":
        data["num_classes"] = 1
    return validate_config({"name": f"matrix_{name}", "task": task, "model": {"name": name, "width": width},
                            "data": data, "export": {"dynamic": ["batch"] if dynamic else []},
                            "out_dir": str(work / "runs")})


def slim_model(model: torch.nn.Module, input_size: tuple[int, int], fraction: float = 0.5) -> torch.nn.Module:
    """Remove `fraction` of every prunable channel group (lowest L1 filters), as a pruned model would."""
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.importance import l1_saliency
    from toolchain.prune.surgery import prune_model

    graph = build_pruning_graph(model, input_size)
    removed = {}
    for group in graph.groups:
        n = min(int(group.size * fraction), group.size - 1)
        if n > 0:
            removed[group.index] = sorted(torch.argsort(l1_saliency(graph, group))[:n].tolist())
    slim, _, _ = prune_model(graph, removed, verify=False)
    return slim.eval()


def _network_types(network, trt) -> dict:
    """What the parsed (strongly typed) network computes in: FP16 tensors, INT8 dequantize layers."""
    half = int8_dq = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.DEQUANTIZE and layer.get_input(0).dtype == trt.DataType.INT8:
            int8_dq += 1
        if layer.num_outputs and layer.get_output(0).dtype == trt.DataType.HALF:
            half += 1
    return {"half_layers": half, "int8_dequantize_layers": int8_dq}


def build_cell(trt, onnx_path: Path, engine_path: Path, precision: str, profile: dict, target) -> dict:
    """Parse and build one engine with the real builder; a failure is a row with its one-line reason."""
    from toolchain.artifacts.trt_compat import capabilities
    from toolchain.build.trt_engine import EngineRequest, build_engine, parse_onnx

    caps = capabilities(trt)
    row = {"parsed": False, "built": False, "reason": None, "layers": None, "engine_bytes": None,
           "build_seconds": None}
    try:
        _, network, _ = parse_onnx(trt, onnx_path, caps.precision_plan(precision)["strongly_typed"])
        row.update(parsed=True, layers=int(network.num_layers), **_network_types(network, trt))
        del network
        started = time.perf_counter()
        req = EngineRequest(onnx_path, engine_path, precision, target.workspace_mib, profile, target.name,
                            input_name="input", explicit_int8=precision == "int8",
                            compute_capabilities=list(target.compute_capabilities), flavour=target.tensorrt_flavour)
        build_engine(req, log=lambda s: None)
        row.update(built=True, engine_bytes=engine_path.stat().st_size,
                   build_seconds=round(time.perf_counter() - started, 2))
    except ToolchainError as err:
        row["reason"] = str(err)
    return row


def precision_onnx(fp32: Path, precision: str, shape: list, work: Path) -> tuple[Path, dict]:
    """The ONNX TensorRT-RTX builds for `precision` (and a note of how it was made)."""
    if precision == "fp32":
        return fp32, {}
    if precision == "fp16":
        from toolchain.build.fp16 import fp16_onnx_checked

        check = fp16_onnx_checked(fp32, work / "model.fp16.onnx", shape, log=lambda s: None)
        return work / "model.fp16.onnx", {"fp16_max_abs_diff": check["tensors"][0]["max_abs"]}
    from toolchain.calibration.calib_set import CalibrationSet
    from toolchain.calibration.qdq import quantize_qdq

    calib = np.random.default_rng(0).standard_normal((4, *shape[1:])).astype(np.float32)
    quantize_qdq(fp32, work / "model.int8.qdq.onnx", CalibrationSet(calib, 0, {}), "minmax")
    return work / "model.int8.qdq.onnx", {}


def run_matrix(models: list[str], work: Path, *, widths: Optional[dict] = None, width: float = 1.0,
               input_size: Optional[tuple[int, int]] = None, variants=VARIANTS, precisions=PRECISIONS,
               shapes=SHAPES, target="desktop-rtx", log: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, variant, shapes, precision); `target` is a name or a Target."""
    from toolchain.build.shapes import optimisation_profile
    from toolchain.artifacts.trt_compat import capabilities, import_tensorrt
    from toolchain.export import export_model
    from toolchain.export.onnx_io import graph_inputs, load_onnx
    from toolchain.models import build_from_config
    from toolchain.targets import Target, load_target

    target = target if isinstance(target, Target) else load_target(target)
    trt = import_tensorrt("the build matrix", flavour=target.tensorrt_flavour)
    caps = capabilities(trt)
    rows = []
    for name in models:
        w = (widths or {}).get(name, width)
        for shape_kind in shapes:
            cfg = model_config(name, w, input_size, work, dynamic=shape_kind == "dynamic")
            torch.manual_seed(0)
            dense = build_from_config(cfg).eval()
            for variant in variants:
                cell_dir = work / name / variant / shape_kind
                cell_dir.mkdir(parents=True, exist_ok=True)
                net = dense if variant == "dense" else slim_model(build_from_config(cfg).eval(),
                                                                  tuple(cfg.data.input_size))
                fp32 = cell_dir / "model.onnx"
                export_model(net, cfg, fp32, real_images=0, log=None)
                dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else d.dim_param
                        for d in graph_inputs(load_onnx(fp32))[0].type.tensor_type.shape.dim]
                profile = optimisation_profile(dims, tuple(cfg.data.input_size), target)
                params = sum(p.numel() for p in net.parameters())
                for precision in precisions:
                    base = {"model": name, "width": w, "variant": variant, "precision": precision,
                            "shapes": shape_kind, "profile": profile, "params": int(params),
                            "flavour": caps.flavour, "tensorrt_version": caps.version, "target": target.name}
                    try:
                        src, note = precision_onnx(fp32, precision, profile["opt"], cell_dir)
                    except ToolchainError as err:
                        rows.append({**base, "parsed": False, "built": False, "reason": str(err)})
                        log(f"{name} {variant} {precision} {shape_kind}: {err}")
                        continue
                    row = {**base, **note, "onnx_bytes": src.stat().st_size,
                           **build_cell(trt, src, cell_dir / f"{precision}.engine", precision, profile, target)}
                    rows.append(row)
                    (cell_dir / f"{precision}.engine").unlink(missing_ok=True)  # sizes are recorded; keep disk free
                    log(f"{name:18s} {variant:5s} {precision:4s} {shape_kind:7s} parsed={row['parsed']} "
                        f"built={row['built']} layers={row['layers']} engine={row['engine_bytes']} "
                        f"{row['build_seconds']} s{'  ' + row['reason'] if row['reason'] else ''}")
    return rows


def size_order_problems(rows: list[dict]) -> list[str]:
    """fp16 < 0.6 x fp32 and int8 < fp16 engine bytes, per (model, variant, shapes)."""
    cells: dict = {}
    for r in rows:
        if r.get("built"):
            cells.setdefault((r["model"], r["variant"], r["shapes"]), {})[r["precision"]] = r["engine_bytes"]
    problems = []
    for key, s in sorted(cells.items()):
        if {"fp32", "fp16"} <= set(s) and not s["fp16"] < 0.6 * s["fp32"]:
            problems.append(f"{key}: fp16 {s['fp16']} not < 0.6 x fp32 {s['fp32']}")
        if {"fp16", "int8"} <= set(s) and not s["int8"] < s["fp16"]:
            problems.append(f"{key}: int8 {s['int8']} not < fp16 {s['fp16']}")
    return problems


def mislabel_problems(rows: list[dict]) -> list[str]:
    """Each engine computes in the precision its label says, whatever the model size:
    - fp16 saves 2 bytes per weight against fp32 (at least 80 % of 2 x params bytes smaller, for models of
      100 k weights or more): an FP32 network labelled fp16 saves nothing;
    - the parsed fp16 network has FP16 tensors, the int8 one INT8 DequantizeLinear layers, fp32 neither."""
    cells: dict = {}
    problems = []
    for r in rows:
        if not r.get("built"):
            continue
        label = f"{r['model']} {r['variant']} {r['shapes']} {r['precision']}"
        if (r["half_layers"] > 0) != (r["precision"] == "fp16"):
            problems.append(f"{label}: {r['half_layers']} FP16 layers")
        if (r["int8_dequantize_layers"] > 0) != (r["precision"] == "int8"):
            problems.append(f"{label}: {r['int8_dequantize_layers']} INT8 dequantize layers")
        cells.setdefault((r["model"], r["variant"], r["shapes"]), {})[r["precision"]] = r
    for key, c in sorted(cells.items()):
        # below ~100 k weights the builder's per-layer choices move engine size by more than the weights
        if {"fp32", "fp16"} <= set(c) and c["fp32"]["params"] >= MIN_WEIGHTS_FOR_SIZE_RULE:
            saved = c["fp32"]["engine_bytes"] - c["fp16"]["engine_bytes"]
            if saved < 0.8 * 2 * c["fp32"]["params"]:
                problems.append(f"{key}: fp16 engine only {saved} bytes smaller than fp32 "
                                f"({2 * c['fp32']['params']} expected for {c['fp32']['params']} weights)")
    return problems


def fp16_saving(rows: list[dict], r: dict) -> Optional[float]:
    """(fp32 bytes - this fp16 engine's bytes) / (2 bytes x weights): 1.0 when every weight halved."""
    if r["precision"] != "fp16" or not r.get("built"):
        return None
    fp32 = next((x for x in rows if x["precision"] == "fp32" and x.get("built") and
                 (x["model"], x["variant"], x["shapes"]) == (r["model"], r["variant"], r["shapes"])), None)
    return None if fp32 is None else (fp32["engine_bytes"] - r["engine_bytes"]) / (2 * r["params"])


def to_markdown(rows: list[dict], command: str, seconds: float) -> str:
    flavour = rows[0]["flavour"] if rows else "?"
    version = rows[0]["tensorrt_version"] if rows else "?"
    lines = [f"# TensorRT build matrix ({flavour} {version}, target {rows[0]['target'] if rows else '?'})", "",
             f"Built with the real builder on a CPU-only machine (no GPU: engines are built ahead of time, not run). "
             f"Command: `{command}` ({seconds:.0f} s).", "",
             "fp16 saving: (fp32 engine bytes - fp16 engine bytes) / (2 bytes x weights), 1.00 when every weight "
             "is stored in half precision.", "",
             "| model | width | variant | precision | shapes | params | parsed | built | layers | engine MiB | "
             "fp16 saving | build s | reason |", "|" + " --- |" * 13]
    for r in rows:
        mib = f"{r['engine_bytes'] / 2**20:.2f}" if r.get("engine_bytes") else "-"
        shapes = r["shapes"] if r["shapes"] == "static" else (
            f"dynamic (batch {r['profile']['min'][0]}-{r['profile']['max'][0]})")
        saving = fp16_saving(rows, r)
        lines.append(f"| {r['model']} | {r['width']} | {r['variant']} | {r['precision']} | {shapes} | "
                     f"{r['params']:,} | {'yes' if r['parsed'] else 'NO'} | {'yes' if r['built'] else 'NO'} | "
                     f"{r.get('layers') or '-'} | {mib} | {'-' if saving is None else f'{saving:.2f}'} | "
                     f"{r.get('build_seconds') or '-'} | {r.get('reason') or ''} |")
    problems = size_order_problems(rows)
    labels = mislabel_problems(rows)
    failed = [r for r in rows if not r.get("built")]
    cells = len({(r["model"], r["variant"], r["shapes"]) for r in rows})
    bad_cells = len({p.split(":")[0] for p in problems})
    lines += ["", f"{len(rows) - len(failed)} of {len(rows)} cells built.", "",
              "Precision labels (fp16 saves 2 bytes per weight; FP16 tensors only in fp16 networks, INT8 "
              "dequantize layers only in int8 networks): " +
              ("hold for every cell." if not labels else "; ".join(labels)), "",
              "Engine size order fp16 < 0.6 x fp32 and int8 < fp16: " +
              (f"holds for all {cells} model/variant/shape groups." if not problems else
               f"holds for {cells - bad_cells} of {cells} model/variant/shape groups. Where it does not, the engine "
               "is dominated by per-layer bytes rather than weights (models under ~4 M weights; the INT8 networks "
               "carry a Q/DQ pair per quantized tensor, several times the FP32 layer count): " + "; ".join(problems))]
    return "\n".join(lines) + "\n"


def main(argv: Optional[list[str]] = None) -> int:
    from toolchain.errors import ToolchainError
    from toolchain.models import list_models
    from toolchain.utils.io import atomic_write_text, write_json

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="*", help="zoo models (default: all)")
    p.add_argument("--width", type=float, default=1.0, help="model width (default 1.0, the full model)")
    p.add_argument("--input-size", type=int, nargs=2, help="H W (default: 32x32 CIFAR, 96x128 dense prediction)")
    p.add_argument("--target", default="desktop-rtx")
    p.add_argument("--work", default=str(ROOT / "runs" / "trt_build_matrix"), help="scratch folder for ONNX files")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    models = args.models or list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        raise ToolchainError(f"--models {' '.join(unknown)}: not in the model zoo (choose from {', '.join(list_models())})")
    started = time.perf_counter()
    rows = run_matrix(models, Path(args.work), width=args.width,
                      input_size=tuple(args.input_size) if args.input_size else None, target=args.target)
    seconds = time.perf_counter() - started
    command = "python benchmarks/trt_build_matrix.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])
                                                         if (argv if argv is not None else sys.argv[1:]) else "")
    out = Path(args.out)
    write_json(out / "trt_build_matrix.json", {"command": command, "seconds": round(seconds, 1), "rows": rows,
                                               "size_order_problems": size_order_problems(rows),
                                               "mislabel_problems": mislabel_problems(rows)})
    atomic_write_text(out / "trt_build_matrix.md", to_markdown(rows, command, seconds))
    print(f"wrote {out / 'trt_build_matrix.json'} and .md ({seconds:.0f} s)")
    return 0 if all(r.get("built") for r in rows) else 1


if __name__ == "__main__":
    from toolchain.errors import script_main

    sys.exit(script_main(main, "trt_build_matrix"))
