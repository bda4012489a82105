"""Proof of correct surgery for every zoo model: slim(x) == dense(x) with the removed channels zeroed
after their BN, plus the tracer traps (batch >= 2, ignored layer instances, SegNet unpool coupling,
residual/concat index mapping, untraceable couplings and unknown layers)."""
import copy

import pytest
import torch

from prune_nets import TinyCustom, TinyResCat, TinyUnpool
from toolchain.errors import ToolchainError
from toolchain.models import create_model
from toolchain.prune.groups import build_pruning_graph, example_inputs
from toolchain.prune.select import CostModel, parse_budget, select_channels
from toolchain.prune.surgery import (prune_model, relative_error, removed_bn_channels, slim,
                                     verify_equivalence, zero_removed_channels)

ZOO = [("segnet", 3, (32, 32)), ("pspnet", 3, (32, 32)), ("unet", 3, (32, 32)), ("csrnet", 1, (32, 32)),
       ("resnet20", 10, (32, 32)), ("resnet56", 10, (32, 32)), ("vgg16_cifar", 10, (32, 32))]


def _randomise_bn(model, seed):
    """Non-trivial BN statistics so that zeroing a channel is visible in the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.bias.data = torch.randn(m.num_features, generator=g) * 0.2
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def _prune_and_compare(model, input_size, budget, seed, round_to=1):
    _randomise_bn(model, seed)
    dense = copy.deepcopy(model).eval()
    graph = build_pruning_graph(model, input_size)
    g = torch.Generator().manual_seed(seed)
    saliency = [torch.rand(gr.size, generator=g) for gr in graph.groups]
    selection = select_channels(graph, saliency, parse_budget(budget), CostModel(graph).params,
                                min_channels=1, min_fraction=0.1, round_to=round_to)
    assert selection.removed, "the budget must remove something"
    bn_channels = removed_bn_channels(graph, selection.removed)
    slim(graph, selection.removed)
    x = torch.randn(2, 3, *input_size, generator=g)
    with torch.no_grad(), zero_removed_channels(dense, bn_channels):
        reference = dense(x)
    with torch.no_grad():
        out = model.eval()(x)
    assert out.shape == reference.shape
    assert relative_error(reference, out) < 1e-4
    # and removing channels did change the function (the test can fail)
    with torch.no_grad():
        assert relative_error(dense(x), out) > 1e-4
    return graph, selection


@pytest.mark.parametrize("name,classes,size", ZOO)
@pytest.mark.parametrize("budget,seed", [("params=0.4", 0), ("params=0.7", 1), ("flops=0.5", 2)])
def test_slim_equals_masked_dense_for_every_zoo_model(name, classes, size, budget, seed):
    torch.manual_seed(seed)
    model = create_model(name, classes, width=0.125)
    heads_before = [tuple(h.weight.shape[:1]) for h in model.output_layers()]
    _prune_and_compare(model, size, budget, seed)
    assert [tuple(h.weight.shape[:1]) for h in model.output_layers()] == heads_before  # heads never pruned


def test_rounding_keeps_multiples():
    model = create_model("resnet20", 10, width=0.5)
    graph, selection = _prune_and_compare(model, (32, 32), "params=0.5", 3, round_to=4)
    assert all(k % 4 == 0 or k == g.size for k, g in zip(selection.kept, graph.groups))


def test_segnet_encoder_and_decoder_unpool_land_in_one_group():
    model = create_model("segnet", 3, width=0.125)
    graph = build_pruning_graph(model, (32, 32))
    roots = [{s.name for s in g.layers if s.dim == "out"} for g in graph.groups]
    for k in range(1, 5):
        enc = f"encoder.{4 - k}.{len(model.encoder[4 - k]) - 1}.0"
        dec = f"decoder.{k - 1}.{len(model.decoder[k - 1]) - 1}.0"
        assert any(enc in r and dec in r for r in roots), (enc, dec)


def _unpool_with_equality(x, encoder_output, pooled):
    """SegNet's unpooling with a boolean mask: autograd (and so the tracer) cannot see the coupling."""
    size = encoder_output.shape[-2:]
    mask = torch.nn.functional.interpolate(pooled, size=size, mode="nearest") == encoder_output
    return torch.nn.functional.interpolate(x, size=size, mode="nearest") * mask.to(x.dtype)


