"""Sparsity regularisers on the prunable BN gammas, hooked into `fit()`.

Two ways to apply a gamma method's per-channel strength lambda_c (`prune.sparsity.mode`, docs/SPARSITY.md):

- `proximal` (default): after each optimiser step (`after_step(model, step, lr)`), the decoupled proximal
  step of the L1 term, gamma <- sign(gamma) * max(|gamma| - lr_t * lambda_c, 0). The optimiser never sees
  the penalty, so Adam/AdamW cannot normalise it away, and gammas reach exact zeros. With
  `prune.sparsity.keep_floor` (default) the largest max(min_channels, ceil(min_fraction x C)) gammas of
  each layer - the channels selection keeps in any case - are not shrunk, so no layer is zeroed whole
  (a zeroed layer cuts a chain network: its output no longer depends on the input). With
  `prune.sparsity.with_beta` (default) the step shrinks the pair (gamma_c, beta_c) together: the proximal
  operator of lr_t * lambda_c * ||(gamma_c, beta_c)||_2, (gamma, beta) <- (gamma, beta) * max(1 - lr_t *
  lambda_c / ||(gamma, beta)||, 0). A channel whose gamma alone is zero still outputs its constant beta,
  and removing it changes the network; a zeroed pair outputs exactly 0 and removing it is lossless.
- `subgradient` (the old behaviour, kept for the record): lambda_c * sign(gamma) added to gamma.grad after
  `loss.backward()` (`after_backward(model, step)`). Under Adam/AdamW the update is normalised per
  parameter, so a gamma moves about lr per step whatever lambda_c is.

The regularisers (per-channel strength lambda_c):

- `ACSLRegulariser`  ACSL.md section 3: channel affinity from forward hooks on the prunable BN outputs
  (centred, normalised, absolute correlation over at most `max_positions` sampled positions, refreshed
  every `refresh_every` training forwards, EMA with `ema_momentum`), redundancy rho, adaptive strength
  lambda_{l,c} = lam * rho_{l,c} / mean(rho) clipped to [clip[0], clip[1]] x lam; coupled channels share the
  mean strength of their group.
- `CAPRegulariser`   ACSL.md section 2: association A = softmax_rows(F F^T / P) (P sampled positions; the
  1/P keeps the softmax out of saturation, a documented choice), guide g = 1 - diag(A) / max(diag(A))
  rescaled to mean 1 per layer; strength lam * g.
- `SlimmingRegulariser` Network Slimming: the uniform strength lam on every prunable BN gamma.
- `GroupNormRegulariser` DepGraph group-norm sparse learning: Torch-Pruning's GroupNormPruner.regularize
  (a gradient term on whole groups of weights, not a gamma L1: `mode` does not apply to it).

A non-finite gamma gradient (the loss blew up) raises `SparsityDiverged` naming the lambda to lower.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from toolchain.errors import ToolchainError
from toolchain.prune.groups import PruningGraph, example_inputs, output_layers

EPS = 1e-12
SPARSITY_MODES = ("proximal", "subgradient")


class SparsityDiverged(ToolchainError):
    """Sparsity learning produced non-finite gradients."""


# ---------------------------------------------------------------------------------------------- math
def sample_positions(x: torch.Tensor, max_positions: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """B x C x H x W (or B x C) -> C x P features, P <= max_positions positions sampled without replacement."""
    channels = x.shape[1]
    feats = x.detach().transpose(0, 1).reshape(channels, -1).float()
    n = feats.shape[1]
    if n > max_positions:
        idx = torch.randperm(n, generator=generator)[:max_positions].to(feats.device)
        feats = feats.index_select(1, idx)
    return feats


def channel_affinity(feats: torch.Tensor) -> torch.Tensor:
    """|correlation| of the rows of a C x P matrix: centred, normalised, absolute; in [0, 1]."""
    centred = feats - feats.mean(dim=1, keepdim=True)
    rows = centred / centred.norm(dim=1, keepdim=True).clamp_min(EPS)
    return (rows @ rows.t()).abs().clamp_(max=1.0)


def redundancy(affinity: torch.Tensor) -> torch.Tensor:
    """rho_c = (1 / (C - 1)) * sum_{j != c} A[c, j]."""
    channels = affinity.shape[0]
    if channels < 2:
        return torch.zeros(channels, device=affinity.device)
    return (affinity.sum(dim=1) - affinity.diagonal()) / (channels - 1)


def adaptive_strengths(rhos: list[torch.Tensor], lam: float, clip: tuple[float, float] = (0.1, 10.0),
                       apply_clip: bool = True) -> list[torch.Tensor]:
    """lambda_{l,c} = lam * rho_{l,c} / mean over all layers and channels of rho, clipped to clip x lam."""
    mean = torch.cat([r.flatten() for r in rhos]).mean()
    if not torch.isfinite(mean) or mean <= EPS:
        return [torch.full_like(r, lam) for r in rhos]
    out = [lam * r / mean for r in rhos]
    if apply_clip:
        out = [s.clamp(clip[0] * lam, clip[1] * lam) for s in out]
    return out


def cap_association(feats: torch.Tensor) -> torch.Tensor:
    """CAP channel association softmax_rows(F F^T / P) of a C x P feature matrix."""
    return torch.softmax(feats @ feats.t() / max(feats.shape[1], 1), dim=1)


def cap_guide(association: torch.Tensor) -> torch.Tensor:
    """g = 1 - diag(A) / max(diag(A)), rescaled to mean 1 (uniform 1 when every channel is alike)."""
    diag = association.diagonal()
    guide = 1 - diag / diag.max().clamp_min(EPS)
    mean = guide.mean()
    if mean <= 1e-6:
        return torch.ones_like(guide)
    return guide / mean


def soft_threshold(x: torch.Tensor, threshold: torch.Tensor | float) -> torch.Tensor:
    """The proximal operator of threshold * |x|: sign(x) * max(|x| - threshold, 0) (exact zeros below it)."""
    return torch.sign(x) * torch.clamp(x.abs() - threshold, min=0)


@torch.no_grad()
def shrink_pair(gamma: torch.Tensor, beta: torch.Tensor, threshold: torch.Tensor) -> None:
    """In place: the proximal operator of threshold * ||(gamma_c, beta_c)||_2 per channel (group soft-threshold):
    both scaled by max(1 - threshold / norm, 0), so they reach exactly zero together."""
    norm = torch.sqrt(gamma * gamma + beta * beta)
    scale = torch.clamp(1 - threshold / norm.clamp_min(EPS), min=0)
    gamma.mul_(scale)
    beta.mul_(scale)


def share_within_groups(graph: PruningGraph, per_bn: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Coupled channels share one strength: the mean over the group's BN channels it maps to."""
    shared = {name: s.clone() for name, s in per_bn.items()}
    for group in graph.groups:
        if len(group.bns) < 2:
            continue
        device = next(iter(per_bn.values())).device
        total = torch.zeros(group.size, device=device)
        count = torch.zeros(group.size, device=device)
        for slot in group.bns:
            gi = torch.tensor(slot.group_index, device=device)
            total.index_add_(0, gi, per_bn[slot.name][slot.bn_index])
            count.index_add_(0, gi, torch.ones(len(gi), device=device))
        mean = total / count.clamp_min(1)
        for slot in group.bns:
            shared[slot.name][slot.bn_index] = mean[slot.group_index]
    return shared


