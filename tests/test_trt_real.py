"""The real TensorRT-RTX builder (`tensorrt-rtx-cu12`, installed by `make test`): FP32 / FP16 (FP16 ONNX,
strongly typed) / INT8 (TensorRT-rules Q/DQ) engines built on this CPU-only machine, the INT8 gate on
exactly the file TensorRT builds, parser errors on one line, lint of Q/DQ TensorRT refuses, DLA refused
where none exists, deploy rows that say 'built, not measured here', and the TensorRT-RTX engine
refused (one line) where no RTX GPU is present."""
import json
import sys

import numpy as np
import onnx
import pytest
import torch

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from conftest import tiny_synthetic_config  # noqa: E402

from toolchain.errors import ToolchainError  # noqa: E402

trt = pytest.importorskip("tensorrt_rtx", reason="pip install -e '.[trt]' (part of `make test`)")


def _cfg(tmp_path, width=0.5, **q):
    from toolchain.config import validate_config

    return validate_config({"name": "rtx", "task": "segmentation", "model": {"name": "segnet", "width": width},
                            "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 4},
                            "train": {"batch_size": 2}, "quantize": {"calib_images": 4, "gate": 0.01, **q},
                            "out_dir": str(tmp_path / "runs")})


@pytest.fixture(scope="module")
def segnet_half(tmp_path_factory):
    """segnet width 0.5 (about 7 M weights: large enough that engine size follows precision), 32x32."""
    from toolchain.export import export_model
    from toolchain.models import build_from_config

    tmp = tmp_path_factory.mktemp("rtx")
    cfg = _cfg(tmp)
    torch.manual_seed(0)
    export_model(build_from_config(cfg).eval(), cfg, tmp / "m.onnx", real_images=0, log=None)
    return cfg, tmp


@pytest.fixture(scope="module")
def built(segnet_half):
    from toolchain.build import build

    cfg, tmp = segnet_half
    return {p: build(cfg, tmp / "m.onnx", "desktop-rtx", p, tmp / p, log=lambda s: None)
            for p in ("fp32", "fp16", "int8")}


def test_three_precisions_build_with_real_tensorrt_rtx(built):
    sizes = {}
    for precision, result in built.items():
        assert result.engine_built and result.artifact.name == "model.engine"
        side = json.loads((result.artifact.parent / "model.engine.json").read_text())
        assert side["tensorrt_flavour"] == "tensorrt-rtx" and side["tensorrt_version"] == trt.__version__
        assert side["compute_capabilities"] == ["8.6", "8.9", "12.0"] and side["strongly_typed"]
        assert side["precision"] == result.record["precision"] == precision and side["layers"] > 10
        sizes[precision] = result.artifact.stat().st_size
    # a mislabelled precision (an FP32 network called fp16 / int8) fails here
    assert sizes["fp16"] < 0.6 * sizes["fp32"] and sizes["int8"] < sizes["fp16"], sizes
    assert built["fp16"].record["engine_onnx"] == "model.fp16.onnx" and built["fp16"].record["fp16_check"]["passed"]
    assert built["int8"].record["engine_onnx"] == "model.int8.qdq.onnx"


def test_int8_gate_evaluates_the_file_tensorrt_builds(built):
    from toolchain.utils.io import sha256_file

    result = built["int8"]
    out = result.artifact.parent
    gate = result.record["int8"]["gate"]
    assert gate["passed"] and gate["int8_onnx"] == str(out / "model.int8.qdq.onnx")
    side = json.loads((out / "model.engine.json").read_text())
    assert side["engine_onnx_sha256"] == sha256_file(out / "model.int8.qdq.onnx")
    qdq = onnx.load(str(out / "model.int8.qdq.onnx"))
    inits = {i.name: i for i in qdq.graph.initializer}
    dq_inputs = [inits[n.input[0]].data_type for n in qdq.graph.node
                 if n.op_type == "DequantizeLinear" and n.input[0] in inits]
    assert dq_inputs and set(dq_inputs) == {onnx.TensorProto.INT8}  # INT8 weights, no INT32 bias DQ


def test_fp16_onnx_keeps_fp32_io_and_matches(built):
    out = built["fp16"].artifact.parent
    half = onnx.load(str(out / "model.fp16.onnx"))
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert half.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    check = built["fp16"].record["fp16_check"]
    assert check["precision"] == "fp16" and check["tensors"][0]["max_abs"] > 0  # really ran two models


def test_engine_refused_in_one_line_without_an_rtx_gpu(built):
    from toolchain.runtime.trt_runner import TrtRunner

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the engine may run here")
    with pytest.raises(ToolchainError, match="compute capability 8.6,8.9,12.0 .no GPU found here") as err:
        TrtRunner(built["fp32"].artifact).load()
    assert "\n" not in str(err.value)
    assert built["fp32"].record["engine_check"]["ran"] is False


