"""Builders without TensorRT: ONNX Runtime CPU engines, TensorRT-target artifacts, profiles, trtexec text, bad inputs."""
import json
import os
import shutil
import subprocess

import pytest
import torch
import torch.nn as nn

from toolchain.build import build, optimisation_profile, trtexec_command
from toolchain.artifacts.trt_compat import tensorrt_available
from conftest import tiny_synthetic_config
from toolchain.errors import ToolchainError
from toolchain.export import export_model
from toolchain.targets import load_target


def make_cfg(tmp_path, **q):
    return tiny_synthetic_config(tmp_path, "b", **q)


@pytest.fixture
def onnx_model(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1)).eval()
    path = tmp_path / "m.onnx"
    export_model(net, make_cfg(tmp_path), path, real_images=0, log=None)
    return path


def test_cpu_fp32_build(tmp_path, onnx_model):
    result = build(make_cfg(tmp_path), onnx_model, "cpu", "fp32", tmp_path / "out", log=lambda s: None)
    assert result.engine_built and result.artifact.name == "model.opt.onnx" and result.artifact.exists()
    rec = json.loads((tmp_path / "out" / "build.json").read_text())
    assert rec["providers_used"] == ["CPUExecutionProvider"] and rec["saved_optimization_level"] == "basic"
    assert rec["precision"] == "fp32" and len(rec["onnx_sha256"]) == 64


