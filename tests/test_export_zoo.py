"""Parity (torch vs ONNX Runtime CPU) for every zoo model, dense and slim (Torch-Pruning surgery)."""
import pytest
import torch

from toolchain.config import validate_config
from toolchain.export import export_model, read_onnx_metadata
from toolchain.models import create_model, list_models
from toolchain.models.registry import model_task

SIZE = (32, 32)


def _cfg(tmp_path, name):
    task = model_task(name)
    classes = {"segmentation": 3, "counting": 1, "classification": 10}[task]
    return validate_config({"name": f"zoo_{name}", "task": task, "model": {"name": name, "width": 0.125},
                            "data": {"kind": "synthetic", "input_size": list(SIZE), "num_classes": classes,
                                     "max_images": 2},
                            "out_dir": str(tmp_path / "runs")})


def _randomise_bn(model):
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.rand(m.num_features, generator=g) + 0.5
            m.running_mean = torch.randn(m.num_features, generator=g) * 0.1
            m.running_var = torch.rand(m.num_features, generator=g) + 0.5


def _slim(model):
    from toolchain.prune.groups import build_pruning_graph
    from toolchain.prune.surgery import slim

    graph = build_pruning_graph(model, SIZE)
    removed = {g.index: list(range(0, g.size, 3)) for g in graph.groups if g.size >= 3}
    plan = slim(graph, removed)
    return graph.model, plan


@pytest.mark.parametrize("slim", [False, True], ids=["dense", "slim"])
@pytest.mark.parametrize("name", list_models())
def test_zoo_model_exports_with_parity(tmp_path, name, slim):
    cfg = _cfg(tmp_path, name)
    torch.manual_seed(0)
    model = create_model(name, cfg.data.num_classes, width=0.125)
    _randomise_bn(model)
    plan = None
    if slim:
        dense_params = sum(p.numel() for p in model.parameters())
        model, plan = _slim(model)
        assert sum(p.numel() for p in model.parameters()) < dense_params
    out = tmp_path / f"{name}.onnx"
    result = export_model(model.eval(), cfg, out, channel_plan=plan, real_images=0 if slim else 1, log=None)
    assert result.parity.passed
    worst = max(r.relative_error for r in result.parity.results)
    assert worst <= 1e-4
    meta = read_onnx_metadata(out)
    assert (meta["channel_plan_sha256"] != "dense") == slim
    assert meta["task"] == model_task(name)
