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

RELATIVE_TOLERANCE = 1e-4        # float32 fallback
RELATIVE_TOLERANCE_FP64 = 1e-9   # the check proper (float64): rounding is ~1e-16


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


def _outputs(dense: nn.Module, slim: nn.Module, bn_channels: dict[str, list[int]], inputs: torch.Tensor,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(masked dense output, slim output), both computed in `dtype` on copies of the models."""
    dense, slim = copy.deepcopy(dense).to(dtype).eval(), copy.deepcopy(slim).to(dtype).eval()
    with torch.no_grad(), zero_removed_channels(dense, bn_channels):
        reference = dense(inputs.to(dtype))
    with torch.no_grad():
        candidate = slim(inputs.to(dtype))
    return reference, candidate


def verify_equivalence(dense: nn.Module, slim: nn.Module, bn_channels: dict[str, list[int]],
                       inputs: torch.Tensor, rtol: float = RELATIVE_TOLERANCE) -> float:
    """Relative max error between slim(x) and masked dense(x), computed in float64; raises above the tolerance.

    Why float64: the proof is about structure (which channels feed which), not about float32 rounding.
    In float32 the slim and the masked dense model sum their convolutions in a different order, so a
    pre-activation within ~1e-7 of a discontinuity (ReLU's kink feeding SegNet's argmax unpooling mask,
    any max/argmax/sign) can land on different sides of it and move whole values: measured on the
    demo, a few per cent of prunes failed a float32 check with no coupling missed. In float64 the same
    rounding noise is ~1e-16, so only a real structural difference can exceed the tolerance. Models
    that cannot run in float64 are checked in float32 (the error message then says so).
    The returned error is the float64 one (the float32 one where float64 was not possible).
    """
    try:
        reference, candidate = _outputs(dense, slim, bn_channels, inputs, torch.float64)
        precision, tol = "float64", RELATIVE_TOLERANCE_FP64
    except (RuntimeError, TypeError):  # an op without a float64 kernel (e.g. a user's custom extension)
        reference, candidate = _outputs(dense, slim, bn_channels, inputs, torch.float32)
        precision, tol = "float32", rtol
    if reference.shape != candidate.shape:
        raise ToolchainError(f"pruning changed the output shape {tuple(reference.shape)} -> {tuple(candidate.shape)}; "
                             "an output layer lost channels (check model.output_layers())")
    error = relative_error(reference, candidate)
    if not error <= tol:
        where = first_divergence(dense, slim, bn_channels, inputs, precision)
        raise ToolchainError(
            f"surgery check failed: in {precision} the slim model differs from the dense model with the removed "
            f"channels zeroed (relative error {error:.2e} > {tol:.0e}){where}; a channel coupling of "
            f"{type(dense).__name__} was not removed consistently: register a trace adapter or custom pruner "
            "(see ARCHITECTURE.md, Pruning)")
    return error


def first_divergence(dense: nn.Module, slim: nn.Module, bn_channels: dict[str, list[int]], inputs: torch.Tensor,
                     precision: str) -> str:
    """', first at <module> (...)': the first module, in execution order, whose kept outputs disagree.

    Compares every module whose name exists in both models and whose slim output has the dense
    output's shape after the removed BN channels are dropped (BN outputs) or equal shape (others).
    Returns '' when nothing narrower than the model output can be located.
    """
    dtype = torch.float64 if precision == "float64" else torch.float32
    dense, slim = copy.deepcopy(dense).to(dtype).eval(), copy.deepcopy(slim).to(dtype).eval()
    seen: dict[str, list] = {"dense": [], "slim": []}

    def recorder(tag, name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                seen[tag].append((name, output))
        return hook

    handles = [m.register_forward_hook(recorder(tag, n)) for tag, model in (("dense", dense), ("slim", slim))
               for n, m in model.named_modules() if n and not list(m.children())]
    try:
        with torch.no_grad(), zero_removed_channels(dense, bn_channels):
            dense(inputs.to(dtype))
        with torch.no_grad():
            slim(inputs.to(dtype))
    finally:
        for h in handles:
            h.remove()
    slim_out = dict(seen["slim"])
    tol = RELATIVE_TOLERANCE_FP64 if precision == "float64" else RELATIVE_TOLERANCE
    for name, ref in seen["dense"]:
        got = slim_out.get(name)
        if got is None:
            continue
        if name in bn_channels and ref.dim() >= 2 and got.shape[1] == ref.shape[1] - len(bn_channels[name]):
            keep = [c for c in range(ref.shape[1]) if c not in set(bn_channels[name])]
            ref = ref[:, keep]
        if got.shape != ref.shape:
            continue
        err = relative_error(ref, got)
        if err > tol:
            return f", first at layer '{name}' (relative error {err:.2e})"
    return ""


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
