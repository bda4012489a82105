"""The embedding runtime on a hand-made bundle: decoding per task, threads, BGR, bad arguments."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from toolchain.deploy.bundle import write_bundle
from toolchain.errors import ToolchainError
from toolchain.runtime import load

PRE = {"input_size": [16, 16], "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "layout": "NCHW",
       "color": "RGB", "scale": 1 / 255.0, "resize": "bilinear"}


def _bundle(tmp_path, task: str, out_channels: int):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, out_channels, 3, padding=1))
    if task == "classification":
        net.append(torch.nn.AdaptiveAvgPool2d(1))
        net.append(torch.nn.Flatten())
    onnx = tmp_path / "m.onnx"
    torch.onnx.export(net.eval(), torch.zeros(1, 3, 16, 16), str(onnx), input_names=["input"],
                      output_names=["output"], dynamo=False)
    manifest = {"task": task, "classes": [f"c{i}" for i in range(out_channels)], "preprocessing": PRE,
                "artifacts": [{"file": "slim-fp32.onnx", "kind": "onnx", "variant": "slim", "precision": "fp32"}],
                "default_precision": "fp32", "deployed_variant": "slim"}
    return write_bundle(tmp_path / f"b_{task}", {"slim-fp32.onnx": onnx}, manifest), net


def test_decoding_per_task(tmp_path):
    frame = np.random.default_rng(1).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    seg = load(_bundle(tmp_path, "segmentation", 3)[0])(frame)
    assert seg.class_map.shape == (16, 16) and (seg.class_map == seg.raw.argmax(0)).all()
    cnt = load(_bundle(tmp_path, "counting", 1)[0])(frame)
    assert cnt.count == pytest.approx(float(cnt.raw.sum()), rel=1e-5)
    cls = load(_bundle(tmp_path, "classification", 4)[0], topk=2)(frame)
    assert len(cls.topk) == 2 and cls.topk[0][0] == f"c{int(cls.raw.argmax())}"
    assert cls.topk[0][1] >= cls.topk[1][1]


def test_one_model_per_thread_matches_single_thread(tmp_path):
    bundle, _ = _bundle(tmp_path, "segmentation", 3)
    frames = [np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8) for i in range(4)]
    expected = [load(bundle)(f).raw for f in frames]
    results = {}

    def work(i):
        model = load(bundle, threads=1)
        results[i] = [model(f).raw for f in frames]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for i in range(3):
        for got, ref in zip(results[i], expected):
            np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_bad_arguments(tmp_path):
    bundle, _ = _bundle(tmp_path, "segmentation", 3)
    with pytest.raises(ToolchainError, match="no int8 model"):
        load(bundle, precision="int8")
    with pytest.raises(ToolchainError, match="color must be RGB or BGR"):
        load(bundle, color="HSV")
    model = load(bundle)
    with pytest.raises(ToolchainError, match="H x W x 3"):
        model(np.zeros((16, 16), np.uint8))
    with pytest.raises(ToolchainError, match="no inferences timed yet"):
        model.latency_stats()
    with pytest.raises(ToolchainError, match="bundle not found"):
        load(tmp_path / "nothing")