# ---------------------------------------------------------------------------------------------- regularisers
class Regulariser:
    """Base: holds the prunable BN layers and applies lambda_c to their gammas through fit()'s hooks:
    `after_backward(model, step)` (subgradient mode; the finiteness check in both modes) and
    `after_step(model, step, lr)` (proximal mode, lr the learning rate of the step just taken)."""
    name = "base"

    def __init__(self, graph: PruningGraph, lam: float, mode: str = "proximal", floor: Optional[dict[str, int]] = None,
                 with_beta: bool = False):
        if mode not in SPARSITY_MODES:
            raise ToolchainError(f"unknown prune.sparsity.mode '{mode}' (valid: {', '.join(SPARSITY_MODES)})")
        self.graph = graph
        self.lam = float(lam)
        self.mode = mode
        self.bns: dict[str, nn.Module] = {n: graph.module(n) for n in graph.bn_names()}
        self.floor = {n: int(k) for n, k in (floor or {}).items() if n in self.bns and k > 0}
        self.with_beta = bool(with_beta)
        self.steps = 0
        self.lr_sum = 0.0  # sum of lr_t over the steps taken: lam * lr_sum bounds how far the proximal step moves a gamma

    def attach(self) -> "Regulariser":
        return self

    def detach(self) -> None:
        pass

    def strengths(self) -> dict[str, torch.Tensor]:
        return {n: torch.full_like(bn.weight.detach(), self.lam) for n, bn in self.bns.items()}

    def _check_finite(self, step: int) -> None:
        for name, bn in self.bns.items():
            grad = bn.weight.grad
            if grad is not None and not torch.isfinite(grad).all():
                raise SparsityDiverged(
                    f"{self.name} sparsity learning diverged at step {step} (non-finite gradient in '{name}'); "
                    f"lower prune.sparsity.lam (now {self.lam:g}) or prune.sparsity.lr")

    def __call__(self, model: nn.Module, step: int) -> None:
        self.after_backward(model, step)

    def after_backward(self, model: nn.Module, step: int) -> None:
        self._check_finite(step)
        if self.mode != "subgradient":
            return
        strengths = self.strengths()
        with torch.no_grad():
            for name, bn in self.bns.items():
                if bn.weight.grad is None:
                    continue
                bn.weight.grad.add_(strengths[name].to(bn.weight.device) * torch.sign(bn.weight.detach()))

    def after_step(self, model: nn.Module, step: int, lr: float) -> None:
        """Proximal mode: gamma <- sign(gamma) * max(|gamma| - lr * lambda_c, 0) on every prunable gamma."""
        self.steps += 1
        self.lr_sum += float(lr)
        if self.mode != "proximal":
            return
        strengths = self.strengths()
        alive = False
        with torch.no_grad():
            for name, bn in self.bns.items():
                weight = bn.weight
                threshold = float(lr) * strengths[name].to(weight.device, weight.dtype)
                keep = min(self.floor.get(name, 0), weight.numel())
                if keep:  # the largest `keep` gammas: selection keeps them anyway
                    threshold = threshold.clone()
                    threshold[weight.detach().abs().topk(keep).indices] = 0
                if self.with_beta and bn.bias is not None:
                    shrink_pair(weight, bn.bias, threshold)
                else:
                    weight.copy_(soft_threshold(weight, threshold))
                alive = alive or int(weight.count_nonzero()) > keep
        if self.bns and not alive:
            what = ("every gamma selection could remove (nothing is left to rank)" if self.floor else
                    "every prunable gamma (the network's output no longer depends on its input)")
            raise SparsityDiverged(f"{self.name} sparsity learning zeroed {what} by step {step}; lower "
                                   f"prune.sparsity.lam (now {self.lam:g}) or prune.sparsity.lr")

    def describe(self) -> dict:
        s = self.strengths()
        flat = torch.cat([v.flatten() for v in s.values()]) if s else torch.zeros(1)
        return {"method": self.name, "lam": self.lam, "mode": self.mode, "keep_floor": bool(self.floor),
                "with_beta": self.with_beta,
                "strength_min": float(flat.min()),
                "strength_mean": float(flat.mean()), "strength_max": float(flat.max()), "steps": self.steps,
                "lr_sum": round(self.lr_sum, 6), "shrink_budget": round(self.lam * self.lr_sum, 6)}


