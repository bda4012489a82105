"""ONNX export: parity, metadata, record, simplifier fallback, lint, and bad ONNX inputs."""
import json

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn

from toolchain.config import validate_config
from toolchain.errors import ToolchainError
from toolchain.export import check_onnx_matches_config, export_model, lint_onnx, load_onnx, read_onnx_metadata
from toolchain.export import parity as parity_mod
from toolchain.export import simplify as simplify_mod
from toolchain.targets import load_target


def make_cfg(tmp_path, task="segmentation", classes=3, **extra):
    raw = {"name": "t", "task": task, "model": {"name": "segnet", "width": 0.125},
           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": classes, "max_images": 4},
           "out_dir": str(tmp_path / "runs"), **extra}
    return validate_config(raw)


def seq_net(classes=3):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, classes, 1))
    net[1].running_mean.uniform_(-0.2, 0.2)
    return net.eval()


def test_export_writes_onnx_record_and_metadata(tmp_path):
    cfg = make_cfg(tmp_path)
    out = tmp_path / "m.onnx"
    result = export_model(seq_net(), cfg, out, channel_plan={"layers": {"a": 1}}, log=None)
    assert result.parity.passed and {r.name for r in result.parity.results} == {"random", "real"}
    record = json.loads((tmp_path / "m.onnx.json").read_text())
    assert record["simplifier_ran"] == "onnxsim" and record["opset"] == 17
    assert record["inputs"] == [{"name": "input", "shape": [1, 3, 32, 32]}]
    assert record["outputs"][0]["shape"] == [1, 3, 32, 32] and len(record["sha256"]) == 64
    meta = read_onnx_metadata(out)
    assert meta["model_name"] == "segnet" and meta["input_layout"] == "NCHW"
    assert json.loads(meta["mean"]) == [0.485, 0.456, 0.406] and meta["channel_plan_sha256"] != "dense"
    assert meta["git_commit"] and meta["toolchain_version"]
    assert not any(k.startswith("onnxsim.") for k in meta)
    assert all(n.name for n in load_onnx(out).graph.node)


def test_dynamic_batch_and_hw(tmp_path):
    cfg = make_cfg(tmp_path)
    result = export_model(seq_net(), cfg, tmp_path / "d.onnx", dynamic=["batch", "hw"], real_images=0, log=None)
    assert result.record["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert result.parity.results[0].shape[0] == 2
    with pytest.raises(ToolchainError, match="--dynamic"):
        export_model(seq_net(), cfg, tmp_path / "e.onnx", dynamic=["channels"], log=None)


def test_onnxslim_fallback_when_onnxsim_fails(tmp_path, monkeypatch):
    def broken(model):
        raise RuntimeError("boom")
    monkeypatch.setattr(simplify_mod, "_with_onnxsim", broken)
    result = export_model(seq_net(), make_cfg(tmp_path), tmp_path / "s.onnx", real_images=0, log=None)
    assert result.record["simplifier_ran"] == "onnxslim"
    assert "onnxsim failed: RuntimeError: boom" in result.record["simplifier_notes"][0]


def test_parity_failure_fails_export_and_writes_nothing(tmp_path, monkeypatch):
    real = parity_mod.torch_outputs
    monkeypatch.setattr(parity_mod, "torch_outputs", lambda m, b: real(m, b) * 1.01)
    with pytest.raises(ToolchainError, match="parity check failed.*worst tensor 'output'.*relative error"):
        export_model(seq_net(), make_cfg(tmp_path), tmp_path / "p.onnx", real_images=0, log=None)
    assert not (tmp_path / "p.onnx").exists()


def test_parity_metrics_definitions():
    ref = np.zeros((1, 3, 4, 4), np.float32)
    ref[:, 0] = 1.0
    got = ref.copy()
    got[0, 1, 0, 0] = 2.0  # one pixel flips class
    r = parity_mod.compare("x", got, ref, "segmentation")
    assert r.argmax_agreement == pytest.approx(15 / 16) and r.failures
    # a discontinuous op (argmax unpooling) that moved values in a small region: large max error,
    # same classes everywhere -> passes; the same error spread over most pixels (a wrong export) fails
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(1, 4, 32, 32)).astype(np.float32)
    logits[:, 0] += 10.0
    local = logits.copy()
    local[:, :, :3, :3] += 0.5
    r = parity_mod.compare("x", local, logits, "segmentation")
    assert r.relative_error > 1e-2 and r.argmax_agreement == 1.0 and not r.failures
    spread = logits * 1.001
    r = parity_mod.compare("x", spread, logits, "segmentation")
    assert r.argmax_agreement == 1.0 and any("90th-percentile" in f for f in r.failures)
    dens = np.full((2, 1, 4, 4), 0.5, np.float32)
    c = parity_mod.compare("x", dens * 1.00001, dens, "counting")
    assert c.count_error < 1e-3 and c.relative_error < 1e-4
    c = parity_mod.compare("x", dens * 1.01, dens, "counting")
    assert c.count_error == pytest.approx(0.01, rel=1e-3) and len(c.failures) == 2


