"""The embedding runtime on a hand-made bundle: verification (a bundle cannot be redirected), decoding
per task at the frame's resolution, threads, BGR, warm-up/latency, bad arguments and frames."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading

import numpy as np
import onnx
import pytest
import torch

from toolchain.artifacts.bundle import manifest_sha256, read_verified, verify_bundle, write_bundle
from toolchain.errors import ToolchainError
from toolchain.export.metadata import channel_plan_hash, set_metadata
from toolchain.runtime import load

PRE = {"input_size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "layout": "NCHW",
       "color": "RGB", "scale": 1 / 255.0, "resize": "bilinear"}
PLAN = {"format": "acsl-channel-plan/1", "steps": [{"root": "0", "removed": [1]}]}
DECODING = {"segmentation": "argmax over the class axis", "counting": "density map; count = sum",
            "classification": "softmax over B x K logits"}


def _onnx(tmp_path, name: str, task: str, out_channels: int, plan, seed: int = 0, classes=None):
    """A one-conv network exported with the toolchain's metadata (as `acsl export` writes it)."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, out_channels, 3, padding=1))
    if task == "classification":
        net.append(torch.nn.AdaptiveAvgPool2d(1))
        net.append(torch.nn.Flatten())
    path = tmp_path / name
    torch.onnx.export(net.eval(), torch.zeros(1, 3, 16, 16), str(path), input_names=["input"],
                      output_names=["output"], dynamo=False)
    proto = onnx.load(str(path))
    names = classes if classes is not None else [f"c{i}" for i in range(out_channels)]
    set_metadata(proto, {"model_name": "tiny", "task": task, "num_classes": str(len(names) or out_channels),
                         "class_names": json.dumps(names), "preprocessing": json.dumps(PRE, sort_keys=True),
                         "mean": json.dumps(PRE["mean"]), "std": json.dumps(PRE["std"]), "input_layout": "NCHW",
                         "channel_plan_sha256": channel_plan_hash(plan)})
    onnx.save(proto, str(path))
    return path, net


def _bundle(tmp_path, task: str = "segmentation", out_channels: int = 3, name: str | None = None):
    slim, net = _onnx(tmp_path, f"slim_{task}.onnx", task, out_channels, PLAN)
    dense, _ = _onnx(tmp_path, f"dense_{task}.onnx", task, out_channels, None, seed=1)
    manifest = {"model": {"name": "tiny"}, "task": task, "classes": [f"c{i}" for i in range(out_channels)],
                "input": {"name": "input", "shape": [1, 3, 16, 16], "layout": "NCHW", "color": "RGB"},
                "preprocessing": PRE, "mean": PRE["mean"], "std": PRE["std"],
                "output": {"name": "output", "decoding": DECODING[task]}, "target": {"name": "cpu"},
                "channel_plan": PLAN, "default_precision": "fp32", "deployed_variant": "slim",
                "artifacts": [{"file": "slim-fp32.onnx", "kind": "onnx", "variant": "slim", "precision": "fp32"},
                              {"file": "dense-fp32.onnx", "kind": "onnx", "variant": "dense", "precision": "fp32"}]}
    files = {"slim-fp32.onnx": slim, "slim.onnx": slim, "dense-fp32.onnx": dense}
    return write_bundle(tmp_path / (name or f"b_{task}"), files, manifest), net


@pytest.fixture
def seg_bundle(tmp_path):
    return _bundle(tmp_path)[0]


def _one_line_error(fn, match: str):
    with pytest.raises(ToolchainError, match=match) as info:
        fn()
    assert "\n" not in str(info.value), str(info.value)
    return str(info.value)


