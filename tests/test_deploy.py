"""The whole `acsl deploy` (TARGET=cpu) on the built-in demo, in a temp dir, plus resume and bad input."""
from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolchain.config import load_config
from toolchain.utils.io import sha256_file
from toolchain.artifacts.bundle import verify_bundle, write_bundle
from toolchain.deploy.pipeline import run_deploy
from toolchain.errors import ToolchainError
from toolchain.report.schema import VARIANT_FIELDS, validate_report

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def fast_demo(tmp: Path, **extra):
    """configs/demo.yaml shrunk for a test: 32x32, 1 epoch per phase, a few images."""
    overrides = {"out_dir": str(tmp / "runs"), "deploy": {"out_dir": str(tmp / "deploy"), "eval_images": 8},
                 "data": {"input_size": [32, 32], "max_images": 16},
                 "train": {"epochs": 1, "threads": 1},
                 "prune": {"sparsity": {"epochs": 1}, "recover": {"epochs": 1}},
                 "quantize": {"calib_images": 4, "gate": 0.01}}
    from toolchain.config import deep_merge

    return load_config(ROOT / "configs" / "demo.yaml", overrides=deep_merge(overrides, extra))


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("deploy")
    cfg = fast_demo(tmp)
    logs: list[str] = []
    result = run_deploy(cfg, "cpu", runs=5, warmup_s=0.0, log=logs.append)
    return cfg, result, logs, tmp


def test_bundle_checksums_and_manifest(deployed):
    _, result, logs, _ = deployed
    manifest = verify_bundle(result.bundle)
    assert set(manifest["files"]) >= {"slim.onnx", "dense.onnx", "slim-fp32.onnx"}
    # measured reports vary from run to run: listed with their sha256 in measurements.json, not the manifest
    assert not any(name.startswith("report") for name in manifest["files"]) and "created" not in manifest
    measured = json.loads((result.bundle / "measurements.json").read_text())
    assert {"report.json", "report.html"} <= set(measured["files"]) and measured["created"]
    assert measured["files"]["report.json"] == sha256_file(result.bundle / "report.json")
    assert manifest["task"] == "segmentation" and manifest["input"]["layout"] == "NCHW"
    assert manifest["preprocessing"]["mean"] == [0.485, 0.456, 0.406] and manifest["channel_plan"]
    assert {a["precision"] for a in manifest["artifacts"]} == {"fp32", "int8"}
    assert any(name.endswith(".qdq.onnx") for name in manifest["files"])
    assert not list(result.bundle.parent.glob(".cpu.partial-*"))
    assert any("report:" in line for line in logs)


def test_every_file_in_the_bundle_has_a_row_in_the_kinds_table(deployed):
    from toolchain.artifacts.kinds import kind_of

    _, result, _, _ = deployed
    manifest = verify_bundle(result.bundle)
    files = sorted(p.relative_to(result.bundle).as_posix() for p in result.bundle.rglob("*") if p.is_file())
    assert "manifest.json" in files and any(f.endswith(".qdq.onnx") for f in files)
    assert [f for f in files if kind_of(f) is None] == []
    for art in manifest["artifacts"]:  # the kind a manifest names is the kind its file is
        assert kind_of(art["file"]).name == art["kind"], art


def test_every_onnx_in_the_bundle_parses_and_builds_in_real_tensorrt_rtx(deployed):
    """The CPU bundle's models are the ones a user takes to a GPU: each must parse and build in a real builder."""
    trt = pytest.importorskip("tensorrt_rtx", reason="pip install -e '.[trt]' (part of `make test`)")
    from toolchain.build.trt_engine import parse_onnx

    _, result, _, _ = deployed
    names = sorted(n for n in verify_bundle(result.bundle)["files"] if n.endswith(".onnx"))
    assert any("int8" in n for n in names) and "slim.onnx" in names
    for name in names:
        builder, network, _ = parse_onnx(trt, result.bundle / name, strongly_typed=True)
        config = builder.create_builder_config()
        assert builder.build_serialized_network(network, config) is not None, name


