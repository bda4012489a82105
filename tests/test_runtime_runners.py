"""Runners: one interface across torch and ONNX Runtime; TensorRT runner refuses corrupt/foreign engines in one line."""
import json

import numpy as np
import pytest
import torch
import torch.nn as nn

from toolchain.artifacts.sidecar import make_sidecar, write_sidecar
from toolchain.errors import ToolchainError
from toolchain.runtime import OrtRunner, TorchRunner, TrtRunner, predict_fn


@pytest.fixture
def net_and_onnx(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(net, (torch.randn(2, 3, 8, 8),), str(path), input_names=["input"], output_names=["output"],
                      opset_version=17, dynamo=False)
    return net, path


def test_torch_and_ort_runners_agree(net_and_onnx):
    net, path = net_and_onnx
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with TorchRunner(net, (2, 3, 8, 8)) as tr, OrtRunner(path) as orr:
        a, b = tr.infer({"input": x})["output"], orr.infer({"input": x})["output"]
        assert tr.backend == "torch" and orr.backend == "onnxruntime"
        assert orr.input_names == ["input"] and orr.input_shapes["input"] == (2, 3, 8, 8)
        assert orr.last_inference_s > 0 and tr.last_inference_s > 0
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not orr.is_loaded


def test_predict_fn_chunks_static_batch(net_and_onnx):
    net, path = net_and_onnx
    x = np.random.default_rng(1).standard_normal((5, 3, 8, 8)).astype(np.float32)
    with OrtRunner(path) as runner:
        out = predict_fn(runner)(x)
    assert out.shape == (5, 4, 8, 8)
    np.testing.assert_allclose(out, net(torch.from_numpy(x)).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_ort_providers_filtered_and_profiling(net_and_onnx, tmp_path):
    _, path = net_and_onnx
    runner = OrtRunner(path, ["TensorrtExecutionProvider", "CPUExecutionProvider"],
                       profile_prefix=str(tmp_path / "prof"))
    with runner:
        runner.infer({"input": np.zeros((2, 3, 8, 8), np.float32)})
    assert runner.providers == ["CPUExecutionProvider"]
    assert "TensorrtExecutionProvider" in runner.skipped_providers
    assert runner.profile_path and json.load(open(runner.profile_path))


def test_ort_runner_runs_the_bytes_it_is_given(net_and_onnx, tmp_path):
    """The bundle loader hands over the bytes it verified: the file on disk is not read again."""
    _, path = net_and_onnx
    data = path.read_bytes()
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8)).astype(np.float32)
    with OrtRunner(path) as from_file:
        ref = from_file.infer({"input": x})["output"]
    path.write_bytes(b"replaced after verification")
    with OrtRunner(path, model_bytes=data) as from_bytes:
        np.testing.assert_array_equal(from_bytes.infer({"input": x})["output"], ref)
    with pytest.raises(ToolchainError, match="could not load"):
        OrtRunner(path).load()
    with pytest.raises(ToolchainError, match="could not load"):
        OrtRunner(tmp_path / "gone.onnx", model_bytes=b"junk").load()


def test_runner_errors_are_one_line(net_and_onnx, tmp_path):
    _, path = net_and_onnx
    with OrtRunner(path) as runner:
        with pytest.raises(ToolchainError, match="missing input"):
            runner.infer({"x": np.zeros(1)})
        with pytest.raises(ToolchainError, match="inference failed"):
            runner.infer({"input": np.zeros((2, 3, 9, 9), np.float32)})
    with pytest.raises(ToolchainError, match="before load"):
        OrtRunner(path).infer({"input": np.zeros(1)})
    with pytest.raises(ToolchainError, match="CUDA"):
        TorchRunner(nn.Identity(), precision="fp16")


def _engine_with_sidecar(tmp_path, **over):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"serialized-engine-bytes")
    side = make_sidecar(engine_path=engine, tensorrt_version="10.3.0", gpu={"name": "Orin", "compute_capability": "8.7"},
                        precision="fp16", input_shapes={"input": {"min": [1, 3, 8, 8]}}, dla_core=None,
                        onnx_sha256="0" * 64, target="jetson")
    side.update(over)
    write_sidecar(engine, side)
    return engine


def test_trt_runner_rejects_corrupt_engine_and_sidecar(tmp_path):
    engine = _engine_with_sidecar(tmp_path)
    engine.write_bytes(b"tampered")
    with pytest.raises(ToolchainError, match="checksum.*rebuild"):
        TrtRunner(engine).load()
    (tmp_path / "m.engine.json").write_text("{not json")
    with pytest.raises(ToolchainError, match="corrupt.*rebuild"):
        TrtRunner(engine).load()
    (tmp_path / "m.engine.json").unlink()
    with pytest.raises(ToolchainError, match="no sidecar"):
        TrtRunner(engine).load()


def test_trt_runner_without_tensorrt_names_the_package(tmp_path):
    from toolchain.artifacts.trt_compat import tensorrt_available

    if tensorrt_available():
        pytest.skip("tensorrt is installed here")
    with pytest.raises(ToolchainError, match="'tensorrt' package"):
        TrtRunner(_engine_with_sidecar(tmp_path)).load()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch runner fp16 / CUDA graph)")
def test_torch_runner_cuda_fp16_and_graph(net_and_onnx):
    net, _ = net_and_onnx
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    ref = net(torch.from_numpy(x)).detach().numpy()
    with TorchRunner(net, (2, 3, 8, 8), device="cuda", precision="fp16", cuda_graph=True) as runner:
        out = runner.infer({"input": x})["output"]
    np.testing.assert_allclose(out, ref, atol=2e-2)
