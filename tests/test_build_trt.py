"""TensorRT: version logic, sidecar compatibility, parser-error text and the builder flow against a fake
`tensorrt` module here; real engine build + run where `tensorrt` imports (skipped otherwise, reason printed)."""
import sys
import types

import numpy as np
import pytest

from toolchain.build.sidecar import check_engine_compatible
from toolchain.build.trt_compat import (implicit_int8_supported, network_flags, parse_version,
                                        tensorrt_available)
from toolchain.errors import ToolchainError

needs_trt = pytest.mark.skipif(not tensorrt_available(), reason="tensorrt is not installed here (no wheel in this "
                               "workplace); runs on a machine with TensorRT 8.5-10.x")


def fake_trt(version):
    trt = types.SimpleNamespace(__version__=version)
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0, STRONGLY_TYPED=5)
    return trt


def test_version_parsing_and_flags():
    assert parse_version("8.6.1.6") == (8, 6, 1) and parse_version("10.3") == (10, 3, 0)
    assert network_flags(fake_trt("8.5.2")) == 1 and network_flags(fake_trt("10.3.0")) == 0
    assert implicit_int8_supported("10.3.0") and not implicit_int8_supported("11.0.0")


def test_sidecar_compatibility_messages():
    side = {"tensorrt_version": "8.6.2", "compute_capability": "8.7", "gpu_name": "Orin"}
    check_engine_compatible(side, "8.6.2.3", {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(ToolchainError, match="TensorRT 8.6.2 .*10.3.0.*rebuild it on this device"):
        check_engine_compatible(side, "10.3.0", {"name": "Orin", "compute_capability": "8.7"})
    with pytest.raises(ToolchainError, match="compute capability 8.7.*8.9"):
        check_engine_compatible(side, "8.6.2", {"name": "RTX 4090", "compute_capability": "8.9"})
    warn = check_engine_compatible(side, "8.6.2", {"name": "Orin NX", "compute_capability": "8.7"})
    assert warn and "Orin NX" in warn[0]


class _Recorder:
    """A minimal stand-in for the tensorrt module that records the builder calls."""

    def __init__(self, version, parse_ok=True):
        self.calls, self.version, self.parse_ok = [], version, parse_ok

    def module(self):
        rec = self
        trt = fake_trt(self.version)
        trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda s, lvl: None})
        trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
        trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", GPU_FALLBACK="GPU_FALLBACK")
        trt.DeviceType = types.SimpleNamespace(DLA="DLA")

        class Err:
            def node(self): return 3
            def node_name(self): return "/decoder/MaxUnpool"
            def node_operator(self): return "MaxUnpool"
            def desc(self): return "No importer registered for op: MaxUnpool"

        class Parser:
            num_errors = 0 if rec.parse_ok else 1
            def __init__(self, net, logger): pass
            def parse_from_file(self, path): return rec.parse_ok
            def get_error(self, i): return Err()

        class Cache:
            def serialize(self): return b"timing"

        class Config:
            def set_memory_pool_limit(self, pool, size): rec.calls.append(("workspace", size))
            def create_timing_cache(self, data): return Cache()
            def set_timing_cache(self, cache, ignore_mismatch): rec.calls.append(("timing_cache",))
            def get_timing_cache(self): return Cache()
            def add_optimization_profile(self, p): rec.calls.append(("profile", p.shapes))
            def set_flag(self, flag): rec.calls.append(("flag", flag))
            def __setattr__(self, k, v): rec.calls.append(("set", k, v))

        class Profile:
            def set_shape(self, name, mn, opt, mx): self.shapes = (name, mn, opt, mx)

        class Builder:
            def __init__(self, logger): pass
            def create_network(self, flags): rec.calls.append(("network_flags", flags)); return object()
            def create_builder_config(self): return Config()
            def create_optimization_profile(self): return Profile()
            def build_serialized_network(self, net, cfg): return b"ENGINE"

        trt.Builder, trt.OnnxParser = Builder, Parser
        return trt


@pytest.mark.parametrize("version,flags", [("8.5.2", 1), ("10.3.0", 0)])
def test_builder_flow_with_fake_tensorrt(tmp_path, monkeypatch, version, flags):
    from toolchain.build.sidecar import read_sidecar
    from toolchain.build.trt_engine import EngineRequest, build_engine

    rec = _Recorder(version)
    monkeypatch.setitem(sys.modules, "tensorrt", rec.module())
    onnx_path = tmp_path / "m.onnx"
    onnx_path.write_bytes(b"onnx")
    prof = {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}
    req = EngineRequest(onnx_path, tmp_path / "m.engine", "fp16", 256, prof, "jetson-orin-nx-16gb", dla_core=1,
                        timing_cache=tmp_path / "timing.cache")
    side = build_engine(req, log=lambda s: None)
    assert ("network_flags", flags) in rec.calls and ("workspace", 256 << 20) in rec.calls
    assert ("flag", "FP16") in rec.calls and ("flag", "GPU_FALLBACK") in rec.calls
    assert ("set", "DLA_core", 1) in rec.calls and ("profile", ("input", [1, 3, 8, 8], [1, 3, 8, 8], [4, 3, 8, 8])) \
        in rec.calls
    assert (tmp_path / "m.engine").read_bytes() == b"ENGINE" and (tmp_path / "timing.cache").read_bytes() == b"timing"
    assert read_sidecar(tmp_path / "m.engine")["tensorrt_version"] == version == side["tensorrt_version"]


def test_parser_error_names_node(tmp_path, monkeypatch):
    from toolchain.build.trt_engine import EngineRequest, build_engine

    monkeypatch.setitem(sys.modules, "tensorrt", _Recorder("10.3.0", parse_ok=False).module())
    (tmp_path / "m.onnx").write_bytes(b"onnx")
    req = EngineRequest(tmp_path / "m.onnx", tmp_path / "m.engine", "fp32", 64,
                        {"min": [1], "opt": [1], "max": [1]}, "t")
    with pytest.raises(ToolchainError, match=r"node '/decoder/MaxUnpool' \(MaxUnpool\): No importer"):
        build_engine(req, log=lambda s: None)


@needs_trt
def test_real_tensorrt_build_and_run(tmp_path):
    import torch
    import torch.nn as nn

    from toolchain.build import build
    from toolchain.config import validate_config
    from toolchain.export import export_model
    from toolchain.runtime import TrtRunner

    cfg = validate_config({"name": "trt", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
                           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 2},
                           "out_dir": str(tmp_path / "runs")})
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    export_model(net, cfg, tmp_path / "m.onnx", real_images=0, log=None)
    result = build(cfg, tmp_path / "m.onnx", "desktop-gpu", "fp32", tmp_path / "out", log=lambda s: None)
    assert result.engine_built and result.record["sidecar"]["engine_sha256"]
    x = np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)
    with TrtRunner(result.artifact) as runner:
        out = runner.infer({"input": x})["output"]
    np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-3, atol=1e-3)
