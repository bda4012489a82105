"""Which prune.group_reduction (issue 11)? ACSL pruned with each reduction from one dense model and one
sparsity-learning run, recovered the same way, compared on val (test reported, not used to choose).

    python benchmarks/group_reduction_val.py configs/cifar_resnet56.yaml --profile quick --budget params=0.5
    python benchmarks/group_reduction_val.py configs/camvid_segnet.yaml --profile quick --budget params=0.5 \\
        --set model.name=mobilenetv2_lraspp --set model.width=0.5 --tag camvid_mobilenetv2_lraspp

Runs `acsl train` once (or takes --checkpoint), then `acsl prune --set prune.group_reduction=R` per
reduction (the sparsity checkpoint is shared through the run folder's cache). Writes
benchmarks/results/group_reduction_<tag>.{json,md}: val / test after recovery, fraction removed, and how
many channels the multi-BN groups (residual chains, expansion + depthwise pairs) lost.
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

REDUCTIONS = ("mean", "max", "sum")


def _acsl(args: list[str]) -> None:
    cmd = [sys.executable, "-m", "toolchain", *args]
    print("+", " ".join(shlex.quote(c) for c in cmd), flush=True)
    code = subprocess.run(cmd, cwd=REPO).returncode
    if code:  # acsl printed its own one-line error above
        raise SystemExit(f"group_reduction_val: `acsl {args[0]}` failed (exit {code}); see its error above")


def _group_losses(select_record: dict) -> dict:
    out = {}
    kinds = (("single_bn", lambda n: n == 1), ("multi_bn", lambda n: n >= 2), ("residual_3plus_bn", lambda n: n >= 3))
    for label, test in kinds:
        groups = [g for g in select_record["groups"] if test(len(g["bns"]))]
        total = sum(g["channels"] for g in groups)
        removed = sum(g["channels"] - g["kept"] for g in groups)
        out[label] = {"groups": len(groups), "channels": total, "removed": removed,
                      "removed_fraction": removed / total if total else None,
                      "groups_untouched": sum(g["kept"] == g["channels"] for g in groups)}
    return out


def combine(paths: list[str], tag: str, out: str, command: str) -> int:
    """Several single-seed results (same config and budget, e.g. train.seed / prune.seed 0, 1, 2) -> one table
    with every seed's rows and mean +- std per reduction; the choice is the best mean val."""
    import statistics

    from toolchain.errors import ToolchainError
    from toolchain.utils.io import atomic_write_text, write_json

    runs = [json.loads(Path(p).read_text()) for p in paths]
    if len({(r["config"], r["budget"], r["method"]) for r in runs}) != 1:
        raise ToolchainError("--combine needs results of one config, method and budget")
    higher = runs[0]["metric"] != "mae"
    per: dict[str, list[dict]] = {}
    for run in runs:
        for row in run["rows"]:
            per.setdefault(row["group_reduction"], []).append({**row, "overrides": run["overrides"]})
    summary = []
    for reduction, rows in per.items():
        vals, tests = [r["val"] for r in rows], [r["test"] for r in rows]
        multi = [r["groups"]["multi_bn"]["removed"] for r in rows]
        summary.append({"group_reduction": reduction, "n": len(rows), "val_mean": statistics.mean(vals),
                        "val_std": statistics.stdev(vals) if len(vals) > 1 else None,
                        "test_mean": statistics.mean(tests), "test_std": statistics.stdev(tests) if len(tests) > 1 else None,
                        "multi_bn_removed": multi, "multi_bn_channels": rows[0]["groups"]["multi_bn"]["channels"]})
    best = (max if higher else min)(summary, key=lambda r: r["val_mean"])
    metric = runs[0]["metric"]
    result = {"command": command, "combined": [r["command"] for r in runs], "budget": runs[0]["budget"],
              "method": runs[0]["method"], "metric": metric, "summary": summary, "runs": runs,
              "chosen_on_val": best["group_reduction"]}
    base = Path(out) / f"group_reduction_{tag}"
    write_json(base.with_suffix(".json"), result)
    sd = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [f"# prune.group_reduction on val: {tag}, {runs[0]['method']} {runs[0]['budget']}, {len(runs)} seeds", "",
             f"Chosen on mean val: **{best['group_reduction']}**.", "",
             f"| group_reduction | seeds | val {metric} mean +- std | test {metric} mean +- std | "
             "multi-BN channels removed per seed |", "| --- | ---: | ---: | ---: | --- |"]
    for r in summary:
        lines.append(f"| {r['group_reduction']} | {r['n']} | {r['val_mean']:.2f} +- {sd(r['val_std'])} | "
                     f"{r['test_mean']:.2f} +- {sd(r['test_std'])} | "
                     + ", ".join(f"{m}/{r['multi_bn_channels']}" for m in r["multi_bn_removed"]) + " |")
    lines += ["", "Per seed:", "", f"| seed overrides | group_reduction | val {metric} | test {metric} | "
              "val after slim | multi-BN removed | single-BN removed |", "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for run in runs:
        for row in run["rows"]:
            g = row["groups"]
            lines.append(f"| {' '.join(run['overrides'])} | {row['group_reduction']} | {row['val']:.2f} | "
                         f"{row['test']:.2f} | {row['val_after_slim']:.2f} | "
                         f"{g['multi_bn']['removed']}/{g['multi_bn']['channels']} | "
                         f"{g['single_bn']['removed']}/{g['single_bn']['channels']} |")
    lines += ["", "Commands (one per seed):", ""] + [f"    {r['command']}" for r in runs]
    lines += ["", f"Combined with: `{command}`", f"Machine: {runs[0]['machine']}; commit {runs[0]['git_commit']}.", ""]
    atomic_write_text(base.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines), flush=True)
    return 0


