"""Compression benchmark: dense vs every pruning method and two from-scratch references, at several budgets.

    python benchmarks/compression.py configs/camvid_segnet.yaml --profile quick \
        [--checkpoint runs/camvid_segnet/dense_best.pt] [--budgets params=0.5,params=0.7,params=0.85] \
        [--methods all] [--data PATH] [--results benchmarks/results] [--dataset camvid] [--seeds 0,1,2]

For one experiment config it runs the dense model (trained here if no --checkpoint), the eight pruning
methods of `acsl prune` and the references `scratch-plan` (ACSL's channel plan at that budget, randomly
initialised, trained for dense + sparsity + recovery epochs) and `scratch-uniform` (the zoo model at the
uniform width with the same parameter count as ACSL's result - the same MACs for a flops budget - trained
the same way), at every budget, with the same
sparsity and recovery epochs for every method (cfg.prune). A method's sparsity-learning run is shared
by its budgets (toolchain.prune.pipeline caches it). Each run's result is appended to
`<results>/compression_<dataset>_<model>.json` as soon as it completes, so an interrupted comparison
resumes where it stopped; then a Markdown table and a Pareto plot (metric vs params removed; vs MACs removed for flops budgets) are written
next to it. Failures are rows with an `error`, retried on the next invocation.

Each row records its `seed` (train.seed and prune.seed of the run; `--seeds` runs every method at every
budget once per seed, folders of seeds other than 0 ending in `_s<seed>`) and, for pruning methods, the
diagnostic of issue 12: the sparsity mode and lambda, the fraction of prunable gammas at exactly zero and
below 1e-2 of the largest after sparsity, and val after sparsity and right after slimming (before recovery).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from toolchain.config import config_from_dict, config_to_dict, deep_merge, load_config, parse_dotted_overrides  # noqa: E402
from toolchain.errors import ToolchainError  # noqa: E402
from toolchain.prune.methods import METHODS, PEER_METHODS, SCRATCH_METHODS  # noqa: E402
from toolchain.prune.modelopt_peer import peer_fields, peer_notes  # noqa: E402  (imports modelopt lazily)
from toolchain.prune.select import parse_budget  # noqa: E402
from toolchain.utils.io import atomic_write_text, read_json, write_json  # noqa: E402

DEFAULT_BUDGETS = {"segmentation": "params=0.5,params=0.7,params=0.85",
                   "counting": "params=0.5,params=0.7,params=0.85,params=0.9",
                   "classification": "flops=0.5,flops=0.6,flops=0.7"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--profile")
    p.add_argument("--data", help="dataset folder (overrides data.root)")
    p.add_argument("--checkpoint", help="dense checkpoint (default: train one into <out_dir>/<name>/dense_best.pt)")
    p.add_argument("--budgets", help="comma-separated budgets (default per task: "
                   + "; ".join(f"{k}: {v}" for k, v in DEFAULT_BUDGETS.items()) + ")")
    p.add_argument("--methods", default="all", help=f"comma-separated subset of {', '.join(list(METHODS) + list(PEER_METHODS) + list(SCRATCH_METHODS))}")
    p.add_argument("--modelopt-divisor", type=int, metavar="N", help="channel multiple of modelopt-fastnas "
                   "(default: ModelOpt's own, 32); docs/MODELOPT.md")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--dataset", help="dataset label of the result file (default: first word of the config name)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", help="comma-separated seeds: every method and budget runs once per seed with train.seed "
                   "and prune.seed set to it (default: the config's prune.seed)")
    p.add_argument("--merge", metavar="OTHER.json",
                   help="add the runs of another results JSON of the same experiment (e.g. the scratch references run "
                        "in a parallel process with --results elsewhere), then redraw; runs already here are kept")
    p.add_argument("--report-only", action="store_true",
                   help="only redraw the table and plot from the results JSON (e.g. of an interrupted comparison)")
    return p.parse_args(argv)


def load_cfg(args):
    overrides = parse_dotted_overrides(args.overrides)
    if args.data:
        overrides.setdefault("data", {})["root"] = str(Path(args.data).expanduser().resolve())
    return load_config(args.config, profile=args.profile, overrides=overrides)


def pick_methods(text: str) -> list[str]:
    valid = list(METHODS) + list(PEER_METHODS) + list(SCRATCH_METHODS)
    if text == "all":
        return valid
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    for m in chosen:
        if m not in valid:
            raise ToolchainError(f"unknown method '{m}' (valid: {', '.join(valid)})")
    return [m for m in valid if m in chosen]  # pruning methods first: the scratch references need ACSL's runs


# ------------------------------------------------------------------------------------------- runs
def with_seed(cfg, seed: int):
    """cfg with train.seed and prune.seed set to `seed` (data order, initialisation, sampling of one run)."""
    if cfg.train.seed == seed and cfg.prune.seed == seed:
        return cfg
    return config_from_dict(deep_merge(config_to_dict(cfg), {"train": {"seed": seed}, "prune": {"seed": seed}}))


def seed_suffix(seed: int) -> str:
    """Run-folder suffix of a seed: none for seed 0 (the folders of single-seed comparisons), else _s<seed>."""
    return "" if seed == 0 else f"_s{seed}"


def row_seed(run: dict) -> int:
    return int(run.get("seed", 0))  # rows written before seeds were recorded ran with seed 0


def ensure_dense(cfg, checkpoint: str | None):
    from toolchain.train.dense import train_dense

    if checkpoint:
        return Path(checkpoint)
    best = cfg.run_dir() / "dense_best.pt"
    if best.is_file() and (cfg.run_dir() / "dense_history.json").is_file():
        return best
    result = train_dense(cfg, cfg.run_dir(), resume=True)
    return result.best_path


def dense_entry(cfg, checkpoint: Path) -> dict:
    from toolchain.models.complexity import model_summary
    from toolchain.prune.pipeline import _val
    from toolchain.train.checkpoint import load_model

    model, _ = load_model(checkpoint, cfg)
    summary = model_summary(model, tuple(cfg.data.input_size))
    return {"params": summary["params"], "macs": summary["macs"], "metric": _val(model, cfg, "test"),
            "metric_val": _val(model, cfg, "val"), "checkpoint": str(checkpoint)}


def prune_entry(cfg, checkpoint: Path, method: str, budget: str, modelopt_divisor: int | None = None) -> dict:
    from toolchain.prune.pipeline import run_prune

    b = parse_budget(budget)
    out = cfg.run_dir() / "bench" / f"{method}_{b.tag()}{seed_suffix(cfg.prune.seed)}"
    if method in PEER_METHODS:  # NVIDIA ModelOpt FastNAS: same recovery, metrics and record layout (docs/MODELOPT.md)
        from toolchain.prune.modelopt_peer import run_modelopt_prune

        record = run_modelopt_prune(cfg, checkpoint, budget=budget, out=out, divisor=modelopt_divisor)
    else:
        record = run_prune(cfg, checkpoint, method=method, budget=budget, out=out)
    sparsity = record["stages"]["sparsity"]
    diag = record.get("diagnostic") or {}
    gammas = diag.get("gammas") or {}
    return peer_fields(record) | {"params": record["after"]["params"], "macs": record["after"]["macs"], "metric": record["test"],
            "metric_val": record["val"], "recover": record["recover"], "sparsity_epochs": record["sparsity_epochs"],
            "recover_epochs": record["recover_epochs"], "fraction_removed": record["fraction_removed"],
            "sparsity_reused": bool(sparsity and sparsity.get("reused")), "run_dir": str(out),
            "seed": cfg.prune.seed, "sparsity_mode": diag.get("sparsity_mode"), "lam": diag.get("lam"),
            "gammas_frac_exact_zero": gammas.get("frac_exact_zero"), "gammas_frac_below_1pct": gammas.get("frac_below_rel"),
            "val_after_sparsity": diag.get("val_after_sparsity"), "val_after_slim": diag.get("val_after_slim"),
            "slim_loss": (diag.get("slim") or {}).get("loss")}


def _train_scratch(cfg, model, run_dir: Path, epochs: int, stage: str, extra: dict | None = None) -> dict:
    from toolchain.models.complexity import model_summary
    from toolchain.prune.pipeline import _val
    from toolchain.prune.recover import _load_best
    from toolchain.train.trainer import fit

    result = fit(cfg, model, run_dir, epochs=epochs, lr=cfg.train.lr, stage=stage, extra_checkpoint=extra, resume=False)
    _load_best(model, result.best_path)
    summary = model_summary(model, tuple(cfg.data.input_size))
    return {"params": summary["params"], "macs": summary["macs"], "metric": _val(model, cfg, "test"),
            "metric_val": result.best_metric, "recover": "none", "sparsity_epochs": 0, "recover_epochs": 0,
            "train_epochs": epochs, "seed": cfg.train.seed}


def scratch_epochs(cfg) -> int:
    return cfg.train.epochs + cfg.prune.sparsity.epochs + cfg.prune.recover.epochs


def scratch_plan_entry(cfg, budget: str) -> dict:
    """ACSL's channel plan at this budget, randomly initialised and trained from scratch."""
    from toolchain.models import build_from_config
    from toolchain.prune.plan import apply_channel_plan
    from toolchain.train.trainer import seed_everything

    suffix = seed_suffix(cfg.prune.seed)
    plan_path = cfg.run_dir() / "bench" / f"acsl_{parse_budget(budget).tag()}{suffix}" / "plan.json"
    if not plan_path.is_file():
        raise ToolchainError(f"scratch-plan needs ACSL's plan at {budget} ({plan_path}); run method acsl first")
    plan = read_json(plan_path)
    seed_everything(cfg.train.seed)
    model = apply_channel_plan(build_from_config(cfg), plan)
    for module in model.modules():  # fresh initialisation at the slim shapes
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    run_dir = cfg.run_dir() / "bench" / f"scratch-plan_{parse_budget(budget).tag()}{suffix}"
    return _train_scratch(cfg, model, run_dir, scratch_epochs(cfg), "scratch_plan", {"channel_plan": plan})


