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

With a trained dense checkpoint (issue 11 item 6), plans are compared after recovery at matched measured latency:

    python benchmarks/latency_budget.py --checkpoint DENSE.pt --config configs/camvid_segnet.yaml --profile quick \
        [--set out_dir=benchmarks/.runs/mo] [--fractions 0.5,0.33]

The config's method (prune.method) learns sparsity once (cached by `run_prune`'s key); for each fraction f the
latency plan is `latency=f x dense predicted ms`, and the params / flops budget fractions are bisected on the
measured latency of their slim ONNX before recovery (latency depends on widths only) until it is within 0.02 of f.
Every plan is then pruned and recovered with `run_prune` (the config's prune.recover; runs under
benchmarks/.runs/latency_budget/<name>/, reused when present), and dense + every recovered model are timed
interleaved in this process. Writes benchmarks/results/latency_budget_<config name>.{json,md,png}.
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


# ---------------------------------------------------------------------------------------------------------------
# --checkpoint mode (issue 11 item 6): trained ACSL plans at matched measured latency, with recovery and test metric.

def _onnx_session(model, size, path: Path):
    import warnings

    import torch

    from toolchain.profile.layer_latency import ort_session

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), torch.zeros(1, 3, *size), str(path), input_names=["input"],
                          output_names=["output"], opset_version=17, dynamo=False)
    return ort_session(path, 1)


def _interleaved(sessions, size, rounds: int, runs: int) -> list[list[float]]:
    """Round medians (ms) per session; every round times every session once, in turn (same process)."""
    from toolchain.profile.layer_latency import time_session

    medians = [[] for _ in sessions]
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            medians[i].append(time_session(s, (1, 3, *size), runs, warmup=2))
    return medians


def _ratio(slim_medians, dense_medians) -> float:
    """Median over rounds of slim / dense (each round's pair is timed back to back: robust to load drift)."""
    return float(np.median([s / d for s, d in zip(slim_medians, dense_medians)]))


def _budget_text(kind: str, value: float) -> str:
    return f"latency={value:.4f}ms" if kind == "latency" else f"{kind}={value:.4f}"


def matched_plans(cfg, sparse, dense_session, fraction: float, *, dense_pred: float, work: Path, steps: int,
                  rounds: int, runs: int, tol: float = 0.02, log=print) -> tuple[list[dict], str | None]:
    """For one latency target (fraction x dense): the latency-budget plan, and params / flops budgets whose slim
    ONNX (before recovery: latency depends on widths only) measures closest to the target, by bisection on the
    budget fraction. Returns (plans, why unreachable or None)."""
    import copy

    from toolchain.errors import ToolchainError
    from toolchain.prune.methods import get_method
    from toolchain.prune.pipeline import select_and_slim
    from toolchain.prune.select import parse_budget

    method = get_method(cfg.prune.method)
    size = tuple(cfg.data.input_size)
    trials = []

    def trial(kind: str, value: float) -> dict:
        text = _budget_text(kind, value)
        slim, _, record, _ = select_and_slim(cfg, copy.deepcopy(sparse), method, parse_budget(text))
        session = _onnx_session(slim, size, work / f"trial_{len(trials)}.onnx")
        med = _interleaved([dense_session, session], size, rounds, runs)
        t = {"kind": kind, "budget": text, "value": value, "ratio": _ratio(med[1], med[0]),
             "kept": [g["kept"] for g in record["groups"]]}
        trials.append(t)
        log(f"  trial {text}: measured {t['ratio']:.3f} x dense (target {fraction:g})")
        return t

    try:
        chosen = [trial("latency", fraction * dense_pred)]
    except ToolchainError as err:
        return [], str(err)
    for kind in ("params", "flops"):
        lo, hi, best = 0.0, 0.97, None
        for _ in range(steps):
            x = (lo + hi) / 2
            try:
                t = trial(kind, x)
            except ToolchainError:  # beyond what min_channels / rounding allow
                hi = x
                continue
            if best is None or abs(t["ratio"] - fraction) < abs(best["ratio"] - fraction):
                best = t
            if abs(t["ratio"] - fraction) <= tol:
                break
            lo, hi = (x, hi) if t["ratio"] > fraction else (lo, x)
        if best is None:
            return [], f"no {kind} budget was reachable"
        chosen.append(best)
    for c in chosen:
        c["fraction"] = fraction
        c["trials"] = [{"budget": t["budget"], "ratio": round(t["ratio"], 4)} for t in trials if t["kind"] == c["kind"]]
    return chosen, None


