"""The build matrix with the real TensorRT-RTX builder: every zoo model, dense and slim, x {fp32, fp16,
int8} x {static, dynamic batch with desktop-rtx's profile} parses with zero errors and builds; each
precision is what its label says (FP16 tensors in the fp16 network, INT8 dequantize layers in the int8
one, neither in fp32), and with weights large enough to dominate the engine, sizes are ordered
fp16 < 0.6 x fp32 and int8 < fp16 (a mislabelled precision fails)."""
import pytest

from conftest import load_benchmark

pytest.importorskip("tensorrt_rtx", reason="pip install -e '.[trt]' (part of `make test`)")
pytestmark = pytest.mark.slow


def _target(ccs):
    from toolchain.targets import load_target

    target = load_target("desktop-rtx")
    return target.model_copy(update={"compute_capabilities": ccs})


def test_every_zoo_model_builds_in_every_precision_and_shape(tmp_path):
    from toolchain.models import list_models

    matrix = load_benchmark("trt_build_matrix")
    models = list_models()
    rows = matrix.run_matrix(models, tmp_path, width=0.125, input_size=(32, 32), target=_target(["8.9"]),
                             log=lambda s: None)
    assert len(rows) == len(models) * 2 * 3 * 2
    failed = [f"{r['model']} {r['variant']} {r['precision']} {r['shapes']}: {r['reason']}" for r in rows
              if not (r["parsed"] and r["built"])]
    assert not failed, failed
    assert matrix.mislabel_problems(rows) == []  # fp16 saves 2 B/weight; FP16 / INT8 layers where labelled
    for r in rows:
        label = f"{r['model']} {r['variant']} {r['precision']} {r['shapes']}"
        assert r["engine_bytes"] > 0 and r["layers"] > 0, label
        if r["shapes"] == "dynamic":
            assert r["profile"]["min"][0] == 1 and r["profile"]["max"][0] == 4, label
        else:
            assert r["profile"]["min"] == r["profile"]["max"], label
    slim = {r["model"]: r["params"] for r in rows if r["variant"] == "slim"}
    dense = {r["model"]: r["params"] for r in rows if r["variant"] == "dense"}
    assert all(slim[m] < dense[m] for m in models)


def test_engine_sizes_follow_precision(tmp_path):
    matrix = load_benchmark("trt_build_matrix")
    rows = matrix.run_matrix(["segnet", "vgg16_cifar"], tmp_path, width=0.5, input_size=(32, 32),
                             variants=("dense",), shapes=("static",), target=_target(["8.9"]), log=lambda s: None)
    assert len(rows) == 6 and all(r["built"] for r in rows)
    assert matrix.size_order_problems(rows) == [] and matrix.mislabel_problems(rows) == []
    fp32 = next(r for r in rows if r["precision"] == "fp32" and r["model"] == "segnet")
    fake = [dict(r, engine_bytes=fp32["engine_bytes"]) if r["precision"] == "fp16" and r["model"] == "segnet" else r
            for r in rows]  # an FP32 engine labelled fp16 is caught by both rules
    assert matrix.size_order_problems(fake) and matrix.mislabel_problems(fake)
    md = matrix.to_markdown(rows, "test", 1.0)
    assert "6 of 6 cells built" in md and "holds for all 2 model/variant/shape groups" in md