def main(argv=None) -> int:
    if argv is None and "--combine" in sys.argv[1:] or argv and "--combine" in argv:
        c = argparse.ArgumentParser(description="combine single-seed group_reduction results")
        c.add_argument("--combine", nargs="+", required=True, metavar="RESULT.json")
        c.add_argument("--tag", required=True)
        c.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
        a = c.parse_args(argv)
        command = "python benchmarks/group_reduction_val.py " + " ".join(shlex.quote(x) for x in (argv or sys.argv[1:]))
        return combine(a.combine, a.tag, a.out, command)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--profile")
    p.add_argument("--data")
    p.add_argument("--set", action="append", default=[], help="config override passed to every run")
    p.add_argument("--method", default="acsl")
    p.add_argument("--budget", default="params=0.5")
    p.add_argument("--reductions", default=",".join(REDUCTIONS))
    p.add_argument("--checkpoint", help="dense checkpoint (default: train one)")
    p.add_argument("--run-dir", default=str(REPO / "benchmarks" / ".runs" / "group_reduction"))
    p.add_argument("--tag", help="results name (default: the config's name)")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    command = "python benchmarks/group_reduction_val.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    from toolchain.config import load_config
    from toolchain.utils.io import atomic_write_text, write_json
    from toolchain.utils.provenance import git_commit, machine, versions

    from toolchain.errors import ToolchainError

    try:
        tag = args.tag or load_config(args.config, profile=args.profile).name
    except ToolchainError as err:
        raise SystemExit(f"group_reduction_val: error: {err}")
    run_dir = Path(args.run_dir) / tag
    common = [args.config] + (["--profile", args.profile] if args.profile else []) + \
        (["--data", args.data] if args.data else [])
    sets = [x for s in args.set + [f"out_dir={run_dir}"] for x in ("--set", s)]
    t0 = time.time()
    checkpoint = args.checkpoint
    dense = None
    if checkpoint is None:
        _acsl(["train", *common, *sets, "--out", str(run_dir / "dense")])
        dense = json.loads((run_dir / "dense" / "train_record.json").read_text())
        checkpoint = dense["checkpoint"]
    rows = []
    for reduction in args.reductions.split(","):
        out = run_dir / f"{args.method}_{args.budget.replace('=', '')}_{reduction}"
        _acsl(["prune", *common, *sets, "--set", f"prune.group_reduction={reduction}", "--checkpoint", checkpoint,
               "--method", args.method, "--budget", args.budget, "--out", str(out)])
        rec = json.loads((out / "prune_record.json").read_text())
        rows.append({"group_reduction": reduction, "val": rec["val"], "test": rec["test"], "metric": rec["metric"],
                     "fraction_removed": rec["fraction_removed"], "val_after_slim": rec["stages"]["slim"]["val"],
                     "groups": _group_losses(rec["stages"]["select"]), "wall_s": rec["wall_s"]})
        higher = rec["higher_is_better"]
    metric = rows[0]["metric"]
    best = (max if higher else min)(rows, key=lambda r: r["val"])
    result = {"command": command, "config": args.config, "profile": args.profile, "overrides": args.set,
              "method": args.method, "budget": args.budget, "dense": dense, "rows": rows,
              "chosen_on_val": best["group_reduction"], "metric": metric, "machine": machine(),
              "versions": versions(), "git_commit": git_commit(), "wall_s": round(time.time() - t0, 1)}
    base = Path(args.out) / f"group_reduction_{tag}"
    write_json(base.with_suffix(".json"), result)
    lines = [f"# prune.group_reduction on val: {tag}, {args.method} {args.budget}", "", f"Command: `{command}`", "",
             f"Machine: {result['machine']}. One dense model, one {args.method} sparsity run (shared), then selection "
             "with each reduction and the same recovery. Chosen on val: "
             f"**{best['group_reduction']}** ({metric}).", "",
             f"| group_reduction | val {metric} | test {metric} | val after slim (before recovery) | removed "
             f"({args.budget.split('=')[0]}) | multi-BN groups: channels removed | untouched multi-BN groups | "
             "single-BN groups: channels removed |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        g = r["groups"]
        test = r["test"] if r["test"] is not None else float("nan")
        slim_val = r["val_after_slim"] if r["val_after_slim"] is not None else float("nan")
        lines.append(f"| {r['group_reduction']} | {r['val']:.4f} | {test:.4f} | {slim_val:.4f} | "
                     f"{r['fraction_removed'][args.budget.split('=')[0]]:.3f} | "
                     f"{g['multi_bn']['removed']}/{g['multi_bn']['channels']} | "
                     f"{g['multi_bn']['groups_untouched']}/{g['multi_bn']['groups']} | "
                     f"{g['single_bn']['removed']}/{g['single_bn']['channels']} |")
    if dense:
        lines += ["", f"Dense: val {dense.get('val')}, test {dense.get('test')}."]
    atomic_write_text(base.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
