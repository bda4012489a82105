"""`acsl deploy` for TensorRT targets on this CPU-only machine.

desktop-rtx: TensorRT-RTX builds real fp32/fp16/int8 engines; the report says 'built, not measured here
(needs an RTX GPU)' (never 'failed: ok'); the bundle holds the engines next to their sidecars and the ONNX
each was built from, and load() falls back to ONNX Runtime on that ONNX with a one-line reason.
jetson: the engines are left to build_engine.sh, which runs inside the bundle (stub trtexec) and finds
the right ONNX by hash; the manifest lists the engines the scripts will write."""
import json
import os
import shutil
import subprocess

import numpy as np
import pytest

from test_deploy import fast_demo
from toolchain.artifacts.bundle import verify_bundle
from toolchain.deploy.pipeline import run_deploy

pytest.importorskip("tensorrt_rtx", reason="pip install -e '.[trt]' (part of `make test`)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trtdeploy")
    cfg = fast_demo(tmp)
    rtx = run_deploy(cfg, "desktop-rtx", runs=3, warmup_s=0.0, log=lambda s: None)
    jetson = run_deploy(cfg, "jetson-orin-nx-16gb", runs=3, warmup_s=0.0, log=lambda s: None)
    return tmp, rtx, jetson


def test_desktop_rtx_bundle_holds_real_engines(runs):
    _, rtx, _ = runs
    manifest = verify_bundle(rtx.bundle)
    engines = {(a["variant"], a["precision"]): a["file"] for a in manifest["artifacts"]
               if a["kind"] == "tensorrt-engine"}
    assert set(engines) == {(v, p) for v in ("dense", "slim") for p in ("fp32", "fp16", "int8")}
    for (variant, precision), name in engines.items():
        side = json.loads((rtx.bundle / (name + ".json")).read_text())
        assert side["tensorrt_flavour"] == "tensorrt-rtx" and side["precision"] == precision
        assert side["compute_capabilities"] == ["8.6", "8.9", "12.0"] and (rtx.bundle / name).stat().st_size > 0
    fallback = {(a["variant"], a["precision"]): a["file"] for a in manifest["artifacts"] if a["kind"] == "onnx"}
    assert fallback[("slim", "fp16")] == "slim-fp16/model.fp16.onnx"
    assert fallback[("slim", "int8")] == "slim-int8/model.int8.qdq.onnx" and fallback[("slim", "fp32")] == "slim.onnx"
    assert manifest["default_precision"] == "fp16" and manifest["device_builds"] == []


def test_desktop_rtx_report_says_built_not_measured(runs):
    _, rtx, _ = runs
    report = json.loads(rtx.report_json.read_text())
    rows = {r["variant"]: r for r in report["variants"]}
    for name in ("dense-fp32", "dense-fp16", "dense-int8", "slim-fp32", "slim-fp16", "slim-int8"):
        assert rows[name]["status"] == "built", rows[name]
        assert rows[name]["reason"].startswith("not measured here (needs an RTX GPU")
        assert rows[name]["latency_median_ms"] is None and rows[name]["estimate"]["kind"] == "estimate"
    assert not any(r["status"] == "failed" and r["reason"] in ("ok", None) for r in report["variants"])
    assert "built here by tensorrt-rtx" in report["notes"][0]
    assert "built: not measured here (needs an RTX GPU" in (rtx.bundle / "report.md").read_text()


def test_load_falls_back_to_onnx_runtime_in_one_line(runs):
    from toolchain.runtime import load

    _, rtx, _ = runs
    model = load(rtx.bundle)  # default precision fp16: the engine cannot run here, its FP16 ONNX can
    assert model.precision == "fp16" and "model.fp16.onnx" in model.backend_description
    assert "TensorRT engine not usable here" in model.fallback_reason and "\n" not in model.fallback_reason
    frame = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    assert model(frame).class_map.shape == (32, 32)


def test_jetson_bundle_scripts_build_inside_the_bundle(runs, tmp_path):
    _, _, jetson = runs
    manifest = verify_bundle(jetson.bundle)
    report = json.loads(jetson.report_json.read_text())
    for row in report["variants"]:
        if "host reference" not in row["variant"]:
            assert row["status"] == "skipped" and "build_engine.sh" in row["reason"], row
    planned = {(d["variant"], d["precision"]): d for d in manifest["device_builds"]}
    assert set(planned) == {(v, p) for v in ("dense", "slim") for p in ("fp32", "fp16", "int8")}
    assert manifest["default_precision"] == "fp16"
    if shutil.which("python3") is None:
        pytest.skip("python3 not on PATH")
    bundle = tmp_path / "bundle"
    shutil.copytree(jetson.bundle, bundle)
    fake = tmp_path / "trtexec"
    fake.write_text("#!/usr/bin/env bash\nif [ \"$1\" = --help ]; then echo '[TensorRT v8602]'; exit 0; fi\n"
                    "for a in \"$@\"; do case $a in --saveEngine=*) echo engine > \"${a#--saveEngine=}\";; esac; done\n"
                    "echo \"$@\" > args.txt\n")
    fake.chmod(0o755)
    env = {**os.environ, "TRTEXEC": str(fake), "PATH": "/usr/bin:/bin"}
    for precision, onnx_arg in (("fp32", "--onnx=../slim.onnx"), ("fp16", "--onnx=../slim.onnx"),
                                ("int8", "--onnx=model.int8.qdq.onnx")):
        entry = planned[("slim", precision)]
        proc = subprocess.run(["bash", str(bundle / entry["build_script"])], env=env, capture_output=True, text=True)
        assert proc.returncode == 0 and "mismatch" not in proc.stderr, proc.stderr
        side = json.loads((bundle / entry["sidecar"]).read_text())
        assert side["tensorrt_version"] == "8.6.2" and side["precision"] == precision
        assert (bundle / entry["file"]).is_file()
        args = (bundle / entry["build_script"]).with_name("args.txt").read_text()
        assert onnx_arg in args, args
    # load() picks up the engine build_engine.sh wrote (the default precision, fp16): here it is a stub for
    # TensorRT 8.6 on an Orin, so it is refused as not usable on this machine, in one line, and ONNX Runtime runs
    from toolchain.errors import ToolchainError
    from toolchain.runtime import load

    model = load(bundle)
    assert "slim-fp16/model.engine" in model.fallback_reason and "not usable here" in model.fallback_reason
    assert "\n" not in model.fallback_reason and model.backend_description.startswith("ONNX Runtime")
    # a sidecar that does not bind the engine to a checksummed ONNX of this bundle is refused
    entry = planned[("slim", "fp16")]
    side = json.loads((bundle / entry["sidecar"]).read_text())
    (bundle / entry["sidecar"]).write_text(json.dumps({**side, "engine_onnx_sha256": "0" * 64}))
    with pytest.raises(ToolchainError, match="was not built from an ONNX of this bundle"):
        load(bundle)
    assert load(bundle, backend="onnxruntime").precision == "fp32"  # ONNX Runtime never touches device engines
