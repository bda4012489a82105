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

The table opens with a summary over seeds (mean ± sample std per method and budget) and, per budget, ACSL vs
the best other pruning method and vs scratch-plan: "ACSL ahead" / "ACSL behind" only where the mean gap exceeds
the pooled std sqrt((s1^2 + s2^2) / 2) with >= 2 seeds each, else "within noise" / "one seed: no claim" (also
stored as result["summary"]); with >= 2 seeds the plot shows the mean with std error bars. Seeds run elsewhere
are combined with --merge. `--measure-latency` (also with --report-only) times the dense checkpoint and every
run's model with ONNX Runtime on the CPU (batch 1, interleaved rounds) and records ms, speed-up, MACs ratio and
realisation = speed-up / MACs ratio per run (issue 11).
"""
from __future__ import annotations

import argparse
import math
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
from toolchain.utils.io import atomic_write_text, read_json, sha256_file, write_json  # noqa: E402

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
    p.add_argument("--measure-latency", action="store_true",
                   help="measure ONNX Runtime CPU latency (batch 1) of the dense model and every run's model, "
                        "interleaved, and record ms, speed-up, MACs ratio and realisation (speed-up / MACs ratio) per run")
    p.add_argument("--latency-threads", type=int, default=1, metavar="N", help="ONNX Runtime threads (default 1)")
    p.add_argument("--latency-rounds", type=int, default=5, metavar="N",
                   help="interleaved rounds over all models; a model's latency is the median over rounds (default 5)")
    p.add_argument("--latency-runs", type=int, default=5, metavar="N",
                   help="timed inferences per model per round (their median is the round's value; default 5)")
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

    from toolchain.train.metrics import primary_metric
    from toolchain.train.plateau import plateau_check

    model, _ = load_model(checkpoint, cfg)
    summary = model_summary(model, tuple(cfg.data.input_size))
    entry = {"params": summary["params"], "macs": summary["macs"], "metric": _val(model, cfg, "test"),
             "metric_val": _val(model, cfg, "val"), "checkpoint": str(checkpoint),
             "checkpoint_sha256": sha256_file(checkpoint)}  # a retrained model at the same path is another experiment
    history = Path(checkpoint).parent / "dense_history.json"  # the plateau evidence of the protocol, when on record
    if history.is_file():
        epochs = read_json(history).get("history") or []
        entry["epochs"] = len(epochs)
        try:
            entry["plateau"] = plateau_check(epochs, *primary_metric(cfg.task))
        except (ValueError, KeyError, TypeError):
            entry["plateau"] = None
    return entry


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
            "slim_loss": (diag.get("slim") or {}).get("loss"), "dead_channels_kept": (diag.get("dead_kept") or {}).get("dead")}


def _train_scratch(cfg, model, run_dir: Path, epochs: int, stage: str, extra: dict | None = None) -> dict:
    from toolchain.models.complexity import model_summary
    from toolchain.prune.pipeline import _val
    from toolchain.prune.recover import _load_best
    from toolchain.train.trainer import fit

    # an interrupted reference resumes (90 epochs on CIFAR is most of an hour), but only the same run
    result = fit(cfg, model, run_dir, epochs=epochs, lr=cfg.train.lr, stage=stage, extra_checkpoint=extra,
                 resume_same_run=True)
    _load_best(model, result.best_path)
    summary = model_summary(model, tuple(cfg.data.input_size))
    return {"params": summary["params"], "macs": summary["macs"], "metric": _val(model, cfg, "test"),
            "metric_val": result.best_metric, "recover": "none", "sparsity_epochs": 0, "recover_epochs": 0,
            "train_epochs": epochs, "seed": cfg.train.seed, "checkpoint": str(result.best_path)}


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


def same_dense(a: dict, b: dict) -> bool:
    """Two dense entries name the same model: the same path, and the same sha256 where both recorded one (results
    written before session 12 have only the path)."""
    a, b = a or {}, b or {}
    if a.get("checkpoint") != b.get("checkpoint"):
        return False
    sha_a, sha_b = a.get("checkpoint_sha256"), b.get("checkpoint_sha256")
    return not (sha_a and sha_b) or sha_a == sha_b


def merge_results(result: dict, other: dict, other_path: str) -> None:
    """Add `other`'s runs (same experiment, same dense checkpoint) that `result` lacks; record its command."""
    if (other.get("model"), other.get("profile")) != (result.get("model"), result.get("profile")) or not same_dense(
            other.get("dense"), result.get("dense")):
        raise ToolchainError(f"{other_path} is another experiment (model, profile or dense checkpoint differ); "
                             "only comparisons of the same dense model can be merged")
    key = lambda r: (r["method"], r["budget"]["kind"], r["budget"]["value"], row_seed(r))  # noqa: E731
    have = {key(r) for r in result["runs"] if not r.get("error")}
    added = [r for r in other["runs"] if not r.get("error") and key(r) not in have]
    result["runs"] = [r for r in result["runs"] if not r.get("error")
                      or key(r) not in {key(a) for a in added}] + added
    command = other.get("command")
    if command and command != result.get("command") and command not in result.get("merged_commands", []):
        result.setdefault("merged_commands", []).append(command)
    print(f"[compression] merged {len(added)} runs from {other_path}")


