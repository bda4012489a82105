"""Profiling: latency statistics against hand-computed numbers, tegrastats/nvpmodel parsing,
memory, ONNX cost, roofline and per-layer profiles."""
from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from toolchain.errors import ToolchainError
from toolchain.profile import jetson
from toolchain.profile.cost import compare_layers, onnx_cost
from toolchain.profile.latency import measure_latency
from toolchain.profile.layers import ort_top_layers, trt_top_layers
from toolchain.profile.memory import PeakRSS, rss_bytes
from toolchain.profile.roofline import efficiency, roofline_floor
from toolchain.runtime.stats import format_trtexec, latency_stats, percentile_nearest_rank


def test_latency_stats_hand_computed():
    # 10 samples 1..10 ms: mean 5.5, median 5.5, nearest-rank p90 = 9th = 9, p95 = p99 = 10,
    # population std = sqrt(8.25), throughput = 10 runs / 55 ms = 181.81.. qps
    s = latency_stats([3, 1, 2, 10, 4, 5, 6, 7, 8, 9], batch=4)
    assert (s["min_ms"], s["max_ms"], s["mean_ms"], s["median_ms"]) == (1, 10, 5.5, 5.5)
    assert (s["p90_ms"], s["p95_ms"], s["p99_ms"]) == (9, 10, 10)
    assert s["std_ms"] == pytest.approx(8.25 ** 0.5)
    assert s["throughput_qps"] == pytest.approx(1000 * 10 / 55)
    assert s["throughput_ips"] == pytest.approx(4 * 1000 * 10 / 55)
    text = format_trtexec(s)
    assert "Throughput: 181.8 qps" in text and "percentile(99%) = 10 ms" in text and "median = 5.5 ms" in text


def test_median_odd_and_percentile_single_sample():
    assert latency_stats([5, 1, 3])["median_ms"] == 3
    assert percentile_nearest_rank([7.0], 99) == 7.0
    # 100 samples 1..100: p90 is exactly the 90th
    assert percentile_nearest_rank(list(range(1, 101)), 90) == 90
    with pytest.raises(ToolchainError):
        latency_stats([])


def test_measure_latency_with_fake_clock():
    ticks = itertools.count(0.0, 0.002)  # every clock() call advances 2 ms
    calls = []
    out = measure_latency(lambda: calls.append(1), runs=5, warmup_s=0.005, clock=lambda: next(ticks))
    # warm-up: start=0, after call 1 clock=2ms<5, call 2 -> 4ms, call 3 -> 6ms >= 5 stops
    assert out["warmup_calls"] == 3
    assert out["runs"] == 5 and len(calls) == 8
    assert out["samples_ms"] == pytest.approx([2.0] * 5)
    assert out["median_ms"] == pytest.approx(2.0)
    with pytest.raises(ToolchainError, match="--runs"):
        measure_latency(lambda: None, runs=0)


ORIN_LINE = ("08-05-2024 10:00:00 RAM 2456/15388MB (lfb 2948x4MB) SWAP 0/7694MB (cached 0MB) "
             "CPU [2%@729,1%@729,0%@729,0%@729] EMC_FREQ 0%@2133 GR3D_FREQ 37%@[305,305] VIC_FREQ 115 "
             "APE 174 CV0@-256C CPU@46.25C SOC2@43.5C VDD_IN 4121mW/3990mW VDD_CPU_GPU_CV 480mW/470mW "
             "VDD_SOC 1281mW/1270mW")
XAVIER_LINE = ("RAM 1806/7765MB (lfb 1x4MB) SWAP 0/3883MB (cached 0MB) CPU [12%@1190,off,off] "
               "EMC_FREQ 0% GR3D_FREQ 0% AO@36C GPU@36.5C VDD_IN 3791/3791 VDD_CPU_GPU_CV 477/477 VDD_SOC 1241/1241")
NANO_OLD_LINE = ("RAM 1543/3964MB (lfb 1x2MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [3%@102] "
                 "EMC_FREQ 3%@1600 GR3D_FREQ 0%@76 APE 25 POM_5V_IN 3238/3238 POM_5V_GPU 0/0 POM_5V_CPU 491/491")


def test_tegrastats_orin_line():
    s = jetson.parse_tegrastats_line(ORIN_LINE)
    assert s["ram_used_mb"] == 2456 and s["ram_total_mb"] == 15388
    assert s["gpu_load_pct"] == 37
    assert s["rails_mw"]["VDD_IN"] == {"current": 4121, "average": 3990}
    assert s["rails_mw"]["VDD_SOC"] == {"current": 1281, "average": 1270}
    assert set(s["rails_mw"]) == {"VDD_IN", "VDD_CPU_GPU_CV", "VDD_SOC"}
    assert s["input_power_mw"] == 4121 and s["input_rail"] == "VDD_IN"