def uniform_width(cfg, target: int, kind: str = "params") -> float:
    """The width multiplier whose zoo model's cost (`kind`: params or MACs) is closest to `target`."""
    from toolchain.models import create_model
    from toolchain.models.complexity import count_params, model_summary

    def cost(width: float) -> int:
        model = create_model(cfg.model.name, cfg.data.num_classes, width=width, **cfg.model.kwargs)
        if kind == "params":
            return count_params(model)
        return model_summary(model, tuple(cfg.data.input_size))["macs"]

    lo, hi = 1e-3, cfg.model.width
    best = (abs(cost(hi) - target), hi)
    for _ in range(24):
        mid = (lo + hi) / 2
        n = cost(mid)
        best = min(best, (abs(n - target), mid))
        if n > target:
            hi = mid
        else:
            lo = mid
    return round(best[1], 5)


def scratch_uniform_entry(cfg, budget: str, acsl: dict) -> dict:
    """The zoo model at the uniform width matching ACSL's result in the budget's own cost: the same parameter
    count for a params budget, the same MACs for a flops budget."""
    from toolchain.models import build_from_config
    from toolchain.train.trainer import seed_everything

    kind = "params" if parse_budget(budget).kind == "params" else "macs"
    width = uniform_width(cfg, acsl[kind], kind)
    cfg_u = config_from_dict(deep_merge(config_to_dict(cfg), {"model": {"width": width}}))
    seed_everything(cfg.train.seed)
    run_dir = cfg.run_dir() / "bench" / f"scratch-uniform_{parse_budget(budget).tag()}{seed_suffix(cfg.train.seed)}"
    entry = _train_scratch(cfg_u, build_from_config(cfg_u), run_dir, scratch_epochs(cfg), "scratch_uniform")
    entry["width"] = width
    return entry


