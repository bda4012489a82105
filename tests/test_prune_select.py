"""Selection under a budget: exact cost model, global ranking, per-layer minimum, rounding, bad budgets,
and plan save / rebuild round trips."""
import json

import pytest
import torch

from prune_nets import TinyResCat
from toolchain.errors import ToolchainError
from toolchain.models import create_model
from toolchain.models.complexity import count_macs, count_params
from toolchain.prune.groups import build_pruning_graph
from toolchain.prune.importance import channel_saliency
from toolchain.prune.methods import METHODS, get_method
from toolchain.prune.plan import apply_channel_plan
from toolchain.prune.select import CostModel, parse_budget, select_channels
from toolchain.prune.surgery import prune_model


def test_parse_budget():
    assert parse_budget("params=0.8").as_dict() == {"kind": "params", "value": 0.8}
    assert parse_budget(" flops = .6 ").kind == "flops"
    for bad in ["params0.8", "latency=0.5", "params=1.5", "params=0", "flops=abc"]:
        with pytest.raises(ToolchainError, match="params=F or flops=F|between 0 and 1"):
            parse_budget(bad)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ToolchainError, match="valid: acsl, cap, slimming, bn-scale, l1, fpgm, depgraph, random"):
        get_method("magic")
    assert get_method("ACSL").name == "acsl"


@pytest.mark.parametrize("name", ["unet", "resnet20"])
def test_cost_model_matches_complexity_after_pruning(name):
    torch.manual_seed(0)
    model = create_model(name, 3, width=0.25)
    graph = build_pruning_graph(model, (32, 32))
    cost = CostModel(graph)
    assert cost.dense == {"params": count_params(model), "flops": count_macs(model, (32, 32))}
    saliency = channel_saliency("l1", graph)
    for kind in ("params", "flops"):
        selection = select_channels(graph, saliency, parse_budget(f"{kind}=0.5"), cost.cost_fn(kind), min_channels=1)
        assert selection.fraction_removed >= 0.5
        assert selection.fraction_removed < 0.56  # does not overshoot much
    prune_model(graph, selection.removed)
    assert count_macs(model, (32, 32)) == pytest.approx(selection.cost_after)


def test_global_ranking_removes_lowest_saliency_first():
    torch.manual_seed(0)
    graph = build_pruning_graph(TinyResCat(width=16), (16, 16))
    saliency = [torch.ones(g.size) for g in graph.groups]
    target = graph.groups[0]
    saliency[target.index] = torch.linspace(0.01, 0.02, target.size)  # this group is the least salient
    selection = select_channels(graph, saliency, parse_budget("params=0.05"), CostModel(graph).params,
                                min_channels=1, min_fraction=0.0)
    assert list(selection.removed) == [target.index]
    assert selection.removed[target.index] == list(range(len(selection.removed[target.index])))


def test_minimum_per_layer_and_unreachable_budget_reports_largest():
    model = create_model("vgg16_cifar", 10, width=0.25)
    graph = build_pruning_graph(model, (32, 32))
    cost = CostModel(graph)
    saliency = channel_saliency("random", graph)
    selection = select_channels(graph, saliency, parse_budget("params=0.6"), cost.params, min_channels=8,
                                min_fraction=0.1)
    for kept, group in zip(selection.kept, graph.groups):
        assert kept >= min(group.size, max(8, 0.1 * group.size))
    with pytest.raises(ToolchainError, match=r"largest reachable fraction is params=0\.\d+"):
        select_channels(graph, saliency, parse_budget("params=0.99"), cost.params, min_channels=8)


def test_any_cost_function_plugs_in():
    graph = build_pruning_graph(TinyResCat(width=16), (16, 16))
    saliency = channel_saliency("random", graph)
    width_cost = lambda kept: float(sum(kept))  # e.g. a latency model per group
    selection = select_channels(graph, saliency, parse_budget("params=0.3"), width_cost, min_channels=1)
    assert sum(selection.kept) <= 0.7 * sum(g.size for g in graph.groups)


@pytest.mark.parametrize("kind", ["bn-scale", "l1", "fpgm", "depgraph", "random"])
def test_every_saliency_gives_one_value_per_channel(kind):
    graph = build_pruning_graph(create_model("resnet20", 10, width=0.25), (32, 32))
    scores = channel_saliency(kind, graph)
    assert [s.numel() for s in scores] == [g.size for g in graph.groups]
    assert all(torch.isfinite(s).all() for s in scores)