# ------------------------------------------------------------------------------------------- latency
LATENCY_FIELDS = ("latency_ms", "speedup", "macs_ratio", "realisation")


def _existing(path: str | Path) -> Path | None:
    """`path` as given (relative: to the working directory), else relative to the repository; None if neither."""
    path = Path(path)
    for candidate in ([path] if path.is_absolute() else [path, REPO / path]):
        if candidate.is_file():
            return candidate
    return None


def row_model_file(cfg, run: dict) -> tuple[Path | None, str]:
    """The file of a run's model and where it was looked for: the recorded checkpoint (scratch references), else
    <run_dir>/slim.pt (pruning methods), else the scratch folder under cfg's out_dir (rows written before scratch
    runs recorded their checkpoint)."""
    if run.get("checkpoint"):
        where = run["checkpoint"]
    elif run.get("run_dir"):
        where = str(Path(run["run_dir"]) / "slim.pt")
    elif run["method"] in SCRATCH_METHODS:
        folder = f"{run['method']}_{parse_budget(budget_text(run['budget'])).tag()}{seed_suffix(row_seed(run))}"
        where = str(cfg.run_dir() / "bench" / folder / f"{run['method'].replace('-', '_')}_best.pt")
    else:
        return None, "the row records no run_dir"
    return _existing(where), where


def measure_latency(result: dict, cfg, *, threads: int = 1, rounds: int = 5, runs: int = 5) -> None:
    """ONNX Runtime CPU latency, batch 1, of the dense checkpoint and every successful run's model, measured in
    interleaved rounds (dense, run 1, run 2, ..., repeated `rounds` times; per model the median over rounds of the
    median of `runs` inferences) so that background load affects all alike. Sets per run latency_ms, speedup
    (dense ms / ms), macs_ratio (dense MACs / MACs) and realisation (speedup / macs_ratio), and result["latency"].
    Runs whose model file is missing are skipped with a printed reason (and lose any earlier measurement)."""
    import statistics

    from toolchain.profile.layer_latency import machine_id, onnx_bytes, ort_session, time_session
    from toolchain.train.checkpoint import load_model

    if rounds < 1 or runs < 1 or threads < 1:
        raise ToolchainError("--latency-rounds, --latency-runs and --latency-threads must be at least 1")
    size = tuple(cfg.data.input_size)
    dense_path = _existing(result["dense"]["checkpoint"])
    if dense_path is None:
        raise ToolchainError(f"--measure-latency needs the dense checkpoint {result['dense']['checkpoint']}, "
                             "which is not there; run from the folder the comparison ran in")
    sessions = [(None, ort_session(onnx_bytes(load_model(dense_path, cfg)[0], size), threads))]
    for run in result["runs"]:
        for key in LATENCY_FIELDS:
            run.pop(key, None)
        if run.get("error"):
            continue
        label = f"{run['method']} {budget_text(run['budget'])} seed {row_seed(run)}"
        path, where = row_model_file(cfg, run)
        if path is None:
            print(f"[compression] latency: skipping {label}: model file not found ({where})")
            continue
        cfg_run = cfg
        if run.get("width") is not None:  # scratch-uniform: the zoo model at its own width
            cfg_run = config_from_dict(deep_merge(config_to_dict(cfg), {"model": {"width": run["width"]}}))
        sessions.append((run, ort_session(onnx_bytes(load_model(path, cfg_run)[0], size), threads)))
    print(f"[compression] latency: {len(sessions)} models x {rounds} interleaved rounds x {runs} runs, "
          f"{threads} thread(s)", flush=True)
    samples: list[list[float]] = [[] for _ in sessions]
    for _ in range(rounds):
        for i, (_, session) in enumerate(sessions):
            samples[i].append(time_session(session, (1, 3, *size), runs, warmup=1))
    ms = [statistics.median(s) for s in samples]
    dense_ms, dense_macs = ms[0], result["dense"]["macs"]
    for (run, _), run_ms in zip(sessions[1:], ms[1:]):
        speedup, macs_ratio = dense_ms / run_ms, dense_macs / run["macs"]
        run.update({"latency_ms": run_ms, "speedup": speedup, "macs_ratio": macs_ratio,
                    "realisation": speedup / macs_ratio})
    result["latency"] = {"dense_ms": dense_ms, "threads": threads, "rounds": rounds, "runs": runs,
                         "machine": machine_id()}