# ------------------------------------------------------------------------------------------- results
def sparsity_timing(cfg, runs: list[dict]) -> dict:
    """Per-epoch wall time and peak memory of ACSL vs Network Slimming sparsity training."""
    out = {}
    for method in ("acsl", "slimming"):
        for run in runs:
            if run.get("method") == method and run.get("run_dir"):
                path = Path(run["run_dir"]) / "records" / "sparsity.json"
                if path.is_file():
                    rec = read_json(path)
                    epochs = [e for e in rec.get("epoch_s", []) if e]
                    out[method] = {"epoch_s": epochs, "mean_epoch_s": sum(epochs) / len(epochs) if epochs else None,
                                   "memory": rec.get("memory")}
                    break
    if out.get("acsl", {}).get("mean_epoch_s") and out.get("slimming", {}).get("mean_epoch_s"):
        out["acsl_over_slimming"] = round(out["acsl"]["mean_epoch_s"] / out["slimming"]["mean_epoch_s"], 3)
    return out


def merge_results(result: dict, other: dict, other_path: str) -> None:
    """Add `other`'s runs (same experiment, same dense checkpoint) that `result` lacks; record its command."""
    if (other.get("model"), other.get("profile"), (other.get("dense") or {}).get("checkpoint")) != (
            result.get("model"), result.get("profile"), (result.get("dense") or {}).get("checkpoint")):
        raise ToolchainError(f"{other_path} is another experiment (model, profile or dense checkpoint differ); "
                             "only comparisons of the same dense model can be merged")
    key = lambda r: (r["method"], r["budget"]["kind"], r["budget"]["value"], row_seed(r))  # noqa: E731
    have = {key(r) for r in result["runs"] if not r.get("error")}
    added = [r for r in other["runs"] if not r.get("error") and key(r) not in have]
    result["runs"] = [r for r in result["runs"] if not r.get("error")
                      or key(r) not in {key(a) for a in added}] + added
    commands = result.setdefault("merged_commands", [])
    if other.get("command") and other["command"] not in commands:
        commands.append(other["command"])
    print(f"[compression] merged {len(added)} runs from {other_path}")