def _resign(bundle, edit):
    """An attacker who edits manifest.json AND updates manifest.sha256 to match."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest, bundle)
    data = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  manifest.json\n")


def _set(path: str, value):
    def edit(manifest, bundle):
        *parents, last = path.split(".")
        node = manifest
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[last] = value
    return edit


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _add_file(name: str, source: str, artifact: bool = True):
    """List an extra file (with its true sha256) and point the fp32 artifact at it."""
    def edit(manifest, bundle):
        src = source.replace("{OUT}", str(bundle.parent / "outside"))
        manifest["files"][name] = _sha(src if os.path.isabs(src) else bundle / src)
        if artifact:
            manifest["artifacts"][0]["file"] = name
    return edit


def _outside_model(bundle):
    """Another network outside the bundle, and a symlink to it inside the bundle."""
    outside = bundle.parent / "outside"
    outside.mkdir(exist_ok=True)
    shutil.copy(bundle / "dense-fp32.onnx", outside / "model.opt.onnx")
    (bundle / "link.onnx").symlink_to(outside / "model.opt.onnx")


def _copy_in_evil(manifest, bundle):
    shutil.copy(bundle / "dense-fp32.onnx", bundle / "evil.onnx")
    manifest["artifacts"][0]["file"] = "evil.onnx"


def _strip_metadata(manifest, bundle):
    proto = onnx.load(str(bundle / "slim-fp32.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(bundle / "plain.onnx"))
    manifest["files"]["plain.onnx"] = _sha(bundle / "plain.onnx")
    manifest["artifacts"][0]["file"] = "plain.onnx"


# (case, edit of a re-signed manifest, expected one-line error)
TAMPERED = [
    ("mean", _set("preprocessing.mean", [0.4, 0.5, 0.5]), "preprocessing.mean .* does not match the checksummed"),
    ("std", _set("preprocessing.std", [1.0, 1.0, 1.0]), "preprocessing.std"),
    ("scale", _set("preprocessing.scale", 1.0), "preprocessing.scale"),
    ("color", _set("preprocessing.color", "BGR"), "preprocessing.color"),
    ("layout", _set("preprocessing.layout", "NHWC"), "preprocessing.layout"),
    ("input size", _set("preprocessing.input_size", [32, 32]), "input.shape|input_size"),
    ("input shape", _set("input.shape", [1, 3, 8, 8]), "input.shape"),
    ("top-level mean", _set("mean", [0.0, 0.0, 0.0]), "manifest mean .* disagrees"),
    ("classes renamed", _set("classes", ["road", "car", "person"]), "manifest classes"),
    ("classes added", _set("classes", ["c0", "c1", "c2", "c3"]), "manifest classes"),
    ("task", _set("task", "counting"), "manifest task"),
    ("unknown task", _set("task", "detection"), "not one of"),
    ("decoding", _set("output.decoding", "density map; count = sum"), "output.decoding"),
    ("dense swapped in", _set("artifacts.0.file", "dense-fp32.onnx"), "channel plan"),
    ("dense deployed, plan dropped", lambda m, b: m.update(deployed_variant="dense", channel_plan=None),
     "variant 'slim' \\(channel plan"),
    ("unknown variant", _set("artifacts.0.variant", "tiny"), "unknown variant"),
    ("fp32 labelled int8", _set("artifacts.0.precision", "int8"), "precision"),
    ("traversal in files", _add_file("../../../../etc/passwd", "/etc/passwd", artifact=False),
     "not a plain path inside the bundle"),
    ("absolute in files", _add_file("/etc/passwd", "/etc/passwd", artifact=False), "not a plain path"),
    ("traversal artifact", _add_file("../outside/model.opt.onnx", "{OUT}/model.opt.onnx"), "not a plain path"),
    ("absolute artifact", _add_file("{ABS}", "{OUT}/model.opt.onnx"), "not a plain path"),
    ("symlink escaping", _add_file("link.onnx", "{OUT}/model.opt.onnx"), "resolves outside the bundle"),
    ("unlisted artifact", _copy_in_evil, "'evil.onnx' is not listed"),
    ("not normalised", _add_file("./slim-fp32.onnx", "slim-fp32.onnx"), "not a plain path"),
    ("backslash", _add_file("..\\slim-fp32.onnx", "slim-fp32.onnx", artifact=False), "not a valid relative path"),
    ("unknown kind", _set("artifacts.0.kind", "python"), "unknown kind"),
    ("artifact not a table", _set("artifacts", ["slim-fp32.onnx"]), "needs string file"),
    ("bad digest", lambda m, b: m["files"].update({"slim.onnx": "abc"}), "not a sha256"),
    ("manifest listed", lambda m, b: m["files"].update({"manifest.json": "0" * 64}), "lists manifest.json"),
    ("no metadata", _strip_metadata, "carries no toolchain metadata"),
    ("garbage model", lambda m, b: ((b / "junk.onnx").write_bytes(b"\x08\x07not an onnx model\xff" * 3),
                                     _add_file("junk.onnx", "junk.onnx")(m, b)),
     "not a valid ONNX model|carries no toolchain metadata"),
    ("device build escaping", lambda m, b: m.update(device_builds=[{"file": "../x/model.engine"}]),
     "device build file '../x/model.engine' is not a plain path"),
]


@pytest.mark.parametrize("case,edit,match", TAMPERED, ids=[c[0] for c in TAMPERED])
def test_resigned_manifest_cannot_redirect_the_bundle(tmp_path, case, edit, match):
    bundle, _ = _bundle(tmp_path)
    load(bundle)  # the untouched bundle loads
    _outside_model(bundle)
    if case == "absolute artifact":
        edit = _add_file(str(bundle.parent / "outside" / "model.opt.onnx"), "{OUT}/model.opt.onnx")
    _resign(bundle, edit)
    _one_line_error(lambda: load(bundle), match)
    _one_line_error(lambda: verify_bundle(bundle), match)


def _manifest_symlink(bundle):
    real = bundle.parent / "elsewhere.json"
    shutil.move(bundle / "manifest.json", real)
    (bundle / "manifest.json").symlink_to(real)


def _dir_symlink(bundle):
    _outside_model(bundle)
    (bundle / "sub").symlink_to(bundle.parent / "outside", target_is_directory=True)
    _resign(bundle, _add_file("sub/model.opt.onnx", "{OUT}/model.opt.onnx"))


def _deep_json(bundle):
    data = b"[" * 100000 + b"]" * 100000
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sha256").write_text(hashlib.sha256(data).hexdigest())


STRUCTURAL = [
    ("manifest symlinked outside", _manifest_symlink, "'manifest.json' resolves outside the bundle"),
    ("folder symlinked outside", _dir_symlink, "'sub/model.opt.onnx' resolves outside the bundle"),
    ("deeply nested manifest", _deep_json, "corrupt"),
    ("sha file empty", lambda b: (b / "manifest.sha256").write_text(""), "edited after"),
]


@pytest.mark.parametrize("case,attack,match", STRUCTURAL, ids=[c[0] for c in STRUCTURAL])
def test_structural_attacks(seg_bundle, case, attack, match):
    attack(seg_bundle)
    _one_line_error(lambda: load(seg_bundle), match)


def test_manifest_is_checksummed_and_can_be_pinned(seg_bundle):
    pin = manifest_sha256(seg_bundle)
    assert (seg_bundle / "manifest.sha256").read_text() == f"{pin}  manifest.json\n"
    assert pin == _sha(seg_bundle / "manifest.json")
    assert load(seg_bundle, expect_manifest_sha256=pin.upper()).manifest_sha256 == pin
    _one_line_error(lambda: load(seg_bundle, expect_manifest_sha256="0" * 64), "not the pinned one")
    _one_line_error(lambda: load(seg_bundle, expect_manifest_sha256="abc"), "64 hex digits")
    # a re-signed (self-consistent) manifest still fails the pin, even with a harmless edit
    _resign(seg_bundle, _set("created", "later"))
    load(seg_bundle)
    _one_line_error(lambda: load(seg_bundle, expect_manifest_sha256=pin), "not the pinned one")
    # an edit without updating manifest.sha256, then no manifest.sha256 at all
    text = (seg_bundle / "manifest.json").read_text().replace('"later"', '"later still"')
    (seg_bundle / "manifest.json").write_text(text)
    _one_line_error(lambda: load(seg_bundle), "edited after the bundle was written")
    (seg_bundle / "manifest.sha256").unlink()
    _one_line_error(lambda: load(seg_bundle), "has no manifest.sha256")


def test_write_bundle_refuses_unlisted_artifact_and_bad_names(tmp_path):
    onnx_path, _ = _onnx(tmp_path, "m.onnx", "segmentation", 3, None)
    art = [{"file": "other.onnx", "kind": "onnx", "variant": "slim", "precision": "fp32"}]
    with pytest.raises(ValueError, match="not one of the bundle's files"):
        write_bundle(tmp_path / "b", {"slim.onnx": onnx_path}, {"artifacts": art})
    for bad in ("../x.onnx", "/abs.onnx", "manifest.sha256", "a\\b.onnx"):
        with pytest.raises(ValueError, match="bad bundle file name"):
            write_bundle(tmp_path / "b", {bad: onnx_path}, {})
    assert not (tmp_path / "b").exists()


def test_verified_bytes_are_the_bytes_run(seg_bundle):
    manifest = verify_bundle(seg_bundle)
    good = read_verified(seg_bundle, manifest, "slim-fp32.onnx")
    assert hashlib.sha256(good).hexdigest() == manifest["files"]["slim-fp32.onnx"]
    shutil.copy(seg_bundle / "dense-fp32.onnx", seg_bundle / "slim-fp32.onnx")  # swapped after verification
    _one_line_error(lambda: read_verified(seg_bundle, manifest, "slim-fp32.onnx"), "does not match its manifest")
    _one_line_error(lambda: read_verified(seg_bundle, manifest, "evil.onnx"), "not listed")


def test_engine_sidecar_must_be_checksummed(tmp_path, monkeypatch, capsys):
    """An engine artifact whose sidecar (read by the TensorRT runner) sits in the bundle unlisted is refused."""
    import sys
    import types

    from toolchain.cli import main as acsl

    slim, _ = _onnx(tmp_path, "slim.onnx", "segmentation", 3, PLAN)
    (tmp_path / "model.engine").write_bytes(b"engine bytes")
    manifest = {"task": "segmentation", "classes": ["c0", "c1", "c2"], "preprocessing": PRE, "channel_plan": PLAN,
                "target": {"name": "cpu"}, "default_precision": "fp16", "deployed_variant": "slim",
                "artifacts": [{"file": "slim-fp16/model.engine", "kind": "tensorrt-engine", "variant": "slim",
                               "precision": "fp16"}]}
    bundle = write_bundle(tmp_path / "b", {"slim.onnx": slim, "slim-fp16/model.engine": tmp_path / "model.engine"},
                          manifest)
    (bundle / "slim-fp16" / "model.engine.json").write_text('{"tensorrt_version": "10.3.0"}')  # copied in later
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    _one_line_error(lambda: load(bundle), "sidecar slim-fp16/model.engine.json is not listed")
    assert acsl(["profile", "--bundle", str(bundle), "--runs", "1", "--warmup-s", "0"]) == 2
    assert "sidecar slim-fp16/model.engine.json is not listed" in capsys.readouterr().err
    # listed (as `acsl deploy` lists it): the TensorRT runner gets the engine's real path inside the bundle
    side = tmp_path / "model.engine.json"
    shutil.copy(bundle / "slim-fp16" / "model.engine.json", side)
    bundle = write_bundle(tmp_path / "b", {"slim.onnx": slim, "slim-fp16/model.engine": tmp_path / "model.engine",
                                           "slim-fp16/model.engine.json": side}, manifest)
    opened = []

    class FakeTrtRunner:
        input_names, output_names = ["input"], ["output"]

        def __init__(self, path):
            opened.append(path)

        def load(self):
            return self

    fake = types.ModuleType("toolchain.runtime.trt_runner")
    fake.TrtRunner = FakeTrtRunner
    monkeypatch.setitem(sys.modules, "toolchain.runtime.trt_runner", fake)
    model = load(bundle)
    assert model.precision == "fp16" and "TensorRT engine slim-fp16/model.engine" in model.backend_description
    assert opened == [(bundle / "slim-fp16" / "model.engine").resolve()]


def test_profile_bundle_uses_the_same_verification(tmp_path, capsys):
    from toolchain.cli import main as acsl

    bundle, _ = _bundle(tmp_path)
    args = ["profile", "--bundle", str(bundle), "--runs", "2", "--warmup-s", "0", "--batch", "1"]
    assert acsl(args + ["--json", str(tmp_path / "p.json")]) == 0
    assert "slim-fp32.onnx" in capsys.readouterr().out
    assert json.loads((tmp_path / "p.json").read_text())["bundle"]["manifest_sha256"] == manifest_sha256(bundle)
    assert acsl(args + ["--expect-manifest-sha256", "1" * 64]) == 2
    assert "not the pinned one" in capsys.readouterr().err
    _resign(bundle, _copy_in_evil)
    assert acsl(args) == 2
    err = capsys.readouterr().err
    assert "'evil.onnx' is not listed" in err and len(err.strip().splitlines()) == 1


def test_decoding_per_task_at_frame_resolution(tmp_path):
    from toolchain.runtime.bundle import _resize_nearest

    frame = np.random.default_rng(1).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    seg = load(_bundle(tmp_path, "segmentation", 3)[0])(frame)
    assert seg.class_map_net.shape == (16, 16) and (seg.class_map_net == seg.raw.argmax(0)).all()
    assert seg.class_map.shape == (20, 24) and set(np.unique(seg.class_map)) <= set(np.unique(seg.class_map_net))
    assert (seg.class_map == _resize_nearest(seg.class_map_net, (20, 24))).all()
    assert (seg.class_map[0, 0], seg.class_map[-1, -1]) == (seg.class_map_net[0, 0], seg.class_map_net[-1, -1])
    cnt = load(_bundle(tmp_path, "counting", 1)[0])(frame)
    assert cnt.density_net.shape == (16, 16) and cnt.density.shape == (20, 24)
    assert cnt.count == pytest.approx(float(cnt.raw.sum()), rel=1e-5)
    assert float(cnt.density.sum()) == pytest.approx(cnt.count, rel=0.05, abs=0.05)
    cls = load(_bundle(tmp_path, "classification", 4)[0], topk=2)(frame)
    assert len(cls.topk) == 2 and cls.topk[0][0] == f"c{int(cls.raw.argmax())}"
    assert cls.topk[0][1] >= cls.topk[1][1]
    same = load(_bundle(tmp_path, "segmentation", 3, name="same")[0])(frame[:16, :16])
    assert (same.class_map == same.class_map_net).all()


def test_one_model_per_thread_matches_single_thread(seg_bundle):
    frames = [np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(4)]
    expected = [load(seg_bundle)(f).raw for f in frames]
    results = {}

    def work(i):
        model = load(seg_bundle, threads=1)
        results[i] = [model(f).raw for f in frames]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(3):
        for got, ref in zip(results[i], expected):
            np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_one_way_to_say_bgr(seg_bundle):
    frame = np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    rgb_model = load(seg_bundle)
    reference = rgb_model(frame[:, :, ::-1].copy()).raw  # the frame, as RGB
    assert not np.allclose(reference, rgb_model(frame).raw)
    for got in (rgb_model(frame, bgr=True).raw, load(seg_bundle, bgr=True)(frame).raw,
                rgb_model(frame, color="bgr").raw, load(seg_bundle, color="Bgr")(frame).raw):
        np.testing.assert_allclose(got, reference, rtol=1e-6)
    np.testing.assert_allclose(load(seg_bundle, bgr=True)(frame, bgr=False).raw, rgb_model(frame).raw, rtol=1e-6)
    assert load(seg_bundle, bgr=True).color == "BGR"
    for kwargs, match in (({"color": "HSV"}, "color must be RGB or BGR"), ({"bgr": "yes"}, "bgr must be True"),
                          ({"bgr": True, "color": "RGB"}, "contradicts"), ({"color": 1}, "color must be")):
        _one_line_error(lambda: load(seg_bundle, **kwargs), match)
        _one_line_error(lambda: rgb_model(frame, **kwargs), match)


def test_warmup_then_latency_stats_as_in_the_readme(seg_bundle):
    model = load(seg_bundle)
    assert model.latency_stats(runs=3)["runs"] == 3  # nothing called yet: it times dummy runs
    assert model.warmup(seconds=0.0, min_runs=2) == 2
    stats = model.latency_stats()
    assert stats["source"] == "dummy input" and stats["runs"] == 50 and stats["median_ms"] > 0
    model.warmup(seconds=0.0, min_runs=1)
    model(np.zeros((10, 12, 3), np.uint8))
    model(np.zeros((10, 12, 3), np.uint8))
    stats = model.latency_stats()
    assert stats["source"] == "calls" and stats["runs"] == 2
    _one_line_error(lambda: model.warmup(seconds=-1), "warmup needs")


BAD_FRAMES = [
    ("empty", np.zeros((0, 0, 3), np.uint8), "frame is empty"),
    ("no rows", np.zeros((0, 5, 3), np.uint8), "frame is empty"),
    ("grayscale", np.zeros((16, 16), np.uint8), "H x W x 3"),
    ("rgba", np.zeros((16, 16, 4), np.uint8), "H x W x 3"),
    ("batch", np.zeros((2, 16, 16, 3), np.uint8), "H x W x 3"),
    ("float", np.zeros((16, 16, 3), np.float32), "uint8"),
    ("int list", [[[1, 2, 3]]], "uint8"),
    ("none", None, "H x W x 3"),
]


@pytest.mark.parametrize("case,frame,match", BAD_FRAMES, ids=[c[0] for c in BAD_FRAMES])
def test_bad_frames_are_one_line_errors(seg_bundle, case, frame, match):
    model = load(seg_bundle)
    _one_line_error(lambda: model(frame), match)


def test_bad_arguments(seg_bundle, tmp_path):
    _one_line_error(lambda: load(seg_bundle, precision="int8"), "no int8 model")
    _one_line_error(lambda: load(seg_bundle, backend="cuda"), "backend must be")
    _one_line_error(lambda: load(seg_bundle, topk=0), "topk must be")
    _one_line_error(lambda: load(tmp_path / "nothing"), "bundle not found")


def test_run_bundle_example_draws_at_frame_size_and_honours_the_pin(seg_bundle, tmp_path, capsys):
    import importlib.util

    from PIL import Image

    from conftest import REPO

    spec = importlib.util.spec_from_file_location("run_bundle", REPO / "examples" / "run_bundle.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    images, out = tmp_path / "images", tmp_path / "out"
    images.mkdir()
    for i, size in enumerate([(40, 48), (16, 16), (90, 30)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, size[::-1] + (3,), dtype=np.uint8)).save(
            images / f"{i}.png")
    pin = manifest_sha256(seg_bundle)
    assert example.main([str(seg_bundle), "--source", str(images), "--out", str(out), "--pin", pin]) == 0
    assert "3 frames" in capsys.readouterr().out
    assert [Image.open(out / f"{i}.png").size for i in range(3)] == [(40, 48), (16, 16), (90, 30)]
    assert example.main([str(seg_bundle), "--source", str(images), "--pin", "f" * 64]) == 2
    assert "not the pinned one" in capsys.readouterr().err
