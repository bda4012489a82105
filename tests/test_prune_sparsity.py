"""ACSL / CAP / slimming / DepGraph sparsity math (ACSL.md sections 2-3) on small tensors."""
import pytest
import torch
import torch.nn as nn

from prune_nets import TinyResCat
from toolchain.config import SparsityConfig
from toolchain.prune.groups import build_pruning_graph
from toolchain.prune.sparsity import (ACSLRegulariser, SparsityDiverged, adaptive_strengths,
                                      cap_guide, cap_association, channel_affinity, make_regulariser, redundancy,
                                      sample_positions)


def test_identical_channels_have_affinity_one_and_independent_near_zero():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4096, generator=g)
    b = torch.randn(4096, generator=g)
    feats = torch.stack([a, 3 * a + 2, b])  # a scaled/shifted copy is still identical after centring/normalising
    affinity = channel_affinity(feats)
    assert affinity[0, 1].item() == pytest.approx(1.0, abs=1e-5)
    assert affinity[0, 2].item() < 0.05
    assert torch.all(affinity <= 1) and torch.all(affinity >= 0)
    assert torch.allclose(affinity.diagonal(), torch.ones(3), atol=1e-5)
    anti = channel_affinity(torch.stack([a, -a]))  # absolute correlation
    assert anti[0, 1].item() == pytest.approx(1.0, abs=1e-5)


def test_triplicated_channel_gets_larger_strength_than_unique():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(2, 1, 16, 16, generator=g)
    uniques = torch.randn(2, 3, 16, 16, generator=g)
    x = torch.cat([base, base, base, uniques], dim=1)  # channels 0-2 identical, 3-5 unique
    rho = redundancy(channel_affinity(sample_positions(x, 4096)))
    strengths = adaptive_strengths([rho], lam=1e-3)[0]
    assert strengths[:3].min() > strengths[3:].max()


def test_strengths_global_mean_equals_lambda_before_clipping():
    g = torch.Generator().manual_seed(2)
    rhos = [torch.rand(5, generator=g), torch.rand(11, generator=g) * 0.1, torch.rand(3, generator=g) + 2]
    unclipped = adaptive_strengths(rhos, lam=2e-4, apply_clip=False)
    assert torch.cat(unclipped).mean().item() == pytest.approx(2e-4, rel=1e-5)
    clipped = torch.cat(adaptive_strengths(rhos, lam=2e-4, clip=(0.1, 10.0)))
    assert clipped.min() >= 0.1 * 2e-4 - 1e-12 and clipped.max() <= 10 * 2e-4 + 1e-12


def test_sampling_bounds_positions():
    x = torch.randn(4, 6, 40, 40)
    assert sample_positions(x, 1000).shape == (6, 1000)
    assert sample_positions(torch.randn(2, 6, 4, 4), 1000).shape == (6, 32)


def test_cap_guide_mean_one_and_weak_self_association_pushed_harder():
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(4, 512, generator=g)
    feats[0] *= 5  # a strong channel associates mostly with itself
    guide = cap_guide(cap_association(feats))
    assert guide.mean().item() == pytest.approx(1.0, abs=1e-5)
    assert guide[0] == guide.min()


def _graph(width=8):
    torch.manual_seed(0)
    model = TinyResCat(width)
    return model, build_pruning_graph(model, (16, 16))


def test_coupled_residual_bns_share_one_strength():
    model, graph = _graph()
    reg = ACSLRegulariser(graph, 1e-3, refresh_every=1).attach()
    model.train()
    model(torch.randn(4, 3, 16, 16))
    reg.detach()
    strengths = reg.strengths()
    residual = [g for g in graph.groups if len(g.bns) >= 2]
    assert residual, "the residual add must couple stem and b"
    for group in residual:
        per_slot = [strengths[s.name][s.bn_index][torch.argsort(torch.tensor(s.group_index))] for s in group.bns]
        for other in per_slot[1:]:
            assert torch.allclose(per_slot[0], other)


def test_refresh_every_k_and_ema():
    model, graph = _graph()
    reg = ACSLRegulariser(graph, 1e-3, refresh_every=3, ema_momentum=0.9).attach()
    model.train()
    seen = []
    for _ in range(7):
        before = {k: v.clone() for k, v in reg.matrices.items()}
        model(torch.randn(2, 3, 16, 16))
        seen.append(any(k not in before or not torch.equal(before[k], v) for k, v in reg.matrices.items()))
    assert seen == [True, False, False, True, False, False, True]
    model.eval()
    before = {k: v.clone() for k, v in reg.matrices.items()}
    model(torch.randn(2, 3, 16, 16))  # eval forwards never update the affinity
    assert all(torch.equal(before[k], v) for k, v in reg.matrices.items())
    reg.detach()


def _train(model, reg, steps=40):
    torch.manual_seed(0)
    x = torch.randn(8, 3, 16, 16)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    model.train()
    for step in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        if reg is not None:
            reg.after_backward(model, step)
        opt.step()
        if reg is not None:
            reg.after_step(model, step, opt.param_groups[0]["lr"])
        losses.append(loss.item())
    gammas = torch.cat([m.weight.detach().abs() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    return losses, gammas.mean().item()


@pytest.mark.parametrize("method,mode", [("acsl", "proximal"), ("cap", "proximal"), ("slimming", "proximal"),
                                         ("acsl", "subgradient"), ("slimming", "subgradient"), ("depgraph", "proximal")])
def test_gammas_shrink_and_task_loss_decreases(method, mode):
    plain_model, _ = _graph()
    _, plain_gamma = _train(plain_model, None)
    model, graph = _graph()
    cfg = SparsityConfig(lam=5e-3 if method != "depgraph" else 1e-2, refresh_every=2, mode=mode)
    reg = make_regulariser(method, graph, cfg).attach()
    losses, gamma = _train(model, reg)
    reg.detach()
    assert losses[-1] < 0.7 * losses[0]
    assert gamma < plain_gamma


def test_nan_gradient_names_the_lambda():
    model, graph = _graph()
    reg = make_regulariser("acsl", graph, SparsityConfig(lam=1e-3))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.grad = torch.full_like(m.weight, float("nan"))
    with pytest.raises(SparsityDiverged, match="prune.sparsity.lam"):
        reg.after_backward(model, 5)
