"""Did sparsity learning work? The gamma distribution a prune run selects from, and what slimming cost.

`gamma_stats` summarises the prunable BN gammas (those selection ranks): how many are exact zeros, how
many lie below 1e-2 of the largest |gamma| (the issue-12 criterion), quantiles and per layer.
`write_gamma_histogram` draws them (PNG, written atomically next to the run's record).
`slim_diagnostic` puts the gamma summary beside the val metric at each point of the run: dense, after
sparsity, right after slimming (before recovery) and after recovery. A method that learned structured
sparsity zeroes the channels it removes, so slimming costs it little.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

REL_THRESHOLD = 1e-2  # "below 1e-2 of the max"


def prunable_gammas(model: nn.Module, input_size) -> dict[str, torch.Tensor]:
    """|gamma| of every prunable BN layer (name -> 1-D float tensor), in the pruning graph's order."""
    from toolchain.prune.groups import build_pruning_graph

    graph = build_pruning_graph(model, tuple(input_size))
    return {name: graph.module(name).weight.detach().abs().float().flatten().cpu() for name in graph.bn_names()}


def dead_channels(model: nn.Module, input_size) -> dict:
    """Prunable BN channels whose output is identically zero (gamma and beta exactly 0, as the paired proximal step
    leaves them): in a slim model they are channels a larger budget would have removed at no cost."""
    from toolchain.prune.groups import build_pruning_graph

    graph = build_pruning_graph(model, tuple(input_size))
    n = dead = 0
    for name in graph.bn_names():
        bn = graph.module(name)
        zero = bn.weight.detach() == 0
        if bn.bias is not None:
            zero &= bn.bias.detach() == 0
        n, dead = n + zero.numel(), dead + int(zero.sum())
    return {"channels": n, "dead": dead}


def gamma_stats(gammas: dict[str, torch.Tensor], rel_threshold: float = REL_THRESHOLD) -> dict:
    """Summary of |gamma| over all layers (and per layer): exact zeros, fraction below rel_threshold x the
    global max, quantiles."""
    if not gammas:
        return {"n": 0, "exact_zeros": 0, "frac_exact_zero": None, "frac_below_rel": None,
                "rel_threshold": rel_threshold, "max_abs": None, "per_layer": {}}
    flat = torch.cat(list(gammas.values()))
    top = float(flat.max())
    cut = rel_threshold * top
    q = torch.quantile(flat, torch.tensor([0.1, 0.5, 0.9]))
    per_layer = {name: {"n": int(g.numel()), "exact_zeros": int((g == 0).sum()),
                        "below_rel": int((g < cut).sum()), "max_abs": round(float(g.max()), 6)}
                 for name, g in gammas.items()}
    return {"n": int(flat.numel()), "exact_zeros": int((flat == 0).sum()),
            "frac_exact_zero": round(float((flat == 0).float().mean()), 6),
            "frac_below_rel": round(float((flat < cut).float().mean()), 6), "rel_threshold": rel_threshold,
            "max_abs": round(top, 6), "p10_abs": round(float(q[0]), 6), "median_abs": round(float(q[1]), 6),
            "p90_abs": round(float(q[2]), 6), "layers_all_zero": sum(v["exact_zeros"] == v["n"] for v in per_layer.values()),
            "per_layer": per_layer}


