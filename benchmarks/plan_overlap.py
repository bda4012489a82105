"""Do the methods choose different channels? Overlap of the kept channels between methods and between seeds.

    python benchmarks/plan_overlap.py benchmarks/results/compression_cifar10_subset_protocol80_resnet56.json

Reads the channel plan (`plan.json`) of every run a comparison's JSON names (its run folders must still be on this
machine) and, per budget, measures the Jaccard overlap of the kept channels |A & B| / |A | B|, summed over the
channel groups any plan prunes (a coupled group counted once, by its root layer):
- between two methods on the same seed (mean over the seeds both have), and
- between two seeds of the same method (the diagonal: how much the seed alone changes the plan),
each next to its chance level (the overlap two random selections of the same per-group widths would have) and its
ceiling (the most the two plans' per-group widths allow).
Where two methods overlap about as much as one method does with itself on another seed, the method does not
decide which channels stay. Writes benchmarks/results/plan_overlap_<dataset>_<model>.json, .md and .png.
"""
from __future__ import annotations

import argparse
import itertools
import shlex
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.utils.io import atomic_write_text, read_json, write_json  # noqa: E402
from toolchain.utils.provenance import git_commit  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# Runs whose plan does not name the dense model's channels: the scratch references train ACSL's plan or uniform
# widths from scratch, and ModelOpt sorts each layer's channels by its own importance before keeping the first k.
NOT_COMPARED = ("scratch-plan", "scratch-uniform", "modelopt-fastnas")


class PlanMissing(Exception):
    pass


def kept_channels(plan: dict, widths: dict[str, int]) -> dict[str, set[int]]:
    """Kept output channels of the given layers in a channel plan (acsl-channel-plan/1); a layer the plan does not
    name keeps all its channels."""
    layers = plan["layers"]
    return {name: set(layers[name]["kept_out"]) if name in layers else set(range(n)) for name, n in widths.items()}


def group_roots(plans: list[dict]) -> list[str]:
    """The layers whose channels some plan removes, one per coupled group (the root a removal step names)."""
    return sorted({step["root"] for plan in plans for step in plan["steps"]})


def jaccard(a: dict[str, set[int]], b: dict[str, set[int]], roots: list[str]) -> float:
    inter = sum(len(a[r] & b[r]) for r in roots)
    union = sum(len(a[r] | b[r]) for r in roots)
    return inter / union if union else 1.0


def chance_jaccard(a: dict[str, set[int]], b: dict[str, set[int]], widths: dict[str, int], roots: list[str]) -> float:
    """The Jaccard overlap expected if each plan kept its number of channels per group at random: of n channels,
    k_a and k_b kept share k_a k_b / n on average (ratio of the summed expectations)."""
    inter = sum(len(a[r]) * len(b[r]) / widths[r] for r in roots)
    union = sum(len(a[r]) + len(b[r]) for r in roots) - inter
    return inter / union if union else 1.0


def width_ceiling(a: dict[str, set[int]], b: dict[str, set[int]], roots: list[str]) -> float:
    """The highest overlap the two plans' widths allow (the narrower selection inside the wider in every group):
    below it, the plans keep different channels; the gap between it and 1, different widths."""
    inter = sum(min(len(a[r]), len(b[r])) for r in roots)
    union = sum(max(len(a[r]), len(b[r])) for r in roots)
    return inter / union if union else 1.0


def budget_name(budget: dict) -> str:
    return f"{budget['kind']}={budget['value']:g}"


def load_plans(result: dict, repo: Path = REPO) -> dict[str, dict[tuple[str, int], dict]]:
    """{budget: {(method, seed): plan}} for every finished run that chose its own channels."""
    out: dict[str, dict[tuple[str, int], dict]] = {}
    for run in result["runs"]:
        if run.get("error") or run["method"] in NOT_COMPARED:
            continue
        path = repo / run["run_dir"] / "plan.json"
        if not path.is_file():
            raise PlanMissing(f"{path.relative_to(repo) if path.is_relative_to(repo) else path} is not on this "
                              "machine: run the comparison here first (benchmarks/protocol.py), then measure its plans")
        out.setdefault(budget_name(run["budget"]), {})[(run["method"], int(run.get("seed", 0)))] = read_json(path)
    return out


