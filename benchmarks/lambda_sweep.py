"""Sparsity-strength sweep: does sparsity learning move the BN scales at all in this schedule, and which
lambda does the val split choose, per method?

    python benchmarks/lambda_sweep.py configs/shb_csrnet.yaml --profile quick \
        --checkpoint benchmarks/.runs/shb_csrnet_quick/dense_best.pt --budget params=0.9 \
        --methods acsl,slimming --lams 1e-3,1e-2,1e-1 [--results benchmarks/results] [--dataset shanghaitech_b]

For every (method, lambda) it runs the whole `acsl prune` flow (sparsity -> select -> slim -> recover) with
prune.sparsity.lam = lambda, in its own run folder (`<out_dir>/<name>/lam_sweep/<method>_lam<lambda>_<budget tag>/`;
the sparsity phase is cached across budgets), and records how far the gammas moved (median |gamma| before/after, fraction below 1e-2 of the largest), the val
metric after sparsity learning, right after slimming (before recovery) and after recovery, and the test
metric. The lambda per method is chosen on val after recovery; test is reported, never used to choose.
A choice at the edge of the grid (the smallest or largest lambda that ran) says only that the best may lie beyond
it: with `--extend-edges K` the sweep then tries the next value out (one more step of the grid's own ratio at
that end, or halfway, geometrically, to a value out there that failed) and chooses again, up to K extra values per
method; the table names every choice still at an edge.
Each run is written to `<results>/lambda_sweep_<dataset>_<model>.json` as it completes (resumable), with a
Markdown table and a plot next to it.
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
from toolchain.prune.select import parse_budget  # noqa: E402
from toolchain.prune.sparsity import SPARSITY_METHODS  # noqa: E402
from toolchain.utils.io import atomic_write_text, read_json, write_json  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("--profile")
    p.add_argument("--checkpoint", required=True, help="dense checkpoint")
    p.add_argument("--budget", default="params=0.9")
    p.add_argument("--methods", default="acsl,slimming")
    p.add_argument("--lams", default="1e-3,1e-2,1e-1", help="comma-separated lambda values")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--dataset", help="dataset label of the result file (default: first word of the config name)")
    p.add_argument("--merge", metavar="OTHER.json", action="append", default=[],
                   help="add the runs of another sweep of the same dense model and budget (e.g. one method per parallel "
                        "process, each with its own --results), then redraw; runs already here are kept (repeatable)")
    p.add_argument("--extend-edges", type=int, default=0, metavar="K",
                   help="where a method's chosen lambda is the smallest or largest tried, try the next value beyond "
                        "it (the grid's ratio at that end), up to K extra values per method (default 0)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p.parse_args(argv)


def gamma_stats(checkpoint: Path) -> dict:
    """Median |gamma| and the fraction of |gamma| below 1e-2 x max over every BN layer of a checkpoint."""
    import torch

    from toolchain.train.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint)["model_state"]
    gammas = torch.cat([v.detach().abs().flatten().float() for k, v in state.items()
                        if k.endswith(".weight") and k[:-len("weight")] + "running_mean" in state])
    return {"median_abs_gamma": float(gammas.median()),
            "frac_below_1pct_of_max": float((gammas < 1e-2 * gammas.max()).float().mean()), "n": gammas.numel()}


def one_run(cfg, checkpoint: Path, method: str, lam: float, budget: str) -> dict:
    from toolchain.prune.pipeline import run_prune

    cfg_l = config_from_dict(deep_merge(config_to_dict(cfg), {"prune": {"sparsity": {"lam": lam}}}))
    tag = parse_budget(budget).tag()  # one folder per budget: sweeps at several budgets share only the sparsity cache
    out = cfg.run_dir() / "lam_sweep" / f"{method}_lam{lam:g}_{tag}"
    record = run_prune(cfg_l, checkpoint, method=method, budget=budget, out=out)
    sparsity = record["stages"]["sparsity"] or {}
    return {"params": record["after"]["params"], "macs": record["after"]["macs"],
            "val_after_sparsity": sparsity.get("val_after"), "val_after_slim": record["stages"]["slim"]["val"],
            "metric_val": record["val"], "metric": record["test"], "strengths": sparsity.get("strengths"),
            "gammas": gamma_stats(Path(sparsity["checkpoint"])) if sparsity.get("checkpoint") else None,
            "sparsity_epochs": record["sparsity_epochs"], "recover_epochs": record["recover_epochs"],
            "sparsity_reused": bool(sparsity.get("reused")), "run_dir": str(out)}


def merge_sweeps(result: dict, other: dict, other_path: str) -> int:
    """Add `other`'s (method, lambda) runs that `result` lacks; both must sweep the same dense model, budget and
    profile. A success replaces a failure of the same run; a failure joins only where `result` has no run of that
    lambda (the table shows which lambdas diverged). Returns how many runs were added."""
    same = ("model", "profile", "budget")
    if any(other.get(k) != result.get(k) for k in same) or \
            (other.get("dense") or {}).get("checkpoint") != (result.get("dense") or {}).get("checkpoint"):
        raise ToolchainError(f"{other_path} is another sweep (model, profile, budget or dense checkpoint differ); "
                             "only sweeps of the same dense model and budget can be merged")
    have = {(r["method"], r["lam"]) for r in result["runs"] if not r.get("error")}
    known = {(r["method"], r["lam"]) for r in result["runs"]}
    added = [r for r in other["runs"] if not r.get("error") and (r["method"], r["lam"]) not in have]
    replaced = {(a["method"], a["lam"]) for a in added}  # failed runs here that the other sweep completed
    failed = [r for r in other["runs"] if r.get("error") and (r["method"], r["lam"]) not in known]
    result["runs"] = [r for r in result["runs"] if not (r.get("error") and (r["method"], r["lam"]) in replaced)]
    result["runs"] += added + failed
    commands = result.setdefault("merged_commands", [])
    if other.get("command") and other["command"] not in commands:
        commands.append(other["command"])
    return len(added) + len(failed)


def chosen(result: dict) -> dict:
    """Per method, the lambda with the best val after recovery."""
    better = max if result["higher_is_better"] else min
    out = {}
    for method in sorted({r["method"] for r in result["runs"] if not r.get("error")}):
        runs = [r for r in result["runs"] if r["method"] == method and not r.get("error")]
        out[method] = better(runs, key=lambda r: r["metric_val"])["lam"]
    return out


def _tried(result: dict, method: str) -> tuple[list[float], set[float]]:
    """The method's lambdas that ran (sorted) and those that failed."""
    runs = [r for r in result["runs"] if r["method"] == method]
    return sorted({r["lam"] for r in runs if not r.get("error")}), {r["lam"] for r in runs if r.get("error")}


