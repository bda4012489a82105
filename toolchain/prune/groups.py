"""Coupled channel groups, found by Torch-Pruning's dependency graph (never a home-made tracer).

A *channel group* is a set of channels that must be removed together: the output channels of a
root convolution, its BatchNorm, the input channels of every consumer, both sides of a residual add
and the index-mapped slices of a concatenation. `build_pruning_graph(model, input_size)` traces the
model once and returns a `PruningGraph` holding, per group, the BN layers that gate it (with the BN
channel of every group channel) and the layers whose weights shrink with it (for cost models).

Traps this module defends against (each has a test):
- the example input is always a batch of 2 (a single batch-1 tensor can make the tracer see no
  coupling and prune nothing, silently);
- `ignored_layers` are module *instances* (`model.output_layers()`), checked to be modules of the model;
- a layer holding parameters the tracer does not know is refused with a message naming it and the
  custom-pruner hook (`register_custom_pruner`);
- a coupling autograd cannot see (MaxUnpool indices, or a SegNet mask written `up(maxpool(e)) == e`,
  whose comparison has no autograd node; the zoo writes it with `sign` so the tracer couples the
  encoder stage with the decoder feature it unpools) is caught by surgery's numerical proof
  (`surgery.verify_equivalence`): it fails loudly instead of unpooling with the wrong channels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError

# Layer types whose pruning torch_pruning knows; any other module holding parameters needs a custom pruner.
KNOWN_PARAM_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d,
                      nn.BatchNorm2d, nn.LayerNorm, nn.PReLU, nn.GroupNorm, nn.InstanceNorm2d, nn.Embedding)

_CUSTOM_PRUNERS: dict[type, object] = {}


def register_custom_pruner(layer_type: type, pruner) -> None:
    """Teach the tracer a custom layer: `pruner` is a `torch_pruning.pruner.BasePruningFunc` subclass
    instance implementing prune_out_channels / prune_in_channels / get_out_channels / get_in_channels."""
    if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
        raise ToolchainError(f"register_custom_pruner needs an nn.Module subclass, got {layer_type!r}")
    _CUSTOM_PRUNERS[layer_type] = pruner


def custom_pruners() -> dict[type, object]:
    return dict(_CUSTOM_PRUNERS)


@dataclass
class BNSlot:
    """A BatchNorm of a group: `bn_index[k]` is the BN channel of group channel `group_index[k]`."""
    name: str
    bn_index: list[int]
    group_index: list[int]


@dataclass
class LayerSlot:
    """A weight layer touched by a group, on its output ("out") or input ("in") dimension."""
    name: str
    dim: str
    per_channel: float  # features of that dimension per group channel (1, or H*W after a flatten)
    index: list[int] = field(default_factory=list)
    group_index: list[int] = field(default_factory=list)


@dataclass
class ChannelGroup:
    index: int
    root: str
    size: int
    bns: list[BNSlot]
    layers: list[LayerSlot]

    def min_keep(self, min_channels: int, min_fraction: float, round_to: int = 1) -> int:
        """Channels this group keeps at least: max(min_channels, ceil(min_fraction * C)), rounded up, <= C."""
        keep = max(min_channels, math.ceil(min_fraction * self.size - 1e-9))
        keep = round_up(keep, round_to)
        return min(keep, self.size)


def round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple) if multiple > 1 else int(value)


@dataclass
class PruningGraph:
    """A model, its dependency graph and its prunable channel groups."""
    model: nn.Module
    dg: object
    groups: list[ChannelGroup]
    input_size: tuple[int, int]
    names: dict = field(default_factory=dict)

    def module(self, name: str) -> nn.Module:
        return self.model.get_submodule(name)

    def bn_names(self) -> list[str]:
        seen: list[str] = []
        for group in self.groups:
            for slot in group.bns:
                if slot.name not in seen:
                    seen.append(slot.name)
        return seen

    def tp_group(self, group: ChannelGroup, removed: list[int]):
        """The torch_pruning group that removes `removed` (root channel indices) from `group`."""
        root = self.module(group.root)
        pruner = self.dg.get_pruner_of_module(root)
        return self.dg.get_pruning_group(root, pruner.prune_out_channels, sorted(int(i) for i in removed))


def example_inputs(model: nn.Module, input_size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    """A seeded random batch of `batch` >= 2 images on the model's device (never one batch-1 tensor)."""
    if batch < 2:
        raise ValueError("the tracer needs a batch of at least 2 example images")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, int(input_size[0]), int(input_size[1]), generator=generator).to(device)


