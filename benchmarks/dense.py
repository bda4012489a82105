"""Dense reference baselines: train a config's model and commit its numbers and curve.

    python benchmarks/dense.py configs/camvid_segnet.yaml --profile quick
    python benchmarks/dense.py configs/shb_csrnet.yaml --profile quick --set train.epochs=60 --label plateau
    python benchmarks/dense.py --redraw   # recompute the plateau checks, redraw curves and table

Trains with `acsl train` (resumable: rerun the same command after an interruption), then writes
benchmarks/results/dense_<dataset>_<model>[_<label>].json, a training-curve PNG beside it, and regenerates
the table in benchmarks/results/README.md from every dense_*.json there.

Every result carries the plateau check of the comparison protocol (issue 12): the val gain of the last
PLATEAU_FRACTION of the epochs, i.e. best val over the whole run minus best val over the epochs before that
window (in the metric's own unit, positive = better). The run is at a plateau when that gain is below
PLATEAU_TOL. The curve PNG shades the window and states the verdict.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.cli import main as acsl  # noqa: E402
from toolchain.config import load_config, parse_dotted_overrides  # noqa: E402
from toolchain.train.metrics import primary_metric  # noqa: E402
from toolchain.train.plateau import PLATEAU_FRACTION, PLATEAU_TOL, plateau_check  # noqa: E402
from toolchain.utils.io import read_json, sha256_file, write_json  # noqa: E402
from toolchain.utils.provenance import git_commit, machine  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def curve_title(result: dict) -> str:
    return f"{result['dataset']} {result['model']} (width {result['width']}, {result['epochs']} epochs)"


def dataset_name(cfg) -> str:
    root = cfg.data_root()
    return root.name if root else "synthetic"


def plot_curve(history: list, metric: str, title: str, path: Path, plateau: dict | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.report.plots import save_png

    epochs = [h["epoch"] for h in history if "val" in h]
    values = [h["val"][metric] for h in history if "val" in h]
    losses = [h["loss"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(epochs, values, marker="o", ms=3, label=f"val {metric}")
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"val {metric}")
    ax2 = ax.twinx()
    ax2.plot([h["epoch"] for h in history], losses, color="tab:gray", alpha=0.6, label="train loss")
    ax2.set_ylabel("train loss")
    if plateau:
        ax.axvspan(plateau["window_start_epoch"] - 0.5, plateau["epochs"] + 0.5, color="tab:orange", alpha=0.12,
                   label=f"last {PLATEAU_FRACTION:.0%}")
        verdict = "plateau" if plateau["plateau"] else "not at a plateau"
        title += f"\nlast {PLATEAU_FRACTION:.0%} gained {plateau['gain']:.2f} (< {plateau['tol']}: {verdict})"
    fig.suptitle(title, fontsize=9)
    handles, labels = ax.get_legend_handles_labels()
    handles2, labels2 = ax2.get_legend_handles_labels()
    ax.legend(handles + handles2, labels + labels2, loc="lower left", bbox_to_anchor=(0, 1.0), ncol=3, fontsize=8,
              frameon=False)
    ax.grid(alpha=0.3)
    save_png(fig, path, dpi=110)


def tail_mean(result: dict) -> float:
    """Mean val metric over the last PLATEAU_FRACTION of the epochs: less noisy than the best epoch."""
    values = [h["val"][result["metric"]] for h in result["history"] if h.get("val")]
    n = max(1, round(PLATEAU_FRACTION * len(values)))
    return sum(values[-n:]) / n


def schedule_rows(results: list[dict]) -> list[str]:
    """What a longer schedule gained over the next shorter run of the same dataset, model and width.

    Under an annealing schedule (cosine, poly) the last epochs run at a small learning rate and usually still gain:
    the last-20% rule then measures the annealing, not whether the model needed more epochs. Comparing two schedule
    lengths answers that. Gains are in the metric's good direction (positive = the longer run is better)."""
    groups: dict = {}
    for r in results:
        groups.setdefault((r["dataset"], r["model"], r["width"]), []).append(r)
    rows = []
    for (dataset, model, width), runs in sorted(groups.items()):
        lengths = sorted({r["epochs"] for r in runs})
        for short_epochs, long_epochs in zip(lengths, lengths[1:]):
            shorts = [r for r in runs if r["epochs"] == short_epochs]
            longs = [r for r in runs if r["epochs"] == long_epochs]
            named = len(shorts) > 1 or len(longs) > 1  # e.g. a retrain on another machine: say which runs compare

            def epochs(r):
                return f"{r['epochs']} ({r.get('label') or 'no label'})" if named else str(r["epochs"])
            for short in shorts:
                for long in longs:
                    sign = 1.0 if long["higher_is_better"] else -1.0
                    gains = [sign * (long["val"] - short["val"]), sign * (tail_mean(long) - tail_mean(short)),
                             sign * (long["test"] - short["test"])]
                    rows.append(f"| {dataset} | {model} (width {width}) | {long['metric']} | {epochs(short)} -> "
                                f"{epochs(long)} | " + " | ".join(f"{g:+.2f}" for g in gains) + " |")
    return rows


