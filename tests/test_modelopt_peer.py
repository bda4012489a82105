"""The NVIDIA ModelOpt FastNAS peer (`modelopt-fastnas`, toolchain/prune/modelopt_peer.py) on a tiny synthetic
SegNet: budget translation, the score function, a physically slim checkpoint rebuilt from our channel plan,
recovery, ONNX parity, `acsl prune --method modelopt-fastnas`, the compression-benchmark row, and the one-line
errors (package missing, nothing to prune at ModelOpt's default multiple of 32).

Tests that run ModelOpt skip only where `nvidia-modelopt` is not installed (`make venv` installs it)."""
import builtins
import json

import pytest
import torch
import yaml
from conftest import load_benchmark

from toolchain.cli import main
from toolchain.config import load_config
from toolchain.errors import MissingDependency, ToolchainError
from toolchain.models import build_from_config
from toolchain.models.complexity import model_summary
from toolchain.prune import modelopt_peer as peer
from toolchain.prune.select import parse_budget
from toolchain.train.checkpoint import load_model
from toolchain.train.dense import train_dense

try:
    import modelopt.torch.prune  # noqa: F401
    HAVE_MODELOPT = True
except ImportError:
    HAVE_MODELOPT = False
needs_modelopt = pytest.mark.skipif(not HAVE_MODELOPT, reason="nvidia-modelopt is not installed (make modelopt)")

DIVISOR = 8  # SegNet width 0.125 has 8..64 channels: ModelOpt's default 32 would leave little to search


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    root = tmp_path_factory.mktemp("modelopt")
    raw = {
        "name": "mo", "task": "segmentation", "model": {"name": "segnet", "width": 0.125},
        "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 3, "max_images": 8},
        "train": {"epochs": 2, "batch_size": 4, "optimizer": "adamw", "lr": 0.01, "seed": 0, "threads": 1},
        "prune": {"min_channels": 2, "recover": {"method": "finetune", "epochs": 1}},
        "export": {"simplify": "none"},
        "out_dir": str(root / "runs"),
    }
    path = root / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    cfg = load_config(path)
    result = train_dense(cfg, cfg.run_dir(), epochs=2)
    return path, result.best_path, raw


def test_budget_is_given_to_modelopt_as_percent_kept():
    assert peer.modelopt_constraint(parse_budget("flops=0.6")) == {"flops": "40%"}
    assert peer.modelopt_constraint(parse_budget("params=0.85")) == {"params": "15%"}
    assert peer.modelopt_constraint(parse_budget("params=0.125")) == {"params": "87.5%"}


def test_missing_modelopt_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_modelopt(name, *args, **kwargs):
        if name == "modelopt" or name.startswith("modelopt."):
            raise ImportError(f"No module named '{name}'", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_modelopt)
    with pytest.raises(MissingDependency, match=r"nvidia-modelopt.*pip install -e '\.\[modelopt\]'.*--no-deps"):
        peer.require_modelopt()


def test_missing_modelopt_on_the_cli_is_one_line(dense, monkeypatch, capsys):
    path, ckpt, _ = dense

    def missing():
        raise MissingDependency("nvidia-modelopt", "the modelopt-fastnas pruning method", peer.INSTALL)

    monkeypatch.setattr(peer, "require_modelopt", missing)
    assert main(["prune", str(path), "--checkpoint", str(ckpt), "--method", "modelopt-fastnas"]) == 2
    err = capsys.readouterr().err
    assert "'.[modelopt]'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["prune", str(path), "--checkpoint", str(ckpt), "--method", "l1", "--modelopt-divisor", "8"]) == 2
    assert "--modelopt-divisor applies to --method modelopt-fastnas only" in capsys.readouterr().err


def test_bn_recalibration_is_the_cumulative_average_over_batches():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)).eval()
    model[1].running_mean.fill_(7.0)  # stale statistics, as ModelOpt exports them
    batches = [torch.randn(2, 3, 5, 5) + i for i in range(3)]
    peer.recalibrate_bn(model, batches)
    with torch.no_grad():
        feats = [model[0](x) for x in batches]
    want = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(model[1].running_mean, want, atol=1e-5)
    assert model[1].momentum == 0.1 and not model.training


@needs_modelopt
def test_score_function_is_the_val_metric_on_a_seeded_subset(dense):
    from toolchain.train.evaluate import evaluate

    path, ckpt, _ = dense
    cfg = load_config(path)
    model, _ = load_model(ckpt, cfg)
    first, again = peer._batches(cfg, "val", 3, seed=0), peer._batches(cfg, "val", 3, seed=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))  # fixed subset for a seed
    everything = peer._batches(cfg, "val", 10 ** 6, seed=0)  # whole val split
    score = peer.make_score_fn(cfg, everything)(model)
    assert score == pytest.approx(evaluate(model, cfg, "val")["miou"], abs=1e-9)