def _nearest_failure(failed: set[float], lam: float, edge: str) -> float | None:
    """The failed lambda closest to `lam` on the `edge` side of it, or None."""
    beyond = [f for f in failed if (f < lam if edge == "smallest" else f > lam)]
    return (max(beyond) if edge == "smallest" else min(beyond)) if beyond else None


def edge_of(result: dict, method: str, picks: dict | None = None) -> str | None:
    """'smallest' / 'largest' where the method's chosen lambda (`picks`, default chosen(result)) is at that end of
    the lambdas that ran (at least two), else None."""
    ok, _ = _tried(result, method)
    lam = (picks if picks is not None else chosen(result)).get(method)
    if len(ok) < 2 or lam is None:
        return None
    return "smallest" if lam == ok[0] else "largest" if lam == ok[-1] else None


def next_beyond(result: dict, method: str) -> float | None:
    """The next lambda to try past a chosen one at an edge: one more step of the grid's ratio at that end, or, where
    a value out there already failed (the sparsity phase diverged) and that step would reach it, the geometric
    midpoint between the choice and the nearest failure (3 significant digits). None where the choice is inside
    the grid or there is nothing new."""
    edge = edge_of(result, method)
    if edge is None:
        return None
    ok, failed = _tried(result, method)
    lam, inner = (ok[0], ok[1]) if edge == "smallest" else (ok[-1], ok[-2])
    nxt = lam * lam / inner
    wall = _nearest_failure(failed, lam, edge)
    if wall is not None and (nxt <= wall if edge == "smallest" else nxt >= wall):
        nxt = (lam * wall) ** 0.5
    nxt = float(f"{nxt:.3g}")
    return None if nxt in failed or nxt in ok else nxt


