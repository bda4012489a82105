"""The model zoo: shapes, the SegNet parameter count and unpooling, BN after every prunable conv,
ONNX-friendliness, complexity counting and the `acsl models` command."""
from __future__ import annotations

import io
import warnings

import onnx
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from toolchain.cli import main as acsl_main
from toolchain.errors import ToolchainError
from toolchain.models import create_model, list_models
from toolchain.models.complexity import count_macs, count_params, model_summary
from toolchain.models.segnet import unpool_like

# name -> (num_classes, small input (H, W), expected output shape without batch)
ZOO = {
    "segnet": (5, (40, 56), (5, 40, 56)),
    "pspnet": (5, (40, 56), (5, 40, 56)),
    "unet": (5, (40, 56), (5, 40, 56)),
    "csrnet": (1, (40, 56), (1, 5, 7)),
    "resnet20": (10, (32, 32), (10,)),
    "resnet56": (10, (32, 32), (10,)),
    "vgg16_cifar": (10, (32, 32), (10,)),
}
TASKS = {"segnet": "segmentation", "pspnet": "segmentation", "unet": "segmentation", "csrnet": "counting",
         "resnet20": "classification", "resnet56": "classification", "vgg16_cifar": "classification"}


def tiny(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return create_model(name, ZOO[name][0], width=0.125, **kwargs)


def test_zoo_lists_every_model():
    assert set(ZOO) <= set(list_models())


@pytest.mark.parametrize("name", sorted(ZOO))
def test_forward_shape_and_attributes(name):
    model = tiny(name).eval()
    _, (h, w), expected = ZOO[name]
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert tuple(out.shape) == (2, *expected)
    assert model.task == TASKS[name]
    assert model.output_stride == {"segmentation": 1, "counting": 8, "classification": None}[model.task]
    assert isinstance(model.input_multiple, int) and model.input_multiple >= 1
    heads = model.output_layers()
    assert heads and all(any(head is m for m in model.modules()) for head in heads)


def test_pspnet_depth_50_builds_and_runs():
    model = tiny("pspnet", depth=50).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 48)).shape == (1, 5, 32, 48)
    with pytest.raises(ToolchainError, match="depth"):
        create_model("pspnet", 5, depth=34)


def test_segnet_has_published_parameter_count():
    with torch.device("meta"):
        model = create_model("segnet", 11, width=1.0)
    assert 29.40e6 <= count_params(model) <= 29.50e6


def test_segnet_macs_at_camvid_resolution_match_published_flops():
    with torch.device("meta"):
        model = create_model("segnet", 11, width=1.0)
    assert abs(count_macs(model, (360, 480)) / 1e9 - 106.73) < 0.1  # CAP table: 106.73 G


@pytest.mark.parametrize("size", [(16, 24), (15, 21)])
def test_unpool_equals_max_unpool_with_real_indices(size):
    torch.manual_seed(1)
    encoded = torch.randn(2, 6, *size)  # random normal floats: no ties
    pooled, indices = F.max_pool2d(encoded, 2, 2, ceil_mode=True, return_indices=True)
    decoded = torch.randn_like(pooled)
    expected = nn.MaxUnpool2d(2, 2)(decoded, indices, output_size=encoded.shape[-2:])
    assert torch.equal(unpool_like(decoded, encoded, pooled), expected)


def test_wrong_channels_unpool_differs_from_right_one():
    """The unpooling really uses each channel's own mask (the coupling the pruner must keep)."""
    torch.manual_seed(2)
    encoded = torch.randn(1, 4, 8, 8)
    pooled = F.max_pool2d(encoded, 2, 2)
    decoded = torch.randn_like(pooled)
    right = unpool_like(decoded, encoded, pooled)
    shuffled = unpool_like(decoded, encoded[:, [1, 0, 3, 2]], pooled[:, [1, 0, 3, 2]])
    assert not torch.equal(right, shuffled)


def _export(model: nn.Module, size: tuple[int, int]) -> tuple[bytes, torch.Tensor]:
    buffer, sample = io.BytesIO(), torch.randn(1, 3, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), sample, buffer, opset_version=17, dynamo=False)
    return buffer.getvalue(), sample


def _ops(onnx_bytes: bytes) -> set[str]:
    return {node.op_type for node in onnx.load_from_string(onnx_bytes).graph.node}


def test_segnet_onnx_export_has_no_max_unpool():
    ops = _ops(_export(tiny("segnet"), (40, 56))[0])
    assert "MaxUnpool" not in ops
    assert {"Sign", "Mul", "Resize"} <= ops


def test_segnet_unpool_couples_encoder_and_decoder_channels_for_the_pruning_tracer():
    """Torch-Pruning must see that an encoder stage's output and the decoder feature it unpools
    share channels (ACSL.md, "Coupled channels"); a boolean mask would hide that link."""
    import torch_pruning as tp

    model = tiny("segnet").eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.randn(1, 3, 32, 32))
    encoder_conv = model.encoder[3][-1][0]            # produces e of the 4th stage
    decoder_conv = model.decoder[0][-1][0]            # produces the x that is unpooled with e
    group = graph.get_pruning_group(encoder_conv, tp.prune_conv_out_channels, idxs=[0, 1])
    assert any(dep.target.module is decoder_conv for dep, _ in group)
    group.prune()
    assert encoder_conv.out_channels == decoder_conv.out_channels
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 5, 32, 32)