def write_table() -> None:
    rows = []
    results = []
    for f in sorted(RESULTS.glob("dense_*.json")):
        r = read_json(f)
        results.append(dict(r, label=f.stem.removeprefix(f"dense_{r['dataset']}_{r['model']}").lstrip("_")))
        p = r.get("plateau") or plateau_check(r["history"], r["metric"], r["higher_is_better"])
        std = "n/a" if p["window_val_std"] is None else f"{p['window_val_std']:.2f}"  # a 1-epoch window has none
        verdict = f"{p['gain']:+.2f} ({'yes' if p['plateau'] else 'no'}; val std {std})"
        rows.append(f"| {r['dataset']} | {r['model']} (width {r['width']}) | {r['input_size'][0]}x{r['input_size'][1]} | "
                    f"{r['params'] / 1e6:.3f} | {r['macs'] / 1e9:.3f} | {r['metric']} | {r['val']:.2f} | {r['test']:.2f} | "
                    f"{r['epochs']} | {verdict} | {r['train_images_per_s']:.1f} | {r['wall_s'] / 60:.1f} | "
                    f"[curve]({f.stem}.png) |")
    header = ["# Dense reference baselines", "",
              "Trained from scratch with the quick profile (sized for 2 CPU cores). Each row's JSON holds the exact",
              "command that reproduces it, the machine and the git commit. Metrics: mIoU / top-1 in percent, MAE in heads.",
              f"Plateau: the best val gain of the last {PLATEAU_FRACTION:.0%} of the epochs (positive = better, in the metric's",
              f"unit), and whether it is below {PLATEAU_TOL} (the comparison protocol's rule, docs/SPARSITY.md); val std: the",
              "epoch-to-epoch spread of the val metric inside that window, for scale.",
              "", "| dataset | model | input | params (M) | GMACs | metric | val | test | epochs | last-20% gain (plateau) | "
              "train img/s | wall (min) | curve |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    longer = schedule_rows(results)
    if longer:
        rows += ["", "A longer schedule against the next shorter run of the same model (positive = the longer run is "
                 "better; best val is the checkpoint kept, last-20% mean val the less noisy tail; under an annealing "
                 "schedule the last 20% of a run gains from the small learning rate, so this is the check of whether "
                 "more epochs help):", "",
                 "| dataset | model | metric | epochs | best val gain | last-20% mean val gain | test gain |",
                 "| --- | --- | --- | --- | --- | --- | --- |", *longer]
    text = "\n".join(header + rows) + "\n"
    readme = RESULTS / "README.md"
    other = ""
    if readme.is_file():
        old = readme.read_text()
        marker = "\n<!-- more results below -->"
        if marker in old:
            other = old[old.index(marker):]
    from toolchain.utils.io import atomic_write_text

    atomic_write_text(readme, text + (other or "\n<!-- more results below -->\n"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", help="experiment YAML (not needed with --redraw)")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--data")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override passed to acsl train, e.g. train.epochs=60 (repeatable)")
    parser.add_argument("--label", help="suffix of the result name and run folder, e.g. plateau")
    parser.add_argument("--redraw", action="store_true",
                        help="train nothing: recompute the plateau check of every dense_*.json, redraw curves and table")
    args = parser.parse_args(argv)
    if args.redraw:
        for f in sorted(RESULTS.glob("dense_*.json")):
            r = read_json(f)
            r["plateau"] = plateau_check(r["history"], r["metric"], r["higher_is_better"])
            write_json(f, r)
            plot_curve(r["history"], r["metric"], curve_title(r), f.with_suffix(".png"), r["plateau"])
        write_table()
        return 0
    if not args.config:
        parser.error("give a config (e.g. configs/camvid_segnet.yaml), or --redraw")
    cfg = load_config(args.config, profile=args.profile, overrides=parse_dotted_overrides(args.overrides))
    suffix = f"_{args.label}" if args.label else ""
    run_dir = REPO / "benchmarks" / ".runs" / f"{cfg.name}_{args.profile}{suffix}"
    train_args = ["train", args.config, "--profile", args.profile, "--out", str(run_dir)]
    for item in args.overrides:
        train_args += ["--set", item]
    if args.data:
        train_args += ["--data", args.data]
    if (run_dir / "dense_last.pt").is_file():
        train_args.append("--resume")
    code = acsl(train_args)
    if code:
        return code
    rec = read_json(run_dir / "train_record.json")
    hist = read_json(run_dir / "dense_history.json")
    name = f"dense_{dataset_name(cfg)}_{cfg.model.name}{suffix}"
    higher = primary_metric(cfg.task)[1]
    command = "python benchmarks/dense.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    result = {
        "dataset": dataset_name(cfg), "model": cfg.model.name, "width": cfg.model.width, "profile": args.profile,
        "input_size": rec["input_size"], "params": rec["params"], "macs": rec["macs"], "metric": rec["metric"],
        "higher_is_better": higher, "val": rec["val"], "test": rec["test"][rec["metric"]],
        "test_all": rec["test"], "best_epoch": rec["best_epoch"], "epochs": rec["epochs"],
        # summed over every epoch of the history, so a run resumed after an interruption reports its whole cost
        "train_images_per_s": round(sum(h["images_per_s"] for h in hist["history"]) / len(hist["history"]), 2),
        "wall_s": round(sum(h["epoch_s"] for h in hist["history"]), 1),
        "wall_s_note": "sum of the training epochs' wall time (evaluation excluded); 2 CPU cores shared with other jobs",
        "machine": machine(),
        "command": command, "git_commit": git_commit(), "checkpoint": str((run_dir / "dense_best.pt").relative_to(REPO)),
        "checkpoint_sha256": sha256_file(run_dir / "dense_best.pt"),  # a retrain reproduces this one or it does not
        "plateau": plateau_check(hist["history"], rec["metric"], higher), "history": hist["history"],
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_json(RESULTS / f"{name}.json", result)
    plot_curve(hist["history"], rec["metric"], curve_title(result), RESULTS / f"{name}.png", result["plateau"])
    write_table()
    print(json.dumps({k: result[k] for k in ("dataset", "model", "metric", "val", "test", "wall_s", "plateau")}))
    return 0


if __name__ == "__main__":
    from toolchain.errors import script_main

    sys.exit(script_main(main, "dense"))
