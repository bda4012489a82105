"""Issue 11: the gamma saliency of ACSL / CAP / Network Slimming / BN-scale compares groups fairly.

A coupled group gated by k BatchNorms (a residual chain, an inverted-residual expansion + depthwise pair)
must not score k times a single-BN group: with the old raw sum such groups were never pruned.
"""
import pytest
import torch

from prune_nets import TinyResCat
from toolchain.config import validate_config
from toolchain.errors import ToolchainError
from toolchain.models import create_model
from toolchain.prune.groups import build_pruning_graph
from toolchain.prune.importance import GROUP_REDUCTIONS, channel_saliency, gamma_saliency
from toolchain.prune.methods import METHODS, get_method
from toolchain.prune.select import CostModel, parse_budget, select_channels

GAMMA_METHODS = ("acsl", "cap", "slimming", "bn-scale")


def _iid_gammas(model, seed=0):
    """Every BN draws its |gamma| from the same distribution: a fair reduction prunes every kind of group."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.9 + 0.1


def _removed_fraction(graph, kept, which):
    groups = [(gr.size, k) for gr, k in zip(graph.groups, kept) if which(gr)]
    assert groups, "the model must have groups of this kind"
    return sum(size - k for size, k in groups) / sum(size for size, _ in groups)


def test_every_gamma_method_uses_the_bn_scale_saliency():
    assert {m.name for m in METHODS.values() if m.saliency == "bn-scale"} == set(GAMMA_METHODS)


def test_reductions_on_a_residual_pair():
    torch.manual_seed(0)
    model = TinyResCat(width=8)
    _iid_gammas(model)
    graph = build_pruning_graph(model, (16, 16))
    stem = next(g for g in graph.groups if g.root == "stem.0")
    assert len(stem.bns) == 2
    gammas = []
    for slot in stem.bns:
        gamma = graph.module(slot.name).weight.detach().abs()[slot.bn_index]
        gammas.append(torch.zeros(stem.size).index_copy(0, torch.tensor(slot.group_index), gamma))
    raw = torch.stack(gammas)
    normalised = raw / raw.mean(dim=1, keepdim=True)
    assert torch.allclose(gamma_saliency(graph, stem, "sum"), raw.sum(0))
    assert torch.allclose(gamma_saliency(graph, stem, "mean"), normalised.mean(0))
    assert torch.allclose(gamma_saliency(graph, stem, "max"), normalised.max(0).values)
    # mean: every group's scores average 1, whatever its BN count
    for group, score in zip(graph.groups, channel_saliency("bn-scale", graph, group_reduction="mean")):
        assert abs(score.mean().item() - 1) < 1e-5, group.root


def test_group_reduction_is_validated():
    torch.manual_seed(0)
    graph = build_pruning_graph(TinyResCat(width=8), (16, 16))
    with pytest.raises(ToolchainError, match="group_reduction"):
        channel_saliency("bn-scale", graph, group_reduction="median")
    base = {"name": "x", "task": "segmentation", "model": {"name": "segnet"},
            "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3}}
    assert validate_config(base).prune.group_reduction == "mean"
    assert set(GROUP_REDUCTIONS) == {"mean", "max", "sum"}
    with pytest.raises(ToolchainError):
        validate_config({**base, "prune": {"group_reduction": "median"}})


def _select(graph, method, reduction, budget="params=0.5"):
    saliency = channel_saliency(get_method(method).saliency, graph, group_reduction=reduction)
    return select_channels(graph, saliency, parse_budget(budget), CostModel(graph).params, min_channels=2,
                           min_fraction=0.1)


@pytest.mark.parametrize("method", GAMMA_METHODS)
def test_resnet56_residual_groups_lose_channels(method):
    """ResNet-56: each stage's residual chain is one group gated by ~10 BNs."""
    torch.manual_seed(0)
    model = create_model("resnet56", 10, width=0.25)
    _iid_gammas(model)
    graph = build_pruning_graph(model, (32, 32))
    residual = [gr for gr in graph.groups if len(gr.bns) >= 3]
    assert len(residual) == 3
    fair = _select(graph, method, "mean")
    assert all(k < gr.size for gr, k in zip(graph.groups, fair.kept) if len(gr.bns) >= 3)
    assert _removed_fraction(graph, fair.kept, lambda gr: len(gr.bns) >= 3) >= 0.15
    # the raw sum (before issue 11) never reaches them
    legacy = _select(graph, method, "sum")
    assert _removed_fraction(graph, legacy.kept, lambda gr: len(gr.bns) >= 3) == 0


def test_mobilenet_residual_and_depthwise_groups_lose_channels():
    """MobileNetV2-LRASPP: expansion + depthwise groups (2 BNs), residual chains (2-4 BNs), head (1 BN)."""
    torch.manual_seed(0)
    model = create_model("mobilenetv2_lraspp", 3, width=0.25)
    _iid_gammas(model)
    graph = build_pruning_graph(model, (32, 32))
    depthwise = lambda gr: any(graph.module(s.name).groups > 1 for s in gr.layers if s.dim == "out")  # noqa: E731
    residual = lambda gr: len(gr.bns) >= 3  # noqa: E731
    single = lambda gr: len(gr.bns) == 1  # noqa: E731
    fair = _select(graph, "acsl", "mean")
    legacy = _select(graph, "acsl", "sum")
    assert _removed_fraction(graph, fair.kept, depthwise) >= 0.2
    assert _removed_fraction(graph, fair.kept, residual) >= 0.15
    # the raw sum spares the residual chains and empties the single-BN groups (head, last projection) instead
    assert _removed_fraction(graph, legacy.kept, residual) < 0.5 * _removed_fraction(graph, fair.kept, residual)
    assert _removed_fraction(graph, legacy.kept, single) > _removed_fraction(graph, fair.kept, single)


def test_group_reduction_benchmark_combines_seeds_and_chooses_on_mean_val(tmp_path):
    import json

    from conftest import load_benchmark

    bench = load_benchmark("group_reduction_val")

    def result(seed, mean_val, max_val):
        groups = {"multi_bn": {"removed": seed, "channels": 56, "groups": 3, "groups_untouched": 2},
                  "single_bn": {"removed": 240, "channels": 504}}
        rows = [{"group_reduction": r, "val": v, "test": v + 1, "val_after_slim": v - 2, "groups": groups}
                for r, v in (("mean", mean_val), ("max", max_val))]
        path = tmp_path / f"s{seed}.json"
        path.write_text(json.dumps({"config": "c.yaml", "budget": "params=0.5", "method": "acsl", "metric": "top1",
                                    "rows": rows, "overrides": [f"train.seed={seed}"], "command": f"cmd {seed}",
                                    "machine": "m", "git_commit": "g"}))
        return str(path)

    paths = [result(0, 57.0, 58.0), result(1, 59.0, 57.0), result(2, 60.0, 58.5)]
    assert bench.main(["--combine", *paths, "--tag", "t", "--out", str(tmp_path)]) == 0
    out = json.loads((tmp_path / "group_reduction_t.json").read_text())
    assert out["chosen_on_val"] == "mean"  # 58.67 mean val vs 57.83, though max won seed 0
    mean = next(r for r in out["summary"] if r["group_reduction"] == "mean")
    assert mean["n"] == 3 and mean["val_mean"] == pytest.approx(58.6667, abs=1e-3) and mean["multi_bn_removed"] == [0, 1, 2]
    md = (tmp_path / "group_reduction_t.md").read_text()
    assert "| mean | 3 | 58.67 +- 1.53 |" in md and "cmd 2" in md