@pytest.fixture(scope="module")
def pruned(dense):
    """`acsl prune --method modelopt-fastnas` once; the tests below inspect what it wrote."""
    path, ckpt, _ = dense
    cfg = load_config(path)
    out = cfg.run_dir() / "prune" / "mo_flops0.5"
    code = main(["prune", str(path), "--checkpoint", str(ckpt), "--method", "modelopt-fastnas", "--budget",
                 "flops=0.5", "--modelopt-divisor", str(DIVISOR), "--recover", "finetune", "--out", str(out)])
    assert code == 0
    return cfg, out, json.loads((out / "prune_record.json").read_text())


@needs_modelopt
@pytest.mark.slow
def test_cli_prune_gives_a_slim_checkpoint_checked_like_ours(pruned, dense):
    cfg, out, record = pruned
    dense_model, _ = load_model(dense[1], cfg)
    before = model_summary(dense_model, tuple(cfg.data.input_size))
    # the saved checkpoint is a standard slim one: zoo name + channel plan + state dict, no ModelOpt modules
    model, ckpt = load_model(out / "slim.pt", cfg)
    assert ckpt["channel_plan"]["source"] == "modelopt-fastnas" and ckpt["channel_plan"]["steps"]
    assert not any("modelopt" in type(m).__module__ for m in model.modules())
    after = model_summary(model, tuple(cfg.data.input_size))
    assert after == record["after"] and after["macs"] < before["macs"] and after["params"] < before["params"]
    assert record["fraction_removed"]["flops"] == pytest.approx(1 - after["macs"] / before["macs"])
    assert record["stages"]["select"]["budget_met"] == (record["fraction_removed"]["flops"] >= 0.5 - 0.005)
    with torch.no_grad():
        y = model.eval()(torch.randn(2, 3, *cfg.data.input_size))
    assert tuple(y.shape) == (2, cfg.data.num_classes, *cfg.data.input_size)
    # every width ModelOpt cut is a multiple of its channel multiple
    layers = ckpt["channel_plan"]["layers"]
    assert layers and all(len(v["kept_out"]) % DIVISOR == 0 for v in layers.values() if len(v["kept_out"]) < v["out"])
    assert record["channel_multiple"] == DIVISOR and record["modelopt"]["modelopt_default_channel_multiple"] == 32
    assert record["our_round_to"] == cfg.prune.round_to
    # the rebuilt zoo model computed what ModelOpt's module computed; the recovered one exports with parity
    assert record["stages"]["slim"]["rebuild_rel_error"] <= peer.REBUILD_RTOL
    assert record["export"]["parity_passed"] is True and (out / "slim.onnx").stat().st_size > 1000
    # the same recovery as our methods; the ModelOpt search read the val metric
    assert record["recover"] == "finetune" and record["recover_epochs"] == 1
    assert record["diagnostic"]["val_after_slim"] == record["stages"]["slim"]["val"]
    assert record["modelopt"]["bn_recalibrated"] is True
    assert record["modelopt"]["score"] == "val miou" and record["modelopt"]["score_evaluations"] > 0
    assert (out / "modelopt.log").stat().st_size > 0
    for name in ["select", "slim", "recover"]:
        assert json.loads((out / "records" / f"{name}.json").read_text())["stage"] == name


@needs_modelopt
def test_default_multiple_32_on_a_narrow_model_is_one_line(tmp_path):
    from toolchain.config import validate_config

    cfg = validate_config({"name": "narrow", "task": "classification", "model": {"name": "resnet20", "width": 0.5},
                           "data": {"kind": "synthetic", "input_size": [32, 32], "num_classes": 10, "max_images": 4},
                           "train": {"batch_size": 2}, "out_dir": str(tmp_path / "runs")})
    with pytest.raises(ToolchainError, match="nothing to prune .* channel multiple 32"):
        peer.prune_with_modelopt(build_from_config(cfg), cfg, "flops=0.5", score_images=2, calib_batches=1)


@needs_modelopt
@pytest.mark.slow
def test_compression_benchmark_row(dense, tmp_path):
    path, ckpt, _ = dense
    bench = load_benchmark("compression")
    results = tmp_path / "results"
    argv = [str(path), "--checkpoint", str(ckpt), "--methods", "modelopt-fastnas", "--budgets", "params=0.5",
            "--modelopt-divisor", str(DIVISOR), "--results", str(results), "--dataset", "synthetic"]
    assert bench.main(argv) == 0
    result = json.loads((results / "compression_synthetic_segnet.json").read_text())
    (row,) = result["runs"]
    assert not row.get("error"), row.get("error")
    assert row["method"] == "modelopt-fastnas" and row["channel_multiple"] == DIVISOR
    assert row["params"] < result["dense"]["params"] and row["metric"] is not None
    assert row["modelopt_constraint"] == {"params": "50%"} and row["onnx_parity_passed"] is True
    table = (results / "compression_synthetic_segnet.md").read_text()
    assert "| modelopt-fastnas |" in table and f"channel multiple {DIVISOR} (ModelOpt's default 32)" in table
