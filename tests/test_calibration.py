"""INT8: calibrator batching, calibration caches (stale/corrupt -> rebuilt), gate arithmetic, forced fallback, benchmark."""
import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from toolchain.calibration import CalibrationBatcher, CalibrationCache, passes_gate, quantize_qdq
from toolchain.calibration.calib_set import CalibrationSet, calibration_set
from toolchain.calibration.gate import run_int8_gate
from toolchain.calibration.trt_calibrator import make_trt_calibrator
from conftest import tiny_synthetic_config
from toolchain.export import export_model

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


def make_cfg(tmp_path, **quantize):
    return tiny_synthetic_config(tmp_path, "c", **quantize)


@pytest.fixture
def fp32(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                        nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    path = tmp_path / "m.onnx"
    export_model(net, make_cfg(tmp_path), path, real_images=0, log=None)
    return path


def test_batcher_pads_last_batch():
    arrays = np.arange(5 * 3 * 2 * 2, dtype=np.float32).reshape(5, 3, 2, 2)
    batches = list(CalibrationBatcher(arrays, 2))
    assert len(batches) == 3 and all(b.shape == (2, 3, 2, 2) and b.flags.c_contiguous for b in batches)
    np.testing.assert_array_equal(batches[2][0], arrays[4])


def test_trt_calibrator_with_fake_tensorrt(tmp_path):
    class FakeBase:
        def __init__(self):
            pass

    class FakeTrt:
        IInt8EntropyCalibrator2 = FakeBase
        IInt8MinMaxCalibrator = FakeBase

    seen = []
    cache = CalibrationCache(tmp_path / "c.cache", key="k1")
    calib = make_trt_calibrator(FakeTrt, CalibrationBatcher(np.zeros((3, 3, 2, 2), np.float32), 2), cache, "entropy",
                                lambda b: seen.append(b.shape) or 1234)
    assert calib.get_batch_size() == 2
    assert calib.get_batch(["input"]) == [1234] and calib.get_batch(["input"]) == [1234]
    assert calib.get_batch(["input"]) is None and seen == [(2, 3, 2, 2)] * 2
    assert calib.read_calibration_cache() is None
    calib.write_calibration_cache(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n")
    assert calib.read_calibration_cache().startswith(b"TRT-8601")


def test_calibration_cache_mismatch_and_corruption_rebuild(tmp_path):
    table = b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n"
    CalibrationCache(tmp_path / "c.cache", key="model-a").write(table)
    assert CalibrationCache(tmp_path / "c.cache", key="model-a").read() == table
    other = CalibrationCache(tmp_path / "c.cache", key="model-b")
    assert other.read() is None and "another model" in other.note and not (tmp_path / "c.cache").exists()
    (tmp_path / "c.cache").write_bytes(b"\x00garbage")
    corrupt = CalibrationCache(tmp_path / "c.cache", key="model-b")
    assert corrupt.read() is None and "corrupt" in corrupt.note


def test_gate_arithmetic():
    assert passes_gate(0.99, 1.0, 0.99, True) and not passes_gate(0.989, 1.0, 0.99, True)
    assert passes_gate(10.1, 10.0, 0.99, False) and not passes_gate(10.11, 10.0, 0.99, False)


def test_calibration_set_is_seeded(tmp_path):
    cfg = make_cfg(tmp_path)
    a, b = calibration_set(cfg, 3, 1), calibration_set(cfg, 3, 1)
    np.testing.assert_array_equal(a.arrays, b.arrays)
    assert a.arrays.shape == (3, 3, 32, 32) and a.manifest()["split"] == "train"


def test_ort_range_cache_reused_and_rebuilt_when_stale(tmp_path, fp32):
    cfg = make_cfg(tmp_path)
    calib = calibration_set(cfg)
    first = quantize_qdq(fp32, tmp_path / "q.onnx", calib, "minmax", cache_dir=tmp_path / "cal")
    if first["calibration_cache"] is None:
        pytest.skip("this onnxruntime has no calibration_cache_path")
    assert quantize_qdq(fp32, tmp_path / "q.onnx", calib, "minmax", cache_dir=tmp_path / "cal")["note"].startswith(
        "calibration ranges reused")
    other = CalibrationSet(calib.arrays[:2], calib.seed, calib.preprocessing)
    assert "rebuilt" in quantize_qdq(fp32, tmp_path / "q.onnx", other, "minmax", cache_dir=tmp_path / "cal")["note"]
    (tmp_path / "cal" / "ort_calibration_ranges.json").write_text("{broken")
    assert "rebuilt" in quantize_qdq(fp32, tmp_path / "q.onnx", other, "minmax", cache_dir=tmp_path / "cal")["note"]


def _quantized_convs(path):
    import onnx
    model = onnx.load(str(path))
    dq_outputs = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dq_outputs)


def test_gate_falls_back_per_node_and_reports(tmp_path, fp32, monkeypatch):
    from toolchain.calibration import gate as gate_mod

    # a metric that loses 1% per quantized conv: 3 convs -> 0.97; the gate (0.985) needs <= 1 quantized conv
    monkeypatch.setattr(gate_mod, "ort_metric", lambda cfg, path, split, n: (1.0 - 0.01 * _quantized_convs(path),
                                                                              {"images": 4}))
    cfg = make_cfg(tmp_path, gate=0.985, max_fallback_nodes=3)
    result = run_int8_gate(cfg, fp32, tmp_path / "g", calibration_set(cfg), log=lambda s: None)
    assert result.steps[0].int8_metric == pytest.approx(0.97) and not result.steps[0].passed
    assert {r["node"] for r in result.sensitivity} == set(_conv_names(fp32))
    assert result.passed and len(result.excluded_nodes) == 2 and len(result.steps) == 3
    assert result.excluded_nodes == [r["node"] for r in result.sensitivity[:2]]
    assert _quantized_convs(result.int8_onnx) == 1
    assert "kept in FP32" in result.summary()


def test_gate_that_cannot_pass_keeps_fp32(tmp_path, fp32, monkeypatch):
    from toolchain.calibration import gate as gate_mod

    monkeypatch.setattr(gate_mod, "ort_metric", lambda cfg, path, split, n: (0.5 if "int8" in Path(path).name
                                                                              else 1.0, {"images": 4}))
    cfg = make_cfg(tmp_path, gate=0.99, max_fallback_nodes=1)
    result = run_int8_gate(cfg, fp32, tmp_path / "g", calibration_set(cfg), log=lambda s: None)
    assert not result.passed and result.int8_onnx is None and len(result.excluded_nodes) == 1
    assert (tmp_path / "g" / "model.int8.rejected.onnx").exists()
    assert "FAILED" in result.summary()


def _conv_names(path):
    import onnx
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]


def test_int8_benchmark_on_tiny_synthetic_config(tmp_path):
    import yaml

    from toolchain.models import build_from_config
    from toolchain.train.checkpoint import save_checkpoint

    cfg = make_cfg(tmp_path)
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"source", "profile"})))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ck.pt", build_from_config(cfg), cfg)
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "int8.py"), "--config", str(cfg_path),
                           "--checkpoint", str(tmp_path / "ck.pt"), "--out", str(out), "--split", "test",
                           "--max-images", "4", "--latency-runs", "3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads((out / "int8_camvid_segnet.json").read_text())
    assert res["fp32"]["miou"] >= 0 and res["int8"]["size_bytes"] < res["fp32"]["size_bytes"] * 1.5
    assert "command" in res and "gate" in res and (out / "int8_camvid_segnet.md").exists()