def test_report_has_every_field(deployed):
    _, result, _, _ = deployed
    report = validate_report(json.loads(result.report_json.read_text()))
    assert report["schema"] == "acsl-report/1" and report["on_target_device"] is True
    names = {r["variant"] for r in report["variants"]}
    assert names == {"dense-fp32", "dense-int8", "slim-fp32", "slim-int8"}
    for row in report["variants"]:
        assert set(VARIANT_FIELDS) <= set(row)
        if row["status"] == "ok":
            assert row["latency_median_ms"] > 0 and row["latency_p99_ms"] >= row["latency_median_ms"]
            assert row["accuracy"] is not None and row["measured_on"] and row["size_bytes"] > 0
            assert row["profile"]["latency"]["1"]["runs"] == 5
            assert row["profile"]["layers_top10"]["layers"]
    assert report["layers_before_after"] and "data:image/png;base64," in result.report_html.read_text()
    # latency realisation: speed-up / MACs ratio for every precision measured for both dense and slim
    fp32 = next(r for r in report["realisation"] if r["precision"] == "fp32")
    rows = {r["variant"]: r for r in report["variants"]}
    speedup = rows["dense-fp32"]["latency_median_ms"] / rows["slim-fp32"]["latency_median_ms"]
    assert fp32["macs_ratio"] > 1.5 and abs(fp32["speedup"] - speedup) < 1e-3
    assert abs(fp32["realisation"] - fp32["speedup"] / fp32["macs_ratio"]) < 1e-2
    assert "Latency realisation" in (result.report_json.parent / "report.md").read_text()


def test_load_bundle_reproduces_exported_onnx(deployed):
    import onnxruntime as ort

    from toolchain.data.transforms import preprocess
    from toolchain.runtime import load

    cfg, result, _, _ = deployed
    frame = np.random.default_rng(0).integers(0, 255, (48, 40, 3), dtype=np.uint8)
    model = load(result.bundle, precision="fp32")
    out = model(frame)
    sess = ort.InferenceSession(str(result.bundle / "slim.onnx"), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"input": preprocess(frame, cfg.preprocessing())[None]})[0][0]
    np.testing.assert_allclose(out.raw, ref, rtol=1e-4, atol=1e-4)
    assert out.class_map_net.shape == (32, 32) and (out.class_map_net == ref.argmax(0)).all()
    assert out.class_map.shape == (48, 40)  # at the frame's resolution
    bgr = model(frame[:, :, ::-1].copy(), color="BGR")
    np.testing.assert_allclose(bgr.raw, out.raw, rtol=1e-5, atol=1e-5)
    assert model.warmup(seconds=0.0, min_runs=2) == 2
    model(frame)
    assert model.latency_stats()["runs"] == 1


def test_rerun_skips_and_change_reruns_later_stages(deployed):
    cfg, result, _, tmp = deployed
    logs: list[str] = []
    run_deploy(cfg, "cpu", runs=5, warmup_s=0.0, log=logs.append)
    skipped = [l for l in logs if "skipped" in l]
    assert len(skipped) == 6, logs  # train, prune, export, build, profile, bundle
    changed = fast_demo(tmp, deploy={"eval_images": 4})
    logs.clear()
    run_deploy(changed, "cpu", runs=5, warmup_s=0.0, log=logs.append)
    ran = {l.split("] ")[1].split(":")[0] for l in logs if l.endswith(": started")}
    assert ran == {"build", "profile", "bundle"}, logs


