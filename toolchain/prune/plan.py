"""Channel plans: the JSON description of a slim model, and rebuilding a slim model from one.

A slim checkpoint is the zoo name + a channel plan + a state dict (no pickled modules). The plan is
plain JSON:

    {"format": "acsl-channel-plan/1", "input_size": [H, W],
     "steps":  [{"root": "encoder.0.0.0", "removed": [3, 7, ...]}, ...],    # replay order
     "layers": {"encoder.0.0.0": {"out": 64, "in": 3, "kept_out": [...], "kept_in": [...]}, ...}}

`layers` lists, for every Conv / BatchNorm / Linear whose shape changed, the dense channel indices it
keeps on each dimension. `apply_channel_plan(model, plan)` replays the steps with Torch-Pruning on a
freshly built dense model (so coupled layers shrink exactly as during pruning) and then checks every
layer's shape against `layers`.
"""
from __future__ import annotations

import torch.nn as nn

from toolchain.errors import ToolchainError

PLAN_FORMAT = "acsl-channel-plan/1"


def layer_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Out/in channels of every Conv, BatchNorm and Linear layer, by module name."""
    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            shapes[name] = {"out": module.out_channels, "in": module.in_channels}
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            shapes[name] = {"out": module.num_features, "in": module.num_features}
        elif isinstance(module, nn.Linear):
            shapes[name] = {"out": module.out_features, "in": module.in_features}
    return shapes


def validate_plan(plan) -> None:
    if not isinstance(plan, dict) or plan.get("format") != PLAN_FORMAT:
        raise ToolchainError(f"not a channel plan (expected format '{PLAN_FORMAT}'); "
                             "slim checkpoints come from `acsl prune`")
    for key in ("input_size", "steps", "layers"):
        if key not in plan:
            raise ToolchainError(f"channel plan has no '{key}'; the slim checkpoint is damaged, re-run `acsl prune`")


def plan_summary(plan: dict) -> dict[str, dict[str, int]]:
    """Per changed layer: dense and kept out/in channel counts (for records)."""
    return {name: {"out": spec["out"], "kept_out": len(spec["kept_out"]), "in": spec["in"],
                   "kept_in": len(spec["kept_in"])} for name, spec in plan["layers"].items()}


def apply_channel_plan(model: nn.Module, plan: dict) -> nn.Module:
    """Shrink a freshly built dense `model` in place to the plan's channels; returns it."""
    from toolchain.prune.groups import _trace, example_inputs

    validate_plan(plan)
    if not plan["steps"]:
        return model
    dense = layer_shapes(model)
    for name, spec in plan["layers"].items():
        if name not in dense:
            raise ToolchainError(f"the channel plan names layer '{name}', which {type(model).__name__} does not have; "
                                 "the slim checkpoint does not match this config's model")
        if (dense[name]["out"], dense[name]["in"]) != (spec["out"], spec["in"]):
            raise ToolchainError(f"layer '{name}' has {dense[name]['out']}x{dense[name]['in']} channels but the plan "
                                 f"was made for {spec['out']}x{spec['in']}; use the config (model width) the "
                                 "checkpoint was pruned from")
    dg = _trace(model, example_inputs(model, tuple(plan["input_size"])))
    was_training = model.training
    model.eval()
    try:
        for step in plan["steps"]:
            try:
                root = model.get_submodule(step["root"])
            except AttributeError:
                raise ToolchainError(f"the channel plan prunes layer '{step['root']}', which "
                                     f"{type(model).__name__} does not have; the checkpoint does not match") from None
            pruner = dg.get_pruner_of_module(root)
            dg.get_pruning_group(root, pruner.prune_out_channels, [int(i) for i in step["removed"]]).prune(
                record_history=False)
    finally:
        model.train(was_training)
    now = layer_shapes(model)
    for name, spec in plan["layers"].items():
        if (now[name]["out"], now[name]["in"]) != (len(spec["kept_out"]), len(spec["kept_in"])):
            raise ToolchainError(f"rebuilding from the channel plan gave layer '{name}' {now[name]['out']}x"
                                 f"{now[name]['in']} channels instead of {len(spec['kept_out'])}x"
                                 f"{len(spec['kept_in'])}; the plan and the model code disagree")
    return model