def test_bad_onnx_files(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not onnx at all\x00\xff")
    with pytest.raises(ToolchainError, match="not a (readable|usable) ONNX"):
        load_onnx(junk)
    export_model(seq_net(), make_cfg(tmp_path), tmp_path / "ok.onnx", real_images=0, log=None)
    data = (tmp_path / "ok.onnx").read_bytes()
    truncated = tmp_path / "trunc.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ToolchainError, match="re-run `acsl export`"):
        load_onnx(truncated)
    with pytest.raises(ToolchainError, match="not found"):
        load_onnx(tmp_path / "missing.onnx")


def test_onnx_mismatching_config(tmp_path):
    cfg = make_cfg(tmp_path)
    export_model(seq_net(), cfg, tmp_path / "ok.onnx", real_images=0, log=None)
    other = make_cfg(tmp_path, data={"kind": "synthetic", "input_size": [64, 64], "num_classes": 3})
    with pytest.raises(ToolchainError, match="input_size is 64x64"):
        check_onnx_matches_config(tmp_path / "ok.onnx", other)
    model = onnx.load(str(tmp_path / "ok.onnx"))
    model.graph.input[0].name = "x"
    with pytest.raises(ToolchainError, match="has input 'x' but the toolchain expects 'input'"):
        check_onnx_matches_config(model, cfg)


def maxunpool_model():
    """A hand-made graph with MaxUnpool (TensorRT's parser has no MaxUnpool)."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("MaxPool", ["input"], ["p", "idx"], kernel_shape=[2, 2], strides=[2, 2], name="pool0"),
             helper.make_node("MaxUnpool", ["p", "idx"], ["output"], kernel_shape=[2, 2], strides=[2, 2],
                              name="decoder.unpool0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 32, 32])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 32, 32])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lint_names_unsupported_op_and_node():
    report = lint_onnx(maxunpool_model(), load_target("jetson"))
    assert [(e.op_type, e.node) for e in report.errors] == [("MaxUnpool", "decoder.unpool0")]
    assert "not supported by TensorRT" in report.errors[0].message
    assert not lint_onnx(maxunpool_model(), load_target("cpu")).errors
    assert "MaxUnpool x1" in report.format()


def test_export_prints_lint_for_target(tmp_path):
    result = export_model(seq_net(), make_cfg(tmp_path), tmp_path / "m.onnx", real_images=0, target="jetson",
                          log=None)
    assert result.lint.target == "jetson" and result.lint.op_counts.get("Conv") == 2
    assert result.record["lint"]["issues"] == []


def test_lint_int64_cast_and_dynamic_resize(tmp_path):
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Shape", ["input"], ["s"], name="shape0"),
             helper.make_node("Cast", ["s"], ["s64"], to=TensorProto.INT64, name="cast0"),
             helper.make_node("Resize", ["input", "", "", "s64"], ["output"], name="resize0")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    issues = {(i.op_type, i.node) for i in lint_onnx(model, load_target("jetson-xavier-nx")).warnings}
    assert ("Cast", "cast0") in issues and ("Resize", "resize0") in issues
    dla = load_target("jetson-orin-nx-16gb").model_copy(update={"dla_core": 0})
    assert any(i.op_type == "Shape" and "DLA" in i.message for i in lint_onnx(model, dla).warnings)