def test_killed_profile_resumes_with_complete_artifacts_only(deployed, monkeypatch):
    cfg, result, _, _ = deployed
    import toolchain.profile.profiler as profiler

    profile_dir = cfg.run_dir() / "stages" / "cpu" / "profile"
    real = profiler.profile_engine
    calls = {"n": 0}

    def dies_on_second(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C / the machine was killed mid-stage
        return real(*a, **k)

    cfg2 = cfg.model_copy(deep=True)
    monkeypatch.setattr(profiler, "profile_engine", dies_on_second)
    with pytest.raises(KeyboardInterrupt):
        run_deploy(cfg2, "cpu", runs=6, warmup_s=0.0, log=lambda s: None)
    assert not (profile_dir / "done.json").exists()
    monkeypatch.setattr(profiler, "profile_engine", real)
    # an artifact of a finished stage is damaged: that stage must not be reused
    build_done = json.loads((cfg.run_dir() / "stages" / "cpu" / "build" / "done.json").read_text())
    victim = cfg.run_dir() / "stages" / "cpu" / "build" / build_done["artifacts"]["slim-fp32"]["path"]
    victim.write_bytes(victim.read_bytes()[:100])
    logs: list[str] = []
    out = run_deploy(cfg2, "cpu", runs=6, warmup_s=0.0, log=logs.append)
    started = {l.split("] ")[1].split(":")[0] for l in logs if l.endswith(("started", "resuming"))}
    assert started == {"build", "profile", "bundle"}, logs
    verify_bundle(out.bundle)


def test_unknown_target(deployed):
    cfg = deployed[0]
    with pytest.raises(ToolchainError, match="jetson-nano-9000"):
        run_deploy(cfg, "jetson-nano-9000", log=lambda s: None)


def test_bundle_missing_or_altered_file(deployed, tmp_path):
    from toolchain.runtime import load

    copy = tmp_path / "bundle"
    shutil.copytree(deployed[1].bundle, copy)
    (copy / "slim-fp32.onnx").write_bytes((copy / "slim-fp32.onnx").read_bytes() + b"\0")
    with pytest.raises(ToolchainError, match="does not match its manifest checksum"):
        load(copy)
    (copy / "slim-fp32.onnx").unlink()
    with pytest.raises(ToolchainError, match="missing slim-fp32.onnx"):
        load(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(ToolchainError, match="no manifest.json"):
        load(copy)


def test_engine_for_another_device_falls_back_or_refuses(deployed, tmp_path, monkeypatch):
    """A bundle whose TensorRT engine's sidecar names another GPU: auto uses ONNX, tensorrt refuses."""
    import sys
    import types

    from toolchain.artifacts.sidecar import check_engine_compatible
    from toolchain.runtime import load

    bundle = tmp_path / "bundle"
    manifest = verify_bundle(deployed[1].bundle)
    files = {n: deployed[1].bundle / n for n in manifest["files"]}
    (tmp_path / "m.engine").write_bytes(b"engine built elsewhere")
    files["slim-fp32.engine"] = tmp_path / "m.engine"
    manifest = {k: v for k, v in manifest.items() if k not in ("files", "format")}
    manifest["artifacts"] = manifest["artifacts"] + [{"file": "slim-fp32.engine", "kind": "tensorrt-engine",
                                                     "variant": "slim", "precision": "fp32"}]
    write_bundle(bundle, files, manifest)
    sidecar = {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "gpu_name": "Orin"}

    class FakeTrtRunner:
        def __init__(self, path):
            pass

        def load(self):
            check_engine_compatible(sidecar, "10.3.0", {"name": "H100", "compute_capability": "9.0"})

    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    fake = types.ModuleType("toolchain.runtime.trt_runner")
    fake.TrtRunner = FakeTrtRunner
    monkeypatch.setitem(sys.modules, "toolchain.runtime.trt_runner", fake)
    model = load(bundle, precision="fp32")
    assert model.runner.backend == "onnxruntime" and "rebuild" in model.fallback_reason
    with pytest.raises(ToolchainError, match="engines are not portable"):
        load(bundle, precision="fp32", backend="tensorrt")


def test_data_of_the_wrong_task(tmp_path, capsys):
    from toolchain.cli import main as acsl

    (tmp_path / "train" / "images").mkdir(parents=True)
    (tmp_path / "train" / "points.json").write_text("{}")
    assert acsl(["deploy", str(ROOT / "configs" / "demo.yaml"), "--target", "cpu", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "is a counting dataset (shanghaitech) but the config's task is segmentation" in err


def test_disk_full_leaves_no_valid_looking_bundle(deployed, tmp_path, monkeypatch):
    import toolchain.artifacts.bundle as bundle_mod

    manifest = verify_bundle(deployed[1].bundle)
    files = {n: deployed[1].bundle / n for n in manifest["files"]}
    base = {k: v for k, v in manifest.items() if k not in ("files", "format")}
    dest = tmp_path / "cpu"
    real_copy, calls = bundle_mod._copy, {"n": 0}

    def full_disk(src, dst):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_copy(src, dst)

    monkeypatch.setattr(bundle_mod, "_copy", full_disk)
    with pytest.raises(ToolchainError, match="disk full"):
        write_bundle(dest, files, base)
    assert not dest.exists() and not list(tmp_path.glob(".cpu.*"))
    # over an existing complete bundle: the old one survives intact
    monkeypatch.setattr(bundle_mod, "_copy", real_copy)
    write_bundle(dest, files, base)
    calls["n"] = 0
    monkeypatch.setattr(bundle_mod, "_copy", full_disk)
    with pytest.raises(ToolchainError, match="disk full"):
        write_bundle(dest, files, base)
    verify_bundle(dest)
    assert not list(tmp_path.glob(".cpu.*"))


def test_int8_rejected_by_gate_is_a_failed_row_not_a_mislabelled_fp32(tmp_path):
    """When the gate keeps FP32, the int8 row must say so and must not ship the FP32 file as 'int8'."""
    import types

    from toolchain.deploy.adapters import _build_with_builder

    (tmp_path / "model.opt.onnx").write_bytes(b"onnx")
    gate = {"split": "val", "metric": "miou", "int8_metric": 30.0, "fp32_metric": 35.0, "gate": 0.99,
            "excluded_nodes": ["a", "b"], "passed": False}
    record = {"precision": "fp32", "precision_requested": "int8", "int8": {"gate": gate}, "notes": []}
    result = types.SimpleNamespace(artifact=tmp_path / "model.opt.onnx", record=record, engine_built=True)
    fake_pkg = types.SimpleNamespace(build=lambda *a, **k: result)
    target = types.SimpleNamespace(backend="onnxruntime", name="cpu")
    row = _build_with_builder(fake_pkg, None, tmp_path / "m.onnx", target, "int8", tmp_path, print)
    assert row["status"] == "failed" and row["artifact"] is None
    assert "miou 30.00 vs FP32 35.00" in row["reason"] and "2 most sensitive nodes" in row["reason"]


def test_latency_variant_is_profiled_and_reported_next_to_slim_but_not_shipped(deployed):
    """deploy.latency_variant: match -> a slim_latency model pruned to the slim model's measured latency is
    exported, built, profiled and drawn in the Pareto plot; the bundle still ships dense + slim only.
    (Last in the file: it adds stages to the shared run folder.)"""
    cfg, _, _, tmp = deployed
    lv_cfg = fast_demo(tmp, deploy={"latency_variant": "match", "out_dir": str(tmp / "deploy_lv")})
    logs: list[str] = []
    result = run_deploy(lv_cfg, "cpu", runs=5, warmup_s=0.0, log=logs.append)
    ran = {l.split("] ")[1].split(":")[0] for l in logs if l.endswith(": started")}
    assert "train" not in ran and "prune" not in ran and "prune_latency" in ran, logs  # dense + sparsity reused
    report = validate_report(json.loads(result.report_json.read_text()))
    rows = {r["variant"]: r for r in report["variants"]}
    assert rows["slim_latency-fp32"]["status"] == "ok" and rows["slim_latency-fp32"]["latency_median_ms"] > 0
    lv = report["latency_variant"]
    slim_plan_ms = lv["slim_plan_measured_ms"]
    assert lv["budget"] == f"latency={slim_plan_ms:.4f}ms" and lv["predicted_ms"] <= slim_plan_ms * 1.0001
    assert lv["measured_ms"] > 0 and lv["slim_plan_predicted_ms"] > 0 and lv["calibration"]
    models = {(r["model"], r["precision"]) for r in report["realisation"]}
    assert ("slim", "fp32") in models and ("slim_latency", "fp32") in models
    md = (result.bundle / "report.md").read_text()
    assert "## Latency-budget variant (slim_latency)" in md and "| slim_latency | fp32 |" in md
    manifest = verify_bundle(result.bundle)
    assert {a["variant"] for a in manifest["artifacts"]} == {"dense", "slim"}
    assert not any("slim_latency" in name for name in manifest["files"])
    # a params budget is not a latency variant: one-line config error
    with pytest.raises(ToolchainError, match="latency_variant.*must be 'match' or latency=Tms.*got 'params=0.5'"):
        fast_demo(tmp, deploy={"latency_variant": "params=0.5"})