# ------------------------------------------------------------------------------------------- summary over seeds
NO_CLAIM, AHEAD, BEHIND, NOISE = "one seed: no claim", "ACSL ahead", "ACSL behind", "within noise"


def budget_text(budget: dict) -> str:
    return f"{budget['kind']}={budget['value']:g}"


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _std(values) -> float | None:
    """Sample standard deviation (ddof=1); None below two values."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def method_stats(result: dict) -> dict[tuple, dict[str, dict]]:
    """(budget kind, value) -> method -> n seeds, mean / std of the test metric and the means of params / MACs
    removed, val after sparsity and right after slimming, the lambdas used and latency realisation, over the method's successful runs at that budget."""
    dense = result["dense"]
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for run in result["runs"]:
        if not run.get("error") and run.get("metric") is not None:
            key = (run["budget"]["kind"], run["budget"]["value"])
            groups.setdefault(key, {}).setdefault(run["method"], []).append(run)
    stats: dict[tuple, dict[str, dict]] = {}
    for key, by_method in sorted(groups.items()):
        for method, runs in sorted(by_method.items()):
            metrics = [r["metric"] for r in runs]
            stats.setdefault(key, {})[method] = {
                "n": len(runs), "seeds": sorted(row_seed(r) for r in runs), "mean": _mean(metrics),
                "std": _std(metrics),
                "params_removed": _mean([1 - r["params"] / dense["params"] for r in runs]),
                "macs_removed": _mean([1 - r["macs"] / dense["macs"] for r in runs]),
                "val_after_sparsity": _mean([r.get("val_after_sparsity") for r in runs]),
                "val_after_slim": _mean([r.get("val_after_slim") for r in runs]),
                "lams": sorted({r["lam"] for r in runs if r.get("lam") is not None}),
                "realisation": _mean([r.get("realisation") for r in runs])}
    return stats


def compare(acsl: dict, other: dict, higher_is_better: bool) -> dict:
    """ACSL vs another method at one budget: gap = mean difference in the metric's good direction (positive:
    ACSL better), pooled std = sqrt((s1^2 + s2^2) / 2); a claim only where |gap| exceeds it with >= 2 seeds each."""
    gap = (acsl["mean"] - other["mean"]) * (1 if higher_is_better else -1)
    if acsl["n"] < 2 or other["n"] < 2:
        pooled, verdict = None, NO_CLAIM
    else:
        pooled = math.sqrt((acsl["std"] ** 2 + other["std"] ** 2) / 2)
        verdict = AHEAD if gap > pooled else BEHIND if -gap > pooled else NOISE
    return {"gap": gap, "pooled_std": pooled, "verdict": verdict}


def summarize(result: dict) -> list[dict]:
    """Per budget: ACSL vs the best other pruning method (by mean; dense and the scratch-* references are not
    pruning methods) and ACSL vs scratch-plan when present, each with gap, pooled std and verdict."""
    higher = bool(result["higher_is_better"])
    sign = 1 if higher else -1
    out = []
    for (kind, value), by_method in method_stats(result).items():
        acsl = by_method.get("acsl")
        if acsl is None:
            continue
        others = [m for m in by_method if m not in ("acsl", "dense") and not m.startswith("scratch")]
        against = []
        if others:
            against.append((max(others, key=lambda m: sign * by_method[m]["mean"]), "best other pruning method"))
        if "scratch-plan" in by_method:
            against.append(("scratch-plan", "ACSL's plan trained from scratch"))
        for method, role in against:
            other = by_method[method]
            out.append({"budget": {"kind": kind, "value": value}, "metric": result["metric"], "other": method,
                        "role": role, "n_acsl": acsl["n"], "n_other": other["n"], "mean_acsl": acsl["mean"],
                        "mean_other": other["mean"], "std_acsl": acsl["std"], "std_other": other["std"],
                        **compare(acsl, other, higher)})
    return out