@pytest.mark.parametrize("name,classes", [("segnet", 3), ("pspnet", 3), ("resnet56", 10)])
def test_plan_is_json_and_rebuilds_the_slim_model(name, classes):
    torch.manual_seed(0)
    model = create_model(name, classes, width=0.125)
    graph = build_pruning_graph(model, (32, 32))
    selection = select_channels(graph, channel_saliency("l1", graph), parse_budget("params=0.5"),
                                CostModel(graph).params, min_channels=1)
    slim_model, plan, _ = prune_model(graph, selection.removed)
    plan = json.loads(json.dumps(plan))  # plain JSON round trip
    rebuilt = apply_channel_plan(create_model(name, classes, width=0.125), plan)
    rebuilt.load_state_dict(slim_model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(rebuilt.eval()(x), slim_model.eval()(x), atol=1e-5)
    some_layer = next(iter(plan["layers"].values()))
    assert all(isinstance(i, int) for i in some_layer["kept_out"])


def test_plan_for_another_width_is_refused():
    model = create_model("resnet20", 10, width=0.25)
    graph = build_pruning_graph(model, (32, 32))
    selection = select_channels(graph, channel_saliency("l1", graph), parse_budget("params=0.5"),
                                CostModel(graph).params, min_channels=1)
    _, plan, _ = prune_model(graph, selection.removed)
    with pytest.raises(ToolchainError, match="width"):
        apply_channel_plan(create_model("resnet20", 10, width=0.5), plan)
    with pytest.raises(ToolchainError, match="not a channel plan"):
        apply_channel_plan(create_model("resnet20", 10, width=0.25), {"steps": []})


def test_all_methods_registered():
    assert set(METHODS) == {"acsl", "cap", "slimming", "bn-scale", "l1", "fpgm", "depgraph", "random"}


def test_round_to_target_reads_the_targets_channel_multiple(tmp_path):
    from toolchain.prune.select import resolve_round_to
    from toolchain.targets import load_target

    assert resolve_round_to(8)[0] == 8 and resolve_round_to(8)[1]["source"] == "config"
    cpu = load_target("cpu")
    assert cpu.channel_multiple, "targets/cpu.yaml must give a channel multiple"
    multiple, record = resolve_round_to("target", "cpu")
    assert multiple == cpu.channel_multiple[cpu.default_precision] and record["precision"] == cpu.default_precision
    gpu = load_target("jetson-orin-nx-16gb")
    assert resolve_round_to("target:int8", gpu.name)[0] == gpu.channel_multiple["int8"]
    assert resolve_round_to("target", gpu.name)[0] == gpu.channel_multiple[gpu.default_precision]
    assert gpu.channel_multiple["int8"] > 1 and gpu.channel_multiple["fp16"] > 1
    with pytest.raises(ToolchainError, match="does not support fp16"):
        resolve_round_to("target:fp16", "cpu")
    with pytest.raises(ToolchainError, match="deploy.target"):
        resolve_round_to("target", None)
    with pytest.raises(ToolchainError, match="round_to"):
        resolve_round_to("nchwc", "cpu")
    bad = tmp_path / "board.yaml"
    bad.write_text("name: board\nbackend: onnxruntime\nprecisions: [fp32]\nchannel_multiple: {fp32: 0}\n")
    with pytest.raises(ToolchainError, match="channel_multiple"):
        load_target(bad)
    bad.write_text("name: board\nbackend: onnxruntime\nprecisions: [fp32]\nchannel_multiple: {fp8: 4}\n")
    with pytest.raises(ToolchainError, match="channel_multiple"):
        load_target(bad)


def test_selection_rounded_to_the_target_multiple_keeps_multiples():
    from toolchain.prune.select import resolve_round_to

    torch.manual_seed(0)
    model = create_model("mobilenetv2_lraspp", 3, width=0.5)
    graph = build_pruning_graph(model, (32, 32))
    multiple, _ = resolve_round_to("target:int8", "jetson-orin-nx-16gb")
    saliency = channel_saliency("random", graph)
    plain = select_channels(graph, saliency, parse_budget("params=0.5"), CostModel(graph).params, min_channels=1)
    rounded = select_channels(graph, saliency, parse_budget("params=0.5"), CostModel(graph).params, min_channels=1,
                              round_to=multiple)
    assert any(k % multiple for k, g in zip(plain.kept, graph.groups) if k < g.size)  # unrounded: odd widths
    assert all(k % multiple == 0 or k == g.size for k, g in zip(rounded.kept, graph.groups))
    assert rounded.fraction_removed >= 0.5 - 1e-9