def run_checkpoint(cfg, checkpoint: Path, fractions, *, steps: int, search_rounds: int, search_runs: int,
                   rounds: int, runs: int, runs_dir: Path, log=print) -> dict:
    """Dense vs latency / params / flops budget plans (method cfg.prune.method, round_to cfg.prune.round_to) at
    matched measured ONNX Runtime CPU latency, each pruned and recovered with run_prune from `checkpoint`."""
    import copy

    import torch

    from toolchain.models.complexity import count_macs, count_params
    from toolchain.profile.layer_latency import LatencyModel, build_latency_table
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.methods import get_method
    from toolchain.prune.pipeline import _val, run_prune, sparsity_stage
    from toolchain.prune.select import resolve_round_to
    from toolchain.targets import load_target
    from toolchain.train.checkpoint import load_model
    from toolchain.train.metrics import primary_metric
    from toolchain.utils.io import read_json, sha256_file

    torch.set_num_threads(1)
    size = tuple(cfg.data.input_size)
    runs_dir.mkdir(parents=True, exist_ok=True)
    method = get_method(cfg.prune.method)
    dense, _ = load_model(checkpoint, cfg)
    dense = dense.cpu().eval()
    metric, _ = primary_metric(cfg.task)
    torch.manual_seed(cfg.prune.seed)
    sparse, sparsity_record = sparsity_stage(cfg, copy.deepcopy(dense), method, sha256_file(checkpoint))
    sparse = sparse.cpu().eval()
    round_to, _ = resolve_round_to(cfg.prune.round_to, cfg.deploy.target)
    graph = build_pruning_graph(copy.deepcopy(sparse), size)
    table = build_latency_table(graph, load_target(cfg.deploy.target), cache_dir=Path(cfg.out_dir) / "latency_tables",
                                round_to=round_to)  # the table the pipeline's latency budget uses (same cache key)
    latency = LatencyModel(graph, table)
    dense_pred = latency(latency.sizes)
    dense_session = _onnx_session(dense, size, runs_dir / "dense.onnx")
    plans, unreachable = [], []
    for f in fractions:
        log(f"target {f:g} x dense: selecting plans")
        chosen, why = matched_plans(cfg, sparse, dense_session, f, dense_pred=dense_pred, work=runs_dir,
                                    steps=steps, rounds=search_rounds, runs=search_runs, log=log)
        if why:
            log(f"target {f:g} x dense not reachable: {why}")
            unreachable.append({"fraction": f, "error": why})
        plans += chosen
    for p in plans:
        out = runs_dir / f"{cfg.prune.method}_{p['budget'].replace('=', '')}"
        record_path = out / "prune_record.json"
        record = read_json(record_path) if record_path.is_file() else None
        same = record is not None and record.get("recover_epochs") == cfg.prune.recover.epochs and (
            (record["stages"].get("sparsity") or {}).get("key") == sparsity_record.get("key"))
        if not same:  # absent, or another recovery / sparsity run (e.g. another seed): run it
            log(f"run_prune {p['budget']} -> {out}")
            record = run_prune(cfg, checkpoint, method=cfg.prune.method, budget=p["budget"], out=out)
        p.update({"run": str(out), "val": record["val"], "test": record["test"], "val_before_recovery":
                  record["stages"]["slim"]["val"], "recover_epochs": record["recover_epochs"],
                  "fraction_removed": record["fraction_removed"], "checkpoint": record["checkpoint"]})
    dense_test = _val(dense, cfg, "test")
    dense_val = _val(dense, cfg, "val")
    models = [dense] + [load_model(p["checkpoint"], cfg)[0].cpu().eval() for p in plans]
    sessions = [dense_session] + [_onnx_session(m, size, runs_dir / f"final_{i}.onnx")
                                  for i, m in enumerate(models[1:])]
    medians = _interleaved(sessions, size, rounds, runs)
    rows = [{"plan": "dense", "kind": None, "budget": None, "val": dense_val, "test": dense_test,
             "kept": list(latency.sizes)}] + plans
    dense_ms = float(np.median(medians[0]))
    dense_macs = count_macs(dense, size)
    for row, model, med in zip(rows, models, medians):
        if row["kind"]:
            row["plan"] = f"{row['kind']} ({row['fraction']:g} x dense)"
            row["target_ms"] = row["fraction"] * dense_ms
        row["params"] = count_params(model)
        row["macs"] = count_macs(model, size)
        row["predicted_ms"] = latency(row["kept"])
        row["measured_ms"] = float(np.median(med))
        row["round_medians_ms"] = [round(x, 4) for x in med]
        row["measured_over_dense"] = _ratio(med, medians[0])
        row["speedup"] = 1 / row["measured_over_dense"]
        row["macs_ratio"] = dense_macs / row["macs"]
        row["realisation"] = row["speedup"] / row["macs_ratio"] if row["macs_ratio"] > 1 else None
        row["predicted_error"] = row["predicted_ms"] / row["measured_ms"] - 1
        row.pop("checkpoint", None)
    return {"config": cfg.name, "model": cfg.model.name, "width": cfg.model.width, "input_size": list(size),
            "method": cfg.prune.method, "round_to": round_to, "metric": metric, "dense_checkpoint": str(checkpoint),
            "sparsity": {"reused": sparsity_record.get("reused"), "key": sparsity_record.get("key"),
                         "epochs": sparsity_record.get("epochs")},
            "recover": {"method": cfg.prune.recover.method, "epochs": cfg.prune.recover.epochs},
            "dense_predicted_ms": dense_pred, "table_dense_measured_ms": table.dense_model_ms,
            "table_machine": table.data["machine"], "table_points": table.data["points"],
            "rounds": rounds, "runs": runs, "search": {"steps": steps, "rounds": search_rounds, "runs": search_runs},
            "seed": {"train": cfg.train.seed, "prune": cfg.prune.seed},
            "plans": rows, "unreachable": unreachable}