def test_cpu_int8_build_runs_gate(tmp_path, onnx_model):
    result = build(make_cfg(tmp_path, gate=0.5), onnx_model, "cpu", "int8", tmp_path / "out", log=lambda s: None)
    assert result.record["precision"] == "int8" and result.artifact.name == "model.int8.opt.onnx"
    gate = result.record["int8"]["gate"]
    assert gate["passed"] and gate["metric"] == "miou" and gate["fp32_metric"] > 0
    assert (tmp_path / "out" / "calibration" / "calibration_set.npy").exists()
    import onnx
    ops = {n.op_type for n in onnx.load(str(tmp_path / "out" / "model.int8.qdq.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_tensorrt_target_without_tensorrt_writes_script(tmp_path, onnx_model):
    if tensorrt_available("tensorrt"):
        pytest.skip("TensorRT (the Jetson flavour) is installed: the engine path is tested in test_build_trt.py")
    logs = []
    result = build(make_cfg(tmp_path), onnx_model, "jetson-orin-nx-16gb", "fp16", tmp_path / "out",
                   log=logs.append, dla_core=0)
    out = tmp_path / "out"
    assert not result.engine_built and result.artifact is None
    assert (out / "model.onnx").exists() and os.access(out / "build_engine.sh", os.X_OK)
    cmd = (out / "trtexec.txt").read_text()
    assert "--fp16" in cmd and "--useDLACore=0 --allowGPUFallback" in cmd and "--memPoolSize=workspace:2048" in cmd
    assert any("where it is installed" in line for line in logs)
    assert (out / "model.fp16.onnx").exists()  # what TensorRT >= 11 builds strongly typed
    subprocess.run(["bash", "-n", str(out / "build_engine.sh")], check=True)


def test_build_script_runs_with_fake_trtexec(tmp_path, onnx_model):
    if shutil.which("python3") is None:
        pytest.skip("python3 not on PATH")
    build(make_cfg(tmp_path), onnx_model, "desktop-gpu", "fp16", tmp_path / "out", log=lambda s: None)
    fake = tmp_path / "trtexec"
    fake.write_text("#!/usr/bin/env bash\nif [ \"$1\" = --help ]; then echo '[TensorRT v100300]'; exit 0; fi\n"
                    "for a in \"$@\"; do case $a in --saveEngine=*) echo engine > \"${a#--saveEngine=}\";; esac; done\n"
                    "echo \"$@\" > args.txt\n")
    fake.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake)}
    subprocess.run(["bash", str(tmp_path / "out" / "build_engine.sh")], check=True, env=env, capture_output=True)
    side = json.loads((tmp_path / "out" / "model.engine.json").read_text())
    from toolchain.artifacts.sidecar import REQUIRED_KEYS, verify_engine_file
    assert set(REQUIRED_KEYS) <= set(side) and side["tensorrt_version"].startswith("10.3")
    verify_engine_file(tmp_path / "out" / "model.engine", side)
    args = (tmp_path / "out" / "args.txt").read_text()
    assert "--fp16" in args and "--minShapes" not in args  # static ONNX: no shape flags
    assert "--onnx=model.onnx" in args and side["engine_onnx_sha256"] == side["onnx_sha256"]


def _fake_trtexec(path, banner):
    path.write_text("#!/usr/bin/env bash\nif [ \"$1\" = --help ]; then echo '[" + banner + "]'; exit 0; fi\n"
                    "for a in \"$@\"; do case $a in --saveEngine=*) echo engine > \"${a#--saveEngine=}\";; esac; done\n"
                    "echo \"$@\" > args.txt\n")
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("banner,version,typed", [("TensorRT v8601", "8.6.1", False),
                                                  ("TensorRT v100300", "10.3.0", False),
                                                  ("TensorRT v110000", "11.0.0", True)])
def test_build_script_in_a_bundle_layout(tmp_path, onnx_model, banner, version, typed):
    """The script finds its ONNX by hash one folder up (bundle layout), checks the right file, and computes
    the TensorRT version from the trtexec banner without the Python module (8601 -> 8.6.1, not 0.86.1)."""
    if shutil.which("python3") is None:
        pytest.skip("python3 not on PATH")
    build(make_cfg(tmp_path), onnx_model, "desktop-gpu", "fp16", tmp_path / "out", log=lambda s: None)
    bundle = tmp_path / "bundle"
    (bundle / "slim-fp16").mkdir(parents=True)
    shutil.copyfile(tmp_path / "out" / "model.onnx", bundle / "slim.onnx")  # as the deploy bundle names it
    for name in ("build_engine.sh", "model.fp16.onnx"):
        shutil.copyfile(tmp_path / "out" / name, bundle / "slim-fp16" / name)
    fake = _fake_trtexec(tmp_path / "trtexec", banner)
    env = {**os.environ, "TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"}  # no python tensorrt module on this PATH
    proc = subprocess.run(["bash", str(bundle / "slim-fp16" / "build_engine.sh")], env=env, capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr and "mismatch" not in proc.stderr
    side = json.loads((bundle / "slim-fp16" / "model.engine.json").read_text())
    assert side["tensorrt_version"] == version and side["strongly_typed"] is typed
    args = (bundle / "slim-fp16" / "args.txt").read_text()
    if typed:
        assert "--onnx=./model.fp16.onnx" in args or "--onnx=model.fp16.onnx" in args
        assert "--stronglyTyped" in args and "--fp16" not in args
    else:
        assert "--onnx=../slim.onnx" in args and "--fp16" in args


def test_build_script_refuses_a_missing_onnx(tmp_path, onnx_model):
    build(make_cfg(tmp_path), onnx_model, "desktop-gpu", "fp32", tmp_path / "out", log=lambda s: None)
    lonely = tmp_path / "elsewhere" / "lonely"  # no ONNX here nor one folder up
    lonely.mkdir(parents=True)
    shutil.copyfile(tmp_path / "out" / "build_engine.sh", lonely / "build_engine.sh")
    fake = _fake_trtexec(tmp_path / "trtexec", "TensorRT v100300")
    proc = subprocess.run(["bash", str(lonely / "build_engine.sh")], env={**os.environ, "TRTEXEC": str(fake)},
                          capture_output=True, text=True)
    assert proc.returncode != 0 and "no ONNX with sha256" in proc.stderr and "model.onnx" in proc.stderr
    assert not (lonely / "model.engine").exists()


def test_int8_on_target_without_int8(tmp_path, onnx_model):
    user = tmp_path / "fp-only.yaml"
    user.write_text("name: fp-only\nbackend: onnxruntime\nprecisions: [fp32]\n")
    with pytest.raises(ToolchainError, match="does not support int8"):
        build(make_cfg(tmp_path), onnx_model, str(user), "int8", tmp_path / "o")


def test_unsupported_op_fails_tensorrt_build_naming_node(tmp_path):
    from test_export import maxunpool_model
    import onnx

    path = tmp_path / "u.onnx"
    onnx.save(maxunpool_model(), str(path))
    with pytest.raises(ToolchainError, match=r"MaxUnpool \(node 'decoder.unpool0'\)"):
        build(make_cfg(tmp_path), path, "jetson", "fp16", tmp_path / "o", log=lambda s: None)


def test_bad_onnx_for_build(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_text("hello")
    with pytest.raises(ToolchainError, match="junk.onnx"):
        build(make_cfg(tmp_path), junk, "cpu", "fp32", tmp_path / "o")


def test_optimisation_profiles():
    gpu = load_target("desktop-gpu")
    p = optimisation_profile(["batch", 3, 240, 320], (240, 320), gpu)
    assert p == {"min": [1, 3, 240, 320], "opt": [1, 3, 240, 320], "max": [8, 3, 240, 320]}
    wide = gpu.model_copy(update={"input_shapes": gpu.input_shapes.model_copy(
        update={"hw_scale": gpu.input_shapes.hw_scale.model_copy(update={"min": 0.5, "max": 1.5})})})
    p = optimisation_profile(["batch", 3, "height", "width"], (240, 320), wide, input_multiple=32)
    assert p["min"][2:] == [128, 160] and p["opt"][2:] == [240, 320] and p["max"][2:] == [352, 480]
    nano = load_target("jetson")
    assert optimisation_profile(["batch", 3, "h", "w"], (120, 160), nano)["max"] == [1, 3, 120, 160]


def test_trtexec_text():
    prof = {"min": [1, 3, 8, 8], "opt": [2, 3, 8, 8], "max": [4, 3, 8, 8]}
    cmd = trtexec_command(onnx="m.onnx", engine="m.engine", precision="int8", workspace_mib=512, profile=prof,
                          calib_cache="c.cache")
    assert cmd.startswith("trtexec --onnx=m.onnx --saveEngine=m.engine --memPoolSize=workspace:512")
    assert "--int8 --fp16 --calib=c.cache" in cmd and "--optShapes=input:2x3x8x8" in cmd
    typed = trtexec_command(onnx="q.onnx", engine="e", precision="int8", workspace_mib=1, profile=prof,
                            strongly_typed=True)
    assert "--stronglyTyped" in typed and "--int8" not in typed