def edge_note(result: dict) -> str:
    """One sentence: every chosen lambda inside the values that ran, or which are at an edge (and the nearest value
    out there that failed, where one did)."""
    picks = chosen(result)
    edges = {m: e for m in picks if (e := edge_of(result, m, picks))}
    if not edges:
        return "Every chosen lambda lies inside the values that ran."

    def words(m, e):
        wall = _nearest_failure(_tried(result, m)[1], picks[m], e)
        return f"{m} {picks[m]:g} ({e} that ran" + (f"; {wall:g} failed)" if wall is not None else ")")
    return ("At the grid's edge (the best may lie beyond; `--extend-edges K` tries further): "
            + ", ".join(words(m, e) for m, e in sorted(edges.items())) + ".")


def write_table(result: dict, path: Path) -> None:
    name = result["metric"]
    g0 = result["dense"]["gammas"]
    lines = [f"# Sparsity-strength sweep: {result['dataset']} / {result['model']} ({result['profile']} profile), "
             f"budget {result['budget']}", "",
             f"Dense: val {name} {result['dense']['metric_val']:.3f}, test {result['dense']['metric']:.3f}; "
             f"median |gamma| {g0['median_abs_gamma']:.4f}, {g0['frac_below_1pct_of_max']:.1%} of gammas below 1% "
             "of the largest.", "",
             f"lambda chosen on val after recovery: {', '.join(f'{m} {v:g}' for m, v in chosen(result).items())}. "
             + edge_note(result), "",
             "| method | lambda | median abs gamma | gammas < 1% of max | val after sparsity | val after slim "
             "(no recovery) | val after recovery | test | wall s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(result["runs"], key=lambda r: (r["method"], r["lam"])):
        if r.get("error"):
            lines.append(f"| {r['method']} | {r['lam']:g} | failed: {r['error'][:80]} | | | | | | |")
            continue
        g = r["gammas"] or {}
        lines.append(f"| {r['method']} | {r['lam']:g} | {g.get('median_abs_gamma', float('nan')):.4f} | "
                     f"{g.get('frac_below_1pct_of_max', float('nan')):.1%} | {r['val_after_sparsity']:.3f} | "
                     f"{r['val_after_slim']:.3f} | {r['metric_val']:.3f} | {r['metric']:.3f} | {r['wall_s']:.0f} |")
    lines += ["", f"Command: `{result['command']}`",
              f"Machine: {result['machine']}; commit {result['git_commit']}.", ""]
    atomic_write_text(path, "\n".join(lines))


def write_plot(result: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.report.plots import save_png

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, method in enumerate(sorted({r["method"] for r in result["runs"] if not r.get("error")})):
        runs = sorted((r for r in result["runs"] if r["method"] == method and not r.get("error")),
                      key=lambda r: r["lam"])
        lams, color = [r["lam"] for r in runs], colors[i % len(colors)]
        axes[0].plot(lams, [r["val_after_slim"] for r in runs], marker="o", color=color,
                     label=f"{method}: after slim")
        axes[0].plot(lams, [r["metric_val"] for r in runs], marker="s", linestyle="--", color=color,
                     label=f"{method}: after recovery")
        axes[1].plot(lams, [(r["gammas"] or {}).get("median_abs_gamma", float("nan")) for r in runs],
                     marker="o", color=color, label=method)
    axes[1].axhline(result["dense"]["gammas"]["median_abs_gamma"], color="black", linestyle=":", label="dense")
    axes[0].axhline(result["dense"]["metric_val"], color="black", linestyle=":", label="dense")
    axes[0].set_ylabel(f"val {result['metric']}")
    axes[0].set_yscale("log")
    axes[1].set_ylabel("median |gamma| after sparsity learning")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("lambda")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['dataset']} / {result['model']}, {result['budget']}")
    save_png(fig, path)


def main(argv=None) -> int:
    from toolchain.prune.pipeline import _val
    from toolchain.train.checkpoint import load_model
    from toolchain.train.metrics import primary_metric
    from toolchain.utils.provenance import git_commit, machine

    args = parse_args(argv)
    try:
        cfg = load_config(args.config, profile=args.profile, overrides=parse_dotted_overrides(args.overrides))
        parse_budget(args.budget)
        try:
            lams = [float(v) for v in args.lams.split(",") if v.strip()]
        except ValueError:
            raise ToolchainError(f"--lams must be comma-separated numbers, got '{args.lams}'") from None
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in SPARSITY_METHODS]
        if bad:
            raise ToolchainError(f"method '{bad[0]}' has no sparsity learning to sweep "
                                 f"(valid: {', '.join(SPARSITY_METHODS)})")
        checkpoint = Path(args.checkpoint)
        if not checkpoint.is_file():
            raise ToolchainError(f"dense checkpoint {checkpoint} not found; train one with benchmarks/dense.py")
        dataset = args.dataset or cfg.name.split("_")[0]
        stem = f"lambda_sweep_{dataset}_{cfg.model.name}"
        json_path = Path(args.results) / f"{stem}.json"
        result = read_json(json_path) if json_path.is_file() else {}
        if result and (result.get("budget") != args.budget or result.get("profile") != cfg.profile):
            raise ToolchainError(f"{json_path} holds another sweep (budget {result.get('budget')}); "
                                 "move it away or pass --results DIR")
        if not result:
            metric, higher = primary_metric(cfg.task)
            dense, _ = load_model(checkpoint, cfg)
            result = {"dataset": dataset, "model": cfg.model.name, "profile": cfg.profile, "budget": args.budget,
                      "metric": metric, "higher_is_better": higher,
                      "dense": {"metric": _val(dense, cfg, "test"), "metric_val": _val(dense, cfg, "val"),
                                "gammas": gamma_stats(checkpoint), "checkpoint": str(checkpoint)},
                      "runs": []}
        command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/lambda_sweep.py"]
                           + list(sys.argv[1:] if argv is None else argv))
        if args.merge:  # keep this sweep's own command; the merged ones are listed in merged_commands
            result.setdefault("command", command)
            result.setdefault("machine", machine())
            result.setdefault("git_commit", git_commit())
            for other_path in args.merge:
                if not Path(other_path).is_file():
                    raise ToolchainError(f"--merge {other_path}: no such file")
                added = merge_sweeps(result, read_json(Path(other_path)), other_path)
                print(f"[lambda_sweep] merged {added} runs from {other_path}")
            lams, methods = [], []  # merging only: run nothing new
        else:
            result.update({"machine": machine(), "git_commit": git_commit(), "command": command})
        def run(method, lam):
            result["runs"] = [r for r in result["runs"] if not (r["method"] == method and r["lam"] == lam)]
            print(f"[lambda_sweep] {method} lam={lam:g}", flush=True)
            t0 = time.time()
            try:
                entry = one_run(cfg, checkpoint, method, lam, args.budget)
            except ToolchainError as err:
                entry = {"error": str(err)}
                print(f"[lambda_sweep] {method} lam={lam:g} failed: {err}", file=sys.stderr)
            entry.update({"method": method, "lam": lam, "wall_s": round(time.time() - t0, 2)})
            result["runs"].append(entry)
            write_json(json_path, result)

        for lam in lams:
            for method in methods:
                if not any(r["method"] == method and r["lam"] == lam and not r.get("error") for r in result["runs"]):
                    run(method, lam)
        for method in methods:
            for _ in range(args.extend_edges):
                nxt = next_beyond(result, method)
                if nxt is None:
                    break
                print(f"[lambda_sweep] {method}: chosen lambda {chosen(result)[method]:g} is the "
                      f"{edge_of(result, method)} tried; trying {nxt:g}", flush=True)
                run(method, nxt)
        result["chosen_on_val"] = chosen(result)
        result["chosen_at_edge"] = {m: e for m in result["chosen_on_val"]
                                    if (e := edge_of(result, m, result["chosen_on_val"]))}
        write_json(json_path, result)
        write_table(result, json_path.with_suffix(".md"))
        write_plot(result, json_path.with_suffix(".png"))
        print(f"[lambda_sweep] results: {json_path} (+ .md, .png); chosen on val: {result['chosen_on_val']}")
        if result["chosen_at_edge"]:
            print(f"[lambda_sweep] {edge_note(result)}")
        return 0
    except ToolchainError as err:
        print(f"lambda_sweep: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
