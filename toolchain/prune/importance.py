"""Channel saliency per coupled group: one value per group channel, lower = removed first.

- `bn-scale` (also used after ACSL / CAP / slimming sparsity learning): |gamma| summed over the BN
  layers of the group (ACSL.md section 3, step 5). Raw values, ranked globally (Network Slimming).
- `l1` (Li et al. 2017): L1 norm of each output filter, summed over the group's convs.
- `fpgm` (He et al. 2019): sum of L2 distances of each filter to the other filters of its layer
  (filters near the geometric median are redundant and go first), summed over the group's convs.
- `depgraph`: Torch-Pruning's GroupMagnitudeImportance (L2 group norm over every coupled parameter).
- `random`: seeded uniform (sanity floor).
Filter-based scores are divided by their group mean, so a global ranking compares relative importance
(raw filter norms scale with fan-in and would empty whole layers).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from toolchain.prune.groups import ChannelGroup, PruningGraph

SALIENCY_KINDS = ("bn-scale", "l1", "fpgm", "depgraph", "random")


def _normalised(score: torch.Tensor) -> torch.Tensor:
    return score / score.mean().clamp_min(1e-12)


def gamma_saliency(graph: PruningGraph, group: ChannelGroup) -> torch.Tensor:
    score = torch.zeros(group.size)
    for slot in group.bns:
        gamma = graph.module(slot.name).weight.detach().abs().float().cpu()
        score.index_add_(0, torch.tensor(slot.group_index), gamma[slot.bn_index])
    return score


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


def channel_saliency(kind: str, graph: PruningGraph, seed: int = 0) -> list[torch.Tensor]:
    """One saliency vector per group of `graph` for importance `kind` (see SALIENCY_KINDS)."""
    if kind == "random":
        generator = torch.Generator().manual_seed(seed)
        return [torch.rand(g.size, generator=generator) for g in graph.groups]
    score_fn = {"bn-scale": gamma_saliency, "l1": l1_saliency, "fpgm": fpgm_saliency,
                "depgraph": depgraph_saliency}.get(kind)
    if score_fn is None:
        raise ValueError(f"unknown saliency '{kind}' (valid: {', '.join(SALIENCY_KINDS)})")
    return [score_fn(graph, g) for g in graph.groups]