def _ort_style_qdq(src, dst):
    """What qdq.py wrote before: ONNX Runtime's default Q/DQ, biases quantized to INT32."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from toolchain.calibration.qdq import ArrayReader

    arrays = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    quantize_static(str(src), str(dst), ArrayReader(arrays, "input"), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def test_int32_bias_qdq_fails_lint_and_parser_in_one_line(tmp_path):
    from toolchain.build.trt_engine import parse_onnx
    from toolchain.export import export_model
    from toolchain.export.lint import lint_onnx
    from toolchain.models import build_from_config
    from toolchain.targets import load_target

    cfg = _cfg(tmp_path, width=0.125)
    torch.manual_seed(0)
    export_model(build_from_config(cfg).eval(), cfg, tmp_path / "m.onnx", real_images=0, log=None)
    _ort_style_qdq(tmp_path / "m.onnx", tmp_path / "bad.onnx")
    for target in ("desktop-rtx", "jetson-orin-nx-16gb"):
        errors = lint_onnx(tmp_path / "bad.onnx", load_target(target)).errors
        assert errors and errors[0].op_type == "DequantizeLinear" and "INT32" in errors[0].message
    assert not lint_onnx(tmp_path / "bad.onnx", load_target("cpu")).errors  # ONNX Runtime runs it
    with pytest.raises(ToolchainError, match=r"cannot parse bad.onnx: node '[^']*bias_DequantizeLinear' "
                                             r"\(DequantizeLinear\): .*input has type Int32") as err:
        parse_onnx(trt, tmp_path / "bad.onnx", strongly_typed=True)
    assert "\n" not in str(err.value) and "cudaError" not in str(err.value)


def test_dla_where_the_gpu_has_none_is_one_line(segnet_half):
    from toolchain.build.trt_engine import EngineRequest, build_engine

    cfg, tmp = segnet_half
    prof = {"min": [1, 3, 32, 32], "opt": [1, 3, 32, 32], "max": [1, 3, 32, 32]}
    req = EngineRequest(tmp / "m.onnx", tmp / "dla.engine", "fp32", 256, prof, "t", dla_core=0,
                        flavour="tensorrt-rtx")
    with pytest.raises(ToolchainError, match=r"^DLA core 0 requested but this GPU has 0 DLA core") as err:
        build_engine(req, log=lambda s: None)
    assert "\n" not in str(err.value) and not (tmp / "dla.engine").exists()


def test_dynamic_batch_builds_with_the_target_profile(tmp_path):
    from toolchain.build import build
    from toolchain.export import export_model
    from toolchain.models import build_from_config

    cfg = _cfg(tmp_path, width=0.125)
    cfg = cfg.model_copy(update={"export": cfg.export.model_copy(update={"dynamic": ["batch"]})})
    torch.manual_seed(0)
    export_model(build_from_config(cfg).eval(), cfg, tmp_path / "d.onnx", real_images=0, log=None)
    result = build(cfg, tmp_path / "d.onnx", "desktop-rtx", "fp16", tmp_path / "o", log=lambda s: None)
    side = json.loads((tmp_path / "o" / "model.engine.json").read_text())
    assert result.engine_built and side["input_shapes"]["input"]["max"][0] == 4  # desktop-rtx batch max
    assert side["input_shapes"]["input"]["min"][0] == 1


def test_builder_error_is_one_line_with_its_cause(tmp_path):
    """A real upstream limit: TensorRT-RTX 1.7 cannot compile an FP32 GEMM for Turing (SM75)."""
    from toolchain.build import build
    from toolchain.config import validate_config
    from toolchain.export import export_model
    from toolchain.models import build_from_config

    cfg = validate_config({"name": "c", "task": "classification", "model": {"name": "resnet20", "width": 0.25},
                           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 10, "max_images": 4},
                           "out_dir": str(tmp_path / "runs")})
    torch.manual_seed(0)
    export_model(build_from_config(cfg).eval(), cfg, tmp_path / "r.onnx", real_images=0, log=None)
    turing = tmp_path / "turing.yaml"
    turing.write_text("name: turing\nbackend: tensorrt\ntensorrt_flavour: tensorrt-rtx\nprecisions: [fp32]\n"
                      "tensorrt: {min: '1.7', max: '1.x'}\ncompute_capabilities: ['7.5']\n")
    with pytest.raises(ToolchainError, match=r"could not build an engine from model.onnx: .*'/fc/Gemm' for Turing "
                                             r"\(SM75\): FP32 GEMM is not supported") as err:
        build(cfg, tmp_path / "r.onnx", str(turing), "fp32", tmp_path / "o", log=lambda s: None)
    assert "\n" not in str(err.value) and ".cpp" not in str(err.value)