def test_segnet_with_untraceable_unpool_mask_is_caught(monkeypatch):
    """Written with `==`, the encoder/decoder coupling is invisible: pruning must fail, never be silently wrong."""
    import toolchain.models.segnet as segnet_module

    monkeypatch.setattr(segnet_module, "unpool_like", _unpool_with_equality)
    model = create_model("segnet", 3, width=0.125)
    graph = build_pruning_graph(model, (32, 32))
    saliency = [torch.rand(g.size, generator=torch.Generator().manual_seed(0)) for g in graph.groups]
    selection = select_channels(graph, saliency, parse_budget("params=0.5"), CostModel(graph).params, min_channels=1)
    with pytest.raises((ToolchainError, RuntimeError)):
        prune_model(graph, selection.removed, verify=True)


def test_untraceable_maxunpool_coupling_fails_loudly():
    torch.manual_seed(0)
    model = TinyUnpool()
    graph = build_pruning_graph(model, (16, 16))
    enc = next(g for g in graph.groups if g.root == "enc.0")
    with pytest.raises((ToolchainError, RuntimeError)):
        prune_model(graph, {enc.index: [0, 1, 2]}, verify=True)


def test_residual_and_concat_index_mapping():
    torch.manual_seed(0)
    model = TinyResCat(width=8)
    graph = build_pruning_graph(model, (16, 16))
    stem = next(g for g in graph.groups if g.root == "stem.0")
    assert {s.name for s in stem.bns} == {"stem.1", "b.1"}  # residual add couples stem and b
    side = next(g for g in graph.groups if g.root == "side.0")
    fuse_in = next(s for s in side.layers if s.name == "fuse.0")
    assert fuse_in.dim == "in" and fuse_in.index == [8 + i for i in range(4)]  # concat offset mapped
    _, _, error = prune_model(graph, {stem.index: [1, 5], side.index: [0, 3]})
    assert error < 1e-4
    assert model.fuse[0].in_channels == 6 + 2


def test_example_input_is_a_batch_of_two():
    model = TinyResCat()
    assert example_inputs(model, (16, 16)).shape[0] == 2
    with pytest.raises(ValueError):
        example_inputs(model, (16, 16), batch=1)


def test_output_layers_must_be_instances():
    model = TinyResCat()
    model.output_layers = lambda: [torch.nn.Conv2d]
    with pytest.raises(ToolchainError, match="module instances"):
        build_pruning_graph(model, (16, 16))


def test_unknown_layer_names_layer_and_hook():
    with pytest.raises(ToolchainError, match=r"'scale'.*register_custom_pruner"):
        build_pruning_graph(TinyCustom(), (16, 16))


def _wrongly_slimmed():
    """(dense, slim, bn_channels): the slim model removed a different stem channel than the reference zeroes."""
    torch.manual_seed(0)
    model = TinyResCat()
    graph = build_pruning_graph(model, (16, 16))
    dense = copy.deepcopy(model)
    stem = next(g for g in graph.groups if g.root == "stem.0")
    bn_channels = removed_bn_channels(graph, {stem.index: [2]})
    slim(graph, {stem.index: [3]})
    return dense, model, bn_channels


def test_verify_equivalence_rejects_a_wrong_slim_model():
    dense, model, bn_channels = _wrongly_slimmed()
    with pytest.raises(ToolchainError, match="surgery check failed"):
        verify_equivalence(dense, model, bn_channels, example_inputs(model, (16, 16)))


def test_verify_equivalence_names_the_first_layer_that_diverges():
    dense, model, bn_channels = _wrongly_slimmed()
    with pytest.raises(ToolchainError, match=r"in float64 .* first at layer 'stem\.1'"):
        verify_equivalence(dense, model, bn_channels, example_inputs(model, (16, 16)))


def test_surgery_check_is_computed_in_float64_so_rounding_cannot_trip_it():
    """A correct surgery agrees to ~1e-16 in float64 (float32 rounding alone gives ~1e-7), so a
    pre-activation sitting on an argmax/ReLU discontinuity cannot flip between the two models."""
    from toolchain.models import create_model

    for seed in range(3):
        torch.manual_seed(seed)
        model = create_model("segnet", num_classes=4, width=0.125).eval()
        graph = build_pruning_graph(model, (32, 32))
        gen = torch.Generator().manual_seed(seed)
        removed = {g.index: torch.randperm(g.size, generator=gen)[: g.size // 2].tolist()
                   for g in graph.groups if g.size >= 8}
        _, _, error = prune_model(graph, removed, verify=True)
        assert error < 1e-12, error
