"""Channel selection: global ranking of coupled channel groups under a budget.

A budget is `params=F` or `flops=F`, F the fraction of parameters or multiply-accumulates removed, or
`latency=12ms`: the predicted latency on the deployment target (toolchain.profile.layer_latency), with
channels ranked by saliency per unit of latency they save (`latency_weighted_saliency`, HALP-style).
Selection takes *any* cost function of the kept width of every group (`cost(kept) -> float`), so a
latency model per group (targets issue) plugs in beside the exact parameter / MAC counts of
`CostModel`. Every channel of every group gets a saliency; channels are removed lowest-first
globally until the cost meets the budget, keeping at least max(min_channels, min_fraction * C)
channels per group and rounding kept widths up to a multiple of `round_to`
(`resolve_round_to`: an integer, or the deployment target's `channel_multiple` for a precision, the
kernels' vector / tensor-core width: NCHWc block on ONNX Runtime CPU, HWC8 / CHW32 on TensorRT).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.prune.groups import PruningGraph, round_up

BUDGET_KINDS = ("params", "flops", "latency")
_BUDGET_RE = re.compile(r"^\s*(params|flops)\s*=\s*([0-9]*\.?[0-9]+)\s*$")
_LATENCY_RE = re.compile(r"^\s*latency\s*=\s*([0-9]*\.?[0-9]+)\s*ms\s*$")


@dataclass(frozen=True)
class Budget:
    kind: str   # "params" | "flops" | "latency"
    value: float  # params / flops: fraction removed, 0 < value < 1; latency: milliseconds

    def tag(self) -> str:
        return f"latency{self.value:g}ms" if self.kind == "latency" else f"{self.kind}{self.value:g}"

    def target_cost(self, dense_cost: float) -> float:
        """The cost selection must reach: (1 - F) x dense for params / flops, the ms for latency."""
        return self.value if self.kind == "latency" else (1 - self.value) * dense_cost

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value}


def parse_budget(text: str) -> Budget:
    """`params=0.8` / `flops=0.6` / `latency=12ms` -> Budget; anything else is a one-line ToolchainError."""
    latency = _LATENCY_RE.match(str(text))
    if latency:
        ms = float(latency.group(1))
        if not ms > 0:
            raise ToolchainError(f"budget '{text}': the latency must be positive, e.g. latency=12ms")
        return Budget("latency", ms)
    match = _BUDGET_RE.match(str(text))
    if not match:
        raise ToolchainError(f"budget '{text}' is not valid; write params=F or flops=F with F the fraction removed "
                             "in (0, 1), e.g. params=0.8, or latency=Tms (predicted on deploy.target), "
                             "e.g. latency=12ms")
    value = float(match.group(2))
    if not 0 < value < 1:
        raise ToolchainError(f"budget '{text}': the fraction removed must be between 0 and 1 (exclusive), e.g. params=0.5")
    return Budget(match.group(1), value)


class CostModel:
    """Exact parameter and MAC counts of the model as a function of each group's kept width.

    Counts follow toolchain.models.complexity (conv: output elements x in/groups x k; transposed conv:
    input elements x out/groups x k; linear: outputs x in_features; params: every parameter). Layers no
    group touches contribute a constant.
    """

    def __init__(self, graph: PruningGraph):
        self.graph = graph
        self.sizes = [g.size for g in graph.groups]
        self._layers: dict[str, dict] = {}
        spatial = _spatial_sizes(graph.model, graph.input_size)
        for module_name, module in graph.model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                self._layers[module_name] = {"module": module, "out": [], "in": [], "spatial": spatial.get(module_name, 0)}
        for group in graph.groups:
            for slot in group.layers:
                if slot.name in self._layers:
                    self._layers[slot.name][slot.dim].append((group.index, slot.per_channel))
            for bn in group.bns:
                self._layers[bn.name]["out"].append((group.index, len(bn.bn_index) / group.size))
        from toolchain.models.complexity import count_params

        full = [0] * len(self.sizes)
        self.other_params = count_params(graph.model) - self._params(full)
        self.dense = {"params": self._params(full) + self.other_params, "flops": self._macs(full)}

    # kept widths -> per-layer sizes -----------------------------------------------------------------
    def _shrunk(self, info: dict, dim: str, total: int, removed: Sequence[int]) -> float:
        return total - sum(removed[g] * per for g, per in info[dim])

    def _layer_dims(self, info: dict, removed: Sequence[int]) -> tuple[float, float, nn.Module]:
        m = info["module"]
        if isinstance(m, nn.Linear):
            return self._shrunk(info, "out", m.out_features, removed), self._shrunk(info, "in", m.in_features, removed), m
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = self._shrunk(info, "out", m.num_features, removed)
            return c, c, m
        return self._shrunk(info, "out", m.out_channels, removed), self._shrunk(info, "in", m.in_channels, removed), m

    def _weights(self, info: dict, removed: Sequence[int]) -> float:
        out, inp, m = self._layer_dims(info, removed)
        if isinstance(m, nn.Linear):
            return out * inp
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return 0.0
        k = m.kernel_size[0] * m.kernel_size[1]
        if m.groups > 1 and m.groups == m.in_channels == m.out_channels:  # depthwise: shrinks with its channels
            return out * k
        return out * inp / m.groups * k

    def _params(self, removed: Sequence[int]) -> float:
        total = 0.0
        for info in self._layers.values():
            out, _, m = self._layer_dims(info, removed)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                total += 2 * out if m.affine else 0
                continue
            total += self._weights(info, removed) + (out if m.bias is not None else 0)
        return total

    def _macs(self, removed: Sequence[int]) -> float:
        return sum(self._weights(info, removed) * info["spatial"] for info in self._layers.values())

    # public ---------------------------------------------------------------------------------------
    def params(self, kept: Sequence[int]) -> float:
        return self._params([s - k for s, k in zip(self.sizes, kept)]) + self.other_params

    def macs(self, kept: Sequence[int]) -> float:
        return self._macs([s - k for s, k in zip(self.sizes, kept)])

    def cost_fn(self, kind: str) -> Callable[[Sequence[int]], float]:
        if kind == "params":
            return self.params
        if kind == "flops":
            return self.macs
        if kind == "latency":
            raise ToolchainError("a latency budget needs the target's latency table "
                                 "(toolchain.profile.layer_latency.LatencyModel), not the parameter / MAC counts")
        raise ToolchainError(f"unknown budget kind '{kind}' (valid: {', '.join(BUDGET_KINDS)})")


ROUND_TO_TARGET = "target"


def resolve_round_to(round_to, target: str | None = None, precision: str | None = None) -> tuple[int, dict]:
    """`prune.round_to` -> (multiple, record). An int is used as is; `target` or `target:PRECISION` reads
    `channel_multiple[precision]` of the deployment target (`deploy.target`; precision: the target's
    default precision unless named), 1 when the target lists none for that precision."""
    if isinstance(round_to, int) and not isinstance(round_to, bool):
        if round_to < 1:
            raise ToolchainError(f"prune.round_to must be >= 1, got {round_to}")
        return round_to, {"round_to": round_to, "source": "config"}
    text = str(round_to).strip()
    head, _, named = text.partition(":")
    if head != ROUND_TO_TARGET:
        raise ToolchainError(f"prune.round_to '{round_to}' is not valid; write an integer (e.g. 8), 'target' or "
                             "'target:fp16' (the deployment target's channel_multiple)")
    if not target:
        raise ToolchainError("prune.round_to: target needs a deployment target; set deploy.target (e.g. cpu)")
    from toolchain.targets import load_target

    t = load_target(target)
    precision = named or precision or t.default_precision
    t.require_precision(precision)
    multiple = int(t.channel_multiple.get(precision, 1))
    return multiple, {"round_to": multiple, "source": f"target {t.name} {precision}", "target": t.name,
                      "precision": precision}


def _spatial_sizes(model: nn.Module, input_size: tuple[int, int]) -> dict[str, int]:
    """Per conv / linear: the spatial factor of its MAC count for one image (see CostModel)."""
    from toolchain.models.complexity import probe_forward

    sizes: dict[str, int] = {}
    hooks = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            def hook(mod, inputs, output, name=name):
                if isinstance(mod, nn.Conv2d):
                    sizes[name] = output[0, 0].numel()
                elif isinstance(mod, nn.ConvTranspose2d):
                    sizes[name] = inputs[0][0, 0].numel()
                else:
                    sizes[name] = output[0].numel() // mod.out_features
            hooks[module] = hook
    probe_forward(model, hooks, input_size)
    return sizes


@dataclass
class Selection:
    removed: dict[int, list[int]]  # group index -> removed root channel indices (sorted)
    kept: list[int]                # kept width per group
    cost_before: float
    cost_after: float
    budget: Budget

    @property
    def fraction_removed(self) -> float:
        return 1 - self.cost_after / self.cost_before if self.cost_before else 0.0


def select_channels(graph: PruningGraph, saliency: Sequence[torch.Tensor], budget: Budget,
                    cost: Callable[[Sequence[int]], float], *, min_channels: int = 8, min_fraction: float = 0.1,
                    round_to: int = 1) -> Selection:
    """Remove the globally least salient channels until `cost(kept) <= (1 - budget.value) * cost(dense)`."""
    groups = graph.groups
    if len(saliency) != len(groups) or any(s.numel() != g.size for s, g in zip(saliency, groups)):
        raise ValueError("one saliency vector per group, with one value per group channel, is required")
    sizes = [g.size for g in groups]
    min_keep = [g.min_keep(min_channels, min_fraction, round_to) for g in groups]
    order_in_group = [torch.argsort(s.detach().float().cpu(), stable=True).tolist() for s in saliency]
    flat = torch.cat([s.detach().float().cpu() for s in saliency])
    owner = torch.cat([torch.full((g.size,), i, dtype=torch.long) for i, g in enumerate(groups)])
    ranked_owner = owner[torch.argsort(flat, stable=True)].tolist()
    prefix_counts = _prefix_counts(ranked_owner, len(groups))

    def kept_after(n: int) -> list[int]:
        counts = prefix_counts(n)
        return [min(size, round_up(max(size - c, floor), round_to)) for size, c, floor in zip(sizes, counts, min_keep)]

    dense_cost = cost(sizes)
    target = budget.target_cost(dense_cost)
    smallest = cost(kept_after(len(ranked_owner)))
    if smallest > target + 1e-9 * dense_cost and budget.kind == "latency":
        raise ToolchainError(
            f"budget latency={budget.value:g}ms cannot be met: keeping at least max({min_channels}, "
            f"{min_fraction:g} x C) channels per layer (rounded to {round_to}), the smallest predicted latency is {smallest:.3g} ms "
            f"(dense {dense_cost:.3g} ms); raise the budget or lower prune.min_channels / prune.min_fraction")
    if smallest > target + 1e-9 * dense_cost:
        reachable = 1 - smallest / dense_cost
        raise ToolchainError(
            f"budget {budget.kind}={budget.value:g} cannot be met: keeping at least max({min_channels}, "
            f"{min_fraction:g} x C) channels per layer (rounded to {round_to}), the largest reachable fraction is "
            f"{budget.kind}={reachable:.3f}; lower the budget or prune.min_channels / prune.min_fraction")
    lo, hi = 0, len(ranked_owner)  # smallest n whose cost meets the target
    while lo < hi:
        mid = (lo + hi) // 2
        if cost(kept_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    kept = kept_after(lo)
    removed = {g.index: sorted(order_in_group[i][: g.size - kept[i]]) for i, g in enumerate(groups)
               if kept[i] < g.size}
    return Selection(removed=removed, kept=kept, cost_before=dense_cost, cost_after=cost(kept), budget=budget)


def budget_cost(cfg, graph: PruningGraph, cost_model: CostModel, budget: Budget, saliency: Sequence[torch.Tensor],
                round_to: int = 1):
    """(cost function, saliency to rank, latency record or None) for `budget`. A latency budget measures (or
    loads from `<out_dir>/latency_tables/`) the per-layer table of `graph` on `deploy.target` and ranks
    channels by saliency per ms saved; the record gets `predicted_ms` / `measured_ms` from `latency_report`."""
    if budget.kind != "latency":
        return cost_model.cost_fn(budget.kind), list(saliency), None
    from pathlib import Path

    from toolchain.profile.layer_latency import LatencyModel, build_latency_table
    from toolchain.targets import load_target

    target = load_target(cfg.deploy.target)
    table = build_latency_table(graph, target, cache_dir=Path(cfg.out_dir) / "latency_tables", round_to=round_to)
    model = LatencyModel(graph, table)
    record = {"target": target.name, "machine": table.data["machine"], "threads": table.data["threads"],
              "budget_ms": budget.value, "dense_measured_ms": table.dense_model_ms,
              "dense_predicted_ms": model(model.sizes), "table_points": table.data["points"]}
    return model, latency_weighted_saliency(saliency, model.per_channel_gain()), record


def latency_report(record: dict | None, selection: "Selection") -> None:
    """Fill a latency record (from `budget_cost`) with the predicted ms of the chosen plan and its measured ms:
    its timing against dense by `calibrated_latency_selection`, in the table's ms (load-robust)."""
    if record is None:
        return
    record["predicted_ms"] = selection.cost_after
    record["measured_ms"] = record["calibration"][record["calibration_chosen"]]["measured_ms"]
    record["measured_over_budget"] = record["measured_ms"] / record["budget_ms"]


