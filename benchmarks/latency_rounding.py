"""Hardware-aware widths (issue 11, item 3): ONNX Runtime CPU latency of pruning plans with and without
rounding kept widths to a channel multiple (prune.round_to; targets/*.yaml channel_multiple).

    python benchmarks/latency_rounding.py                       # export + time here
    python benchmarks/latency_rounding.py --export-only         # build the plans and ONNX files
    python benchmarks/latency_rounding.py --time-only           # time them (needs only numpy, onnx, onnxruntime)

Plans: the dense model and the same budget selected with round_to 1 / 8 / 16. Saliency: the bn-scale
saliency (group_reduction mean) of seeded i.i.d. BN gammas: latency depends on the kept widths only, not on
the weights, so no training is needed; every plan of a model ranks the same channels. ONNX Runtime CPU,
graph optimisation `all` (NCHWc layout transformer on), 1 intra-op thread, batch 1, all plans of a
model timed in interleaved rounds in one process. Also counted in the optimised graph: NCHWc convolutions
vs plain ones and the Reorder nodes between the layouts (channels that are not a multiple of the block fall
back to plain convolutions).
Writes benchmarks/results/latency_rounding_cpu.{json,md}; ONNX files go to benchmarks/.runs/latency_rounding/.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORK = REPO / "benchmarks" / ".runs" / "latency_rounding"
# (label, zoo model, classes, width, input (H, W), budget): SegNet as in configs/camvid_segnet.yaml (quick
# profile, the deployed CamVid model), the MobileNet segmenter at CamVid's 240x320.
MODELS = [
    ("segnet_w0.25_96x128", "segnet", 11, 0.25, (96, 128), "flops=0.65"),
    ("mobilenetv2_lraspp_w1.0_240x320", "mobilenetv2_lraspp", 11, 1.0, (240, 320), "flops=0.5"),
]
ROUNDINGS = (1, 8, 16)


def export_plans(work: Path, models=MODELS, roundings=ROUNDINGS, min_channels: int = 8) -> dict:
    import copy

    import torch

    from toolchain.models import create_model
    from toolchain.models.complexity import count_macs, count_params
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.importance import channel_saliency
    from toolchain.prune.select import CostModel, parse_budget, select_channels
    from toolchain.prune.surgery import prune_model
    from toolchain.utils.io import write_json

    work.mkdir(parents=True, exist_ok=True)
    manifest = {"models": []}
    for label, name, classes, width, size, budget in models:
        torch.manual_seed(0)
        dense = create_model(name, classes, width=width).eval()
        g = torch.Generator().manual_seed(0)
        for m in dense.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.data = torch.rand(m.num_features, generator=g) * 0.9 + 0.1
        entry = {"label": label, "model": name, "width": width, "input_size": list(size), "budget": budget,
                 "plans": []}
        variants = [("dense", None)] + [(f"round_to={r}", r) for r in roundings]
        for plan_name, round_to in variants:
            model = copy.deepcopy(dense)
            kept = None
            if round_to is not None:
                graph = build_pruning_graph(model, size)
                saliency = channel_saliency("bn-scale", graph, group_reduction="mean")
                b = parse_budget(budget)
                selection = select_channels(graph, saliency, b, CostModel(graph).cost_fn(b.kind),
                                            min_channels=min_channels, min_fraction=0.1, round_to=round_to)
                model, _, _ = prune_model(graph, selection.removed, verify=False)
                kept = selection.kept
            model = model.eval()
            path = work / f"{label}_{plan_name.replace('=', '')}.onnx"
            with torch.no_grad():
                torch.onnx.export(model, torch.randn(1, 3, *size), str(path), input_names=["input"],
                                  output_names=["output"], opset_version=17, dynamo=False)
            convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
            entry["plans"].append({
                "plan": plan_name, "round_to": round_to, "onnx": path.name, "params": count_params(model),
                "macs": count_macs(model, size), "kept_widths": kept,
                "conv_out_channels_multiple_of_8": sum(c.out_channels % 8 == 0 for c in convs),
                "conv_out_channels_multiple_of_16": sum(c.out_channels % 16 == 0 for c in convs),
                "convs": len(convs)})
            print(f"{label} {plan_name}: {entry['plans'][-1]['params']} params, "
                  f"{entry['plans'][-1]['macs'] / 1e6:.1f} M MACs", flush=True)
        manifest["models"].append(entry)
    write_json(work / "manifest.json", manifest)
    return manifest


def _session(path: Path, optimized: Path | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized is not None:
        opts.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def optimized_op_counts(path: Path) -> dict:
    """Op types of ONNX Runtime's optimised graph (NCHWc convs, Reorder nodes, plain convs)."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        _session(path, out)
        graph = onnx.load(str(out)).graph
    counts: dict[str, int] = {}
    for node in graph.node:
        key = f"{node.domain}:{node.op_type}" if node.domain and node.domain != "ai.onnx" else node.op_type
        counts[key] = counts.get(key, 0) + 1
    nchwc = sum(v for k, v in counts.items() if k.startswith("com.microsoft.nchwc:") and k.endswith("Conv"))
    plain = sum(v for k, v in counts.items() if k in ("Conv", "com.microsoft:FusedConv"))
    reorders = sum(v for k, v in counts.items() if "Reorder" in k)
    return {"nchwc_convs": nchwc, "plain_convs": plain, "reorders": reorders, "ops": dict(sorted(counts.items()))}


