"""Proximal vs subgradient sparsity (issue 12): does the sparsity phase zero the gammas selection removes?

    python benchmarks/proximal_sparsity.py configs/demo.yaml [--profile quick] [--checkpoint DENSE.pt] \
        [--methods acsl,slimming] [--subgradient-lams 1e-4] [--proximal-lams 1,3,10] [--budget params=0.5] \
        [--exp demo] [--results benchmarks/results] [--seeds 0,1,2] [--set KEY=VALUE ...]

For each method x mode x lambda it runs `acsl prune` (toolchain.prune.pipeline.run_prune) from the same dense
checkpoint (trained here if none is given) and records the run's diagnostic: fraction of prunable gammas
at exactly zero and below 1e-2 of the largest after sparsity, the shrink budget lam x sum(lr_t), and the val
metric dense (before sparsity), after sparsity, right after slimming (before recovery) and after recovery.
Rows are appended to `<results>/proximal_sparsity_<exp>.json` as they finish (a rerun skips finished rows);
a Markdown table is written next to it.
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
from toolchain.utils.io import atomic_write_text, read_json, write_json  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--profile")
    p.add_argument("--checkpoint", help="dense checkpoint (default: train one into <out_dir>/<name>/dense_best.pt)")
    p.add_argument("--methods", default="acsl,slimming")
    p.add_argument("--subgradient-lams", default="", help="lambdas for mode subgradient (default: the config's lam)")
    p.add_argument("--proximal-lams", default="", help="lambdas for mode proximal (default: the config's lam)")
    p.add_argument("--no-floor-lams", default="", help="lambdas for mode proximal with keep_floor off (default: none)")
    p.add_argument("--gamma-only-lams", default="", help="lambdas for mode proximal with with_beta off (default: none)")
    p.add_argument("--budget", help="default: prune.budget of the config")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (train.seed and prune.seed of each run; default 0)")
    p.add_argument("--exp", help="label of the result files (default: the config's name)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def _lams(text: str, default: float) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()] or [default]


def one_run(cfg, checkpoint: Path, method: str, mode: str, lam: float, budget: str, floor: bool = True,
            beta: bool = True, seed: int = 0) -> dict:
    from toolchain.prune.pipeline import run_prune

    cfg_r = config_from_dict(deep_merge(config_to_dict(cfg), {"train": {"seed": seed}, "prune": {"seed": seed, "sparsity": {
        "lam": lam, "mode": mode, "keep_floor": floor, "with_beta": beta}}}))
    out = (cfg.run_dir() / "proximal_sparsity" / (f"{method}_{mode}_lam{lam:g}{'' if floor else '_nofloor'}"
                                                  f"{'' if beta else '_gammaonly'}{f'_s{seed}' if seed else ''}"))
    t0 = time.time()
    record = run_prune(cfg_r, checkpoint, method=method, budget=budget, out=out)
    d = record["diagnostic"]
    strengths = (record["stages"]["sparsity"] or {}).get("strengths") or {}
    return {"method": method, "mode": mode, "lam": lam, "keep_floor": floor and mode == "proximal",
            "with_beta": beta and mode == "proximal", "seed": seed,
            "budget": record["budget"], "layers_all_zero": d["gammas"]["layers_all_zero"],
            "frac_exact_zero": d["gammas"]["frac_exact_zero"], "frac_below_1pct_of_max": d["gammas"]["frac_below_rel"],
            "median_abs_gamma": d["gammas"].get("median_abs"), "n_gammas": d["gammas"]["n"],
            "lr_sum": strengths.get("lr_sum"), "shrink_budget": strengths.get("shrink_budget"),
            "val_dense": d["val_dense"], "val_after_sparsity": d["val_after_sparsity"],
            "val_after_slim": d["val_after_slim"], "val_after_recovery": d["val_after_recovery"],
            "slim_loss": d["slim"]["loss"], "test": record["test"],
            "fraction_removed": record["fraction_removed"], "sparsity_epochs": record["sparsity_epochs"],
            "recover_epochs": record["recover_epochs"], "histogram": str(out / (d["histogram"] or "")),
            "wall_s": round(time.time() - t0, 2)}


def _f(v, fmt=".3f") -> str:
    return "n/a" if v is None else format(v, fmt)


def _mode(r: dict) -> str:
    if r["mode"] != "proximal":
        return r["mode"]
    notes = ([] if r.get("keep_floor", True) else ["no floor"]) + ([] if r.get("with_beta", True) else ["gamma only"])
    return r["mode"] + (f" ({', '.join(notes)})" if notes else " (gamma, beta)")


def _seed_summary(result: dict) -> list[str]:
    """Mean +- std over seeds of the settings run with more than one seed."""
    import statistics

    groups: dict = {}
    for r in result["runs"]:
        if not r.get("error"):
            groups.setdefault((r["method"], _mode(r), r["lam"]), []).append(r)
    multi = {k: v for k, v in sorted(groups.items()) if len(v) > 1}
    if not multi:
        return []

    def ms(rows, key, pct=False):
        vals = [r[key] * (100 if pct else 1) for r in rows]
        return f"{statistics.mean(vals):.1f} +- {statistics.stdev(vals):.1f}"

    lines = ["", "Over seeds (mean +- std):", "",
             "| method | mode | lambda | seeds | zeros % | val after sparsity | val after slim | slim loss | val after recovery |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (method, mode, lam), rows in multi.items():
        lines.append(f"| {method} | {mode} | {lam:g} | {len(rows)} | {ms(rows, 'frac_exact_zero', True)} | "
                     f"{ms(rows, 'val_after_sparsity')} | {ms(rows, 'val_after_slim')} | {ms(rows, 'slim_loss')} | "
                     f"{ms(rows, 'val_after_recovery')} |")
    return lines


def write_table(result: dict, path: Path) -> None:
    name = result["metric"]
    lines = [f"# Proximal vs subgradient sparsity: {result['exp']} ({result['profile'] or 'base'} profile), "
             f"budget {result['budget']}", "",
             f"Val {name} ({'higher' if result['higher_is_better'] else 'lower'} is better); dense val "
             f"{_f(result['dense_val'])}. 'zeros' = prunable BN gammas exactly 0 after sparsity; '< 1%' = below 1e-2 x "
             "the largest |gamma|; shrink = lam x sum of lr_t over the sparsity steps (how far the proximal step can "
             "move a gamma); slim loss = metric lost by slimming, before recovery.", "",
             "| method | mode | lambda | seed | shrink | zeros | < 1% | layers all zero | median abs gamma | val dense "
             "| val after sparsity | val after slim | slim loss | val after recovery | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(result["runs"], key=lambda r: (r["method"], _mode(r), r["lam"], r.get("seed", 0))):
        if r.get("error"):
            lines.append(f"| {r['method']} | {_mode(r)} | {r['lam']:g} | {r.get('seed', 0)} | failed: {r['error'][:80]} "
                         "| | | | | | | | | | |")
            continue
        lines.append(f"| {r['method']} | {_mode(r)} | {r['lam']:g} | {r.get('seed', 0)} | {_f(r['shrink_budget'], '.3g')} | "
                     f"{r['frac_exact_zero']:.1%} | {r['frac_below_1pct_of_max']:.1%} | {r['layers_all_zero']} | "
                     f"{_f(r['median_abs_gamma'], '.4f')} | "
                     f"{_f(r['val_dense'])} | {_f(r['val_after_sparsity'])} | {_f(r['val_after_slim'])} | "
                     f"{_f(r['slim_loss'])} | {_f(r['val_after_recovery'])} | {r['wall_s']:.0f} |")
    lines += _seed_summary(result)
    lines += [""] + [f"Note: {n}" for n in result.get("notes", [])]
    lines += [""] + [f"Command: `{c}`" for c in result.get("commands") or [result["command"]]]
    lines += [f"Machine: {result['machine']}; commit {result['git_commit']}.", ""]
    atomic_write_text(path, "\n".join(lines))


def main(argv=None) -> int:
    from toolchain.prune.pipeline import _val
    from toolchain.prune.select import parse_budget
    from toolchain.train.checkpoint import load_model
    from toolchain.train.metrics import primary_metric
    from toolchain.utils.provenance import git_commit, machine

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, profile=args.profile, overrides=parse_dotted_overrides(args.overrides))
        budget = args.budget or cfg.prune.budget
        parse_budget(budget)
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        for m in methods:
            if m not in ("acsl", "cap", "slimming"):
                raise ToolchainError(f"method '{m}' has no gamma sparsity phase (valid: acsl, cap, slimming)")
        exp = args.exp or cfg.name
        results = Path(args.results)
        json_path = results / f"proximal_sparsity_{exp}.json"
        sys.path.insert(0, str(REPO / "benchmarks"))
        from compression import ensure_dense

        checkpoint = ensure_dense(cfg, args.checkpoint)
        metric, higher = primary_metric(cfg.task)
        result = read_json(json_path) if json_path.is_file() else {}
        if not result:
            model, _ = load_model(checkpoint, cfg)
            result = {"exp": exp, "config": args.config, "profile": cfg.profile, "budget": budget, "metric": metric,
                      "higher_is_better": higher, "dense_checkpoint": str(checkpoint), "dense_val": _val(model, cfg),
                      "runs": []}
        command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/proximal_sparsity.py"]
                           + list(sys.argv[1:] if argv is None else argv))
        commands = result.setdefault("commands", [result["command"]] if result.get("command") else [])
        if command not in commands:
            commands.append(command)  # rows added by several invocations (e.g. more seeds): every command is kept
        result.update({"machine": machine(), "git_commit": git_commit(), "command": command})
        lam0 = cfg.prune.sparsity.lam
        extra = lambda text: [float(v) for v in text.split(",") if v.strip()]  # noqa: E731
        plan = [(m, "subgradient", lam, False, False) for m in methods for lam in _lams(args.subgradient_lams, lam0)]
        plan += [(m, "proximal", lam, True, True) for m in methods for lam in _lams(args.proximal_lams, lam0)]
        plan += [(m, "proximal", lam, False, True) for m in methods for lam in extra(args.no_floor_lams)]
        plan += [(m, "proximal", lam, True, False) for m in methods for lam in extra(args.gamma_only_lams)]
        seeds = [int(v) for v in args.seeds.split(",") if v.strip()] or [0]
        plan = [p + (seed,) for seed in seeds for p in plan]
        for method, mode, lam, floor, beta, seed in plan:
            same = lambda r: (r["method"], r["mode"], r["lam"], r.get("keep_floor", False),  # noqa: E731
                              r.get("with_beta", False), r.get("seed", 0)) == (method, mode, lam, floor, beta, seed)
            if any(same(r) and not r.get("error") for r in result["runs"]):
                continue
            result["runs"] = [r for r in result["runs"] if not same(r)]
            print(f"[proximal_sparsity] {method} {mode} lam {lam:g} floor {floor} beta {beta} seed {seed}", flush=True)
            try:
                row = one_run(cfg, checkpoint, method, mode, lam, budget, floor, beta, seed)
            except ToolchainError as err:
                row = {"method": method, "mode": mode, "lam": lam, "keep_floor": floor, "with_beta": beta,
                       "seed": seed, "error": str(err)}
            result["runs"].append(row)
            write_json(json_path, result)
            write_table(result, json_path.with_suffix(".md"))
        write_json(json_path, result)
        write_table(result, json_path.with_suffix(".md"))
        print(f"[proximal_sparsity] results: {json_path} (+ .md)")
        return 0
    except ToolchainError as err:
        print(f"proximal_sparsity: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