def write_table(result: dict, path: Path) -> None:
    dense = result["dense"]
    name = result["metric"]
    lines = [f"# Compression: {result['dataset']} / {result['model']} ({result['profile'] or 'base'} profile)", "",
             f"Metric: test {name} ({'higher' if result['higher_is_better'] else 'lower'} is better). "
             f"Dense: {dense['params']:,} params, {dense['macs']:,} MACs, {name} {_fmt(dense['metric'])}.", "",
             "| method | budget | seed | params | params removed | MACs | MACs removed | test | val | gammas zero / < 1% max "
             "| val after slim (before recovery) | recover | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in sorted(result["runs"], key=lambda r: (r["budget"]["kind"], r["budget"]["value"], r["method"], row_seed(r))):
        b = f"{run['budget']['kind']}={run['budget']['value']:g}"
        if run.get("error"):
            lines.append(f"| {run['method']} | {b} | {row_seed(run)} | failed: {run['error'][:80]} | | | | | | | | | |")
            continue
        zeros = run.get("gammas_frac_exact_zero")
        gam = "" if zeros is None else f"{zeros:.1%} / {run.get('gammas_frac_below_1pct') or 0:.1%}"
        lines.append(f"| {run['method']} | {b} | {row_seed(run)} | {run['params']:,} | {1 - run['params'] / dense['params']:.1%} | "
                     f"{run['macs']:,} | {1 - run['macs'] / dense['macs']:.1%} | {_fmt(run['metric'])} | "
                     f"{_fmt(run['metric_val'])} | {gam} | {_fmt(run.get('val_after_slim')) if 'val_after_slim' in run else ''} | "
                     f"{run['recover']} | {run['wall_s']:.0f} |")
    timing = result.get("sparsity_timing") or {}
    if "acsl_over_slimming" in timing:
        lines += ["", f"Sparsity-learning epoch wall time in these runs, ACSL / Network Slimming: "
                      f"{timing['acsl_over_slimming']:.2f}x ({timing['acsl']['mean_epoch_s']:.1f} s vs "
                      f"{timing['slimming']['mean_epoch_s']:.1f} s mean per epoch). The runs share the machine with "
                      "whatever else runs, so this ratio carries their load; `benchmarks/sparsity_overhead.py` measures "
                      "the regularisers interleaved on the same batches."]
    lines += peer_notes(result)  # modelopt-fastnas: its channel multiple next to ours
    if result.get("notes"):
        lines += [""] + [f"Note: {n}" for n in result["notes"]]
    lines += ["", f"Command: `{result['command']}`"]
    lines += [f"Merged from a parallel run: `{c}`" for c in result.get("merged_commands", [])]
    lines += [f"Machine: {result['machine']}; commit {result['git_commit']}.", ""]
    atomic_write_text(path, "\n".join(lines))


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def write_plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.report.plots import save_png

    dense = result["dense"]
    kinds = {r["budget"]["kind"] for r in result["runs"]}
    cost = "macs" if kinds == {"flops"} else "params"  # x axis: the budget's own cost
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in result["runs"] if not r.get("error")})
    for method in methods:
        pts = sorted((1 - r[cost] / dense[cost], r["metric"]) for r in result["runs"]
                     if r["method"] == method and not r.get("error") and r["metric"] is not None)
        if pts:
            style = "--" if method.startswith("scratch") else "-"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=method,
                    linewidth=2.5 if method == "acsl" else 1.2)
    if dense.get("metric") is not None:
        ax.axhline(dense["metric"], color="black", linestyle=":", label="dense")
    ax.set_xlabel("fraction of MACs removed" if cost == "macs" else "fraction of parameters removed")
    ax.set_ylabel(f"test {result['metric']}")
    ax.set_title(f"{result['dataset']} / {result['model']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    from toolchain.train.metrics import primary_metric
    from toolchain.utils.provenance import git_commit, machine

    args = parse_args(argv)
    try:
        cfg = load_cfg(args)
        methods = pick_methods(args.methods)
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()] if args.seeds else [cfg.prune.seed]
        budgets = [parse_budget(b).as_dict() for b in (args.budgets or DEFAULT_BUDGETS[cfg.task]).split(",")]
        if len(budgets) < 1:
            raise ToolchainError("give at least one budget")
        dataset = args.dataset or cfg.name.split("_")[0]
        results_dir = Path(args.results)
        stem = f"compression_{dataset}_{cfg.model.name}"
        json_path = results_dir / f"{stem}.json"
        metric_name, higher = primary_metric(cfg.task)
        result = read_json(json_path) if json_path.is_file() else {}
        if result and (result.get("profile") != cfg.profile or result.get("model") != cfg.model.name):
            raise ToolchainError(f"{json_path} holds another experiment (profile {result.get('profile')}); "
                                 "move it away or pass --results DIR")
        if args.merge:
            merge_results(result, read_json(args.merge), args.merge)
            write_json(json_path, result)
        if args.report_only or args.merge:
            if not result.get("runs"):
                raise ToolchainError(f"{json_path} has no runs to report; run the comparison first")
            write_table(result, results_dir / f"{stem}.md")
            write_plot(result, results_dir / f"{stem}.png")
            print(f"[compression] redrew {stem}.md and {stem}.png from {json_path}")
            return 0
        checkpoint = ensure_dense(cfg, args.checkpoint)
        if not result.get("dense"):
            result = {"dataset": dataset, "model": cfg.model.name, "profile": cfg.profile, "metric": metric_name,
                      "higher_is_better": higher, "split": "test", "dense": dense_entry(cfg, checkpoint), "runs": []}
        result.update({"machine": machine(), "git_commit": git_commit(),
                       "command": " ".join(shlex.quote(a) for a in ["python", "benchmarks/compression.py"]
                                           + list(sys.argv[1:] if argv is None else argv))})
        write_json(json_path, result)
        for seed in seeds:
            cfg_s = with_seed(cfg, seed)  # train.seed and prune.seed of this run
            for method in methods:
                for budget in budgets:
                    text = f"{budget['kind']}={budget['value']:g}"
                    same = lambda r: r["method"] == method and r["budget"] == budget and row_seed(r) == seed  # noqa: E731
                    done = [r for r in result["runs"] if same(r)]
                    if done and not done[0].get("error"):
                        continue
                    result["runs"] = [r for r in result["runs"] if not same(r)]
                    print(f"[compression] {method} {text}" + (f" seed {seed}" if len(seeds) > 1 else ""), flush=True)
                    t0 = time.time()
                    try:
                        if method == "scratch-plan":
                            entry = scratch_plan_entry(cfg_s, text)
                        elif method == "scratch-uniform":
                            acsl = [r for r in result["runs"] if r["method"] == "acsl" and r["budget"] == budget
                                    and row_seed(r) == seed and not r.get("error")]
                            if not acsl:
                                raise ToolchainError(f"scratch-uniform needs ACSL's result at {text}; run method acsl first")
                            entry = scratch_uniform_entry(cfg_s, text, acsl[0])
                        else:
                            entry = prune_entry(cfg_s, checkpoint, method, text, args.modelopt_divisor)
                    except ToolchainError as err:
                        entry = {"error": str(err)}
                        print(f"[compression] {method} {text} failed: {err}", file=sys.stderr)
                    entry.update({"method": method, "budget": budget, "seed": seed, "wall_s": round(time.time() - t0, 2)})
                    result["runs"].append(entry)
                    result["sparsity_timing"] = sparsity_timing(cfg, result["runs"])
                    write_json(json_path, result)
        write_table(result, results_dir / f"{stem}.md")
        write_plot(result, results_dir / f"{stem}.png")
        print(f"[compression] results: {json_path} (+ .md, .png)")
        return 0
    except ToolchainError as err:
        print(f"compression: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
