"""`acsl compare` and the comparator behind it (per-precision tolerances, worst tensor and index)."""
import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import numpy_helper

from toolchain.build.compare import compare_arrays, compare_outputs
from toolchain.cli import main
from toolchain.errors import ToolchainError


def test_worst_index_and_per_precision_tolerance():
    ref = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    got = ref.copy()
    got[1, 2, 3] += 0.02   # 2% of the peak: inside fp16 / int8 tolerance, outside fp32
    assert compare_arrays("y", got, ref, "fp16").passed and compare_arrays("y", got, ref, "int8").passed
    diff = compare_arrays("y", got, ref, "fp32")
    assert not diff.passed and diff.worst_index == [1, 2, 3] and diff.violations == 1
    assert diff.worst_values == pytest.approx([float(got[1, 2, 3]), float(ref[1, 2, 3])])
    assert "index (1, 2, 3)" in diff.format()
    outlier = ref.copy()
    outlier[0, 1, 2] += 0.002
    assert not compare_arrays("y", outlier, ref, "fp32").passed
    assert compare_arrays("y", outlier, ref, "fp32", error_stat="mean").passed  # one outlier: the mean is fine
    assert not compare_arrays("y", outlier + 0.01, ref, "fp32", error_stat="mean").passed
    got[0, 0, 0] = np.nan
    assert not compare_arrays("y", got, ref, "int8").passed
    with pytest.raises(ToolchainError, match="shape"):
        compare_outputs({"y": ref[:1]}, {"y": ref}, "fp32")


def _onnx_pair(tmp_path):
    from toolchain.export import export_model
    from conftest import tiny_synthetic_config

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    cfg = tiny_synthetic_config(tmp_path)
    export_model(net, cfg, tmp_path / "a.onnx", real_images=0, log=None)
    model = onnx.load(str(tmp_path / "a.onnx"))
    init = next(i for i in model.graph.initializer if len(i.dims) == 4)
    w = numpy_helper.to_array(init).copy()
    w.flat[0] += 0.5  # one weight changed: a real difference
    init.CopyFrom(numpy_helper.from_array(w, init.name))
    onnx.save(model, str(tmp_path / "b.onnx"))
    return tmp_path / "a.onnx", tmp_path / "b.onnx"


def test_compare_cli(tmp_path, capsys):
    a, b = _onnx_pair(tmp_path)
    assert main(["compare", str(a), str(a)]) == 0
    assert "match at fp32 tolerance" in capsys.readouterr().out
    assert main(["compare", str(b), str(a), "--json", str(tmp_path / "c.json")]) == 1
    out = capsys.readouterr().out
    assert "MISMATCH at fp32 tolerance" in out and "worst at index (" in out
    import json
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["passed"] is False and record["tensors"][0]["violations"] > 0
    assert main(["compare", str(tmp_path / "missing.onnx"), str(a)]) == 2
    assert "not found" in capsys.readouterr().err