class SlimmingRegulariser(Regulariser):
    """Network Slimming: uniform L1 on the prunable gammas."""
    name = "slimming"


class _AffinityRegulariser(Regulariser):
    """Shared machinery of ACSL and CAP: BN forward hooks, sampled refresh, EMA of a C x C matrix."""

    def __init__(self, graph: PruningGraph, lam: float, *, refresh_every: int = 10, ema_momentum: float = 0.9,
                 clip: tuple[float, float] = (0.1, 10.0), max_positions: int = 4096, seed: int = 0,
                 mode: str = "proximal", floor: Optional[dict[str, int]] = None, with_beta: bool = False):
        super().__init__(graph, lam, mode, floor, with_beta)
        self.refresh_every = int(refresh_every)
        self.ema_momentum = float(ema_momentum)
        self.clip = (float(clip[0]), float(clip[1]))
        self.max_positions = int(max_positions)
        self.generator = torch.Generator().manual_seed(seed)
        self.matrices: dict[str, torch.Tensor] = {}
        self._forwards = 0
        self._capturing = False
        self._handles: list = []
        self._cached: Optional[dict[str, torch.Tensor]] = None

    def matrix(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def per_layer(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def attach(self) -> "_AffinityRegulariser":
        model = self.graph.model
        self._handles.append(model.register_forward_pre_hook(self._pre_forward))
        for name, bn in self.bns.items():
            self._handles.append(bn.register_forward_hook(self._bn_hook(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _pre_forward(self, module: nn.Module, inputs) -> None:
        if module.training:
            self._capturing = self._forwards % self.refresh_every == 0
            self._forwards += 1
        else:
            self._capturing = False

    def _bn_hook(self, name: str):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            if self._capturing and module.training:
                self.observe(name, output)
        return hook

    @torch.no_grad()
    def observe(self, name: str, output: torch.Tensor) -> None:
        """Fold one batch of BN output into the EMA matrix of layer `name`."""
        current = self.matrix(sample_positions(output, self.max_positions, self.generator))
        previous = self.matrices.get(name)
        if previous is None:
            self.matrices[name] = current
        else:
            previous.mul_(self.ema_momentum).add_(current, alpha=1 - self.ema_momentum)
        self._cached = None

    def strengths(self) -> dict[str, torch.Tensor]:
        if len(self.matrices) < len(self.bns):
            return super().strengths()  # until every layer has been observed once
        if self._cached is None:
            self._cached = share_within_groups(self.graph, self.per_layer())
        return self._cached


class ACSLRegulariser(_AffinityRegulariser):
    """Adaptive correlation-driven sparsity learning (ACSL.md section 3)."""
    name = "acsl"

    def matrix(self, feats: torch.Tensor) -> torch.Tensor:
        return channel_affinity(feats)

    def redundancies(self) -> dict[str, torch.Tensor]:
        return {n: redundancy(self.matrices[n]) for n in self.bns}

    def per_layer(self) -> dict[str, torch.Tensor]:
        rhos = self.redundancies()
        names = list(rhos)
        values = adaptive_strengths([rhos[n] for n in names], self.lam, self.clip)
        return dict(zip(names, values))


class CAPRegulariser(_AffinityRegulariser):
    """Context-aware guided sparsification (ACSL.md section 2)."""
    name = "cap"

    def matrix(self, feats: torch.Tensor) -> torch.Tensor:
        return cap_association(feats)

    def per_layer(self) -> dict[str, torch.Tensor]:
        return {n: self.lam * cap_guide(self.matrices[n]) for n in self.bns}


class GroupNormRegulariser(Regulariser):
    """DepGraph group-norm sparse learning through Torch-Pruning's GroupNormPruner: a gradient term on whole
    groups of weights (its own method), so `prune.sparsity.mode` does not apply and it reports mode 'group-norm'."""
    name = "depgraph"

    def __init__(self, graph: PruningGraph, lam: float):
        super().__init__(graph, lam)
        self.mode = "group-norm"
        import torch_pruning as tp

        model = graph.model
        was_training = model.training
        model.eval()
        try:
            self.pruner = tp.pruner.GroupNormPruner(
                model, example_inputs(model, graph.input_size), importance=tp.importance.GroupMagnitudeImportance(p=2),
                reg=self.lam, ignored_layers=output_layers(model))
        finally:
            model.train(was_training)

    def after_backward(self, model: nn.Module, step: int) -> None:
        self._check_finite(step)
        self.pruner.regularize(model)


SPARSITY_METHODS = ("acsl", "cap", "slimming", "depgraph")


def selection_floor(graph: PruningGraph, min_channels: int, min_fraction: float, round_to: int = 1) -> dict[str, int]:
    """Per prunable BN, how many channels selection keeps at least (its group's min_keep, at most the BN's width)."""
    floor: dict[str, int] = {}
    for group in graph.groups:
        keep = group.min_keep(min_channels, min_fraction, round_to)
        for slot in group.bns:
            floor[slot.name] = max(floor.get(slot.name, 0), min(keep, len(slot.bn_index)))
    return floor


def make_regulariser(method: str, graph: PruningGraph, sparsity_cfg, seed: int = 0, prune_cfg=None) -> Regulariser:
    """The regulariser of `method` with cfg.prune.sparsity hyperparameters (mode: proximal or subgradient).
    `prune_cfg` (cfg.prune) supplies the selection floor that `keep_floor` exempts from the proximal step."""
    s = sparsity_cfg
    mode = getattr(s, "mode", "proximal")
    floor = None
    if prune_cfg is not None and getattr(s, "keep_floor", True):
        floor = selection_floor(graph, prune_cfg.min_channels, prune_cfg.min_fraction, prune_cfg.round_to)
    beta = bool(getattr(s, "with_beta", False))
    if method == "acsl":
        return ACSLRegulariser(graph, s.lam, refresh_every=s.refresh_every, ema_momentum=s.ema_momentum,
                               clip=tuple(s.clip), max_positions=s.max_positions, seed=seed, mode=mode, floor=floor,
                               with_beta=beta)
    if method == "cap":
        return CAPRegulariser(graph, s.lam, refresh_every=s.refresh_every, ema_momentum=s.ema_momentum,
                              clip=tuple(s.clip), max_positions=s.max_positions, seed=seed, mode=mode, floor=floor,
                              with_beta=beta)
    if method == "slimming":
        return SlimmingRegulariser(graph, s.lam, mode=mode, floor=floor, with_beta=beta)
    if method == "depgraph":
        return GroupNormRegulariser(graph, s.lam)
    raise ToolchainError(f"method '{method}' has no sparsity-learning phase (those that do: {', '.join(SPARSITY_METHODS)})")