def test_pspnet_exports_at_sizes_not_divisible_by_bins_and_matches_torch():
    import onnxruntime as ort

    model = tiny("pspnet")
    onnx_bytes, sample = _export(model, (40, 56))  # stride-8 map 5x7: not divisible by 2, 3 or 6
    assert not any("Adaptive" in op for op in _ops(onnx_bytes))
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    onnx_out = session.run(None, {session.get_inputs()[0].name: sample.numpy()})[0]
    with torch.no_grad():
        assert torch.allclose(torch.from_numpy(onnx_out), model(sample), atol=1e-4)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_prunable_conv_feeds_a_batchnorm(name):
    """In execution order, each non-head conv's output tensor is the input of a BN of its width."""
    model = tiny(name).eval()
    heads = {id(m) for m in model.output_layers()}
    conv_outputs: dict[int, nn.Conv2d] = {}
    normalised: set[int] = set()

    def on_conv(module, inputs, output):
        conv_outputs[id(output)] = module

    def on_bn(module, inputs, output):
        conv = conv_outputs.get(id(inputs[0]))
        if conv is not None and conv.out_channels == module.num_features:
            normalised.add(id(conv))

    handles = []
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            handles.append(module.register_forward_hook(on_conv))
        elif isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_hook(on_bn))
    _, (h, w), _ = ZOO[name]
    with torch.no_grad():
        model(torch.randn(1, 3, h, w))
    for handle in handles:
        handle.remove()
    unnormalised = [c for c in convs if id(c) not in heads and id(c) not in normalised]
    assert convs and not unnormalised
    assert all(m.bias is None for m in convs if id(m) not in heads)


def test_width_scales_channels_and_has_a_floor():
    narrow, wide = create_model("resnet20", 10, width=0.5), create_model("resnet20", 10, width=1.0)
    assert narrow.stem[0].out_channels == 8 and wide.stem[0].out_channels == 16
    assert create_model("resnet20", 10, width=0.01).stem[0].out_channels == 4
    with pytest.raises(ToolchainError, match="width"):
        create_model("segnet", 11, width=0)
    with pytest.raises(ToolchainError, match="num_classes"):
        create_model("segnet", 0)


def test_unknown_model_lists_the_zoo():
    with pytest.raises(ToolchainError) as err:
        create_model("segnett", 11)
    message = str(err.value)
    assert "segnett" in message and all(name in message for name in ZOO) and "\n" not in message


class TinyNet(nn.Module):
    input_multiple = 1

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, bias=False)       # 8x8 -> 4x4
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)              # 4x4
        self.up = nn.ConvTranspose2d(4, 2, 2, stride=2)                       # 4x4 -> 8x8
        self.fc = nn.Linear(2, 5)

    def forward(self, x):
        x = self.up(self.depthwise(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def test_count_macs_matches_hand_count():
    conv = 4 * 4 * 4 * (3 * 3 * 3)        # out elems x in/groups x k x k = 1728
    depthwise = 4 * 4 * 4 * (1 * 3 * 3)   # 576
    transpose = 4 * 4 * 4 * (2 * 2 * 2)   # in elems x out/groups x k x k = 512
    linear = 5 * 2                        # 10
    model = TinyNet()
    assert count_macs(model, (8, 8)) == conv + depthwise + transpose + linear
    params = 3 * 4 * 9 + (4 * 9 + 4) + (4 * 2 * 4 + 2) + (2 * 5 + 5)
    assert model_summary(model, (8, 8)) == {"params": params, "macs": conv + depthwise + transpose + linear}


def test_count_macs_follows_physically_slimmed_layers_and_meta_device():
    model = TinyNet()
    full = count_macs(model, (8, 8))
    # slim the first conv to 2 output channels, as a pruner does (new tensors, new shapes)
    model.conv = nn.Conv2d(3, 2, 3, stride=2, padding=1, bias=False)
    model.depthwise = nn.Conv2d(2, 2, 3, padding=1, groups=2)
    model.up = nn.ConvTranspose2d(2, 2, 2, stride=2)
    assert count_macs(model, (8, 8)) == full - 864 - 288 - 256
    torch.manual_seed(0)
    real = create_model("resnet20", 10, width=0.25)
    with torch.device("meta"):
        meta = create_model("resnet20", 10, width=0.25)
    assert count_macs(real, (32, 32)) == count_macs(meta, (32, 32)) > 0
    assert real.training  # training mode restored


def test_count_macs_rejects_incompatible_input_size():
    with pytest.raises(ToolchainError, match="multiples of 8"):
        count_macs(create_model("csrnet", 1, width=0.125), (36, 32))


def test_acsl_models_lists_the_zoo(capsys):
    assert acsl_main(["models", "--width", "0.25", "--input-size", "64", "64"]) == 0
    out = capsys.readouterr().out
    for name in ZOO:
        assert name in out
    assert "pspnet depth=50" in out and "params (M)" in out and "GMACs" in out


def test_acsl_models_bad_width_is_one_line_error(capsys):
    assert acsl_main(["models", "--width", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "width" in err and "\n" not in err
