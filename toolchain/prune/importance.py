"""Channel saliency per coupled group: one value per group channel, lower = removed first.

- `bn-scale` (also used after ACSL / CAP / slimming sparsity learning): |gamma| of the BN layers of the
  group (ACSL.md section 3, step 5), reduced over the group's BNs by `group_reduction` (below).
- `l1` (Li et al. 2017): L1 norm of each output filter, summed over the group's convs.
- `fpgm` (He et al. 2019): sum of L2 distances of each filter to the other filters of its layer
  (filters near the geometric median are redundant and go first), summed over the group's convs.
- `depgraph`: Torch-Pruning's GroupMagnitudeImportance (L2 group norm over every coupled parameter).
- `random`: seeded uniform (sanity floor).
Filter-based scores are divided by their group mean, so a global ranking compares relative importance
(raw filter norms scale with fan-in and would empty whole layers).

Group reduction of the gamma saliency (`prune.group_reduction`, GROUP_REDUCTIONS). A coupled group can
be gated by several BatchNorms (a residual chain: one BN per block; an inverted-residual expansion: the
expansion BN and the depthwise BN; a SegNet encoder/decoder pair). Selection ranks all channels of all
groups globally, so the per-channel score must not grow with the number of BNs:
- `mean` (default): every BN's |gamma| is divided by its mean over the group's channels, then the
  normalised values are averaged over the BNs that gate each channel (Torch-Pruning's
  group_reduction="mean" with normalizer="mean"). Every group then has mean score 1, whatever its BN
  count, and a channel ranks by how far below its group's typical gamma it is.
- `max`: as `mean`, but the maximum of the normalised values (a channel is kept while any BN needs it).
- `sum`: the raw |gamma| summed over the group's BNs: the toolchain's behaviour before issue 11 (Network
  Slimming's raw global ranking for single-BN groups). A group with k BNs scores ~k times a single-BN
  group and is never reached, so use it only to reproduce earlier results.
The default is `mean`: it is Torch-Pruning's reduction and the only one of the three that reaches
residual chains (benchmarks/results/group_reduction_*.md: ACSL on CIFAR ResNet-56 at params=0.5, `max`
and `sum` remove 0 of the 56 residual-chain channels, `mean` 11-14; on val top-1 `max` led one run and
`mean` the other, so no reduction is better on val yet).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.prune.groups import ChannelGroup, PruningGraph

SALIENCY_KINDS = ("bn-scale", "l1", "fpgm", "depgraph", "random")
GROUP_REDUCTIONS = ("mean", "max", "sum")
DEFAULT_GROUP_REDUCTION = "mean"


def _normalised(score: torch.Tensor) -> torch.Tensor:
    return score / score.mean().clamp_min(1e-12)


def check_group_reduction(reduction: str) -> str:
    if reduction not in GROUP_REDUCTIONS:
        raise ToolchainError(f"unknown prune.group_reduction '{reduction}' (valid: {', '.join(GROUP_REDUCTIONS)})")
    return reduction


def gamma_saliency(graph: PruningGraph, group: ChannelGroup, reduction: str = DEFAULT_GROUP_REDUCTION) -> torch.Tensor:
    """|gamma| of the group's BNs reduced to one score per group channel (see the module docstring)."""
    check_group_reduction(reduction)
    if reduction == "sum":
        score = torch.zeros(group.size)
        for slot in group.bns:
            gamma = graph.module(slot.name).weight.detach().abs().float().cpu()
            score.index_add_(0, torch.tensor(slot.group_index), gamma[slot.bn_index])
        return score
    total = torch.zeros(group.size)
    count = torch.zeros(group.size)
    best = torch.zeros(group.size)
    for slot in group.bns:
        gamma = graph.module(slot.name).weight.detach().abs().float().cpu()[slot.bn_index]
        normalised = gamma / gamma.mean().clamp_min(1e-12)
        where = torch.tensor(slot.group_index)
        total.index_add_(0, where, normalised)
        count.index_add_(0, where, torch.ones_like(normalised))
        best.scatter_reduce_(0, where, normalised, reduce="amax")
    if reduction == "max":
        return best
    return total / count.clamp_min(1)


def _out_filters(graph: PruningGraph, group: ChannelGroup):
    """(group channel index, filters matrix) for every weight layer that loses output channels."""
    for slot in group.layers:
        if slot.dim != "out":
            continue
        module = graph.module(slot.name)
        weight = module.weight.detach().float().cpu()
        if isinstance(module, nn.ConvTranspose2d):
            weight = weight.transpose(0, 1)
        filters = weight.reshape(weight.shape[0], -1)[slot.index]
        yield torch.tensor(slot.group_index), filters


def l1_saliency(graph: PruningGraph, group: ChannelGroup) -> torch.Tensor:
    score = torch.zeros(group.size)
    for where, filters in _out_filters(graph, group):
        score.index_add_(0, where, filters.abs().sum(dim=1))
    return _normalised(score)


def fpgm_saliency(graph: PruningGraph, group: ChannelGroup) -> torch.Tensor:
    score = torch.zeros(group.size)
    for where, filters in _out_filters(graph, group):
        score.index_add_(0, where, torch.cdist(filters, filters).sum(dim=1))
    return _normalised(score)


def depgraph_saliency(graph: PruningGraph, group: ChannelGroup) -> torch.Tensor:
    import torch_pruning as tp

    tp_group = graph.tp_group(group, list(range(group.size)))
    score = tp.importance.GroupMagnitudeImportance(p=2)(tp_group)
    return score.detach().float().cpu()


def channel_saliency(kind: str, graph: PruningGraph, seed: int = 0,
                     group_reduction: str = DEFAULT_GROUP_REDUCTION) -> list[torch.Tensor]:
    """One saliency vector per group of `graph` for importance `kind` (see SALIENCY_KINDS).

    `group_reduction` (GROUP_REDUCTIONS) applies to the gamma-based kind `bn-scale`, the saliency of
    ACSL, CAP, Network Slimming and BN-scale; the other kinds have their own group normalisation.
    """
    check_group_reduction(group_reduction)
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        return [torch.rand(g.size, generator=generator) for g in graph.groups]
    if kind == "bn-scale":
        return [gamma_saliency(graph, g, group_reduction) for g in graph.groups]
    score_fn = {"l1": l1_saliency, "fpgm": fpgm_saliency, "depgraph": depgraph_saliency}.get(kind)
    if score_fn is None:
        raise ValueError(f"unknown saliency '{kind}' (valid: {', '.join(SALIENCY_KINDS)})")
    return [score_fn(graph, g) for g in graph.groups]
