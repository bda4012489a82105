"""Cost of ACSL's affinity matrix: training-step time and peak memory of ACSL vs Network Slimming.

    python benchmarks/sparsity_overhead.py configs/camvid_segnet.yaml --profile quick --steps 40

Runs the same batches through `--steps` training steps with each regulariser attached (no regulariser,
Network Slimming, CAP, ACSL), interleaving the methods step by step so that background load hits them
alike, and reports the median and mean step time, the mean's ratio to Network Slimming, and the memory the
regulariser keeps (its C x C affinity matrices).
Writes benchmarks/results/sparsity_overhead_<config name>.json and .md.
"""
from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from toolchain.config import load_config  # noqa: E402
from toolchain.data import build_dataset  # noqa: E402
from toolchain.models import build_from_config  # noqa: E402
from toolchain.prune.groups import build_pruning_graph  # noqa: E402
from toolchain.prune.sparsity import make_regulariser  # noqa: E402
from toolchain.train.losses import task_loss  # noqa: E402
from toolchain.utils.io import atomic_write_text, write_json  # noqa: E402
from toolchain.utils.provenance import git_commit, machine  # noqa: E402

METHODS = ("none", "slimming", "cap", "acsl")


def make_setup(cfg, method: str):
    torch.manual_seed(0)
    model = build_from_config(cfg)
    reg = None
    if method != "none":
        reg = make_regulariser(method, build_pruning_graph(model, cfg.data.input_size), cfg.prune.sparsity).attach()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    return model.train(), reg, opt


def step(model, reg, opt, loss_fn, images, targets, index: int) -> float:
    start = time.perf_counter()
    loss = loss_fn(model(images), targets)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if reg is not None:
        reg.after_backward(model, index)
    opt.step()
    return time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("config")
    p.add_argument("--profile")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config, profile=args.profile)
    data = build_dataset(cfg, "train", train=True)
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.train.batch_size, shuffle=False, drop_last=True)
    batches = [b for _, b in zip(range(args.steps), loader)]
    loss_fn = task_loss(cfg)
    setups = {m: make_setup(cfg, m) for m in METHODS}
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for i, (images, targets) in enumerate(batches):  # interleaved: load changes hit every method alike
        for m in METHODS:
            times[m].append(step(*setups[m], loss_fn, images, targets, i))
    state = {m: sum(t.numel() * t.element_size() for t in getattr(setups[m][1], "matrices", {}).values())
             for m in METHODS}  # the C x C matrices an affinity regulariser keeps between refreshes
    warm = max(1, args.steps // 10)
    median = {m: statistics.median(t[warm:]) * 1e3 for m, t in times.items()}
    mean = {m: statistics.fmean(t[warm:]) * 1e3 for m, t in times.items()}  # includes the refresh steps
    result = {
        "config": Path(args.config).name, "profile": args.profile, "model": cfg.model.name, "width": cfg.model.width,
        "input_size": list(cfg.data.input_size), "batch_size": cfg.train.batch_size, "steps": args.steps,
        "refresh_every": cfg.prune.sparsity.refresh_every, "max_positions": cfg.prune.sparsity.max_positions,
        "median_step_ms": median, "mean_step_ms": mean,
        "mean_ratio_to_slimming": {m: mean[m] / mean["slimming"] for m in METHODS},
        "regulariser_state_bytes": state, "threads": args.threads, "machine": machine(), "git_commit": git_commit(),
        "command": "python benchmarks/sparsity_overhead.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
    }
    out = REPO / "benchmarks" / "results" / f"sparsity_overhead_{cfg.name}"
    write_json(out.with_suffix(".json"), result)
    rows = [f"| {m} | {median[m]:.1f} | {mean[m]:.1f} | {result['mean_ratio_to_slimming'][m]:.3f} | "
            f"{state[m] / 2**20:.3f} |" for m in METHODS]
    atomic_write_text(out.with_suffix(".md"), "\n".join([
        f"# Sparsity-learning step cost: {cfg.model.name} width {cfg.model.width}, "
        f"{cfg.data.input_size[0]}x{cfg.data.input_size[1]}, batch {cfg.train.batch_size}", "",
        f"Command: `{result['command']}`  ", f"Machine: {result['machine']}, {args.threads} thread(s); "
        f"commit {result['git_commit']}", "",
        "| regulariser | median step (ms) | mean step (ms) | mean x Network Slimming | affinity state (MiB) |",
        "| --- | --- | --- | --- | --- |", *rows, "",
        f"Steps {warm + 1}-{args.steps}, methods interleaved step by step on the same batches; the mean includes "
        "the affinity refresh steps (the per-epoch cost), the median the typical step. The "
        f"affinity matrices are refreshed every {cfg.prune.sparsity.refresh_every} steps from at most "
        f"{cfg.prune.sparsity.max_positions} sampled positions. Tensor memory of the affinity matrices is C x C per "
        "layer, kept between refreshes (the affinity state column).", ""]))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    from toolchain.errors import script_main

    sys.exit(script_main(main, "sparsity_overhead"))