def output_layers(model: nn.Module, input_size: tuple[int, int] | None = None) -> list[nn.Module]:
    """The model's head layers (instances, never types), validated to belong to the model.

    A model without `output_layers()` keeps the layers that produce its outputs, found from the traced
    graph at `input_size` (toolchain.models.contract.traced_output_layers, which says which on stderr).
    """
    getter = getattr(model, "output_layers", None)
    if getter is None:
        from toolchain.models.contract import traced_output_layers

        return [model.get_submodule(name) for name in traced_output_layers(model, input_size)]
    layers = list(getter())
    own = {id(m) for m in model.modules()}
    for layer in layers:
        if not isinstance(layer, nn.Module) or id(layer) not in own:
            raise ToolchainError(f"{type(model).__name__}.output_layers() must return module instances of the "
                                 f"model, got {layer!r}")
    return layers


def _check_known_layers(model: nn.Module, ignored: list[nn.Module]) -> None:
    ignored_ids = {id(m) for m in ignored}
    for name, module in model.named_modules():
        if not list(module.parameters(recurse=False)) or id(module) in ignored_ids:
            continue
        if isinstance(module, KNOWN_PARAM_LAYERS) or type(module) in _CUSTOM_PRUNERS:
            continue
        raise ToolchainError(
            f"layer '{name}' ({type(module).__name__}) holds its own parameters, which the pruning tracer cannot "
            f"resize; register a pruner with toolchain.prune.groups.register_custom_pruner({type(module).__name__}, "
            "pruner) (see ARCHITECTURE.md, Pruning)")


def _trace(model: nn.Module, inputs: torch.Tensor):
    import torch_pruning as tp

    was_training = model.training
    model.eval()  # tracing must not update BN running statistics
    try:
        with torch.enable_grad():
            return tp.DependencyGraph().build_dependency(
                model, example_inputs=inputs, customized_pruners=dict(_CUSTOM_PRUNERS) or None, verbose=False)
    except ToolchainError:
        raise
    except (RuntimeError, AssertionError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise ToolchainError(
            f"the pruning tracer (torch_pruning) cannot handle {type(model).__name__}: {type(err).__name__}: {first}; "
            "register a pruner for the offending layer with toolchain.prune.groups.register_custom_pruner "
            "(see ARCHITECTURE.md, Pruning)") from None
    finally:
        model.train(was_training)


def _is_bn(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm)


def build_pruning_graph(model: nn.Module, input_size: tuple[int, int]) -> PruningGraph:
    """Trace `model` at `input_size` (batch 2) and list its prunable channel groups.

    A group is prunable when it has at least one BatchNorm gate and none of the model's output layers
    loses output channels in it. Raises ToolchainError when the model cannot be traced or has no group.
    """
    import torch_pruning as tp

    heads = output_layers(model, input_size)
    _check_known_layers(model, heads)
    dg = _trace(model, example_inputs(model, input_size))
    names = {module: name for name, module in model.named_modules()}
    groups: list[ChannelGroup] = []
    root_types = (tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)
    for tp_group in dg.get_all_groups(ignored_layers=list(heads), root_module_types=root_types):
        group = _describe_group(dg, tp_group, names, len(groups))
        if group is not None and group.bns:
            groups.append(group)
    if not groups:
        raise ToolchainError(f"the pruning tracer found no prunable channel group in {type(model).__name__} "
                             "(every prunable conv must be followed by a BatchNorm2d and reach the output)")
    return PruningGraph(model=model, dg=dg, groups=groups, input_size=(int(input_size[0]), int(input_size[1])),
                        names=names)


def _describe_group(dg, tp_group, names: dict, index: int) -> ChannelGroup | None:
    root_dep = tp_group[0].dep
    root = root_dep.target.module
    if root not in names:
        return None
    size = len(tp_group[0].idxs)
    bns: dict[str, BNSlot] = {}
    layers: list[LayerSlot] = []
    for item in tp_group:
        module = item.dep.target.module
        name = names.get(module)
        if name is None or not isinstance(module, nn.Module):
            continue  # functional ops (add, cat, ...) carry no weights
        idxs, root_idxs = list(item.idxs), list(item.root_idxs)
        if _is_bn(module):
            slot = bns.setdefault(name, BNSlot(name, [], []))
            slot.bn_index.extend(int(i) for i in idxs)
            slot.group_index.extend(int(r) for r in root_idxs)
            continue
        if not list(module.parameters(recurse=False)):
            continue
        dim = "out" if dg.is_out_channel_pruning_fn(item.dep.handler) else "in"
        layers.append(LayerSlot(name, dim, len(idxs) / size, [int(i) for i in idxs], [int(r) for r in root_idxs]))
    return ChannelGroup(index=index, root=names[root], size=size, bns=list(bns.values()), layers=layers)
