"""mobilenetv2_lraspp (issue 11): the zoo's depthwise-separable segmenter. Shapes and attributes, the
MobileNetV2 parameter count, surgery equivalence, and that ACSL's selection prunes its encoder.
ONNX parity (dense and slim) runs for it in test_export_zoo.py, which covers every registered model."""
import copy

import pytest
import torch

from test_prune_surgery import _prune_and_compare
from toolchain.errors import ToolchainError
from toolchain.models import create_model, list_models
from toolchain.models.complexity import count_macs, count_params
from toolchain.models.registry import model_task
from toolchain.prune.groups import build_pruning_graph
from toolchain.prune.importance import channel_saliency
from toolchain.prune.select import CostModel, parse_budget, select_channels
from toolchain.prune.surgery import prune_model

NAME = "mobilenetv2_lraspp"


def test_registered_with_attributes_and_shapes():
    assert NAME in list_models() and model_task(NAME) == "segmentation"
    torch.manual_seed(0)
    model = create_model(NAME, 5, width=0.25).eval()
    assert model.task == "segmentation" and model.output_stride == 1 and model.input_multiple == 16
    heads = model.output_layers()
    assert len(heads) == 2 and all(any(h is m for m in model.modules()) for h in heads)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 48, 64)).shape == (2, 5, 48, 64)
    with pytest.raises(ToolchainError, match="multiples of 16"):
        model(torch.randn(1, 3, 40, 64))


def test_encoder_is_mobilenet_v2_with_depthwise_convs_and_output_stride_16():
    model = create_model(NAME, 11, width=1.0)
    # MobileNetV2 (torchvision mobilenet_v2: 3,504,872 params) without its 1000-way classifier (1,281,000) and
    # its last 1x1 conv to 1280 channels + BN (412,160): the encoder here; dilation adds no parameters
    assert count_params(model.encoder) == 3_504_872 - 1_281_000 - 412_160
    depthwise = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    with torch.no_grad():
        low, high = model.encoder.eval()(torch.randn(1, 3, 64, 96))
    assert low.shape[-2:] == (8, 12) and high.shape[-2:] == (4, 6)  # stride 8 and 16
    with torch.device("meta"):
        meta = create_model(NAME, 11, width=1.0)
    assert 0.5e9 < count_macs(meta, (240, 320)) < 1.0e9


@pytest.mark.parametrize("budget,seed", [("params=0.4", 0), ("params=0.7", 1), ("flops=0.5", 2)])
def test_slim_equals_masked_dense(budget, seed):
    torch.manual_seed(seed)
    model = create_model(NAME, 3, width=0.25)
    heads_before = [tuple(h.weight.shape) for h in model.output_layers()]
    graph, selection = _prune_and_compare(model, (32, 32), budget, seed)
    assert [tuple(h.weight.shape[:1]) for h in model.output_layers()] == [s[:1] for s in heads_before]
    assert any(m.groups > 1 for m in model.modules() if isinstance(m, torch.nn.Conv2d))  # still depthwise


def test_acsl_selection_prunes_the_encoder():
    torch.manual_seed(0)
    model = create_model(NAME, 3, width=0.25)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) * 0.9 + 0.1
    encoder_before = count_params(model.encoder)
    dense = copy.deepcopy(model)
    graph = build_pruning_graph(model, (32, 32))
    selection = select_channels(graph, channel_saliency("bn-scale", graph), parse_budget("params=0.5"),
                                CostModel(graph).params, min_channels=2)
    slim, _, error = prune_model(graph, selection.removed, verify=True)
    assert error < 1e-4
    assert count_params(slim.encoder) < 0.7 * encoder_before
    assert count_params(slim) <= 0.5 * count_params(dense) * 1.01