def test_tegrastats_older_formats_and_summary():
    x = jetson.parse_tegrastats_line(XAVIER_LINE)
    assert x["rails_mw"]["VDD_CPU_GPU_CV"] == {"current": 477, "average": 477} and x["input_power_mw"] == 3791
    n = jetson.parse_tegrastats_line(NANO_OLD_LINE)
    assert "IRAM" not in n["rails_mw"] and n["input_rail"] == "POM_5V_IN" and n["input_power_mw"] == 3238
    summary = jetson.summarize_tegrastats([jetson.parse_tegrastats_line(ORIN_LINE), x])
    assert summary["ram_used_peak_mb"] == 2456 and summary["power_peak_mw"] == 4121
    assert summary["power_mean_mw"] == pytest.approx((4121 + 3791) / 2)


def test_nvpmodel_and_release_parsing(tmp_path):
    assert jetson.parse_nvpmodel("NV Power Mode: MAXN\n0\n") == "MAXN (mode 0)"
    assert jetson.parse_nvpmodel("NV Power Mode: 15W\n") == "15W"
    assert jetson.parse_nvpmodel("nvpmodel: command not found") is None
    rel = tmp_path / "nv_tegra_release"
    rel.write_text("# R36 (release), REVISION: 3.0, GCID: 36191598, BOARD: generic, EABI: aarch64\n")
    assert jetson.is_jetson(rel) and jetson.l4t_release(rel) == "36.3.0"
    assert not jetson.is_jetson(tmp_path / "missing")


def test_tegrastats_sampler_off_jetson_says_why():
    with jetson.TegrastatsSampler(executable="definitely-not-tegrastats") as s:
        pass
    assert s.summary() == {"available": False, "reason": "tegrastats not found (not a Jetson)"}


def test_peak_rss_delta_sees_allocation():
    assert rss_bytes() > 0
    with PeakRSS() as rss:
        block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB touched
        del block
    assert rss.delta_bytes >= 48 * 1024 * 1024, rss.as_dict()


def test_roofline_hand_computed():
    # 1 GMAC = 2 GFLOP at 1 TFLOP/s -> 2 ms; 10 MB at 10 GB/s -> 1 ms: compute bound, floor 2 ms
    r = roofline_floor(10**9, 10**7, 1e12, 1e10)
    assert r["kind"] == "estimate" and r["bound"] == "compute"
    assert r["compute_ms"] == pytest.approx(2.0) and r["memory_ms"] == pytest.approx(1.0) and r["floor_ms"] == pytest.approx(2.0)
    assert efficiency(2.0, 8.0) == 0.25 and efficiency(None, 8.0) is None
    assert roofline_floor(1, 1, None, None)["available"] is False


def _tiny_onnx(path, cout=8):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, cout, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                              torch.nn.Linear(cout * 8 * 8, 10))
    torch.onnx.export(net, torch.zeros(1, 3, 8, 8), str(path), input_names=["input"], output_names=["output"],
                      dynamo=False)
    return path


def test_onnx_cost_hand_computed(tmp_path):
    cost = onnx_cost(_tiny_onnx(tmp_path / "m.onnx"))
    # conv: 8x8x8 outputs x 3x3x3 = 13824 MACs; linear 512 -> 10 = 5120 MACs
    assert cost["macs"] == 13824 + 5120
    assert cost["params"] == (8 * 27 + 8) + (512 * 10 + 10)
    conv = next(l for l in cost["layers"] if l["op"] == "Conv")
    # reads input 3x8x8 + weight 216 + bias 8, writes 8x8x8, all float32
    assert conv["bytes_moved"] == 4 * (192 + 216 + 8 + 512)
    slim = onnx_cost(_tiny_onnx(tmp_path / "s.onnx", cout=4))
    rows = compare_layers(cost, slim)
    conv_row = next(r for r in rows if r["op"] == "Conv")
    assert conv_row["macs_before"] == 13824 and conv_row["macs_after"] == 6912


def test_ort_and_trt_top_layers(tmp_path):
    trace = [{"cat": "Session", "name": "session_initialization", "dur": 999},
             {"cat": "Node", "name": "conv1_kernel_time", "dur": 300, "args": {"op_name": "Conv"}},
             {"cat": "Node", "name": "conv1_kernel_time", "dur": 100, "args": {"op_name": "Conv"}},
             {"cat": "Node", "name": "relu_kernel_time", "dur": 100, "args": {"op_name": "Relu"}},
             {"cat": "Node", "name": "relu_fence_before", "dur": 5000, "args": {"op_name": "Relu"}}]
    (tmp_path / "p.json").write_text(json.dumps(trace))
    top = ort_top_layers(tmp_path / "p.json")
    assert [t["name"] for t in top] == ["conv1", "relu"]
    assert top[0]["mean_ms"] == pytest.approx(0.2) and top[0]["percent"] == pytest.approx(80.0)
    trt = trt_top_layers([{"count": 10}, {"name": "a", "timeMs": 5.0, "averageMs": 0.5},
                          {"name": "b", "timeMs": 15.0, "averageMs": 1.5}], k=1)
    assert trt == [{"name": "b", "op": "TensorRT layer", "mean_ms": 1.5, "total_ms": 15.0, "percent": 75.0}]
    with pytest.raises(ToolchainError, match="cannot read profiling JSON"):
        ort_top_layers(tmp_path / "missing.json")