def _pm(mean, std) -> str:
    return f"{_fmt(mean)} ± {_fmt(std)}"


def _pct(value) -> str:
    return "" if value is None else f"{value:.1%}"


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def summary_lines(result: dict) -> list[str]:
    name = result["metric"]
    lines = ["## Summary over seeds", "",
             f"Mean ± sample std (ddof=1; n/a for one seed) of test {name} over the seeds of each method and budget.",
             "",
             f"lambda: prune.sparsity.lam of the method's runs. val after sparsity / after slim: the val {name} before "
             "and right after slimming (before recovery); a method that learned structured sparsity loses little there.",
             "",
             "| method | budget | seeds | lambda | test mean ± std | params removed | MACs removed "
             "| val after sparsity (mean) | val after slim (mean) | realisation (mean) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (kind, value), by_method in method_stats(result).items():
        for method, st in by_method.items():
            lines.append(f"| {method} | {kind}={value:g} | {st['n']} | {', '.join(f'{v:g}' for v in st['lams'])} | "
                         f"{_pm(st['mean'], st['std'])} | {_pct(st['params_removed'])} | {_pct(st['macs_removed'])} | "
                         f"{'' if st['val_after_sparsity'] is None else _fmt(st['val_after_sparsity'])} | "
                         f"{'' if st['val_after_slim'] is None else _fmt(st['val_after_slim'])} | "
                         f"{_num(st['realisation'], '.2f')} |")
    verdicts = result.get("summary")
    if verdicts is None:
        verdicts = summarize(result)
    if verdicts:
        lines += ["", f"ACSL vs the best other pruning method (and vs scratch-plan) per budget: gap = mean difference "
                      f"in {name}'s good direction (+: ACSL better), pooled std = sqrt((s1² + s2²) / 2); "
                      "\"ahead\" / \"behind\" only where |gap| > pooled std with >= 2 seeds each.", ""]
        for v in verdicts:
            lines.append(f"- {budget_text(v['budget'])}: ACSL {_pm(v['mean_acsl'], v['std_acsl'])} (n={v['n_acsl']}) "
                         "vs "
                         f"{v['other']} ({v['role']}) {_pm(v['mean_other'], v['std_other'])} (n={v['n_other']}): "
                         f"gap {v['gap']:+.3f}, pooled std {_fmt(v['pooled_std'])} -> **{v['verdict']}**")
    return lines


# ------------------------------------------------------------------------------------------- report
def write_table(result: dict, path: Path) -> None:
    dense = result["dense"]
    name = result["metric"]
    lat = result.get("latency")
    lines = [f"# Compression: {result['dataset']} / {result['model']} ({result['profile'] or 'base'} profile)", "",
             f"Metric: test {name} ({'higher' if result['higher_is_better'] else 'lower'} is better). "
             f"Dense: {dense['params']:,} params, {dense['macs']:,} MACs, {name} {_fmt(dense['metric'])}.", ""]
    plateau = dense.get("plateau")
    if plateau:
        lines += [f"Dense training: {dense['epochs']} epochs; its last {plateau['epochs'] - plateau['window_start_epoch'] + 1} "
                  f"epochs gained {plateau['gain']:+.3f} best val {name} (plateau rule < {plateau['tol']}: "
                  f"{'met' if plateau['plateau'] else 'not met'}; val std in that window {_fmt(plateau['window_val_std'])}). "
                  "Scratch references train for dense + sparsity + recovery epochs (train_epochs per run).", ""]
    if lat:
        lines += [f"Latency: ONNX Runtime CPU, batch 1, {lat['threads']} thread(s), median over {lat['rounds']} "
                  f"interleaved rounds (dense and every model in turn) of the median of {lat['runs']} runs; dense "
                  f"{lat['dense_ms']:.2f} ms on {lat['machine']}. speed-up = dense ms / ms; realisation = speed-up / "
                  "(dense MACs / MACs).", ""]
    lines += summary_lines(result)
    header = ["method", "budget", "seed", "params", "params removed", "MACs", "MACs removed", "test", "val",
              "gammas zero / < 1% max", "val after slim (before recovery)", "recover", "wall s", "ms", "speed-up",
              "realisation"]
    lines += ["", "## Per seed", "", "| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in sorted(result["runs"], key=lambda r: (r["budget"]["kind"], r["budget"]["value"], r["method"], row_seed(r))):
        b = budget_text(run["budget"])
        if run.get("error"):
            cells = [run["method"], b, str(row_seed(run)), f"failed: {run['error'][:80]}"]
            lines.append("| " + " | ".join(cells + [""] * (len(header) - len(cells))) + " |")
            continue
        zeros = run.get("gammas_frac_exact_zero")
        gam = "" if zeros is None else f"{zeros:.1%} / {run.get('gammas_frac_below_1pct') or 0:.1%}"
        cells = [run["method"], b, str(row_seed(run)), f"{run['params']:,}",
                 f"{1 - run['params'] / dense['params']:.1%}", f"{run['macs']:,}",
                 f"{1 - run['macs'] / dense['macs']:.1%}", _fmt(run["metric"]), _fmt(run["metric_val"]),
                 gam, _fmt(run.get("val_after_slim")) if "val_after_slim" in run else "", str(run["recover"]),
                 f"{run['wall_s']:.0f}", _num(run.get("latency_ms"), ".2f"),
                 "" if run.get("speedup") is None else f"{run['speedup']:.2f}x", _num(run.get("realisation"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
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
    """Metric vs fraction removed per method; with >= 2 seeds anywhere, the mean per (method, budget) with the
    sample std as error bars instead of one point per run."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.report.plots import save_png

    dense = result["dense"]
    kinds = {r["budget"]["kind"] for r in result["runs"]}
    cost = "macs" if kinds == {"flops"} else "params"  # x axis: the budget's own cost
    stats = method_stats(result)
    seeded = any(st["n"] >= 2 for by_method in stats.values() for st in by_method.values())
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = sorted({r["method"] for r in result["runs"] if not r.get("error")})
    for method in methods:
        style = "--" if method.startswith("scratch") else "-"
        width = 2.5 if method == "acsl" else 1.2
        if seeded:
            pts = sorted((st[f"{cost}_removed"], st["mean"], st["std"] or 0.0)
                         for st in (by_method.get(method) for by_method in stats.values()) if st)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o" + style,
                            capsize=3, label=method, linewidth=width)
            continue
        pts = sorted((1 - r[cost] / dense[cost], r["metric"]) for r in result["runs"]
                     if r["method"] == method and not r.get("error") and r["metric"] is not None)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o", label=method, linewidth=width)
    if dense.get("metric") is not None:
        ax.axhline(dense["metric"], color="black", linestyle=":", label="dense")
    ax.set_xlabel("fraction of MACs removed" if cost == "macs" else "fraction of parameters removed")
    ax.set_ylabel(f"test {result['metric']}" + (" (mean ± std over seeds)" if seeded else ""))
    ax.set_title(f"{result['dataset']} / {result['model']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_png(fig, path)


def write_report(result: dict, json_path: Path) -> None:
    """The verdicts into result["summary"] (and the JSON), then <stem>.md and <stem>.png next to it."""
    result["summary"] = summarize(result)
    write_json(json_path, result)
    write_table(result, json_path.with_suffix(".md"))
    write_plot(result, json_path.with_suffix(".png"))


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
            if not Path(args.merge).is_file():
                raise ToolchainError(f"--merge {args.merge}: no such file")
            other = read_json(args.merge)
            if result:
                merge_results(result, other, args.merge)
            else:  # the first of several parallel runs' files: it becomes the table
                result = other
                print(f"[compression] started {json_path} from {args.merge} ({len(other.get('runs', []))} runs)")
            write_json(json_path, result)
        latency = dict(threads=args.latency_threads, rounds=args.latency_rounds, runs=args.latency_runs)
        if args.report_only or args.merge:
            if not result.get("runs"):
                raise ToolchainError(f"{json_path} has no runs to report; run the comparison first")
            if args.measure_latency:
                measure_latency(result, cfg, **latency)
            write_report(result, json_path)
            print(f"[compression] redrew {stem}.md and {stem}.png from {json_path}")
            return 0
        checkpoint = ensure_dense(cfg, args.checkpoint)
        recorded = (result.get("dense") or {}).get("checkpoint_sha256")
        if recorded and sha256_file(checkpoint) != recorded:
            raise ToolchainError(f"{checkpoint} is not the dense model {json_path} was started from (sha256 "
                                 f"{recorded[:12]}...): it was retrained or replaced; pass another --results folder "
                                 "to start a new comparison, or the original checkpoint")
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
        if args.measure_latency:
            measure_latency(result, cfg, **latency)
        write_report(result, json_path)
        print(f"[compression] results: {json_path} (+ .md, .png)")
        return 0
    except ToolchainError as err:
        print(f"compression: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