def latency_weighted_saliency(saliency: Sequence[torch.Tensor], gains: Sequence[float],
                              floor: float = 0.05) -> list[torch.Tensor]:
    """Saliency per unit of latency: each group's scores divided by the predicted ms a channel of that group
    saves (`gains`, e.g. LatencyModel.per_channel_gain()), relative to the mean saving (floored at `floor` x
    the mean, so a group whose removal the table cannot see is not emptied first)."""
    gain = torch.tensor([float(g) for g in gains])
    mean = gain[gain > 0].mean() if (gain > 0).any() else torch.tensor(1.0)
    relative = (gain / mean).clamp_min(floor)
    return [s.detach().float().cpu() / relative[i] for i, s in enumerate(saliency)]


def _prefix_counts(ranked_owner: list[int], n_groups: int) -> Callable[[int], list[int]]:
    """counts(n): how many of the n globally lowest channels fall in each group."""
    cumulative = [[0] * n_groups]
    running = [0] * n_groups
    step = 64  # checkpoints every 64 channels keep memory small
    for i, g in enumerate(ranked_owner, 1):
        running[g] += 1
        if i % step == 0:
            cumulative.append(list(running))

    def counts(n: int) -> list[int]:
        base = list(cumulative[n // step])
        for g in ranked_owner[(n // step) * step: n]:
            base[g] += 1
        return base
    return counts
