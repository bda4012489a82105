"""Count unpooling-mask flips between the masked dense SegNet and its slim copy, float32 vs float64.

A flip = a (kept channel, position) where the argmax-unpooling mask differs between the two models.
Random 50% channel plans on a trained checkpoint; inputs = real val images of the config.
usage: python benchmarks/surgery_precision.py CONFIG CHECKPOINT N_PLANS [WIDTH]
The log this writes is committed as benchmarks/results/surgery_precision_demo_w025.log
"""
import argparse, copy, random, sys
import numpy as np, torch
import toolchain.models.segnet as segnet_mod
from toolchain.config import load_config
from toolchain.data import build_dataset
from toolchain.train.checkpoint import load_model
from toolchain.prune.groups import build_pruning_graph
from toolchain.prune.surgery import removed_bn_channels, slim, zero_removed_channels, relative_error
from toolchain.errors import ToolchainError
torch.set_num_threads(1)
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("config"); ap.add_argument("checkpoint")
ap.add_argument("n_plans", type=int); ap.add_argument("width", type=float, nargs="?")
args = ap.parse_args()
n, width = args.n_plans, args.width
try:
    cfg = load_config(args.config, overrides={"model": {"width": width}} if width else None)
    base, _ = load_model(args.checkpoint, cfg)
except ToolchainError as err:
    sys.exit(f"surgery_precision: error: {err}")
ds = build_dataset(cfg, "val", train=False)
x = torch.stack([ds[i][0] for i in range(min(8, len(ds)))])
masks = []
orig = segnet_mod.unpool_like
def spy(xx, e, p):
    size = e.shape[-2:]
    m = 1.0 - torch.sign(torch.nn.functional.interpolate(p, size=size, mode="nearest") - e)
    masks.append(m)
    return orig(xx, e, p)
segnet_mod.unpool_like = spy
tot = {"float32": [0, 0, 0], "float64": [0, 0, 0]}  # flips, checks with flips, checks over 1e-4
for seed in range(n):
    random.seed(seed)
    model = copy.deepcopy(base).eval()
    graph = build_pruning_graph(model, tuple(cfg.data.input_size))
    removed = {g.index: random.sample(range(g.size), g.size - max(4, g.size // 2)) for g in graph.groups}
    dense = copy.deepcopy(model)
    bn = removed_bn_channels(graph, removed)
    slim(graph, removed)
    enc_bns = [f"encoder.{i}.{len(st) - 1}.1" for i, st in enumerate(base.encoder)]
    for dt, name in ((torch.float32, "float32"), (torch.float64, "float64")):
        d, s = copy.deepcopy(dense).to(dt), copy.deepcopy(graph.model).to(dt)
        masks.clear()
        with torch.no_grad(), zero_removed_channels(d, bn):
            ref = d(x.to(dt))
        dm = list(masks); masks.clear()
        with torch.no_grad():
            got = s(x.to(dt))
        sm = list(masks)
        flips = 0
        for k, (a, b) in enumerate(zip(dm, sm)):
            bn_name = enc_bns[len(enc_bns) - 1 - k]
            keep = [c for c in range(a.shape[1]) if c not in set(bn.get(bn_name, []))]
            flips += int((a[:, keep] != b).sum())
        err = relative_error(ref, got)
        tot[name][0] += flips; tot[name][1] += flips > 0; tot[name][2] += err > 1e-4
        print(f"plan {seed} {name}: mask flips {flips}, output rel err {err:.2e}", flush=True)
for k, v in tot.items():
    print(f"{k}: {v[0]} mask flips in total; {v[1]}/{n} checks with a flip; {v[2]}/{n} checks over 1e-4")