def _num(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _plan_table(result: dict) -> list[str]:
    m = result["metric"]
    lines = [f"| plan | budget | params | MACs (M) | MACs ratio | target ms | predicted ms | measured ms | "
             f"measured / dense | speed-up | realisation | val {m} | test {m} |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for p in result["plans"]:
        real = f"{p['realisation']:.2f}" if p["realisation"] is not None else "-"
        target = f"{p['target_ms']:.2f}" if "target_ms" in p else "-"
        lines.append(f"| {p['plan']} | {p['budget'] or '-'} | {p['params']:,} | {p['macs'] / 1e6:.1f} | "
                     f"{p['macs_ratio']:.2f}x | {target} | {p['predicted_ms']:.2f} | {p['measured_ms']:.2f} | "
                     f"{p['measured_over_dense']:.3f} | {p['speedup']:.2f}x | {real} | {_num(p['val'])} | "
                     f"{_num(p['test'])} |")
    for u in result["unreachable"]:
        lines.append(f"\n{u['fraction']:g} x dense: not reachable ({u['error'].split(';')[0]}).")
    return lines


def write_checkpoint_results(result: dict, base: Path) -> None:
    from toolchain.utils.io import atomic_write_text

    atomic_write_text(base.with_suffix(".json"), json.dumps(result, indent=1, sort_keys=True) + "\n")
    lines = [f"# Latency budget vs params / MACs budgets after recovery: {result['config']} "
             f"({result['model']} width {result['width']} at {result['input_size'][0]}x{result['input_size'][1]})", "",
             f"ONNX Runtime {result['onnxruntime']} CPU ({result['machine']}), 1 intra-op thread, batch 1, every model "
             f"in the same process, {result['rounds']} interleaved rounds x {result['runs']} runs; measured ms = median "
             "of the round medians, speed-up = median over rounds of dense / plan (each round times them back to back). "
             f"{result.get('note', '')}", "",
             f"Plans: {result['method']} from the dense checkpoint `{result['dense_checkpoint']}` (sparsity run "
             f"{'reused from the cache' if result['sparsity']['reused'] else 'trained'}, key {result['sparsity']['key']}), "
             f"round_to {result['round_to']} for every plan, each pruned with `run_prune` and recovered the same way "
             f"({result['recover']['method']}, {result['recover']['epochs']} epochs). The params / flops budget "
             f"fractions were bisected ({result['search']['steps']} steps at most, {result['search']['rounds']} rounds "
             f"x {result['search']['runs']} runs each) on the measured latency of the slim ONNX before recovery to land "
             "near the target; the latency plan is `latency=fraction x dense predicted ms`.", "",
             ] + _plan_table(result)
    for r in result.get("repeats", []):
        lines += ["", f"### Repeat: train.seed {r['seed']['train']}, prune.seed {r['seed']['prune']} (its own sparsity run "
                  f"{r['sparsity']['key']}, plans, recoveries and timing process)", "", *_plan_table(r),
                  "", f"Command: `{r['command']}`"]
    lines += ["", "Predicted ms: the per-layer table's latency model (calibrated on the dense model when the table was "
              f"measured: {result['table_dense_measured_ms']:.2f} ms, machine {result['table_machine']}). "
              "Realisation = speed-up / MACs ratio.", "", f"Command: `{result['command']}`", ""]
    if result.get("reading"):
        lines[-2:-2] = [result["reading"], ""]
    atomic_write_text(base.with_suffix(".md"), "\n".join(lines))
    write_checkpoint_plot(result, base.with_suffix(".png"))


def write_checkpoint_plot(result: dict, path: Path) -> None:
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.utils.io import atomic_write_bytes

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colours = {None: "black", "latency": "tab:red", "params": "tab:blue", "flops": "tab:green"}
    offsets = {None: (-14, 6), "latency": (5, 5), "params": (5, -10), "flops": (-24, -10)}  # MACs-ratio labels
    for kind in colours:
        pts = [p for p in result["plans"] if p["kind"] == kind and p["test"] is not None]
        if pts:
            ax.scatter([p["measured_ms"] for p in pts], [p["test"] for p in pts], c=colours[kind], s=40,
                       label=kind or "dense", zorder=3)
            for p in pts:
                ax.annotate(f"{p['macs_ratio']:.1f}x", (p["measured_ms"], p["test"]), fontsize=7,
                            xytext=offsets[kind], textcoords="offset points", color=colours[kind])
    for r in result.get("repeats", []):  # other seeds: hollow markers
        for kind in colours:
            pts = [p for p in r["plans"] if p["kind"] == kind and p["test"] is not None]
            if pts:
                ax.scatter([p["measured_ms"] for p in pts], [p["test"] for p in pts], facecolors="none",
                           edgecolors=colours[kind], s=40, zorder=3,
                           label=f"{kind or 'dense'}, seed {r['seed']['train']}")
    for p in result["plans"]:
        if "target_ms" in p:
            ax.axvline(p["target_ms"], color="grey", lw=0.6, ls=":")
    ax.set_xlabel("measured ms, ONNX Runtime CPU, 1 thread, batch 1")
    ax.set_ylabel(f"test {result['metric']}")
    ax.set_title(f"{result['config']}: {result['method']} plans at matched latency (labels: MACs ratio)",
                 fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def checkpoint_main(args, command: str, machine: str, ort_version: str) -> int:
    from toolchain.config import deep_merge, load_config, parse_dotted_overrides
    from toolchain.errors import ToolchainError

    if not (args.checkpoint and args.config):
        raise ToolchainError("--checkpoint and --config go together: e.g. --checkpoint dense_best.pt "
                             "--config configs/camvid_segnet.yaml --profile quick")
    checkpoint = Path(args.checkpoint)
    if not checkpoint.is_file():
        raise ToolchainError(f"checkpoint not found: {checkpoint} (train one with `acsl train`)")
    overrides = deep_merge({"train": {"threads": 1}, "prune": {"round_to": args.round_to}},
                           parse_dotted_overrides(args.overrides))
    cfg = load_config(args.config, profile=args.profile, overrides=overrides)
    fractions = [float(f) for f in args.fractions.split(",")]
    runs_dir = Path(args.runs_dir) if args.runs_dir else REPO / "benchmarks" / ".runs" / "latency_budget" / cfg.name
    result = run_checkpoint(cfg, checkpoint, fractions, steps=args.steps, search_rounds=args.search_rounds,
                            search_runs=args.search_runs, rounds=args.rounds, runs=args.runs, runs_dir=runs_dir)
    result.update({"command": command, "machine": machine, "onnxruntime": ort_version, "profile": args.profile,
                   "note": args.note})
    base = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"latency_budget_{cfg.name}"
    write_checkpoint_results(result, base)
    for p in result["plans"]:
        print(f"{p['plan']}: {p['measured_ms']:.2f} ms ({p['measured_over_dense']:.3f} x dense), "
              f"test {p['test']}", flush=True)
    return 0


def report_only(args) -> int:
    """Redraw the md / png of a --checkpoint results JSON, with --reading and --repeat results added."""
    from toolchain.errors import ToolchainError

    result = json.loads(Path(args.report_only).read_text(encoding="utf-8"))
    if args.reading:
        result["reading"] = args.reading
    for other_path in args.repeat:
        other = json.loads(Path(other_path).read_text(encoding="utf-8"))
        if (other.get("config"), other.get("dense_checkpoint")) != (result["config"], result["dense_checkpoint"]) or \
                "seed" not in other:
            raise ToolchainError(f"{other_path} is not a --checkpoint run of this experiment (config, dense checkpoint "
                                 "or seed missing or different); rerun it with --checkpoint and --set train.seed=S")
        other.pop("repeats", None)
        seed = other["seed"]
        result["repeats"] = [r for r in result.get("repeats", []) if r["seed"] != seed] + [other]
    write_checkpoint_results(result, Path(args.report_only).with_suffix(""))
    return 0


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
    p.add_argument("--checkpoint", help="a trained dense checkpoint: compare trained plans after recovery "
                   "(needs --config; writes benchmarks/results/latency_budget_<config name>)")
    p.add_argument("--config", help="experiment config of --checkpoint (its prune.method, prune.sparsity, "
                   "prune.recover and deploy.target are used)")
    p.add_argument("--profile")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--round-to", default="target", help="prune.round_to for every plan (--checkpoint mode)")
    p.add_argument("--steps", type=int, default=6, help="bisection steps per params / flops plan")
    p.add_argument("--search-rounds", type=int, default=3)
    p.add_argument("--search-runs", type=int, default=10)
    p.add_argument("--runs-dir", help="where the prune runs go (default benchmarks/.runs/latency_budget/<name>)")
    p.add_argument("--note", default="", help="a sentence for the md (e.g. how loaded the machine was)")
    p.add_argument("--report-only", metavar="RESULTS.json",
                   help="only redraw the md / png of a --checkpoint results JSON (with --reading)")
    p.add_argument("--reading", help="with --report-only: a paragraph reading the results, kept in the JSON")
    p.add_argument("--repeat", action="append", default=[], metavar="OTHER.json",
                   help="with --report-only: add the results of the same experiment run with another seed "
                        "(--set train.seed=S --set prune.seed=S) as a repeat table")
    args = p.parse_args(argv)
    command = "python benchmarks/latency_budget.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    import onnxruntime

    from toolchain.errors import ToolchainError
    from toolchain.profile.layer_latency import machine_id

    if args.report_only:
        try:
            return report_only(args)
        except ToolchainError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.checkpoint or args.config:
        try:
            return checkpoint_main(args, command, machine_id(), onnxruntime.__version__)
        except ToolchainError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        print(f"error: --models {','.join(unknown)}: not measured here (choose from {', '.join(MODELS)})",
              file=sys.stderr)
        return 2
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
