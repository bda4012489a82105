"""Latency budget vs params / MACs budgets (issue 11, items 4 and 6, without the recovery training):
predicted vs measured ONNX Runtime CPU latency of plans selected for a latency target.

    python benchmarks/latency_budget.py [--models segnet,mobilenetv2_lraspp] [--fractions 0.5,0.33]

Per model: the per-layer latency table on target `cpu` (toolchain.profile.layer_latency; 1 intra-op thread,
kept widths rounded to the target's fp32 channel_multiple), the dense latency, then for every fraction f
of it three plans: `latency=f x dense ms` (saliency per ms saved), `flops=1-f` and `params=1-f` (the
naive "MACs ~ time" choice), all with the same rounding and the same saliency (bn-scale, group_reduction
mean, of seeded i.i.d. gammas: latency depends on widths, not weights). Every plan is exported and timed
in the same process, interleaved (rounds x runs, median of the round medians).
Writes benchmarks/results/latency_budget_<models>.{json,md}. Accuracy after recovery is not measured here.
"""
from __future__ import annotations

import argparse
import copy
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (classes, width, input (H, W))
    "segnet": (11, 0.25, (96, 128)),
    "mobilenetv2_lraspp": (11, 1.0, (240, 320)),
}


def _iid_gammas(model, seed: int = 0) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.9 + 0.1


def run_model(name: str, fractions, *, points: int, table_runs: int, rounds: int, runs: int, cache: Path,
              work: Path) -> dict:
    import torch

    from toolchain.errors import ToolchainError
    from toolchain.models import create_model
    from toolchain.models.complexity import count_macs, count_params
    from toolchain.profile.layer_latency import (LatencyModel, build_latency_table, ort_session, time_session)
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.importance import channel_saliency
    from toolchain.prune.select import (CostModel, latency_weighted_saliency, parse_budget, resolve_round_to,
                                        select_channels)
    from toolchain.prune.surgery import prune_model
    from toolchain.targets import load_target

    classes, width, size = MODELS[name]
    target = load_target("cpu")
    round_to, _ = resolve_round_to("target:fp32", "cpu")
    torch.manual_seed(0)
    dense = create_model(name, classes, width=width).eval()
    _iid_gammas(dense)
    graph = build_pruning_graph(copy.deepcopy(dense), size)
    t0 = time.time()
    table = build_latency_table(graph, target, cache_dir=cache, points=points, round_to=round_to, threads=1,
                                runs=table_runs)
    table_s = time.time() - t0
    latency = LatencyModel(graph, table)
    cost = CostModel(graph)
    saliency = channel_saliency("bn-scale", graph, group_reduction="mean")
    per_ms = latency_weighted_saliency(saliency, latency.per_channel_gain())
    dense_pred = latency(latency.sizes)
    plans = [{"plan": "dense", "budget": None, "kept": None}]
    unreachable = []
    for f in fractions:
        chosen = []
        try:
            for kind in ("latency", "flops", "params"):
                text = f"latency={f * dense_pred:.4f}ms" if kind == "latency" else f"{kind}={1 - f:g}"
                budget = parse_budget(text)
                fn = latency if kind == "latency" else cost.cost_fn(kind)
                sel = select_channels(graph, per_ms if kind == "latency" else saliency, budget, fn, min_channels=8,
                                      min_fraction=0.1, round_to=round_to)
                chosen.append({"plan": f"{kind} ({f:g} x dense)", "budget": text, "fraction": f, "kind": kind,
                               "kept": sel.kept, "removed": sel.removed})
        except ToolchainError as err:  # a budget below what min_channels / rounding allow
            unreachable.append({"fraction": f, "error": str(err)})
            print(f"{name}: {f:g} x dense skipped: {err}", flush=True)
            continue
        plans += chosen
    sessions = []
    for p in plans:
        model = copy.deepcopy(dense)
        if p["kept"] is not None:
            g = build_pruning_graph(model, size)  # same model, same trace: the same group indices
            assert [x.root for x in g.groups] == [x.root for x in graph.groups]
            model, _, _ = prune_model(g, p.pop("removed"), verify=False)
        p["params"] = count_params(model)
        p["macs"] = count_macs(model, size)
        p["predicted_ms"] = latency(p["kept"] if p["kept"] is not None else latency.sizes)
        path = work / f"{name}_{len(sessions)}.onnx"
        with torch.no_grad():
            torch.onnx.export(model.eval(), torch.zeros(1, 3, *size), str(path), input_names=["input"],
                              output_names=["output"], opset_version=17, dynamo=False)
        sessions.append(ort_session(path, 1))
    medians = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            medians[i].append(time_session(s, (1, 3, *size), runs, warmup=2))
    dense_ms = float(np.median(medians[0]))
    for p, m in zip(plans, medians):
        p["measured_ms"] = float(np.median(m))
        p["round_medians_ms"] = [round(x, 4) for x in m]
        p["predicted_error"] = p["predicted_ms"] / p["measured_ms"] - 1
        p["speedup"] = dense_ms / p["measured_ms"]
        p["macs_ratio"] = plans[0]["macs"] / p["macs"]
        p["realisation"] = p["speedup"] / p["macs_ratio"] if p["macs_ratio"] > 1 else None
        if p.get("kind") == "latency":
            p["budget_ms"] = p["fraction"] * dense_pred
            p["measured_over_budget"] = p["measured_ms"] / p["budget_ms"]
        print(f"{name} {p['plan']}: predicted {p['predicted_ms']:.3f} ms, measured {p['measured_ms']:.3f} ms, "
              f"{p['macs'] / 1e6:.1f} M MACs", flush=True)
    return {"model": name, "width": width, "input_size": list(size), "round_to": round_to, "table_points": points,
            "table_s": round(table_s, 1), "table_machine": table.data["machine"], "dense_predicted_ms": dense_pred,
            "table_dense_measured_ms": table.dense_model_ms, "plans": plans, "unreachable": unreachable}


