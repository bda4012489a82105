"""Physical channel removal with Torch-Pruning, proven numerically.

`slim(graph, removed)` removes the selected root channels of every group from `graph.model` in place
(each group through `DependencyGraph.get_pruning_group(...).prune()`, so coupled layers, residual adds
and concatenations shrink together) and returns the JSON channel plan (plan.py) that rebuilds it.

Proof of correct surgery: the slim model must compute exactly what the dense model computes when
the removed channels are zeroed right after their BatchNorm (`zero_removed_channels`, a forward
hook mask on every BN of each pruned group). `verify_equivalence` checks this on an example batch
and raises when it does not hold, so a coupling the tracer missed fails loudly.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.prune.groups import PruningGraph, example_inputs
from toolchain.prune.plan import PLAN_FORMAT, layer_shapes

RELATIVE_TOLERANCE = 1e-4


def removed_bn_channels(graph: PruningGraph, removed: dict[int, list[int]]) -> dict[str, list[int]]:
    """BN name -> BN channel indices that the removal deletes (every BN of each pruned group)."""
    out: dict[str, set[int]] = {}
    for group in graph.groups:
        gone = set(removed.get(group.index, ()))
        if not gone:
            continue
        for slot in group.bns:
            chans = out.setdefault(slot.name, set())
            chans.update(b for b, r in zip(slot.bn_index, slot.group_index) if r in gone)
    return {name: sorted(chans) for name, chans in out.items()}


@contextlib.contextmanager
def zero_removed_channels(model: nn.Module, bn_channels: dict[str, list[int]]) -> Iterator[nn.Module]:
    """Within the block, `model`'s BN outputs have the given channels zeroed (the dense reference)."""
    handles = []
    try:
        for name, channels in bn_channels.items():
            bn = model.get_submodule(name)
            mask = torch.ones(bn.num_features)
            mask[channels] = 0

            def hook(module, inputs, output, mask=mask):
                return output * mask.to(output.device, output.dtype).view(1, -1, *([1] * (output.dim() - 2)))
            handles.append(bn.register_forward_hook(hook))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def relative_error(reference: torch.Tensor, candidate: torch.Tensor) -> float:
    scale = reference.abs().max().item()
    return (candidate - reference).abs().max().item() / max(scale, 1e-12)


def verify_equivalence(dense: nn.Module, slim: nn.Module, bn_channels: dict[str, list[int]],
                       inputs: torch.Tensor, rtol: float = RELATIVE_TOLERANCE) -> float:
    """Relative max error between slim(x) and masked dense(x); raises ToolchainError above `rtol`."""
    modes = dense.training, slim.training
    dense.eval()
    slim.eval()
    try:
        with torch.no_grad(), zero_removed_channels(dense, bn_channels):
            reference = dense(inputs)
        with torch.no_grad():
            candidate = slim(inputs)
    finally:
        dense.train(modes[0])
        slim.train(modes[1])
    if reference.shape != candidate.shape:
        raise ToolchainError(f"pruning changed the output shape {tuple(reference.shape)} -> {tuple(candidate.shape)}; "
                             "an output layer lost channels (check model.output_layers())")
    error = relative_error(reference, candidate)
    if not error <= rtol:
        raise ToolchainError(
            f"surgery check failed: the slim model differs from the dense model with the removed channels zeroed "
            f"(relative error {error:.2e} > {rtol:.0e}); the tracer missed a channel coupling in "
            f"{type(dense).__name__}: register a trace adapter or custom pruner (see ARCHITECTURE.md, Pruning)")
    return error


def _track(alive: dict[str, dict[str, list[int]]], tp_group, names: dict) -> None:
    """Update the dense indices still alive per layer for the items of one torch_pruning group."""
    dg = tp_group._DG
    for item in tp_group:
        module = item.dep.target.module
        name = names.get(module)
        if name is None or name not in alive:
            continue
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        dims = ["out"] if dg.is_out_channel_pruning_fn(item.dep.handler) else ["in"]
        if is_bn:
            dims = ["out", "in"]
        elif isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels == module.out_channels:
            dims = ["out", "in"]  # depthwise: both dimensions shrink together
        for dim in dims:
            gone = set(int(i) for i in item.idxs)
            alive[name][dim] = [c for pos, c in enumerate(alive[name][dim]) if pos not in gone]


def slim(graph: PruningGraph, removed: dict[int, list[int]]) -> dict:
    """Remove `removed` (group index -> root channel indices) from graph.model in place; return the plan."""
    model = graph.model
    shapes = layer_shapes(model)
    alive = {name: {"out": list(range(s["out"])), "in": list(range(s["in"]))} for name, s in shapes.items()}
    steps = []
    was_training = model.training
    model.eval()
    try:
        for group in graph.groups:
            idxs = sorted(set(int(i) for i in removed.get(group.index, ())))
            if not idxs:
                continue
            if len(idxs) >= group.size:
                raise ToolchainError(f"cannot remove all {group.size} channels of layer '{group.root}'")
            tp_group = graph.tp_group(group, idxs)
            _track(alive, tp_group, graph.names)
            tp_group.prune(record_history=False)
            steps.append({"root": group.root, "removed": idxs})
    finally:
        model.train(was_training)
    layers = {}
    for name, dims in alive.items():
        if len(dims["out"]) != shapes[name]["out"] or len(dims["in"]) != shapes[name]["in"]:
            layers[name] = {"kept_out": dims["out"], "kept_in": dims["in"],
                            "out": shapes[name]["out"], "in": shapes[name]["in"]}
    return {"format": PLAN_FORMAT, "input_size": list(graph.input_size), "steps": steps, "layers": layers}


def prune_model(graph: PruningGraph, removed: dict[int, list[int]], verify: bool = True) -> tuple[nn.Module, dict, float | None]:
    """Slim graph.model in place; with `verify`, prove it against a masked dense copy.

    Returns (slim model, channel plan, relative error of the proof or None).
    """
    dense = copy.deepcopy(graph.model) if verify else None
    bn_channels = removed_bn_channels(graph, removed)
    plan = slim(graph, removed)
    error = None
    if verify:
        inputs = example_inputs(graph.model, graph.input_size)
        error = verify_equivalence(dense, graph.model, bn_channels, inputs)
    return graph.model, plan, error