def overlap(plans: dict[tuple[str, int], dict]) -> dict:
    """Mean Jaccard overlap (and its chance level) for every pair of methods, same seed, and for every method
    with itself across seeds."""
    roots = group_roots(list(plans.values()))
    widths = {r: plan["layers"][r]["out"] for plan in plans.values() for r in roots if r in plan["layers"]}
    kept = {key: kept_channels(plan, widths) for key, plan in plans.items()}
    methods = sorted({m for m, _ in kept})
    pairs = {}
    for m1, m2 in itertools.combinations_with_replacement(methods, 2):
        if m1 == m2:  # the same method, two seeds
            seeds = sorted(s for m, s in kept if m == m1)
            couples = [((m1, s1), (m1, s2)) for s1, s2 in itertools.combinations(seeds, 2)]
        else:  # two methods, the same seed
            couples = [((m1, s), (m2, s)) for m, s in sorted(kept) if m == m1 and (m2, s) in kept]
        if not couples:
            continue
        obs = [jaccard(kept[a], kept[b], roots) for a, b in couples]
        base = [chance_jaccard(kept[a], kept[b], widths, roots) for a, b in couples]
        top = [width_ceiling(kept[a], kept[b], roots) for a, b in couples]
        pairs[f"{m1}|{m2}"] = {"jaccard": round(statistics.fmean(obs), 4), "chance": round(statistics.fmean(base), 4),
                               "ceiling": round(statistics.fmean(top), 4), "n": len(couples),
                               "min": round(min(obs), 4), "max": round(max(obs), 4)}
    return {"methods": methods, "groups": len(roots), "channels": sum(widths.values()), "pairs": pairs}


def table(budget: str, stats: dict) -> list[str]:
    methods = stats["methods"]
    lines = [f"**{budget}** ({stats['groups']} channel groups, {stats['channels']} channels): "
             "observed (chance / ceiling)", "",
             "| | " + " | ".join(methods) + " |", "| --- |" + " --- |" * len(methods)]
    for m1 in methods:
        cells = []
        for m2 in methods:
            st = stats["pairs"].get("|".join(sorted((m1, m2))))
            cells.append("-" if st is None else f"{st['jaccard']:.2f} ({st['chance']:.2f} / {st['ceiling']:.2f})")
        lines.append(f"| {m1} | " + " | ".join(cells) + " |")
    return lines + [""]


def write_plot(budgets: dict[str, dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.report.plots import save_png

    fig, axes = plt.subplots(1, len(budgets), figsize=(4.2 * len(budgets), 4.0), squeeze=False)
    for ax, (budget, stats) in zip(axes[0], budgets.items()):
        methods = stats["methods"]
        grid = [[(stats["pairs"].get("|".join(sorted((a, b)))) or {}).get("jaccard", float("nan")) for b in methods]
                for a in methods]
        ax.imshow(grid, vmin=0.4, vmax=1.0, cmap="viridis")
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.75 else "k", fontsize=8)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(methods)), methods, fontsize=8)
        ax.set_title(f"{budget} removed", fontsize=9)
    fig.suptitle("Kept-channel overlap (Jaccard): off-diagonal two methods, same seed; diagonal two seeds", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("comparison", help="a compression_*.json whose run folders are on this machine")
    ap.add_argument("--results", default=str(RESULTS), help="folder for the JSON, table and plot")
    args = ap.parse_args(argv)
    src = Path(args.comparison)
    if not src.is_file():
        ap.error(f"{src} is not a file: give a comparison's JSON, e.g. "
                 "benchmarks/results/compression_cifar10_subset_protocol80_resnet56.json")
    result = read_json(src)
    try:
        by_budget = load_plans(result)
    except PlanMissing as err:
        print(f"plan_overlap: {err}", file=sys.stderr)
        return 2
    budgets = {b: overlap(p) for b, p in sorted(by_budget.items())}
    name = f"plan_overlap_{result['dataset']}_{result['model']}"
    command = "python benchmarks/plan_overlap.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    out = {"comparison": str(src), "dataset": result["dataset"], "model": result["model"],
           "dense_checkpoint_sha256": (result.get("dense") or {}).get("checkpoint_sha256"),
           "budgets": budgets, "command": command, "git_commit": git_commit()}
    folder = Path(args.results)
    write_json(folder / f"{name}.json", out)
    lines = [f"# Which channels the methods keep: {result['dataset']} {result['model']}", "",
             f"`{command}`", "",
             "Jaccard overlap of the kept channels, summed over the channel groups some plan prunes. Off the diagonal: "
             "two methods on the same seed (mean over seeds); on the diagonal: one method on two seeds (mean over "
             "seed pairs). In parentheses: chance, the overlap of two random selections of the same per-group widths; "
             "ceiling, the most the two plans' widths allow (below it they keep different channels, above it 1 - "
             "ceiling is their difference in widths).", ""]
    for budget, stats in budgets.items():
        lines += table(budget, stats)
    atomic_write_text(folder / f"{name}.md", "\n".join(lines))
    write_plot(budgets, folder / f"{name}.png")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