def write_results(result: dict, base: Path) -> None:
    from toolchain.utils.io import atomic_write_text

    atomic_write_text(base.with_suffix(".json"), json.dumps(result, indent=1, sort_keys=True) + "\n")
    lines = ["# Latency budget vs params / MACs budgets: ONNX Runtime CPU, predicted vs measured", "",
             f"Command: `{result['command']}`", "",
             f"Machine: {result['machine']}; onnxruntime {result['onnxruntime']}; target cpu, 1 intra-op thread, "
             f"batch 1; {result['rounds']} interleaved rounds x {result['runs']} runs (median of round medians). "
             "Plans from seeded i.i.d. BN gammas (no training: accuracy is not compared here).", ""]
    for m in result["models"]:
        lines += [f"## {m['model']} width {m['width']} at {m['input_size'][0]}x{m['input_size'][1]} "
                  f"(round_to {m['round_to']}, table: {m['table_points']} widths per dim, {m['table_s']} s)", "",
                  "| plan | budget | params | MACs (M) | predicted ms | measured ms | prediction error | "
                  "measured / latency budget | speed-up | realisation |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for p in m["plans"]:
            over = f"{p['measured_over_budget']:.2f}" if "measured_over_budget" in p else "-"
            real = f"{p['realisation']:.2f}" if p["realisation"] is not None else "-"
            lines.append(f"| {p['plan']} | {p['budget'] or '-'} | {p['params']:,} | {p['macs'] / 1e6:.1f} | "
                         f"{p['predicted_ms']:.3f} | {p['measured_ms']:.3f} | {p['predicted_error']:+.1%} | {over} | "
                         f"{p['speedup']:.2f}x | {real} |")
        for u in m["unreachable"]:
            lines.append(f"\n{u['fraction']:g} x dense: not reachable ({u['error'].split(';')[0]}).")
        lines.append("")
    lines += ["Prediction error = predicted / measured - 1. Realisation = speed-up / MACs ratio.", ""]
    atomic_write_text(base.with_suffix(".md"), "\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="segnet,mobilenetv2_lraspp")
    p.add_argument("--fractions", default="0.6,0.5,0.33", help="latency targets as fractions of the dense latency")
    p.add_argument("--points", type=int, default=4, help="table widths per dimension")
    p.add_argument("--table-runs", type=int, default=10)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".runs" / "latency_tables"))
    p.add_argument("--out", help="results base path (default benchmarks/results/latency_budget_<models>)")
    args = p.parse_args(argv)
    command = "python benchmarks/latency_budget.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import onnxruntime

    from toolchain.profile.layer_latency import machine_id

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    fractions = [float(f) for f in args.fractions.split(",")]
    result = {"command": command, "machine": machine_id(), "onnxruntime": onnxruntime.__version__,
              "rounds": args.rounds, "runs": args.runs, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            result["models"].append(run_model(name, fractions, points=args.points, table_runs=args.table_runs,
                                              rounds=args.rounds, runs=args.runs, cache=Path(args.cache),
                                              work=Path(tmp)))
    base = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"latency_budget_{'_'.join(models)}"
    write_results(result, base)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