def time_plans(work: Path, rounds: int, runs: int) -> dict:
    manifest = json.loads((work / "manifest.json").read_text())
    for entry in manifest["models"]:
        sessions = []
        for plan in entry["plans"]:
            plan.update(optimized_op_counts(work / plan["onnx"]))
            sessions.append(_session(work / plan["onnx"]))
        x = np.random.default_rng(0).standard_normal((1, 3, *entry["input_size"])).astype(np.float32)
        for s in sessions:  # warm-up
            for _ in range(3):
                s.run(None, {"input": x})
        per_round: list[list[float]] = [[] for _ in sessions]
        for _ in range(rounds):
            for i, s in enumerate(sessions):
                times = []
                for _ in range(runs):
                    t0 = time.perf_counter()
                    s.run(None, {"input": x})
                    times.append((time.perf_counter() - t0) * 1e3)
                per_round[i].append(float(np.median(times)))
        dense = entry["plans"][0]
        dense_ms = float(np.median(per_round[0]))
        for plan, medians in zip(entry["plans"], per_round):
            plan["round_medians_ms"] = [round(m, 4) for m in medians]
            plan["median_ms"] = float(np.median(medians))
            plan["speedup"] = dense_ms / plan["median_ms"]
            plan["macs_ratio"] = dense["macs"] / plan["macs"]
            plan["realisation"] = plan["speedup"] / plan["macs_ratio"] if plan["macs_ratio"] > 1 else None
        print(entry["label"], [(p["plan"], round(p["median_ms"], 3)) for p in entry["plans"]], flush=True)
    return manifest


def cpu_name() -> str:
    from toolchain.utils.provenance import cpu_model

    name, isa = cpu_model()
    return f"{name} ({isa}), {os.cpu_count()} logical CPUs"


def write_results(result: dict, out: Path, command: str) -> None:
    from toolchain.utils.io import atomic_write_text, write_json

    write_json(out.with_suffix(".json"), result)
    lines = [f"# Pruned widths rounded to a channel multiple: ONNX Runtime CPU latency", "",
             f"Command: `{command}`", "",
             f"Machine: {result['cpu']}; onnxruntime {result['onnxruntime']}; 1 intra-op thread, batch 1, "
             f"graph optimisation all; {result['rounds']} interleaved rounds x {result['runs']} runs, "
             "median of the round medians.", "",
             "Plans: bn-scale saliency (group_reduction mean) of seeded i.i.d. gammas; same budget, kept widths "
             "rounded up to `round_to` (selection removes more elsewhere to still meet the budget). "
             "NCHWc / plain: convolutions ONNX Runtime runs in its blocked layout or not; reorders: layout "
             "conversions between them.", ""]
    for entry in result["models"]:
        lines += [f"## {entry['label']} ({entry['budget']})", "",
                  "| plan | params | MACs (M) | median ms | speed-up | MACs ratio | realisation | NCHWc convs | "
                  "plain convs | reorders | out channels %16==0 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in entry["plans"]:
            real = f"{p['realisation']:.2f}" if p["realisation"] is not None else "-"
            lines.append(f"| {p['plan']} | {p['params']:,} | {p['macs'] / 1e6:.1f} | {p['median_ms']:.3f} | "
                         f"{p['speedup']:.2f}x | {p['macs_ratio']:.2f}x | {real} | {p['nchwc_convs']} | "
                         f"{p['plain_convs']} | {p['reorders']} | "
                         f"{p['conv_out_channels_multiple_of_16']}/{p['convs']} |")
        lines.append("")
    lines += ["Realisation = measured speed-up / MACs ratio (1.0: every MAC removed is time saved).", ""]
    atomic_write_text(out.with_suffix(".md"), "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default=str(WORK), help="where the ONNX files and manifest.json go")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "latency_rounding_cpu"))
    p.add_argument("--export-only", action="store_true")
    p.add_argument("--time-only", action="store_true")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=20)
    args = p.parse_args(argv)
    command = "python benchmarks/latency_rounding.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    work = Path(args.work)
    if not args.time_only:
        export_plans(work)
    if args.export_only:
        return 0
    import onnxruntime

    result = time_plans(work, args.rounds, args.runs)
    result.update({"command": command, "cpu": cpu_name(), "onnxruntime": onnxruntime.__version__,
                   "rounds": args.rounds, "runs": args.runs, "threads": 1, "batch": 1})
    write_results(result, Path(args.out), command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