def write_gamma_histogram(gammas: dict[str, torch.Tensor], path: str | Path, title: str = "",
                          rel_threshold: float = REL_THRESHOLD) -> Optional[Path]:
    """Two panels: |gamma| (linear, exact zeros counted in the title) and log10(|gamma| / max) of the non-zero
    ones with the rel_threshold line. Returns the path, or None when there are no gammas."""
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from toolchain.report.plots import save_png

    if not gammas:
        return None
    flat = torch.cat(list(gammas.values())).numpy()
    top = float(flat.max())
    zeros = int((flat == 0).sum())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    ax1.hist(flat, bins=50, range=(0.0, top if top > 0 else 1.0), color="#1f77b4")
    ax1.set_yscale("log")
    ax1.set_xlabel("|gamma|")
    ax1.set_ylabel("channels")
    ax1.set_title(f"{zeros} of {flat.size} exact zeros", fontsize=9)
    nonzero = flat[flat > 0]
    if nonzero.size and top > 0:
        ax2.hist(np.log10(nonzero / top), bins=50, color="#ff7f0e")
    ax2.axvline(np.log10(rel_threshold), color="black", linestyle=":",
                label=f"{rel_threshold:g} x max")
    ax2.set_xlabel("log10(|gamma| / max), non-zero gammas")
    ax2.legend(fontsize=8)
    below = float((flat < rel_threshold * top).mean())
    ax2.set_title(f"{below:.1%} below {rel_threshold:g} x max", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    save_png(fig, path)
    return Path(path)


def slim_loss(before: Optional[float], after: Optional[float], higher_is_better: bool) -> dict:
    """What slimming cost: metric lost (positive = worse) and relative to the value before it."""
    if before is None or after is None:
        return {"loss": None, "loss_rel": None}
    lost = (before - after) if higher_is_better else (after - before)
    return {"loss": round(lost, 6), "loss_rel": round(lost / abs(before), 6) if before else None}


def slim_diagnostic(stats: dict, *, metric: str, higher_is_better: bool, val_dense: Optional[float],
                    val_after_sparsity: Optional[float], val_after_slim: Optional[float],
                    val_after_recovery: Optional[float] = None, histogram: Optional[str] = None,
                    sparsity: Optional[dict] = None, dead_kept: Optional[dict] = None) -> dict:
    """The record's `diagnostic` block. `sparsity` describes the phase (method, mode, lam) or None when the
    method has none (then the gammas are the dense model's and 'before slimming' is the dense metric).
    `dead_kept` is `dead_channels` of the slim model."""
    before = val_after_sparsity if val_after_sparsity is not None else val_dense
    return {"gammas": {k: v for k, v in stats.items() if k != "per_layer"}, "gammas_per_layer": stats.get("per_layer", {}),
            "gammas_after": "sparsity" if sparsity else "dense (no sparsity phase)",
            "sparsity_mode": (sparsity or {}).get("mode"), "lam": (sparsity or {}).get("lam"),
            "metric": metric, "higher_is_better": higher_is_better, "val_dense": val_dense,
            "val_after_sparsity": val_after_sparsity, "val_after_slim": val_after_slim,
            "val_after_recovery": val_after_recovery, "slim": slim_loss(before, val_after_slim, higher_is_better),
            "histogram": histogram, "dead_kept": dead_kept}


def format_diagnostic(diag: dict, method: str) -> str:
    """One log line: the gamma distribution and the metric through the run."""
    g = diag["gammas"]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    mode = f", {diag['sparsity_mode']} lam {diag['lam']:g}" if diag.get("sparsity_mode") else ""
    head = f"[prune] {method}{mode}: gammas after {diag['gammas_after']}: "
    if not g.get("n"):
        gam = "no prunable gammas"
    else:
        gam = (f"{g['frac_exact_zero']:.1%} exact zeros, {g['frac_below_rel']:.1%} below {g['rel_threshold']:g} x max "
               f"({g['max_abs']:.3g}) of {g['n']}")
    slim = diag["slim"]
    lost = "" if slim["loss"] is None else f" (slimming lost {slim['loss']:.3f}, {slim['loss_rel']:.1%})" \
        if slim["loss_rel"] is not None else f" (slimming lost {slim['loss']:.3f})"
    vals = (f"; val {diag['metric']}: dense {f(diag['val_dense'])} -> after sparsity {f(diag['val_after_sparsity'])} "
            f"-> after slimming, before recovery {f(diag['val_after_slim'])}{lost}")
    if diag.get("val_after_recovery") is not None:
        vals += f" -> after recovery {f(diag['val_after_recovery'])}"
    dead = diag.get("dead_kept") or {}
    if dead.get("dead"):
        vals += (f"; {dead['dead']} of the slim model's {dead['channels']} channels are dead (gamma = beta = 0): "
                 "a larger budget removes them at no cost")
    return head + gam + vals
